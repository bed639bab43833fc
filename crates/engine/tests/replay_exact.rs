//! Replay is exact: it reports no divergence that did not happen, whatever
//! order parallel branches' events were recorded in, and it reads only the
//! log and the pinned definition (not today's configuration).
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;

use cairn_engine::decider::RunStatus;
use cairn_engine::{Engine, TaskRegistry};
use cairn_events::EventStore;
use serde_json::json;

const PARALLEL_SLEEPS: &str = r#"
name: fan
steps:
  - id: fan
    parallel:
      branches:
        - name: a
          steps:
          - id: a1
            task: sleep
            with: { ms: 20 }
          - id: a2
            task: sleep
            with: { ms: 3 }
        - name: b
          steps:
          - id: b1
            task: sleep
            with: { ms: 5 }
          - id: b2
            task: sleep
            with: { ms: 3 }
        - name: c
          steps:
          - id: c1
            task: sleep
            with: { ms: 12 }
          - id: c2
            task: sleep
            with: { ms: 3 }
"#;

/// Before, 2 of 10 such runs replayed with a divergence that did not
/// happen: the branches' events interleave differently on every run.
async fn parallel_branches_replay_without_divergence_in_any_interleaving(store: Arc<dyn EventStore>) {
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let (w, v) = common::publish(&engine, PARALLEL_SLEEPS).await;
    for _ in 0..10 {
        let id = engine.start(&w, v, json!({}), "test").await.expect("start");
        let s = engine.drive(id, &mut |_| {}).await.expect("drive");
        assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
        let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
        let report = cairn_engine::replay::check(&w, &recorded).expect("replay");
        assert!(report.divergence.is_none(), "run {id}: {:?}", report.divergence);
    }
}

const PARALLEL_APPROVALS: &str = r#"
name: fan-approve
steps:
  - id: fan
    parallel:
      branches:
        - name: a
          steps:
          - id: a1
            task: sleep
            with: { ms: 20 }
          - id: a2
            approval: { approvers: [ada], summary: "a?" }
        - name: b
          steps:
          - id: b1
            task: sleep
            with: { ms: 5 }
          - id: b2
            approval: { approvers: [ada], summary: "b?" }
        - name: c
          steps:
          - id: c1
            task: sleep
            with: { ms: 12 }
          - id: c2
            approval: { approvers: [ada], summary: "c?" }
"#;

/// With an approval as each branch's second step (before: 4 of 10 diverged).
async fn parallel_approvals_replay_without_divergence(store: Arc<dyn EventStore>) {
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let (w, v) = common::publish(&engine, PARALLEL_APPROVALS).await;
    for round in 0..10 {
        let id = engine.start(&w, v, json!({}), "test").await.expect("start");
        engine.drive(id, &mut |_| {}).await.expect("drive");
        // Approve in an order that changes with the round.
        let mut order = vec!["a2", "b2", "c2"];
        order.rotate_left(round % 3);
        for step in order {
            let vote = cairn_engine::inbox::Vote {
                by: "ada".into(),
                token: engine.resume_token(id, step, 1),
                approve: true,
                comment: None,
                content_hash: None,
            };
            engine.decide_approval(id, step, &vote).await.expect("approve");
            engine.drive(id, &mut |_| {}).await.expect("drive");
        }
        let s = engine.drive(id, &mut |_| {}).await.expect("drive");
        assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
        let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
        let report = cairn_engine::replay::check(&w, &recorded).expect("replay");
        assert!(report.divergence.is_none(), "run {id}: {:?}", report.divergence);
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
    let config = cairn_engine::config::Config::parse(PRICED_AGENT, "cairn.yaml").expect("config");
    let engine = Engine::new(store.clone(), TaskRegistry::builtin()).with_config(config);
    let (id, s) = common::run(&engine, AI_FLOW, json!({})).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    assert!(recorded[0].payload.contains("\"table\":\"t-2026\""), "the price is recorded with the run");
    // No configuration at all.
    let bare = cairn_engine::lang::parse(AI_FLOW, "t.yaml", &engine.task_names()).expect("parse");
    let report = cairn_engine::replay::check(&bare, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "without cairn.yaml: {:?}", report.divergence);
    assert!(report.decisions_checked >= 3, "{report:?}");
    // The price changed since.
    let dearer = cairn_engine::config::Config::parse(&PRICED_AGENT.replace("0.15", "0.30"), "cairn.yaml").expect("cfg");
    let later = Engine::new(store.clone(), TaskRegistry::builtin()).with_config(dearer);
    let w = later.definition("drafted", 1).await.expect("definition");
    let report = cairn_engine::replay::check(&w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "with a changed price: {:?}", report.divergence);
    // A run started now takes the new price.
    let (id2, _) = common::run(&later, AI_FLOW, json!({})).await;
    let recorded2 = store.read_stream(&cairn_events::run_stream(id2), 1).await.expect("read");
    assert!(recorded2[0].payload.contains("\"input_per_million\":0.3"), "{}", recorded2[0].payload);
}

both_backends!(
    parallel_branches_replay_without_divergence_in_any_interleaving,
    parallel_approvals_replay_without_divergence,
    replay_does_not_read_todays_configuration
);
