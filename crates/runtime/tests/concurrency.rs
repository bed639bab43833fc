//! Parallel branches, map iterations and child runs against real stores
//! (SQLite and PostgreSQL): they run at the same time within their bounds,
//! join in a stable order, fail fast by cancelling siblings, survive a crash
//! mid-flight, and child runs are streams of their own.
#![allow(missing_docs)]

#[macro_use]
mod common;

use common::{publish, run};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cairn_events::{Event, EventStore};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, RunError, TaskContext, TaskRegistry};
use serde_json::{Value, json};

/// Counts how many `probe` calls run at once; a probe sleeps `ms` and
/// returns `{ x: x * 10 }`.
#[derive(Clone, Default)]
struct Probe {
    now: Arc<AtomicU32>,
    max: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl Probe {
    fn engine(&self, store: &Arc<dyn EventStore>) -> Engine {
        let mut tasks = TaskRegistry::builtin();
        let p = self.clone();
        tasks.register("probe", move |input: Value, _ctx: TaskContext| {
            let p = p.clone();
            async move {
                p.calls.fetch_add(1, Ordering::SeqCst);
                let running = p.now.fetch_add(1, Ordering::SeqCst) + 1;
                p.max.fetch_max(running, Ordering::SeqCst);
                let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                p.now.fetch_sub(1, Ordering::SeqCst);
                let x = input.get("x").and_then(Value::as_i64).unwrap_or(0);
                Ok(json!({ "x": x * 10 }))
            }
        });
        Engine::new(store.clone(), tasks)
    }

    fn max(&self) -> u32 {
        self.max.load(Ordering::SeqCst)
    }
}

fn completions(events: &[Event], step: &str) -> usize {
    events.iter().filter(|e| matches!(e, Event::StepCompleted(c) if c.step_id == step)).count()
}

const PARALLEL: &str = r#"
name: par
inputs: { type: object, properties: { n: { type: integer, default: 2 } } }
steps:
  - id: prep
    transform: { base: "{{ inputs.n }}" }
  - id: checks
    parallel:
      branches:
        - name: a
          steps:
            - id: a1
              task: probe
              with: { x: 1, ms: 150 }
        - name: b
          steps:
            - id: b1
              task: probe
              with: { x: "{{ steps.prep.output.base }}", ms: 150 }
            - id: b2
              transform: { sum: "{{ steps.b1.output.x + 1 }}" }
        - name: c
          steps:
            - id: c1
              task: probe
              with: { x: 3, ms: 150 }
  - id: after
    transform: { got: "{{ steps.checks.output.b.sum }}", a: "{{ steps.checks.output.a.x }}" }
"#;

async fn parallel_branches_run_at_the_same_time_and_join(store: Arc<dyn EventStore>) {
    let probe = Probe::default();
    let e = probe.engine(&store);
    let (id, state) = run(&e, PARALLEL, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(state.output, Some(json!({ "got": 21, "a": 10 })));
    assert_eq!(probe.max(), 3, "the three branches ran at once");
    let evs = common::events(&store, id).await;
    for step in ["a1", "b1", "b2", "c1", "checks"] {
        assert_eq!(completions(&evs, step), 1, "{step}");
    }
    let scopes: Vec<(String, String)> = evs
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(s) if !s.scope.is_empty() => Some((s.step_id.clone(), s.scope.clone())),
            _ => None,
        })
        .collect();
    assert!(scopes.contains(&("b2".into(), "checks.b".into())), "{scopes:?}");
    let joined = evs.iter().find_map(|e| match e {
        Event::StepCompleted(c) if c.step_id == "checks" => Some(c.output.clone()),
        _ => None,
    });
    assert_eq!(joined, Some(json!({ "a": { "x": 10 }, "b": { "sum": 21 }, "c": { "x": 30 } })));
}

async fn a_map_keeps_item_order_within_its_concurrency_bound(store: Arc<dyn EventStore>) {
    let probe = Probe::default();
    let e = probe.engine(&store);
    let src = r#"
name: mapper
inputs: { type: object, properties: { xs: { type: array } } }
steps:
  - id: each
    map:
      items: "{{ inputs.xs }}"
      max_concurrency: 2
      steps:
        - id: work
          task: probe
          with: { x: "{{ item }}", ms: "{{ item * 30 }}" }
        - id: tag
          transform: { i: "{{ index }}", v: "{{ steps.work.output.x }}" }
"#;
    let (id, state) = run(&e, src, json!({ "xs": [5, 1, 4, 2, 3] })).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(
        state.output,
        Some(json!([
            { "i": 0, "v": 50 }, { "i": 1, "v": 10 }, { "i": 2, "v": 40 }, { "i": 3, "v": 20 }, { "i": 4, "v": 30 }
        ]))
    );
    assert_eq!(probe.max(), 2, "max_concurrency bounds the iterations in progress");
    let evs = common::events(&store, id).await;
    for i in 0..5 {
        assert_eq!(completions(&evs, &format!("each[{i}].work")), 1);
    }
    // An empty list completes at once.
    let (_, empty) = run(&e, src, json!({ "xs": [] })).await;
    assert_eq!(empty.output, Some(json!([])));
    // Something that is not a list fails the step, saying what it was.
    let (_, bad) = run(&e, src, json!({ "xs": [1] })).await;
    assert_eq!(bad.status, RunStatus::Completed);
    let src_bad = src.replace("{{ inputs.xs }}", "{{ inputs.xs[0] }}");
    let (_, bad) = run(&e, &src_bad, json!({ "xs": [7] })).await;
    assert_eq!(bad.status, RunStatus::Failed);
    let message = bad.error.map(|e| e.1).unwrap_or_default();
    assert!(message.contains("rendered to 7, not a list"), "{message}");
}

async fn maps_and_parallels_nest(store: Arc<dyn EventStore>) {
    let e = Probe::default().engine(&store);
    let src = r#"
name: grid
steps:
  - id: rows
    map:
      items: [1, 2]
      steps:
        - id: pair
          parallel:
            branches:
              - name: left
                steps: [{ id: l, task: echo, with: { v: "{{ item }}" } }]
              - name: right
                steps: [{ id: r, task: echo, with: { v: "{{ item * 2 }}", i: "{{ index }}" } }]
"#;
    let (id, state) = run(&e, src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(
        state.output,
        Some(json!([
            { "left": { "v": 1 }, "right": { "v": 2, "i": 0 } },
            { "left": { "v": 2 }, "right": { "v": 4, "i": 1 } }
        ]))
    );
    let evs = common::events(&store, id).await;
    assert_eq!(completions(&evs, "rows[1].r"), 1);
}

const FAIL_FAST: &str = r#"
name: ff
steps:
  - id: book
    task: echo
    with: { room: 7 }
    compensate: unbook
  - id: both
    parallel:
      branches:
        - name: quick
          steps:
            - id: boom
              task: fail
              with: { kind: card.declined, message: declined, retryable: false }
        - name: slow
          steps:
            - id: nap
              task: sleep
              with: { ms: 3000 }
compensations:
  - id: unbook
    task: echo
    with: { room: "{{ steps.book.output.room }}" }
"#;

async fn a_failing_branch_fails_fast_cancelling_its_siblings(store: Arc<dyn EventStore>) {
    let e = Probe::default().engine(&store);
    let t = Instant::now();
    let (id, state) = run(&e, FAIL_FAST, json!({})).await;
    assert!(t.elapsed() < Duration::from_millis(2500), "the slow sibling was not waited for: {:?}", t.elapsed());
    assert_eq!(state.status, RunStatus::Failed);
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("card.declined", Some("both")));
    assert!(message.contains("branch `quick` failed"), "{message}");
    let evs = common::events(&store, id).await;
    assert!(
        evs.iter().any(|e| matches!(e, Event::StepSkipped(s) if s.step_id == "nap" && s.reason.contains("cancelled"))),
        "{evs:#?}"
    );
    assert_eq!(completions(&evs, "nap"), 0, "a cancelled branch's outcome is not recorded");
    assert_eq!(completions(&evs, "unbook"), 1, "work before the parallel is compensated");

    // Without fail_fast every branch runs to its end first.
    let patient =
        FAIL_FAST.replace("      branches:", "      fail_fast: false\n      branches:").replace("3000", "200");
    let (id, state) = run(&e, &patient, json!({})).await;
    assert_eq!(state.status, RunStatus::Failed);
    let evs = common::events(&store, id).await;
    assert_eq!(completions(&evs, "nap"), 1);
    assert!(!evs.iter().any(|e| matches!(e, Event::StepSkipped(_))));
}

async fn a_parallel_interrupted_mid_flight_completes_each_branch_once(store: Arc<dyn EventStore>) {
    let probe = Probe::default();
    let e = Arc::new(probe.engine(&store));
    let (w, v) = publish(&e, PARALLEL).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    let first = e.clone();
    let crashed = tokio::spawn(async move {
        let _ = first.drive(id, &mut |_: &Event| {}).await;
    });
    // The branches have started and are mid-effect: the process "dies".
    while probe.calls.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    crashed.abort();
    let _ = crashed.await;
    // The dead process's worker is gone too: the next start on its host
    // retires it (its process no longer exists), or its lease times out.
    e.retire().await.expect("retire");
    let before = common::events(&store, id).await;
    assert_eq!(completions(&before, "checks"), 0, "interrupted before the join");
    let fresh = probe.engine(&store);
    let state = fresh.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(state.output, Some(json!({ "got": 21, "a": 10 })));
    let evs = common::events(&store, id).await;
    for step in ["a1", "b1", "b2", "c1", "checks", "after"] {
        assert_eq!(completions(&evs, step), 1, "{step} completed exactly once");
    }
}

const CHILD: &str = r#"
name: child
inputs: { type: object, properties: { n: { type: integer } }, required: ["n"] }
steps:
  - id: inc
    task: increment
    with: { counter: "{{ inputs.n }}" }
  - id: check
    branch: { if: "steps.inc.output.counter > 100", then: too_big }
  - id: fine
    transform: "{{ steps.inc.output }}"
    end: true
  - id: too_big
    task: fail
    with: { kind: too.big, message: "over 100", retryable: false }
"#;

const PARENT: &str = r#"
name: parent
inputs: { type: object, properties: { n: { default: 41 } } }
steps:
  - id: sub
    workflow: { name: child, inputs: { n: "{{ inputs.n }}" } }
  - id: use
    transform: { answer: "{{ steps.sub.output.counter }}" }
"#;

async fn a_workflow_step_runs_a_child_run_and_waits_for_it(store: Arc<dyn EventStore>) {
    let e = Probe::default().engine(&store);
    let parent = cairn_runtime::lang::parse(PARENT, "p.yaml", &e.task_names()).expect("parse");
    let v = e.publish(&parent, "test").await.expect("publish");
    match e.start(&parent, v, json!({}), "test").await {
        Err(RunError::Definition { name, message, .. }) => {
            assert_eq!(name, "child");
            assert!(message.contains("never published"), "{message}");
        }
        other => panic!("an unpublished child is refused before the run starts: {other:?}"),
    }
    publish(&e, CHILD).await;
    let (id, state) = run(&e, PARENT, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(state.output, Some(json!({ "answer": 42 })));
    let evs = common::events(&store, id).await;
    let child = evs
        .iter()
        .find_map(|e| match e {
            Event::ChildRunStarted(c) => Some(c.child_run_id),
            _ => None,
        })
        .expect("ChildRunStarted");
    assert!(evs.iter().any(|e| matches!(e, Event::ChildRunCompleted(c) if c.status == "completed")));
    let child_events = common::events(&store, child).await;
    match child_events.first() {
        Some(Event::RunStarted(r)) => {
            let p = r.parent.as_ref().expect("parent");
            assert_eq!((p.run_id, p.step_id.as_str()), (id, "sub"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(child_events.last(), Some(Event::RunCompleted(_))));
    assert!(!e.unfinished_runs().await.expect("runs").contains(&child));

    // A failing child fails the step with the child's error.
    let (_, failed) = run(&e, PARENT, json!({ "n": 500 })).await;
    assert_eq!(failed.status, RunStatus::Failed);
    let (kind, message, step) = failed.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("child.too.big", Some("sub")));
    assert!(message.contains("at step `too_big`") && message.contains("over 100"), "{message}");
    // Inputs the child refuses fail the step without starting a child.
    let (id, refused) = run(&e, PARENT, json!({ "n": "many" })).await;
    assert_eq!(refused.error.map(|e| e.0).as_deref(), Some("child.invalid-inputs"));
    assert!(!common::events(&store, id).await.iter().any(|e| matches!(e, Event::ChildRunStarted(_))));
}

async fn cancelling_a_parent_cancels_its_running_child(store: Arc<dyn EventStore>) {
    let e = Arc::new(Probe::default().engine(&store));
    publish(&e, "name: slow_child\nsteps:\n  - id: pause\n    wait: { for: 1h }\n").await;
    let (w, v) = publish(&e, "name: waiting_parent\nsteps:\n  - id: sub\n    workflow: { name: slow_child }\n").await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    let driver = e.clone();
    let handle = tokio::spawn(async move { driver.drive(id, &mut |_: &Event| {}).await });
    let child = loop {
        let s = e.state(id).await.expect("state");
        // The core's cursor says which child run the step waits on (not in the façade).
        if let cairn_core::decider::Cursor::Child { child_run_id, .. } = s.cursor() {
            break *child_run_id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    e.cancel(id, "tester", Some("no longer needed".into())).await.expect("cancel");
    let parent = handle.await.expect("join").expect("drive");
    assert_eq!(parent.status, RunStatus::Cancelled);
    assert_eq!(e.state(child).await.expect("child").status, RunStatus::Cancelled);
}

/// A cancel always wins over the run's own progress (before, 18 of 20
/// cancels of a busy loop were refused with `conflict`).
async fn a_cancel_of_a_busy_run_always_wins(store: Arc<dyn EventStore>) {
    let e = Arc::new(Engine::new(store.clone(), TaskRegistry::builtin()));
    let src = "name: busy\nsteps:\n  - id: tick\n    task: echo\n    with: { i: 1 }\n    max_visits: 100000\n  - id: again\n    branch: { if: 'true', then: tick }\n";
    let (w, v) = common::publish(&e, src).await;
    for round in 0..20 {
        let id = e.start(&w, v, json!({}), "test").await.expect("start");
        let driver = tokio::spawn({
            let e = e.clone();
            async move { e.drive(id, &mut |_: &Event| {}).await }
        });
        // Busy: wait (bounded) until it has gone round a few times.
        for _ in 0..500 {
            if common::events(&store, id).await.len() > 10 + round {
                break;
            }
            tokio::task::yield_now().await;
        }
        e.cancel(id, "ops", Some("enough".into())).await.unwrap_or_else(|err| panic!("round {round}: {err}"));
        let s =
            tokio::time::timeout(Duration::from_secs(30), driver).await.expect("stops").expect("join").expect("drive");
        assert_eq!(s.status, RunStatus::Cancelled, "round {round}");
    }
}

both_backends!(
    a_cancel_of_a_busy_run_always_wins,
    parallel_branches_run_at_the_same_time_and_join,
    a_map_keeps_item_order_within_its_concurrency_bound,
    maps_and_parallels_nest,
    a_failing_branch_fails_fast_cancelling_its_siblings,
    a_parallel_interrupted_mid_flight_completes_each_branch_once,
    a_workflow_step_runs_a_child_run_and_waits_for_it,
    cancelling_a_parent_cancels_its_running_child,
);
