//! Logs and traces. Logs go to stderr as text or JSON lines (`RUST_LOG`
//! filters them; default `info`). When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the spans of every run —
//! the run, each step attempt, each AI attempt — are sent over OTLP/HTTP
//! (JSON encoding) as they end. The span ids are the ones in the events'
//! metadata (`cairn_runtime::trace`), so a trace links to the audit log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{Event, EventStore, RecordedEvent};
use cairn_runtime::trace;
use serde_json::{Value, json};
use uuid::Uuid;

/// Installs the log subscriber.
pub fn init(format: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let r = if format == "json" {
        b.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        b.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
    };
    r.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// The OTLP traces URL from the environment, if any.
pub fn endpoint() -> Option<String> {
    if let Ok(u) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        && !u.trim().is_empty()
    {
        return Some(u.trim().to_owned());
    }
    let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|u| !u.trim().is_empty())?;
    Some(format!("{}/v1/traces", base.trim().trim_end_matches('/')))
}

/// Starts the exporter when an endpoint is configured.
pub fn spawn_exporter(
    store: Arc<dyn EventStore>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let url = endpoint()?;
    tracing::info!(endpoint = %url, "exporting traces over OTLP/HTTP");
    Some(tokio::spawn(export(store, url, stop)))
}

/// A span that has started.
struct Open {
    name: String,
    parent: Option<String>,
    start_ns: u128,
    attributes: Vec<(String, Value)>,
}

/// Builds spans from the log as events arrive.
#[derive(Default)]
pub struct Spans {
    open: HashMap<(Uuid, String), Open>,
    /// Run → its current step attempt's span, per step.
    steps: HashMap<(Uuid, String), String>,
    /// Run → workflow name.
    workflows: HashMap<Uuid, String>,
    done: Vec<Value>,
}

fn nanos(recorded_at: &str) -> u128 {
    chrono::DateTime::parse_from_rfc3339(recorded_at)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map_or(0, |n| u128::try_from(n).unwrap_or(0))
}

fn attr(k: &str, v: Value) -> Value {
    let value = match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": k, "value": value})
}

impl Spans {
    fn start(
        &mut self,
        run: Uuid,
        span: String,
        name: String,
        parent: Option<String>,
        at: u128,
        attrs: Vec<(String, Value)>,
    ) {
        self.open.insert((run, span), Open { name, parent, start_ns: at, attributes: attrs });
    }

    fn end(&mut self, run: Uuid, span: &str, at: u128, error: Option<String>, mut attrs: Vec<(String, Value)>) {
        let Some(o) = self.open.remove(&(run, span.to_owned())) else { return };
        attrs.extend(o.attributes);
        attrs.push(("cairn.run_id".into(), Value::String(run.to_string())));
        let mut s = json!({
            "traceId": trace::trace_id(run),
            "spanId": span,
            "name": o.name,
            "kind": 1,
            "startTimeUnixNano": o.start_ns.to_string(),
            "endTimeUnixNano": at.max(o.start_ns).to_string(),
            "attributes": attrs.into_iter().map(|(k, v)| attr(&k, v)).collect::<Vec<_>>(),
            "status": match &error {
                Some(m) => json!({"code": 2, "message": m}),
                None => json!({"code": 1}),
            },
        });
        if let Some(p) = o.parent {
            s["parentSpanId"] = Value::String(p);
        }
        self.done.push(s);
    }

    /// Folds one event in.
    pub fn add(&mut self, r: &RecordedEvent, e: &Event) {
        let Some(run) = r.stream_id.strip_prefix("run-").and_then(|s| s.parse::<Uuid>().ok()) else { return };
        let at = nanos(&r.recorded_at);
        let run_span = trace::run_span(run);
        match e {
            Event::RunStarted(s) => {
                self.workflows.insert(run, s.workflow.clone());
                let attrs = vec![
                    ("cairn.workflow".into(), Value::String(s.workflow.clone())),
                    ("cairn.workflow_version".into(), json!(s.workflow_version)),
                    ("cairn.started_by".into(), Value::String(s.started_by.clone())),
                ];
                self.start(run, run_span, format!("run {}", s.workflow), None, at, attrs);
            }
            Event::StepStarted(s) => {
                let span = trace::step_span(run, &s.step_id, s.attempt);
                self.steps.insert((run, s.step_id.clone()), span.clone());
                let attrs = vec![
                    ("cairn.step_id".into(), Value::String(s.step_id.clone())),
                    ("cairn.attempt".into(), json!(s.attempt)),
                ];
                self.start(run, span, format!("step {}", s.step_id), Some(run_span), at, attrs);
            }
            Event::StepCompleted(s) => {
                self.end(run, &trace::step_span(run, &s.step_id, s.attempt), at, None, Vec::new());
            }
            Event::StepFailed(s) => {
                let attrs = vec![("cairn.error_kind".into(), Value::String(s.error_kind.clone()))];
                self.end(run, &trace::step_span(run, &s.step_id, s.attempt), at, Some(s.message.clone()), attrs);
            }
            Event::AiAttemptStarted(a) => {
                let parent = self.steps.get(&(run, a.step_id.clone())).cloned().unwrap_or(run_span);
                let attrs = vec![
                    ("gen_ai.system".into(), Value::String(a.provider.clone())),
                    ("gen_ai.request.model".into(), Value::String(a.model.clone())),
                    ("cairn.ai_attempt".into(), json!(a.attempt)),
                ];
                self.start(
                    run,
                    trace::ai_span(run, &a.step_id, a.attempt),
                    format!("ai {}", a.step_id),
                    Some(parent),
                    at,
                    attrs,
                );
            }
            Event::AiAttemptCompleted(a) => {
                let attrs = vec![
                    ("gen_ai.usage.input_tokens".into(), json!(a.usage.input_tokens)),
                    ("gen_ai.usage.output_tokens".into(), json!(a.usage.output_tokens)),
                ];
                self.end(run, &trace::ai_span(run, &a.step_id, a.attempt), at, None, attrs);
            }
            Event::AiAttemptFailed(a) => {
                let attrs = vec![("cairn.error_kind".into(), Value::String(a.error_kind.clone()))];
                self.end(run, &trace::ai_span(run, &a.step_id, a.attempt), at, Some(a.message.clone()), attrs);
            }
            Event::RunCompleted(_) => self.end_run(run, at, None),
            Event::RunFailed(f) => self.end_run(run, at, Some(f.message.clone())),
            Event::RunCancelled(_) => self.end_run(run, at, Some("cancelled".into())),
            _ => {}
        }
    }

    fn end_run(&mut self, run: Uuid, at: u128, error: Option<String>) {
        self.end(run, &trace::run_span(run), at, error, Vec::new());
        self.workflows.remove(&run);
        self.steps.retain(|(r, _), _| *r != run);
    }

    /// The spans that ended since the last call, as an OTLP request body.
    pub fn take(&mut self) -> Option<Value> {
        if self.done.is_empty() {
            return None;
        }
        let spans = std::mem::take(&mut self.done);
        Some(json!({
            "resourceSpans": [{
                "resource": { "attributes": [attr("service.name", json!("cairn")), attr("service.version", json!(env!("CARGO_PKG_VERSION")))] },
                "scopeSpans": [{ "scope": { "name": "cairn", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }],
            }]
        }))
    }
}

async fn export(store: Arc<dyn EventStore>, url: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    let http = cairn_runtime::http_client();
    let from = store.head_position().await.unwrap_or(0) + 1;
    let mut sub = cairn_events::subscribe(store, from);
    let mut spans = Spans::default();
    loop {
        let batch = tokio::select! {
            _ = stop.changed() => return,
            b = sub.next_batch() => b,
        };
        match batch {
            Ok(events) => {
                for r in &events {
                    if let Ok(e) = Event::decode(r) {
                        spans.add(r, &e);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "trace exporter cannot read the log");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if let Some(body) = spans.take() {
            let sent = http
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap_or_default())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = r.status().as_u16(), "the OTLP endpoint refused spans"),
                Err(e) => tracing::warn!(error = %e, "cannot send spans to the OTLP endpoint"),
            }
        }
    }
}
