-- Model specs, training runs (the experiment records) and the requests each run answers.
CREATE TABLE specs (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    -- pending, running, succeeded, rejected_by_gate, failed
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- A pending run starts no sooner than this (the cooldown that coalesces a burst).
    not_before BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    -- Times the run was started; above one, it was interrupted by a restart and resumed.
    attempts BIGINT NOT NULL DEFAULT 0,
    -- The experiment record, once the run finished.
    record TEXT,
    -- Whether its TrainingRunResult reached training.runs.
    published BIGINT NOT NULL DEFAULT 0,
    trace_id TEXT
);
CREATE INDEX runs_model ON runs (model, created_at);
CREATE INDEX runs_status ON runs (status, not_before);
CREATE TABLE run_requests (
    request_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id),
    model TEXT NOT NULL,
    reason TEXT NOT NULL,
    triggering_event_id TEXT,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    window_start BIGINT,
    window_end BIGINT
);
CREATE INDEX run_requests_run ON run_requests (run_id);
