//! Event store benchmark: every figure next to a raw-SQL floor measured in
//! the same run, on the same disk, with the same durability settings.
//!
//! ```text
//! cargo run --release -p cairn-events --example store_bench [-- --postgres URL] [--quick]
//! ```
//!
//! The floor table has the same columns, primary key and unique index as
//! `events` (no triggers): the ratio is the cost of Cairn's code (hashing,
//! version checks, binding) on top of the database doing the same writes.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_events::postgres::{PgConfig, PgStore};
use cairn_events::sqlite::{SqliteConfig, SqliteStore};
use cairn_events::{Event, EventStore, ExpectedVersion, Metadata, NewEvent, StepCompleted, StreamAppend};
use sqlx::{AssertSqlSafe, Connection, Executor};

const RAW_SQLITE: &str = "CREATE TABLE raw_events (global_position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, stream_version INTEGER NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, recorded_at TEXT NOT NULL, metadata TEXT NOT NULL, payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (stream_id, stream_version)) STRICT";
const RAW_PG: &str = "CREATE TABLE raw_events (global_position BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, stream_version BIGINT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, recorded_at TEXT NOT NULL, metadata TEXT NOT NULL, payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (stream_id, stream_version))";

struct Cfg {
    singles: usize,
    batches: usize,
    rounds: usize,
}

fn event(n: u64) -> NewEvent {
    NewEvent::from_event(
        &Event::StepCompleted(StepCompleted {
            step_id: format!("step-{n}"),
            attempt: 1,
            output: serde_json::json!({ "title": "Durable workflows", "count": n, "tags": ["a", "b"] }),
            duration_ms: 12,
        }),
        Metadata::by("engine"),
    )
}

/// The exact bytes an event row holds, for the floor.
struct RawRow {
    stream_id: String,
    version: i64,
    event_id: String,
    payload: String,
    metadata: String,
}

fn raw_row(stream: &str, version: u64) -> RawRow {
    let e = event(version);
    RawRow {
        stream_id: stream.to_owned(),
        version: version as i64,
        event_id: e.event_id.to_string(),
        payload: e.payload,
        metadata: serde_json::to_string(&e.metadata).unwrap(),
    }
}

const HASH: &str = "5f0e7a1d9c3b2a4e6f8d0c1b3a5e7f9d2c4b6a8e0f1d3c5b7a9e2f4d6c8b0a1e";
const AT: &str = "2026-11-22T03:12:54.123456Z";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn row(backend: &str, what: &str, ours: f64, floor: f64, unit: &str) {
    println!(
        "{backend:<9} {what:<36} {:>12} {unit:<9} floor {:>12} {unit:<9} ratio {:>5.2}x",
        fmt(ours),
        fmt(floor),
        ours / floor
    );
}

fn fmt(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every column of an event row, decoded like `read_all` decodes it.
type FloorRow = (i64, String, i64, String, String, i64, String, String, String, String, String);

enum Raw {
    /// One held connection, as the store appends through.
    Sqlite(std::sync::Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>),
    Pg(sqlx::PgPool),
}

impl Raw {
    async fn insert_one(&self, pos: i64, r: &RawRow) {
        match self {
            Raw::Sqlite(p) => {
                sqlx::query("INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)")
                    .bind(&r.stream_id).bind(r.version).bind(&r.event_id).bind("StepCompleted").bind(1i64).bind(AT)
                    .bind(&r.metadata).bind(&r.payload).bind(HASH).bind(HASH)
                    .execute(&mut *p.lock().await).await.unwrap();
            }
            Raw::Pg(p) => {
                sqlx::query("INSERT INTO raw_events (global_position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)")
                    .bind(pos).bind(&r.stream_id).bind(r.version).bind(&r.event_id).bind("StepCompleted").bind(1i32).bind(AT)
                    .bind(&r.metadata).bind(&r.payload).bind(HASH).bind(HASH)
                    .execute(p).await.unwrap();
            }
        }
    }

    /// The same rows in one multi-row INSERT, one commit.
    async fn insert_batch(&self, first_pos: i64, rows: &[RawRow]) {
        match self {
            Raw::Sqlite(p) => {
                let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash) ",
                );
                qb.push_values(rows, |mut b, r| {
                    b.push_bind(r.stream_id.clone())
                        .push_bind(r.version)
                        .push_bind(r.event_id.clone())
                        .push_bind("StepCompleted")
                        .push_bind(1i64)
                        .push_bind(AT)
                        .push_bind(r.metadata.clone())
                        .push_bind(r.payload.clone())
                        .push_bind(HASH)
                        .push_bind(HASH);
                });
                qb.build().execute(&mut *p.lock().await).await.unwrap();
            }
            Raw::Pg(p) => {
                let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                    "INSERT INTO raw_events (global_position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash) ",
                );
                let mut pos = first_pos;
                qb.push_values(rows, |mut b, r| {
                    b.push_bind(pos)
                        .push_bind(r.stream_id.clone())
                        .push_bind(r.version)
                        .push_bind(r.event_id.clone())
                        .push_bind("StepCompleted")
                        .push_bind(1i32)
                        .push_bind(AT)
                        .push_bind(r.metadata.clone())
                        .push_bind(r.payload.clone())
                        .push_bind(HASH)
                        .push_bind(HASH);
                    pos += 1;
                });
                qb.build().execute(p).await.unwrap();
            }
        }
    }

    /// Reads `n` rows in pages of `page`, decoding every column like read_all.
    async fn select_all(&self, n: usize, page: i64) -> usize {
        let mut got = 0;
        let mut from = 0i64;
        while got < n {
            let rows: Vec<FloorRow> = match self {
                Raw::Sqlite(p) => sqlx::query_as("SELECT global_position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash FROM raw_events WHERE global_position > ? ORDER BY global_position LIMIT ?")
                    .bind(from).bind(page).fetch_all(&mut *p.lock().await).await.unwrap(),
                Raw::Pg(p) => sqlx::query_as("SELECT global_position, stream_id, stream_version, event_id, event_type, CAST(schema_version AS BIGINT), recorded_at, metadata, payload, prev_hash, hash FROM raw_events WHERE global_position > $1 ORDER BY global_position LIMIT $2")
                    .bind(from).bind(page).fetch_all(p).await.unwrap(),
            };
            if rows.is_empty() {
                break;
            }
            from = rows.last().unwrap().0;
            got += rows.len();
        }
        got
    }
}

async fn bench(backend: &str, store: Arc<dyn EventStore>, raw: Raw, cfg: &Cfg) {
    // 1. Single-event appends, one commit each, alternating rounds.
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    let mut raw_pos = 0i64;
    for round in 0..cfg.rounds {
        let stream = format!("single-{round}");
        let rows: Vec<RawRow> = (1..=cfg.singles as u64).map(|v| raw_row(&format!("raw-{stream}"), v)).collect();
        let t = Instant::now();
        for r in &rows {
            raw_pos += 1;
            raw.insert_one(raw_pos, r).await;
        }
        floor.push(cfg.singles as f64 / t.elapsed().as_secs_f64());

        let events: Vec<NewEvent> = (1..=cfg.singles as u64).map(event).collect();
        let t = Instant::now();
        for (i, e) in events.into_iter().enumerate() {
            store.append(&stream, ExpectedVersion::Exact(i as u64), vec![e]).await.unwrap();
        }
        ours.push(cfg.singles as f64 / t.elapsed().as_secs_f64());
    }
    let single = median(ours.clone());
    row(backend, "single-event append (1 commit each)", single, median(floor), "events/s");

    // 2. 64 streams x 1 event in one group commit.
    let (mut ours_g, mut floor_g) = (Vec::new(), Vec::new());
    for round in 0..cfg.rounds {
        let t = Instant::now();
        for b in 0..cfg.batches {
            let rows: Vec<RawRow> = (0..64).map(|s| raw_row(&format!("raw-g{round}-{b}-{s}"), 1)).collect();
            raw.insert_batch(raw_pos + 1, &rows).await;
            raw_pos += 64;
        }
        floor_g.push((cfg.batches * 64) as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        for b in 0..cfg.batches {
            let appends = (0..64)
                .map(|s| StreamAppend {
                    stream_id: format!("g{round}-{b}-{s}"),
                    expected: ExpectedVersion::NoStream,
                    events: vec![event(s)],
                })
                .collect();
            store.append_many(appends).await.unwrap();
        }
        ours_g.push((cfg.batches * 64) as f64 / t.elapsed().as_secs_f64());
    }
    let group = median(ours_g);
    row(backend, "group commit, 64 streams x 1 event", group, median(floor_g), "events/s");
    println!(
        "{backend:<9} {:<36} {:>12.1}x single-event appends (goal: >= 10x)",
        "group commit speed-up",
        group / single
    );

    // 3. read_all against a raw SELECT of as many rows, pages of 1,000.
    let n = store.head_position().await.unwrap() as usize;
    let raw_n = raw_pos as usize;
    let n = n.min(raw_n);
    let (mut ours_r, mut floor_r) = (Vec::new(), Vec::new());
    for _ in 0..cfg.rounds {
        let t = Instant::now();
        let got = raw.select_all(n, 1000).await;
        floor_r.push(got as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut got = 0;
        let mut from = 1;
        while got < n {
            let page = store.read_all(from, 1000).await.unwrap();
            if page.is_empty() {
                break;
            }
            from = page.last().unwrap().global_position + 1;
            got += page.len();
        }
        ours_r.push(got as f64 / t.elapsed().as_secs_f64());
    }
    row(backend, &format!("read_all ({n} events, pages of 1,000)"), median(ours_r), median(floor_r), "events/s");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let pg_url = args
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("CAIRN_TEST_POSTGRES_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let cfg = if quick {
        Cfg { singles: 200, batches: 20, rounds: 3 }
    } else {
        Cfg { singles: 2000, batches: 150, rounds: 3 }
    };
    println!(
        "cairn event store benchmark: median of {} alternating rounds; floor = raw sqlx INSERT/SELECT of the same bytes into an identical table",
        cfg.rounds
    );

    // SQLite on the working directory's disk (not tmpfs), synchronous=FULL.
    let dir = tempfile::tempdir_in(".").unwrap();
    let store = SqliteStore::open(dir.path().join("bench.db"), SqliteConfig::default()).await.unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("raw.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let raw = std::sync::Arc::new(tokio::sync::Mutex::new(sqlx::ConnectOptions::connect(&opts).await.unwrap()));
    raw.lock().await.execute(RAW_SQLITE).await.unwrap();
    println!("sqlite: WAL, synchronous=FULL (both sides), file in {}", dir.path().display());
    bench("sqlite", store, Raw::Sqlite(raw), &cfg).await;

    // PostgreSQL in a fresh schema.
    match sqlx::PgConnection::connect(&pg_url).await {
        Err(e) => println!("postgres: skipped ({e})"),
        Ok(mut admin) => {
            let schema = format!("cairn_bench_{}", std::process::id());
            admin.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await.unwrap();
            let opts: sqlx::postgres::PgConnectOptions = pg_url.parse().unwrap();
            let opts = opts.options([("search_path", schema.as_str())]);
            let store = PgStore::connect_with(opts.clone(), "bench".into(), PgConfig::default()).await.unwrap();
            let raw = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect_with(opts).await.unwrap();
            raw.execute(RAW_PG).await.unwrap();
            let sync: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&raw).await.unwrap();
            println!("postgres: synchronous_commit={sync} (both sides), schema {schema}");
            bench("postgres", store, Raw::Pg(raw), &cfg).await;
            admin.execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).await.unwrap();
        }
    }
    let _ = Duration::ZERO;
}
