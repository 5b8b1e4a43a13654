-- The audit trail as read from audit.log, for queries. The topic stays the record of
-- truth: each row keeps its partition and offset, and its chain hashes.
CREATE TABLE audit_records (
    audit_id    TEXT PRIMARY KEY,
    log_partition BIGINT NOT NULL,
    log_offset  BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    role        TEXT,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    source_ip   TEXT,
    trace_id    TEXT,
    occurred_at BIGINT NOT NULL,
    prev_hash   TEXT,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_records_resource ON audit_records (resource);
CREATE INDEX audit_records_occurred ON audit_records (occurred_at);
