//! AI steps over HTTP against real servers started as separate processes:
//! fakellm (third-party, from PyPI: OpenAI and Anthropic APIs answering from
//! YAML rules) and tests/support/llm_server.py (for Retry-After and a server
//! that refuses `json_schema`). Nothing here is an in-process stub.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::Config;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use common::servers::{self, Server};
use serde_json::{Value, json};

fn engine(store: &Arc<dyn EventStore>, server: &Server, kind: &str, extra: &str) -> Engine {
    let base = if kind == "anthropic" { server.url() } else { format!("{}/v1", server.url()) };
    let yaml = format!(
        "price_table: test\nproviders:\n  local: {{ kind: {kind}, base_url: \"{base}\", timeout: 10s }}\nmodels:\n  writer: {{ provider: local, model: test-model, input_per_million: 2, output_per_million: 4{extra} }}\n"
    );
    let config = Config::parse(&yaml, "cairn.yaml").expect("config");
    Engine::new(store.clone(), TaskRegistry::builtin()).with_config(config)
}

const STEP: &str = r#"name: http_ai
steps:
  - id: draft
    ai:
      model: writer
      prompt: "Write a title about {{ inputs.topic }}"
      transport_retry: { max_attempts: 3, initial_interval: 20ms }
    output_contract:
      type: object
      required: [title]
      properties: { title: { type: string, minLength: 5 } }
"#;

fn of<'a, T>(evs: &'a [Event], f: impl Fn(&'a Event) -> Option<&'a T>) -> Vec<&'a T> {
    evs.iter().filter_map(f).collect()
}

async fn stats(server: &Server) -> Value {
    let body =
        reqwest::get(format!("{}/_fakellm/stats", server.url())).await.expect("stats").text().await.expect("body");
    serde_json::from_str(&body).expect("json")
}

fn matched(stats: &Value) -> Vec<String> {
    // `recent` is newest first.
    let mut r: Vec<String> = stats["recent"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["matched_rule"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    r.reverse();
    r
}

#[tokio::test]
async fn valid_first_time_records_usage_and_cost() {
    let Some(server) = servers::fakellm(
        "version: 1\nrules:\n  - name: ok\n    respond: { content: '{\"title\": \"Rust in production\"}' }\n",
    ) else {
        return;
    };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "openai", "");
    let (id, state) = common::run(&e, STEP, json!({"topic": "rust"})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(*state.outputs["draft"], json!({"title": "Rust in production"}));
    let evs = common::events(&store, id).await;
    let done = of(&evs, |e| match e {
        Event::AiAttemptCompleted(c) => Some(c),
        _ => None,
    });
    assert_eq!(done.len(), 1);
    assert!(done[0].usage.input_tokens > 0 && done[0].usage.output_tokens > 0);
    let cost = done[0].cost.as_ref().expect("priced");
    assert_eq!(cost.micros, 2 * done[0].usage.input_tokens + 4 * done[0].usage.output_tokens);
    assert_eq!(cost.price_table, "test");
    assert_eq!(done[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(matched(&stats(&server).await), ["ok"]);
}

#[tokio::test]
async fn invalid_then_valid_after_feedback_reaches_the_server() {
    // The valid reply comes only to a request that carries the feedback.
    let rules = r#"version: 1
rules:
  - name: after_feedback
    when: { messages_contain: "did not satisfy the output contract" }
    respond: { content: '{"title": "A better title"}' }
  - name: first_try
    respond: { content: 'Here you go: {"title": "Hi"}' }
"#;
    let Some(server) = servers::fakellm(rules) else { return };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "openai", "");
    let (id, state) = common::run(&e, STEP, json!({"topic": "feedback"})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(*state.outputs["draft"], json!({"title": "A better title"}));
    assert_eq!(matched(&stats(&server).await), ["first_try", "after_feedback"]);
    let evs = common::events(&store, id).await;
    let rejected = of(&evs, |e| match e {
        Event::AiOutputRejected(r) => Some(r),
        _ => None,
    });
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].errors[0].path, "/title");
}

#[tokio::test]
async fn invalid_every_time_fails_with_the_last_errors() {
    let Some(server) =
        servers::fakellm("version: 1\nrules:\n  - name: bad\n    respond: { content: 'I would rather not.' }\n")
    else {
        return;
    };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "openai", "");
    let (id, state) = common::run(&e, STEP, json!({"topic": "no"})).await;
    let (kind, message, _) = state.error.expect("failed");
    assert_eq!(kind, "ai.invalid_output");
    assert!(message.contains("3 replies") && message.contains("no JSON"), "{message}");
    assert_eq!(matched(&stats(&server).await).len(), 3);
    let evs = common::events(&store, id).await;
    let raw: Vec<&str> = of(&evs, |e| match e {
        Event::AiAttemptCompleted(c) => Some(c),
        _ => None,
    })
    .iter()
    .map(|c| c.raw_output.as_str())
    .collect();
    assert_eq!(raw, ["I would rather not."; 3]);
}

#[tokio::test]
async fn a_429_then_success_backs_off_on_a_durable_timer() {
    let rules = r#"version: 1
rules:
  - name: limited
    when: { turn: 1 }
    respond: { status: 429, error: "slow down" }
  - name: ok
    respond: { content: '{"title": "After the limit"}' }
"#;
    let Some(server) = servers::fakellm(rules) else { return };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "openai", "");
    let (id, state) = common::run(&e, STEP, json!({"topic": "limits"})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let evs = common::events(&store, id).await;
    let failed = of(&evs, |e| match e {
        Event::AiAttemptFailed(f) => Some(f),
        _ => None,
    });
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].error_kind.as_str(), failed[0].status, failed[0].retryable),
        ("ai.rate_limited", Some(429), true)
    );
    assert!(failed[0].message.contains("slow down"), "{}", failed[0].message);
    assert!(evs.iter().any(|e| matches!(e, Event::TimerStarted(t) if t.purpose == "retry")));
    assert!(!evs.iter().any(|e| matches!(e, Event::AiOutputRejected(_))), "a transport failure is not a rejection");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let Some(server) = servers::llm_server(
        json!([{"status": 429, "retry_after": 1}, {"content": "{\"title\": \"Waited long enough\"}"}]),
    ) else {
        return;
    };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "openai", "");
    let (id, state) = common::run(&e, STEP, json!({"topic": "wait"})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let evs = common::events(&store, id).await;
    let (i, timer) = evs
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e {
            Event::TimerStarted(t) if t.purpose == "retry" => Some((i, t)),
            _ => None,
        })
        .expect("backoff");
    let at = chrono::DateTime::parse_from_rfc3339(&recorded[i].recorded_at).expect("time");
    assert!((timer.due_at - at.with_timezone(&chrono::Utc)).num_milliseconds() >= 950, "the server asked for 1 s");
    assert_eq!(servers::requests(&server).len(), 2);
}

#[tokio::test]
async fn a_server_that_refuses_json_schema_gets_json_object() {
    let Some(server) =
        servers::llm_server(json!([{"refuse": "json_schema"}, {"content": "{\"title\": \"Fell back fine\"}"}]))
    else {
        return;
    };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "openai", ", structured_output: json_schema");
    let (id, state) = common::run(&e, STEP, json!({"topic": "modes"})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let sent: Vec<Value> = servers::requests(&server).iter().map(|r| r["response_format"]["type"].clone()).collect();
    assert_eq!(sent, [json!("json_schema"), json!("json_object")]);
    let first = &servers::requests(&server)[0];
    assert_eq!(first["response_format"]["json_schema"]["schema"]["required"], json!(["title"]));
    let evs = common::events(&store, id).await;
    let f = of(&evs, |e| match e {
        Event::AiAttemptFailed(f) => Some(f),
        _ => None,
    });
    assert_eq!((f[0].status, f[0].fallback_mode.as_deref()), (Some(500), Some("json_object")));
    assert!(f[0].message.contains("unsupported response_format"), "{}", f[0].message);
}

#[tokio::test]
async fn a_budget_stops_the_second_attempt_before_it_is_sent() {
    let Some(server) =
        servers::fakellm("version: 1\nrules:\n  - name: bad\n    respond: { content: '{\"title\": 1}' }\n")
    else {
        return;
    };
    let (_d, store) = common::sqlite().await;
    // A token costs one unit: the first attempt fits in 40, a second with
    // the feedback would not.
    let e = {
        let base = format!("{}/v1", server.url());
        let yaml = format!(
            "providers:\n  local: {{ kind: openai, base_url: \"{base}\" }}\nmodels:\n  writer: {{ provider: local, model: m, input_per_million: 1000000, output_per_million: 1000000 }}\n"
        );
        Engine::new(store.clone(), TaskRegistry::builtin()).with_config(Config::parse(&yaml, "c").expect("config"))
    };
    let src = STEP
        .replace("      transport_retry:", "      max_output_tokens: 10\n      transport_retry:")
        .replace("    output_contract:", "    budget: { max_cost: 40 }\n    output_contract:");
    let (id, state) = common::run(&e, &src, json!({"topic": "x"})).await;
    let (kind, message, _) = state.error.expect("failed");
    assert_eq!(kind, "budget.exceeded", "{message}");
    assert_eq!(matched(&stats(&server).await).len(), 1, "the second call was never made");
    let evs = common::events(&store, id).await;
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::AiAttemptStarted(_))).count(), 1);
}

#[tokio::test]
async fn anthropic_messages_with_a_forced_tool_call() {
    let rules = r#"version: 1
rules:
  - name: tool
    when: { tools_include: output }
    respond: { tool_calls: [{ name: output, arguments: { title: "Structured by tool" } }] }
  - name: plain
    respond: { content: "no tool was offered" }
"#;
    let Some(server) = servers::fakellm(rules) else { return };
    let (_d, store) = common::sqlite().await;
    let e = engine(&store, &server, "anthropic", "");
    let (id, state) = common::run(&e, STEP, json!({"topic": "claude"})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(*state.outputs["draft"], json!({"title": "Structured by tool"}));
    assert_eq!(matched(&stats(&server).await), ["tool"]);
    let evs = common::events(&store, id).await;
    let c = of(&evs, |e| match e {
        Event::AiAttemptCompleted(c) => Some(c),
        _ => None,
    });
    assert_eq!(c[0].finish_reason.as_deref(), Some("tool_use"));
}

#[tokio::test]
async fn an_unreachable_server_fails_the_step_after_its_tries() {
    let (_d, store) = common::sqlite().await;
    let port = servers::free_port();
    let yaml = format!(
        "providers:\n  local: {{ kind: openai, base_url: \"http://127.0.0.1:{port}/v1\" }}\nmodels:\n  writer: {{ provider: local, model: m }}\n"
    );
    let e = Engine::new(store.clone(), TaskRegistry::builtin()).with_config(Config::parse(&yaml, "c").expect("config"));
    let (_, state) = common::run(&e, STEP, json!({"topic": "x"})).await;
    let (kind, message, _) = state.error.expect("failed");
    assert_eq!(kind, "ai.connect");
    assert!(message.contains("after 3 tries") && message.contains(&port.to_string()), "{message}");
}
