//! W10: a workflow of 10 sequential `task` steps whose handler returns its
//! input with a counter incremented; each step's outcome is committed before
//! the next step starts. Latency (200 runs, one at a time) and throughput
//! (1,000 runs, 16 at a time) on SQLite and PostgreSQL, each next to the raw
//! floor measured in the same run: 10 single-row commits per run with the
//! same durability settings.
//!
//! ```text
//! cargo run --release -p cairn-runtime --example w10 [-- --postgres URL] [--quick]
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Executor};

#[path = "bench/mod.rs"]
mod bench;

use bench::{Figures, Floor, measure, measure_floor, peak_rss_mib, report};

/// The workflow: 10 sequential `increment` tasks.
const W10: &str = include_str!("w10.yaml");

async fn measure_cairn(engine: Arc<Engine>, runs_latency: usize, runs_tput: usize, concurrency: usize) -> Figures {
    let w = Arc::new(cairn_runtime::lang::parse(W10, "w10.yaml", &engine.task_names()).unwrap());
    let version = engine.publish(&w, "bench").await.unwrap();
    let one = move |_: usize| {
        let (engine, w) = (engine.clone(), w.clone());
        async move {
            let mut quiet = |_: &Event| {};
            let (_, s) = engine.run(&w, version, json!({}), "bench", &mut quiet).await.unwrap();
            assert_eq!(s.status, RunStatus::Completed);
            assert_eq!(s.output, Some(json!({ "counter": 10 })));
        }
    };
    for i in 0..10 {
        one(i).await; // warm-up
    }
    measure(runs_latency, runs_tput, concurrency, one).await
}

/// Runs on a current-thread tokio runtime (Cairn and the floor alike), or
/// with `--multi-thread` on one worker per core.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = if args.iter().any(|a| a == "--multi-thread") {
        println!("runtime: tokio multi-thread, one worker per core");
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        println!("runtime: tokio current-thread (pass --multi-thread for one worker per core)");
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    runtime.expect("runtime").block_on(bench(args));
}

async fn bench(args: Vec<String>) {
    let quick = args.iter().any(|a| a == "--quick");
    let (lat_runs, tput_runs, conc) = if quick { (40, 200, 16) } else { (200, 1000, 16) };
    let pg_url = args
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(cairn_events::testing::pg_url);
    println!(
        "W10: 10 sequential task steps per run; latency over {lat_runs} runs one at a time, throughput over {tput_runs} runs {conc} at a time"
    );
    println!("floor: 10 single-row INSERT commits per run, same database, same durability settings, same concurrency");

    // SQLite, WAL, synchronous=FULL, on the working directory's disk.
    let dir = tempfile::tempdir_in(".").unwrap();
    let store: Arc<dyn EventStore> =
        cairn_events::sqlite::SqliteStore::open(dir.path().join("w10.db"), Default::default()).await.unwrap();
    let floor = measure_floor(bench::sqlite_floor(dir.path()).await, 10, lat_runs, tput_runs, conc).await;
    let ours = measure_cairn(Arc::new(Engine::new(store, TaskRegistry::builtin())), lat_runs, tput_runs, conc).await;
    println!("sqlite: WAL, synchronous=FULL (both)");
    report("sqlite", &ours, &floor, conc, 10.0);
    println!("sqlite    peak RSS so far {:.1} MiB", peak_rss_mib());

    match sqlx::PgConnection::connect(&pg_url).await {
        Err(e) => println!("postgres: skipped ({e})"),
        Ok(mut admin) => {
            let schema = format!("cairn_w10_{}", std::process::id());
            admin.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await.unwrap();
            let opts: sqlx::postgres::PgConnectOptions = pg_url.parse().unwrap();
            let opts = opts.options([("search_path", schema.as_str())]);
            let store: Arc<dyn EventStore> =
                cairn_events::postgres::PgStore::connect_with(opts.clone(), "w10".into(), Default::default())
                    .await
                    .unwrap();
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect_with(opts).await.unwrap();
            pool.execute("CREATE TABLE floor (id BIGSERIAL PRIMARY KEY, k TEXT NOT NULL, v INTEGER NOT NULL, payload TEXT NOT NULL)").await.unwrap();
            let floor = measure_floor(Floor::Pg(pool), 10, lat_runs, tput_runs, conc).await;
            let ours =
                measure_cairn(Arc::new(Engine::new(store, TaskRegistry::builtin())), lat_runs, tput_runs, conc).await;
            println!("postgres: synchronous_commit=on (both)");
            report("postgres", &ours, &floor, conc, 10.0);
            admin.execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).await.unwrap();
        }
    }
    println!("peak RSS of the whole benchmark process: {:.1} MiB", peak_rss_mib());
    println!(
        "reference (issue 3, same machine kind): Restate 14.6 ms / 182 runs/s; LangGraph+SQLite 12.6 ms / 70 runs/s; DBOS 29.6 ms / 29 runs/s; Temporal dev 550 ms / 6 runs/s"
    );
}
