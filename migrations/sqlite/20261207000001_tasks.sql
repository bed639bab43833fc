-- The task queues: one row per `queue` step attempt offered to external
-- workers and not yet finished. Owned by the write side, not a projection:
-- the triggers below add an offer in the transaction that appends its
-- `TaskOffered`, record the claim with its `TaskClaimed` (token_hash set),
-- and drop it in the one that appends the attempt's outcome (or the run's
-- end). The claiming worker keeps it by heartbeat; a claim not beaten by beat_by_ms (milliseconds since the epoch)
-- has lapsed, and the engine fails the attempt (`heartbeat-timeout`).
CREATE TABLE cairn_tasks (
    stream_id    TEXT    NOT NULL,
    step_id      TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    queue        TEXT    NOT NULL,
    offered_at   INTEGER NOT NULL,       -- the offer's global position: first offered, first claimed
    heartbeat_ms INTEGER NOT NULL,
    token_hash   TEXT,                   -- SHA-256 of the claim's task token; NULL while offered
    worker       TEXT,
    claimed_ms   INTEGER,
    beat_by_ms   INTEGER,
    PRIMARY KEY (stream_id, step_id, attempt)
);
CREATE INDEX cairn_tasks_offered ON cairn_tasks (queue, offered_at) WHERE token_hash IS NULL;
CREATE INDEX cairn_tasks_claimed ON cairn_tasks (beat_by_ms) WHERE token_hash IS NOT NULL;

CREATE TRIGGER cairn_tasks_offer AFTER INSERT ON events WHEN NEW.event_type = 'TaskOffered'
BEGIN
    INSERT OR IGNORE INTO cairn_tasks (stream_id, step_id, attempt, queue, offered_at, heartbeat_ms)
    VALUES (NEW.stream_id, json_extract(NEW.payload, '$.step_id'), json_extract(NEW.payload, '$.attempt'),
            json_extract(NEW.payload, '$.queue'), NEW.global_position,
            json_extract(NEW.payload, '$.heartbeat_timeout_ms'));
END;
CREATE TRIGGER cairn_tasks_claim AFTER INSERT ON events WHEN NEW.event_type = 'TaskClaimed'
BEGIN
    UPDATE cairn_tasks SET token_hash = json_extract(NEW.payload, '$.token_hash'),
        worker = json_extract(NEW.payload, '$.worker'),
        claimed_ms = CAST(ROUND((julianday(NEW.recorded_at) - 2440587.5) * 86400000) AS INTEGER),
        beat_by_ms = CAST(ROUND((julianday(json_extract(NEW.payload, '$.heartbeat_by')) - 2440587.5) * 86400000) AS INTEGER)
    WHERE stream_id = NEW.stream_id AND step_id = json_extract(NEW.payload, '$.step_id')
        AND attempt = json_extract(NEW.payload, '$.attempt');
END;
CREATE TRIGGER cairn_tasks_outcome AFTER INSERT ON events
WHEN NEW.event_type IN ('StepCompleted', 'StepFailed')
BEGIN
    DELETE FROM cairn_tasks WHERE stream_id = NEW.stream_id
        AND step_id = json_extract(NEW.payload, '$.step_id') AND attempt = json_extract(NEW.payload, '$.attempt');
END;
CREATE TRIGGER cairn_tasks_run_end AFTER INSERT ON events
WHEN NEW.event_type IN ('RunCompleted', 'RunFailed', 'RunCancelled')
BEGIN
    DELETE FROM cairn_tasks WHERE stream_id = NEW.stream_id;
END;
