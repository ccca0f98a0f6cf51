//! The webhook outbox: what became of each deployment event sent to each webhook URL, and every
//! request made. Statements shared by both backends (run by `shared.rs`).

use crate::deployments::EventRow;
use crate::{DeploymentEvent, Result, StoreError};

/// Where one delivery (one event to one URL) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// A request is out, or its sender died before recording the answer: sent again.
    Sending,
    /// The last request failed; the next waits for `next_attempt_at`.
    Retrying,
    Delivered,
    /// Every attempt failed; given up.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Sending => "sending",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// Delivered or given up: nothing more is sent.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryState::Delivered | DeliveryState::Failed)
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "sending" => DeliveryState::Sending,
            "retrying" => DeliveryState::Retrying,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => return Err(format!("unknown webhook delivery state {other:?}")),
        })
    }
}

/// A deployment event with its id: what the outbox sends.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEvent {
    pub id: i64,
    #[serde(flatten)]
    pub event: DeploymentEvent,
}

/// What became of one event sent to one URL.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookDelivery {
    pub event_id: i64,
    pub url: String,
    pub deployment_id: i64,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

/// One request made.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookAttempt {
    pub deployment_id: i64,
    pub event_id: i64,
    pub url: String,
    pub attempt: i64,
    pub started_at: i64,
    /// `None`: the request is out, or its sender died before recording the answer.
    pub finished_at: Option<i64>,
    pub status: Option<i64>,
    pub error: Option<String>,
}

/// How a request ended, as [`crate::Store::finish_delivery`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryResult {
    /// The HTTP status answered (`None`: no answer: refused, timed out).
    pub status: Option<i64>,
    pub error: Option<String>,
    /// Retrying (then `retry_in_ms`), Delivered or Failed.
    pub state: DeliveryState,
    pub retry_in_ms: i64,
}

/// `$1` deployment. Oldest first.
pub(crate) const OUTBOX_SQL: &str = "SELECT id, deployment_id, at, from_state, to_state, step, \
    route_mode, weight, message, epoch FROM deployment_events WHERE deployment_id = $1 \
    ORDER BY id";

#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    id: i64,
    #[sqlx(flatten)]
    event: EventRow,
}

impl OutboxRow {
    pub(crate) fn into_outbox(self) -> Result<OutboxEvent> {
        Ok(OutboxEvent {
            id: self.id,
            event: self.event.into_event()?,
        })
    }
}

/// `$1` event, `$2` url, `$3` deployment. One more attempt, unless the delivery is final.
pub(crate) const BEGIN_DELIVERY_SQL: &str = "INSERT INTO webhook_deliveries \
    (event_id, url, deployment_id, state, attempts, next_attempt_at, updated_at) \
    VALUES ($1, $2, $3, 'sending', 1, {now}, {now}) \
    ON CONFLICT (event_id, url) DO UPDATE SET state = 'sending', \
    attempts = webhook_deliveries.attempts + 1, updated_at = excluded.updated_at \
    WHERE webhook_deliveries.state NOT IN ('delivered', 'failed') \
    RETURNING attempts";

/// `$1` deployment, `$2` event, `$3` url, `$4` attempt.
pub(crate) const INSERT_ATTEMPT_SQL: &str = "INSERT INTO webhook_attempts \
    (deployment_id, event_id, url, attempt, started_at) VALUES ($1, $2, $3, $4, {now})";

/// `$1` event, `$2` url, `$3` attempt, `$4` status, `$5` error.
pub(crate) const FINISH_ATTEMPT_SQL: &str = "UPDATE webhook_attempts SET finished_at = {now}, \
    status = $4, error = $5 WHERE event_id = $1 AND url = $2 AND attempt = $3";

/// `$1` event, `$2` url, `$3` attempt, `$4` state, `$5` retry in ms, `$6` status, `$7` error.
/// Only the latest attempt's answer counts.
pub(crate) const FINISH_DELIVERY_SQL: &str = "UPDATE webhook_deliveries SET state = $4, \
    next_attempt_at = {now} + $5, last_status = $6, last_error = $7, updated_at = {now} \
    WHERE event_id = $1 AND url = $2 AND attempts = $3 AND state = 'sending'";

/// `$1` deployment.
pub(crate) const DELIVERIES_SQL: &str = "SELECT event_id, url, deployment_id, state, attempts, \
    next_attempt_at, last_status, last_error, updated_at FROM webhook_deliveries \
    WHERE deployment_id = $1 ORDER BY event_id, url";

/// `$1` deployment.
pub(crate) const ATTEMPTS_SQL: &str = "SELECT deployment_id, event_id, url, attempt, started_at, \
    finished_at, status, error FROM webhook_attempts WHERE deployment_id = $1 ORDER BY id";

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    event_id: i64,
    url: String,
    deployment_id: i64,
    state: String,
    attempts: i64,
    next_attempt_at: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    updated_at: i64,
}

impl DeliveryRow {
    pub(crate) fn into_delivery(self) -> Result<WebhookDelivery> {
        let state = self.state.parse().map_err(|e: String| {
            StoreError::Corrupt(format!(
                "webhook delivery of event {} to {}: {e}",
                self.event_id, self.url
            ))
        })?;
        Ok(WebhookDelivery {
            event_id: self.event_id,
            url: self.url,
            deployment_id: self.deployment_id,
            state,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_status: self.last_status,
            last_error: self.last_error,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    deployment_id: i64,
    event_id: i64,
    url: String,
    attempt: i64,
    started_at: i64,
    finished_at: Option<i64>,
    status: Option<i64>,
    error: Option<String>,
}

impl From<AttemptRow> for WebhookAttempt {
    fn from(r: AttemptRow) -> WebhookAttempt {
        WebhookAttempt {
            deployment_id: r.deployment_id,
            event_id: r.event_id,
            url: r.url,
            attempt: r.attempt,
            started_at: r.started_at,
            finished_at: r.finished_at,
            status: r.status,
            error: r.error,
        }
    }
}
