//! The pure decider: given these events, when deciding at this time, then
//! this decision. Plus property tests over generated workflows and outcomes.
#![allow(missing_docs)]

use cairn_core::Workflow;
use cairn_core::decider::{Cursor, Decision, Effect, Execution, RunStatus, decide, evolve, fold};
use cairn_events::{Event, RunStarted, StepCompleted, StepFailed, StepStarted};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// The runtime's built-in task names (`TaskRegistry::builtin()`; a runtime
/// test holds the two together).
const BUILTIN_TASKS: &[&str] = &["echo", "fail", "increment", "log", "sleep"];

fn wf(src: &str) -> Workflow {
    cairn_core::lang::parse(src, "t.yaml", BUILTIN_TASKS).unwrap_or_else(|d| panic!("{d}"))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).single().expect("time")
}

fn started(inputs: Value) -> Event {
    Event::RunStarted(RunStarted {
        run_id: Uuid::from_u128(7),
        workflow: "w".into(),
        workflow_version: 1,
        definition_hash: "h".into(),
        inputs,
        started_by: "t".into(),
        idempotency_key: None,
        parent: None,
        fork_of: None,
        settings: None,
        started_at: None,
        schedule: None,
        trace_parent: None,
    })
}

fn step_started(step: &str, attempt: u32, input: Value) -> Event {
    Event::StepStarted(StepStarted { step_id: step.into(), attempt, input, scope: String::new(), at: None })
}

fn step_failed(step: &str, attempt: u32, retryable: bool) -> Event {
    Event::StepFailed(StepFailed {
        step_id: step.into(),
        attempt,
        error_kind: "boom".into(),
        message: "it broke".into(),
        retryable,
        retry_after_ms: None,
    })
}

/// Decides and folds until nothing more is decided without an outside
/// outcome (pure steps, timers not due, caught errors); every event so.
fn settle(w: &Workflow, mut s: cairn_core::decider::RunState) -> (cairn_core::decider::RunState, Vec<Event>) {
    let mut all = Vec::new();
    for _ in 0..50 {
        let d = decide(w, &s, t0());
        if d.append.is_empty() {
            break;
        }
        for e in d.append {
            s = evolve(s, &e);
            all.push(e);
        }
    }
    (s, all)
}

fn step_completed(step: &str, attempt: u32, output: Value) -> Event {
    Event::StepCompleted(StepCompleted { step_id: step.into(), attempt, output, duration_ms: 1 })
}

const TWO_TASKS: &str = "name: w\nsteps:\n  - id: a\n    task: echo\n    with: { n: '{{ inputs.n }}' }\n    retry: { max_attempts: 3, initial_interval: 10s, jitter: 0 }\n  - id: b\n    task: echo\n    with: '{{ steps.a.output }}'\n";

#[test]
fn a_new_run_records_the_first_step_with_its_rendered_input() {
    let w = wf(TWO_TASKS);
    let s = fold(&[started(json!({ "n": 5 }))]);
    assert_eq!(decide(&w, &s, t0()), Decision::append(vec![step_started("a", 1, json!({ "n": 5 }))]));
}

#[test]
fn an_attempt_without_outcome_is_executed_again_after_a_crash() {
    let w = wf(TWO_TASKS);
    let s = fold(&[started(json!({ "n": 5 })), step_started("a", 1, json!({ "n": 5 }))]);
    let d = decide(&w, &s, t0());
    match (&d.append[..], &d.execute[..]) {
        ([], [Execution { step_id, attempt, effect, input, .. }]) => {
            assert_eq!((step_id.as_str(), *attempt), ("a", 1));
            assert_eq!(*effect, Effect::Task { handler: "echo".into() });
            assert_eq!(*input, json!({ "n": 5 }), "the recorded input is reused, not re-rendered");
        }
        _ => panic!("{d:?}"),
    }
}

#[test]
fn a_retryable_failure_schedules_a_retry_with_backoff() {
    let w = wf(TWO_TASKS);
    let mut events = vec![started(json!({ "n": 5 })), step_started("a", 1, json!({})), step_failed("a", 1, true)];
    let next = decide(&w, &fold(&events), t0()).append;
    let Event::RetryScheduled(r) = &next[0] else { panic!("{next:?}") };
    assert_eq!((r.next_attempt, r.backoff_ms), (2, 10_000));
    assert_eq!(r.due_at, t0() + Duration::seconds(10));
    events.extend(next);
    // Before it is due: wait. When due: attempt 2.
    assert_eq!(
        decide(&w, &fold(&events), t0() + Duration::seconds(5)),
        Decision::wait_until(t0() + Duration::seconds(10))
    );
    assert_eq!(
        decide(&w, &fold(&events), t0() + Duration::seconds(10)),
        Decision::append(vec![step_started("a", 2, json!({ "n": 5 }))])
    );
    // The second wait doubles.
    events.extend([step_started("a", 2, json!({})), step_failed("a", 2, true)]);
    let next = decide(&w, &fold(&events), t0()).append;
    assert!(matches!(&next[0], Event::RetryScheduled(r) if r.backoff_ms == 20_000));
}

#[test]
fn exhausted_or_non_retryable_failures_fail_the_run_naming_the_step() {
    let w = wf(TWO_TASKS);
    for events in [vec![started(json!({})), step_started("a", 1, json!({})), step_failed("a", 1, false)], {
        let mut events = vec![started(json!({}))];
        for attempt in 1..=3 {
            events.extend([step_started("a", attempt, json!({})), step_failed("a", attempt, true)]);
            if attempt < 3 {
                events.extend(decide(&w, &fold(&events), t0()).append);
            }
        }
        events
    }] {
        let next = decide(&w, &fold(&events), t0()).append;
        match &next[..] {
            [Event::RunFailed(f)] => {
                assert_eq!(f.failed_step.as_deref(), Some("a"));
                assert_eq!(f.error_kind, "boom");
                assert!(f.message.contains("it broke"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn branches_record_the_expression_value_and_target() {
    let w = wf(
        "name: w\nsteps:\n  - id: big\n    branch: { if: 'inputs.n > 3', then: yes, else: no }\n  - id: yes\n    task: echo\n    end: true\n  - id: no\n    task: echo\n",
    );
    let next = decide(&w, &fold(&[started(json!({ "n": 5 }))]), t0()).append;
    match &next[..] {
        [Event::StepStarted(_), Event::BranchTaken(b), Event::StepCompleted(_)] => {
            assert_eq!((b.expression.as_str(), &b.value, b.target.as_str()), ("inputs.n > 3", &json!(true), "yes"));
        }
        other => panic!("{other:?}"),
    }
    let mut events = vec![started(json!({ "n": 5 }))];
    events.extend(next);
    assert_eq!(decide(&w, &fold(&events), t0()), Decision::append(vec![step_started("yes", 1, Value::Null)]));
}

#[test]
fn max_visits_stops_a_loop() {
    let w = wf(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    max_visits: 2\n  - id: again\n    branch: { if: 'true', then: a, else: end }\n",
    );
    let mut events = vec![started(json!({}))];
    for _ in 0..2 {
        events.extend([step_started("a", 1, Value::Null), step_completed("a", 1, json!(1))]);
        let b = decide(&w, &fold(&events), t0()).append;
        events.extend(b);
    }
    let next = decide(&w, &fold(&events), t0()).append;
    assert!(matches!(&next[..], [Event::RunFailed(f)] if f.error_kind == "max_visits"), "{next:?}");
}

#[test]
fn the_run_output_renders_from_step_outputs() {
    let w = wf("name: w\nsteps:\n  - id: a\n    task: echo\noutput: { got: '{{ steps.a.output.x }}' }\n");
    let events =
        [started(json!({})), step_started("a", 1, Value::Null), step_completed("a", 1, json!({ "x": [1, 2] }))];
    let next = decide(&w, &fold(&events), t0()).append;
    assert!(matches!(&next[..], [Event::RunCompleted(c)] if c.output == json!({ "got": [1, 2] })));
    let done = events.iter().chain(&next).fold(Default::default(), evolve);
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(*done.cursor(), Cursor::Idle);
    assert_eq!(decide(&w, &done, t0()), Decision::done());
}

// ---- property tests -------------------------------------------------------

/// A generated step: 0 echo task, 1 flaky task, 2 transform, 3 branch,
/// 4 parallel, 5 map, 6 AI step with a contract, 7 approval.
fn workflow_source(kinds: &[(u8, u8, u8)]) -> String {
    let n = kinds.len();
    let mut s = String::from("name: gen\ninputs: { type: object, properties: { x: { type: integer } } }\nsteps:\n");
    for (i, (kind, a, b)) in kinds.iter().enumerate() {
        s.push_str(&format!("  - id: s{i}\n"));
        let forward = |k: u8| {
            let t = i + 1 + usize::from(k) % (n - i);
            if t >= n { "end".to_owned() } else { format!("s{t}") }
        };
        match kind % 8 {
            0 => s.push_str("    task: echo\n    with: { x: '{{ inputs.x }}' }\n"),
            1 => s.push_str(&format!(
                "    task: fail\n    with: {{ succeed_on_attempt: {} }}\n    retry: {{ max_attempts: {}, initial_interval: 1s, jitter: 0.5 }}\n",
                1 + a % 3,
                1 + b % 3
            )),
            2 => s.push_str("    transform: { y: '{{ inputs.x * 2 }}' }\n"),
            3 => s.push_str(&format!("    branch: {{ if: 'inputs.x > {}', then: {} }}\n", a % 10, forward(*b))),
            // Two branches: a flaky task; an echo then a transform.
            4 => s.push_str(&format!(
                "    parallel:\n      fail_fast: {}\n      max_concurrency: {}\n      branches:\n        - name: x\n          steps:\n            - id: s{i}_x\n              task: fail\n              with: {{ succeed_on_attempt: {} }}\n              retry: {{ max_attempts: 2, initial_interval: 1s }}\n        - name: y\n          steps:\n            - id: s{i}_y\n              task: echo\n            - id: s{i}_z\n              transform: {{ v: '{{{{ steps.s{i}_y.output }}}}' }}\n",
                a % 2 == 0,
                1 + b % 2,
                1 + a % 3,
            )),
            6 => s.push_str(&format!(
                "    ai:\n      model: scripted\n      prompt: 'x is {{{{ inputs.x }}}}'\n      attempts: {}\n      transport_retry: {{ max_attempts: 2, initial_interval: 1s }}\n      scripted: [ok]\n    output_contract: {{ type: object, required: [ok], properties: {{ ok: {{ type: boolean }} }} }}\n",
                1 + a % 3
            )),
            7 => s.push_str(&format!(
                "    approval:\n      approvers: [ada, grace]\n      quorum: {}\n      content: {{ x: '{{{{ inputs.x }}}}' }}\n      on_reject: continue\n",
                if a % 2 == 0 { "any" } else { "all" }
            )),
            // A flaky task per item.
            _ => s.push_str(&format!(
                "    map:\n      items: [1, 2, 3]\n      max_concurrency: {}\n      steps:\n        - id: s{i}_m\n          task: fail\n          with: {{ succeed_on_attempt: {} }}\n          retry: {{ max_attempts: 2, initial_interval: 1s }}\n",
                1 + a % 3,
                1 + b % 3,
            )),
        }
    }
    s
}

/// Simulates a run: decisions in order, with task outcomes taken from
/// `outcomes` (`o % 3`: 0 succeed, 1 retryable failure, 2 fatal failure;
/// `o / 3` picks which of the running effects finishes).
/// A decision as recorded: taken after this many events, at this time.
type Recorded = (usize, DateTime<Utc>, Decision);

fn simulate(w: &Workflow, x: i64, outcomes: &[u8]) -> (Vec<Event>, Vec<Recorded>) {
    let mut events = vec![started(json!({ "x": x }))];
    let mut decisions = Vec::new();
    let mut now = t0();
    let mut k = 0;
    for _ in 0..200 {
        let state = fold(&events);
        let d = decide(w, &state, now);
        decisions.push((events.len(), now, d.clone()));
        if !d.append.is_empty() {
            events.extend(d.append);
        } else if !d.execute.is_empty() {
            // Which of the concurrent effects finishes first, and how.
            let pick = outcomes.get(k).copied().unwrap_or(0);
            let Execution { step_id, attempt, effect, input, .. } =
                d.execute[usize::from(pick / 3) % d.execute.len()].clone();
            let o = pick % 3;
            k += 1;
            now += Duration::milliseconds(3);
            events.push(match effect {
                // A reply that passes the contract, one that does not, or a
                // transport failure.
                Effect::Ai { number, .. } if o < 2 => Event::AiAttemptCompleted(cairn_events::AiAttemptCompleted {
                    step_id,
                    attempt: number,
                    raw_output: if o == 0 { r#"{"ok": true}"#.into() } else { r#"{"ok": "no"}"#.into() },
                    usage: cairn_events::TokenUsage { input_tokens: 10, output_tokens: 3 },
                    cost: None,
                    latency_ms: 1,
                    finish_reason: None,
                }),
                Effect::Ai { number, .. } => Event::AiAttemptFailed(cairn_events::AiAttemptFailed {
                    step_id,
                    attempt: number,
                    error_kind: "ai.connect".into(),
                    message: "refused".into(),
                    retryable: true,
                    status: None,
                    retry_after_ms: None,
                    latency_ms: 1,
                    fallback_mode: None,
                }),
                Effect::Request => {
                    let kind = &w.step(cairn_core::decider::bare(&step_id)).expect("step").kind;
                    cairn_core::decider::request_event(&step_id, kind, &input, "hash".into()).expect("a request")
                }
                _ => match o {
                    0 => step_completed(&step_id, attempt, json!({ "attempt": attempt })),
                    1 => step_failed(&step_id, attempt, true),
                    _ => step_failed(&step_id, attempt, false),
                },
            });
        } else if d.parked {
            // A person answers the first request that waits.
            let pick = outcomes.get(k).copied().unwrap_or(0);
            k += 1;
            now += Duration::seconds(1);
            let (step, h) = state.waiting_for_people()[0];
            let who = if h.decided("ada") { "grace" } else { "ada" };
            events.push(Event::ApprovalDecided(cairn_events::ApprovalDecided {
                step_id: step.to_owned(),
                decided_by: who.into(),
                decision: if pick % 2 == 0 { "approved" } else { "rejected" }.into(),
                comment: None,
                content_hash: h.content_hash.clone(),
                values: None,
            }));
        } else if let Some(t) = d.wake_at {
            now = t;
        } else {
            break;
        }
    }
    (events, decisions)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn folding_at_once_equals_folding_in_pieces(
        kinds in prop::collection::vec((0u8..8, any::<u8>(), any::<u8>()), 1..7),
        x in -5i64..15,
        outcomes in prop::collection::vec(0u8..9, 0..30),
        split in any::<prop::sample::Index>(),
    ) {
        let w = wf(&workflow_source(&kinds));
        let (events, _) = simulate(&w, x, &outcomes);
        let at = split.index(events.len() + 1);
        let pieces = events[at..].iter().fold(fold(&events[..at]), evolve);
        prop_assert_eq!(pieces, fold(&events));
    }

    #[test]
    fn deciding_again_on_every_prefix_reproduces_the_recorded_decisions(
        kinds in prop::collection::vec((0u8..8, any::<u8>(), any::<u8>()), 1..7),
        x in -5i64..15,
        outcomes in prop::collection::vec(0u8..9, 0..30),
    ) {
        let w = wf(&workflow_source(&kinds));
        let (events, decisions) = simulate(&w, x, &outcomes);
        let last = fold(&events);
        prop_assert!(last.status.is_terminal(), "run did not end: {:?}", last.cursor());
        // A fresh engine (recompiled definition) replaying the log decides
        // exactly as recorded at every point.
        let replayed = wf(&workflow_source(&kinds));
        for (len, now, recorded) in decisions {
            prop_assert_eq!(decide(&replayed, &fold(&events[..len]), now), recorded);
        }
    }
}

#[test]
fn a_wait_records_its_due_time_and_fires_when_due() {
    let w = wf("name: w\nsteps:\n  - id: pause\n    wait: { for: 90s }\n  - id: after\n    task: echo\n");
    let mut events = vec![started(json!({}))];
    let next = decide(&w, &fold(&events), t0()).append;
    match &next[..] {
        [Event::StepStarted(_), Event::TimerStarted(t)] => {
            assert_eq!(t.due_at, t0() + Duration::seconds(90));
            assert_eq!((t.purpose.as_str(), t.step_id.as_deref()), ("wait", Some("pause")));
        }
        other => panic!("{other:?}"),
    }
    events.extend(next);
    // A later decision (another process, after a restart) keeps the recorded due time.
    assert_eq!(
        decide(&w, &fold(&events), t0() + Duration::seconds(30)),
        Decision::wait_until(t0() + Duration::seconds(90))
    );
    let fired = decide(&w, &fold(&events), t0() + Duration::seconds(90)).append;
    assert!(matches!(&fired[..], [Event::TimerFired(_), Event::StepCompleted(c)] if c.step_id == "pause"), "{fired:?}");
    events.extend(fired);
    assert_eq!(
        decide(&w, &fold(&events), t0() + Duration::seconds(91)),
        Decision::append(vec![step_started("after", 1, Value::Null)])
    );
}

#[test]
fn a_wait_until_renders_its_instant() {
    let w = wf(
        "name: w\ninputs: { type: object, properties: { at: { type: string } } }\nsteps:\n  - id: pause\n    wait: { until: '{{ inputs.at }}' }\n",
    );
    let s = fold(&[started(json!({ "at": "2026-12-01T09:00:00Z" }))]);
    let next = decide(&w, &s, t0()).append;
    assert!(
        matches!(&next[1], Event::TimerStarted(t) if t.due_at.to_rfc3339() == "2026-12-01T09:00:00+00:00"),
        "{next:?}"
    );
    let bad = fold(&[started(json!({ "at": "next tuesday" }))]);
    let next = decide(&w, &bad, t0()).append;
    assert!(matches!(&next[1], Event::StepFailed(f) if f.message.contains("next tuesday")), "{next:?}");
}

/// Each visit of a step in a loop numbers its attempts on from the last
/// visit's, so keys derived from (run, step, attempt) are never reused;
/// retries count within the visit.
#[test]
fn a_loops_visits_number_attempts_on_and_retries_count_per_visit() {
    let w = wf(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    max_visits: 3\n    retry: { max_attempts: 2, initial_interval: 1s }\n  - id: wait\n    wait: { for: 1s }\n  - id: again\n    branch: { if: 'true', then: a, else: end }\n",
    );
    let mut events = vec![started(json!({}))];
    let mut now = t0();
    let mut attempts = Vec::new();
    let mut timers = Vec::new();
    for _ in 0..200 {
        let d = decide(&w, &fold(&events), now);
        if d.append.is_empty() && d.execute.is_empty() {
            match d.wake_at {
                Some(t) => {
                    now = t;
                    continue;
                }
                None => break,
            }
        }
        for e in &d.append {
            match e {
                Event::StepStarted(s) if s.step_id == "a" => attempts.push(s.attempt),
                Event::TimerStarted(t) => timers.push(t.timer_id.clone()),
                _ => {}
            }
        }
        events.extend(d.append);
        // The task fails its first attempt on the second visit, else completes.
        for x in d.execute {
            let fail = x.step_id == "a" && attempts.len() == 2;
            events.push(if fail {
                step_failed("a", x.attempt, true)
            } else {
                step_completed(&x.step_id, x.attempt, json!({}))
            });
        }
    }
    assert_eq!(attempts, vec![1, 2, 3, 4], "visit 1: 1; visit 2: 2, retried as 3; visit 3: 4");
    assert_eq!(timers, vec!["wait#1", "wait#2", "wait#3"], "timer ids are unique per visit");
    assert!(matches!(events.last(), Some(Event::RunFailed(f)) if f.error_kind == "max_visits"), "{:?}", events.last());
    let Some(Event::RunFailed(f)) = events.last() else { unreachable!() };
    assert!(f.message.contains("would run a 4th time"), "{}", f.message);
}

#[test]
fn ordinals_read_as_english() {
    let w = wf(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    max_visits: 400\n  - id: again\n    branch: { if: 'true', then: a, else: end }\n",
    );
    let mut events = vec![started(json!({}))];
    for _ in 0..400 {
        let d = decide(&w, &fold(&events), t0());
        let x = d.append.iter().find_map(|e| match e {
            Event::StepStarted(s) if s.step_id == "a" => Some(s.attempt),
            _ => None,
        });
        events.extend(d.append);
        if let Some(a) = x {
            events.push(step_completed("a", a, json!(1)));
            events.extend(decide(&w, &fold(&events), t0()).append);
        }
    }
    let next = decide(&w, &fold(&events), t0()).append;
    assert!(matches!(&next[..], [Event::RunFailed(f)] if f.message.contains("a 401st time")), "{next:?}");
}

/// Numbers from JSON mix with literals in condition arithmetic (before,
/// `inputs.x * 2 == 2` failed the step: `uint` from JSON, `int` literals).
#[test]
fn condition_arithmetic_mixes_json_numbers_and_literals() {
    for (cond, inputs, want) in [
        ("inputs.x * 2 == 2", json!({ "x": 1 }), "yes"),
        ("inputs.x + 1 > 3", json!({ "x": 3 }), "yes"),
        ("inputs.x - 5 < 0", json!({ "x": 3 }), "yes"),
        ("inputs.x % 2 == 1", json!({ "x": 3 }), "yes"),
        ("inputs.p * 1.5 > 2.0", json!({ "p": 1.5 }), "yes"),
        ("inputs.x / 2 == 2", json!({ "x": 5 }), "yes"),
        ("inputs.x * 2 == 2", json!({ "x": 2 }), "no"),
    ] {
        let w = wf(&format!(
            "name: w\nsteps:\n  - id: b\n    branch: {{ if: '{cond}', then: yes, else: no }}\n  - id: yes\n    task: echo\n    end: true\n  - id: no\n    task: echo\n"
        ));
        let next = decide(&w, &fold(&[started(inputs.clone())]), t0()).append;
        assert!(
            matches!(&next[..], [_, Event::BranchTaken(b), _] if b.target == want),
            "{cond} with {inputs}: {next:?}"
        );
    }
    // A whole number and a decimal: the message says what to write.
    let w = wf("name: w\nsteps:\n  - id: b\n    branch: { if: 'inputs.x * 1.5 > 2.0', then: end, else: end }\n");
    let next = decide(&w, &fold(&[started(json!({ "x": 2 }))]), t0()).append;
    assert!(matches!(&next[..], [_, Event::StepFailed(f)] if f.message.contains("double(")), "{next:?}");
}

/// A condition that could iterate past its budget fails its step with kind
/// `limit` before it runs (before: a 4-deep `.all` over 40 items blocked
/// the whole server for 10.7 s); within the budget it is evaluated.
#[test]
fn a_condition_past_its_cost_budget_fails_with_kind_limit() {
    let w = wf(
        "name: w\nsteps:\n  - id: b\n    branch: { if: 'inputs.xs.all(a, inputs.xs.all(b, inputs.xs.all(c, inputs.xs.all(d, a + b + c + d >= 0))))', then: yes, else: no }\n  - id: yes\n    task: echo\n    end: true\n  - id: no\n    task: echo\n",
    );
    let many: Vec<i64> = (0..40).collect();
    let next = decide(&w, &fold(&[started(json!({ "xs": many }))]), t0()).append;
    let [_, Event::StepFailed(f)] = &next[..] else { panic!("{next:?}") };
    assert_eq!(f.error_kind, "limit");
    assert!(f.message.contains("up to 2560000 evaluations, over the limit of 1000000"), "{}", f.message);
    let few: Vec<i64> = (0..10).collect();
    let next = decide(&w, &fold(&[started(json!({ "xs": few }))]), t0()).append;
    assert!(matches!(&next[..], [_, Event::BranchTaken(b), _] if b.target == "yes"), "{next:?}");
}

/// A step inside nested map iterations sees the top level, its enclosing
/// iterations and its own, and nothing of sibling iterations; an inner
/// step's output shadows none of the outer ones. (The template context is
/// found by range scans, not by walking every output.)
#[test]
fn nested_iterations_see_their_enclosing_scopes_and_no_siblings() {
    let w = wf(r#"name: w
steps:
  - id: top
    transform: { k: 10 }
  - id: outer
    map:
      items: [1, 2]
      steps:
        - id: o
          transform: { v: "{{ item * steps.top.output.k }}" }
        - id: inner
          map:
            items: [100, 200]
            steps:
              - id: i
                transform: { s: "{{ item + steps.o.output.v + steps.top.output.k }}", keys: "{{ steps | list | sort | join(',') }}" }
output: "{{ steps.outer.output }}"
"#);
    let mut events = vec![started(json!({}))];
    for _ in 0..200 {
        let d = decide(&w, &fold(&events), t0());
        assert!(d.execute.is_empty(), "only transforms: {d:?}");
        if d.append.is_empty() {
            break;
        }
        events.extend(d.append);
    }
    let s = fold(&events);
    assert_eq!(s.status, RunStatus::Completed, "{events:?}");
    let row =
        |o: i64| json!([{ "s": 100 + o * 10 + 10, "keys": "o,top" }, { "s": 200 + o * 10 + 10, "keys": "o,top" }]);
    assert_eq!(s.output, Some(json!([row(1), row(2)])));
}

const GUARDED: &str = "name: w\nsteps:\n  - id: a\n    transform: { n: '{{ inputs.n }}' }\n  - id: big\n    when: steps.a.output.n > 10\n    transform: { big: true }\n    max_visits: 1\n  - id: c\n    transform: { done: true }\n";

fn skipped(step: &str, guard: &str, scope: &str) -> Event {
    Event::StepSkipped(cairn_events::StepSkipped {
        step_id: step.into(),
        reason: format!("when: `{guard}` is false"),
        scope: scope.into(),
        guard: Some(guard.into()),
        at: None,
    })
}

#[test]
fn a_false_guard_records_the_skip_and_control_goes_on() {
    let w = wf(GUARDED);
    let s = fold(&[
        started(json!({ "n": 3 })),
        step_started("a", 1, json!({ "n": 3 })),
        step_completed("a", 1, json!({ "n": 3 })),
    ]);
    let guard = "steps.a.output.n > 10";
    assert_eq!(decide(&w, &s, t0()), Decision::append(vec![skipped("big", guard, "")]));
    // Then the step after it; the skipped step has no output, no visit, no attempt.
    let s = evolve(s, &skipped("big", guard, ""));
    assert!(!s.outputs.contains_key("big") && !s.visits.contains_key("big") && !s.attempts.contains_key("big"));
    let d = decide(&w, &s, t0());
    assert!(matches!(&d.append[..], [Event::StepStarted(e), Event::StepCompleted(_)] if e.step_id == "c"), "{d:?}");
    // A true guard runs the step as usual.
    let s = fold(&[
        started(json!({ "n": 30 })),
        step_started("a", 1, json!({ "n": 30 })),
        step_completed("a", 1, json!({ "n": 30 })),
    ]);
    let d = decide(&w, &s, t0());
    assert!(matches!(&d.append[..], [Event::StepStarted(e), Event::StepCompleted(_)] if e.step_id == "big"), "{d:?}");
}

#[test]
fn a_guard_that_cannot_be_evaluated_fails_the_step_with_kind_condition() {
    let w = wf("name: w\nsteps:\n  - id: a\n    when: inputs.flag\n    transform: { x: 1 }\n");
    let s = fold(&[started(json!({ "flag": "yes" }))]);
    let d = decide(&w, &s, t0());
    match &d.append[..] {
        [Event::StepStarted(st), Event::StepFailed(f)] => {
            assert_eq!((st.step_id.as_str(), f.error_kind.as_str()), ("a", "condition"));
            assert!(f.message.contains("its guard `inputs.flag`"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn inside_a_map_a_guard_is_checked_for_each_item() {
    let w = wf(
        "name: w\nsteps:\n  - id: m\n    map:\n      items: [1, 5, 2]\n      steps:\n        - id: odd\n          when: item % 2 == 1\n          transform: { v: '{{ item }}' }\n",
    );
    let mut s = fold(&[started(json!({})), step_started("m", 1, json!({ "items": [1, 5, 2] }))]);
    let d = decide(&w, &s, t0());
    let guard = "item % 2 == 1";
    // Items 0 and 1 run; item 2 is skipped in its own iteration's thread.
    assert!(d.append.contains(&skipped("m[2].odd", guard, "m[2]")), "{d:?}");
    assert_eq!(
        d.append.iter().filter(|e| matches!(e, Event::StepCompleted(c) if c.step_id.starts_with("m["))).count(),
        2,
        "{d:?}"
    );
    for e in &d.append {
        s = evolve(s, e);
    }
    // The map completes; the skipped item's result is null.
    let d = decide(&w, &s, t0());
    assert!(
        d.append.iter().any(|e| matches!(e, Event::StepCompleted(c) if c.step_id == "m" && c.output == json!([{ "v": 1 }, { "v": 5 }, null]))),
        "{d:?}"
    );
}

#[test]
fn a_skipped_step_spends_no_visit_of_a_loop() {
    // A loop whose guarded step is skipped on every pass: its max_visits
    // of 1 does not stop the loop.
    let w = wf(
        "name: w\nsteps:\n  - id: count\n    task: increment\n    with: \"{{ steps.count.output if steps.count is defined else {'counter': 0} }}\"\n    max_visits: 4\n  - id: never\n    when: 'false'\n    transform: { x: 1 }\n    max_visits: 1\n  - id: again\n    branch: { if: 'steps.count.output.counter < 3', then: count }\n",
    );
    let mut s = fold(&[started(json!({}))]);
    let mut skips = 0;
    for _ in 0..40 {
        let d = decide(&w, &s, t0());
        if d.append.is_empty() && d.execute.is_empty() {
            break;
        }
        for e in &d.append {
            skips += usize::from(matches!(e, Event::StepSkipped(_)));
            s = evolve(s, e);
        }
        for x in &d.execute {
            let n = x.input.get("counter").and_then(Value::as_i64).unwrap_or(0);
            s = evolve(s, &step_completed(&x.step_id, x.attempt, json!({ "counter": n + 1 })));
        }
    }
    assert_eq!(s.status, RunStatus::Completed, "{s:?}");
    assert_eq!(skips, 3, "skipped on each of the three passes");
}

#[test]
fn a_resume_plan_checks_a_skipped_steps_guard_again() {
    use cairn_core::resume_plan::{Mark, ResumeRequest, plan};
    let w = wf(
        "name: w\nsteps:\n  - id: a\n    transform: { n: '{{ inputs.n }}' }\n  - id: big\n    when: steps.a.output.n > 10\n    transform: { big: true }\n  - id: c\n    task: echo\n",
    );
    let mut events = vec![started(json!({ "n": 3 }))];
    let mut s = fold(&events);
    for _ in 0..10 {
        let d = decide(&w, &s, t0());
        for e in d.append.iter().cloned().chain(d.execute.iter().map(|x| step_failed(&x.step_id, x.attempt, false))) {
            s = evolve(s, &e);
            events.push(e);
        }
        if s.status != RunStatus::Running {
            break;
        }
    }
    assert_eq!(s.status, RunStatus::Failed, "{events:?}");
    let p = plan(&w, &events, &ResumeRequest::new("ops")).expect("plan");
    let line = p.lines.iter().find(|l| l.step == "big").expect("big is in the plan");
    assert_eq!(line.mark, Mark::RerunIfChanged, "{line:?}");
    assert!(line.note.contains("was skipped (its guard `steps.a.output.n > 10` was false)"), "{}", line.note);
    let c = p.lines.iter().find(|l| l.step == "c").expect("c");
    assert_eq!(c.mark, Mark::Rerun, "{c:?}");
}

const CAUGHT: &str = "name: w\nsteps:\n  - id: charge\n    task: echo\n    retry: { max_attempts: 2, initial_interval: 1s, jitter: 0 }\n    catch:\n      - { errors: [card.declined], next: declined }\n      - { errors: ['http.*'], next: later }\n  - id: ship\n    transform: { ok: true }\n    end: true\n  - id: declined\n    fail: { error: payment.declined, cause: \"declined: {{ steps.charge.error.message }}\" }\n  - id: later\n    transform: { retry_at: tomorrow, why: '{{ steps.charge.error.kind }}' }\n";

fn failed_with(step: &str, attempt: u32, kind: &str, retryable: bool) -> Event {
    Event::StepFailed(StepFailed {
        step_id: step.into(),
        attempt,
        error_kind: kind.into(),
        message: format!("{kind} happened"),
        retryable,
        retry_after_ms: None,
    })
}

#[test]
fn a_caught_failure_goes_to_its_handler_with_the_error() {
    let w = wf(CAUGHT);
    // Retried first, then caught by the entry whose errors match.
    let s = fold(&[
        started(json!({})),
        step_started("charge", 1, json!(null)),
        failed_with("charge", 1, "http.status", true),
    ]);
    assert!(matches!(&decide(&w, &s, t0()).append[..], [Event::RetryScheduled(_)]));
    let s = fold(&[
        started(json!({})),
        step_started("charge", 1, json!(null)),
        failed_with("charge", 1, "http.status", true),
        Event::RetryScheduled(cairn_events::RetryScheduled {
            step_id: "charge".into(),
            next_attempt: 2,
            due_at: t0(),
            backoff_ms: 1000,
        }),
        step_started("charge", 2, json!(null)),
        failed_with("charge", 2, "http.status", true),
    ]);
    let d = decide(&w, &s, t0());
    let caught = Event::ErrorCaught(cairn_events::ErrorCaught {
        step_id: "charge".into(),
        attempt: 2,
        error_kind: "http.status".into(),
        message: "http.status happened".into(),
        next: "later".into(),
    });
    assert_eq!(d.append, vec![caught.clone()]);
    // The handler reads the error; the run completes.
    let s = evolve(s, &caught);
    let d = decide(&w, &s, t0());
    match &d.append[..] {
        [Event::StepStarted(st), Event::StepCompleted(c)] => {
            assert_eq!(st.step_id, "later");
            assert_eq!(c.output, json!({ "retry_at": "tomorrow", "why": "http.status" }));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fail_step_fails_the_run_with_its_error_and_cause() {
    let w = wf(CAUGHT);
    // Not retryable: caught at once, by the first entry.
    let (s, _) = settle(
        &w,
        fold(&[
            started(json!({})),
            step_started("charge", 1, json!(null)),
            failed_with("charge", 1, "card.declined", false),
        ]),
    );
    assert_eq!(s.status, RunStatus::Failed);
    let (kind, message, step) = s.error.clone().expect("error");
    assert_eq!(
        (kind.as_str(), message.as_str(), step.as_deref()),
        ("payment.declined", "declined: card.declined happened", Some("declined"))
    );
}

#[test]
fn an_error_no_entry_matches_fails_the_run_as_before() {
    let w = wf(CAUGHT);
    let s =
        fold(&[started(json!({})), step_started("charge", 1, json!(null)), failed_with("charge", 1, "timeout", false)]);
    let d = decide(&w, &s, t0());
    assert!(matches!(&d.append[..], [Event::RunFailed(f)] if f.error_kind == "timeout"), "{d:?}");
}

#[test]
fn a_fail_step_in_a_branch_is_caught_on_its_parallel() {
    let w = wf(
        "name: w\nsteps:\n  - id: fan\n    parallel:\n      branches:\n        - name: a\n          steps:\n            - id: stop\n              fail: { error: nope, cause: no }\n        - name: b\n          steps:\n            - id: fine\n              transform: { x: 1 }\n    catch: [{ errors: [nope], next: recover }]\n  - id: done\n    transform: { ok: true }\n    end: true\n  - id: recover\n    transform: { recovered: '{{ steps.fan.error.kind }}' }\n",
    );
    let (s, _) = settle(&w, fold(&[started(json!({}))]));
    assert_eq!(s.status, RunStatus::Completed, "{s:?}");
    assert_eq!(s.output, Some(json!({ "recovered": "nope" })));
}

#[test]
fn a_race_is_won_by_the_first_branch_to_complete_and_the_others_are_cancelled() {
    let w = wf(
        "name: w\nsteps:\n  - id: race\n    parallel:\n      compete: true\n      branches:\n        - name: slow\n          steps:\n            - id: nap\n              wait: { for: 1h }\n        - name: quick\n          steps:\n            - id: fast\n              transform: { v: 1 }\n",
    );
    let (s, all) = settle(&w, fold(&[started(json!({}))]));
    assert_eq!(s.status, RunStatus::Completed, "{all:?}");
    assert_eq!(s.output, Some(json!({ "winner": "quick", "output": { "v": 1 } })));
    let skipped: Vec<&cairn_events::StepSkipped> =
        all.iter().filter_map(|e| if let Event::StepSkipped(x) = e { Some(x) } else { None }).collect();
    assert_eq!(skipped.len(), 1, "{all:?}");
    assert_eq!(
        (skipped[0].step_id.as_str(), skipped[0].reason.as_str()),
        ("nap", "cancelled: `race` was won by branch `quick`")
    );
    // Without compete, the same parallel waits for both.
    let w = wf(
        "name: w\nsteps:\n  - id: race\n    parallel:\n      branches:\n        - name: slow\n          steps:\n            - id: nap\n              wait: { for: 1h }\n        - name: quick\n          steps:\n            - id: fast\n              transform: { v: 1 }\n",
    );
    let (s, _) = settle(&w, fold(&[started(json!({}))]));
    assert_eq!(s.status, RunStatus::Running);
}

#[test]
fn templates_see_the_run_itself() {
    let w = wf(
        "name: w\nsteps:\n  - id: a\n    task: echo\n    with: { id: '{{ run.id }}', wf: '{{ run.workflow }}', v: '{{ run.version }}', by: '{{ run.started_by }}', attempt: '{{ run.attempt }}', key: '{{ run.uuid }}', parent: '{{ run.parent_id }}' }\n    retry: { max_attempts: 2, initial_interval: 1s, jitter: 0 }\n    when: run.workflow == 'w' && run.version == 1\n",
    );
    let mut first = started(json!({}));
    if let Event::RunStarted(r) = &mut first {
        r.parent = Some(cairn_events::ParentRun { run_id: Uuid::from_u128(99), step_id: "spawn".into() });
    }
    let s = fold(std::slice::from_ref(&first));
    let d = decide(&w, &s, t0());
    let input = match &d.append[..] {
        [Event::StepStarted(st)] => st.input.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(input["id"], json!(Uuid::from_u128(7).to_string()));
    assert_eq!((input["wf"].clone(), input["v"].clone(), input["by"].clone()), (json!("w"), json!(1), json!("t")));
    assert_eq!(input["attempt"], json!(1));
    assert_eq!(input["parent"], json!(Uuid::from_u128(99).to_string()), "a child run knows its parent");
    let key = input["key"].as_str().expect("uuid").to_owned();
    assert!(key.parse::<Uuid>().is_ok(), "{key}");
    // Deciding again gives the same UUID (a replay finds it); a retry gets its own, and attempt 2.
    assert_eq!(decide(&w, &s, t0()), d);
    let s = fold(&[
        first,
        step_started("a", 1, input.clone()),
        step_failed("a", 1, true),
        Event::RetryScheduled(cairn_events::RetryScheduled {
            step_id: "a".into(),
            next_attempt: 2,
            due_at: t0(),
            backoff_ms: 1000,
        }),
    ]);
    let retry = match &decide(&w, &s, t0()).append[..] {
        [Event::StepStarted(st)] => st.input.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(retry["attempt"], json!(2));
    assert_ne!(retry["key"], input["key"]);
}

#[test]
fn a_parallel_can_give_its_results_as_a_list() {
    let src = |shape: &str| {
        format!(
            "name: w\nsteps:\n  - id: p\n    parallel:\n      output: {shape}\n      branches:\n        - name: b\n          steps:\n            - id: two\n              transform: {{ v: 2 }}\n        - name: a\n          steps:\n            - id: one\n              transform: {{ v: 1 }}\n"
        )
    };
    for (shape, want) in
        [("list", json!([{ "v": 2 }, { "v": 1 }])), ("by_branch", json!({ "b": { "v": 2 }, "a": { "v": 1 } }))]
    {
        let w = wf(&src(shape));
        let (s, _) = settle(&w, fold(&[started(json!({}))]));
        assert_eq!(s.status, RunStatus::Completed, "{shape}");
        assert_eq!(s.output, Some(want), "{shape}: in the branches' listed order");
    }
}

const DAG: &str = r#"name: w
steps:
  - id: g
    dag:
      fail_fast: FAIL_FAST
      steps:
        - id: a
          task: echo
          with: { v: a }
        - id: b
          task: echo
          with: { v: b }
        - id: c
          depends_on: [a, b]
          task: echo
          with: { from: "{{ steps.a.output.v }}{{ steps.b.output.v }}" }
        - id: d
          depends_on: [a]
          task: echo
          with: { v: d }
        - id: e
          depends_on: [c, d]
          transform: { last: "{{ steps.c.output.from }}" }
"#;

fn started_ids(events: &[Event]) -> Vec<String> {
    events.iter().filter_map(|e| if let Event::StepStarted(x) = e { Some(x.step_id.clone()) } else { None }).collect()
}

/// Applies an outcome, then decides and folds until only outside
/// outcomes are awaited; the steps started on the way.
fn then_settle(
    w: &Workflow,
    s: cairn_core::decider::RunState,
    e: Event,
) -> (cairn_core::decider::RunState, Vec<String>) {
    let (s, all) = settle(w, evolve(s, &e));
    (s, started_ids(&all))
}

#[test]
fn a_dag_step_starts_when_its_last_dependency_completes_and_no_earlier() {
    let w = wf(&DAG.replace("FAIL_FAST", "true"));
    let (s, all) = settle(&w, fold(&[started(json!({}))]));
    assert_eq!(started_ids(&all), ["g", "a", "b"], "the steps with no dependencies start with the dag");
    let (s, new) = then_settle(&w, s, step_completed("a", 1, json!({ "v": "a" })));
    assert_eq!(new, ["d"], "`c` waits for `b` too; `d` needed only `a`");
    let (s, new) = then_settle(&w, s, step_completed("d", 1, json!({ "v": "d" })));
    assert!(new.is_empty(), "`e` waits for `c`: {new:?}");
    let (s, new) = then_settle(&w, s, step_completed("b", 1, json!({ "v": "b" })));
    assert_eq!(new, ["c"], "its last dependency completed");
    assert_eq!(s.status, RunStatus::Running);
    let (s, new) = then_settle(&w, s, step_completed("c", 1, json!({ "from": "ab" })));
    assert_eq!(new, ["e"]);
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(
        s.outputs.get("g").map(|v| (**v).clone()),
        Some(
            json!({ "a": { "v": "a" }, "b": { "v": "b" }, "c": { "from": "ab" }, "d": { "v": "d" }, "e": { "last": "ab" } })
        ),
        "the output maps each step to its output"
    );
}

#[test]
fn a_dag_fails_fast_cancelling_what_runs_or_finishes_what_it_can() {
    let w = wf(&DAG.replace("FAIL_FAST", "true"));
    let (s, _) = settle(&w, fold(&[started(json!({}))]));
    let (s, all) = settle(&w, evolve(s, &step_failed("b", 1, false)));
    assert_eq!(s.status, RunStatus::Failed, "{all:?}");
    let cancelled: Vec<&str> = all
        .iter()
        .filter_map(|e| if let Event::StepSkipped(x) = e { Some(x.step_id.as_str()) } else { None })
        .collect();
    assert_eq!(cancelled, ["a"], "the running step is cancelled");
    assert!(s.error.as_ref().is_some_and(|(_, m, _)| m.contains("step `b` failed")), "{:?}", s.error);

    // Without fail_fast, what does not depend on the failure still runs;
    // what does never starts, and the failure names it.
    let w = wf(&DAG.replace("FAIL_FAST", "false"));
    let (s, _) = settle(&w, fold(&[started(json!({}))]));
    let (s, new) = then_settle(&w, s, step_failed("b", 1, false));
    assert!(new.is_empty(), "{new:?}");
    assert_eq!(s.status, RunStatus::Running, "`a` still runs");
    let (s, new) = then_settle(&w, s, step_completed("a", 1, json!({ "v": "a" })));
    assert_eq!(new, ["d"]);
    let (s, new) = then_settle(&w, s, step_completed("d", 1, json!({ "v": "d" })));
    assert!(new.is_empty(), "{new:?}");
    assert_eq!(s.status, RunStatus::Failed);
    let message = s.error.as_ref().map(|(_, m, _)| m.clone()).unwrap_or_default();
    assert!(message.contains("`c`, `e` did not start: a step they depend on failed"), "{message}");
}

#[test]
fn a_dag_step_skipped_by_its_guard_or_caught_lets_its_dependents_start() {
    let w = wf(r#"name: w
steps:
  - id: g
    dag:
      steps:
        - id: a
          task: fail
          with: { message: down }
          catch: [{ errors: ["*"], next: end }]
        - id: b
          when: "false"
          transform: { never: true }
        - id: c
          depends_on: [a, b]
          transform:
            why: "{{ steps.a.error.kind }}"
            b: "{{ steps.b.output if steps.b is defined else 'skipped' }}"
"#);
    let (s, all) = settle(&w, fold(&[started(json!({}))]));
    assert_eq!(started_ids(&all), ["g", "a"], "{all:?}");
    assert!(all.iter().any(|e| matches!(e, Event::StepSkipped(x) if x.step_id == "b")), "{all:?}");
    let (s, new) = then_settle(&w, s, failed_with("a", 1, "task.failed", false));
    assert_eq!(new, ["c"]);
    assert_eq!(s.status, RunStatus::Completed, "{s:?}");
    assert_eq!(
        s.outputs.get("g").map(|v| (**v).clone()),
        Some(json!({ "a": null, "b": null, "c": { "why": "task.failed", "b": "skipped" } }))
    );
}

#[test]
fn a_step_that_reads_the_time_records_it_and_others_do_not() {
    let w = wf(
        "name: w\nsteps:\n  - id: a\n    transform: { at: '{{ run.now }}' }\n  - id: b\n    transform: { x: 1 }\n  - id: c\n    when: run.now > '2027-01-01'\n    transform: { x: 2 }\n",
    );
    let (s, all) = settle(&w, fold(&[started(json!({}))]));
    assert_eq!(s.status, RunStatus::Completed, "{all:?}");
    let read: Vec<(&str, Option<DateTime<Utc>>)> = all
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(x) => Some((x.step_id.as_str(), x.at)),
            Event::StepSkipped(x) => Some((x.step_id.as_str(), x.at)),
            _ => None,
        })
        .collect();
    assert_eq!(read, [("a", Some(t0())), ("b", None), ("c", Some(t0()))]);
    assert_eq!(s.outputs["a"]["at"], json!("2026-11-22T12:00:00.000000Z"));
}

const QUEUED: &str = "name: w\nsteps:\n  - id: a\n    queue: jobs\n    with: { n: '{{ inputs.n }}' }\n    heartbeat_timeout: 5s\n    timeout: 1m\n    retry: { max_attempts: 2, initial_interval: 1s, jitter: 0 }\n";

#[test]
fn a_queue_step_is_offered_with_its_start_and_waits_holding_nothing() {
    let w = wf(QUEUED);
    let s = fold(&[started(json!({ "n": 5 }))]);
    let d = decide(&w, &s, t0());
    let offer = Event::TaskOffered(cairn_events::TaskOffered {
        step_id: "a".into(),
        attempt: 1,
        queue: "jobs".into(),
        heartbeat_timeout_ms: 5000,
        expires_at: Some(t0() + Duration::minutes(1)),
    });
    assert_eq!(d.append, vec![step_started("a", 1, json!({ "n": 5 })), offer.clone()]);
    // Then it waits for a worker: nothing to execute, parked, woken at the timeout.
    let s = fold(&[started(json!({ "n": 5 })), step_started("a", 1, json!({ "n": 5 })), offer.clone()]);
    let d = decide(&w, &s, t0() + Duration::seconds(10));
    assert!(d.append.is_empty() && d.execute.is_empty() && d.parked, "{d:?}");
    assert_eq!(d.wake_at, Some(t0() + Duration::minutes(1)));
    // A claim changes none of that; an attempt started without its offer
    // (an older engine) is offered now.
    let claimed = Event::TaskClaimed(cairn_events::TaskClaimed {
        step_id: "a".into(),
        attempt: 1,
        worker: "w1".into(),
        by: "k".into(),
        token_hash: "h".into(),
        heartbeat_by: t0() + Duration::seconds(5),
    });
    let s2 = evolve(s.clone(), &claimed);
    assert_eq!(decide(&w, &s2, t0() + Duration::seconds(10)).wake_at, Some(t0() + Duration::minutes(1)));
    let bare = fold(&[started(json!({ "n": 5 })), step_started("a", 1, json!({ "n": 5 }))]);
    assert!(matches!(&decide(&w, &bare, t0()).append[..], [Event::TaskOffered(_)]));
    // Past the timeout: the attempt fails with `timeout` (retryable), naming the worker.
    let d = decide(&w, &s2, t0() + Duration::minutes(2));
    match &d.append[..] {
        [Event::StepFailed(f)] => {
            assert_eq!((f.error_kind.as_str(), f.retryable), ("timeout", true));
            assert!(f.message.contains("worker `w1` claimed it"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
    // A heartbeat timeout (recorded by the engine's worker) is retried as attempt 2, offered again.
    let lapsed = Event::StepFailed(StepFailed {
        step_id: "a".into(),
        attempt: 1,
        error_kind: "heartbeat-timeout".into(),
        message: "gone".into(),
        retryable: true,
        retry_after_ms: None,
    });
    let s3 = evolve(s2, &lapsed);
    assert_eq!(s3.tasks[&("a".to_owned(), 1)].outcome.as_deref(), Some("heartbeat-timeout"));
    let (_, events) = settle(&w, s3);
    assert!(matches!(&events[..], [Event::RetryScheduled(r)] if r.next_attempt == 2), "{events:?}");
}
