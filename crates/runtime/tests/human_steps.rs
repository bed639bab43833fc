//! Forms and approvals against real stores: the run waits holding nothing,
//! submissions are checked (token, assignees, every field), approvals bind
//! to the content hash, quorums, deadlines (reject, fail, escalate), and two
//! racing answers record exactly one.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_events::clock::ManualClock;
use cairn_events::{Event, EventStore};
use cairn_runtime::people::{HumanError, Submission, Vote};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::{Value, json};
use uuid::Uuid;

fn engine(store: &Arc<dyn EventStore>) -> Engine {
    Engine::new(store.clone(), TaskRegistry::builtin())
}

const FORM: &str = r#"name: brief
steps:
  - id: brief
    form:
      title: "Brief for {{ inputs.who }}"
      assignees: ["{{ inputs.who }}"]
      fields:
        - { name: topic, type: text, required: true, min_length: 3 }
        - { name: words, type: integer, min: 100, max: 2000, default: 600 }
        - { name: tone, type: select, options: [plain, playful] }
        - { name: contact, type: email }
  - id: echo
    task: echo
    with: { topic: "{{ steps.brief.output.topic }}", words: "{{ steps.brief.output.words }}" }
"#;

async fn start(e: &Engine, src: &str, inputs: Value) -> Uuid {
    let (w, v) = common::publish(e, src).await;
    let id = e.start(&w, v, inputs, "test").await.expect("start");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Running, "the run waits for people");
    id
}

fn sub(by: &str, token: &str, values: Value) -> Submission {
    Submission { by: by.into(), token: token.into(), values }
}

async fn a_form_waits_and_checks_every_submission(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let id = start(&e, FORM, json!({"who": "ada"})).await;
    let state = e.state(id).await.expect("state");
    let waiting = state.waiting_for_people();
    assert_eq!(waiting.len(), 1);
    let (step, h) = waiting[0];
    assert_eq!((step, h.kind.as_str(), h.assignees.clone()), ("brief", "form", vec!["ada".to_owned()]));
    assert_eq!(h.title.as_deref(), Some("Brief for ada"));
    let token = e.resume_token(id, "brief", 1);
    // The log holds the hash, never the token.
    let raw: Vec<String> = store
        .read_stream(&cairn_events::run_stream(id), 1)
        .await
        .expect("read")
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    assert!(raw.iter().all(|p| !p.contains(&token)));
    // The log is checked against the core's hashing itself (not in the façade).
    assert!(raw.iter().any(|p| p.contains(&cairn_core::human::token_hash(&token))));

    let bad_token = e.submit(id, "brief", &sub("ada", "crt_guess", json!({"topic": "Rust"}))).await;
    assert!(matches!(bad_token, Err(HumanError::BadToken { .. })), "{bad_token:?}");
    let stranger = e.submit(id, "brief", &sub("mallory", &token, json!({"topic": "Rust"}))).await;
    assert!(matches!(&stranger, Err(HumanError::NotAllowed { allowed, .. }) if allowed == &["ada"]), "{stranger:?}");
    let invalid = e
        .submit(
            id,
            "brief",
            &sub("ada", &token, json!({"topic": "R", "words": 5, "tone": "grim", "contact": "x", "extra": 1})),
        )
        .await;
    let Err(HumanError::Invalid { errors, .. }) = invalid else { panic!("{invalid:?}") };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["topic", "words", "tone", "contact", "extra"]);
    // Nothing of the refused attempts was recorded.
    assert!(!common::events(&store, id).await.iter().any(|e| matches!(e, Event::InputSubmitted(_))));

    e.submit(id, "brief", &sub("ada", &token, json!({"topic": "Rust traits", "tone": "plain"}))).await.expect("submit");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(*s.outputs["echo"], json!({"topic": "Rust traits", "words": 600}));
    let evs = common::events(&store, id).await;
    let submitted = evs
        .iter()
        .find_map(|e| match e {
            Event::InputSubmitted(s) => Some(s),
            _ => None,
        })
        .expect("submitted");
    assert_eq!(submitted.submitted_by, "ada");
    assert_eq!(submitted.values, json!({"topic": "Rust traits", "words": 600, "tone": "plain"}));
    // A late answer names the one that won.
    let late = e.submit(id, "brief", &sub("ada", &token, json!({"topic": "again"}))).await;
    assert!(
        matches!(&late, Err(HumanError::Conflict { winner, .. }) if winner.event_type == "InputSubmitted" && winner.by == "ada"),
        "{late:?}"
    );
}

const REVIEW: &str = r#"name: review
steps:
  - id: draft
    transform: { title: "Hello", body: "{{ inputs.body }}" }
  - id: review
    approval:
      approvers: [grace, ada]
      quorum: all
      summary: "Publish {{ steps.draft.output.title }}?"
      content: "{{ steps.draft.output }}"
      on_reject: continue
  - id: done
    transform: "{{ steps.review.output }}"
"#;

fn vote(by: &str, token: &str, approve: bool) -> Vote {
    Vote {
        by: by.into(),
        token: token.into(),
        approve,
        comment: Some(format!("{by} says so")),
        content_hash: None,
        values: Value::Null,
    }
}

async fn an_approval_binds_to_its_content_and_needs_its_quorum(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let id = start(&e, REVIEW, json!({"body": "text"})).await;
    let token = e.resume_token(id, "review", 1);
    let state = e.state(id).await.expect("state");
    let (_, h) = state.waiting_for_people()[0];
    // The core's content hash, to check what the log recorded (not in the façade).
    let hash = cairn_core::human::content_hash(&json!({"title": "Hello", "body": "text"}));
    assert_eq!((h.content_hash.clone(), h.required), (hash.clone(), 2));

    let outsider = e.decide_approval(id, "review", &vote("mallory", &token, true)).await;
    assert!(matches!(outsider, Err(HumanError::NotAllowed { .. })), "{outsider:?}");
    let stale = Vote { content_hash: Some("0".repeat(64)), ..vote("grace", &token, true) };
    assert!(matches!(e.decide_approval(id, "review", &stale).await, Err(HumanError::ContentChanged { .. })));
    let seen = Vote { content_hash: Some(hash.clone()), ..vote("grace", &token, true) };
    e.decide_approval(id, "review", &seen).await.expect("grace");
    let twice = e.decide_approval(id, "review", &vote("grace", &token, false)).await;
    assert!(
        matches!(&twice, Err(HumanError::Conflict { winner, .. }) if winner.event_type == "ApprovalDecided"),
        "{twice:?}"
    );
    // One of two: still waiting.
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Running);
    e.decide_approval(id, "review", &vote("ada", &token, true)).await.expect("ada");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let out = &s.outputs["review"];
    assert_eq!((out["approved"].clone(), out["decision"].clone()), (json!(true), json!("approved")));
    assert_eq!(out["decisions"].as_array().map(Vec::len), Some(2));
    let evs = common::events(&store, id).await;
    for e in &evs {
        if let Event::ApprovalDecided(d) = e {
            assert_eq!(d.content_hash, hash, "every decision binds to what was shown");
        }
    }
}

async fn a_rejection_fails_the_step_unless_told_to_continue(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let src = REVIEW.replace("      on_reject: continue\n", "");
    let id = start(&e, &src, json!({"body": "b"})).await;
    let token = e.resume_token(id, "review", 1);
    e.decide_approval(id, "review", &vote("ada", &token, false)).await.expect("reject");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    let (kind, message, step) = s.error.expect("failed");
    assert_eq!((kind.as_str(), step.as_deref()), ("approval.rejected", Some("review")));
    assert!(message.contains("rejected by ada: ada says so"), "{message}");

    let id = start(&e, REVIEW, json!({"body": "b"})).await;
    let token = e.resume_token(id, "review", 1);
    e.decide_approval(id, "review", &vote("grace", &token, false)).await.expect("reject");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(s.outputs["done"]["approved"], json!(false));
}

/// A callback with a payload (a task token's): approve or reject plus typed
/// fields, checked like a form's.
const REFUND: &str = r#"name: refund
steps:
  - id: review
    approval:
      approvers: [grace, ada]
      summary: "Refund order {{ inputs.order }}?"
      content: { order: "{{ inputs.order }}" }
      on_reject: continue
      fields:
        - { name: amount, type: number, required: true, min: 0.01, max: 500 }
        - { name: reason, type: select, options: [damaged, late, other], required: true }
        - { name: note, type: text, max_length: 20 }
  - id: pay
    transform: { refund: "{{ steps.review.output.values.amount if steps.review.output.approved else 0 }}" }
"#;

async fn an_approval_carries_typed_fields_checked_like_a_form(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let id = start(&e, REFUND, json!({"order": "A-17"})).await;
    let token = e.resume_token(id, "review", 1);
    let with = |by: &str, approve: bool, values: Value| Vote { values, ..vote(by, &token, approve) };
    // Approving checks every field at once, each named.
    let bad = e
        .decide_approval(
            id,
            "review",
            &with("grace", true, json!({"amount": 900, "note": "x".repeat(30), "colour": "red"})),
        )
        .await;
    let Err(HumanError::Invalid { errors, .. }) = bad else { panic!("{bad:?}") };
    let named: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(named, ["amount", "reason", "note", "colour"], "{errors:?}");
    assert!(errors[0].message.contains("500") && errors[1].message.contains("required"), "{errors:?}");
    assert!(errors[3].message.contains("not a field"), "{errors:?}");
    // A rejection needs none of them, but what it gives is checked.
    let r = e.decide_approval(id, "review", &with("ada", false, json!({"reason": "lost"}))).await;
    assert!(matches!(&r, Err(HumanError::Invalid { errors, .. }) if errors[0].field == "reason"), "{r:?}");
    // Nothing was recorded by the refusals.
    let evs = common::events(&store, id).await;
    assert!(!evs.iter().any(|e| matches!(e, Event::ApprovalDecided(_))), "{evs:?}");
    e.decide_approval(id, "review", &with("grace", true, json!({"amount": 42.5, "reason": "damaged"})))
        .await
        .expect("approve");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.outputs["review"]["values"], json!({"amount": 42.5, "reason": "damaged"}));
    assert_eq!(s.outputs["review"]["decisions"][0]["values"], json!({"amount": 42.5, "reason": "damaged"}));
    assert_eq!(*s.outputs["pay"], json!({"refund": 42.5}));
    let evs = common::events(&store, id).await;
    let requested =
        evs.iter().find_map(|e| if let Event::ApprovalRequested(r) = e { Some(r) } else { None }).expect("request");
    assert_eq!(requested.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["amount", "reason", "note"]);
    let decided =
        evs.iter().find_map(|e| if let Event::ApprovalDecided(d) = e { Some(d) } else { None }).expect("decided");
    assert_eq!(decided.values, Some(json!({"amount": 42.5, "reason": "damaged"})));

    // Rejections that give nothing (both approvers: with quorum `any`, one
    // rejection leaves the other free to approve): `values` is null.
    let id = start(&e, REFUND, json!({"order": "B-2"})).await;
    let token = e.resume_token(id, "review", 1);
    for by in ["ada", "grace"] {
        e.decide_approval(id, "review", &Vote { values: Value::Null, ..vote(by, &token, false) })
            .await
            .expect("reject");
    }
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(
        (s.outputs["review"]["values"].clone(), (*s.outputs["pay"]).clone()),
        (Value::Null, json!({"refund": 0}))
    );

    // A form's answer to an approval that waits is refused at once (it
    // waited out the 10 s grace for a request about to be recorded: the
    // HTTP request timed out; schemathesis found it).
    let id = start(&e, REVIEW, json!({"body": "b"})).await;
    let token = e.resume_token(id, "review", 1);
    let began = std::time::Instant::now();
    let r = e.submit(id, "review", &sub("ada", &token, json!({"x": 1}))).await;
    assert!(matches!(&r, Err(HumanError::NotWaiting { .. })), "{r:?}");
    assert!(began.elapsed() < Duration::from_secs(2), "refused after {:?}", began.elapsed());

    // An approval without fields refuses values rather than dropping them.
    let id = start(&e, REVIEW, json!({"body": "b"})).await;
    let token = e.resume_token(id, "review", 1);
    let r = e.decide_approval(id, "review", &Vote { values: json!({"amount": 1}), ..vote("ada", &token, true) }).await;
    assert!(
        matches!(&r, Err(HumanError::Invalid { errors, .. }) if errors[0].message.contains("asks for no fields")),
        "{r:?}"
    );
}

async fn racing_submissions_record_exactly_one(store: Arc<dyn EventStore>) {
    let e = Arc::new(engine(&store));
    let id = start(&e, FORM, json!({"who": "ada"})).await;
    let token = e.resume_token(id, "brief", 1);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (e, token) = (e.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            e.submit(id, "brief", &sub("ada", &token, json!({"topic": format!("topic {i}")}))).await
        }));
    }
    let mut wins = 0;
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => wins += 1,
            Err(HumanError::Conflict { winner, .. }) => winners.push(winner),
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(wins, 1);
    let evs = common::events(&store, id).await;
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::InputSubmitted(_))).count(), 1);
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let real = recorded.iter().find(|r| r.event_type == "InputSubmitted").expect("one");
    for w in winners {
        assert_eq!((w.event_id.as_str(), w.global_position), (real.event_id.as_str(), real.global_position));
    }
}

async fn racing_approvers_on_a_quorum_of_one_record_exactly_one(store: Arc<dyn EventStore>) {
    let e = Arc::new(engine(&store));
    let src = REVIEW.replace("quorum: all", "quorum: any").replace("[grace, ada]", "[grace, ada, linus, barbara]");
    let id = start(&e, &src, json!({"body": "b"})).await;
    let token = e.resume_token(id, "review", 1);
    let mut tasks = Vec::new();
    for who in ["grace", "ada", "linus", "barbara"] {
        let (e, token) = (e.clone(), token.clone());
        tasks.push(tokio::spawn(async move { e.decide_approval(id, "review", &vote(who, &token, true)).await }));
    }
    let results: Vec<_> = futures_util::future::join_all(tasks).await.into_iter().map(|r| r.expect("join")).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for r in &results {
        if let Err(err) = r {
            assert!(
                matches!(err, HumanError::Conflict { winner, .. } if winner.event_type == "ApprovalDecided"),
                "{err}"
            );
        }
    }
    let evs = common::events(&store, id).await;
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::ApprovalDecided(_))).count(), 1);
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Completed);
}

/// An engine whose time the test moves (deadlines fall due when it says).
fn clocked(store: &Arc<dyn EventStore>) -> (Engine, Arc<ManualClock>) {
    let clock = ManualClock::new(chrono::Utc::now());
    (engine(store).with_clock(clock.clone()), clock)
}

async fn deadlines_reject_fail_or_escalate(store: Arc<dyn EventStore>) {
    let (e, clock) = clocked(&store);
    let base = REVIEW.replace("quorum: all", "quorum: any");
    // reject (the default): completes with `expired` since on_reject is continue.
    let src = base.replace("      on_reject: continue\n", "      on_reject: continue\n      deadline: 1h\n");
    let id = start(&e, &src, json!({"body": "b"})).await;
    clock.advance(Duration::from_secs(3600));
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.outputs["review"]["decision"], json!("expired"));
    let evs = common::events(&store, id).await;
    assert!(evs.iter().any(|e| matches!(e, Event::ApprovalExpired(x) if x.on_timeout == "reject")));
    assert!(evs.iter().any(|e| matches!(e, Event::TimerFired(_))));

    // reject, and a rejection fails the step: the message says it expired.
    let src = base.replace("      on_reject: continue\n", "      deadline: 1h\n");
    let id = start(&e, &src, json!({"body": "b"})).await;
    clock.advance(Duration::from_secs(3600));
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    let (kind, message, _) = s.error.expect("failed");
    assert_eq!(kind, "approval.rejected");
    assert!(message.contains("approval `review` expired: its deadline passed without a decision"), "{message}");

    // fail
    let src = base.replace("      on_reject: continue\n", "      deadline: 1h\n      on_timeout: fail\n");
    let id = start(&e, &src, json!({"body": "b"})).await;
    clock.advance(Duration::from_secs(3600));
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.error.map(|x| x.0).as_deref(), Some("approval.expired"));

    // escalate: the first approvers lose the right to decide, the new ones have it.
    let src = base.replace(
        "      on_reject: continue\n",
        "      deadline: 1h\n      on_timeout: escalate\n      escalate_to: [cto]\n",
    );
    let id = start(&e, &src, json!({"body": "b"})).await;
    clock.advance(Duration::from_secs(3600));
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Running);
    let token = e.resume_token(id, "review", 1);
    assert!(matches!(
        e.decide_approval(id, "review", &vote("grace", &token, true)).await,
        Err(HumanError::NotAllowed { .. })
    ));
    e.decide_approval(id, "review", &vote("cto", &token, true)).await.expect("cto");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let evs = common::events(&store, id).await;
    let rounds: Vec<u32> = evs
        .iter()
        .filter_map(|e| match e {
            Event::ApprovalRequested(r) => Some(r.escalation),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, [0, 1]);
}

/// An answer to a step whose request is about to be recorded (another
/// process drives the run) waits for it instead of `not-waiting`.
async fn an_answer_waits_for_a_request_about_to_be_recorded(store: Arc<dyn EventStore>) {
    let e = Arc::new(engine(&store));
    let (w, v) = common::publish(&e, REVIEW).await;
    let id = e.start(&w, v, json!({"body": "b"}), "test").await.expect("start");
    // Recorded so far: the start, `draft`, and `review` started (no request yet).
    assert!(e.state(id).await.expect("state").waiting_for_people().is_empty());
    let driver = tokio::spawn({
        let e = e.clone();
        async move {
            tokio::task::yield_now().await;
            e.drive(id, &mut |_: &Event| {}).await
        }
    });
    let token = e.resume_token(id, "review", 1);
    e.decide_approval(id, "review", &vote("grace", &token, true)).await.expect("waits, then records");
    driver.await.expect("join").expect("drive");
    // Proven callers need no token; their identity is still checked.
    let id = e.start(&w, v, json!({"body": "b"}), "test").await.expect("start");
    tokio::spawn({
        let e = e.clone();
        async move { e.drive(id, &mut |_: &Event| {}).await }
    });
    let stranger = e.decide_as_caller(id, "review", &vote("mallory", "", true)).await;
    assert!(matches!(stranger, Err(HumanError::NotAllowed { .. })), "{stranger:?}");
    e.decide_as_caller(id, "review", &vote("ada", "", true)).await.expect("ada, without a token");
}

async fn a_form_deadline_fails_the_step(store: Arc<dyn EventStore>) {
    let (e, clock) = clocked(&store);
    let src = FORM.replace("      assignees:", "      deadline: 1h\n      assignees:");
    let id = start(&e, &src, json!({"who": "ada"})).await;
    // Not yet: nothing expires a second early.
    clock.advance(Duration::from_secs(3599));
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Running);
    clock.advance(Duration::from_secs(1));
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.error.map(|x| x.0).as_deref(), Some("input.expired"));
    let late = e.submit(id, "brief", &sub("ada", &e.resume_token(id, "brief", 1), json!({"topic": "late"}))).await;
    assert!(matches!(late, Err(HumanError::Conflict { .. })), "{late:?}");
}

async fn a_child_run_waiting_for_a_person_parks_its_parent(store: Arc<dyn EventStore>) {
    let e = engine(&store);
    let child =
        "name: ask\nsteps:\n  - id: answer\n    form: { fields: [{ name: n, type: integer, required: true }] }\n";
    common::publish(&e, child).await;
    let parent = "name: parent\nsteps:\n  - id: sub\n    workflow: { name: ask }\n  - id: twice\n    transform: { doubled: \"{{ steps.sub.output.n * 2 }}\" }\n";
    let id = start(&e, parent, json!({})).await;
    let waiting = e.waiting(id).await.expect("waiting");
    assert_eq!(waiting.len(), 1);
    let (child_id, step, h) = &waiting[0];
    assert_ne!(*child_id, id);
    assert_eq!((step.as_str(), h.kind.as_str()), ("answer", "form"));
    // Driving the parent again neither fails it nor records anything new.
    let before = common::events(&store, id).await.len();
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Running);
    assert_eq!(common::events(&store, id).await.len(), before);
    let token = e.resume_token(*child_id, "answer", 1);
    e.submit(*child_id, "answer", &sub("ada", &token, json!({"n": 21}))).await.expect("submit");
    let (top, s) = e.drive_after_answer(*child_id, &mut |_: &Event| {}).await.expect("drive up");
    assert_eq!(top, id, "the answer carries on into the parent");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(*s.outputs["twice"], json!({"doubled": 42}));
}

both_backends!(
    a_child_run_waiting_for_a_person_parks_its_parent,
    a_form_waits_and_checks_every_submission,
    an_approval_binds_to_its_content_and_needs_its_quorum,
    a_rejection_fails_the_step_unless_told_to_continue,
    an_approval_carries_typed_fields_checked_like_a_form,
    racing_submissions_record_exactly_one,
    racing_approvers_on_a_quorum_of_one_record_exactly_one,
    deadlines_reject_fail_or_escalate,
    a_form_deadline_fails_the_step,
    an_answer_waits_for_a_request_about_to_be_recorded,
);

#[test]
fn bad_human_steps_are_diagnosed() {
    let check = |src: &str, code: &str, needle: &str| {
        let d = cairn_runtime::lang::parse(src, "t.yaml", &[]).expect_err("invalid");
        assert!(d.0.iter().any(|x| x.code == code && x.to_string().contains(needle)), "{code} / {needle}: {d}");
    };
    let form = |f: &str| format!("name: t\nsteps:\n  - id: f\n    form:\n      fields:\n        - {f}\n");
    check(&form("{ name: a, type: txt }"), "bad-field", "did you mean `text`?");
    check(&form("{ name: a, type: select }"), "bad-field", "no `options`");
    check(&form("{ name: a, type: integer, min: 5, max: 1 }"), "bad-field", "`min` 5 is more than `max` 1");
    check(&form("{ name: a, type: integer, default: x }"), "bad-field", "the default");
    check(&form("{ name: a, pattern: '(' }"), "bad-field", "not a regular expression");
    check(
        "name: t\nsteps:\n  - id: a\n    approval: { approvers: [x], deadline: 1h, reminders: [2h] }\n",
        "bad-reminder",
        "as long as the deadline",
    );
    check(
        "name: t\nsteps:\n  - id: a\n    approval: { approvers: [x], on_timeout: escalate, deadline: 1h }\n",
        "bad-approval",
        "escalate_to",
    );
    check(
        "name: t\nsteps:\n  - id: a\n    approval: { approvers: [x, y], quorum: 3 }\n",
        "bad-approval",
        "needs 3 approvals",
    );
    check(
        "name: t\nsteps:\n  - id: a\n    approval: { approvers: [x] }\n    timeout: 1h\n",
        "misplaced-field",
        "deadline",
    );
    check(
        "name: t\nsteps:\n  - id: f\n    form: { fields: [{ name: topic }] }\n  - id: g\n    transform: \"{{ steps.f.output.topc }}\"\n",
        "unknown-output-field",
        "did you mean `topic`?",
    );
    check(
        "name: t\nsteps:\n  - id: a\n    ai: { model: m, prompt: \"{{ secrets.KEY }}\", scripted: [x] }\n",
        "secret-in-prompt",
        "recorded",
    );
    check("name: t\nsteps:\n  - id: a\n    ai: { model: m, scripted: [x] }\n", "bad-ai", "exactly one of");
    check("name: t\nsteps:\n  - id: a\n    task: echo\n    budget: { max_cost: 1 }\n", "misplaced-field", "budget");
}
