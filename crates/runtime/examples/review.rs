//! REVIEW: the AI-and-people path on its own, without network or model
//! time: an `ai` step on the scripted provider whose first reply breaks the
//! contract (judged, rejected, fed back, answered again), an `approval` the
//! run parks on, decided in-process through `Engine::decide_approval` (token,
//! approver and content-hash checks included), then a `transform`. Five
//! commits a run (start; reply 1 rejected + attempt 2; reply 2 + approval
//! step; the request; the decision and the end), next to the floor of five
//! single-row INSERT commits with the same durability and concurrency.
//!
//! ```text
//! cargo run --release -p cairn-runtime --example review [-- --quick]
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::people::Vote;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

#[path = "bench/mod.rs"]
mod bench;

const REVIEW: &str = r#"name: review-bench
steps:
  - id: draft
    ai:
      model: scripted
      prompt: "Draft number {{ inputs.n }}"
      scripted: ['{"title": "x"}', '{"title": "A title long enough"}']
    output_contract:
      type: object
      required: [title]
      properties: { title: { type: string, minLength: 5 } }
  - id: review
    approval: { approvers: [editor], content: "{{ steps.draft.output }}" }
  - id: done
    transform: "{{ steps.review.output.approved }}"
"#;

/// Commits per run, checked against the log after the warm-up.
const COMMITS: usize = 5;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (lat, tput, conc) = if quick { (40, 200, 16) } else { (200, 1000, 16) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        println!("REVIEW: an AI step (one reply rejected and fed back, one accepted) + an approval decided in-process + a transform");
        println!("latency over {lat} runs one at a time, throughput over {tput} runs {conc} at a time; runtime: tokio current-thread");
        println!("floor: {COMMITS} single-row INSERT commits per run, same database, same durability settings, same concurrency");
        let dir = tempfile::tempdir_in(".").unwrap();
        let floor = bench::measure_floor(bench::sqlite_floor(dir.path()).await, COMMITS, lat, tput, conc).await;
        let store: Arc<dyn EventStore> =
            cairn_events::sqlite::SqliteStore::open(dir.path().join("review.db"), Default::default()).await.unwrap();
        let engine = Arc::new(Engine::new(store.clone(), TaskRegistry::builtin()));
        let w = Arc::new(cairn_runtime::lang::parse(REVIEW, "review.yaml", &engine.task_names()).unwrap());
        let version = engine.publish(&w, "bench").await.unwrap();
        let one = move |i: usize| {
            let (engine, w) = (engine.clone(), w.clone());
            async move {
                let mut quiet = |_: &Event| {};
                let (id, s) = engine.run(&w, version, json!({ "n": i }), "bench", &mut quiet).await.unwrap();
                assert_eq!(s.status, RunStatus::Running, "parked on the approval");
                let token = engine.resume_token(id, "review", 1);
                let vote = Vote::new("editor", token, true);
                engine.decide_approval(id, "review", &vote).await.unwrap();
                let s = engine.drive(id, &mut quiet).await.unwrap();
                assert_eq!(s.status, RunStatus::Completed);
                assert_eq!(s.output, Some(json!(true)));
            }
        };
        for i in 0..10 {
            one(i).await; // warm-up
        }
        let events = store.head_position().await.unwrap();
        let ours = bench::measure(lat, tput, conc, one).await;
        println!("sqlite: WAL, synchronous=FULL (both); {} events per run", (events - 1) / 10);
        bench::report("sqlite", &ours, &floor, conc, 3.0);
        println!("peak RSS of the whole benchmark process: {:.1} MiB", bench::peak_rss_mib());
    });
}
