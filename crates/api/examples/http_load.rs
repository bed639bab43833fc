//! HTTP load: W10 runs (10 sequential task steps) started over HTTP
//! against a real `cairn serve` and waited for over its live-event stream,
//! next to W10 run in-process and the raw SQLite floor, all in the same run
//! on the same disk.
//!
//! ```text
//! cargo run --release -p cairn-api --example http_load [-- --quick] [--postgres]
//! ```
//!
//! Phases: (1) the floor (10 single-row commits per run) and in-process W10
//! (16 at a time); (2) over HTTP, runs one at a time (POST /runs, then
//! GET /runs/{id}/live until `end`): end-to-end latency; (3) 16 clients in a
//! closed loop doing the same: runs/s, POST latency p50/p99, end-to-end p99;
//! (3b) the same with start and wait (`POST /runs` with `Prefer: wait=30`,
//! one request a run), one at a time and 16 clients; (4) starts alone, 64
//! in flight: requests/s and p99.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../runtime/examples/bench/mod.rs"]
mod bench;
#[path = "server/in_process.rs"]
mod in_process;
mod server;

use server::{cairn_binary, serve};

const W10: &str = include_str!("../../runtime/examples/w10.yaml");

fn pct(v: &mut [Duration], p: f64) -> f64 {
    bench::pct(v, p)
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    async fn start(&self) -> (String, Duration) {
        let t = Instant::now();
        let r = self
            .http
            .post(format!("{}/runs", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(r#"{"workflow":"w10"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        (v["run_id"].as_str().unwrap().to_owned(), t.elapsed())
    }

    /// Starts a run and waits for its end in the same request
    /// (`Prefer: wait=30`); checks it completed.
    async fn start_and_wait(&self) -> Duration {
        server::start_and_wait(&self.http, &self.url, &self.key, "w10").await
    }

    /// Follows the run's live events until `end`; checks it completed.
    async fn wait(&self, run: &str) {
        let mut r = self.http.get(format!("{}/runs/{run}/live", self.url)).bearer_auth(&self.key).send().await.unwrap();
        let mut buf = String::new();
        while let Some(c) = r.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&c));
            if buf.contains("event: end") {
                break;
            }
        }
        assert!(buf.contains("event: RunCompleted"), "run {run} did not complete");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (one_by_one, closed, starts, conc, inflight) =
        if quick { (30, 200, 400, 16, 64) } else { (100, 1000, 2000, 16, 64) };
    let bin = cairn_binary();
    let dir = tempfile::tempdir_in(".").unwrap();
    let pg = std::env::args().any(|a| a == "--postgres");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (w10, floor, w10_cpu) = rt.block_on(in_process::w10(dir.path(), pg, closed, conc));
    let (server, key) = if pg {
        let db = rt.block_on(server::fresh_pg_db("cairn_http"));
        let key = server::admin_key(&bin, &db);
        let extra = std::env::var("CAIRN_BENCH_SERVE_ARGS").unwrap_or_default();
        let args: Vec<&str> = extra.split_whitespace().collect();
        (server::serve_on(&bin, &db, &args, &dir.path().join("serve.log")), key)
    } else {
        serve(&bin, dir.path())
    };
    drop(rt);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let c = Client { http: cairn_runtime::http_client(), url: server.url.clone(), key };
        server::publish(&c.http, &c.url, &c.key, W10).await;
        for _ in 0..10 {
            let (id, _) = c.start().await;
            c.wait(&id).await; // warm-up
        }
        // (2) one at a time, end to end.
        let mut e2e = Vec::new();
        for _ in 0..one_by_one {
            let t = Instant::now();
            let (id, _) = c.start().await;
            c.wait(&id).await;
            e2e.push(t.elapsed());
        }
        // (3) closed loop, `conc` clients.
        let t = Instant::now();
        let per = closed / conc;
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let (mut posts, mut ends) = (Vec::new(), Vec::new());
                for _ in 0..per {
                    let t = Instant::now();
                    let (id, post) = c.start().await;
                    c.wait(&id).await;
                    posts.push(post);
                    ends.push(t.elapsed());
                }
                (posts, ends)
            }));
        }
        let (mut posts, mut ends) = (Vec::new(), Vec::new());
        for t in tasks {
            let (p, e) = t.await.unwrap();
            posts.extend(p);
            ends.extend(e);
        }
        let closed_s = t.elapsed().as_secs_f64();
        let runs_per_s = (per * conc) as f64 / closed_s;
        // (3b) the same with start and wait (`Prefer: wait`): one request a run.
        let mut waited_one = Vec::new();
        for _ in 0..one_by_one {
            waited_one.push(c.start_and_wait().await);
        }
        let server_pid = server.child.id().to_string();
        let (server_cpu, client_cpu) = (bench::cpu_time(&server_pid), bench::cpu_time("self"));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut ends = Vec::new();
                for _ in 0..per {
                    ends.push(c.start_and_wait().await);
                }
                ends
            }));
        }
        let mut waited = Vec::new();
        for t in tasks {
            waited.extend(t.await.unwrap());
        }
        let waited_per_s = (per * conc) as f64 / t.elapsed().as_secs_f64();
        let per_run = |d: Duration| d.as_secs_f64() * 1000.0 / (per * conc) as f64;
        let server_cpu = per_run(bench::cpu_time(&server_pid) - server_cpu);
        let client_cpu = per_run(bench::cpu_time("self") - client_cpu);
        // (4) starts alone, `inflight` at a time.
        let sem = Arc::new(tokio::sync::Semaphore::new(inflight));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..starts {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let (_, d) = c.start().await;
                drop(permit);
                d
            }));
        }
        let mut start_lat = Vec::new();
        for t in tasks {
            start_lat.push(t.await.unwrap());
        }
        let starts_per_s = starts as f64 / t.elapsed().as_secs_f64();

        if pg {
            println!("W10 (10 sequential task steps per run), PostgreSQL synchronous_commit=on (127.0.0.1), in this run");
        } else {
            println!("W10 (10 sequential task steps per run), SQLite WAL synchronous=FULL, all on this disk, in this run");
        }
        println!(
            "floor (10 single-row commits per run, {conc} at a time):          {:>7.0} runs/s",
            floor.runs_per_s
        );
        println!(
            "in-process W10 ({conc} at a time, engine.run):                       {:>7.0} runs/s  ({:.2}x floor)",
            w10.runs_per_s,
            w10.runs_per_s / floor.runs_per_s
        );
        println!(
            "HTTP W10, one at a time (POST /runs + live events to `end`):   median {:>6.2} ms  p99 {:>6.2} ms  (in-process median {:.2} ms)",
            pct(&mut e2e, 0.5),
            pct(&mut e2e, 0.99),
            w10.median_ms
        );
        println!(
            "HTTP W10, {conc} clients closed loop:                              {:>7.0} runs/s  ({:.2}x in-process, {:.2}x floor)",
            runs_per_s,
            runs_per_s / w10.runs_per_s,
            runs_per_s / floor.runs_per_s
        );
        println!(
            "   POST /runs latency p50 {:>6.2} ms  p99 {:>6.2} ms; start-to-end p99 {:>6.2} ms",
            pct(&mut posts, 0.5),
            pct(&mut posts, 0.99),
            pct(&mut ends, 0.99)
        );
        println!(
            "HTTP W10 start-and-wait (Prefer: wait), one at a time:          median {:>6.2} ms  p99 {:>6.2} ms  ({:.2}x in-process median)",
            pct(&mut waited_one, 0.5),
            pct(&mut waited_one, 0.99),
            pct(&mut waited_one, 0.5) / w10.median_ms
        );
        println!(
            "HTTP W10 start-and-wait, {conc} clients closed loop:                {:>7.0} runs/s  ({:.2}x in-process)  median {:>6.2} ms  p99 {:>6.2} ms  ({:.2}x in-process median {:.2} ms at {conc})",
            waited_per_s,
            waited_per_s / w10.runs_per_s,
            pct(&mut waited, 0.5),
            pct(&mut waited, 0.99),
            pct(&mut waited, 0.5) / w10.loaded_median_ms,
            w10.loaded_median_ms
        );
        println!(
            "   CPU per run: server {server_cpu:.2} ms, load generator {client_cpu:.2} ms (in-process W10: {w10_cpu:.2} ms, engine and database together)"
        );
        println!(
            "HTTP starts alone, {inflight} in flight: {:>7.0} requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
            starts_per_s,
            pct(&mut start_lat, 0.5),
            pct(&mut start_lat, 0.99)
        );
        drop(server);
    });
}
