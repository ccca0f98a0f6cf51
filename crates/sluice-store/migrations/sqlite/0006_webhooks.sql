-- Webhooks: the outbox of deployment events. deployment_events is written in the same
-- transaction as each transition; the leader's delivery duty sends each event to each of the
-- deployment's webhook URLs, in order, and records here what became of it.
-- Keep in step with ../postgres/0006_webhooks.sql: same tables, same columns, same meaning.

-- One event to one URL. Recorded as 'sending' before each request and as its outcome after,
-- so a leader that dies between the two leaves 'sending' behind and its successor sends again
-- (at least once; receivers deduplicate by the Idempotency-Key header).
CREATE TABLE webhook_deliveries (
    event_id        BIGINT NOT NULL REFERENCES deployment_events (id),
    url             TEXT   NOT NULL,
    deployment_id   BIGINT NOT NULL REFERENCES deployments (id),
    state           TEXT   NOT NULL CHECK (state IN ('sending', 'retrying', 'delivered', 'failed')),
    -- requests made so far
    attempts        BIGINT NOT NULL,
    -- a retrying delivery waits until then (store clock, ms)
    next_attempt_at BIGINT NOT NULL,
    -- the last answer's HTTP status (NULL: none, the request failed), and why it failed
    last_status     BIGINT,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (event_id, url)
);
CREATE INDEX webhook_deliveries_by_deployment ON webhook_deliveries (deployment_id, event_id);

-- Every request made, with its answer.
CREATE TABLE webhook_attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id BIGINT NOT NULL REFERENCES deployments (id),
    event_id      BIGINT NOT NULL REFERENCES deployment_events (id),
    url           TEXT   NOT NULL,
    -- 1 for the first request of this event to this URL
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    -- NULL while the request is out (or its sender died)
    finished_at   BIGINT,
    status        BIGINT,
    error         TEXT,
    UNIQUE (event_id, url, attempt)
);
CREATE INDEX webhook_attempts_by_deployment ON webhook_attempts (deployment_id, id);
