//! Webhooks: a deployment's events told to the URLs of its policy's `webhooks`, and the
//! confirm-promotion gate.
//!
//! **An outbox.** The controller writes each transition's event in the same store transaction
//! as the transition (`deployment_events`), so an event exists exactly when its transition
//! happened. The [`Notifier`], a leader duty, reads each deployment's events in order and POSTs
//! each one its webhooks want, recording the delivery as `sending` before the request and its
//! outcome after (both in the store). A failed request is retried with a doubling back-off (1s
//! up to 30s) `retries` times, then recorded as failed; a URL's later events wait for its
//! earlier ones, so each URL sees them in order. Nothing of this is on the batch path.
//!
//! **At least once.** A leader that dies after a request but before recording its answer
//! leaves the delivery `sending`, and the next leader sends it again: a receiver may see an
//! event twice after a leader crash, never zero times (while retries last). Each request
//! carries `Idempotency-Key: sluice-<deployment>-<event id>`, the same on every attempt, for a
//! receiver to deduplicate by.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::spec::DeploySpec;
use sluice_quality::policy::{HookEvent, HookFormat, Webhook};
use sluice_store::{
    DeliveryResult, DeliveryState, DeploymentEvent, DeploymentRecord, Fence, OutboxEvent, Store,
    StoreError, WebhookDelivery,
};

/// The words of the abort reason an analysis failure gives (`step 3: analysis failed: ...`,
/// `background analysis failed: ...`, composed with this constant): how its event is told
/// from other aborts.
pub(crate) const ANALYSIS_FAILED: &str = "analysis failed";

/// How many recent deployments the notifier looks at; older ones have long been delivered.
const RECENT_DEPLOYMENTS: i64 = 50;
/// Requests to one URL in one pass, so a long backlog does not hold the pass.
const PER_PASS: usize = 20;
/// Deliveries of a deployment ended longer ago than this are no longer attempted.
const GIVE_UP_AFTER_MS: i64 = 3_600_000;

/// The HTTP client webhooks and Prometheus are asked with (one pool for the process).
pub(crate) fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

/// What a deployment event is to a webhook, given the event before it (`None`: a command's
/// note in the history, which is not sent).
pub fn event_kind(prev: Option<&DeploymentEvent>, e: &DeploymentEvent) -> Option<HookEvent> {
    let Some(from) = e.from_state.as_deref() else {
        return Some(HookEvent::Started);
    };
    if e.epoch == 0 {
        return None;
    }
    match e.to_state.as_str() {
        "promoted" => Some(HookEvent::Promoted),
        "aborted" => Some(HookEvent::Aborted),
        "rolled_back" => Some(HookEvent::RolledBack),
        "paused" if from != "paused" => Some(HookEvent::Paused),
        "aborting" if from != "aborting" && e.message.contains(ANALYSIS_FAILED) => {
            Some(HookEvent::AnalysisFailed)
        }
        "progressing" if prev.is_none_or(|p| p.step != e.step) => Some(HookEvent::StepReached),
        _ => None,
    }
}

/// The body of an event's request.
fn event_body(
    d: &DeploymentRecord,
    e: &OutboxEvent,
    kind: HookEvent,
    format: HookFormat,
) -> serde_json::Value {
    match format {
        HookFormat::Json => serde_json::json!({
            "id": idempotency_key(d.id, e.id),
            "event": kind.as_str(),
            "deployment": d.id,
            "pipeline": d.pipeline,
            "strategy": d.strategy,
            "stable_version": d.stable_version,
            "candidate_version": d.candidate_version,
            "from_state": e.event.from_state,
            "state": e.event.to_state,
            "step": e.event.step,
            "weight": e.event.route.weight,
            "message": e.event.message,
            "at": e.event.at,
        }),
        HookFormat::Slack => serde_json::json!({
            "text": format!(
                "sluice: {} deployment {} (v{} -> v{}) {}: {}",
                d.pipeline,
                d.id,
                d.stable_version,
                d.candidate_version,
                kind.as_str().replace('_', " "),
                e.event.message
            ),
        }),
    }
}

fn idempotency_key(deployment: i64, event: i64) -> String {
    format!("sluice-{deployment}-{event}")
}

/// The wait before attempt `attempt + 1`: 1s, doubling, at most 30s.
fn backoff(attempt: i64) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 6) - 1).unwrap_or(0);
    Duration::from_secs(1 << exp).min(Duration::from_secs(30))
}

/// POSTs `body`; `Ok(status)` for any answer, `Err` when none came (refused, timed out).
async fn post(
    http: &reqwest::Client,
    hook: &Webhook,
    body: &serde_json::Value,
    headers: &[(&str, String)],
) -> Result<(u16, String), String> {
    let mut req = http.post(hook.url.trim()).timeout(hook.timeout).json(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.map_err(|e| describe(&e, hook))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let mut text: String = text.chars().take(200).collect();
    text = text.trim().to_string();
    Ok((status, text))
}

fn describe(e: &reqwest::Error, hook: &Webhook) -> String {
    if e.is_timeout() {
        format!(
            "no answer within {}",
            humantime::format_duration(hook.timeout)
        )
    } else if e.is_connect() {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        let mut why = String::new();
        while let Some(s) = source {
            why = s.to_string();
            source = s.source();
        }
        format!("could not connect ({why})")
    } else {
        e.to_string()
    }
}

/// Asks every confirm-promotion hook of `policy` whether `d` may be promoted. `Ok(())`: all
/// answered 2xx (or there are none); `Err(reason)` names the first that did not.
pub(crate) async fn confirm(
    http: &reqwest::Client,
    d: &DeploymentRecord,
    policy: &DeploySpec,
) -> Result<(), String> {
    for hook in policy.confirm_hooks() {
        let body = match hook.format {
            HookFormat::Json => serde_json::json!({
                "event": "confirm_promotion",
                "deployment": d.id,
                "pipeline": d.pipeline,
                "strategy": d.strategy,
                "stable_version": d.stable_version,
                "candidate_version": d.candidate_version,
                "step": d.step,
            }),
            HookFormat::Slack => serde_json::json!({
                "text": format!(
                    "sluice: {} deployment {} asks to promote v{} (stable v{})",
                    d.pipeline, d.id, d.candidate_version, d.stable_version
                ),
            }),
        };
        let headers = [("X-Sluice-Event", "confirm_promotion".to_string())];
        let why = match post(http, hook, &body, &headers).await {
            Ok((status, _)) if (200..300).contains(&status) => continue,
            Ok((status, text)) if text.is_empty() => format!("answered {status}"),
            Ok((status, text)) => format!("answered {status}: {text}"),
            Err(e) => e,
        };
        return Err(format!(
            "promotion held: confirm-promotion webhook {} {why}; it is asked again until it answers 2xx (`sluice abort` gives up)",
            hook.url
        ));
    }
    Ok(())
}

/// The delivery duty: sends the events of recent deployments to their webhooks.
#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn Store>,
    http: &'static reqwest::Client,
}

/// What a pass of the notifier did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NotifierReport {
    pub delivered: usize,
    pub failed: usize,
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>) -> Notifier {
        Notifier {
            store,
            http: client(),
        }
    }

    /// One pass: for each recent deployment with webhooks, each URL's due events in order,
    /// under `fence` (a process that lost the leadership sends nothing more).
    pub async fn tick(&self, fence: &Fence) -> Result<NotifierReport, StoreError> {
        let mut report = NotifierReport::default();
        let now = self.store.now().await?;
        for d in self.store.deployments(None, RECENT_DEPLOYMENTS).await? {
            if d.finished_at.is_some_and(|f| now - f > GIVE_UP_AFTER_MS) {
                continue;
            }
            let Ok(policy) = serde_json::from_str::<DeploySpec>(&d.policy) else {
                continue;
            };
            let hooks: Vec<&Webhook> = policy
                .webhooks
                .iter()
                .filter(|w| HookEvent::ALL.iter().any(|e| w.wants(*e)))
                .collect();
            if hooks.is_empty() {
                continue;
            }
            let events = self.store.outbox(d.id).await?;
            let done: HashMap<(i64, String), WebhookDelivery> = self
                .store
                .webhook_deliveries(d.id)
                .await?
                .into_iter()
                .map(|x| ((x.event_id, x.url.clone()), x))
                .collect();
            let passes = hooks
                .iter()
                .map(|w| self.deliver(fence, &d, w, &events, &done, now));
            for r in futures::future::join_all(passes).await {
                let r = r?;
                report.delivered += r.delivered;
                report.failed += r.failed;
            }
        }
        Ok(report)
    }

    /// One URL's due events of one deployment, in order; stops at one waiting to be retried.
    async fn deliver(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        hook: &Webhook,
        events: &[OutboxEvent],
        done: &HashMap<(i64, String), WebhookDelivery>,
        now: i64,
    ) -> Result<NotifierReport, StoreError> {
        let mut report = NotifierReport::default();
        let mut prev: Option<&DeploymentEvent> = None;
        let mut sent = 0;
        for e in events {
            let kind = event_kind(prev, &e.event);
            prev = Some(&e.event);
            let Some(kind) = kind.filter(|k| hook.wants(*k)) else {
                continue;
            };
            match done.get(&(e.id, hook.url.clone())) {
                Some(x) if x.state.is_final() => continue,
                Some(x) if x.state == DeliveryState::Retrying && x.next_attempt_at > now => {
                    return Ok(report);
                }
                _ => {}
            }
            if sent >= PER_PASS {
                return Ok(report);
            }
            let Some(attempt) = self
                .store
                .begin_delivery(fence, d.id, e.id, &hook.url)
                .await?
            else {
                return Ok(report);
            };
            sent += 1;
            let body = event_body(d, e, kind, hook.format);
            let headers = [
                ("Idempotency-Key", idempotency_key(d.id, e.id)),
                ("X-Sluice-Event", kind.as_str().to_string()),
                ("X-Sluice-Attempt", attempt.to_string()),
            ];
            let (status, error) = match post(self.http, hook, &body, &headers).await {
                Ok((s, _)) if (200..300).contains(&s) => (Some(i64::from(s)), None),
                Ok((s, text)) => (
                    Some(i64::from(s)),
                    Some(if text.is_empty() {
                        format!("answered {s}")
                    } else {
                        format!("answered {s}: {text}")
                    }),
                ),
                Err(e) => (None, Some(e)),
            };
            let state = match &error {
                None => DeliveryState::Delivered,
                Some(_) if attempt > i64::from(hook.retries) => DeliveryState::Failed,
                Some(_) => DeliveryState::Retrying,
            };
            let result = DeliveryResult {
                status,
                error: error.clone(),
                state,
                retry_in_ms: i64::try_from(backoff(attempt).as_millis()).unwrap_or(30_000),
            };
            self.store
                .finish_delivery(e.id, &hook.url, attempt, &result)
                .await?;
            match state {
                DeliveryState::Delivered => report.delivered += 1,
                DeliveryState::Failed => {
                    report.failed += 1;
                    tracing::warn!(deployment = d.id, url = %hook.url, event = kind.as_str(),
                        "webhook delivery failed after {attempt} attempt(s): {}", error.unwrap_or_default());
                }
                _ => {
                    tracing::debug!(deployment = d.id, url = %hook.url, event = kind.as_str(),
                        "webhook attempt {attempt} failed: {}; retrying", error.unwrap_or_default());
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::{Route, RouteMode};

    fn ev(from: Option<&str>, to: &str, step: i64, epoch: i64, message: &str) -> DeploymentEvent {
        DeploymentEvent {
            deployment_id: 1,
            at: 0,
            from_state: from.map(str::to_string),
            to_state: to.into(),
            step,
            route: Route {
                mode: RouteMode::Batch,
                weight: 10,
            },
            message: message.into(),
            epoch,
        }
    }

    #[test]
    fn events_are_told_apart_from_the_history() {
        let start = ev(None, "progressing", 0, 0, "started");
        let weight = ev(
            Some("progressing"),
            "progressing",
            1,
            1,
            "step 1: weight 10%",
        );
        let note = ev(
            Some("progressing"),
            "progressing",
            1,
            0,
            "promote requested",
        );
        let paused = ev(Some("progressing"), "paused", 1, 1, "step 2: paused");
        let failed = ev(
            Some("progressing"),
            "aborting",
            2,
            1,
            "aborting: step 3: analysis failed: x",
        );
        let aborted = ev(
            Some("progressing"),
            "aborting",
            2,
            1,
            "aborting: aborted by `sluice abort`",
        );
        assert_eq!(event_kind(None, &start), Some(HookEvent::Started));
        assert_eq!(
            event_kind(Some(&start), &weight),
            Some(HookEvent::StepReached)
        );
        assert_eq!(event_kind(Some(&weight), &note), None, "a command's note");
        assert_eq!(event_kind(Some(&weight), &paused), Some(HookEvent::Paused));
        assert_eq!(
            event_kind(Some(&weight), &failed),
            Some(HookEvent::AnalysisFailed)
        );
        assert_eq!(
            event_kind(Some(&weight), &aborted),
            None,
            "told when it ends aborted"
        );
        let end = ev(Some("repairing"), "aborted", 2, 1, "repaired");
        assert_eq!(event_kind(Some(&failed), &end), Some(HookEvent::Aborted));
        let back = ev(Some("repairing"), "rolled_back", 2, 1, "repaired");
        assert_eq!(
            event_kind(Some(&failed), &back),
            Some(HookEvent::RolledBack)
        );
        let same = ev(Some("progressing"), "progressing", 1, 1, "rolling: group 1");
        assert_eq!(event_kind(Some(&weight), &same), None, "the same step");
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let waits: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
