//! An embedding program: its own task handler written as a plain `async
//! fn`, and the library worker (the driver `cairn serve` runs) driving its
//! runs, a durable timer included, with nothing else driving them: a run
//! kicked after its start, and one only found in the wake-up index.
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_events::EventStore;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskContext, TaskError, TaskRegistry, Worker};
use serde_json::{Value, json};

/// The embedder's handler: a plain async function, no boxing.
async fn shout(input: Value, _ctx: TaskContext) -> Result<Value, TaskError> {
    Ok(json!({ "loud": input["text"].as_str().unwrap_or_default().to_uppercase() }))
}

const NAP: &str = r#"name: nap
steps:
  - id: first
    task: shout
    with: { text: "{{ inputs.word }}" }
  - id: nap
    wait: { for: 1s }
  - id: second
    task: shout
    with: { text: "{{ steps.first.output.loud }} again" }
"#;

async fn ended(engine: &Engine, id: uuid::Uuid) -> cairn_runtime::run::RunState {
    let start = Instant::now();
    loop {
        let s = engine.state(id).await.expect("state");
        if s.status.is_terminal() {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "run {id} did not end: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_library_worker_drives_an_embedders_runs_through_their_timers(store: Arc<dyn EventStore>) {
    let mut tasks = TaskRegistry::builtin();
    tasks.register("shout", shout);
    let engine =
        Arc::new(Engine::new(store.clone(), tasks).with_worker("embedder-1", cairn_runtime::DEFAULT_LEASE_TIMEOUT));
    let worker = Worker::spawn(engine.clone());
    let (w, v) = common::publish(&engine, NAP).await;
    let kicked = engine.start(&w, v, json!({ "word": "hello" }), "embedder").await.expect("start");
    worker.kick(kicked);
    // Started and left: the worker finds it in the wake-up index.
    let found = engine.start(&w, v, json!({ "word": "bye" }), "embedder").await.expect("start");
    for (id, want) in [(kicked, "HELLO AGAIN"), (found, "BYE AGAIN")] {
        let s = ended(&engine, id).await;
        assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
        assert_eq!(s.outputs["second"]["loud"], json!(want));
        let events = common::events(&store, id).await;
        assert!(
            events.iter().any(|e| matches!(e, cairn_events::Event::TimerFired(_))),
            "the timer fired under the worker: {events:?}"
        );
    }
    worker.stop().await;
}

/// A worker without the embedder's handler (a `cairn serve` on the same
/// database) that gets the run first lets it go at once: the embedder's
/// worker drives it to the end. Before, the first worker held on, retrying
/// every 30 s, and the run waited.
async fn a_worker_without_the_handler_leaves_the_run_to_the_one_with_it(store: Arc<dyn EventStore>) {
    let lease = cairn_runtime::DEFAULT_LEASE_TIMEOUT;
    let bare = Arc::new(Engine::new(store.clone(), TaskRegistry::builtin()).with_worker("serve-1", lease));
    let bare_worker = Worker::spawn(bare.clone());
    let mut tasks = TaskRegistry::builtin();
    tasks.register("shout", shout);
    let engine = Arc::new(Engine::new(store.clone(), tasks).with_worker("embedder-1", lease));
    let (w, v) = common::publish(&engine, NAP).await;
    // Started through the process without the handler, and kicked there.
    let id = bare.start(&w, v, json!({ "word": "mine" }), "embedder").await.expect("start");
    bare_worker.kick(id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker = Worker::spawn(engine.clone());
    let started = Instant::now();
    let s = ended(&engine, id).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.outputs["second"]["loud"], json!("MINE AGAIN"));
    assert!(started.elapsed() < Duration::from_secs(15), "it waited {:?}", started.elapsed());
    worker.stop().await;
    bare_worker.stop().await;
}

both_backends!(
    the_library_worker_drives_an_embedders_runs_through_their_timers,
    a_worker_without_the_handler_leaves_the_run_to_the_one_with_it
);
