//! OpenTelemetry from a real `cairn serve` to real OTLP receivers on
//! sockets, over HTTP/JSON (an HTTP receiver) and gRPC (an HTTP/2 receiver
//! decoding the protobuf messages the collector would), on SQLite and
//! PostgreSQL: traces (one per run, a span per step attempt, `traceparent`
//! in and out) and metrics (the names and labels `/metrics` shows), with
//! the service name, headers and protocol the `OTEL_*` variables give.
#![allow(clippy::disallowed_methods)] // tests reach the database and the time directly

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ECHO;
use serde_json::{Value, json};
use server::Server;

/// What a receiver was sent: the path, the headers, the body as OTLP/JSON.
type Kept = Arc<Mutex<Vec<(String, axum::http::HeaderMap, Value)>>>;

/// The spans of `run` once one is named `name` (waiting up to 10 s).
async fn spans_of(got: &Kept, run: &str, name: &str) -> Vec<Value> {
    let trace = run.replace('-', "");
    for _ in 0..200 {
        let spans: Vec<Value> = got
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(_, _, b)| {
                b["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default()
            })
            .filter(|sp| sp["traceId"] == trace.as_str())
            .collect();
        if spans.iter().any(|sp| sp["name"] == name) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no span `{name}` of run {run}: {:?}", got.lock().expect("lock"));
}

/// A number as OTLP/JSON writes it (64-bit integers as strings).
fn num(v: &Value) -> f64 {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(f64::NAN)
}

/// The attribute `key` of a data point or resource, as a string.
fn attribute(v: &Value, key: &str) -> Option<String> {
    v["attributes"].as_array()?.iter().find(|a| a["key"] == key).and_then(|a| {
        let v = &a["value"];
        v["stringValue"].as_str().map(str::to_owned).or_else(|| v.get("intValue").map(|i| num(i).to_string()))
    })
}

/// Every export of metric `name`: (resource, metric, data point).
fn points(got: &Kept, name: &str) -> Vec<(Value, Value, Value)> {
    let mut out = Vec::new();
    for (path, _, body) in got.lock().expect("lock").iter() {
        if !path.ends_with("metrics") && !path.ends_with("MetricsService/Export") {
            continue;
        }
        for rm in body["resourceMetrics"].as_array().cloned().unwrap_or_default() {
            for sm in rm["scopeMetrics"].as_array().cloned().unwrap_or_default() {
                for m in sm["metrics"].as_array().cloned().unwrap_or_default() {
                    if m["name"] != name {
                        continue;
                    }
                    for kind in ["sum", "gauge", "histogram"] {
                        for p in m[kind]["dataPoints"].as_array().cloned().unwrap_or_default() {
                            out.push((rm["resource"].clone(), m.clone(), p));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The latest value of a number data point of `name` with `labels`
/// (cumulative counters only grow), waiting up to 10 s for `want`.
async fn latest(got: &Kept, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let mut last = f64::NAN;
    for _ in 0..200 {
        let value = |p: &Value| p.get("asInt").or_else(|| p.get("asDouble")).map_or(f64::NAN, num);
        last = points(got, name)
            .iter()
            .filter(|(_, _, p)| labels.iter().all(|(k, v)| attribute(p, k).as_deref() == Some(*v)))
            .map(|(_, _, p)| value(p))
            .fold(f64::NAN, f64::max);
        if last == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// The counters, a histogram and a gauge of the run of `echo` went out with
/// the values `/metrics` shows, their descriptions and units, from a
/// resource naming the service and this process.
async fn the_metrics_were_sent(s: &Server, got: &Kept, key: &str, service: &str) {
    let scrape = s.metrics(key).await;
    let started = scrape.get("cairn_runs_started_total", &[("workflow", "echo")]);
    assert!(started >= 1.0, "{}", scrape.1);
    let ended = &[("workflow", "echo"), ("status", "completed")];
    assert_eq!(latest(got, "cairn_runs_started_total", &[("workflow", "echo")], started).await, started);
    assert_eq!(latest(got, "cairn_runs_ended_total", ended, started).await, started);
    let (resource, metric, _) = points(got, "cairn_runs_started_total").pop().expect("a point");
    assert!(metric["description"].as_str().is_some_and(|d| d.starts_with("Runs started")), "{metric}");
    assert_eq!(attribute(&resource, "service.name").as_deref(), Some(service), "{resource}");
    assert!(attribute(&resource, "service.instance.id").is_some_and(|i| i.len() == 36), "{resource}");
    // A step's duration, as a histogram in seconds with the buckets of /metrics.
    let steps = points(got, "cairn_step_duration_seconds");
    let (_, metric, point) = steps
        .iter()
        .rev()
        .find(|(_, _, p)| {
            attribute(p, "workflow").as_deref() == Some("echo") && attribute(p, "step").as_deref() == Some("one")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no step duration: {steps:?}"));
    assert_eq!(metric["unit"], "s", "{metric}");
    assert!(num(&point["count"]) >= 1.0, "{point}");
    assert_eq!(point["explicitBounds"][0], json!(0.005), "{point}");
    // A gauge.
    let build = points(got, "cairn_build_info");
    assert!(build.iter().any(|(_, _, p)| attribute(p, "version").is_some() && num(&p["asDouble"]) == 1.0), "{build:?}");
}

/// Over HTTP/JSON: one trace per run with a span per step attempt, the
/// caller's `traceparent` linked and the step's sent on, the service name
/// and headers from `OTEL_*`, `cairn run` exporting its run; and the
/// metrics `/metrics` shows, under the same names and labels.
async fn traces_and_metrics_go_to_the_otlp_endpoint(db: &str) {
    // An OTLP/HTTP receiver on a real socket, keeping what it is sent and
    // the headers it came with; and an endpoint for an `http` step that
    // keeps the `traceparent` it is sent.
    let got: Kept = Arc::default();
    let (keep, keep_metrics) = (got.clone(), got.clone());
    let calls: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = calls.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let keep = keep.clone();
                async move {
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    keep.lock().expect("lock").push(("/v1/traces".into(), headers, json));
                    "{}"
                }
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let keep = keep_metrics.clone();
                async move {
                    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    keep.lock().expect("lock").push(("/v1/metrics".into(), headers, json));
                    "{}"
                }
            }),
        )
        .route(
            "/step",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let tp = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    seen.lock().expect("lock").push(tp);
                    axum::Json(json!({ "ok": true }))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoint = format!("http://{addr}");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "orders-engine"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret,x-tenant=acme"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    let mut env = otel.to_vec();
    env.push(("CAIRN_DATABASE_URL", db));
    let s = Server::start_with(&[], &env);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    let called = format!(
        "name: called\nsteps:\n  - id: notify\n    http: {{ method: POST, url: 'http://{addr}/step', body: {{ a: 1 }} }}\n"
    );
    assert_eq!(s.post_yaml("/workflows", &k, &called).await.status, 201);
    let id = s.post("/runs", &k, &json!({"workflow": "echo"})).await.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["completed"]).await;
    // A caller's traceparent: the run's trace links to the caller's span.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = json!({"workflow": "called"}).to_string().into_bytes();
    let r = s.send("POST", "/runs", Some(&k), Some(("application/json", body)), &[("traceparent", caller)]).await;
    let called_id = r.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&called_id, &k, &["completed"]).await;

    let spans = spans_of(&got, &id, "run echo").await;
    let run = spans.iter().find(|sp| sp["name"] == "run echo").expect("run span");
    let step = spans.iter().find(|sp| sp["name"] == "step one").unwrap_or_else(|| panic!("no step span: {spans:?}"));
    assert_eq!(step["parentSpanId"], run["spanId"]);
    assert!(run["parentSpanId"].is_null() || run["parentSpanId"] == "", "{run}");
    // The span ids are the ones in the events' metadata.
    let events = s.get(&format!("/runs/{id}/events"), &k).await.json;
    let started = events["items"].as_array().expect("items").iter().find(|e| e["event_type"] == "StepStarted").cloned();
    assert_eq!(started.map(|e| e["metadata"]["span_id"].clone()), Some(step["spanId"].clone()));
    assert_eq!(events["items"][0]["metadata"]["span_id"], run["spanId"]);
    let nanos = |v: &Value| v.as_str().and_then(|t| t.parse::<u128>().ok()).or_else(|| v.as_u64().map(u128::from));
    let t0 = nanos(&step["startTimeUnixNano"]).expect("start");
    let t1 = nanos(&step["endTimeUnixNano"]).expect("end");
    assert!(t1 >= t0 && t0 > 0);
    // The configured service name and headers.
    let (_, headers, body) =
        got.lock().expect("lock").iter().find(|(p, ..)| p == "/v1/traces").cloned().expect("traces");
    assert_eq!(headers.get("x-api-key").and_then(|v| v.to_str().ok()), Some("s3cret"));
    assert_eq!(headers.get("x-tenant").and_then(|v| v.to_str().ok()), Some("acme"));
    let attrs = body["resourceSpans"][0]["resource"]["attributes"].as_array().cloned().unwrap_or_default();
    let service = attrs.iter().find(|a| a["key"] == "service.name").map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(json!("orders-engine")), "{body}");
    // The http step was sent its attempt's span as traceparent; the run
    // links to the caller's span.
    let spans = spans_of(&got, &called_id, "run called").await;
    let notify = spans.iter().find(|sp| sp["name"] == "step notify").expect("step span");
    let sent = calls.lock().expect("lock").clone();
    let want = format!("00-{}-{}-01", called_id.replace('-', ""), notify["spanId"].as_str().expect("span id"));
    assert_eq!(sent, vec![Some(want)]);
    let run = spans.iter().find(|sp| sp["name"] == "run called").expect("run span");
    assert_eq!(run["links"][0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736", "{run}");
    assert_eq!(run["links"][0]["spanId"], "00f067aa0ba902b7", "{run}");

    // `cairn run` exports its run's spans too.
    let file = s.dir.path().join("local.yaml");
    std::fs::write(&file, "name: local\nsteps:\n  - id: only\n    task: echo\n    with: { n: 1 }\n").expect("write");
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["run", file.to_str().expect("path"), "--database"])
        .arg(format!("sqlite://{}", dir.path().join("c.db").display()))
        .envs(otel)
        .output()
        .expect("cairn run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let local = got
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|(_, _, b)| b["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default())
        .filter(|sp| sp["name"] == "run local")
        .count();
    assert_eq!(local, 1, "{text}");

    // The metrics, as /metrics counts them, with this process's identity.
    the_metrics_were_sent(&s, &got, &k, "orders-engine").await;
    let (_, headers, _) =
        got.lock().expect("lock").iter().find(|(p, ..)| p == "/v1/metrics").cloned().expect("metrics");
    assert_eq!(headers.get("x-api-key").and_then(|v| v.to_str().ok()), Some("s3cret"));
}

/// An OTLP/gRPC receiver on a real socket (HTTP/2, the collector's
/// services): each export's protobuf message decoded and kept as OTLP/JSON.
async fn grpc_receiver(got: Kept) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let got = got.clone();
                    tokio::spawn(async move {
                        let (parts, mut body) = req.into_parts();
                        let mut buf = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            buf.extend_from_slice(&chunk);
                        }
                        // A gRPC message: a compression flag, its length, the message.
                        let path = parts.uri.path().to_owned();
                        let json = decode(&path, buf.get(5..).unwrap_or_default());
                        got.lock().expect("lock").push((path, parts.headers, json));
                        let response = axum::http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let Ok(mut send) = respond.send_response(response, false) else { return };
                        // An empty response message, then status OK.
                        let _ = send.send_data(axum::body::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                        let mut trailers = axum::http::HeaderMap::new();
                        trailers.insert("grpc-status", axum::http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    addr
}

/// An OTLP export's protobuf message as OTLP/JSON.
fn decode(path: &str, message: &[u8]) -> Value {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let json = match path {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" | "/v1/traces" => {
            serde_json::to_value(ExportTraceServiceRequest::decode(message).expect("a trace export"))
        }
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" | "/v1/metrics" => {
            serde_json::to_value(ExportMetricsServiceRequest::decode(message).expect("a metrics export"))
        }
        other => panic!("an export to {other}"),
    };
    json.expect("as JSON")
}

/// Over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`): the run's trace and the
/// metrics reach a gRPC receiver, with the headers as gRPC metadata.
async fn traces_and_metrics_go_over_grpc(db: &str) {
    let got: Kept = Arc::default();
    let addr = grpc_receiver(got.clone()).await;
    let endpoint = format!("http://{addr}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing,deployment.environment=test"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("CAIRN_DATABASE_URL", db),
    ];
    let s = Server::start_with(&[], &env);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    let id = s.post("/runs", &k, &json!({"workflow": "echo"})).await.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["completed"]).await;
    let spans = spans_of(&got, &id, "run echo").await;
    let run = spans.iter().find(|sp| sp["name"] == "run echo").expect("run span");
    let step = spans.iter().find(|sp| sp["name"] == "step one").unwrap_or_else(|| panic!("no step span: {spans:?}"));
    assert_eq!(step["parentSpanId"], run["spanId"]);
    let (_, headers, body) = got
        .lock()
        .expect("lock")
        .iter()
        .find(|(p, ..)| p.ends_with("TraceService/Export"))
        .cloned()
        .expect("a trace export");
    assert_eq!(headers.get("x-api-key").and_then(|v| v.to_str().ok()), Some("s3cret"));
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/grpc"));
    let resource = &body["resourceSpans"][0]["resource"];
    assert_eq!(attribute(resource, "service.name").as_deref(), Some("billing"), "{resource}");
    assert_eq!(attribute(resource, "deployment.environment").as_deref(), Some("test"), "{resource}");
    the_metrics_were_sent(&s, &got, &k, "billing").await;
}

/// A `cairn worker` (no `--metrics-listen`) beside an API process that
/// drives nothing sends the spans and the metrics of the runs it drives,
/// over HTTP/protobuf (the default protocol), and its last metrics when it
/// retires.
async fn a_worker_sends_what_it_drives(db: &str) {
    let got: Kept = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().fallback(axum::routing::post(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let json = decode(uri.path(), &body);
                keep.lock().expect("lock").push((uri.path().to_owned(), headers, json));
                ""
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let api = Server::start_with(&["--no-worker"], &[("CAIRN_DATABASE_URL", db)]);
    let k = api.key("root", "admin", "root");
    // A timer, so the worker drives the run to its end.
    let nap = "name: nap\nsteps:\n  - id: pause\n    wait: { for: 1s }\n  - id: done\n    task: echo\n    with: { ok: true }\n";
    assert_eq!(api.post_yaml("/workflows", &k, nap).await.status, 201);
    let log = api.dir.path().join("worker.log");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("worker")
        .env("CAIRN_DATABASE_URL", db)
        .env("CAIRN_TOKEN_KEY", "test-token-key-0123456789abcdef0123456789")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "cairn-worker")
        // Longer than the test: what the worker sends at the end is its flush.
        .env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start cairn worker");
    // Its first line says it works (and its exporter follows the log).
    let mut line = String::new();
    let mut out = std::io::BufReader::new(worker.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    assert!(line.starts_with("worker "), "{line}");
    let id = api.post("/runs", &k, &json!({"workflow": "nap"})).await.json["run_id"].as_str().expect("id").to_owned();
    api.wait_status(&id, &k, &["completed"]).await;
    let spans = spans_of(&got, &id, "run nap").await;
    assert!(spans.iter().any(|sp| sp["name"] == "step done"), "{spans:?}");
    assert!(points(&got, "cairn_runs_ended_total").is_empty(), "no metrics before the interval or the end");
    // SIGTERM: the worker retires, sending its metrics on the way out.
    let pid = worker.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = worker.wait().expect("wait");
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{logs}");
    let ended = &[("workflow", "nap"), ("status", "completed")];
    assert_eq!(latest(&got, "cairn_runs_ended_total", ended, 1.0).await, 1.0, "{logs}");
    let (resource, ..) = points(&got, "cairn_runs_ended_total").pop().expect("a point");
    assert_eq!(attribute(&resource, "service.name").as_deref(), Some("cairn-worker"), "{resource}");
    let (_, headers, _) = got.lock().expect("lock")[0].clone();
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/x-protobuf"));
}

on_both_mt!(traces_and_metrics_go_to_the_otlp_endpoint, traces_and_metrics_go_over_grpc, a_worker_sends_what_it_drives);
