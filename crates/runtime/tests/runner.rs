//! The durable runner against real stores (SQLite and PostgreSQL): retries,
//! timeouts, cancel, pinned versions, crash recovery, concurrent drivers,
//! custom task handlers.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

#[macro_use]
mod common;

use common::run;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cairn_events::{Event, EventStore};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskContext, TaskError, TaskRegistry};
use serde_json::{Value, json};

fn engine(store: &Arc<dyn EventStore>) -> Engine {
    Engine::new(store.clone(), TaskRegistry::builtin())
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

async fn retries_until_success_and_records_every_attempt(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = include_str!("../../../examples/branch-on-input.yaml");
    let (id, state) = run(&e, src, json!({ "total": 250 })).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(state.output, Some(json!({ "customer": "ada", "charged": 300.0 })));
    let evs = common::events(&store, id).await;
    let failures = count(&evs, |e| matches!(e, Event::StepFailed(f) if f.step_id == "standard"));
    let retries = count(&evs, |e| matches!(e, Event::RetryScheduled(_)));
    assert_eq!((failures, retries), (2, 2));
    assert_eq!(count(&evs, |e| matches!(e, Event::BranchTaken(_))), 2);
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

async fn a_slow_attempt_times_out_and_fails_the_run(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = "name: slow\nsteps:\n  - id: wait\n    task: sleep\n    with: { ms: 5000 }\n    timeout: 50ms\n    retry: { max_attempts: 2, initial_interval: 10ms }\n";
    let (id, state) = run(&e, src, json!({})).await;
    assert_eq!(state.status, RunStatus::Failed);
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("timeout", Some("wait")));
    assert!(message.contains("after 2 attempt"), "{message}");
    let evs = common::events(&store, id).await;
    assert_eq!(count(&evs, |e| matches!(e, Event::StepFailed(f) if f.error_kind == "timeout")), 2);
}

async fn a_cancelled_run_stops(store: Arc<dyn EventStore>) {
    let e = Arc::new(engine(&store));
    let src =
        "name: waits\nsteps:\n  - id: flaky\n    task: fail\n    retry: { max_attempts: 5, initial_interval: 1h }\n";
    let w = cairn_runtime::lang::parse(src, "t.yaml", &e.task_names()).expect("parse");
    let v = e.publish(&w, "t").await.expect("publish");
    let id = e.start(&w, v, json!({}), "t").await.expect("start");
    let driver = {
        let e = e.clone();
        tokio::spawn(async move {
            let mut quiet = |_: &Event| {};
            e.drive(id, &mut quiet).await
        })
    };
    // Wait until the retry is scheduled an hour away, then cancel.
    for _ in 0..100 {
        // Where the run's cursor stands is the core's (not in the façade).
        if matches!(e.state(id).await.expect("state").cursor(), cairn_core::decider::Cursor::RetryWait { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.cancel(id, "operator", Some("no longer needed".into())).await.expect("cancel");
    let state = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("driver stops")
        .expect("join")
        .expect("drive");
    assert_eq!(state.status, RunStatus::Cancelled);
    let err = e.cancel(id, "operator", None).await.expect_err("already cancelled");
    assert!(err.to_string().contains("only a running run"), "{err}");
}

async fn a_run_keeps_the_version_it_started_with(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let v1 = "name: pinned\nsteps:\n  - id: a\n    transform: { version: 1 }\n";
    let v2 = "name: pinned\nsteps:\n  - id: a\n    transform: { version: 2 }\n";
    let w1 = cairn_runtime::lang::parse(v1, "t", &e.task_names()).expect("v1");
    let n1 = e.publish(&w1, "t").await.expect("publish v1");
    let id = e.start(&w1, n1, json!({}), "t").await.expect("start");
    let w2 = cairn_runtime::lang::parse(v2, "t", &e.task_names()).expect("v2");
    let n2 = e.publish(&w2, "t").await.expect("publish v2");
    assert_eq!((n1, n2), (1, 2));
    assert_eq!(e.publish(&w2, "t").await.expect("same source"), 2, "an unchanged source is not a new version");
    // A fresh engine (no cached definitions) drives the run: it loads v1.
    let fresh = engine(&store);
    let mut quiet = |_: &Event| {};
    let state = fresh.drive(id, &mut quiet).await.expect("drive");
    assert_eq!(state.output, Some(json!({ "version": 1 })));
}

async fn an_interrupted_attempt_runs_again_and_is_recorded_once(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = "name: crash\nsteps:\n  - id: a\n    task: echo\n    with: { n: 1 }\n  - id: b\n    task: echo\n";
    let w = cairn_runtime::lang::parse(src, "t", &e.task_names()).expect("parse");
    let v = e.publish(&w, "t").await.expect("publish");
    let id = e.start(&w, v, json!({}), "t").await.expect("start");
    // `start` records RunStarted and the first StepStarted together; the
    // process "crashes" here, before the attempt's outcome.
    let recorded = common::events(&store, id).await;
    assert!(matches!(recorded.last(), Some(Event::StepStarted(s)) if s.step_id == "a"), "{recorded:?}");
    assert_eq!(e.unfinished_runs().await.expect("unfinished"), vec![id]);
    let mut quiet = |_: &Event| {};
    let state = engine(&store).drive(id, &mut quiet).await.expect("drive");
    assert_eq!(state.status, RunStatus::Completed);
    let evs = common::events(&store, id).await;
    assert_eq!(count(&evs, |e| matches!(e, Event::StepStarted(s) if s.step_id == "a")), 1, "not started twice");
    assert_eq!(count(&evs, |e| matches!(e, Event::StepCompleted(s) if s.step_id == "a")), 1);
    assert!(e.unfinished_runs().await.expect("unfinished").is_empty());
}

async fn two_drivers_record_each_outcome_once(store: Arc<dyn EventStore>) {
    let e = Arc::new(engine(&store));
    let steps: String =
        (0..8).map(|i| format!("  - id: s{i}\n    task: increment\n    with: {{ counter: {i} }}\n")).collect();
    let src = format!("name: race\nsteps:\n{steps}");
    let w = cairn_runtime::lang::parse(&src, "t", &e.task_names()).expect("parse");
    let v = e.publish(&w, "t").await.expect("publish");
    let id = e.start(&w, v, json!({}), "t").await.expect("start");
    let drivers: Vec<_> = (0..2)
        .map(|_| {
            let other = Arc::new(engine(e.store()));
            tokio::spawn(async move {
                let mut quiet = |_: &Event| {};
                other.drive(id, &mut quiet).await
            })
        })
        .collect();
    // One worker holds the run and drives it; the other leaves it to the
    // holder (returning the state it found) or finds it ended.
    for d in drivers {
        let status = d.await.expect("join").expect("drive").status;
        assert!(matches!(status, RunStatus::Running | RunStatus::Completed), "{status:?}");
    }
    assert_eq!(e.state(id).await.expect("state").status, RunStatus::Completed);
    let evs = common::events(&store, id).await;
    for i in 0..8 {
        let step = format!("s{i}");
        assert_eq!(count(&evs, |e| matches!(e, Event::StepCompleted(s) if s.step_id == step)), 1, "{step}");
    }
    assert_eq!(count(&evs, |e| matches!(e, Event::RunCompleted(_))), 1);
}

async fn embedded_programs_add_their_own_task_handlers(store: Arc<dyn EventStore>) {
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = TaskRegistry::builtin();
    let seen = calls.clone();
    tasks.register("charge-card", move |input: Value, ctx: TaskContext| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            let amount = input.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
            if amount <= 0.0 {
                return Err(TaskError::new("card.invalid_amount", format!("cannot charge {amount}"), false));
            }
            Ok(json!({ "charged": amount, "idempotency_key": ctx.idempotency_key() }))
        }
    });
    let e = Engine::new(store.clone(), tasks);
    let src = "name: pay\ninputs: { type: object, properties: { amount: { type: number } } }\nsteps:\n  - id: charge\n    task: charge-card\n    with: { amount: '{{ inputs.amount }}' }\n    retry: { max_attempts: 3 }\n";
    let (id, state) = run(&e, src, json!({ "amount": 12.5 })).await;
    assert_eq!(state.output.as_ref().and_then(|o| o.get("charged")), Some(&json!(12.5)));
    assert_eq!(
        state.output.as_ref().and_then(|o| o.get("idempotency_key")).and_then(Value::as_str),
        Some(format!("{id}:charge:1").as_str())
    );
    let (_, failed) = run(&e, src, json!({ "amount": -1 })).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.map(|e| e.0), Some("card.invalid_amount".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a non-retryable error is not retried");
}

/// A wait sleeps on the engine's clock: an hour passes when the clock says
/// so, not before (and the test sleeps through none of it).
async fn a_wait_step_waits_durably(store: Arc<dyn EventStore>) {
    let clock = cairn_events::clock::ManualClock::new(chrono::Utc::now());
    let e = Arc::new(engine(&store).with_clock(clock.clone()));
    let src = "name: pause\nsteps:\n  - id: pause\n    wait: { for: 1h }\n  - id: after\n    task: echo\n    with: { done: true }\n";
    let (w, v) = common::publish(&e, src).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    let mut driver = tokio::spawn({
        let e = e.clone();
        async move { e.drive(id, &mut |_: &Event| {}).await }
    });
    clock.advance(Duration::from_secs(3599));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut driver).await.is_err(),
        "a second early: still waiting"
    );
    clock.advance(Duration::from_secs(1));
    let state =
        tokio::time::timeout(Duration::from_secs(10), driver).await.expect("fires").expect("join").expect("drive");
    assert_eq!(state.output, Some(json!({ "done": true })));
    let evs = common::events(&store, id).await;
    assert_eq!(count(&evs, |e| matches!(e, Event::TimerStarted(_))), 1);
    assert_eq!(count(&evs, |e| matches!(e, Event::TimerFired(_))), 1);
}

async fn a_failing_run_undoes_its_completed_steps_in_reverse_order(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = include_str!("../../../examples/saga-booking.yaml");
    let (id, state) = run(&e, src, json!({})).await;
    assert_eq!(state.status, RunStatus::Failed);
    let (kind, _, step) = state.error.expect("error");
    assert_eq!(
        (kind.as_str(), step.as_deref()),
        ("card.declined", Some("declined")),
        "the run fails with the original error"
    );
    let evs = common::events(&store, id).await;
    let order: Vec<String> = evs
        .iter()
        .filter_map(|e| match e {
            Event::CompensationStarted(c) => Some(format!("compensate {:?}", c.compensations)),
            Event::StepCompleted(c) if c.step_id.starts_with("cancel") => Some(c.step_id.clone()),
            Event::RunFailed(_) => Some("failed".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        vec![r#"compensate ["cancel_hotel", "cancel_flight"]"#, "cancel_hotel", "cancel_flight", "failed"]
    );
    // A compensation sees the output of the step it undoes.
    let undone = evs.iter().find_map(|e| match e {
        Event::StepCompleted(c) if c.step_id == "cancel_hotel" => Some(c.output.clone()),
        _ => None,
    });
    assert_eq!(undone, Some(json!({ "message": "cancelling HT-456" })));
    // A successful run compensates nothing.
    let (ok_id, ok) = run(&e, src, json!({ "card": "valid" })).await;
    assert_eq!(ok.status, RunStatus::Completed);
    assert!(!common::events(&store, ok_id).await.iter().any(|e| matches!(e, Event::CompensationStarted(_))));
}

async fn only_completed_steps_are_compensated_and_a_failing_compensation_is_reported(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = "name: partial
steps:
  - id: a
    task: echo
    compensate: undo_a
  - id: b
    task: fail
    with: { retryable: false }
    compensate: undo_b
compensations:
  - id: undo_a
    task: fail
    with: { kind: undo.failed, message: cannot undo, retryable: false }
  - id: undo_b
    task: echo
";
    let (id, state) = run(&e, src, json!({})).await;
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("task.failed", Some("b")));
    assert!(message.contains("then compensation failed") && message.contains("cannot undo"), "{message}");
    let evs = common::events(&store, id).await;
    assert!(
        !evs.iter().any(|e| matches!(e, Event::StepStarted(s) if s.step_id == "undo_b")),
        "b never completed: not undone"
    );
}

async fn inputs_and_outputs_are_checked_against_their_schemas(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = "name: typed\ninputs: { type: object, properties: { total: { type: number }, who: { type: string } }, required: [total] }\nsteps:\n  - id: a\n    task: echo\n    with: { title: '{{ inputs.who }}', count: '{{ inputs.total }}' }\n    output_contract: { type: object, properties: { count: { type: number, maximum: 100 } }, required: [count] }\n";
    let w = cairn_runtime::lang::parse(src, "t", &e.task_names()).expect("parse");
    let v = e.publish(&w, "t").await.expect("publish");
    let before = store.head_position().await.expect("head");
    let err = e.start(&w, v, json!({ "total": "lots", "who": 3 }), "t").await.expect_err("invalid inputs");
    let msg = err.to_string();
    assert!(msg.contains("/total") && msg.contains("/who"), "every violation is named: {msg}");
    assert!(matches!(err, cairn_runtime::RunError::InvalidInputs { ref errors, .. } if errors.len() == 2));
    assert_eq!(store.head_position().await.expect("head"), before, "nothing was started");
    let err = e.start(&w, v, json!({}), "t").await.expect_err("missing required");
    assert!(err.to_string().contains("total"), "{err}");

    // A task output that breaks its contract fails the step, naming the path.
    let (_, state) = run(&e, src, json!({ "total": 250, "who": "ada" })).await;
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("contract", Some("a")));
    assert!(message.contains("/count") && message.contains("250"), "{message}");
    let (_, ok) = run(&e, src, json!({ "total": 25, "who": "ada" })).await;
    assert_eq!(ok.status, RunStatus::Completed);

    // So does a transform's.
    let t = "name: tr\nsteps:\n  - id: t\n    transform: { n: 'many' }\n    output_contract: { type: object, properties: { n: { type: integer } } }\n";
    let (_, state) = run(&e, t, json!({})).await;
    assert_eq!(state.error.map(|e| e.0), Some("contract".to_owned()));
}

async fn run_starts_and_drives_showing_every_event(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = include_str!("../../../examples/branch-on-input.yaml");
    let w = cairn_runtime::lang::parse(src, "t.yaml", &e.task_names()).expect("parse");
    let v = e.publish(&w, "test").await.expect("publish");
    let mut seen = Vec::new();
    let (id, state) =
        e.run(&w, v, json!({ "total": 250 }), "test", &mut |ev: &Event| seen.push(ev.clone())).await.expect("run");
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(seen, common::events(&store, id).await, "the observer saw exactly what was recorded, in order");
    assert_eq!(state, e.state(id).await.expect("state"), "the state it returns is the log's");
}

/// A server decides a run of a cheap definition inline (the hop to the
/// blocking pool and back cost more than W10's decisions: 0.46x in-process
/// over HTTP before, 0.56x after) and a run whose conditions or templates
/// can loop on the blocking pool, also when the loop is hidden by a YAML
/// escape; a cheap-looking definition whose decision took long
/// (`INLINE_DECISION_MAX`) is moved to the pool for good. Every run completes either way.
async fn a_server_decides_cheap_runs_inline_and_costly_ones_on_the_pool(store: Arc<dyn EventStore>) {
    let e = engine(&store).with_offloaded_decisions();
    let parse = |src: &str| cairn_runtime::lang::parse(src, "t.yaml", &e.task_names()).expect("parse");
    let w10 = parse(include_str!("../examples/w10.yaml"));
    let comprehension = parse(
        "name: loops\ninputs: { type: object, properties: { items: { type: array } } }\nsteps:\n  - id: c\n    branch: { if: \"inputs.items.all(a, a >= 0)\", then: done }\n  - id: done\n    transform: { ok: true }\n",
    );
    let statement = parse(
        "name: hidden\nsteps:\n  - id: t\n    transform: { n: \"\\x7B% for i in [1, 2] %}{{ i }}\\x7B% endfor %}\" }\n",
    );
    assert!(!statement.source.contains("{%"), "the statement is hidden in the source");
    let copy = parse(
        "name: copy\ninputs: { type: object, properties: { items: { type: array } } }\nsteps:\n  - id: t\n    transform: { items: \"{{ inputs.items }}\" }\n",
    );
    assert!(e.decides_inline(&w10) && e.decides_inline(&copy), "cheap definitions are decided inline");
    assert!(!e.decides_inline(&comprehension) && !e.decides_inline(&statement), "loops go to the pool");
    assert!(Engine::new(store.clone(), TaskRegistry::builtin()).decides_inline(&comprehension), "in-process: inline");

    for (w, inputs) in [(&w10, json!({})), (&comprehension, json!({"items": [1, 2]})), (&statement, json!({}))] {
        let v = e.publish(w, "t").await.expect("publish");
        let (_, state) = e.run(w, v, inputs, "t", &mut |_: &Event| {}).await.expect("run");
        assert_eq!(state.status, RunStatus::Completed, "{}: {:?}", w.name, state.error);
    }
    // 400,000 items copied by one template: over the limit of one decision.
    let v = e.publish(&copy, "t").await.expect("publish");
    let items: Vec<u32> = (0..400_000).collect();
    let (_, state) = e.run(&copy, v, json!({"items": items}), "t", &mut |_: &Event| {}).await.expect("run");
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert!(!e.decides_inline(&copy), "a slow decision moves its definition to the pool");
    assert!(e.decides_inline(&w10), "and no other");
}

both_backends!(
    a_server_decides_cheap_runs_inline_and_costly_ones_on_the_pool,
    run_starts_and_drives_showing_every_event,
    inputs_and_outputs_are_checked_against_their_schemas,
    a_failing_run_undoes_its_completed_steps_in_reverse_order,
    only_completed_steps_are_compensated_and_a_failing_compensation_is_reported,
    a_wait_step_waits_durably,
    retries_until_success_and_records_every_attempt,
    a_slow_attempt_times_out_and_fails_the_run,
    a_cancelled_run_stops,
    a_run_keeps_the_version_it_started_with,
    an_interrupted_attempt_runs_again_and_is_recorded_once,
    two_drivers_record_each_outcome_once,
    embedded_programs_add_their_own_task_handlers,
);

/// crates/core/tests lists the built-in task names to compile workflows
/// without a runtime; this holds that list to the registry.
#[test]
fn the_builtin_tasks_are_the_ones_the_core_tests_name() {
    assert_eq!(TaskRegistry::builtin().names(), ["echo", "fail", "increment", "log", "sleep"]);
}
