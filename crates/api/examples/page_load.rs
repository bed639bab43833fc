//! The console's page for a run of about 1,000 events: latency of
//! `GET /ui/runs/{id}` (HTML: status, inputs, output and the timeline of every
//! event with its payload) beside its floor, `GET /runs/{id}/events` (the
//! same events as the API's JSON), on the same `cairn serve`, in the same run,
//! one request at a time over loopback.
//!
//! ```text
//! cargo run --release -p cairn-api --example page_load
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

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

fn main() {
    let bin = server::cairn_binary();
    let dir = tempfile::tempdir_in(".").unwrap();
    let (srv, key) = server::serve(&bin, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
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
        drop(srv);
    });
}
