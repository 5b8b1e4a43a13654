-- The Schema Registry: schemas by id, subjects' versions, compatibility levels.
-- IF NOT EXISTS: databases created before versioned migrations already hold these.
CREATE TABLE IF NOT EXISTS sr_schemas (
    id BIGINT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    schema_type TEXT NOT NULL,
    schema_text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sr_versions (
    subject TEXT NOT NULL,
    version BIGINT NOT NULL,
    schema_id BIGINT NOT NULL REFERENCES sr_schemas (id),
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS sr_versions_schema ON sr_versions (schema_id);
CREATE TABLE IF NOT EXISTS sr_config (
    subject TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
