//! Suites and decisions: how sluice turns checks on a release into a verdict.
//!
//! A [`Suite`] is a list of [`Item`]s, each PASS, WARN or FAIL with a one-line detail, built
//! by `sluice verify pre` (before a candidate version takes traffic) and `sluice verify post`
//! (after). [`DecisionRules`] turn a suite into a [`Decision`]: any FAIL rolls back, more than
//! `max_warnings` WARNs asks a human to investigate, otherwise the release proceeds. The
//! deployment controller uses the same rules to gate each step.
//!
//! ```
//! use sluice_quality::{Decision, DecisionRules, Status, Suite};
//! let mut suite = Suite::new("pre");
//! suite.push("spec valid", Status::Pass, "orders.yaml parses and plans");
//! suite.push("backlog", Status::Warn, "12,000 batches pending");
//! assert_eq!(DecisionRules::default().decide(&suite).decision, Decision::Proceed);
//! ```
//!
//! Baseline comparisons ([`compare_rate`], [`compare_latency`], [`percentile`]) live here too,
//! so suites and the controller's analysis judge a candidate against its predecessor the same way.
//!
//! - [`policy`]: the spec's `deploy:` section: strategy (recreate, rolling, canary), canary
//!   steps, rolling limits, and its validation.
//! - [`analysis`]: metrics over a version's batch runs and check results, the conditions that
//!   judge them (`candidate.p95_ms < 1.2 * stable.p95_ms`), and Argo Rollouts' rules for
//!   turning measurements into a verdict.
//! - [`stats`]: A/B test statistics: per-route-key aggregation, the two-proportion z-test,
//!   Welch's t-test, the delta method, fixed-horizon sample sizes, the sequential mSPRT, and the
//!   ship / stop / keep-testing decision.

pub mod analysis;
pub mod policy;
pub mod stats;

use serde::{Deserialize, Serialize};

/// The verdict on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

/// A named list of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    pub name: String,
    pub items: Vec<Item>,
}

impl Suite {
    pub fn new(name: impl Into<String>) -> Suite {
        Suite {
            name: name.into(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.items.push(Item {
            name: name.into(),
            status,
            detail: detail.into(),
        });
    }

    pub fn count(&self, status: Status) -> usize {
        self.items.iter().filter(|i| i.status == status).count()
    }

    /// The readable table: one line per item.
    pub fn render(&self) -> String {
        let width = self.items.iter().map(|i| i.name.len()).max().unwrap_or(4);
        let mut out = String::new();
        for i in &self.items {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}\n",
                i.status, i.name, i.detail
            ));
        }
        out
    }
}

/// What to do with a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    Proceed,
    Investigate,
    Rollback,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Proceed => "PROCEED",
            Decision::Investigate => "INVESTIGATE",
            Decision::Rollback => "ROLLBACK",
        })
    }
}

/// The rules, configurable per pipeline (`deploy.max_warnings` in the spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRules {
    /// More WARN items than this means INVESTIGATE.
    #[serde(default = "default_max_warnings")]
    pub max_warnings: usize,
}

fn default_max_warnings() -> usize {
    2
}

impl Default for DecisionRules {
    fn default() -> Self {
        DecisionRules {
            max_warnings: default_max_warnings(),
        }
    }
}

/// A decision and the items that led to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    pub reasons: Vec<String>,
}

impl DecisionRules {
    pub fn decide(&self, suite: &Suite) -> Verdict {
        let named = |s: Status| -> Vec<String> {
            suite
                .items
                .iter()
                .filter(|i| i.status == s)
                .map(|i| format!("{}: {}", i.name, i.detail))
                .collect()
        };
        let fails = named(Status::Fail);
        if !fails.is_empty() {
            return Verdict {
                decision: Decision::Rollback,
                reasons: fails,
            };
        }
        let warns = named(Status::Warn);
        if warns.len() > self.max_warnings {
            return Verdict {
                decision: Decision::Investigate,
                reasons: warns,
            };
        }
        Verdict {
            decision: Decision::Proceed,
            reasons: warns,
        }
    }
}

/// The `p`-th percentile (0..=100) by nearest rank; `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.saturating_sub(1).min(v.len() - 1)])
}

/// Judges a candidate's rate (errors per batch) against its baseline: FAIL when it is more
/// than `fail_ratio` times the baseline and above `floor`, WARN above `warn_ratio`.
/// With no baseline, the candidate is judged against `floor` alone.
pub fn compare_rate(
    candidate: f64,
    baseline: Option<f64>,
    floor: f64,
    warn_ratio: f64,
    fail_ratio: f64,
) -> (Status, String) {
    let detail = match baseline {
        Some(b) => format!("{:.2}% vs {:.2}% before", candidate * 100.0, b * 100.0),
        None => format!("{:.2}% (no previous version to compare)", candidate * 100.0),
    };
    if candidate <= floor {
        return (Status::Pass, detail);
    }
    let Some(b) = baseline else {
        return (Status::Warn, detail);
    };
    let ratio = if b > 0.0 {
        candidate / b
    } else {
        f64::INFINITY
    };
    let status = if ratio > fail_ratio {
        Status::Fail
    } else if ratio > warn_ratio {
        Status::Warn
    } else {
        Status::Pass
    };
    (status, detail)
}

/// Judges a candidate's latency (e.g. p95 ms) against its baseline.
pub fn compare_latency(
    candidate: f64,
    baseline: Option<f64>,
    warn_ratio: f64,
    fail_ratio: f64,
) -> (Status, String) {
    match baseline {
        None => (
            Status::Pass,
            format!("{candidate:.0} ms (no previous version to compare)"),
        ),
        Some(b) => {
            let ratio = if b > 0.0 { candidate / b } else { 1.0 };
            let status = if ratio > fail_ratio {
                Status::Fail
            } else if ratio > warn_ratio {
                Status::Warn
            } else {
                Status::Pass
            };
            (
                status,
                format!("{candidate:.0} ms vs {b:.0} ms before ({ratio:.2}x)"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(statuses: &[Status]) -> Suite {
        let mut s = Suite::new("t");
        for (i, st) in statuses.iter().enumerate() {
            s.push(format!("item{i}"), *st, "d");
        }
        s
    }

    #[test]
    fn any_fail_rolls_back_whatever_else() {
        let v =
            DecisionRules::default().decide(&suite(&[Status::Pass, Status::Fail, Status::Warn]));
        assert_eq!(v.decision, Decision::Rollback);
        assert_eq!(v.reasons, vec!["item1: d"]);
    }

    #[test]
    fn warnings_above_the_limit_investigate() {
        let rules = DecisionRules::default();
        assert_eq!(
            rules.decide(&suite(&[Status::Warn, Status::Warn])).decision,
            Decision::Proceed
        );
        assert_eq!(
            rules
                .decide(&suite(&[Status::Warn, Status::Warn, Status::Warn]))
                .decision,
            Decision::Investigate
        );
        let strict = DecisionRules { max_warnings: 0 };
        assert_eq!(
            strict.decide(&suite(&[Status::Warn])).decision,
            Decision::Investigate
        );
        assert_eq!(
            strict.decide(&suite(&[Status::Pass])).decision,
            Decision::Proceed
        );
        assert_eq!(strict.decide(&suite(&[])).decision, Decision::Proceed);
    }

    #[test]
    fn rules_parse_with_defaults_and_refuse_unknown_fields() {
        let r: DecisionRules = serde_json::from_str("{}").unwrap();
        assert_eq!(r.max_warnings, 2);
        assert!(serde_json::from_str::<DecisionRules>("{\"max_warning\": 1}").is_err());
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 95.0), None);
        assert_eq!(percentile(&[f64::NAN, 3.0], 95.0), Some(3.0));
    }

    #[test]
    fn rates_and_latencies_against_a_baseline() {
        assert_eq!(compare_rate(0.0, Some(0.1), 0.01, 1.5, 3.0).0, Status::Pass);
        assert_eq!(compare_rate(0.1, Some(0.1), 0.01, 1.5, 3.0).0, Status::Pass);
        assert_eq!(compare_rate(0.2, Some(0.1), 0.01, 1.5, 3.0).0, Status::Warn);
        assert_eq!(compare_rate(0.5, Some(0.1), 0.01, 1.5, 3.0).0, Status::Fail);
        assert_eq!(compare_rate(0.5, Some(0.0), 0.01, 1.5, 3.0).0, Status::Fail);
        assert_eq!(compare_rate(0.5, None, 0.01, 1.5, 3.0).0, Status::Warn);
        assert_eq!(
            compare_latency(100.0, Some(100.0), 1.5, 3.0).0,
            Status::Pass
        );
        assert_eq!(
            compare_latency(200.0, Some(100.0), 1.5, 3.0).0,
            Status::Warn
        );
        assert_eq!(
            compare_latency(400.0, Some(100.0), 1.5, 3.0).0,
            Status::Fail
        );
        assert_eq!(compare_latency(400.0, None, 1.5, 3.0).0, Status::Pass);
    }

    #[test]
    fn render_lists_every_item() {
        let mut s = Suite::new("pre");
        s.push("spec valid", Status::Pass, "ok");
        s.push("backlog", Status::Warn, "big");
        let text = s.render();
        assert!(text.contains("PASS  spec valid  ok"), "{text}");
        assert!(text.contains("WARN  backlog     big"), "{text}");
    }
}
