//! W10 in the benchmark's own process (the engine called directly) and
//! the raw database floor, for the HTTP benchmarks to print beside theirs.

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

use crate::{bench, server};

const W10: &str = include_str!("../../../runtime/examples/w10.yaml");

/// W10 in this process: its figures, the floor's, and the CPU time this
/// process spent per run.
pub async fn w10(dir: &std::path::Path, pg: bool, runs: usize, conc: usize) -> (bench::Figures, bench::Figures, f64) {
    let (floor, store): (bench::Floor, Arc<dyn EventStore>) = if pg {
        use sqlx::Executor;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect(&server::fresh_pg_db("cairn_http_floor").await)
            .await
            .unwrap();
        pool.execute(
            "CREATE TABLE floor (id BIGSERIAL PRIMARY KEY, k TEXT NOT NULL, v INTEGER NOT NULL, payload TEXT NOT NULL)",
        )
        .await
        .unwrap();
        let url = server::fresh_pg_db("cairn_http_w10").await;
        (bench::Floor::Pg(pool), cairn_events::open(&url).await.unwrap())
    } else {
        let store = cairn_events::sqlite::SqliteStore::open(dir.join("w10.db"), Default::default()).await.unwrap();
        (bench::sqlite_floor(dir).await, store)
    };
    let floor = bench::measure_floor(floor, 10, 50, runs, conc).await;
    let engine = Arc::new(Engine::new(store, TaskRegistry::builtin()));
    let w = Arc::new(cairn_runtime::lang::parse(W10, "w10.yaml", &engine.task_names()).unwrap());
    let version = engine.publish(&w, "bench").await.unwrap();
    let cpu = bench::cpu_time("self");
    let ours = bench::measure(50, runs, conc, move |_| {
        let (engine, w) = (engine.clone(), w.clone());
        async move {
            let mut quiet = |_: &Event| {};
            let (_, s) = engine.run(&w, version, json!({}), "bench", &mut quiet).await.unwrap();
            assert_eq!(s.status, RunStatus::Completed);
        }
    })
    .await;
    let cpu_ms = (bench::cpu_time("self") - cpu).as_secs_f64() * 1000.0 / (50 + runs) as f64;
    (ours, floor, cpu_ms)
}
