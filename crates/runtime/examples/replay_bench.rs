//! REPLAY: what `cairn replay`, `cairn replay --definition … --workflow …`
//! and `cairn resume --dry-run` cost on a long run, next to the floor of
//! decoding and folding the same events (what rebuilding the run's state
//! costs anyway). The run is a loop of N iterations of a task, a transform
//! and a branch back (3 steps, 8 events an iteration), recorded in memory
//! by the pure decider with `echo` outcomes, then failed at its last step.
//!
//! ```text
//! cargo run --release -p cairn-runtime --example replay_bench [-- --quick]
//! ```
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Instant;

// The core's decider directly: the run is recorded without a store or an
// engine, and what is measured is the core itself.
use cairn_core::decider::{decide, fold};
use cairn_events::{Event, RecordedEvent, RunStarted, StepCompleted, StepFailed};
use cairn_runtime::recovery::{self, ResumeRequest};
use serde_json::json;
use uuid::Uuid;

fn workflow(n: u32) -> String {
    format!(
        r#"name: loop-bench
steps:
  - id: work
    task: echo
    with: {{ i: "{{{{ steps.count.output.i if steps.count is defined else 0 }}}}", payload: "some text the step carries along" }}
    max_visits: {n}
  - id: count
    transform: {{ i: "{{{{ steps.work.output.i + 1 }}}}" }}
  - id: again
    branch: {{ if: "steps.count.output.i < {n}", then: work, else: publish }}
  - id: publish
    task: fail
    with: {{ n: "{{{{ steps.count.output.i }}}}" }}
"#
    )
}

/// Records a run purely: `echo` returns its input, `fail` fails.
fn record(w: &cairn_runtime::Workflow) -> Vec<Event> {
    let run_id = Uuid::now_v7();
    let mut events = vec![Event::RunStarted(RunStarted {
        run_id,
        workflow: w.name.clone(),
        workflow_version: 1,
        definition_hash: w.definition_hash.clone(),
        inputs: json!({}),
        started_by: "bench".into(),
        idempotency_key: None,
        parent: None,
        fork_of: None,
        settings: None,
        started_at: None,
        schedule: None,
        trace_parent: None,
    })];
    let mut s = fold(events.iter());
    let now = chrono::Utc::now();
    loop {
        let d = decide(w, &s, now);
        let new: Vec<Event> = if !d.append.is_empty() {
            d.append
        } else if let Some(x) = d.execute.first() {
            if x.step_id == "publish" {
                vec![Event::StepFailed(StepFailed {
                    step_id: x.step_id.clone(),
                    attempt: x.attempt,
                    error_kind: "cms.down".into(),
                    message: "down".into(),
                    retryable: false,
                    retry_after_ms: None,
                })]
            } else {
                vec![Event::StepCompleted(StepCompleted {
                    step_id: x.step_id.clone(),
                    attempt: x.attempt,
                    output: x.input.clone(),
                    duration_ms: 0,
                })]
            }
        } else {
            break;
        };
        for e in new {
            s = cairn_core::decider::evolve(s, &e);
            events.push(e);
        }
    }
    events
}

fn recorded(events: &[Event]) -> Vec<RecordedEvent> {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    events
        .iter()
        .enumerate()
        .map(|(i, e)| RecordedEvent {
            global_position: i as u64 + 1,
            stream_id: "run-bench".into(),
            stream_version: i as u64 + 1,
            event_id: Uuid::now_v7().to_string(),
            event_type: e.event_type().into(),
            schema_version: e.schema_version(),
            recorded_at: at.clone(),
            metadata: "{}".into(),
            payload: e.payload_json(),
            prev_hash: String::new(),
            hash: String::new(),
        })
        .collect()
}

fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.unwrap())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[u32] = if quick { &[100, 1000] } else { &[100, 1000, 5000] };
    println!("REPLAY: a loop of N iterations (task, transform, branch back), failed at its last step");
    println!("floor: decode every stored event and fold it (rebuilding the run's state); best of 5");
    println!(
        "{:>6} {:>8} | {:>12} | {:>12} {:>6} | {:>12} {:>6} | {:>12} {:>6}",
        "N", "events", "floor ev/s", "replay ev/s", "×floor", "shadow ev/s", "×floor", "plan ms", "×floor"
    );
    for &n in sizes {
        let w = cairn_runtime::lang::parse(&workflow(n), "loop.yaml", &["echo", "fail"]).unwrap();
        let events = record(&w);
        let rec = recorded(&events);
        let len = rec.len() as f64;
        let (floor, state) = best_of(5, || {
            let evs: Vec<Event> = rec.iter().map(|r| Event::decode(r).unwrap()).collect();
            fold(evs.iter())
        });
        assert_eq!(state.status, cairn_runtime::run::RunStatus::Failed);
        let (replay, report) = best_of(5, || cairn_runtime::replay::check(&w, &rec).unwrap());
        assert!(report.divergence.is_none(), "{:?}", report.divergence);
        let (shadow, findings) = best_of(5, || cairn_runtime::replay::shadow(&w, &rec).unwrap());
        assert!(findings.is_empty());
        let (plan, p) = best_of(5, || {
            let evs: Vec<Event> = rec.iter().map(|r| Event::decode(r).unwrap()).collect();
            recovery::plan(&w, &evs, &ResumeRequest::new("bench")).unwrap()
        });
        assert_eq!(p.from_step, "publish");
        println!(
            "{:>6} {:>8} | {:>12.0} | {:>12.0} {:>6.2} | {:>12.0} {:>6.2} | {:>12.2} {:>6.2}",
            n,
            rec.len(),
            len / floor,
            len / replay,
            floor / replay,
            len / shadow,
            floor / shadow,
            plan * 1000.0,
            plan / floor
        );
    }
    println!(
        "×floor: the command's speed as a fraction of the floor's (replay, shadow) or its time as a multiple (plan)"
    );
}
