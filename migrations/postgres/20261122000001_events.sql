-- The event log. One row per event; never updated, never deleted.
CREATE TABLE events (
    global_position BIGINT  PRIMARY KEY,      -- assigned from event_log_head while holding its row lock: gap-free, commits in order
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

-- The last assigned global position. Appenders increment it in the same
-- statement that inserts their events; its row lock is held until commit, so
-- a later position can only commit after every earlier one is visible.
CREATE TABLE event_log_head (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    position BIGINT  NOT NULL
);
INSERT INTO event_log_head (id, position) VALUES (TRUE, 0);

CREATE FUNCTION cairn_events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: an appended event is never %', lower(TG_OP) || 'd';
END $$;
CREATE TRIGGER events_are_immutable BEFORE UPDATE OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION cairn_events_are_immutable();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION cairn_events_are_immutable();
