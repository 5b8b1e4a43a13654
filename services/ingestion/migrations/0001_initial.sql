-- Declared datasets, and the event ids accepted within the idempotency window.
-- IF NOT EXISTS: databases created before versioned migrations already hold these.
CREATE TABLE IF NOT EXISTS ingestion_datasets (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    schema_id BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ingestion_accepted (
    dataset TEXT NOT NULL,
    event_id TEXT NOT NULL,
    partition_id BIGINT NOT NULL,
    record_offset BIGINT NOT NULL,
    accepted_at BIGINT NOT NULL,
    PRIMARY KEY (dataset, event_id)
);
