//! `cairn demo`: append a realistic run to the log, read it back, verify it.

use crate::codes;
use std::process::ExitCode;

use cairn_events::{
    AiAttemptCompleted, AiAttemptStarted, AiMessage, ApprovalDecided, ApprovalRequested, BranchTaken, Event,
    ExpectedVersion, Metadata, NewEvent, RunCompleted, RunStarted, StepCompleted, StepStarted, TokenUsage,
};
use serde_json::json;
use uuid::Uuid;

/// Runs the command.
pub async fn run(database: &str) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open(database).await?;
    let run_id = Uuid::now_v7();
    let stream = cairn_events::run_stream(run_id);
    let content = json!({ "title": "Why durable workflows", "body": "…" });
    let events: Vec<(Event, &str)> = vec![
        (
            Event::RunStarted(RunStarted {
                run_id,
                workflow: "blog-post".into(),
                workflow_version: 1,
                definition_hash: "demo".into(),
                inputs: json!({ "topic": "durable workflows" }),
                started_by: "demo".into(),
                idempotency_key: None,
                parent: None,
                fork_of: None,
                settings: None,
                started_at: None,
                schedule: None,
                trace_parent: None,
            }),
            "demo",
        ),
        (step_started("draft", json!({ "topic": "durable workflows" })), "engine"),
        (
            Event::AiAttemptStarted(AiAttemptStarted {
                step_id: "draft".into(),
                attempt: 1,
                provider: "scripted".into(),
                model: "demo".into(),
                messages: vec![AiMessage {
                    role: "user".into(),
                    content: "Draft a post about durable workflows".into(),
                }],
                params: cairn_events::AiParams { mode: Some("json_schema".into()), ..Default::default() },
            }),
            "engine",
        ),
        (
            Event::AiAttemptCompleted(AiAttemptCompleted {
                step_id: "draft".into(),
                attempt: 1,
                raw_output: content.to_string(),
                usage: TokenUsage { input_tokens: 12, output_tokens: 20 },
                cost: None,
                latency_ms: 3,
                finish_reason: Some("stop".into()),
            }),
            "engine",
        ),
        (step_completed("draft", content.clone()), "engine"),
        (
            Event::ApprovalRequested(ApprovalRequested {
                step_id: "review".into(),
                approvers: vec!["manager@example.com".into()],
                quorum: "any".into(),
                required_approvals: 1,
                summary: "Publish this post?".into(),
                content: content.clone(),
                content_hash: "demo".into(),
                deadline: None,
                token_hash: None,
                escalation: 0,
                fields: Vec::new(),
            }),
            "engine",
        ),
        (
            Event::ApprovalDecided(ApprovalDecided {
                step_id: "review".into(),
                decided_by: "manager@example.com".into(),
                decision: "approved".into(),
                comment: Some("Ship it".into()),
                content_hash: "demo".into(),
                values: None,
            }),
            "manager@example.com",
        ),
        (
            Event::BranchTaken(BranchTaken {
                step_id: "approved?".into(),
                expression: "steps.review.output.decision == 'approved'".into(),
                value: json!(true),
                target: "publish".into(),
            }),
            "engine",
        ),
        (step_started("publish", json!({ "url": "http://127.0.0.1/posts" })), "engine"),
        (step_completed("publish", json!({ "status": 201 })), "engine"),
        (Event::RunCompleted(RunCompleted { output: json!({ "published": true }) }), "engine"),
    ];
    let new: Vec<NewEvent> = events.iter().map(|(e, actor)| NewEvent::from_event(e, Metadata::by(*actor))).collect();
    let appended = store.append(&stream, ExpectedVersion::NoStream, new).await?;
    out!("appended {} events to {stream} in {}", appended.last_version, store.describe());
    for e in store.read_stream(&stream, 1).await? {
        let typed = Event::decode(&e)?;
        out!("  {:>3}  {:<20} {}…", e.stream_version, typed.event_type(), &e.hash[..16]);
    }
    let report = cairn_events::verify(&*store).await?;
    if report.is_intact() {
        out!(
            "verified: {} events in {} streams, every hash chain intact (run `cairn verify` to check again)",
            report.events,
            report.streams
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("BROKEN: {}", report.first_break().map(ToString::to_string).unwrap_or_default());
        Ok(codes::exit("chain-broken"))
    }
}

fn step_started(step: &str, input: serde_json::Value) -> Event {
    Event::StepStarted(StepStarted { step_id: step.into(), attempt: 1, input, scope: String::new(), at: None })
}

fn step_completed(step: &str, output: serde_json::Value) -> Event {
    Event::StepCompleted(StepCompleted { step_id: step.into(), attempt: 1, output, duration_ms: 1 })
}
