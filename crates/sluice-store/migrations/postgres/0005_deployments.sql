-- Zero-downtime deployments: the deployment a pipeline moves through, its history, the
-- analyses' measurements, named analysis templates, leadership of the controller, and what the
-- router decided for each batch.
-- Keep in step with ../sqlite/0005_deployments.sql: same tables, same columns, same meaning.

-- A pipeline moving from its stable version to a candidate. The controller persists its state
-- here (state, step, route) and commands leave their request; every change appends an event.
CREATE TABLE deployments (
    id                BIGSERIAL PRIMARY KEY,
    pipeline          TEXT    NOT NULL REFERENCES pipelines (name),
    stable_version    BIGINT  NOT NULL,
    candidate_version BIGINT  NOT NULL,
    -- recreate, rolling, canary, ...
    strategy          TEXT    NOT NULL,
    -- the resolved deploy policy (steps, analyses) as JSON: what the controller follows
    policy            TEXT    NOT NULL,
    -- the controller's state, kept as given
    state             TEXT    NOT NULL,
    -- index of the current step of the policy
    step              BIGINT  NOT NULL DEFAULT 0,
    -- how the router sends new batches, and the candidate's share in percent
    route_mode        TEXT    NOT NULL CHECK (route_mode IN ('batch', 'slots', 'key', 'hold')),
    weight            BIGINT  NOT NULL CHECK (weight BETWEEN 0 AND 100),
    -- the router's counters since the route last changed: batches routed, and how many of them
    -- went to the candidate (route_mode batch keeps routed_candidate at weight percent of
    -- routed_total)
    routed_total      BIGINT  NOT NULL DEFAULT 0,
    routed_candidate  BIGINT  NOT NULL DEFAULT 0,
    -- the command waiting for the controller
    request           TEXT CHECK (request IN ('promote', 'promote_full', 'pause', 'resume', 'abort')),
    -- why it is paused, aborted, rolled back (or what it waits for)
    reason            TEXT,
    -- set when it ends; the deployment is active while this is NULL
    outcome           TEXT CHECK (outcome IN ('promoted', 'aborted', 'rolled_back')),
    -- the controller's scratch JSON (drain start, repair plan, ...)
    data              TEXT    NOT NULL DEFAULT '{}',
    started_by        TEXT    NOT NULL,
    -- the leader epoch of the last controller write (0: none yet)
    epoch             BIGINT  NOT NULL DEFAULT 0,
    created_at        BIGINT  NOT NULL,
    -- when the current step (or route) began
    step_started_at   BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL,
    finished_at       BIGINT,
    FOREIGN KEY (pipeline, stable_version) REFERENCES pipeline_versions (pipeline, version),
    FOREIGN KEY (pipeline, candidate_version) REFERENCES pipeline_versions (pipeline, version)
);

-- At most one active deployment per pipeline: starting a second one conflicts here, and the
-- router finds a pipeline's active deployment through it.
CREATE UNIQUE INDEX deployments_one_active ON deployments (pipeline) WHERE outcome IS NULL;
CREATE INDEX deployments_by_pipeline ON deployments (pipeline, id);

-- A deployment's history: every transition and every request, oldest first.
CREATE TABLE deployment_events (
    id            BIGSERIAL PRIMARY KEY,
    deployment_id BIGINT  NOT NULL REFERENCES deployments (id),
    at            BIGINT  NOT NULL,
    -- NULL for the first event
    from_state    TEXT,
    to_state      TEXT    NOT NULL,
    step          BIGINT  NOT NULL,
    -- the route after the event
    route_mode    TEXT    NOT NULL,
    weight        BIGINT  NOT NULL,
    message       TEXT    NOT NULL,
    -- the leader epoch that wrote it; 0 for commands
    epoch         BIGINT  NOT NULL
);
CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment_id, id);

-- One measurement of one metric of an analysis, with the inputs it was judged on, so a
-- decision can be explained afterwards.
CREATE TABLE analysis_measurements (
    id            BIGSERIAL PRIMARY KEY,
    deployment_id BIGINT  NOT NULL REFERENCES deployments (id),
    -- which analysis: step-2, background
    analysis      TEXT    NOT NULL,
    metric        TEXT    NOT NULL,
    -- successful, failed, inconclusive or error
    phase         TEXT    NOT NULL,
    -- the candidate's value and the stable version's in the same window (NULL: not measured)
    value         DOUBLE PRECISION,
    stable_value  DOUBLE PRECISION,
    -- JSON: the window, the sample counts, every value the condition read
    inputs        TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    measured_at   BIGINT  NOT NULL
);
CREATE INDEX analysis_measurements_by_deployment ON analysis_measurements (deployment_id, id);

-- Named, reusable analyses that several pipelines reference: their spec as YAML text.
CREATE TABLE analysis_templates (
    name       TEXT   PRIMARY KEY,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Who holds a duty (the controller) until when, by the store clock. The epoch grows by one each
-- time the duty changes hands and is never reset (resigning expires the row, it does not delete
-- it), so a write fenced by an old epoch can never match again.
CREATE TABLE leadership (
    duty        TEXT   PRIMARY KEY,
    holder      TEXT   NOT NULL,
    epoch       BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- What the router decided for each batch. routed_at is NULL until the first lease chooses the
-- version (queued and retried batches wait for it; the version column holds the pipeline's
-- current version meanwhile); a routed batch keeps its version through retries and rescues.
-- Batches queued before this migration count as routed, to the version they were pinned to.
ALTER TABLE tasks ADD COLUMN routed_at BIGINT;
UPDATE tasks SET routed_at = created_at;
-- A batch routed by key runs with both versions: rows whose key hashes below split_percent go
-- to split_version (the candidate), the rest to version (stable). Both NULL otherwise.
ALTER TABLE tasks ADD COLUMN split_version BIGINT;
ALTER TABLE tasks ADD COLUMN split_percent BIGINT;
-- 0, raised by each repair that removed the batch's rows: its commit is made under it.
ALTER TABLE tasks ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- Analysis windows: the runs of one version of a pipeline finished since a time. (Check results
-- have theirs: check_results_by_version.)
CREATE INDEX batch_runs_by_version_finished ON batch_runs (pipeline, version, finished_at);
