//! `/metrics`: [`sluice_app::metrics::Metrics`] in the Prometheus (OpenMetrics) text format,
//! written by the Prometheus project's `prometheus-client`. The numbers come from the store at
//! each scrape, so they are the same whichever server is asked and cover every worker.
//!
//! | series | type | labels |
//! | --- | --- | --- |
//! | `sluice_batches` | gauge | pipeline, version, state |
//! | `sluice_rows_in_total`, `sluice_rows_out_total` | counter | pipeline, version |
//! | `sluice_batch_duration_seconds` | histogram | pipeline, version (live versions only) |
//! | `sluice_backlog_batches` | gauge | pipeline |
//! | `sluice_oldest_pending_age_seconds` | gauge | pipeline |
//! | `sluice_workers_alive` | gauge | |
//! | `sluice_check_failures_total` | counter | pipeline, check, level |
//! | `sluice_deployment_phase` | gauge (1 for the phase in effect, 0 for the others) | pipeline, phase |
//! | `sluice_deployment_weight` | gauge (percent of new batches) | pipeline, version, role (stable, candidate) |
//! | `sluice_analysis_measurements` | gauge | pipeline, analysis, metric, phase |
//!
//! The deployment series cover the deployments in progress only, so their version labels are
//! the live versions.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use sluice_app::metrics::{Metrics, PHASES, bucket_bounds_seconds};

/// The content type of the text [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics as OpenMetrics text.
pub fn render(metrics: Metrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(metrics)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One scrape's numbers, encoded as they are (nothing accumulates in this process).
#[derive(Debug)]
struct Snapshot(Metrics);

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        {
            let mut family = encoder.encode_descriptor(
                "sluice_batches",
                "Batches in the queue by pipeline, version (live versions; others summed as \"retired\") and state.",
                None,
                MetricType::Gauge,
            )?;
            for b in &m.batches {
                let labels: Labels = vec![
                    ("pipeline", &b.pipeline),
                    ("version", &b.version),
                    ("state", b.state.as_str()),
                ];
                family.encode_family(&labels)?.encode_gauge(&b.batches)?;
            }
        }
        for (name, help, rows_in) in [
            (
                "sluice_rows_in",
                "Rows read by committed batch runs, by pipeline and version.",
                true,
            ),
            (
                "sluice_rows_out",
                "Rows published by committed batch runs, by pipeline and version.",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &m.rows {
                let labels: Labels = vec![("pipeline", &r.pipeline), ("version", &r.version)];
                let value = count(if rows_in { r.rows_in } else { r.rows_out });
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, f64>(&value, None)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_batch_duration",
                "How long committed batch runs took, by pipeline and live version.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            let bounds = bucket_bounds_seconds();
            for h in &m.durations {
                let version = h.version.to_string();
                let labels: Labels = vec![("pipeline", &h.pipeline), ("version", &version)];
                // The encoder takes each bucket's own count and adds them up.
                let mut buckets = Vec::with_capacity(bounds.len() + 1);
                let mut below = 0;
                for (bound, cumulative) in bounds.iter().zip(&h.buckets) {
                    buckets.push((*bound, count(cumulative - below)));
                    below = *cumulative;
                }
                buckets.push((f64::INFINITY, count(h.runs - below)));
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        h.duration_ms_sum as f64 / 1000.0,
                        count(h.runs),
                        &buckets,
                        None,
                    )?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_backlog_batches",
                "Batches waiting to be leased, by pipeline (what to scale workers on).",
                None,
                MetricType::Gauge,
            )?;
            for b in &m.backlog {
                let labels: Labels = vec![("pipeline", &b.pipeline)];
                family.encode_family(&labels)?.encode_gauge(&b.pending)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_oldest_pending_age",
                "How long the longest-waiting pending batch has waited, by pipeline (0 when none waits).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for b in &m.backlog {
                let labels: Labels = vec![("pipeline", &b.pipeline)];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&b.oldest_pending_seconds)?;
            }
        }
        encoder
            .encode_descriptor(
                "sluice_workers_alive",
                "Workers of every process on this store that are not stopped and reported in the last minute.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&m.workers_alive)?;
        {
            let mut family = encoder.encode_descriptor(
                "sluice_check_failures",
                "Batch runs on which a check failed, by pipeline, check and level (warn or error).",
                None,
                MetricType::Counter,
            )?;
            for c in &m.check_failures {
                let labels: Labels = vec![
                    ("pipeline", &c.pipeline),
                    ("check", &c.check),
                    ("level", &c.level),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, f64>(&count(c.results), None)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_deployment_phase",
                "The phase of each pipeline's deployment (idle: none in progress): 1 for the phase in effect, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for (pipeline, now) in &m.phases {
                for phase in PHASES {
                    let labels: Labels = vec![("pipeline", pipeline), ("phase", phase)];
                    let value: i64 = (now == phase).into();
                    family.encode_family(&labels)?.encode_gauge(&value)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_deployment_weight",
                "Percent of new batches (or keys) routed to each version of a deployment in progress.",
                None,
                MetricType::Gauge,
            )?;
            for d in &m.deployments {
                let candidate = d.candidate_version.to_string();
                let stable = d.stable_version.to_string();
                let weight = i64::from(d.candidate_weight.min(100));
                for (version, role, value) in [
                    (&candidate, "candidate", weight),
                    (&stable, "stable", 100 - weight),
                ] {
                    let labels: Labels = vec![
                        ("pipeline", &d.pipeline),
                        ("version", version),
                        ("role", role),
                    ];
                    family.encode_family(&labels)?.encode_gauge(&value)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sluice_analysis_measurements",
                "Measurements of each analysis metric of a deployment in progress, by the phase they ended in.",
                None,
                MetricType::Gauge,
            )?;
            for d in &m.deployments {
                for (analysis, metric, phase, n) in &d.measurements {
                    let labels: Labels = vec![
                        ("pipeline", &d.pipeline),
                        ("analysis", analysis),
                        ("metric", metric),
                        ("phase", phase),
                    ];
                    let n = i64::try_from(*n).unwrap_or(i64::MAX);
                    family.encode_family(&labels)?.encode_gauge(&n)?;
                }
            }
        }
        Ok(())
    }
}
