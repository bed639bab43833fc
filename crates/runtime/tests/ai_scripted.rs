//! AI steps on the scripted provider (deterministic replies from the
//! workflow): judging against the contract, feedback retries, transport
//! backoff, structured-output fallback, budgets, prompt templates. Every
//! attempt is its own events; the tests read them back from the store.
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::Config;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

fn engine(store: &Arc<dyn EventStore>, config: &str) -> Engine {
    let config = Config::parse(config, "cairn.yaml").expect("config");
    Engine::new(store.clone(), TaskRegistry::builtin()).with_config(config)
}

const CONTRACT: &str = r#"
    output_contract:
      type: object
      required: [title, body]
      properties:
        title: { type: string, minLength: 5 }
        body: { type: string }
"#;

fn workflow(scripted: &str, extra: &str) -> String {
    format!(
        "name: draft\ninputs: {{ type: object, properties: {{ topic: {{ type: string, default: rust }} }} }}\nsteps:\n  - id: draft\n    ai:\n      model: writer\n      system: You write blog posts.\n      prompt: \"Write about {{{{ inputs.topic }}}}\"\n      scripted: {scripted}\n{extra}{CONTRACT}"
    )
}

async fn invalid_then_valid_feeds_the_errors_back(store: Arc<dyn EventStore>) {
    let e = engine(&store, "");
    let src = workflow(
        r#"['{"title": "Hi"}', 'Sure! ```json
{"title": "About {{ inputs.topic }}", "body": "text"}
```']"#,
        "",
    );
    let (id, state) = common::run(&e, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(*state.outputs["draft"], json!({"title": "About rust", "body": "text"}));
    let evs = common::events(&store, id).await;
    let starts: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::AiAttemptStarted(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0].provider, "scripted");
    // The second attempt carries the first reply and every error.
    let last = &starts[1].messages;
    assert_eq!(last[last.len() - 2].role, "assistant");
    assert_eq!(last[last.len() - 2].content, r#"{"title": "Hi"}"#);
    let fb = &last[last.len() - 1].content;
    assert!(fb.contains("/title") && fb.contains("body") && fb.contains("JSON Schema"), "{fb}");
    let rejected: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::AiOutputRejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1);
    let paths: Vec<&str> = rejected[0].errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"/title") && paths.contains(&"/"), "{paths:?}");
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::AiAttemptCompleted(_))).count(), 2);
}

async fn invalid_every_time_fails_with_the_last_errors(store: Arc<dyn EventStore>) {
    let e = engine(&store, "");
    let src = workflow(r#"['no json here', '{"title": 5, "body": "b"}']"#, "      attempts: 3\n");
    let (id, state) = common::run(&e, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Failed);
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("ai.invalid_output", Some("draft")));
    assert!(message.contains("3 replies") && message.contains("/title"), "{message}");
    let evs = common::events(&store, id).await;
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::AiOutputRejected(_))).count(), 3);
}

async fn transport_failures_back_off_apart_from_rejections(store: Arc<dyn EventStore>) {
    let e = engine(&store, "");
    let src = workflow(
        r#"[{ status: 429, retry_after: 0.05 }, { error: timeout }, '{"title": "Short"}', '{"title": "Long enough", "body": "x"}']"#,
        "      attempts: 2\n      transport_retry: { max_attempts: 3, initial_interval: 10ms }\n",
    );
    let (id, state) = common::run(&e, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let evs = common::events(&store, id).await;
    let failed: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::AiAttemptFailed(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!((failed[0].error_kind.as_str(), failed[0].retry_after_ms), ("ai.rate_limited", Some(50)));
    assert_eq!(failed[1].error_kind, "ai.timeout");
    // Each backoff is a durable timer; the 429's wait honours Retry-After.
    let timers: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::TimerStarted(t) if t.purpose == "retry" => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(timers.len(), 2);
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::AiAttemptStarted(_))).count(), 4);
}

async fn too_many_transport_failures_fail_the_step(store: Arc<dyn EventStore>) {
    let e = engine(&store, "");
    let src = workflow("[{ status: 503 }]", "      transport_retry: { max_attempts: 2, initial_interval: 5ms }\n");
    let (_, state) = common::run(&e, &src, json!({})).await;
    let (kind, message, _) = state.error.expect("error");
    assert_eq!(kind, "ai.status");
    assert!(message.contains("after 2 tries"), "{message}");
}

async fn a_refused_structured_output_mode_falls_back_and_is_recorded(store: Arc<dyn EventStore>) {
    let e = engine(&store, "");
    let src = workflow(
        r#"[{ reject_mode: json_schema }, '{"title": "Fallback works", "body": "b"}']"#,
        "      structured_output: json_schema\n",
    );
    let (id, state) = common::run(&e, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let evs = common::events(&store, id).await;
    let fail = evs
        .iter()
        .find_map(|e| match e {
            Event::AiAttemptFailed(f) => Some(f),
            _ => None,
        })
        .expect("a failed attempt");
    assert_eq!((fail.error_kind.as_str(), fail.fallback_mode.as_deref()), ("ai.mode_rejected", Some("json_object")));
    let modes: Vec<String> = evs
        .iter()
        .filter_map(|e| match e {
            Event::AiAttemptStarted(s) => Some(s.params.mode.clone().unwrap_or_default()),
            _ => None,
        })
        .collect();
    assert_eq!(modes, ["json_schema", "json_object"]);
    // The weaker mode puts the schema in the prompt instead.
    let second = evs
        .iter()
        .filter_map(|e| match e {
            Event::AiAttemptStarted(s) => Some(s),
            _ => None,
        })
        .nth(1)
        .expect("second");
    assert!(second.messages[0].content.contains("JSON Schema"), "{:?}", second.messages[0]);
    assert_eq!(second.params.fallback_to.as_deref(), Some("json_object"));
    // No backoff timer for a fallback.
    assert!(!evs.iter().any(|e| matches!(e, Event::TimerStarted(_))));
}

const PRICED: &str = "price_table: test-2026-12\nmodels:\n  writer: { provider: scripted, model: demo, input_per_million: 1000, output_per_million: 2000 }\n";

async fn costs_come_from_the_price_table(store: Arc<dyn EventStore>) {
    let e = engine(&store, PRICED);
    let src = workflow(
        r#"[{ content: '{"title": "Priced title", "body": "b"}', input_tokens: 100, output_tokens: 50 }]"#,
        "",
    );
    let (id, state) = common::run(&e, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let evs = common::events(&store, id).await;
    let done = evs
        .iter()
        .find_map(|e| match e {
            Event::AiAttemptCompleted(c) => Some(c),
            _ => None,
        })
        .expect("completed");
    let cost = done.cost.as_ref().expect("cost");
    // 100 × 1000 + 50 × 2000 micros.
    assert_eq!((cost.micros, cost.currency.as_str(), cost.price_table.as_str()), (200_000, "USD", "test-2026-12"));
    assert_eq!((done.usage.input_tokens, done.usage.output_tokens), (100, 50));
    assert_eq!(state.spent_micros, 200_000);
}

async fn a_step_budget_stops_the_attempt_that_would_exceed_it(store: Arc<dyn EventStore>) {
    let e = engine(&store, PRICED);
    // Each reply is rejected and costs 0.2; the budget allows two attempts.
    let src = workflow(
        r#"[{ content: '{"title": "x"}', input_tokens: 100, output_tokens: 50 }]"#,
        "      attempts: 5\n      max_output_tokens: 50\n    budget: { max_cost: 0.45 }\n",
    );
    let (id, state) = common::run(&e, &src, json!({})).await;
    let (kind, message, _) = state.error.expect("error");
    assert_eq!(kind, "budget.exceeded");
    assert!(message.contains("max_cost 0.45") && message.contains("step `draft`"), "{message}");
    let evs = common::events(&store, id).await;
    let made = evs.iter().filter(|e| matches!(e, Event::AiAttemptCompleted(_))).count();
    assert_eq!(made, 2, "the third attempt would pass 0.45");
}

async fn a_run_token_budget_counts_every_step(store: Arc<dyn EventStore>) {
    let e = engine(&store, PRICED);
    let src = r#"name: two
budget: { max_tokens: 200 }
steps:
  - id: one
    ai: { model: writer, prompt: "hi", scripted: [{ content: "a", input_tokens: 100, output_tokens: 50 }] }
  - id: two
    ai: { model: writer, prompt: "again", max_output_tokens: 100, scripted: [{ content: "b", input_tokens: 100, output_tokens: 50 }] }
"#;
    let (_, state) = common::run(&e, src, json!({})).await;
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("budget.exceeded", Some("two")));
    assert!(message.contains("the run has used 150 tokens"), "{message}");
}

async fn max_cost_without_a_price_is_refused_before_any_call(store: Arc<dyn EventStore>) {
    let e = engine(&store, "");
    let src = workflow("['{}']", "    budget: { max_cost: 1 }\n");
    let (id, state) = common::run(&e, &src, json!({})).await;
    let (kind, message, _) = state.error.expect("error");
    assert_eq!(kind, "budget.unpriced");
    assert!(message.contains("input_per_million"), "{message}");
    assert!(!common::events(&store, id).await.iter().any(|e| matches!(e, Event::AiAttemptStarted(_))));
}

both_backends!(
    invalid_then_valid_feeds_the_errors_back,
    invalid_every_time_fails_with_the_last_errors,
    transport_failures_back_off_apart_from_rejections,
    too_many_transport_failures_fail_the_step,
    a_refused_structured_output_mode_falls_back_and_is_recorded,
    costs_come_from_the_price_table,
    a_step_budget_stops_the_attempt_that_would_exceed_it,
    a_run_token_budget_counts_every_step,
    max_cost_without_a_price_is_refused_before_any_call,
);

#[tokio::test]
async fn prompt_templates_are_versioned_and_recorded() {
    let (_dir, store) = common::sqlite().await;
    let prompts = tempfile::tempdir().expect("tmp");
    std::fs::write(prompts.path().join("post@2.yaml"), "system: Be brief.\nprompt: \"Post on {{ vars.subject }}\"\n")
        .expect("write");
    let mut config = Config::default();
    config.load_prompts(prompts.path()).expect("load");
    let e = Engine::new(store.clone(), TaskRegistry::builtin()).with_config(config.clone());
    let src = "name: t\nsteps:\n  - id: p\n    ai: { model: scripted, template: post@2, vars: { subject: \"{{ inputs.s }}\" }, scripted: [ok] }\n";
    let w = cairn_runtime::lang::parse(src, "t.yaml", &e.task_names()).expect("parse");
    assert!(cairn_runtime::lang::check_models(&w, &config, "t.yaml").is_empty());
    let (id, state) = common::run(&e, src, json!({"s": "tides"})).await;
    assert_eq!(*state.outputs["p"], json!({"text": "ok"}));
    let evs = common::events(&store, id).await;
    let s = evs
        .iter()
        .find_map(|e| match e {
            Event::AiAttemptStarted(s) => Some(s),
            _ => None,
        })
        .expect("started");
    assert_eq!(s.messages[1].content, "Post on tides");
    let template = s.params.template.as_ref().expect("the template is recorded");
    assert_eq!(template["id"], "post@2");
    assert_eq!(template["sha256"].as_str().map(str::len), Some(64));
    // A missing template is a diagnostic before anything runs.
    let bad = "name: t\nsteps:\n  - id: p\n    ai: { model: scripted, template: post@3, scripted: [ok] }\n";
    let w = cairn_runtime::lang::parse(bad, "t.yaml", &e.task_names()).expect("parse");
    let d = cairn_runtime::lang::check_models(&w, &config, "t.yaml");
    assert_eq!(d[0].code, "unknown-prompt-template");
    assert!(d[0].help.as_deref().unwrap_or_default().contains("post@2"), "{:?}", d[0]);
}

#[tokio::test]
async fn scripted_replies_can_come_from_the_config_file() {
    let (_dir, store) = common::sqlite().await;
    let e = engine(
        &store,
        "providers:\n  demo:\n    kind: scripted\n    replies:\n      draft: ['{\"title\": \"From the config file\", \"body\": \"b\"}']\nmodels:\n  writer: { provider: demo, model: canned }\n",
    );
    let src = format!("name: c\nsteps:\n  - id: draft\n    ai: {{ model: writer, prompt: hi }}\n{CONTRACT}");
    let (id, state) = common::run(&e, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(state.outputs["draft"]["title"], "From the config file");
    let evs = common::events(&store, id).await;
    assert!(evs.iter().any(|e| matches!(e, Event::AiAttemptStarted(s) if s.provider == "demo" && s.model == "canned")));
}
