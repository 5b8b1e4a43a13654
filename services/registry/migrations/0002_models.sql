-- The model registry: models, their immutable versions, and every stage transition.
-- A transition row is also the outbox entry of its models.lifecycle event: committed with
-- the change, published after, marked published once the broker acknowledged it.
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    -- Last version number and last lifecycle sequence number handed out. Both are taken
    -- by an UPDATE inside the writing transaction, which serialises writers of one model.
    last_version BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE model_versions (
    model TEXT NOT NULL REFERENCES models (name),
    version BIGINT NOT NULL,
    stage TEXT NOT NULL,
    canary_percent DOUBLE PRECISION,
    sha256 TEXT NOT NULL,
    signature TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE model_transitions (
    model TEXT NOT NULL REFERENCES models (name),
    sequence BIGINT NOT NULL,
    version BIGINT NOT NULL,
    from_stage TEXT,
    to_stage TEXT NOT NULL,
    canary_percent DOUBLE PRECISION,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    triggering_event_id TEXT,
    trace_id TEXT,
    at BIGINT NOT NULL,
    published BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (model, sequence)
);
CREATE INDEX model_transitions_unpublished ON model_transitions (published, model, sequence);
CREATE INDEX model_transitions_trigger ON model_transitions (triggering_event_id);
