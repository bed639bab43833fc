-- Which worker drives which run. A worker beats in cairn_workers; a lease is
-- live while its worker's beat is fresh. Claiming a run whose worker is gone
-- takes it over and raises the lease's token, which fences every append the
-- old owner still tries (checked in the append's transaction).
CREATE TABLE cairn_workers (
    worker_id  TEXT    PRIMARY KEY,
    beat_ms    INTEGER NOT NULL,         -- milliseconds since the epoch
    started_ms INTEGER NOT NULL,
    about      TEXT    NOT NULL          -- host and process, for operators
);
CREATE TABLE cairn_leases (
    stream_id TEXT    PRIMARY KEY,       -- the run's stream
    worker_id TEXT    NOT NULL,
    token     INTEGER NOT NULL           -- raised at each takeover
);
CREATE INDEX cairn_leases_by_worker ON cairn_leases (worker_id);

-- When each run next needs a worker (milliseconds since the epoch; 0 while a
-- worker drives it, so a dead worker's run is due at once). Written in the
-- same transaction as the events that set or clear it; a run waiting for
-- people, or ended, has no row. Workers claim due rows no live worker holds.
CREATE TABLE cairn_wakeups (
    stream_id TEXT   PRIMARY KEY,
    due_ms    INTEGER NOT NULL
);
CREATE INDEX cairn_wakeups_by_due ON cairn_wakeups (due_ms);
