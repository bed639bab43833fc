//! The real `cairn` binary runs workflows: output and exit codes, validation
//! output, and crash safety under SIGKILL.
#![allow(missing_docs)]

mod common;

use common::{cairn, example, text};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_events::Event;

/// Runs `cairn continue` (off the async runtime) and expects success.
async fn continue_runs(db: &Path) {
    let db = db.to_path_buf();
    let cont = tokio::task::spawn_blocking(move || cairn(&db, &["continue"])).await.expect("join");
    assert!(cont.status.success(), "{}", text(&cont));
}

/// Every run in the log completed, each of `steps` exactly once; at least two
/// runs started (each `cairn run` first continues the run the previous kill
/// interrupted, so later kills land in continued runs as well as new ones).
async fn assert_every_run_completed_each_step_once(
    url: &str,
    steps: &[String],
) -> std::sync::Arc<dyn cairn_events::EventStore> {
    let store = cairn_events::open(url).await.expect("open");
    let all = store.read_all(1, 100_000).await.expect("read");
    let runs: Vec<String> = all.iter().filter(|e| e.event_type == "RunStarted").map(|e| e.stream_id.clone()).collect();
    assert!(runs.len() >= 2, "runs started before the kills: {}", runs.len());
    for run in &runs {
        let events: Vec<Event> =
            store.read_stream(run, 1).await.expect("read").iter().map(|e| Event::decode(e).expect("decode")).collect();
        assert!(matches!(events.last(), Some(Event::RunCompleted(_))), "{run} did not complete: {:?}", events.last());
        for step in steps {
            let n = events.iter().filter(|e| matches!(e, Event::StepCompleted(c) if &c.step_id == step)).count();
            assert_eq!(n, 1, "{run}: {step} completed {n} times");
        }
    }
    store
}

/// Starts `cairn run FILE`, waits until it has written `events` more events
/// to the log (so the kill lands mid-run, however slow the machine), then
/// SIGKILLs it.
async fn run_and_kill_mid_run(wf: &Path, url: &str, events: u64) {
    let store = cairn_events::open(url).await.expect("open");
    let before = store.head_position().await.expect("head");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["run", &wf.display().to_string()])
        .env("CAIRN_DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.head_position().await.expect("head") < before + events {
        assert!(std::time::Instant::now() < deadline, "the run made no progress in 60 s");
        if child.try_wait().expect("poll child").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL"); // SIGKILL on Unix
    child.wait().expect("reap");
}

#[test]
fn run_prints_the_output_and_exits_0() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let out = cairn(&db, &["run", &example("branch-on-input.yaml"), "--input", "total=250"]);
    assert!(out.status.success(), "{}", text(&out));
    let output: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is the output JSON");
    assert_eq!(output, serde_json::json!({ "customer": "ada", "charged": 300.0 }));
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("standard retry 2"), "{progress}");
    assert!(progress.contains("completed"), "{progress}");

    let runs = cairn(&db, &["runs"]);
    assert!(text(&runs).contains("order-routing") && text(&runs).contains("completed"), "{}", text(&runs));
    let id = text(&runs).lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("a run id").to_owned();
    let show = cairn(&db, &["show", &id]);
    assert!(text(&show).contains("standard attempt 1 failed [service.unavailable]"), "{}", text(&show));
}

#[test]
fn a_failed_run_exits_1_naming_the_step_and_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let wf = dir.path().join("fails.yaml");
    std::fs::write(&wf, "name: fails\nsteps:\n  - id: charge\n    task: fail\n    with: { kind: card.declined, message: insufficient funds, retryable: false }\n").expect("write");
    let out = cairn(&db, &["run", &wf.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("at step `charge`") && msg.contains("card.declined") && msg.contains("insufficient funds"),
        "{msg}"
    );
}

#[test]
fn an_invalid_workflow_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let wf = dir.path().join("bad.yaml");
    std::fs::write(&wf, "name: bad\nsteps:\n  - id: a\n    task: ecko\n    next: b\n").expect("write");
    let path = wf.display().to_string();
    let out = cairn(&db, &["run", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains(&format!("{path}:4:")) && text(&out).contains("nothing was run"), "{}", text(&out));
    assert!(!db.exists() || text(&cairn(&db, &["runs"])).lines().count() <= 1, "no run was started");

    let v = cairn(&db, &["validate", "--format", "json", &path, &example("branch-on-input.yaml")]);
    assert_eq!(v.status.code(), Some(1));
    let diags: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json diagnostics");
    let codes: Vec<&str> = diags.as_array().expect("array").iter().filter_map(|d| d["code"].as_str()).collect();
    assert_eq!(codes, vec!["unknown-task", "unknown-step"]);
    assert_eq!(diags[0]["line"], 4);
    assert!(diags[0]["help"].as_str().is_some_and(|h| h.contains("echo")));
    let ok = cairn(&db, &["validate", &example("branch-on-input.yaml")]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn schema_prints_the_language_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn")).arg("schema").output().expect("run");
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(schema["title"], "Cairn workflow");
    assert!(schema["properties"]["steps"].is_object());
}

/// SIGKILL `cairn run` at several points of a long run; `cairn continue`
/// finishes every run, and every step is recorded as completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_sigkill_at_any_point() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let wf = dir.path().join("long.yaml");
    let steps: String = (0..8)
        .map(|i| {
            format!(
                "  - id: s{i}\n    task: sleep\n    with: {{ ms: 120 }}\n  - id: t{i}\n    transform: {{ i: {i} }}\n"
            )
        })
        .collect();
    std::fs::write(&wf, format!("name: long\nsteps:\n{steps}")).expect("write");
    let url = format!("sqlite://{}", db.display());
    // Kill points: after the first event of a run, and at several depths.
    for events in [2u64, 9, 17, 26] {
        run_and_kill_mid_run(&wf, &url, events).await;
    }
    let cont = cairn(&db, &["continue"]);
    assert!(cont.status.success(), "{}", text(&cont));
    assert!(text(&cont).contains("continued"), "{}", text(&cont));

    let steps: Vec<String> = (0..8).flat_map(|i| [format!("s{i}"), format!("t{i}")]).collect();
    let store = assert_every_run_completed_each_step_once(&format!("sqlite://{}", db.display()), &steps).await;
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact(), "no event lost or changed");
    let again = cairn(&db, &["continue"]);
    assert!(text(&again).contains("0 run(s) continued"), "{}", text(&again));
}

/// A wait's timer survives SIGKILL: the restarted process waits out the
/// recorded due time instead of starting the wait over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_survives_sigkill_without_restarting() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let url = format!("sqlite://{}", db.display());
    let wf = dir.path().join("pause.yaml");
    std::fs::write(
        &wf,
        "name: pause\nsteps:\n  - id: pause\n    wait: { for: 1500ms }\n  - id: done\n    transform: { ok: true }\n",
    )
    .expect("write");
    // Killed once the timer is recorded (RunStarted, StepStarted, TimerStarted).
    run_and_kill_mid_run(&wf, &url, 3).await;
    continue_runs(&db).await;
    let store = cairn_events::open(&url).await.expect("open");
    let log = store.read_all(1, 1000).await.expect("read");
    let timers: Vec<Event> =
        log.iter().filter(|e| e.event_type.starts_with("Timer")).map(|e| Event::decode(e).expect("decode")).collect();
    let (Some(Event::TimerStarted(started)), Some(Event::TimerFired(_))) = (timers.first(), timers.get(1)) else {
        panic!("one TimerStarted then one TimerFired expected: {timers:?}");
    };
    assert_eq!(timers.len(), 2, "the timer was started once and fired once");
    let completed =
        log.iter().find(|e| e.event_type == "RunCompleted").and_then(|e| e.recorded_at()).expect("completed");
    let late = completed - started.due_at;
    assert!(late >= chrono::Duration::zero(), "woke {late} before the due time");
    assert!(late < chrono::Duration::milliseconds(1200), "woke {late} after the due time: the wait started over");
}

/// A loopback HTTP server that answers 200 after a short delay and records
/// the Idempotency-Key of every request.
async fn key_recording_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let keys: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let log = keys.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if let Some(k) = head.lines().find_map(|l| l.strip_prefix("idempotency-key:")) {
                    log.lock().expect("lock").push(k.trim().to_owned());
                }
                tokio::time::sleep(Duration::from_millis(80)).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}")
                    .await;
            });
        }
    });
    (port, keys)
}

/// SIGKILL a run of waits, HTTP calls and a parallel block (one branch a
/// call and a wait, the other a map of calls) at several points; `cairn
/// continue` completes it: every step completed exactly once, the chain
/// intact, and a call repeated after a crash carried the same idempotency
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_http_calls_and_parallel_blocks_survive_sigkill_with_stable_idempotency_keys() {
    let (port, keys) = key_recording_server().await;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let wf = dir.path().join("mixed.yaml");
    let call = |id: &str, path: &str, indent: &str| {
        format!(
            "{indent}- id: {id}\n{indent}  http: {{ method: POST, url: 'http://127.0.0.1:{port}/{path}', body: {{ at: '{path}' }} }}\n{indent}  retry: {{ max_attempts: 3, initial_interval: 20ms }}\n"
        )
    };
    let mut src = String::from("name: mixed\nsteps:\n");
    for i in 0..2 {
        src.push_str(&call(&format!("call{i}"), &format!("n/{i}"), "  "));
        src.push_str(&format!("  - id: pause{i}\n    wait: {{ for: 60ms }}\n"));
    }
    src.push_str("  - id: fan\n    parallel:\n      branches:\n        - name: left\n          steps:\n");
    src.push_str(&call("l_call", "left", "            "));
    src.push_str("            - id: l_pause\n              wait: { for: 150ms }\n");
    src.push_str("        - name: right\n          steps:\n            - id: each\n              map:\n                items: [1, 2, 3]\n                max_concurrency: 2\n                steps:\n");
    src.push_str(&call("r_call", "item/{{ item }}", "                  "));
    src.push_str(&call("call2", "n/2", "  "));
    std::fs::write(&wf, src).expect("write");
    let url = format!("sqlite://{}", db.display());
    for events in [2u64, 9, 12, 15, 18, 22] {
        run_and_kill_mid_run(&wf, &url, events).await;
    }
    continue_runs(&db).await;

    let steps: Vec<String> = [
        "call0",
        "pause0",
        "call1",
        "pause1",
        "fan",
        "l_call",
        "l_pause",
        "each",
        "each[0].r_call",
        "each[1].r_call",
        "each[2].r_call",
        "call2",
    ]
    .map(str::to_owned)
    .to_vec();
    let store = assert_every_run_completed_each_step_once(&url, &steps).await;
    let all = store.read_all(1, 100_000).await.expect("read");
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
    // Every request carried RUN:STEP:ATTEMPT of a recorded attempt; a call
    // made again after a crash carried the same key as before.
    let keys = keys.lock().expect("lock").clone();
    let started: std::collections::HashSet<String> = all
        .iter()
        .filter(|e| e.event_type == "StepStarted")
        .filter_map(|e| {
            let v = e.payload_value().ok()?;
            Some(format!("{}:{}:{}", e.stream_id.trim_start_matches("run-"), v["step_id"].as_str()?, v["attempt"]))
        })
        .collect();
    for k in &keys {
        assert!(started.contains(k), "request key {k} matches no recorded attempt");
    }
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert!(distinct.len() <= started.len());
    eprintln!("{} requests, {} distinct keys (repeats = calls re-sent after a crash)", keys.len(), distinct.len());
}

/// On a terminal a running step is one line rewritten with its outcome;
/// without one, plain lines (no escape codes).
#[test]
fn progress_rewrites_a_line_per_step_on_a_terminal_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let plain = cairn(&db, &["run", &example("branch-on-input.yaml"), "--input", "total=250"]);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!stderr.contains('\x1b'), "escape codes without a terminal: {stderr:?}");
    assert!(stderr.contains("  ✓ price"), "{stderr}");

    // `script` gives the binary a real pseudo-terminal.
    let cmd = format!(
        "CAIRN_DATABASE_URL=sqlite://{} {} run {} --input total=250",
        db.display(),
        env!("CARGO_BIN_EXE_cairn"),
        example("branch-on-input.yaml")
    );
    let Ok(tty) = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output() else {
        assert!(!cairn_events::testing::under_ci(), "`script` (util-linux) is needed under CI");
        return eprintln!("SKIPPED: no `script` to make a terminal");
    };
    let out = String::from_utf8_lossy(&tty.stdout);
    assert!(out.contains("\r\x1b[2K  \x1b[2m⋯ standard"), "the running step is shown: {out:?}");
    assert!(out.contains("\r\x1b[2K  \x1b[1m✓\x1b[0m standard"), "and rewritten with its outcome: {out:?}");
}

#[test]
fn invalid_inputs_are_refused_naming_each_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let out = cairn(&db, &["run", &example("branch-on-input.yaml"), "--input", "total=lots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("/total") && msg.contains("nothing was run"), "{msg}");
}

/// Every `cairn run` command in an example's header comment works as
/// written (from the repository root): exit 0, or 1 where the comment says
/// `exits 1`.
#[test]
fn every_example_runs_as_its_header_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut ran = 0;
    let mut files: Vec<_> = std::fs::read_dir(root.join("examples"))
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("read");
        for line in source.lines().take_while(|l| l.starts_with('#')) {
            let Some(cmd) = line.trim_start_matches('#').trim().strip_prefix("cairn run ") else { continue };
            let (cmd, comment) = cmd.split_once("  #").unwrap_or((cmd, ""));
            let dir = tempfile::tempdir().expect("tmp");
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("'{}' run {cmd}", env!("CARGO_BIN_EXE_cairn")))
                .current_dir(&root)
                .env("CAIRN_DATABASE_URL", format!("sqlite://{}", dir.path().join("c.db").display()))
                .output()
                .expect("sh");
            let expected = if comment.contains("exits 1") {
                1
            } else if comment.contains("exits 3") {
                3
            } else {
                0
            };
            assert_eq!(out.status.code(), Some(expected), "{}: `cairn run {cmd}`\n{}", file.display(), text(&out));
            ran += 1;
        }
    }
    assert!(ran >= 9, "only {ran} example commands found");
}

/// `cairn publish` validates and publishes; an unchanged file keeps its
/// version; a parent whose child is not published is refused before it
/// starts, naming the fix.
#[test]
fn publish_versions_workflows_and_children_must_be_published() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let child = example("send-invoice.yaml");
    let refused = cairn(&db, &["run", &example("onboard-customer.yaml")]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("never published") && text(&refused).contains("--with"), "{}", text(&refused));
    let first = cairn(&db, &["publish", &child]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("send-invoice v1 (published)"), "{}", text(&first));
    let again = cairn(&db, &["publish", &child]);
    assert!(text(&again).contains("send-invoice v1 (unchanged)"), "{}", text(&again));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nsteps: []\n").expect("write");
    let invalid = cairn(&db, &["publish", &bad.display().to_string()]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(text(&invalid).contains("no-steps"), "{}", text(&invalid));
    let ran = cairn(&db, &["run", &example("onboard-customer.yaml")]);
    assert!(ran.status.success(), "{}", text(&ran));
    assert!(text(&ran).contains("\"invoiced\": 29"), "{}", text(&ran));
}

/// Limits are configurable (only lower than the defaults, which are the
/// most the store takes and every reader accepts), recorded in the run's
/// settings when lowered, and read from there: replaying the run after the
/// configuration changed finds no divergence. A limit above its ceiling is
/// refused with what to do.
async fn limits_are_configurable_and_recorded(url: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let run_with = |config: &str, args: &[&str]| {
        let cfg = dir.path().join("cairn.yaml");
        std::fs::write(&cfg, config).expect("config");
        let mut all = vec!["--config", cfg.to_str().expect("path")];
        all.extend_from_slice(args);
        common::cairn_url(url, &all)
    };
    let wf = dir.path().join("wrap.yaml");
    std::fs::write(
        &wf,
        "name: wrap\ninputs: { type: object, properties: { x: {} } }\nsteps:\n  - id: wrap\n    transform: { a: { b: { c: \"{{ inputs.x }}\" } } }\n",
    )
    .expect("wf");
    let nested = |n: usize| (0..n).fold(serde_json::json!("leaf"), |v, _| serde_json::json!({ "k": v }));
    let input = |n: usize| {
        let p = dir.path().join(format!("in{n}.json"));
        std::fs::write(&p, serde_json::json!({ "x": nested(n) }).to_string()).expect("inputs");
        p.to_str().expect("path").to_owned()
    };
    let low = "limits: { max_depth: 8 }\n";
    let wfp = wf.to_str().expect("path");

    // Inputs past the lowered limit: refused, nothing written.
    let deep = input(9);
    let out = run_with(low, &["run", wfp, "--input-file", &deep]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("max_depth") && text(&out).contains("the limit is 8"), "{}", text(&out));

    // Within it, but the step's output nests 3 deeper: the step fails, kind `limit`.
    let six = input(6);
    let out = run_with(low, &["run", wfp, "--input-file", &six]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("limit"), "{}", text(&out));
    let runs = common::cairn_url(url, &["runs"]);
    let run = text(&runs)
        .lines()
        .find(|l| l.contains("failed"))
        .and_then(|l| l.split_whitespace().next())
        .expect("run")
        .to_owned();
    let events = text(&common::cairn_url(url, &["events", "--stream", &format!("run-{run}")]));
    assert!(events.contains(r#"\"limits\":{\"max_depth\":8"#), "recorded in RunStarted.settings: {events}");

    // The defaults again: the same input now completes, and the recorded
    // run replays as it was decided.
    let out = run_with("", &["run", wfp, "--input-file", &six]);
    assert!(out.status.success(), "{}", text(&out));
    let replay = run_with("", &["replay", &run]);
    assert!(replay.status.success(), "replayed with its recorded limits: {}", text(&replay));

    // Above a ceiling: refused, saying why.
    let out = run_with("limits: { max_depth: 100 }\n", &["run", wfp, "--input-file", &six]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("limits.max_depth 100 is above 64"), "{}", text(&out));
}

#[tokio::test]
async fn sqlite_limits_are_configurable_and_recorded() {
    let dir = tempfile::tempdir().expect("dir");
    limits_are_configurable_and_recorded(&format!("sqlite://{}", dir.path().join("l.db").display())).await;
}

#[tokio::test]
async fn postgres_limits_are_configurable_and_recorded() {
    let Some(url) = common::fresh_pg_url().await else { return };
    limits_are_configurable_and_recorded(&url).await;
}

/// Guards end to end through the binary: a false guard records
/// `StepSkipped` with its reason and the run goes on; a true one runs the
/// step; inside a map the guard is per item; the runs replay without
/// divergence.
async fn guards_skip_steps_and_say_why(url: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples/guarded-steps.yaml").display().to_string();
    let run = |total: &str| {
        let out = common::cairn_url(url, &["run", &file, "--input", &format!("total={total}")]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let small = run("40");
    assert!(small.contains("\"carrier\": \"standard\"") && small.contains("\"wrapped\": 1"), "{small}");
    let large = run("250");
    assert!(large.contains("\"carrier\": \"express\"") && large.contains("\"wrapped\": 1"), "{large}");
    let store = cairn_events::open(url).await.expect("open");
    let all = store.read_all(1, 100_000).await.expect("read");
    let skips: Vec<(String, String)> = all
        .iter()
        .filter(|r| r.event_type == "StepSkipped")
        .filter_map(|r| match Event::decode(r) {
            Ok(Event::StepSkipped(e)) => Some((e.step_id, e.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        skips,
        vec![
            ("express".to_owned(), "when: `inputs.total > 100` is false".to_owned()),
            ("wrap[1].bubble".to_owned(), "when: `item.fragile` is false".to_owned()),
            ("wrap[1].bubble".to_owned(), "when: `item.fragile` is false".to_owned()),
        ],
        "the small order skips express; both skip wrapping the book"
    );
    assert_eq!(all.iter().filter(|r| r.event_type == "StepStarted" && r.payload.contains("\"express\"")).count(), 1);
    let runs = text(&common::cairn_url(url, &["runs"]));
    for id in runs.lines().filter(|l| l.contains("guarded-shipping")).filter_map(|l| l.split_whitespace().next()) {
        let replay = common::cairn_url(url, &["replay", id]);
        assert!(replay.status.success(), "{}", text(&replay));
    }
}

mod guards {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::guards_skip_steps_and_say_why(&format!("sqlite://{}", dir.path().join("g.db").display())).await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::guards_skip_steps_and_say_why(&url).await;
    }
}

/// Errors routed end to end through the binary: a timeout is retried, then
/// caught and handled (the run completes with the error's kind as data); a
/// declined card is caught at once and its handler, a `fail` step, fails
/// the run with its own error and cause, exactly; the runs replay.
async fn caught_errors_go_to_their_handlers(url: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples/catch-and-fail.yaml").display().to_string();
    let run = |bank: &str| common::cairn_url(url, &["run", &file, "--input", &format!("bank={bank}")]);
    let ok = run("ok");
    assert!(ok.status.success() && text(&ok).contains("\"charged\": true"), "{}", text(&ok));
    let slow = run("slow");
    assert!(slow.status.success(), "{}", text(&slow));
    assert!(text(&slow).contains("\"because\": \"timeout\""), "{}", text(&slow));
    let declined = run("declines");
    assert_eq!(declined.status.code(), Some(1), "{}", text(&declined));
    let store = cairn_events::open(url).await.expect("open");
    let all: Vec<Event> =
        store.read_all(1, 100_000).await.expect("read").iter().map(|r| Event::decode(r).expect("decode")).collect();
    let caught: Vec<(&str, u32, &str, &str)> = all
        .iter()
        .filter_map(|e| match e {
            Event::ErrorCaught(c) => Some((c.step_id.as_str(), c.attempt, c.error_kind.as_str(), c.next.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        caught,
        vec![("charge", 2, "timeout", "queue"), ("charge", 1, "card.declined", "declined")],
        "retried, then caught; not retried, caught at once"
    );
    let failed: Vec<(&str, &str, Option<&str>)> = all
        .iter()
        .filter_map(|e| match e {
            Event::RunFailed(f) => Some((f.error_kind.as_str(), f.message.as_str(), f.failed_step.as_deref())),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![("payment.declined", "the card was declined: insufficient funds", Some("declined"))]);
    let runs = text(&common::cairn_url(url, &["runs"]));
    for id in runs.lines().filter(|l| l.contains("charge-card")).filter_map(|l| l.split_whitespace().next()) {
        let replay = common::cairn_url(url, &["replay", id]);
        assert!(replay.status.success(), "{}", text(&replay));
    }
}

mod caught {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::caught_errors_go_to_their_handlers(&format!("sqlite://{}", dir.path().join("c.db").display())).await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::caught_errors_go_to_their_handlers(&url).await;
    }
}

/// A race through the binary: the first branch to complete wins at once
/// (the other waits an hour), the loser's step is cancelled naming the
/// winner, and the run replays.
async fn a_race_takes_the_first_branch(url: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples/first-quote-wins.yaml").display().to_string();
    let out = common::cairn_url(url, &["run", &file]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"supplier\": \"globex\"") && text(&out).contains("\"price\": 135"), "{}", text(&out));
    let store = cairn_events::open(url).await.expect("open");
    let all: Vec<Event> =
        store.read_all(1, 100_000).await.expect("read").iter().map(|r| Event::decode(r).expect("decode")).collect();
    let skipped: Vec<(&str, &str)> = all
        .iter()
        .filter_map(|e| match e {
            Event::StepSkipped(x) => Some((x.step_id.as_str(), x.reason.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, vec![("acme_busy", "cancelled: `quotes` was won by branch `globex`")]);
    let runs = text(&common::cairn_url(url, &["runs"]));
    let id =
        runs.lines().find(|l| l.contains("first-quote-wins")).and_then(|l| l.split_whitespace().next()).expect("run");
    let replay = common::cairn_url(url, &["replay", id]);
    assert!(replay.status.success(), "{}", text(&replay));
}

mod race {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::a_race_takes_the_first_branch(&format!("sqlite://{}", dir.path().join("r.db").display())).await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::a_race_takes_the_first_branch(&url).await;
    }
}

/// A run's own facts through the binary: the output names the run's id,
/// workflow, version and start, a retry is attempt 2, and the run replays
/// (the step's UUID is derived, so the replay finds the same one).
async fn a_run_knows_itself(url: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples/run-context.yaml").display().to_string();
    let out = common::cairn_url(url, &["--as", "ada", "run", &file]);
    assert!(out.status.success(), "{}", text(&out));
    let runs = text(&common::cairn_url(url, &["runs"]));
    let id = runs.lines().find(|l| l.contains("run-context")).and_then(|l| l.split_whitespace().next()).expect("run");
    let t = text(&out);
    assert!(t.contains(&format!("\"run\": \"{id}")), "{t}");
    assert!(t.contains("\"workflow\": \"run-context v1\"") && t.contains("\"started_by\": \"ada\""), "{t}");
    assert!(t.contains("\"reserved_on_attempt\": 2") && t.contains("\"started_at\": \"20"), "{t}");
    // The time `tag` read is in its output and recorded with its start.
    let store = cairn_events::open(url).await.expect("open");
    let all: Vec<Event> =
        store.read_all(1, 100_000).await.expect("read").iter().map(|r| Event::decode(r).expect("decode")).collect();
    let read = all.iter().find_map(|e| match e {
        Event::StepStarted(x) if x.step_id == "tag" => x.at,
        _ => None,
    });
    let read = read.expect("`tag` records the time it read").to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert!(t.contains(&format!("\"tagged_at\": \"{read}\"")), "{read} in {t}");
    assert!(all.iter().any(|e| matches!(e, Event::StepSkipped(x) if x.step_id == "rush" && x.at.is_some())));
    let replay = common::cairn_url(url, &["replay", id]);
    assert!(replay.status.success(), "{}", text(&replay));
}

mod run_context {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::a_run_knows_itself(&format!("sqlite://{}", dir.path().join("x.db").display())).await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::a_run_knows_itself(&url).await;
    }
}

/// A DAG through the binary: a step starts once its last dependency has
/// completed and no earlier, independent steps overlap (the quick macOS
/// build completes while the Linux build runs), a guard's skip counts as
/// done, and the run replays.
async fn a_dag_starts_each_step_when_its_dependencies_complete(url: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples/release-dag.yaml").display().to_string();
    let out = common::cairn_url(url, &["run", &file, "--input", "version=2.0.1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("released v2.0.1 (12 pages of docs)"), "{}", text(&out));
    let store = cairn_events::open(url).await.expect("open");
    let all: Vec<Event> =
        store.read_all(1, 100_000).await.expect("read").iter().map(|r| Event::decode(r).expect("decode")).collect();
    let at = |kind: &str, step: &str| {
        all.iter()
            .position(|e| match (kind, e) {
                ("started", Event::StepStarted(x)) => x.step_id == step,
                ("completed", Event::StepCompleted(x)) => x.step_id == step,
                ("skipped", Event::StepSkipped(x)) => x.step_id == step,
                _ => false,
            })
            .unwrap_or_else(|| panic!("no {kind} {step} in {all:#?}"))
    };
    let publish = at("started", "publish");
    let deps = [at("completed", "test_linux"), at("skipped", "sign_mac"), at("completed", "docs")];
    assert!(deps.iter().all(|&d| d < publish), "publish started before a dependency ended: {deps:?} {publish}");
    assert_eq!(deps.iter().max(), Some(&at("completed", "test_linux")), "the slow branch ends last");
    assert!(
        all[..publish]
            .iter()
            .rev()
            .take_while(|e| !matches!(e, Event::StepCompleted(x) if x.step_id == "test_linux"))
            .count()
            <= 1,
        "publish starts as its last dependency completes: {all:#?}"
    );
    assert!(at("started", "test_linux") > at("completed", "build_linux"));
    assert!(at("completed", "build_mac") < at("completed", "build_linux"), "independent steps overlap");
    assert!(at("started", "build_mac") < at("completed", "build_linux"));
    let runs = text(&common::cairn_url(url, &["runs"]));
    let id = runs.lines().find(|l| l.contains("release-dag")).and_then(|l| l.split_whitespace().next()).expect("run");
    let replay = common::cairn_url(url, &["replay", id]);
    assert!(replay.status.success(), "{}", text(&replay));
}

mod dag {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::a_dag_starts_each_step_when_its_dependencies_complete(&format!(
            "sqlite://{}",
            dir.path().join("d.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::a_dag_starts_each_step_when_its_dependencies_complete(&url).await;
    }
}

/// An approval with fields through the binary: `cairn run` without a
/// terminal prints the `cairn approve … --field` command with the fields
/// it needs; a bad value is refused naming the field (nothing recorded);
/// the right ones complete the run with them; `--data` works the same.
async fn an_approval_with_fields_from_the_command_line(url: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples/refund-approval.yaml").display().to_string();
    let started = common::cairn_url(url, &["run", &file, "--input", "order=A-17"]);
    assert_eq!(started.status.code(), Some(3), "{}", text(&started));
    let t = text(&started);
    assert!(t.contains("fields to approve with: amount (number, required"), "{t}");
    let line = t.lines().find(|l| l.trim_start().starts_with("cairn approve")).expect("approve line");
    assert!(line.contains("--as lead --field amount=… --field reason=…"), "{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let (run, step) = (words[2], words[3]);
    let approve = |extra: &[&str]| {
        let mut a = vec!["approve", run, step, "--as", "lead"];
        a.extend_from_slice(extra);
        common::cairn_url(url, &a)
    };
    let refused = approve(&["--field", "amount=900", "--field", "reason=lost"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let r = text(&refused);
    assert!(r.contains("amount") && r.contains("500") && r.contains("reason"), "{r}");
    let typo = approve(&["--field", "amount=ten", "--field", "reason=late"]);
    assert!(text(&typo).contains("amount") && !typo.status.success(), "{}", text(&typo));
    let done = approve(&["--field", "amount=42.5", "--field", "reason=damaged", "--comment", "box crushed"]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let d = text(&done);
    assert!(
        d.contains("\"refunded\": 42.5")
            && d.contains("\"reason\": \"damaged\"")
            && d.contains("\"decided_by\": \"lead\""),
        "{d}"
    );

    // `--data` and a rejection that gives nothing.
    let started = common::cairn_url(url, &["run", &file, "--input", "order=B-2"]);
    let t = text(&started);
    let line = t.lines().find(|l| l.trim_start().starts_with("cairn approve")).expect("approve line");
    let run = line.split_whitespace().nth(2).expect("run").to_owned();
    let bad = common::cairn_url(url, &["approve", &run, "review", "--as", "lead", "--data", r#"{"amount": "x"}"#]);
    assert!(!bad.status.success() && text(&bad).contains("amount"), "{}", text(&bad));
    let rejected = common::cairn_url(url, &["reject", &run, "review", "--as", "lead", "--comment", "not ours"]);
    assert_eq!(rejected.status.code(), Some(0), "{}", text(&rejected));
    assert!(
        text(&rejected).contains("\"refunded\": 0") && text(&rejected).contains("\"declined\""),
        "{}",
        text(&rejected)
    );
}

mod approval_fields {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::an_approval_with_fields_from_the_command_line(&format!(
            "sqlite://{}",
            dir.path().join("a.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::an_approval_with_fields_from_the_command_line(&url).await;
    }
}
