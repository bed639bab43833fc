//! One set of limits on what is written: a value nested deeper than the
//! limit (or too large) is refused before anything is written, or fails its
//! step with kind `limit`; everything written stays readable by every
//! reader (decoding, the read models, the export). Before, an input nested
//! 123 levels under a transform that nests it 4 deeper was written and then
//! froze every reader of the log.
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, RunError, TaskRegistry};
use serde_json::{Value, json};

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |v, _| json!({ "a": v }))
}

const WRAP: &str = r#"name: wrap
inputs: { type: object, properties: { x: {} } }
steps:
  - id: wrap
    transform: { one: { two: { three: { four: "{{ inputs.x }}" } } } }
"#;

/// Every event of the log decodes, and the log verifies.
async fn readable(store: &Arc<dyn EventStore>) {
    for r in store.read_all(1, 100_000).await.expect("read") {
        Event::decode(&r).unwrap_or_else(|e| panic!("position {} does not decode: {e}", r.global_position));
    }
    assert!(cairn_events::verify(&**store).await.expect("verify").is_intact());
}

async fn inputs_past_the_nesting_limit_are_refused_and_nothing_is_written(store: Arc<dyn EventStore>) {
    let e = Engine::new(store.clone(), TaskRegistry::builtin());
    let (w, v) = common::publish(&e, WRAP).await;
    let head = store.head_position().await.expect("head");
    let err = e.start(&w, v, json!({ "x": nested(123) }), "mallory").await.expect_err("refused");
    let RunError::Limit(l) = &err else { panic!("{err}") };
    assert_eq!((l.limit, l.max), ("max_depth", 64));
    assert!(l.path.starts_with("/inputs/x/a/a"), "{}", l.path);
    assert!(err.to_string().contains("the limit is 64"), "{err}");
    assert_eq!(store.head_position().await.expect("head"), head, "nothing was written");
    // At the limit: accepted, and readable.
    let id = e.start(&w, v, json!({ "x": nested(63) }), "ada").await.expect("63 under `x` is 64 levels");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    // The transform nests it 4 deeper: the step fails with kind `limit`,
    // and nothing unreadable is written.
    assert_eq!(s.status, RunStatus::Failed);
    let (kind, message, step) = s.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("limit", Some("wrap")), "{message}");
    assert!(message.contains("/output/one/two/three/four"), "{message}");
    readable(&store).await;
    // A small input still runs.
    let ok = e.start(&w, v, json!({ "x": 1 }), "ada").await.expect("start");
    assert_eq!(e.drive(ok, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Completed);
}

async fn a_task_output_past_the_limit_fails_its_step(store: Arc<dyn EventStore>) {
    let e = Engine::new(store.clone(), TaskRegistry::builtin());
    // `echo` returns its input: 70 levels come back as its output.
    let src = "name: echoed\ninputs: { type: object, properties: { x: {} } }\nsteps:\n  - id: e\n    task: echo\n    with: \"{{ inputs.x }}\"\n";
    let (w, v) = common::publish(&e, src).await;
    let id = e.start(&w, v, json!({ "x": nested(60) }), "ada").await.expect("start");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "60 levels are fine: {:?}", s.error);
    let big = "x".repeat((1 << 20) + 1);
    let id = e.start(&w, v, json!({ "x": [big] }), "ada").await.expect_err("a 1 MiB + 1 string");
    assert!(id.to_string().contains("max_string_bytes"), "{id}");
    // A handler that answers 70 levels deep: its step fails, not the log.
    let mut tasks = TaskRegistry::builtin();
    tasks.register("deep", |_: Value, _| async { Ok(nested(70)) });
    let e = Engine::new(store.clone(), tasks);
    let (w, v) = common::publish(&e, "name: deep\nsteps:\n  - id: d\n    task: deep\n").await;
    let id = e.start(&w, v, json!({}), "ada").await.expect("start");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    let (kind, message, _) = s.error.expect("failed");
    assert_eq!(kind, "limit", "{message}");
    assert!(message.contains("nests 65 levels deep"), "{message}");
    readable(&store).await;
}

both_backends!(
    inputs_past_the_nesting_limit_are_refused_and_nothing_is_written,
    a_task_output_past_the_limit_fails_its_step
);
