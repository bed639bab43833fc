-- The task queues: one row per `queue` step attempt offered to external
-- workers and not yet finished. Owned by the write side, not a projection:
-- the trigger below adds an offer in the transaction that appends its
-- `TaskOffered`, records the claim with its `TaskClaimed` (token_hash set),
-- and drops it in the one that appends the attempt's outcome (or the run's
-- end). The claiming worker keeps it by heartbeat; a claim not
-- beaten by beat_by_ms (milliseconds since the epoch) has lapsed, and the
-- engine fails the attempt (`heartbeat-timeout`).
CREATE TABLE cairn_tasks (
    stream_id    TEXT    NOT NULL,
    step_id      TEXT    NOT NULL,
    attempt      BIGINT  NOT NULL,
    queue        TEXT    NOT NULL,
    offered_at   BIGINT  NOT NULL,       -- the offer's global position: first offered, first claimed
    heartbeat_ms BIGINT  NOT NULL,
    token_hash   TEXT,                   -- SHA-256 of the claim's task token; NULL while offered
    worker       TEXT,
    claimed_ms   BIGINT,
    beat_by_ms   BIGINT,
    PRIMARY KEY (stream_id, step_id, attempt)
);
CREATE INDEX cairn_tasks_offered ON cairn_tasks (queue, offered_at) WHERE token_hash IS NULL;
CREATE INDEX cairn_tasks_claimed ON cairn_tasks (beat_by_ms) WHERE token_hash IS NOT NULL;

CREATE FUNCTION cairn_tasks_follow() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    p json := NEW.payload::json;
BEGIN
    IF NEW.event_type = 'TaskOffered' THEN
        INSERT INTO cairn_tasks (stream_id, step_id, attempt, queue, offered_at, heartbeat_ms)
        VALUES (NEW.stream_id, p->>'step_id', (p->>'attempt')::bigint, p->>'queue', NEW.global_position,
                (p->>'heartbeat_timeout_ms')::bigint)
        ON CONFLICT DO NOTHING;
    ELSIF NEW.event_type = 'TaskClaimed' THEN
        UPDATE cairn_tasks SET token_hash = p->>'token_hash', worker = p->>'worker',
            claimed_ms = (extract(epoch FROM NEW.recorded_at::timestamptz) * 1000)::bigint,
            beat_by_ms = (extract(epoch FROM (p->>'heartbeat_by')::timestamptz) * 1000)::bigint
        WHERE stream_id = NEW.stream_id AND step_id = p->>'step_id' AND attempt = (p->>'attempt')::bigint;
    ELSIF NEW.event_type IN ('StepCompleted', 'StepFailed') THEN
        DELETE FROM cairn_tasks
        WHERE stream_id = NEW.stream_id AND step_id = p->>'step_id' AND attempt = (p->>'attempt')::bigint;
    ELSE
        DELETE FROM cairn_tasks WHERE stream_id = NEW.stream_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER cairn_tasks_follow AFTER INSERT ON events FOR EACH ROW
WHEN (NEW.event_type IN ('TaskOffered', 'TaskClaimed', 'StepCompleted', 'StepFailed', 'RunCompleted', 'RunFailed', 'RunCancelled'))
EXECUTE FUNCTION cairn_tasks_follow();
