//! Task queues over HTTP against a real `cairn serve`, as an external
//! worker in any language drives them: long-poll, heartbeat, complete and
//! fail with the task token; a lapsed heartbeat offers the task again; a
//! late or repeated answer is never recorded twice; the `worker` role may
//! do this and nothing else. Then the Python client (pip-installed from
//! clients/python): the example worker runs the example workflow, and a
//! worker SIGKILLed mid-task is replaced. Each on SQLite and PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::Server;

const FLOW: &str = "name: q
inputs: { type: object, properties: { n: { type: integer } } }
steps:
  - id: work
    queue: jobs.a
    with: { n: '{{ inputs.n }}' }
    heartbeat_timeout: 2s
    retry: { max_attempts: 3, initial_interval: 50ms, non_retryable: [x.fatal] }
  - id: done
    transform: { got: '{{ steps.work.output }}' }
";

const SLOW: &str = "name: slow
steps:
  - id: work
    queue: jobs.slow
    timeout: 1s
";

struct Keys {
    ops: String,
    worker: String,
    viewer: String,
}

fn setup(url: &str) -> (Server, Keys) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let keys = Keys {
        ops: s.key("ops", "operator", "ops"),
        worker: s.key("w", "worker", "w"),
        viewer: s.key("v", "viewer", "v"),
    };
    (s, keys)
}

async fn start(s: &Server, k: &Keys, workflow: &str, inputs: Value) -> String {
    let r = s.post("/runs", &k.ops, &json!({ "workflow": workflow, "inputs": inputs })).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["run_id"].as_str().expect("run_id").to_owned()
}

async fn poll(s: &Server, key: &str, queue: &str, worker: &str, wait_ms: u64) -> Vec<Value> {
    let r = s.post("/tasks/poll", key, &json!({ "queues": [queue], "worker": worker, "wait_ms": wait_ms })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["tasks"].as_array().expect("tasks").clone()
}

async fn events(s: &Server, k: &Keys, run: &str) -> Vec<Value> {
    let r = s.get(&format!("/runs/{run}/events"), &k.ops).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["items"].as_array().expect("items").clone()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == t).map(|e| &e["payload"]).collect()
}

/// The happy path, every answer twice, and the refusals: a worker key may
/// poll and answer and nothing else; a viewer may not poll; a malformed or
/// foreign token is refused; completing twice records once.
async fn a_worker_polls_heartbeats_and_completes_once(url: &str) {
    let (s, k) = setup(url);
    assert_eq!(s.post_yaml("/workflows", &k.ops, FLOW).await.status, 201);
    // Roles: a worker key reads nothing, a viewer polls nothing.
    s.get("/runs", &k.worker).await.problem(403, "forbidden");
    let r = s.post("/tasks/poll", &k.viewer, &json!({ "queues": ["jobs.a"], "worker": "v", "wait_ms": 0 })).await;
    r.problem(403, "forbidden");
    let r = s.post("/tasks/poll", &k.worker, &json!({ "queues": ["no spaces"], "worker": "w1", "wait_ms": 0 })).await;
    assert_eq!(r.problem(422, "invalid-body")["errors"][0]["field"], "/queues/0", "{}", r.text);
    // Nothing offered: an empty list after the wait.
    let t = Instant::now();
    assert!(poll(&s, &k.worker, "jobs.a", "w1", 300).await.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(250), "the poll waited {:?}", t.elapsed());

    // A poll waiting when the run starts gets the task at once.
    let waiting = {
        let (url, key) = (s.url.clone(), k.worker.clone());
        tokio::spawn(async move {
            let r = server::client()
                .post(format!("{url}/tasks/poll"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(json!({ "queues": ["jobs.b", "jobs.a"], "worker": "w1", "wait_ms": 10000 }).to_string())
                .send()
                .await
                .expect("poll");
            let text = r.text().await.expect("body");
            (Instant::now(), serde_json::from_str::<Value>(&text).expect("json"))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = start(&s, &k, "q", json!({ "n": 7 })).await;
    let started = Instant::now();
    let (got_at, polled) = waiting.await.expect("poll task");
    assert!(got_at.duration_since(started) < Duration::from_secs(2), "the waiting poll was not woken");
    let task = &polled["tasks"][0];
    assert_eq!(task["run_id"], run.as_str());
    assert_eq!((task["step_id"].as_str(), task["attempt"].as_u64()), (Some("work"), Some(1)));
    assert_eq!(task["input"], json!({ "n": 7 }));
    assert_eq!((task["queue"].as_str(), task["heartbeat_timeout_ms"].as_u64()), (Some("jobs.a"), Some(2000)));
    assert_eq!(task["workflow"], "q");
    let token = task["token"].as_str().expect("token").to_owned();
    // Only one worker gets it.
    assert!(poll(&s, &k.worker, "jobs.a", "w2", 0).await.is_empty());
    // The queue's depth shows the claim.
    let q = s.get("/queues", &k.viewer).await;
    assert_eq!(q.json["queues"], json!([{ "queue": "jobs.a", "offered": 0, "claimed": 1 }]), "{}", q.text);

    let beat = s.post("/tasks/heartbeat", &k.worker, &json!({ "token": token })).await;
    assert_eq!(beat.status, 200, "{}", beat.text);
    assert!(beat.json["heartbeat_by"].as_str().is_some());
    // Malformed and foreign tokens.
    s.post("/tasks/complete", &k.worker, &json!({ "token": "nope", "output": 1 })).await.problem(400, "bad-task-token");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], "ab".repeat(32), parts[4]);
    s.post("/tasks/complete", &k.worker, &json!({ "token": forged, "output": 1 })).await.problem(404, "unknown-task");
    // A viewer may not answer, even with the token.
    s.post("/tasks/complete", &k.viewer, &json!({ "token": token, "output": 1 })).await.problem(403, "forbidden");

    let done = s.post("/tasks/complete", &k.worker, &json!({ "token": token, "output": { "sum": 8 } })).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!((done.json["recorded"].as_bool(), done.json["outcome"].as_str()), (Some(true), Some("completed")));
    let again = s.post("/tasks/complete", &k.worker, &json!({ "token": token, "output": { "sum": 9 } })).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["recorded"], false, "completing twice is idempotent");
    let fail = json!({ "token": token, "error": { "kind": "x.late", "message": "second thoughts" } });
    s.post("/tasks/fail", &k.worker, &fail).await.problem(409, "task-finished");

    let end = s.wait_status(&run, &k.ops, &["completed"]).await;
    assert_eq!(end["output"], json!({ "got": { "sum": 8 } }));
    let ev = events(&s, &k, &run).await;
    assert_eq!(of_type(&ev, "TaskOffered").len(), 1);
    let claims = of_type(&ev, "TaskClaimed");
    assert_eq!(claims.len(), 1);
    assert_eq!((claims[0]["worker"].as_str(), claims[0]["by"].as_str()), (Some("w1"), Some("w")));
    assert_eq!(of_type(&ev, "StepCompleted").len(), 2, "recorded once (and the transform)");
    // The timeline names the worker that took it.
    let h = s.get(&format!("/runs/{run}/history"), &k.ops).await;
    let claim = h.json["items"].as_array().expect("items").iter().find(|i| i["kind"] == "claim").cloned();
    assert_eq!(claim.map(|c| c["actor"].clone()), Some(json!("w1")), "{}", h.text);
    // Nothing is left in the queue.
    assert_eq!(s.get("/queues", &k.viewer).await.json["queues"], json!([]));
}

/// A worker that stops heartbeating: after the heartbeat timeout the
/// attempt fails with `heartbeat-timeout` (visible in history) and the
/// task is offered again as attempt 2; the silent worker's late answer and
/// heartbeat are refused and never recorded.
async fn a_lapsed_heartbeat_offers_the_task_again(url: &str) {
    let (s, k) = setup(url);
    assert_eq!(s.post_yaml("/workflows", &k.ops, FLOW).await.status, 201);
    let run = start(&s, &k, "q", json!({ "n": 1 })).await;
    let first = poll(&s, &k.worker, "jobs.a", "silent", 5000).await;
    let old = first[0]["token"].as_str().expect("token").to_owned();
    let t = Instant::now();
    // Another worker gets attempt 2 once the heartbeat timeout (2 s) lapses.
    let mut second = Vec::new();
    while second.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the task was not offered again:\n{}", s.logs());
        second = poll(&s, &k.worker, "jobs.a", "rescuer", 2000).await;
    }
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(1900), "offered again after {waited:?}, before the heartbeat timeout");
    assert_eq!(second[0]["attempt"], 2, "{:?}", second);
    s.post("/tasks/heartbeat", &k.worker, &json!({ "token": old })).await.problem(409, "task-expired");
    let late = s.post("/tasks/complete", &k.worker, &json!({ "token": old, "output": "late" })).await;
    assert!(late.problem(409, "task-expired")["detail"].as_str().is_some_and(|d| d.contains("heartbeat-timeout")));
    let token = second[0]["token"].as_str().expect("token");
    let r = s.post("/tasks/complete", &k.worker, &json!({ "token": token, "output": "rescued" })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let end = s.wait_status(&run, &k.ops, &["completed"]).await;
    assert_eq!(end["output"], json!({ "got": "rescued" }));
    let ev = events(&s, &k, &run).await;
    let failed = of_type(&ev, "StepFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0]["error_kind"].as_str(), failed[0]["attempt"].as_u64()), (Some("heartbeat-timeout"), Some(1)));
    assert!(failed[0]["message"].as_str().is_some_and(|m| m.contains("`silent`")), "{}", failed[0]);
    let workers: Vec<&str> = of_type(&ev, "TaskClaimed").iter().filter_map(|c| c["worker"].as_str()).collect();
    assert_eq!(workers, ["silent", "rescuer"]);
    assert!(!ev.iter().any(|e| e["payload"]["output"] == "late"), "the late answer was recorded");
    let h = s.get(&format!("/runs/{run}/history"), &k.ops).await;
    let attempts: Vec<(Value, Value)> = h.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["kind"] == "attempt" && i["step_id"] == "work")
        .map(|i| (i["status"].clone(), i["error_kind"].clone()))
        .collect();
    assert_eq!(attempts, [(json!("failed"), json!("heartbeat-timeout")), (json!("completed"), Value::Null)]);
}

/// A worker's failure goes through the step's retry policy: a retryable
/// kind is offered again, a `non_retryable` one fails the run with the
/// worker's kind and message; the engine's own kinds are refused.
async fn a_workers_failure_is_retried_by_the_policy(url: &str) {
    let (s, k) = setup(url);
    assert_eq!(s.post_yaml("/workflows", &k.ops, FLOW).await.status, 201);
    let run = start(&s, &k, "q", json!({ "n": 2 })).await;
    let t1 = poll(&s, &k.worker, "jobs.a", "w", 5000).await;
    let tok = t1[0]["token"].as_str().expect("token");
    let bad = json!({ "token": tok, "error": { "kind": "heartbeat-timeout", "message": "pretend" } });
    let r = s.post("/tasks/fail", &k.worker, &bad).await;
    assert_eq!(r.problem(422, "invalid-body")["errors"][0]["field"], "/error/kind");
    let f = json!({ "token": tok, "error": { "kind": "x.flaky", "message": "503 upstream" } });
    let r = s.post("/tasks/fail", &k.worker, &f).await;
    assert_eq!((r.status, r.json["outcome"].as_str()), (200, Some("failed")), "{}", r.text);
    assert_eq!(s.post("/tasks/fail", &k.worker, &f).await.json["recorded"], false, "failing twice records once");
    let t2 = poll(&s, &k.worker, "jobs.a", "w", 5000).await;
    assert_eq!(t2[0]["attempt"], 2);
    let f = json!({ "token": t2[0]["token"], "error": { "kind": "x.fatal", "message": "no such customer" } });
    assert_eq!(s.post("/tasks/fail", &k.worker, &f).await.status, 200);
    let end = s.wait_status(&run, &k.ops, &["failed"]).await;
    assert_eq!(end["error"]["kind"], "x.fatal", "{end}");
    assert!(end["error"]["message"].as_str().is_some_and(|m| m.contains("no such customer")), "{end}");
}

/// The step's `timeout` fails an attempt no worker finished (a durable
/// timer from the offer); a cancelled run refuses its worker's heartbeat
/// and answer, and its task leaves the queue.
async fn timeouts_and_cancellation_reach_the_worker(url: &str) {
    let (s, k) = setup(url);
    assert_eq!(s.post_yaml("/workflows", &k.ops, SLOW).await.status, 201);
    assert_eq!(s.post_yaml("/workflows", &k.ops, FLOW).await.status, 201);
    let run = start(&s, &k, "slow", json!({})).await;
    let end = s.wait_status(&run, &k.ops, &["failed"]).await;
    assert_eq!(end["error"]["kind"], "timeout", "{end}");
    assert!(end["error"]["message"].as_str().is_some_and(|m| m.contains("no worker claimed it")), "{end}");
    assert!(poll(&s, &k.worker, "jobs.slow", "w", 0).await.is_empty(), "a timed-out task stays offered");

    let run = start(&s, &k, "q", json!({ "n": 3 })).await;
    let t = poll(&s, &k.worker, "jobs.a", "w", 5000).await;
    let tok = t[0]["token"].as_str().expect("token");
    let r = s.post(&format!("/runs/{run}/cancel"), &k.ops, &json!({ "reason": "not needed" })).await;
    assert!(r.status < 300, "{}", r.text);
    s.wait_status(&run, &k.ops, &["cancelled"]).await;
    s.post("/tasks/heartbeat", &k.worker, &json!({ "token": tok })).await.problem(409, "task-cancelled");
    s.post("/tasks/complete", &k.worker, &json!({ "token": tok, "output": 1 })).await.problem(409, "task-cancelled");
    assert_eq!(s.get("/queues", &k.viewer).await.json["queues"], json!([]));
}

/// The queue survives a restart: a task offered (and one claimed) before
/// the server stopped is served by the next server on the same database;
/// the claimed one's worker goes on heartbeating and completes it.
async fn the_queue_survives_a_restart(url: &str) {
    let (mut s, k) = setup(url);
    // A heartbeat timeout the restart cannot outlast.
    let flow = FLOW.replace("name: q", "name: q30").replace("heartbeat_timeout: 2s", "heartbeat_timeout: 60s");
    assert_eq!(s.post_yaml("/workflows", &k.ops, &flow).await.status, 201);
    let claimed = start(&s, &k, "q30", json!({ "n": 10 })).await;
    let t = poll(&s, &k.worker, "jobs.a", "before", 5000).await;
    let token = t[0]["token"].as_str().expect("token").to_owned();
    let offered = start(&s, &k, "q30", json!({ "n": 20 })).await;
    assert!(s.terminate().is_some_and(|e| e.success()), "{}", s.logs());
    let s2 = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let q = s2.get("/queues", &k.viewer).await;
    assert_eq!(q.json["queues"], json!([{ "queue": "jobs.a", "offered": 1, "claimed": 1 }]), "{}", q.text);
    assert_eq!(s2.post("/tasks/heartbeat", &k.worker, &json!({ "token": token })).await.status, 200);
    let again = poll(&s2, &k.worker, "jobs.a", "after", 5000).await;
    assert_eq!(again[0]["run_id"], offered.as_str(), "{again:?}");
    for (tok, out) in [(token.as_str(), 1), (again[0]["token"].as_str().expect("token"), 2)] {
        let r = s2.post("/tasks/complete", &k.worker, &json!({ "token": tok, "output": out })).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(s2.wait_status(&claimed, &k.ops, &["completed"]).await["output"], json!({ "got": 1 }));
    assert_eq!(s2.wait_status(&offered, &k.ops, &["completed"]).await["output"], json!({ "got": 2 }));
}

on_both_mt!(
    the_queue_survives_a_restart,
    a_worker_polls_heartbeats_and_completes_once,
    a_lapsed_heartbeat_offers_the_task_again,
    a_workers_failure_is_retried_by_the_policy,
    timeouts_and_cancellation_reach_the_worker,
);

// ---- the Python client -------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A virtual environment with the client pip-installed from
/// clients/python (made once per test process); `None` (SKIPPED) without
/// Python outside CI.
fn python() -> Option<PathBuf> {
    static VENV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let venv = root().join("target/test-tools/python-client");
        let py = venv.join("bin/python");
        if !py.exists() {
            let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
            if !made.is_ok_and(|s| s.success()) {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "python3 -m venv is needed under CI");
                eprintln!("SKIPPED: no python3 with venv");
                return None;
            }
        }
        let out = Command::new(&py)
            .args(["-m", "pip", "install", "-q", "--force-reinstall", "--no-deps"])
            .arg(root().join("clients/python"))
            .output()
            .expect("pip");
        assert!(out.status.success(), "pip install ./clients/python: {}", String::from_utf8_lossy(&out.stderr));
        Some(py)
    })
    .clone()
}

fn spawn_py(py: &Path, script: &Path, env: &[(&str, &str)], log: &Path) -> Child {
    let mut c = Command::new(py);
    c.arg(script).current_dir(root()).stdout(Stdio::null()).stderr(std::fs::File::create(log).expect("log"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start the worker")
}

/// The example: the Python worker of examples/workers/triage.py does the
/// queue steps of examples/triage-ticket.yaml, started and awaited with
/// the Python API client.
async fn the_python_worker_runs_the_example(url: &str) {
    let Some(py) = python() else { return };
    let (s, k) = setup(url);
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("worker.log");
    let mut worker = spawn_py(
        &py,
        &root().join("examples/workers/triage.py"),
        &[("CAIRN_URL", &s.url), ("CAIRN_WORKER_KEY", &k.worker)],
        &log,
    );
    let script = dir.path().join("client.py");
    std::fs::write(
        &script,
        "import json, os, sys\nfrom cairn_client import Client, RunFailed\n\
         c = Client(os.environ['CAIRN_URL'], key=os.environ['CAIRN_KEY'])\n\
         c.publish(open('examples/triage-ticket.yaml').read())\n\
         print(json.dumps(c.run('triage-ticket', {'text': '  The  server is DOWN again  '}, timeout=30)))\n\
         try:\n    c.run('triage-ticket', {'text': '   '}, timeout=30)\n    sys.exit('an empty ticket completed')\n\
         except RunFailed as e:\n    print(json.dumps(e.run['error']))\n",
    )
    .expect("script");
    let out = Command::new(&py)
        .arg(&script)
        .current_dir(root())
        .env("CAIRN_URL", &s.url)
        .env("CAIRN_KEY", &k.ops)
        .output()
        .expect("client");
    let _ = worker.kill();
    let _ = worker.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}\nworker:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut lines = text.lines().map(|l| serde_json::from_str::<Value>(l).expect("json"));
    assert_eq!(lines.next(), Some(json!({ "ticket": "The server is DOWN again", "priority": "urgent", "words": 5 })));
    let err = lines.next().expect("the failure");
    assert_eq!(err["kind"], "ticket.empty", "{err}");
}

/// A worker SIGKILLed mid-task: its heartbeats stop, the attempt fails with
/// `heartbeat-timeout` after the step's heartbeat timeout, a second worker
/// gets attempt 2 and the run completes; both are in the history.
async fn a_worker_killed_mid_task_is_replaced(url: &str) {
    let Some(py) = python() else { return };
    let (s, k) = setup(url);
    let flow = "name: long\nsteps:\n  - id: crunch\n    queue: crunch\n    with: { size: 3 }\n    \
                heartbeat_timeout: 2s\n    retry: { max_attempts: 3, initial_interval: 100ms }\n";
    assert_eq!(s.post_yaml("/workflows", &k.ops, flow).await.status, 201);
    let dir = tempfile::tempdir().expect("dir");
    let marker = dir.path().join("started");
    let script = dir.path().join("crunch.py");
    std::fs::write(
        &script,
        "import os, sys, time\nfrom cairn_client import Worker\n\
         w = Worker(os.environ['CAIRN_URL'], key=os.environ['CAIRN_WORKER_KEY'], name=os.environ['NAME'])\n\
         @w.task('crunch')\ndef crunch(input, ctx):\n    open(os.environ['MARKER'], 'a').write(f'{ctx.attempt}\\n')\n    \
         time.sleep(float(os.environ['SLEEP']))\n    return {'crunched': input['size'] * 2, 'by': w.name}\n\
         w.run()\n",
    )
    .expect("script");
    let m = marker.display().to_string();
    let base = [("CAIRN_URL", s.url.as_str()), ("CAIRN_WORKER_KEY", k.worker.as_str()), ("MARKER", m.as_str())];
    let with = |name: &'static str, sleep: &'static str| {
        let mut e = base.to_vec();
        e.extend([("NAME", name), ("SLEEP", sleep)]);
        e
    };
    let mut doomed = spawn_py(&py, &script, &with("doomed", "60"), &dir.path().join("doomed.log"));
    let run = start(&s, &k, "long", json!({})).await;
    let t = Instant::now();
    while !std::fs::read_to_string(&marker).is_ok_and(|m| m.contains('1')) {
        assert!(t.elapsed() < Duration::from_secs(20), "the first worker never started the task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-task, with its heartbeats going: SIGKILL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.kill().expect("kill");
    let _ = doomed.wait();
    let killed = Instant::now();
    let mut rescuer = spawn_py(&py, &script, &with("rescuer", "0.1"), &dir.path().join("rescuer.log"));
    let end = s.wait_status(&run, &k.ops, &["completed", "failed"]).await;
    let _ = rescuer.kill();
    let _ = rescuer.wait();
    assert_eq!(
        end["status"],
        "completed",
        "{end}\n{}",
        std::fs::read_to_string(dir.path().join("rescuer.log")).unwrap_or_default()
    );
    assert_eq!(end["output"], json!({ "crunched": 6, "by": "rescuer" }));
    assert!(killed.elapsed() >= Duration::from_millis(500), "taken over before the heartbeat timeout");
    let h = s.get(&format!("/runs/{run}/history"), &k.ops).await;
    let items = h.json["items"].as_array().expect("items");
    let row = |kind: &str, attempt: u64| {
        items.iter().find(|i| i["kind"] == kind && i["attempt"] == attempt).cloned().unwrap_or(Value::Null)
    };
    assert_eq!(row("claim", 1)["actor"], "doomed", "{}", h.text);
    assert_eq!(row("attempt", 1)["error_kind"], "heartbeat-timeout", "{}", h.text);
    assert_eq!(row("claim", 2)["actor"], "rescuer", "{}", h.text);
    assert_eq!(row("attempt", 2)["status"], "completed", "{}", h.text);
}

on_both_mt!(the_python_worker_runs_the_example, a_worker_killed_mid_task_is_replaced);

/// The README's worker example works as written (its port and virtual
/// environment moved to a free port and a temporary directory): it
/// installs the client, starts the server and the worker, runs the
/// workflow to its output and stops what it started.
#[test]
fn the_readme_worker_example_works_as_written() {
    if Command::new("python3").args(["-m", "venv", "--help"]).output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "python3 is needed under CI");
        eprintln!("SKIPPED: no python3");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let venv = dir.path().join("venv").display().to_string();
    let (status, text) = common::run_readme_block("worker-example", dir.path(), &[(".venv", &venv)], 120);
    assert!(status.success(), "{text}");
    assert!(
        text.contains("{'priority': 'urgent', 'ticket': 'The printer is on FIRE', 'words': 5}"),
        "the run's output:\n{text}"
    );
}
