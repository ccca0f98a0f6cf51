-- Measurements of data quality checks: one row per check per batch run, per pipeline version,
-- so analysis, volume trends and the dashboard can read how a version behaves over time.
CREATE TABLE check_results (
    id BIGSERIAL PRIMARY KEY,
    pipeline TEXT NOT NULL,
    version BIGINT NOT NULL,
    batch_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL,
    considered BIGINT NOT NULL,
    failing BIGINT NOT NULL,
    dropped BIGINT NOT NULL,
    detail TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX check_results_by_version ON check_results (pipeline, version, recorded_at);
