-- The training run a version came from, as its own column so a registration retried by
-- the same run (its answer lost, or the trainer restarted after registering) finds the
-- version it already made instead of making a second one. NULL for versions registered
-- by hand; a unique index allows any number of NULLs on SQLite and PostgreSQL alike.
ALTER TABLE model_versions ADD COLUMN training_run_id TEXT;
CREATE UNIQUE INDEX model_versions_training_run ON model_versions (model, training_run_id);
