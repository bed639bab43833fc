//! MAPSTART: the time to start a run whose first step is a `map` of N items
//! (each iteration a transform), for N = 1k, 10k and 100k: the start records
//! the map, every iteration and its outcome, and the map's completion. The
//! floor is serialising and appending the same number of events of the same
//! size through the store directly. Linear means the time per item stays
//! flat as N grows.
//!
//!     cargo run --release -p cairn-runtime --example map_start [-- --quick]

use std::sync::Arc;
use std::time::Instant;

use cairn_events::{EventStore, ExpectedVersion, Metadata, NewEvent, StepStarted};
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

const SRC: &str = "name: fan\ninputs: { type: object, properties: { items: { type: array } } }\nsteps:\n  - id: each\n    map:\n      items: \"{{ inputs.items }}\"\n      steps:\n        - id: t\n          transform: { v: \"{{ item }}\" }\n";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick { &[1_000, 10_000] } else { &[1_000, 10_000, 100_000] };
    println!("MAPSTART: start a run whose map has N items (each a transform); SQLite, one process");
    println!("floor: append as many StepStarted events directly through the store, in pages of 1,000");
    println!(
        "{:>8} {:>9} | {:>10} {:>10} | {:>10} {:>10} | ratio",
        "N", "events", "start s", "µs/item", "floor s", "µs/item"
    );
    for &n in sizes {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn EventStore> =
            cairn_events::sqlite::SqliteStore::open(dir.path().join("c.db"), Default::default()).await.expect("store");
        let engine = Engine::new(store.clone(), TaskRegistry::builtin());
        let w = cairn_runtime::lang::parse(SRC, "fan.yaml", &engine.task_names()).expect("parse");
        let v = engine.publish(&w, "bench").await.expect("publish");
        let items: Vec<serde_json::Value> = (0..n).map(|i| json!(i)).collect();
        let t = Instant::now();
        let id = engine.start(&w, v, json!({ "items": items }), "bench").await.expect("start");
        let start = t.elapsed().as_secs_f64();
        let stream = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
        let events = stream.len();
        let last = stream.last().expect("events");
        assert_eq!(last.event_type, "RunCompleted", "the run did not complete: {}", last.payload);
        // The floor: the same number of events through the store directly.
        let floor_store: Arc<dyn EventStore> =
            cairn_events::sqlite::SqliteStore::open(dir.path().join("floor.db"), Default::default())
                .await
                .expect("store");
        let t = Instant::now();
        let mut version = 0u64;
        while (version as usize) < events {
            let page: Vec<NewEvent> = (0..1_000.min(events - version as usize))
                .map(|i| {
                    let e = cairn_events::Event::StepStarted(StepStarted {
                        step_id: format!("each[{}].t", version as usize + i),
                        attempt: 1,
                        input: json!(null),
                        scope: format!("each[{}]", version as usize + i),
                        at: None,
                    });
                    NewEvent::from_event(&e, Metadata::by("bench"))
                })
                .collect();
            let k = page.len() as u64;
            let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
            floor_store.append("floor", expected, page).await.expect("append");
            version += k;
        }
        let floor = t.elapsed().as_secs_f64();
        println!(
            "{n:>8} {events:>9} | {start:>10.3} {:>10.1} | {floor:>10.3} {:>10.1} | {:.1}x",
            start * 1e6 / n as f64,
            floor * 1e6 / n as f64,
            start / floor.max(1e-9)
        );
    }
}
