-- What each accepted record held (`<schema id>:<digest>`), so that a record reusing an
-- accepted id with other content is refused instead of answered `duplicate`. NULL for
-- ids remembered before: their content is unknown, and a retry of them stays a duplicate.
ALTER TABLE ingestion_accepted ADD COLUMN fingerprint TEXT;
