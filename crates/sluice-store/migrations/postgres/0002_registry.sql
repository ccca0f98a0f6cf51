-- sluice state store, version 2 (PostgreSQL): the dataset schema registry.
-- Keep in step with ../sqlite/0002_registry.sql: same tables, same columns, same meaning.
-- Schemas are stored as JSON text: the store keeps them, sluice-schema understands them.

CREATE TABLE datasets (
    name          TEXT   PRIMARY KEY,
    -- the dataset's compatibility mode (BACKWARD, ...); NULL follows registry_config's default
    compatibility TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE schema_versions (
    dataset       TEXT   NOT NULL REFERENCES datasets (name),
    -- 1, 2, ... per dataset, never reused
    version       BIGINT NOT NULL,
    -- the normalized schema with field ids
    schema_json   TEXT   NOT NULL,
    -- hash of schema_json: registering the same schema again finds this version
    fingerprint   TEXT   NOT NULL,
    -- the highest field id ever given in this dataset, so a dropped field's id is never reused
    last_field_id BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (dataset, version),
    UNIQUE (dataset, fingerprint)
);

-- Registry-wide settings; 'compatibility' is the mode of datasets without their own.
CREATE TABLE registry_config (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO registry_config (key, value) VALUES ('compatibility', 'BACKWARD');
