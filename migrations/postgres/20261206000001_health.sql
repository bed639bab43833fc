-- A row readiness rewrites to learn whether the database takes writes
-- again after an append failed (a full disk, a read-only volume).
CREATE TABLE cairn_health (
    id INTEGER PRIMARY KEY,
    probed_at TEXT NOT NULL
);
