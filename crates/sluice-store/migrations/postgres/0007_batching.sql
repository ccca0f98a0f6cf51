-- Batches that group several small files (batch.max_files, batch.max_bytes), and files whose
-- batches are queued while they are being cut.
-- Keep in step with the other backend's 0007_batching.sql: same columns.

-- The further files of a grouped batch, after the one in path/byte_start/...: a JSON array
-- of slices ({"path", "index", "byte_start", "byte_end", "row_start", "row_count"}), in the
-- batch's order. NULL for a batch of one file.
ALTER TABLE tasks ADD COLUMN grouped TEXT;

-- 1 while the first cut of a file is under way: its batches up to taken_bytes / taken_rows are
-- queued, the rest is not cut yet (a discoverer that died mid-cut left it; the next one goes
-- on from there). 0 once the whole file is cut.
ALTER TABLE files ADD COLUMN cutting BIGINT NOT NULL DEFAULT 0;
