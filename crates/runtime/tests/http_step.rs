//! The `http` step against a real HTTP server on loopback: templated
//! requests, captured responses, retries on 5xx/429 (honouring Retry-After)
//! and connection errors, no retry on other 4xx, timeouts, idempotency keys,
//! and secrets that reach the server but never the log.
#![allow(missing_docs)]

#[macro_use]
mod common;

use common::run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_events::{Event, EventStore};
use cairn_runtime::Secrets;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

/// A scripted HTTP/1.1 server: answers by path and counts calls per path.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split_whitespace();
                    let (method, target) =
                        (first.next().unwrap_or("").to_owned(), first.next().unwrap_or("").to_owned());
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                    let path = target.split('?').next().unwrap_or("").to_owned();
                    let calls = {
                        let mut l = log.lock().expect("lock");
                        l.push(Seen {
                            method,
                            target: target.clone(),
                            headers: headers.clone(),
                            body: body.clone(),
                            at: Instant::now(),
                        });
                        l.iter().filter(|s| s.target.split('?').next() == Some(path.as_str())).count()
                    };
                    let (status, extra, reply) = match (path.as_str(), calls) {
                        // Honours idempotency keys: a key seen before gets its first answer again.
                        ("/poll", _) => {
                            let l = log.lock().expect("lock");
                            let mut keys: Vec<&str> = Vec::new();
                            for c in l.iter().filter(|c| c.target == "/poll") {
                                let k = c.headers.get("idempotency-key").map_or("", String::as_str);
                                if !keys.contains(&k) {
                                    keys.push(k);
                                }
                            }
                            let mine = headers.get("idempotency-key").map_or("", String::as_str);
                            let n = keys.iter().position(|k| *k == mine).map_or(0, |i| i + 1);
                            (200, "", json!({ "n": n }).to_string())
                        }
                        ("/ok", _) => (201, "", json!({ "id": 7, "echo": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null), "auth": headers.get("authorization") }).to_string()),
                        ("/flaky", 1 | 2) => (503, "", "busy".to_owned()),
                        ("/mixed", 1 | 2) => (503, "", "busy".to_owned()),
                        ("/mixed", 3) => (500, "", "broken".to_owned()),
                        ("/mixed", _) => (200, "", json!({ "ok": true }).to_string()),
                        ("/always503", _) => (503, "", "busy".to_owned()),
                        ("/flaky", _) => (200, "", json!({ "ok": true }).to_string()),
                        ("/limited", 1) => (429, "Retry-After: 1\r\n", "slow down".to_owned()),
                        ("/limited", _) => (200, "", json!({ "ok": true }).to_string()),
                        ("/slow", _) => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            (200, "", "{}".to_owned())
                        }
                        _ => (404, "", "no such thing".to_owned()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{reply}",
                        reply.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Server { port, seen }
    }

    fn calls(&self, path: &str) -> Vec<Seen> {
        self.seen.lock().expect("lock").iter().filter(|s| s.target.split('?').next() == Some(path)).cloned().collect()
    }
}

async fn setup() -> (tempfile::TempDir, Arc<dyn EventStore>, Engine) {
    let (dir, store) = common::sqlite().await;
    let mut secrets = Secrets::default();
    secrets.insert("CMS_TOKEN", "s3cr3t-token-value");
    let engine = Engine::new(store.clone(), TaskRegistry::builtin()).with_secrets(secrets);
    (dir, store, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_post_reaches_the_server_and_its_response_is_the_output() {
    let server = Server::start().await;
    let (_dir, store, engine) = setup().await;
    let src = r#"
name: publish
inputs: { type: object, properties: { port: { type: integer }, title: { type: string } } }
steps:
  - id: publish
    http:
      method: post
      url: "http://127.0.0.1:{{ inputs.port }}/ok"
      headers: { Authorization: "Bearer {{ secrets.CMS_TOKEN }}", X-Title: "{{ inputs.title }}" }
      query: { draft: false, n: 3 }
      body: { title: "{{ inputs.title }}", tags: [a, b] }
"#;
    let (id, state) = run(&engine, src, json!({ "port": server.port, "title": "Hello {{ secrets.CMS_TOKEN }}" })).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let calls = server.calls("/ok");
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.method, "POST");
    assert_eq!(c.target, "/ok?draft=false&n=3");
    assert_eq!(c.headers.get("authorization").map(String::as_str), Some("Bearer s3cr3t-token-value"));
    assert_eq!(c.headers.get("idempotency-key"), Some(&format!("{id}:publish:1")));
    assert_eq!(c.headers.get("content-type").map(String::as_str), Some("application/json"));
    // Input data is never rendered as a template: the title stays literal.
    assert_eq!(
        serde_json::from_str::<Value>(&c.body).expect("json body"),
        json!({ "title": "Hello {{ secrets.CMS_TOKEN }}", "tags": ["a", "b"] })
    );
    let out = state.output.expect("output");
    assert_eq!(out["status"], 201);
    assert_eq!(out["body"]["id"], 7);
    assert_eq!(out["headers"]["content-type"], "application/json");
    // The server echoed the token back: the recorded output is scrubbed.
    assert_eq!(out["body"]["auth"], "Bearer [redacted:CMS_TOKEN]");
    // No event anywhere holds the secret; the recorded input holds a placeholder.
    let log = store.read_all(1, 10_000).await.expect("read");
    assert!(log.iter().all(|e| !e.payload.contains("s3cr3t-token-value")), "a secret reached the log");
    assert!(log.iter().any(|e| e.event_type == "StepStarted" && e.payload.contains("[redacted:CMS_TOKEN]")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_a_key_per_attempt() {
    let server = Server::start().await;
    let (_dir, _store, engine) = setup().await;
    let src = format!(
        "name: flaky\nsteps:\n  - id: call\n    http: {{ url: 'http://127.0.0.1:{}/flaky' }}\n    retry: {{ max_attempts: 4, initial_interval: 10ms }}\n",
        server.port
    );
    let (id, state) = run(&engine, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let keys: Vec<String> =
        server.calls("/flaky").iter().filter_map(|c| c.headers.get("idempotency-key").cloned()).collect();
    assert_eq!(keys, (1..=3).map(|a| format!("{id}:call:{a}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_waits_for_retry_after() {
    let server = Server::start().await;
    let (_dir, _store, engine) = setup().await;
    let src = format!(
        "name: limited\nsteps:\n  - id: call\n    http: {{ url: 'http://127.0.0.1:{}/limited' }}\n    retry: {{ max_attempts: 3, initial_interval: 10ms }}\n",
        server.port
    );
    let (_, state) = run(&engine, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let calls = server.calls("/limited");
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, before Retry-After: 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_client_errors_are_not_retried() {
    let server = Server::start().await;
    let (_dir, _store, engine) = setup().await;
    let src = format!(
        "name: missing\nsteps:\n  - id: call\n    http: {{ url: 'http://127.0.0.1:{}/missing' }}\n    retry: {{ max_attempts: 3, initial_interval: 10ms }}\n",
        server.port
    );
    let (_, state) = run(&engine, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Failed);
    let (kind, message, step) = state.error.expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("http.status.404", Some("call")));
    assert!(message.contains("404") && message.contains("no such thing"), "{message}");
    assert_eq!(server.calls("/missing").len(), 1);
    // Unless the workflow asks for it.
    let asked =
        src.replace("http: {", "http: { retry_on_status: [404],").replace("name: missing", "name: missing-retried");
    let (_, state) = run(&engine, &asked, json!({})).await;
    assert_eq!(state.status, RunStatus::Failed);
    assert_eq!(server.calls("/missing").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_and_timeouts_are_retryable_failures() {
    let server = Server::start().await;
    let (_dir, _store, engine) = setup().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let src = format!(
        "name: down\nsteps:\n  - id: call\n    http: {{ url: 'http://127.0.0.1:{closed}/x' }}\n    retry: {{ max_attempts: 2, initial_interval: 10ms }}\n"
    );
    let (id, state) = run(&engine, &src, json!({})).await;
    assert_eq!(state.error.as_ref().map(|e| e.0.as_str()), Some("http.connect"), "{:?}", state.error);
    let events: Vec<Event> = engine
        .store()
        .read_stream(&cairn_events::run_stream(id), 1)
        .await
        .expect("read")
        .iter()
        .map(|e| Event::decode(e).expect("decode"))
        .collect();
    assert_eq!(events.iter().filter(|e| matches!(e, Event::StepFailed(f) if f.retryable)).count(), 2);

    let src = format!(
        "name: slow\nsteps:\n  - id: call\n    http: {{ url: 'http://127.0.0.1:{}/slow', timeout: 200ms }}\n",
        server.port
    );
    let t = Instant::now();
    let (_, state) = run(&engine, &src, json!({})).await;
    assert_eq!(state.error.as_ref().map(|e| e.0.as_str()), Some("http.timeout"), "{:?}", state.error);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn unknown_secrets_are_reported_before_running() {
    let w = cairn_runtime::lang::parse(
        "name: s\nsteps:\n  - id: call\n    http: { url: 'http://127.0.0.1:1/x', headers: { Authorization: 'Bearer {{ secrets.CMS_TOKN }}' } }\n",
        "s.yaml",
        &["echo"],
    )
    .expect("parse");
    let d = cairn_runtime::lang::check_secrets(&w, &["CMS_TOKEN"], "s.yaml");
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].code, d[0].line), ("unknown-secret", 3));
    assert!(d[0].to_string().contains("CAIRN_SECRET_CMS_TOKN"), "{}", d[0]);
}

/// A polling loop: each visit of the `http` step sends its own idempotency
/// key, so a service that honours keys answers each visit anew (before,
/// every visit sent `RUN:check:1` and the loop never saw a change).
async fn a_polling_loop_sends_a_new_key_on_each_visit(store: Arc<dyn EventStore>) {
    let server = Server::start().await;
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let src = format!(
        "name: poll\nsteps:\n  - id: check\n    http: {{ url: 'http://127.0.0.1:{}/poll' }}\n    max_visits: 3\n  - id: done\n    branch: {{ if: 'steps.check.output.body.n >= 3', then: end, else: check }}\n",
        server.port
    );
    let (id, state) = run(&engine, &src, json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    let keys: Vec<String> =
        server.calls("/poll").iter().filter_map(|c| c.headers.get("idempotency-key").cloned()).collect();
    assert_eq!(keys, (1..=3).map(|a| format!("{id}:check:{a}")).collect::<Vec<_>>());
}

/// Retriers by error class: a 503 is retried by the first retrier (3
/// attempts of its own) and a 500 by the second (2); each counts the
/// failures it handled. Past its attempts, past `max_duration`, or with no
/// retrier for the error, the step fails, saying which.
async fn retriers_are_matched_by_the_errors_status(store: Arc<dyn EventStore>) {
    let server = Server::start().await;
    let engine = Engine::new(store.clone(), TaskRegistry::builtin());
    let flow = |path: &str, retry: &str| {
        format!(
            "name: r\nsteps:\n  - id: call\n    http: {{ url: 'http://127.0.0.1:{}{path}' }}\n    retry:\n{retry}",
            server.port
        )
    };
    let two = "      - { errors: [http.status.503], max_attempts: 3, initial_interval: 10ms, jitter: 0 }\n      - { errors: [http.status], max_attempts: 2, initial_interval: 10ms, jitter: 0 }\n";
    // 503, 503 (first retrier), 500 (second), then 200.
    let (id, state) = run(&engine, &flow("/mixed", two), json!({})).await;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.error);
    assert_eq!(server.calls("/mixed").len(), 4);
    let kinds: Vec<String> = store
        .read_stream(&cairn_events::run_stream(id), 1)
        .await
        .expect("read")
        .iter()
        .filter_map(|r| match cairn_events::Event::decode(r) {
            Ok(cairn_events::Event::StepFailed(f)) => Some(f.error_kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["http.status.503", "http.status.503", "http.status.500"]);
    // Always 503: the first retrier's three attempts, then the run fails.
    let (_, state) = run(&engine, &flow("/always503", two), json!({})).await;
    let (kind, message, _) = state.error.expect("failed");
    assert_eq!(kind, "http.status.503");
    assert!(message.contains("after 3 attempt(s)"), "{message}");
    assert_eq!(server.calls("/always503").len(), 3);
    // No retrier for a 404: one attempt, and it says so.
    let only503 = "      - { errors: [http.status.503], max_attempts: 5, initial_interval: 10ms }\n";
    let (_, state) = run(&engine, &flow("/missing", only503), json!({})).await;
    let (kind, message, _) = state.error.expect("failed");
    assert_eq!(kind, "http.status.404");
    assert!(message.contains("no retrier matches its error"), "{message}");
    assert_eq!(server.calls("/missing").len(), 1);
    // max_duration: waits of 40 ms, then 80 ms; only the first fits in 100 ms.
    let bounded = "      - { max_attempts: 10, initial_interval: 40ms, backoff_coefficient: 2, jitter: 0, max_duration: 100ms }\n";
    let before = server.calls("/always503").len();
    let (_, state) = run(&engine, &flow("/always503", bounded), json!({})).await;
    let (_, message, _) = state.error.expect("failed");
    assert!(message.contains("max_duration"), "{message}");
    assert_eq!(server.calls("/always503").len() - before, 2, "the first try and one retry");
}

both_backends!(a_polling_loop_sends_a_new_key_on_each_visit, retriers_are_matched_by_the_errors_status);
