//! WORKERS: W10 (ten durable task steps a run) over HTTP with start-and-wait
//! on one PostgreSQL database, served by 1, 2 and 4 `cairn serve` processes
//! (each with its worker), 16 clients spread over them; throughput, median
//! latency and the servers' CPU per run, beside the floor of the same
//! workload in-process on the same database, measured in the same run.
//!
//! ```text
//! cargo run --release -p cairn-api --example workers_load [-- --quick] [-- --split]
//! ```
//!
//! `--split`: the servers run with `--no-projections` and one `cairn
//! projections run` keeps the read models, as docs/operations.md deploys
//! many processes.
#![allow(missing_docs, clippy::unwrap_used, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_events::Event;
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

mod server;

use server::{admin_key, cairn_binary, fresh_pg_db, serve_on, start_and_wait};

const W10: &str = include_str!("../../runtime/examples/w10.yaml");
const CLIENTS: usize = 16;

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// `runs` runs by `CLIENTS` closed-loop clients, client `i` on server `i % n`.
async fn load(urls: &[String], key: &str, runs: usize) -> (f64, Vec<Duration>) {
    let http = cairn_runtime::http_client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (http, url, key, next) = (http.clone(), urls[i % urls.len()].clone(), key.to_owned(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                lat.push(start_and_wait(&http, &url, &key, "w10").await);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    (runs as f64 / t.elapsed().as_secs_f64(), all)
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// The same workload in this process, on its own fresh schema.
async fn in_process(runs: usize) -> (f64, f64) {
    let db = fresh_pg_db("cairn_workers").await;
    let store = cairn_events::open(&db).await.unwrap();
    let engine = Arc::new(Engine::new(store, TaskRegistry::builtin()));
    let w = Arc::new(cairn_runtime::lang::parse(W10, "w10.yaml", &engine.task_names()).unwrap());
    let version = engine.publish(&w, "bench").await.unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = cpu_secs(std::process::id());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (engine, w, next) = (engine.clone(), w.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                let mut quiet = |_: &Event| {};
                let (_, s) = engine.run(&w, version, json!({}), "bench", &mut quiet).await.unwrap();
                assert_eq!(s.status, RunStatus::Completed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    (runs as f64 / secs, (cpu_secs(std::process::id()) - cpu) * 1000.0 / runs as f64)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let split = std::env::args().any(|a| a == "--split");
    let runs = if quick { 300 } else { 1_000 };
    let bin = cairn_binary();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "WORKERS: W10 over HTTP (start-and-wait), {CLIENTS} clients, {runs} runs, PostgreSQL{}",
        if split { ", servers --no-projections beside one `cairn projections run`" } else { "" }
    );
    let (floor, floor_cpu) = in_process(runs).await;
    println!("floor     in-process, one engine                 {floor:7.0} runs/s  CPU {floor_cpu:5.2} ms a run");
    for n in [1usize, 2, 4] {
        let db = fresh_pg_db("cairn_workers").await;
        let key = admin_key(&bin, &db);
        let args: &[&str] = if split { &["--no-projections"] } else { &[] };
        let servers: Vec<server::Server> =
            (0..n).map(|i| serve_on(&bin, &db, args, &dir.path().join(format!("s{n}-{i}.log")))).collect();
        // One process keeps the read models (its CPU is counted too).
        let projector = split.then(|| server::Server {
            child: std::process::Command::new(&bin)
                .args(["projections", "run"])
                .env("CAIRN_DATABASE_URL", &db)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            url: String::new(),
        });
        let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
        let http = cairn_runtime::http_client();
        server::publish(&http, &urls[0], &key, W10).await;
        load(&urls, &key, 50).await; // warm-up
        let all: Vec<u32> = servers.iter().chain(projector.iter()).map(|s| s.child.id()).collect();
        let cpu: f64 = all.iter().map(|p| cpu_secs(*p)).sum();
        let (rate, mut lat) = load(&urls, &key, runs).await;
        let used: f64 = all.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu;
        println!(
            "{n} worker{}  {:>42} {rate:7.0} runs/s  CPU {:5.2} ms a run  median {:6.2} ms  ({:.2}x floor)",
            if n == 1 { " " } else { "s" },
            format!("{n} cairn serve, clients spread over them"),
            used * 1000.0 / runs as f64,
            median_ms(&mut lat),
            rate / floor
        );
    }
}
