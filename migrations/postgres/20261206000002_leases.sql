-- Which worker drives which run. A worker beats in cairn_workers; a lease is
-- live while its worker's beat is fresh. Claiming a run whose worker is gone
-- takes it over and raises the lease's token, which fences every append the
-- old owner still tries (cairn_append_guarded).
CREATE TABLE cairn_workers (
    worker_id  TEXT   PRIMARY KEY,
    beat_ms    BIGINT NOT NULL,          -- milliseconds since the epoch
    started_ms BIGINT NOT NULL,
    about      TEXT   NOT NULL           -- host and process, for operators
);
CREATE TABLE cairn_leases (
    stream_id TEXT   PRIMARY KEY,        -- the run's stream
    worker_id TEXT   NOT NULL,
    token     BIGINT NOT NULL            -- raised at each takeover
);
CREATE INDEX cairn_leases_by_worker ON cairn_leases (worker_id);

-- When each run next needs a worker (milliseconds since the epoch; 0 while a
-- worker drives it, so a dead worker's run is due at once). Written in the
-- same transaction as the events that set or clear it; a run waiting for
-- people, or ended, has no row. Workers claim due rows no live worker holds.
CREATE TABLE cairn_wakeups (
    stream_id TEXT   PRIMARY KEY,
    due_ms    BIGINT NOT NULL
);
CREATE INDEX cairn_wakeups_by_due ON cairn_wakeups (due_ms);

-- cairn_append, refused (SQLSTATE CF001) unless each fence's lease is still
-- held with its token, then the wake-up index changed (a due time of -1
-- removes the run, and frees its lease if this append is fenced by it), all
-- in one transaction. The lease rows are locked first,
-- so a takeover (which updates them) waits for this append to commit, or
-- this append sees the takeover and is refused: never both.
CREATE FUNCTION cairn_append_guarded(
    fence_streams TEXT[], fence_workers TEXT[], fence_tokens BIGINT[],
    wake_streams TEXT[], wake_dues BIGINT[],
    stream_ids TEXT[], stream_versions BIGINT[], event_ids TEXT[], event_types TEXT[], schema_versions INTEGER[],
    recorded_ats TEXT[], metadatas TEXT[], payloads TEXT[], prev_hashes TEXT[], hashes TEXT[]
) RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stale TEXT;
    first_pos BIGINT;
BEGIN
    IF cardinality(fence_streams) > 0 THEN
        -- A fence of token 0 takes a new run's lease with the append that
        -- creates it.
        INSERT INTO cairn_leases (stream_id, worker_id, token)
        SELECT f.stream_id, f.worker_id, 1
        FROM unnest(fence_streams, fence_workers, fence_tokens) AS f(stream_id, worker_id, token)
        WHERE f.token = 0
        ON CONFLICT (stream_id) DO NOTHING;
        PERFORM 1 FROM cairn_leases WHERE stream_id = ANY(fence_streams) ORDER BY stream_id FOR SHARE;
        SELECT f.stream_id INTO stale
        FROM unnest(fence_streams, fence_workers, fence_tokens) AS f(stream_id, worker_id, token)
        LEFT JOIN cairn_leases l ON l.stream_id = f.stream_id
        WHERE l.worker_id IS DISTINCT FROM f.worker_id OR (f.token <> 0 AND l.token IS DISTINCT FROM f.token)
        LIMIT 1;
        IF stale IS NOT NULL THEN
            RAISE EXCEPTION 'the lease on % is no longer held by this worker', stale USING ERRCODE = 'CF001';
        END IF;
    END IF;
    first_pos := cairn_append(stream_ids, stream_versions, event_ids, event_types, schema_versions,
                              recorded_ats, metadatas, payloads, prev_hashes, hashes);
    IF cardinality(wake_streams) > 0 THEN
        DELETE FROM cairn_wakeups w USING unnest(wake_streams, wake_dues) AS x(stream_id, due_ms)
        WHERE w.stream_id = x.stream_id AND x.due_ms < 0;
        INSERT INTO cairn_wakeups (stream_id, due_ms)
        SELECT x.stream_id, x.due_ms FROM unnest(wake_streams, wake_dues) AS x(stream_id, due_ms) WHERE x.due_ms >= 0
        ON CONFLICT (stream_id) DO UPDATE SET due_ms = excluded.due_ms;
        -- A run that needs no worker (it waits for people, or ended) is
        -- let go by the worker whose fenced append says so.
        IF cardinality(fence_streams) > 0 THEN
            DELETE FROM cairn_leases l
            USING unnest(fence_streams, fence_workers) AS f(stream_id, worker_id),
                  unnest(wake_streams, wake_dues) AS x(stream_id, due_ms)
            WHERE l.stream_id = f.stream_id AND l.worker_id = f.worker_id
              AND x.stream_id = f.stream_id AND x.due_ms < 0;
        END IF;
    END IF;
    RETURN first_pos;
END $$;
