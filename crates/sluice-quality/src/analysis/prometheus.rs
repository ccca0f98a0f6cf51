//! The Prometheus analysis provider's arithmetic: a metric's `prometheus: {address, query}`,
//! the placeholders of its query, and what an instant query's answer means. The HTTP request
//! itself is the controller's (`sluice-deploy`).
//!
//! ```yaml
//! metrics:
//!   - name: error-ratio
//!     interval: 30s
//!     prometheus:
//!       address: http://prometheus:9090
//!       query: |
//!         sum(increase(sluice_batches_total{pipeline="{{pipeline}}",version="{{candidate}}",state="failed"}[1m]))
//!         / sum(increase(sluice_batches_total{pipeline="{{pipeline}}",version="{{candidate}}"}[1m]))
//!     failure_condition: result > 0.05
//! ```
//!
//! The query must answer exactly one value (a scalar, or a vector of one series): an empty
//! answer, several series, an error answer or an unreachable server is a measurement Error,
//! never a pass.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FieldError, at_path};

/// Where and what to ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusQuery {
    /// The server's base URL, `http://host:9090` (the query goes to `/api/v1/query`).
    pub address: String,
    /// PromQL, with `{{pipeline}}`, `{{candidate}}` and `{{stable}}` (version numbers) filled
    /// in at each measurement, and `{{args.NAME}}` from the analysis' arguments.
    pub query: String,
    /// How long the request may take (default 10s).
    #[serde(
        default = "default_timeout",
        with = "humantime_serde",
        skip_serializing_if = "is_default_timeout"
    )]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn is_default_timeout(d: &Duration) -> bool {
    *d == default_timeout()
}

/// What a query's `{{...}}` placeholders stand for at a measurement.
pub struct QueryVars<'a> {
    pub pipeline: &'a str,
    pub candidate: i64,
    pub stable: i64,
}

impl PrometheusQuery {
    pub fn new(address: impl Into<String>, query: impl Into<String>) -> PrometheusQuery {
        PrometheusQuery {
            address: address.into(),
            query: query.into(),
            timeout: default_timeout(),
        }
    }

    /// Checks the address, the query's placeholders and the timeout; paths are relative to
    /// the `prometheus:` mapping.
    pub fn validate(&self) -> Result<(), FieldError> {
        let rest = self
            .address
            .strip_prefix("http://")
            .or_else(|| self.address.strip_prefix("https://"));
        if !rest.is_some_and(|h| !h.is_empty() && !h.starts_with('/'))
            || self.address.chars().any(|c| c.is_whitespace())
        {
            return Err(FieldError::new(
                at_path!["address"],
                format!(
                    "prometheus address {:?} is not an http:// or https:// URL with a host (e.g. http://prometheus:9090)",
                    self.address
                ),
            ));
        }
        if self.query.trim().is_empty() {
            return Err(FieldError::new(
                at_path!["query"],
                "the prometheus query is empty: give a PromQL expression",
            ));
        }
        fill(&self.query, &|_| Some(String::new()), true)
            .map_err(|e| FieldError::new(at_path!["query"], e))?;
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err(FieldError::new(
                at_path!["timeout"],
                "the prometheus timeout must be 100ms to 60s",
            ));
        }
        Ok(())
    }

    /// The query with `{{args.NAME}}` filled from `args`; the version placeholders stay.
    pub fn with_args(&self, args: &BTreeMap<String, String>) -> Result<PrometheusQuery, String> {
        let query = fill(&self.query, &|a| args.get(a).cloned(), false)?;
        Ok(PrometheusQuery {
            query,
            ..self.clone()
        })
    }

    /// The query as sent at a measurement.
    pub fn render(&self, vars: &QueryVars<'_>) -> Result<String, String> {
        let mut out = String::with_capacity(self.query.len());
        let mut rest = self.query.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or("`{{` without `}}` in the prometheus query")?;
            match after[..end].trim() {
                "pipeline" => out.push_str(vars.pipeline),
                "candidate" => out.push_str(&vars.candidate.to_string()),
                "stable" => out.push_str(&vars.stable.to_string()),
                other => {
                    return Err(format!(
                        "placeholder `{{{{{other}}}}}` in the prometheus query has no value"
                    ));
                }
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The instant-query URL.
    pub fn endpoint(&self) -> String {
        format!("{}/api/v1/query", self.address.trim_end_matches('/'))
    }
}

/// `text` with each `{{args.NAME}}` replaced by `arg(NAME)`; `{{pipeline}}`, `{{candidate}}`
/// and `{{stable}}` kept. With `lenient`, an argument without a value is kept too.
fn fill(text: &str, arg: &dyn Fn(&str) -> Option<String>, lenient: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(
            "`{{` without `}}`: write {{candidate}}, {{stable}}, {{pipeline}} or {{args.NAME}}",
        )?;
        let inner = after[..end].trim();
        match inner {
            "pipeline" | "candidate" | "stable" => out.push_str(&rest[start..start + 2 + end + 2]),
            _ => match inner.strip_prefix("args.") {
                Some(name) if super::valid_name(name) => match arg(name) {
                    Some(v) => out.push_str(&v),
                    None if lenient => out.push_str(&rest[start..start + 2 + end + 2]),
                    None => {
                        return Err(format!(
                            "the prometheus query uses {{{{args.{name}}}}} but the analysis gives no argument {name:?}: add it under `args`"
                        ));
                    }
                },
                _ => {
                    return Err(format!(
                        "unknown placeholder `{{{{{inner}}}}}` in the prometheus query: write {{{{candidate}}}}, {{{{stable}}}}, {{{{pipeline}}}} or {{{{args.NAME}}}}"
                    ));
                }
            },
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What an instant query answered: its one value, as sent (`"0.25"`, `"NaN"`) and as a
/// number, with the series' labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryValue {
    pub raw: String,
    pub value: f64,
    pub labels: serde_json::Value,
}

/// Reads the body of `/api/v1/query`: exactly one value, or an error saying why not.
pub fn read_answer(body: &str) -> Result<QueryValue, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        format!("the answer is not Prometheus' JSON ({e}): is the address a Prometheus server?")
    })?;
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus refused the query: {} {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let data = &v["data"];
    let sample = |s: &serde_json::Value| -> Result<(String, f64), String> {
        let raw = s[1]
            .as_str()
            .ok_or_else(|| format!("a sample {s} holds no value"))?;
        let value = raw
            .parse::<f64>()
            .map_err(|_| format!("the value {raw:?} is not a number"))?;
        Ok((raw.to_string(), value))
    };
    match data["resultType"].as_str() {
        Some("scalar") => {
            let (raw, value) = sample(&data["result"])?;
            Ok(QueryValue {
                raw,
                value,
                labels: serde_json::json!({}),
            })
        }
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => Err("the query answered no series (is the metric scraped, are the labels right?): nothing to judge".into()),
                [one] => {
                    let (raw, value) = sample(&one["value"])?;
                    Ok(QueryValue {
                        raw,
                        value,
                        labels: one["metric"].clone(),
                    })
                }
                many => Err(format!(
                    "the query answered {} series, not one: aggregate it (sum(...), max(...)) or narrow its labels; series: {}",
                    many.len(),
                    many.iter()
                        .take(5)
                        .map(|s| s["metric"].to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        other => Err(format!(
            "the query answered a {}, not one value: give an instant vector of one series or a scalar",
            other.unwrap_or("result of no known type")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_checked() {
        let q = PrometheusQuery::new(
            "http://p:9090/",
            "rate(x{pipeline=\"{{pipeline}}\",version=\"{{ candidate }}\"}[{{args.w}}]) / on() y{version=\"{{stable}}\"}",
        );
        q.validate().unwrap();
        let q = q
            .with_args(&BTreeMap::from([("w".into(), "1m".into())]))
            .unwrap();
        let vars = QueryVars {
            pipeline: "orders",
            candidate: 3,
            stable: 2,
        };
        assert_eq!(
            q.render(&vars).unwrap(),
            "rate(x{pipeline=\"orders\",version=\"3\"}[1m]) / on() y{version=\"2\"}"
        );
        assert_eq!(q.endpoint(), "http://p:9090/api/v1/query");
        let bad = PrometheusQuery::new("http://p", "x{v=\"{{candidat}}\"}");
        let e = bad.validate().unwrap_err();
        assert_eq!(e.path, at_path!["query"]);
        assert!(e.message.contains("{{candidat}}"), "{e}");
        let e = PrometheusQuery::new("http://p", "x[{{args.w}}]")
            .with_args(&BTreeMap::new())
            .unwrap_err();
        assert!(e.contains("args.w"), "{e}");
        let e = PrometheusQuery::new("prometheus:9090", "up")
            .validate()
            .unwrap_err();
        assert_eq!(e.path, at_path!["address"]);
    }

    #[test]
    fn an_answer_counts_only_with_exactly_one_value() {
        let vector = |series: &str| {
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{series}]}}}}"#
            )
        };
        let one = r#"{"metric":{"version":"3"},"value":[1700000000.1,"0.25"]}"#;
        let a = read_answer(&vector(one)).unwrap();
        assert_eq!((a.raw.as_str(), a.value), ("0.25", 0.25));
        assert_eq!(a.labels["version"], "3");
        let e = read_answer(&vector("")).unwrap_err();
        assert!(e.contains("no series"), "{e}");
        let e = read_answer(&vector(&format!("{one},{one}"))).unwrap_err();
        assert!(e.contains("2 series"), "{e}");
        let s = read_answer(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"7"]}}"#,
        )
        .unwrap();
        assert_eq!(s.value, 7.0);
        let e = read_answer(
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#,
        )
        .unwrap_err();
        assert!(e.contains("bad_data") && e.contains("parse error"), "{e}");
        let e = read_answer(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
            .unwrap_err();
        assert!(e.contains("matrix"), "{e}");
        assert!(read_answer("<html>").is_err());
        let nan = read_answer(&vector(r#"{"metric":{},"value":[1,"NaN"]}"#)).unwrap();
        assert!(
            nan.value.is_nan(),
            "NaN is read; the condition then refuses it"
        );
    }
}
