//! Logs and traces. Logs go to stderr as text or JSON lines (`RUST_LOG`
//! filters them; default `info`). When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the spans of every run —
//! the run, each step attempt, each AI attempt — are sent as they end by
//! the standard OpenTelemetry exporter (`opentelemetry-otlp`: gRPC,
//! HTTP/protobuf or HTTP/JSON, headers, timeout and resource from the
//! `OTEL_*` variables). The span ids are the ones in the events' metadata
//! (`cairn_runtime::trace`), so a trace links to the audit log; a run
//! started with a caller's `traceparent` links to the caller's span.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::time::SystemTime;

use cairn_events::{Event, RecordedEvent};
use cairn_runtime::trace;
use opentelemetry::trace::{Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
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

/// A span that has started.
struct Open {
    name: String,
    parent: Option<String>,
    start_ns: u128,
    attributes: Vec<(String, Value)>,
    /// The caller's span a run was started from (`traceparent`).
    link: Option<(String, String)>,
}

/// Builds spans from the log as events arrive.
#[derive(Default)]
pub struct Spans {
    open: HashMap<(Uuid, String), Open>,
    /// Run → its current step attempt's span, per step.
    steps: HashMap<(Uuid, String), String>,
    /// Run → workflow name.
    workflows: HashMap<Uuid, String>,
    done: Vec<SpanData>,
}

fn nanos(recorded_at: &str) -> u128 {
    chrono::DateTime::parse_from_rfc3339(recorded_at)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map_or(0, |n| u128::try_from(n).unwrap_or(0))
}

fn attr(k: String, v: Value) -> KeyValue {
    match v {
        Value::Number(n) if n.is_i64() => KeyValue::new(k, n.as_i64().unwrap_or_default()),
        Value::Number(n) if n.is_u64() => {
            KeyValue::new(k, i64::try_from(n.as_u64().unwrap_or_default()).unwrap_or(i64::MAX))
        }
        Value::Number(n) => KeyValue::new(k, n.as_f64().unwrap_or_default()),
        Value::Bool(b) => KeyValue::new(k, b),
        Value::String(s) => KeyValue::new(k, s),
        other => KeyValue::new(k, other.to_string()),
    }
}

fn at(ns: u128) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// A W3C `traceparent`'s trace and span ids, if it is one.
pub fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    match parts.as_slice() {
        [version, trace, span, flags, ..]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some(((*trace).to_owned(), (*span).to_owned()))
        }
        _ => None,
    }
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
        self.open.insert((run, span), Open { name, parent, start_ns: at, attributes: attrs, link: None });
    }

    fn end(&mut self, run: Uuid, span: &str, end_ns: u128, error: Option<String>, mut attrs: Vec<(String, Value)>) {
        let Some(o) = self.open.remove(&(run, span.to_owned())) else { return };
        attrs.extend(o.attributes);
        attrs.push(("cairn.run_id".into(), Value::String(run.to_string())));
        let context = |trace: &str, span: &str, remote: bool| {
            SpanContext::new(
                TraceId::from_hex(trace).unwrap_or(TraceId::INVALID),
                SpanId::from_hex(span).unwrap_or(SpanId::INVALID),
                TraceFlags::SAMPLED,
                remote,
                TraceState::default(),
            )
        };
        let mut links = SpanLinks::default();
        links.links = o
            .link
            .iter()
            .map(|(t, s)| Link::new(context(t, s, true), vec![KeyValue::new("cairn.link", "caller")], 0))
            .collect();
        self.done.push(SpanData {
            span_context: context(&trace::trace_id(run), span, false),
            parent_span_id: o.parent.as_deref().and_then(|p| SpanId::from_hex(p).ok()).unwrap_or(SpanId::INVALID),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: o.name.into(),
            start_time: at(o.start_ns),
            end_time: at(end_ns.max(o.start_ns)),
            attributes: attrs.into_iter().map(|(k, v)| attr(k, v)).collect(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: match error {
                Some(m) => Status::error(m),
                None => Status::Ok,
            },
            instrumentation_scope: InstrumentationScope::builder("cairn")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        });
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
                self.start(run, run_span.clone(), format!("run {}", s.workflow), None, at, attrs);
                if let Some(o) = self.open.get_mut(&(run, run_span))
                    && let Some(tp) = s.trace_parent.as_deref()
                {
                    o.link = parse_traceparent(tp);
                }
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

    /// The spans that ended since the last call.
    pub fn take(&mut self) -> Vec<SpanData> {
        std::mem::take(&mut self.done)
    }
}

/// Whether traces are exported: an OTLP endpoint is configured
/// (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// and `OTEL_TRACES_EXPORTER` does not say `none`.
pub fn configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The OTLP span exporter the environment describes (the standard
/// `opentelemetry-otlp` one): `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
/// `_HEADERS`, `_TIMEOUT`, `_COMPRESSION`, and `_PROTOCOL` (`grpc`,
/// `http/protobuf`, the default as the specification has it, or
/// `http/json`); the resource from `OTEL_SERVICE_NAME` (default `cairn`)
/// and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn exporter() -> anyhow::Result<(opentelemetry_otlp::SpanExporter, String)> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _};
    use opentelemetry_sdk::trace::SpanExporter as _;
    let protocol = protocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
    let mut exporter = match protocol.as_str() {
        "grpc" => SpanExporter::builder().with_tonic().with_protocol(Protocol::Grpc).build(),
        "http/json" => SpanExporter::builder()
            .with_http()
            .with_http_client(cairn_runtime::http_client())
            .with_protocol(Protocol::HttpJson)
            .build(),
        "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_http_client(cairn_runtime::http_client())
            .with_protocol(Protocol::HttpBinary)
            .build(),
        other => anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other}: use grpc, http/protobuf or http/json"),
    }
    .map_err(|e| anyhow::anyhow!("cannot set up the OTLP exporter: {e}"))?;
    exporter.set_resource(&resource(false));
    Ok((exporter, protocol))
}

/// The OTLP protocol: the signal's own variable (`specific`), else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (the
/// specification's default).
pub fn protocol(specific: &str) -> String {
    [specific, "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .map_or_else(|| "http/protobuf".into(), |v| v.trim().to_owned())
}

/// This process as OpenTelemetry describes it: `OTEL_SERVICE_NAME` (default
/// `cairn`) and `OTEL_RESOURCE_ATTRIBUTES`, the version, and with
/// `instance`, a `service.instance.id` of this process unless the variables
/// give one (metrics need it: two processes' cumulative series must not
/// merge; a trace is one run's wherever it was sent from).
pub fn resource(instance: bool) -> opentelemetry_sdk::Resource {
    let attrs = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let named =
        std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty()) || attrs.contains("service.name=");
    let mut b = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if instance && !attrs.contains("service.instance.id=") {
        b = b.with_attribute(opentelemetry::KeyValue::new("service.instance.id", Uuid::now_v7().to_string()));
    }
    if named { b.build() } else { b.with_service_name("cairn").build() }
}

/// Starts the exporter when an endpoint is configured: every process that
/// drives runs folds the log into spans, and the one holding the
/// `telemetry` lease sends them, so a trace is sent once however many
/// processes there are (another takes over within the lease timeout).
///
/// Call it before the process drives anything: it follows the log from the
/// head it reads now, so the spans of a run driven at start-up are sent.
pub async fn spawn_exporter(
    engine: Arc<cairn_runtime::Engine>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !configured() {
        return Ok(None);
    }
    let (exporter, protocol) = exporter()?;
    let from = engine.store().head_position().await.map_err(|e| anyhow::anyhow!("cannot read the log: {e}"))? + 1;
    tracing::info!(protocol = %protocol, "exporting traces over OTLP");
    Ok(Some(tokio::spawn(export(engine, exporter, from, stop))))
}

/// The stream whose lease says which process sends the spans.
const TELEMETRY_LEASE: &str = "telemetry";

async fn export(
    engine: Arc<cairn_runtime::Engine>,
    exporter: opentelemetry_otlp::SpanExporter,
    from: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use opentelemetry_sdk::trace::SpanExporter as _;
    let store = engine.store().clone();
    let mut sub = cairn_events::subscribe(store, from);
    let mut spans = Spans::default();
    let mut claimed: Option<(bool, tokio::time::Instant)> = None;
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
        let done = spans.take();
        if done.is_empty() {
            continue;
        }
        // Only the holder sends (an engine that is no worker sends alone);
        // the claim is made again every few seconds.
        let sends = match claimed {
            Some((held, at)) if at.elapsed() < Duration::from_secs(3) => held,
            _ => {
                let held = match engine.claim_stream(TELEMETRY_LEASE).await {
                    Ok(held) => held.is_some() || engine.worker_id().is_none(),
                    Err(e) => {
                        tracing::warn!(error = %e, "trace exporter cannot claim its lease");
                        false
                    }
                };
                claimed = Some((held, tokio::time::Instant::now()));
                held
            }
        };
        if sends && let Err(e) = exporter.export(done).await {
            tracing::warn!(error = %e, "cannot send spans to the OTLP endpoint");
        }
    }
}

/// Sends the spans of the runs in `events` at once (`cairn run`, which
/// ends when its run does).
pub async fn export_runs(events: &[(RecordedEvent, Event)]) -> anyhow::Result<()> {
    use opentelemetry_sdk::trace::SpanExporter as _;
    if !configured() {
        return Ok(());
    }
    let (exporter, _) = exporter()?;
    let mut spans = Spans::default();
    for (r, e) in events {
        spans.add(r, e);
    }
    let done = spans.take();
    if !done.is_empty() {
        exporter.export(done).await.map_err(|e| anyhow::anyhow!("cannot send spans to the OTLP endpoint: {e}"))?;
    }
    Ok(())
}
