//! What `sluice worker --metrics-listen` serves: `/health` (the process is up) and `/metrics`,
//! the process's own metrics in the Prometheus text format. The pipelines' series come from
//! the store, through `sluice serve`; these are the ones only the process itself knows.
//!
//! | series | type |
//! | --- | --- |
//! | `process_cpu_seconds_total` | counter: user + system CPU time |
//! | `process_resident_memory_bytes` | gauge: resident set size now |
//! | `process_max_resident_memory_bytes` | gauge: the peak resident set size |
//! | `process_start_time_seconds` | gauge: when the process started, Unix time |

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{ServeError, Server};
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// The process's resource use, read now.
struct Usage {
    cpu_seconds: f64,
    max_rss_bytes: i64,
    rss_bytes: Option<i64>,
}

fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // Resident pages now: the second field of /proc/self/statm (Linux; absent elsewhere).
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map(|pages| pages * page as i64);
    Usage {
        cpu_seconds: secs(u.ru_utime) + secs(u.ru_stime),
        // ru_maxrss is in kilobytes on Linux
        max_rss_bytes: u.ru_maxrss * 1024,
        rss_bytes,
    }
}

fn metrics_text(started: f64) -> String {
    let u = usage();
    let mut registry = Registry::default();
    registry.register_with_unit(
        "process_cpu",
        "User and system CPU time spent by the process.",
        Unit::Seconds,
        ConstCounter::new(u.cpu_seconds),
    );
    if let Some(rss) = u.rss_bytes {
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory size.",
            Unit::Bytes,
            ConstGauge::new(rss),
        );
    }
    registry.register_with_unit(
        "process_max_resident_memory",
        "Peak resident memory size.",
        Unit::Bytes,
        ConstGauge::new(u.max_rss_bytes),
    );
    registry.register_with_unit(
        "process_start_time",
        "When the process started, in seconds since the Unix epoch.",
        Unit::Seconds,
        ConstGauge::new(started),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Binds `addr` for the process's `/health` and `/metrics`, ready to [`Server::run`]. Nothing
/// it serves names a pipeline or a row, so it needs no token.
pub async fn process_metrics(addr: SocketAddr) -> Result<Server, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let router = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    metrics_text(started),
                )
                    .into_response()
            }),
        );
    Ok(Server { listener, router })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_reports_its_cpu_and_memory() {
        let text = super::metrics_text(1.0);
        for series in [
            "process_cpu_seconds_total",
            "process_max_resident_memory_bytes",
            "process_start_time_seconds 1.0",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
