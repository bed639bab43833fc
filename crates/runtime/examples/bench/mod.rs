//! What the benchmark programs share: the raw-database floor (N single-row
//! INSERT commits per run, the same durability and concurrency), latency and
//! throughput measurement, and the report of a figure beside its floor.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: &str = r#"{"step_id":"s3","attempt":1,"output":{"counter":4},"duration_ms":0}"#;

pub fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) process `pid` has used ("self" for this one),
/// from `/proc/PID/stat` (ticks of 1/100 s, Linux's fixed USER_HZ).
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

#[derive(Clone)]
pub enum Floor {
    /// One held connection, as the store appends through.
    Sqlite(Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>),
    /// A pool, as many writers use.
    Pg(sqlx::PgPool),
}

impl Floor {
    /// One "run" of the floor: `commits` single-row commits.
    pub async fn run(&self, key: &str, commits: usize) {
        for i in 0..commits as i64 {
            match self {
                Floor::Sqlite(p) => {
                    sqlx::query("INSERT INTO floor (k, v, payload) VALUES (?, ?, ?)")
                        .bind(key)
                        .bind(i)
                        .bind(PAYLOAD)
                        .execute(&mut *p.lock().await)
                        .await
                        .unwrap();
                }
                Floor::Pg(p) => {
                    sqlx::query("INSERT INTO floor (k, v, payload) VALUES ($1, $2, $3)")
                        .bind(key)
                        .bind(i)
                        .bind(PAYLOAD)
                        .execute(p)
                        .await
                        .unwrap();
                }
            }
        }
    }
}

pub struct Figures {
    pub median_ms: f64,
    pub p99_ms: f64,
    pub runs_per_s: f64,
    /// Median latency of a run in the throughput phase (`concurrency` at a time).
    pub loaded_median_ms: f64,
}

/// Latency of `runs_latency` runs one at a time, then throughput of
/// `runs_tput` runs `concurrency` at a time; `one(i)` performs run `i`.
pub async fn measure<F, Fut>(runs_latency: usize, runs_tput: usize, concurrency: usize, one: F) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut lat = Vec::with_capacity(runs_latency);
    for i in 0..runs_latency {
        let t = Instant::now();
        one(i).await;
        lat.push(t.elapsed());
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(runs_tput);
    for i in 0..runs_tput {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            one(runs_latency + i).await;
            drop(permit);
            t.elapsed()
        }));
    }
    let mut loaded = Vec::with_capacity(runs_tput);
    for t in tasks {
        loaded.push(t.await.unwrap());
    }
    let runs_per_s = runs_tput as f64 / t.elapsed().as_secs_f64();
    Figures {
        median_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
        runs_per_s,
        loaded_median_ms: pct(&mut loaded, 0.5),
    }
}

pub async fn measure_floor(
    floor: Floor,
    commits: usize,
    runs_latency: usize,
    runs_tput: usize,
    concurrency: usize,
) -> Figures {
    measure(runs_latency, runs_tput, concurrency, move |i| {
        let floor = floor.clone();
        async move { floor.run(&format!("r{i}"), commits).await }
    })
    .await
}

pub fn report(backend: &str, ours: &Figures, floor: &Figures, concurrency: usize, steps_per_run: f64) {
    println!(
        "{backend:<9} latency median {:>7.2} ms  p99 {:>7.2} ms | floor median {:>7.2} ms  p99 {:>7.2} ms | median ratio {:.2}x",
        ours.median_ms,
        ours.p99_ms,
        floor.median_ms,
        floor.p99_ms,
        ours.median_ms / floor.median_ms
    );
    println!(
        "{backend:<9} throughput @{concurrency} {:>8.0} runs/s ({:>6.0} steps/s) | floor {:>8.0} runs/s | ratio {:.2}x",
        ours.runs_per_s,
        ours.runs_per_s * steps_per_run,
        floor.runs_per_s,
        ours.runs_per_s / floor.runs_per_s
    );
}

/// A SQLite floor database beside the store, with the floor table.
pub async fn sqlite_floor(dir: &std::path::Path) -> Floor {
    use sqlx::Executor;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("floor.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut conn: sqlx::SqliteConnection = sqlx::ConnectOptions::connect(&opts).await.unwrap();
    conn.execute(
        "CREATE TABLE floor (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v INTEGER NOT NULL, payload TEXT NOT NULL)",
    )
    .await
    .unwrap();
    Floor::Sqlite(Arc::new(tokio::sync::Mutex::new(conn)))
}
