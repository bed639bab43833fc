//! Polyglot W10: ten sequential steps per run, each a `queue` task done by
//! the Python worker (clients/python, 16 tasks at a time), beside W10 with
//! built-in tasks (over the same server, and in-process) and the raw
//! database floor, all in one run on one disk; then where a queue step's
//! time goes, from the recorded events of the measured runs.
//!
//! ```text
//! cargo run --release -p cairn-api --example polyglot [-- --quick]
//! ```
//!
//! Needs `python3` (a virtual environment with the client is made in
//! target/test-tools/python-client when missing).
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

#[path = "../../runtime/examples/bench/mod.rs"]
mod bench;
#[path = "server/in_process.rs"]
mod in_process;
mod server;

const W10: &str = include_str!("../../runtime/examples/w10.yaml");

/// W10 with every step a queue task.
fn wq10() -> String {
    W10.replace("name: w10", "name: wq10").replace("task: increment", "queue: w10.increment")
}

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join("target/test-tools/python-client");
    let py = venv.join("bin/python");
    if !py.exists() {
        assert!(Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success(), "python3 -m venv");
    }
    let ok = Command::new(&py)
        .args(["-m", "pip", "install", "-q", "--force-reinstall", "--no-deps"])
        .arg(root.join("clients/python"))
        .status()
        .unwrap();
    assert!(ok.success(), "pip install ./clients/python");
    py
}

fn key(bin: &Path, db: &str, role: &str) -> String {
    let o = Command::new(bin)
        .args(["keys", "create", "--name", &format!("bench-{role}"), "--role", role])
        .env("CAIRN_DATABASE_URL", db)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// `clients` closed loops of start-and-wait: runs/s and the latencies.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    wf: &str,
    clients: usize,
    per: usize,
) -> (f64, Vec<Duration>) {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, key, wf) = (http.clone(), url.to_owned(), key.to_owned(), wf.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::new();
            for _ in 0..per {
                v.push(server::start_and_wait(&http, &url, &key, &wf).await);
            }
            v
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    ((clients * per) as f64 / t.elapsed().as_secs_f64(), all)
}

fn at(e: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(e["recorded_at"].as_str().unwrap()).unwrap().with_timezone(&Utc)
}

/// Mean milliseconds per step: offer → claim (the queue: a poll woken,
/// the claim recorded), claim → outcome (HTTP to the worker, Python, the
/// answer recorded), outcome → next offer (the engine deciding and
/// committing the next step).
async fn where_the_time_goes(http: &reqwest::Client, url: &str, key: &str) -> (f64, f64, f64, usize) {
    let r = http.get(format!("{url}/runs?workflow=wq10&limit=50")).bearer_auth(key).send().await.unwrap();
    let runs: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let (mut queue, mut work, mut engine, mut n, mut gaps) = (0.0, 0.0, 0.0, 0usize, 0usize);
    for run in runs["items"].as_array().unwrap() {
        let id = run["run_id"].as_str().unwrap();
        let r = http.get(format!("{url}/runs/{id}/events")).bearer_auth(key).send().await.unwrap();
        let ev: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let ev = ev["items"].as_array().unwrap();
        let find = |t: &str, from: usize| ev.iter().skip(from).position(|e| e["event_type"] == t).map(|p| p + from);
        let mut i = 0;
        let mut last_outcome: Option<DateTime<Utc>> = None;
        while let Some(o) = find("TaskOffered", i) {
            let (Some(c), Some(d)) = (find("TaskClaimed", o), find("StepCompleted", o)) else { break };
            if let Some(prev) = last_outcome {
                engine += (at(&ev[o]) - prev).num_microseconds().unwrap() as f64 / 1000.0;
                gaps += 1;
            }
            queue += (at(&ev[c]) - at(&ev[o])).num_microseconds().unwrap() as f64 / 1000.0;
            work += (at(&ev[d]) - at(&ev[c])).num_microseconds().unwrap() as f64 / 1000.0;
            last_outcome = Some(at(&ev[d]));
            n += 1;
            i = d;
        }
    }
    (queue / n as f64, work / n as f64, engine / gaps.max(1) as f64, n)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, clients) = if quick { (160, 16) } else { (800, 16) };
    let per = runs / clients;
    let bin = server::cairn_binary();
    let py = python();
    let dir = tempfile::tempdir_in(".").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (w10, floor, _) = rt.block_on(in_process::w10(dir.path(), false, runs, clients));
    drop(rt);
    let (server, admin) = server::serve(&bin, dir.path());
    let db = format!("sqlite://{}", dir.path().join("http.db").display());
    let worker_key = key(&bin, &db, "worker");

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let http = cairn_runtime::http_client();
        let url = server.url.clone();
        server::publish(&http, &url, &admin, W10).await;
        server::publish(&http, &url, &admin, &wq10()).await;
        // Built-in tasks over HTTP, the same way.
        for _ in 0..10 {
            server::start_and_wait(&http, &url, &admin, "w10").await;
        }
        let (builtin_rps, mut builtin) = closed_loop(&http, &url, &admin, "w10", clients, per).await;

        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let mut worker = Command::new(&py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/polyglot_worker.py"))
            .env("CAIRN_URL", &url)
            .env("CAIRN_WORKER_KEY", &worker_key)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..10 {
            server::start_and_wait(&http, &url, &admin, "wq10").await; // warm-up
        }
        let mut one = Vec::new();
        for _ in 0..30 {
            one.push(server::start_and_wait(&http, &url, &admin, "wq10").await);
        }
        let server_pid = server.child.id().to_string();
        let worker_pid = worker.id().to_string();
        let (s0, p0) = (bench::cpu_time(&server_pid), bench::cpu_time(&worker_pid));
        let (queue_rps, mut queued) = closed_loop(&http, &url, &admin, "wq10", clients, per).await;
        let per_run = |d: Duration| d.as_secs_f64() * 1000.0 / runs as f64;
        let (server_cpu, worker_cpu) =
            (per_run(bench::cpu_time(&server_pid) - s0), per_run(bench::cpu_time(&worker_pid) - p0));
        let (q, w, e, steps) = where_the_time_goes(&http, &url, &admin).await;
        let _ = worker.kill();
        let _ = worker.wait();

        println!("W10 (10 sequential steps per run), SQLite WAL synchronous=FULL, all on this disk, in this run");
        println!("floor (10 single-row commits per run, {clients} at a time):       {:>7.0} runs/s", floor.runs_per_s);
        println!(
            "in-process W10, built-in tasks ({clients} at a time):                {:>7.0} runs/s  ({:.2}x floor)",
            w10.runs_per_s,
            w10.runs_per_s / floor.runs_per_s
        );
        println!(
            "HTTP W10, built-in tasks, {clients} clients start-and-wait:          {:>7.0} runs/s  median {:>6.2} ms",
            builtin_rps,
            bench::pct(&mut builtin, 0.5)
        );
        println!(
            "HTTP W10, every step a Python queue task ({clients} at a time):     {:>7.0} runs/s  median {:>6.2} ms  ({:.2}x built-in over HTTP, {:.2}x floor)",
            queue_rps,
            bench::pct(&mut queued, 0.5),
            queue_rps / builtin_rps,
            queue_rps / floor.runs_per_s
        );
        println!(
            "   one at a time: median {:>6.2} ms a run ({:.2} ms a step)",
            bench::pct(&mut one, 0.5),
            bench::pct(&mut one, 0.5) / 10.0
        );
        println!("   CPU per run: server {server_cpu:.2} ms, Python worker {worker_cpu:.2} ms");
        println!(
            "   a queue step, mean of {steps} (recorded times): offer -> claim {q:.2} ms, claim -> outcome {w:.2} ms, outcome -> next offer {e:.2} ms"
        );
        drop(server);
    });
}
