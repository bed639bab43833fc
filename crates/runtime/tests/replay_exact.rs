//! Replay is exact: it reports no divergence that did not happen, whatever
//! order parallel branches' events were recorded in, and it reads only the
//! log and the pinned definition (not today's configuration).
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;

use cairn_events::EventStore;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

/// A parallel of three branches whose first steps sleep 20, 5 and 12 ms
/// (so their events interleave differently on every run), each followed by
/// `second` (given the branch's name).
fn fan(name: &str, second: impl Fn(&str) -> String) -> String {
    let mut y = format!("name: {name}\nsteps:\n  - id: fan\n    parallel:\n      branches:\n");
    for (b, ms) in [("a", 20), ("b", 5), ("c", 12)] {
        y.push_str(&format!(
            "        - name: {b}\n          steps:\n          - id: {b}1\n            task: sleep\n            with: {{ ms: {ms} }}\n          - id: {b}2\n{}",
            second(b)
        ));
    }
    y
}

/// Replays a recorded run and asserts it reproduces every decision.
async fn replays_clean(store: &Arc<dyn EventStore>, w: &cairn_runtime::Workflow, id: uuid::Uuid) {
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let report = cairn_runtime::replay::check(w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "run {id}: {:?}", report.divergence);
}

/// Before, 2 of 10 such runs replayed with a divergence that did not
/// happen: the branches' events interleave differently on every run.
async fn parallel_branches_replay_without_divergence_in_any_interleaving(store: Arc<dyn EventStore>) {
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let src = fan("fan", |_| "            task: sleep\n            with: { ms: 3 }\n".to_owned());
    let (w, v) = common::publish(&engine, &src).await;
    for _ in 0..10 {
        let id = engine.start(&w, v, json!({}), "test").await.expect("start");
        let s = engine.drive(id, &mut |_| {}).await.expect("drive");
        assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
        replays_clean(&store, &w, id).await;
    }
}

/// With an approval as each branch's second step (before: 4 of 10 diverged).
async fn parallel_approvals_replay_without_divergence(store: Arc<dyn EventStore>) {
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let src = fan("fan-approve", |b| format!("            approval: {{ approvers: [ada], summary: \"{b}?\" }}\n"));
    let (w, v) = common::publish(&engine, &src).await;
    for round in 0..10 {
        let id = engine.start(&w, v, json!({}), "test").await.expect("start");
        engine.drive(id, &mut |_| {}).await.expect("drive");
        // Approve in an order that changes with the round.
        let mut order = vec!["a2", "b2", "c2"];
        order.rotate_left(round % 3);
        for step in order {
            let vote = cairn_runtime::people::Vote {
                by: "ada".into(),
                token: engine.resume_token(id, step, 1),
                approve: true,
                comment: None,
                content_hash: None,
                values: serde_json::Value::Null,
            };
            engine.decide_approval(id, step, &vote).await.expect("approve");
            engine.drive(id, &mut |_| {}).await.expect("drive");
        }
        let s = engine.drive(id, &mut |_| {}).await.expect("drive");
        assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
        replays_clean(&store, &w, id).await;
    }
}

const PRICED_AGENT: &str = "price_table: t-2026\nmodels:\n  agent: { provider: scripted, model: demo, input_per_million: 0.15, output_per_million: 0.6 }\n";

const AI_FLOW: &str = r#"
name: drafted
steps:
  - id: draft
    ai:
      model: agent
      prompt: "Write a title"
      scripted: ['{"title": "no"}', '{"title": "A long enough title"}']
    output_contract:
      type: object
      required: [title]
      properties:
        title: { type: string, minLength: 5 }
"#;

/// Replay reads what the decider took from the configuration from the log:
/// without `cairn.yaml` (before: `no model 'agent'`) or with a changed price
/// (before: a divergence on `cost_micros`), a run replays as recorded.
async fn replay_does_not_read_todays_configuration(store: Arc<dyn EventStore>) {
    let config = cairn_runtime::Config::parse(PRICED_AGENT, "cairn.yaml").expect("config");
    let engine = Engine::new(store.clone(), TaskRegistry::builtin()).with_config(config);
    let (id, s) = common::run(&engine, AI_FLOW, json!({})).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    assert!(recorded[0].payload.contains("\"table\":\"t-2026\""), "the price is recorded with the run");
    // No configuration at all.
    let bare = cairn_runtime::lang::parse(AI_FLOW, "t.yaml", &engine.task_names()).expect("parse");
    let report = cairn_runtime::replay::check(&bare, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "without cairn.yaml: {:?}", report.divergence);
    assert!(report.decisions_checked >= 3, "{report:?}");
    // The price changed since.
    let dearer = cairn_runtime::Config::parse(&PRICED_AGENT.replace("0.15", "0.30"), "cairn.yaml").expect("cfg");
    let later = Engine::new(store.clone(), TaskRegistry::builtin()).with_config(dearer);
    let w = later.definition("drafted", 1).await.expect("definition");
    let report = cairn_runtime::replay::check(&w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "with a changed price: {:?}", report.divergence);
    // A run started now takes the new price.
    let (id2, _) = common::run(&later, AI_FLOW, json!({})).await;
    let recorded2 = store.read_stream(&cairn_events::run_stream(id2), 1).await.expect("read");
    assert!(recorded2[0].payload.contains("\"input_per_million\":0.3"), "{}", recorded2[0].payload);
}

/// The state at the head of a run waiting for a person says `waiting`, as
/// `GET /runs/{id}` does (before: `running`).
async fn the_state_of_a_run_waiting_for_a_person_says_waiting(store: Arc<dyn EventStore>) {
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let src = "name: ask\nsteps:\n  - id: ok\n    approval: { approvers: [ada], summary: \"go?\" }\n";
    let (w, v) = common::publish(&engine, src).await;
    let id = engine.start(&w, v, json!({}), "test").await.expect("start");
    let s = engine.drive(id, &mut |_| {}).await.expect("drive");
    assert_eq!(s.status_name(), "waiting");
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let snap = cairn_runtime::replay::snapshot(&recorded, recorded.len()).expect("snapshot");
    assert_eq!(snap.status, "waiting");
    replays_clean(&store, &w, id).await;
}

/// `run.now` is read once and recorded: a branch on it, a guard on it and an
/// input with it replay without divergence, though the replay runs long
/// after (the decisions were made on a clock in January; the store stamps
/// events with today). Before the time was recorded, the replay decided at
/// the events' stamps and took the other branch.
async fn the_time_a_run_read_replays_as_it_was_read(store: Arc<dyn EventStore>) {
    use chrono::TimeZone;
    let january = chrono::Utc.with_ymd_and_hms(2026, 1, 15, 9, 30, 0).single().expect("time");
    let clock = cairn_events::clock::ManualClock::new(january);
    let engine = Engine::new(store.clone(), TaskRegistry::builtin()).with_clock(clock.clone());
    let src = r#"name: clock
steps:
  - id: stamp
    transform: { at: "{{ run.now }}", id: "{{ run.id }}" }
  - id: season
    branch: { if: "run.now < '2026-06-01T00:00:00Z'", then: winter, else: summer }
  - id: summer
    transform: { season: summer }
    end: true
  - id: winter
    when: "run.now < '2026-02-01T00:00:00Z'"
    transform: { season: winter }
  - id: late
    when: "run.now > '2026-06-01T00:00:00Z'"
    transform: { late: true }
"#;
    let (w, v) = common::publish(&engine, src).await;
    let id = engine.start(&w, v, json!({}), "test").await.expect("start");
    let s = engine.drive(id, &mut |_| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.outputs["stamp"]["at"], json!("2026-01-15T09:30:00.000000Z"));
    assert_eq!(s.outputs["winter"]["season"], json!("winter"));
    assert!(!s.outputs.contains_key("late"), "its guard read January");
    let evs = common::events(&store, id).await;
    let at: Vec<(&str, Option<chrono::DateTime<chrono::Utc>>)> = evs
        .iter()
        .filter_map(|e| match e {
            cairn_events::Event::StepStarted(x) => Some((x.step_id.as_str(), x.at)),
            cairn_events::Event::StepSkipped(x) => Some((x.step_id.as_str(), x.at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        at,
        [("stamp", Some(january)), ("season", Some(january)), ("winter", Some(january)), ("late", Some(january))],
        "each step that reads the time records it; the others do not"
    );
    replays_clean(&store, &w, id).await;
}

both_backends!(
    the_state_of_a_run_waiting_for_a_person_says_waiting,
    parallel_branches_replay_without_divergence_in_any_interleaving,
    parallel_approvals_replay_without_divergence,
    replay_does_not_read_todays_configuration,
    the_time_a_run_read_replays_as_it_was_read
);
