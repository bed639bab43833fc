//! FAILOVER: how long a SIGKILLed worker's runs wait before another worker
//! drives them, with two `cairn serve` processes on one PostgreSQL database
//! (SQLite with `--sqlite`), beside a floor measured in the same run.
//!
//! ```text
//! cargo run --release -p cairn-api --example failover [-- --kills 20 --lease-timeout 2 --sqlite]
//! ```
//!
//! Each round starts a victim server, starts a run on it whose first step
//! calls an endpoint of this program that holds the call, waits for the
//! call, SIGKILLs the victim and times until the survivor calls again (the
//! survivor has taken the run over and re-runs the attempt the victim had
//! in flight; its first event follows the answer). The survivor stays up.
//! Its lease timeout is `--lease-timeout` (default 2 s; production default
//! 10 s). The floor: how long the survivor takes to pick up a run that an
//! API-only process (`--no-worker`) started — the wake-up index's poll
//! latency, the part of a takeover that is not the lease timeout.
#![allow(missing_docs, clippy::unwrap_used, clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod server;

use server::{admin_key, cairn_binary, fresh_pg_db, serve_on};

/// Arrival times of calls, by key; a call is held until its key is released.
#[derive(Clone, Default)]
struct Endpoint {
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    released: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Endpoint {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/call",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let me = me.clone();
                async move {
                    let key = body["key"].as_str().unwrap_or("?").to_owned();
                    me.arrivals.lock().unwrap().push((key.clone(), Instant::now()));
                    while !me.released.lock().unwrap().contains(&key) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    axum::Json(json!({ "ok": true }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/call")
    }

    fn calls(&self, key: &str) -> Vec<Instant> {
        self.arrivals.lock().unwrap().iter().filter(|(k, _)| k == key).map(|(_, t)| *t).collect()
    }

    async fn nth_call(&self, key: &str, n: usize, within: Duration) -> Option<Instant> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(at) = self.calls(key).get(n - 1) {
                return Some(*at);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }
}

async fn start_run(http: &reqwest::Client, url: &str, key: &str, n: usize) -> String {
    let r = http
        .post(format!("{url}/runs"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(json!({ "workflow": "held", "inputs": { "n": n } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()["run_id"].as_str().unwrap().to_owned()
}

fn summary(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    let max = v[v.len() - 1];
    format!("median {med:7.0} ms  max {max:7.0} ms  (n={})", v.len())
}

async fn database(sqlite: bool, dir: &std::path::Path) -> String {
    if sqlite {
        return format!("sqlite://{}", dir.join("failover.db").display());
    }
    fresh_pg_db("cairn_failover").await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let kills = usize::try_from(opt("--kills", 20)).unwrap();
    let lease = opt("--lease-timeout", 2).to_string();
    let sqlite = args.iter().any(|a| a == "--sqlite");
    let bin = cairn_binary();
    let dir = tempfile::tempdir().unwrap();
    let db = database(sqlite, dir.path()).await;
    let key = admin_key(&bin, &db);
    let endpoint = Endpoint::default();
    let call = endpoint.start().await;
    let http = cairn_runtime::http_client();
    let wf = format!(
        "name: held\ninputs: {{ type: object, properties: {{ n: {{ type: integer }} }} }}\nsteps:\n  - id: call\n    \
         http: {{ method: POST, url: '{call}', body: {{ key: 'k{{{{ inputs.n }}}}' }} }}\n    timeout: 10m\n"
    );
    let lease_args = ["--lease-timeout", lease.as_str()];
    let survivor = serve_on(&bin, &db, &lease_args, &dir.path().join("survivor.log"));
    server::publish(&http, &survivor.url, &key, &wf).await;
    println!(
        "FAILOVER: two `cairn serve` on {}, lease timeout {lease} s, {kills} kills",
        if sqlite { "SQLite" } else { "PostgreSQL" }
    );

    // The floor: a run started by an API-only process, picked up by the survivor.
    let api = serve_on(&bin, &db, &["--no-worker"], &dir.path().join("api.log"));
    let mut floor = Vec::new();
    for n in 0..kills {
        let key_n = format!("k{}", 10_000 + n);
        let t = Instant::now();
        start_run(&http, &api.url, &key, 10_000 + n).await;
        let at = endpoint.nth_call(&key_n, 1, Duration::from_secs(10)).await.expect("picked up");
        floor.push((at - t).as_secs_f64() * 1000.0);
        endpoint.released.lock().unwrap().insert(key_n);
    }
    drop(api);

    let mut took = Vec::new();
    let mut missed = 0;
    for n in 0..kills {
        let victim = serve_on(&bin, &db, &lease_args, &dir.path().join(format!("victim-{n}.log")));
        let key_n = format!("k{n}");
        start_run(&http, &victim.url, &key, n).await;
        endpoint.nth_call(&key_n, 1, Duration::from_secs(10)).await.expect("first call");
        let killed = Instant::now();
        drop(victim); // SIGKILL
        match endpoint.nth_call(&key_n, 2, Duration::from_secs(60)).await {
            Some(at) => took.push((at - killed).as_secs_f64() * 1000.0),
            None => missed += 1,
        }
        endpoint.released.lock().unwrap().insert(key_n);
    }
    println!("failover  SIGKILL → the survivor drives the run  {}", summary(&mut took));
    println!("floor     pick-up of a run started elsewhere    {}", summary(&mut floor));
    if missed > 0 {
        println!("          ({missed} rounds where the survivor already held the run: no takeover to time)");
    }
    drop(survivor);
}
