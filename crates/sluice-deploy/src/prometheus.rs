//! The Prometheus analysis provider: a metric's instant query, asked at each measurement.

use sluice_quality::analysis::PrometheusQuery;
use sluice_quality::analysis::prometheus::{QueryValue, QueryVars, read_answer};

/// What one query answered: the query as sent, and its one value or why there is none.
pub struct Answer {
    pub query: String,
    pub value: Result<QueryValue, String>,
}

/// Asks `q` (its placeholders filled from `vars`) with `GET /api/v1/query`.
pub async fn ask(http: &reqwest::Client, q: &PrometheusQuery, vars: &QueryVars<'_>) -> Answer {
    let query = match q.render(vars) {
        Ok(query) => query,
        Err(e) => {
            return Answer {
                query: q.query.clone(),
                value: Err(e),
            };
        }
    };
    let value = async {
        let resp = http
            .get(q.endpoint())
            .query(&[("query", query.as_str())])
            .timeout(q.timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!(
                        "Prometheus at {} did not answer within {}",
                        q.address,
                        humantime::format_duration(q.timeout)
                    )
                } else {
                    format!("Prometheus at {} is unreachable: {e}", q.address)
                }
            })?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("reading Prometheus' answer: {e}"))?;
        // An error answer (400 bad_data, 422) still holds Prometheus' JSON with the reason.
        read_answer(&body).map_err(|e| {
            if status.is_success() {
                e
            } else {
                format!("Prometheus answered {status}: {e}")
            }
        })
    }
    .await;
    Answer { query, value }
}
