-- Files that change after they were taken in, and the data files each batch commit added.
-- Keep in step with the other backend's 0004_file_changes.sql: same tables, same columns.

-- What was taken in of each file: bytes [0, taken_bytes) were sliced and queued (under
-- `on_change: reprocess`, up to the last complete line), `checksum` is the hex BLAKE3 of those
-- bytes (NULL for files taken in before checksums were kept), `generation` counts how often the
-- file was replaced and its content taken in again.
ALTER TABLE files ADD COLUMN taken_bytes BIGINT;
ALTER TABLE files ADD COLUMN taken_rows BIGINT;
ALTER TABLE files ADD COLUMN checksum TEXT;
ALTER TABLE files ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
-- The last change discovery noticed (size and modification time it saw, what changed, what it
-- did about it), so each change is reported once, not at every poll.
ALTER TABLE files ADD COLUMN change_size BIGINT;
ALTER TABLE files ADD COLUMN change_modified_ms BIGINT;
ALTER TABLE files ADD COLUMN change_detail TEXT;
ALTER TABLE files ADD COLUMN change_action TEXT;
ALTER TABLE files ADD COLUMN change_noticed_at BIGINT;

-- Which file content each queued batch holds: a replaced file's new batches carry a higher
-- generation, and their commit removes the data files of the batches of lower generations.
CREATE TABLE batch_inputs (
    batch_id   TEXT   PRIMARY KEY,
    pipeline   TEXT   NOT NULL,
    path       TEXT   NOT NULL,
    generation BIGINT NOT NULL
);
CREATE INDEX batch_inputs_by_file ON batch_inputs (pipeline, path, generation);

-- The data files a batch's Delta commit added (also in that commit's commitInfo), so a later
-- commit can remove exactly them: a replaced file's old rows, a rolled-back version's rows.
CREATE TABLE batch_files (
    pipeline      TEXT   NOT NULL,
    batch_id      TEXT   NOT NULL,
    table_version BIGINT NOT NULL,
    data_file     TEXT   NOT NULL,
    recorded_at   BIGINT NOT NULL,
    PRIMARY KEY (batch_id, data_file)
);
