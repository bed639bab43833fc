//! The chaos test of issue 17, alone in its binary so that no other test
//! loads the machine while it decides which repeated calls a kill explains.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

mod common;
#[path = "common/counter.rs"]
mod counter;
#[path = "common/server.rs"]
mod server;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use counter::Counter;
use serde_json::{Value, json};
use server::Server;

fn start(url: &str, args: &[&str]) -> Server {
    Server::start_with(args, &[("CAIRN_DATABASE_URL", url)])
}

/// Waits, a retried call, an approval and calls to a counting server.
fn chaos_workflow(url: &str) -> String {
    let flaky = url.replace("/count", "/flaky");
    format!(
        "name: chaos\ninputs: {{ type: object, properties: {{ n: {{ type: integer }} }} }}\nsteps:\n  \
         - id: first\n    http: {{ method: POST, url: '{url}', body: {{ key: 'first-{{{{ inputs.n }}}}' }} }}\n    timeout: 1m\n  \
         - id: pause\n    wait: {{ for: 1s }}\n  \
         - id: flaky\n    http: {{ method: POST, url: '{flaky}', body: {{ key: 'flaky-{{{{ inputs.n }}}}' }} }}\n    timeout: 1m\n    \
         retry: {{ max_attempts: 4, initial_interval: 300ms }}\n  \
         - id: ok\n    approval:\n      approvers: [boss]\n      summary: 'Go on with {{{{ inputs.n }}}}?'\n  \
         - id: last\n    http: {{ method: POST, url: '{url}', body: {{ key: 'last-{{{{ inputs.n }}}}' }} }}\n    timeout: 1m\n"
    )
}

/// The chaos test of issue 17: three workers (`cairn serve`) on one
/// PostgreSQL database, one SIGKILLed at random every 2–3 s and replaced,
/// while runs with waits, a retried call, an approval and HTTP calls to a
/// counting server proceed and people answer. Then: no run lost or stuck,
/// no outcome recorded twice, `cairn verify` intact, and every repeated
/// call explained by a kill while it was in flight. `CAIRN_CHAOS_SECONDS`
/// (default 20) sets how long the killing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres_loses_nothing_and_repeats_only_calls_in_flight() {
    let Some(url) = common::fresh_pg_url().await else { return };
    let seconds: u64 = std::env::var("CAIRN_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    // Calls long enough that kills land while some are in flight; a lease
    // timeout of 4 s, so a worker slowed by the machine's load (its beat
    // every 1.3 s) is not taken for dead.
    let counter = Counter::start(Duration::from_millis(400)).await;
    let lease = ["--lease-timeout", "4"];
    let mut servers: Vec<Server> = (0..3).map(|_| start(&url, &lease)).collect();
    let key = servers[0].key("root", "admin", "root");
    let boss = servers[0].key("boss", "approver", "boss");
    let r = servers[0].post_yaml("/workflows", &key, &chaos_workflow(&counter.url)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut runs: Vec<String> = Vec::new();
    let mut kills: Vec<Instant> = Vec::new();
    let mut answered = std::collections::HashSet::new();
    let began = Instant::now();
    let mut last_kill = Instant::now();
    let mut n = 0u64;
    while began.elapsed() < Duration::from_secs(seconds) {
        // A few new runs, through any live server.
        for _ in 0..2 {
            let s = &servers[usize::try_from(next(3)).unwrap_or(0)];
            let r = s.post("/runs", &key, &json!({ "workflow": "chaos", "inputs": { "n": n } })).await;
            assert_eq!(r.status, 201, "{}", r.text);
            runs.push(r.json["run_id"].as_str().expect("run_id").to_owned());
            n += 1;
        }
        // People answer what waits.
        let inbox = servers[0].get("/inbox?assignee=me", &boss).await;
        for item in inbox.json["items"].as_array().cloned().unwrap_or_default() {
            let run = item["run_id"].as_str().unwrap_or_default().to_owned();
            if answered.insert(run.clone()) {
                let r = servers[usize::try_from(next(3)).unwrap_or(0)]
                    .post(&format!("/runs/{run}/steps/ok/decision"), &boss, &json!({ "approve": true }))
                    .await;
                assert!(matches!(r.status, 200 | 201 | 409), "{}", r.text);
            }
        }
        if last_kill.elapsed() >= Duration::from_millis(2000 + next(1000)) {
            let victim = usize::try_from(next(3)).unwrap_or(0);
            let old = std::mem::replace(&mut servers[victim], start(&url, &lease));
            drop(old); // SIGKILL
            kills.push(Instant::now());
            last_kill = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Calm: answer the rest and let every run finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inbox = servers[0].get("/inbox?assignee=me", &boss).await;
        for item in inbox.json["items"].as_array().cloned().unwrap_or_default() {
            let run = item["run_id"].as_str().unwrap_or_default().to_owned();
            let r =
                servers[0].post(&format!("/runs/{run}/steps/ok/decision"), &boss, &json!({ "approve": true })).await;
            assert!(matches!(r.status, 200 | 201 | 409), "{}", r.text);
        }
        let mut open = Vec::new();
        for id in &runs {
            let st =
                servers[0].get(&format!("/runs/{id}"), &key).await.json["status"].as_str().unwrap_or("").to_owned();
            if st != "completed" {
                open.push(format!("{id} {st}"));
            }
        }
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "stuck after 60 s: {open:?}\n{}", servers[0].logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // No outcome recorded twice.
    for id in &runs {
        let o = servers[0].cairn(&["events", "--stream", &format!("run-{id}")]);
        let mut done: HashMap<String, usize> = HashMap::new();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let e: Value = serde_json::from_str(line).expect("event line");
            if e["event_type"] == "StepCompleted" {
                let p: Value = serde_json::from_str(e["payload"].as_str().expect("payload")).expect("payload");
                *done.entry(p["step_id"].as_str().expect("step").to_owned()).or_default() += 1;
            }
        }
        assert!(done.values().all(|c| *c == 1), "run {id} recorded an outcome twice: {done:?}");
        assert_eq!(done.len(), 5, "run {id}: {done:?}");
    }
    let v = servers[0].cairn(&["verify"]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    // Every repeated call is explained by a kill while it was in flight.
    let mut unexplained = Vec::new();
    for i in 0..n {
        unexplained.extend(counter.unexplained(&format!("first-{i}"), 1, &kills));
        unexplained.extend(counter.unexplained(&format!("flaky-{i}"), 2, &kills));
        unexplained.extend(counter.unexplained(&format!("last-{i}"), 1, &kills));
    }
    let taken: Vec<String> = servers
        .iter()
        .flat_map(|s| {
            s.logs()
                .lines()
                .filter(|l| l.contains("taken over") || l.contains("cannot beat"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(unexplained, Vec::<String>::new(), "{} kills; {taken:#?}", kills.len());
    assert!(kills.len() >= usize::try_from(seconds / 4).unwrap_or(1), "{} kills in {seconds} s", kills.len());
    eprintln!(
        "chaos: {} runs, {} kills, {} calls ({} repeated for calls in flight)",
        runs.len(),
        kills.len(),
        counter.total(),
        counter.total() - 4 * runs.len()
    );
}
