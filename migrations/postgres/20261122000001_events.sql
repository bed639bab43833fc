-- The event log. One row per event; never updated, never deleted.
CREATE TABLE events (
    global_position BIGINT  PRIMARY KEY,      -- assigned by cairn_append under its lock: gap-free, commits in order
    stream_id       TEXT    NOT NULL,
    stream_version  BIGINT  NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     TEXT    NOT NULL,         -- text, not timestamptz: the hash covers the stored bytes
    metadata        TEXT    NOT NULL,         -- text, not jsonb: jsonb reorders keys
    payload         TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- Appends rows and returns the first global position. Gap-free, in-order
-- positions: the transaction-scoped advisory lock is held until this
-- transaction has committed and become visible, and each statement of a
-- VOLATILE PL/pgSQL function takes a fresh READ COMMITTED snapshot, so the
-- max() below always sees the previous holder's events. A rolled-back append
-- (a version conflict) consumes no position. Plain sequences do not give
-- this: their values become visible in commit order, not value order.
CREATE FUNCTION cairn_append(
    stream_ids TEXT[], stream_versions BIGINT[], event_ids TEXT[], event_types TEXT[], schema_versions INTEGER[],
    recorded_ats TEXT[], metadatas TEXT[], payloads TEXT[], prev_hashes TEXT[], hashes TEXT[]
) RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    base BIGINT;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'cairn_append needs READ COMMITTED isolation, not %', current_setting('transaction_isolation');
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('cairn.events.' || current_schema()));
    SELECT COALESCE(MAX(global_position), 0) INTO base FROM events;
    INSERT INTO events (global_position, stream_id, stream_version, event_id, event_type, schema_version,
                        recorded_at, metadata, payload, prev_hash, hash)
    SELECT base + e.ord, e.stream_id, e.stream_version, e.event_id, e.event_type, e.schema_version,
           e.recorded_at, e.metadata, e.payload, e.prev_hash, e.hash
    FROM unnest(stream_ids, stream_versions, event_ids, event_types, schema_versions,
                recorded_ats, metadatas, payloads, prev_hashes, hashes)
         WITH ORDINALITY AS e(stream_id, stream_version, event_id, event_type, schema_version,
                              recorded_at, metadata, payload, prev_hash, hash, ord);
    RETURN base + 1;
END $$;

CREATE FUNCTION cairn_events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: an appended event is never %', lower(TG_OP) || 'd';
END $$;
CREATE TRIGGER events_are_immutable BEFORE UPDATE OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION cairn_events_are_immutable();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION cairn_events_are_immutable();
