-- The event log. One row per event; never updated, never deleted.
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,      -- rowid: max + 1 under SQLite's single writer, so gap-free
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
) STRICT;

-- Defence in depth: the application never changes an event. Someone with
-- write access to the file can drop these; the hash chain catches that.
CREATE TRIGGER events_are_immutable_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are immutable: an appended event is never updated'); END;
CREATE TRIGGER events_are_immutable_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are immutable: an appended event is never deleted'); END;
