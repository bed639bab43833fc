//! The console's pages under load, each beside a floor on the same `cairn
//! serve`, in the same run, one request at a time over loopback:
//!
//! 1. a run of about 1,000 events: `GET /ui/runs/{id}` (HTML: status,
//!    inputs, output, the graph and the timeline of every event with its
//!    payload) beside `GET /runs/{id}/events` (the same events as the API's
//!    JSON);
//! 2. the runs list with 100,000 runs in the database (recorded by the
//!    engine in this process, then read by the server's read models): the
//!    first page, filtered by workflow, by status and by day, and the 20th
//!    page (keyset paging), beside `GET /runs?limit=50` (the API's first page
//!    as JSON).
//!
//! ```text
//! cargo run --release -p cairn-api --example page_load [-- --runs 100000]
//! ```
#![allow(missing_docs, clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // benchmarks read the time directly (today's runs)

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_runtime::{Engine, TaskRegistry};
use futures_util::StreamExt;

#[path = "../../runtime/examples/bench/mod.rs"]
mod bench;
mod server;

/// A map over 500 items, one task step each: about 1,000 events.
const FLOW: &str = r#"name: wide
steps:
  - id: each
    map:
      items: "{{ range(500) | list }}"
      max_concurrency: 16
      steps:
        - { id: touch, task: echo, with: { n: "{{ item }}" } }
"#;

async fn time(c: &reqwest::Client, url: &str, cookie: Option<&str>, key: &str, n: usize) -> (f64, f64, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let mut r = c.get(url).bearer_auth(key);
        if let Some(ck) = cookie {
            r = r.header("cookie", ck);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200);
        bytes = r.bytes().await.unwrap().len();
        lat.push(t.elapsed());
    }
    (bench::pct(&mut lat, 0.5), bench::pct(&mut lat, 0.99), bytes)
}

/// Three workflows for the runs list: most runs complete `tiny`, one in
/// ten completes `other`, one in fifty fails (`broken`).
const TINY: &str = "name: tiny\nsteps:\n  - id: one\n    transform: { n: 1 }\n";
const OTHER: &str = "name: other\nsteps:\n  - id: one\n    transform: { n: 2 }\n";
const BROKEN: &str = "name: broken\nsteps:\n  - id: one\n    task: echo\n    with: \"{{ inputs.missing.deeper }}\"\n";

/// Records `n` runs on the SQLite file the server will open, with the
/// engine in this process (32 at a time); returns how long it took.
async fn record_runs(db: &std::path::Path, n: usize) -> Duration {
    let store = cairn_events::sqlite::SqliteStore::open(db, Default::default()).await.unwrap();
    let engine = Arc::new(Engine::new(store, TaskRegistry::builtin()));
    let mut flows = Vec::new();
    for yaml in [TINY, OTHER, BROKEN] {
        let w = Arc::new(cairn_runtime::lang::parse(yaml, "bench.yaml", &engine.task_names()).unwrap());
        let v = engine.publish(&w, "bench").await.unwrap();
        flows.push((w, v));
    }
    let flows = Arc::new(flows);
    let t = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (engine, flows) = (engine.clone(), flows.clone());
            async move {
                let (w, v) = &flows[if i % 50 == 7 {
                    2
                } else if i % 10 == 3 {
                    1
                } else {
                    0
                }];
                let mut quiet = |_: &cairn_events::Event| {};
                engine.run(w, *v, serde_json::json!({}), "bench", &mut quiet).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    t.elapsed()
}

/// Waits until the server's read models are at the log's head; the head
/// and the seconds it took.
async fn caught_up(c: &reqwest::Client, url: &str) -> (u64, f64) {
    let t = Instant::now();
    loop {
        let r = c.get(format!("{url}/readyz")).send().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if v["projection_lag"] == 0 {
            return (v["head_position"].as_u64().unwrap(), t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let runs: usize =
        std::env::args().skip_while(|a| a != "--runs").nth(1).map(|n| n.parse().expect("--runs N")).unwrap_or(100_000);
    let bin = server::cairn_binary();
    let dir = tempfile::tempdir_in(".").unwrap();
    let recorded = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(record_runs(&dir.path().join("http.db"), runs));
    println!("recorded {runs} runs with the engine in {:.1} s", recorded.as_secs_f64());
    let (srv, key) = server::serve(&bin, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        // First the read models catch up with the runs recorded before the
        // server started (so nothing else runs while pages are timed).
        let (head, secs) = caught_up(&c, &srv.url).await;
        println!("the read models caught up with {head} events in {secs:.1} s\n");
        server::publish(&c, &srv.url, &key, FLOW).await;
        let r = c
            .post(format!("{}/runs", srv.url))
            .bearer_auth(&key)
            .header("prefer", "wait=60")
            .header("content-type", "application/json")
            .body(r#"{"workflow":"wide"}"#)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["status"], "completed", "{v}");
        let run = v["run_id"].as_str().unwrap().to_owned();
        caught_up(&c, &srv.url).await;
        let events = v["stream_version"].as_u64().unwrap();
        let r = c
            .post(format!("{}/ui/sign-in", srv.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("key={key}&next=/ui/runs"))
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let page = format!("{}/ui/runs/{run}", srv.url);
        let json = format!("{}/runs/{run}/events", srv.url);
        // Warm both up, then alternate so drift hits both alike.
        time(&c, &page, Some(&cookie), &key, 10).await;
        time(&c, &json, None, &key, 10).await;
        let (mut p, mut f) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            p.push(time(&c, &page, Some(&cookie), &key, 20).await);
            f.push(time(&c, &json, None, &key, 20).await);
        }
        let med = |v: &[(f64, f64, usize)], i: usize| {
            let mut x: Vec<Duration> = v.iter().map(|t| Duration::from_secs_f64(if i == 0 { t.0 } else { t.1 } / 1000.0)).collect();
            bench::pct(&mut x, 0.5)
        };
        println!("a run of {events} events (a map over 500 items), one request at a time over loopback, SQLite");
        println!(
            "GET /runs/{{id}}/events (floor, JSON):   median {:>6.2} ms  p99 {:>6.2} ms  {:>8} bytes",
            med(&f, 0),
            med(&f, 1),
            f[0].2
        );
        println!(
            "GET /ui/runs/{{id}} (the console's page): median {:>6.2} ms  p99 {:>6.2} ms  {:>8} bytes  ({:.2}x floor; goal < 50 ms)",
            med(&p, 0),
            med(&p, 1),
            p[0].2,
            med(&p, 0) / med(&f, 0)
        );

        // (2) The runs list over the runs recorded before the server started.
        let today = chrono::Utc::now().format("%Y-%m-%d");
        // The 20th page: follow the "Older runs" link 19 times.
        let mut deep = format!("{}/ui/runs", srv.url);
        for _ in 0..19 {
            let html = c.get(&deep).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
            let at = html.find("rel=\"next\"").map(|i| &html[..i]).and_then(|h| h.rfind("href=\"")).unwrap();
            let href: String = html[at + 6..].chars().take_while(|c| *c != '"').collect();
            deep = format!("{}{}", srv.url, href.replace("&amp;", "&"));
        }
        let floor_url = format!("{}/runs?limit=50", srv.url);
        let pages = [
            ("first page", format!("{}/ui/runs", srv.url)),
            ("workflow=other", format!("{}/ui/runs?workflow=other", srv.url)),
            ("status=failed", format!("{}/ui/runs?status=failed", srv.url)),
            ("today", format!("{}/ui/runs?since={today}&until={today}", srv.url)),
            ("20th page", deep),
        ];
        time(&c, &floor_url, None, &key, 10).await;
        for (_, u) in &pages {
            time(&c, u, Some(&cookie), &key, 5).await;
        }
        let mut floor = Vec::new();
        let mut got: Vec<Vec<(f64, f64, usize)>> = vec![Vec::new(); pages.len()];
        for _ in 0..5 {
            floor.push(time(&c, &floor_url, None, &key, 20).await);
            for (i, (_, u)) in pages.iter().enumerate() {
                got[i].push(time(&c, u, Some(&cookie), &key, 20).await);
            }
        }
        println!("{runs} runs in the read model, 50 a page, one request at a time over loopback, SQLite");
        println!(
            "GET /runs?limit=50 (floor, JSON):        median {:>6.2} ms  p99 {:>6.2} ms  {:>6} bytes",
            med(&floor, 0),
            med(&floor, 1),
            floor[0].2
        );
        for (i, (name, _)) in pages.iter().enumerate() {
            println!(
                "GET /ui/runs {name:<16}         median {:>6.2} ms  p99 {:>6.2} ms  {:>6} bytes  ({:.2}x floor; goal < 50 ms)",
                med(&got[i], 0),
                med(&got[i], 1),
                got[i][0].2,
                med(&got[i], 0) / med(&floor, 0)
            );
        }
        drop(srv);
    });
}
