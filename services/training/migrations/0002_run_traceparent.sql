-- The span the run's first request arrived in (W3C traceparent): the run, started later by
-- the runner, continues that trace as its child.
ALTER TABLE runs ADD COLUMN traceparent TEXT;
