-- What each run of a batch cost, measured in the worker (sluice_core::usage): CPU time charged
-- to the batch's own code, and the most memory it held at once. NULL for runs recorded before
-- this migration, runs the rescuer recorded (the worker never reported) and where the
-- platform or binary cannot measure them.
ALTER TABLE batch_runs ADD COLUMN cpu_us BIGINT;
ALTER TABLE batch_runs ADD COLUMN peak_memory_bytes BIGINT;
