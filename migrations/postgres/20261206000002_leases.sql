-- Which worker drives which run. A worker beats in cairn_workers; a lease is
-- live while its worker's beat is fresh. Claiming a run whose worker is gone
-- takes it over and raises the lease's token, which fences every append the
-- old owner still tries (cairn_append_fenced).
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

-- cairn_append, refused (SQLSTATE CF001) unless each fence's lease is still
-- held with its token. The lease rows are locked first, so a takeover
-- (which updates them) waits for this append to commit, or this append sees
-- the takeover and is refused: never both.
CREATE FUNCTION cairn_append_fenced(
    fence_streams TEXT[], fence_workers TEXT[], fence_tokens BIGINT[],
    stream_ids TEXT[], stream_versions BIGINT[], event_ids TEXT[], event_types TEXT[], schema_versions INTEGER[],
    recorded_ats TEXT[], metadatas TEXT[], payloads TEXT[], prev_hashes TEXT[], hashes TEXT[]
) RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stale TEXT;
BEGIN
    PERFORM 1 FROM cairn_leases WHERE stream_id = ANY(fence_streams) ORDER BY stream_id FOR SHARE;
    SELECT f.stream_id INTO stale
    FROM unnest(fence_streams, fence_workers, fence_tokens) AS f(stream_id, worker_id, token)
    LEFT JOIN cairn_leases l ON l.stream_id = f.stream_id
    WHERE l.worker_id IS DISTINCT FROM f.worker_id OR l.token IS DISTINCT FROM f.token
    LIMIT 1;
    IF stale IS NOT NULL THEN
        RAISE EXCEPTION 'the lease on % is no longer held by this worker', stale USING ERRCODE = 'CF001';
    END IF;
    RETURN cairn_append(stream_ids, stream_versions, event_ids, event_types, schema_versions,
                        recorded_ats, metadatas, payloads, prev_hashes, hashes);
END $$;
