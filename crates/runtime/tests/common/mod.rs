//! Helpers shared by the engine's store-backed tests.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::Engine;

/// A fresh SQLite store in a temporary directory (kept alive by the guard).
pub async fn sqlite() -> (tempfile::TempDir, Arc<dyn EventStore>) {
    let dir = tempfile::tempdir().expect("tmp");
    let store =
        cairn_events::sqlite::SqliteStore::open(dir.path().join("c.db"), Default::default()).await.expect("open");
    (dir, store)
}

/// A run's events, decoded.
pub async fn events(store: &Arc<dyn EventStore>, id: uuid::Uuid) -> Vec<Event> {
    store
        .read_stream(&cairn_events::run_stream(id), 1)
        .await
        .expect("read")
        .iter()
        .map(|e| Event::decode(e).expect("decode"))
        .collect()
}

/// Parses and publishes a workflow.
pub async fn publish(engine: &Engine, src: &str) -> (cairn_runtime::Workflow, u32) {
    let w = cairn_runtime::lang::parse(src, "t.yaml", &engine.task_names()).unwrap_or_else(|d| panic!("{d}"));
    let v = engine.publish(&w, "test").await.expect("publish");
    (w, v)
}

/// Publishes, starts and drives a run to its end.
pub async fn run(engine: &Engine, src: &str, inputs: serde_json::Value) -> (uuid::Uuid, cairn_runtime::run::RunState) {
    let (w, v) = publish(engine, src).await;
    let id = engine.start(&w, v, inputs, "test").await.expect("start");
    let state = engine.drive(id, &mut |_: &Event| {}).await.expect("drive");
    (id, state)
}

/// Declares each `async fn NAME(store)` as a test on SQLite and on
/// PostgreSQL (which skips without a server, and fails under CI).
#[allow(unused_macros)]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, store) = crate::common::sqlite().await;
                    super::$name(store).await
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = cairn_events::testing::pg_store().await else { return };
                    super::$name(store).await
                }
            )*
        }
    };
}
pub mod servers;
