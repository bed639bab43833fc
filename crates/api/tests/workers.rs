//! Several `cairn serve` and `cairn worker` processes on one database, as a
//! team outgrowing one machine runs them: no effect runs twice while every
//! process lives, a killed process's runs (timers included) are taken over
//! within the lease timeout without restarting anything, and a run started
//! from the CLI has its deadline fired by a running server. Each on SQLite
//! (one file, several processes) and PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

mod common;
#[path = "common/server.rs"]
mod server;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::Server;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("dir");
                super::$name(&format!("sqlite://{}", dir.path().join("cairn.db").display())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(url) = crate::common::fresh_pg_url().await else { return };
                super::$name(&url).await;
            }
        }
    )*};
}

/// An HTTP endpoint that counts calls by the `key` in their body and
/// answers after `delay`, or not at all while `hold` is set.
#[derive(Clone)]
struct Counter {
    url: String,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    hold: Arc<AtomicBool>,
    /// Each call's key, when it came and when it was answered.
    windows: Arc<Mutex<Vec<Call>>>,
}

/// A call's key, when it came and when it was answered.
type Call = (String, Instant, Option<Instant>);

impl Counter {
    /// Answers `/count` after `delay`; `/flaky` the same, but 503 to the
    /// first call of each key (the step's retry policy takes it from there).
    async fn start(delay: Duration) -> Counter {
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let hold = Arc::new(AtomicBool::new(false));
        let windows: Arc<Mutex<Vec<Call>>> = Arc::default();
        let handler = |flaky: bool| {
            let (c, h, w) = (calls.clone(), hold.clone(), windows.clone());
            move |axum::Json(body): axum::Json<Value>| {
                let (c, h, w) = (c.clone(), h.clone(), w.clone());
                async move {
                    let key = body["key"].as_str().unwrap_or("?").to_owned();
                    let n = {
                        let mut c = c.lock().expect("lock");
                        let n = c.entry(key.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let i = {
                        let mut w = w.lock().expect("lock");
                        w.push((key, Instant::now(), None));
                        w.len() - 1
                    };
                    tokio::time::sleep(delay).await;
                    while h.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    w.lock().expect("lock")[i].2 = Some(Instant::now());
                    let status = if flaky && n == 1 { 503 } else { 200 };
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        axum::Json(json!({ "ok": status == 200 })),
                    )
                }
            }
        };
        let app = axum::Router::new()
            .route("/count", axum::routing::post(handler(false)))
            .route("/flaky", axum::routing::post(handler(true)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Counter { url: format!("http://{addr}/count"), calls, hold, windows }
    }

    /// The calls of `key` beyond `expected` that no kill explains: each
    /// repeat must follow a call that was in flight at a kill (started
    /// before it, answered after it or less than a second before it, the
    /// time to record the outcome).
    fn unexplained(&self, key: &str, expected: usize, kills: &[Instant]) -> Vec<String> {
        let w = self.windows.lock().expect("lock");
        let calls: Vec<&Call> = w.iter().filter(|c| c.0 == key).collect();
        let mut out = Vec::new();
        for (j, call) in calls.iter().enumerate().skip(expected) {
            let before = calls[j - 1];
            let in_flight = kills.iter().any(|k| {
                *k >= before.1 && before.2.is_none_or(|end| *k <= end + Duration::from_secs(1)) && *k <= call.1
            });
            if !in_flight {
                out.push(format!("{key} call {} repeated with no kill while call {j} was in flight", j + 1));
            }
        }
        out
    }

    fn count(&self, key: &str) -> usize {
        self.calls.lock().expect("lock").get(key).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.calls.lock().expect("lock").values().sum()
    }

    fn twice(&self) -> Vec<(String, usize)> {
        let calls = self.calls.lock().expect("lock");
        let mut v: Vec<(String, usize)> = calls.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }
}

/// Two calls around a one-second wait, keyed by the run's input.
fn two_calls(url: &str) -> String {
    format!(
        "name: two-calls\ninputs: {{ type: object, properties: {{ n: {{ type: integer }} }} }}\nsteps:\n  \
         - id: first\n    http: {{ method: POST, url: '{url}', body: {{ key: 'first-{{{{ inputs.n }}}}' }} }}\n    timeout: 1m\n  \
         - id: pause\n    wait: {{ for: 1s }}\n  \
         - id: second\n    http: {{ method: POST, url: '{url}', body: {{ key: 'second-{{{{ inputs.n }}}}' }} }}\n    timeout: 1m\n"
    )
}

fn start(url: &str, args: &[&str]) -> Server {
    Server::start_with(args, &[("CAIRN_DATABASE_URL", url)])
}

async fn started(s: &Server, key: &str, n: usize) -> String {
    let r = s.post("/runs", key, &json!({ "workflow": "two-calls", "inputs": { "n": n } })).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["run_id"].as_str().expect("run_id").to_owned()
}

async fn all_reach(s: &Server, key: &str, runs: &[String], status: &str, within: Duration) {
    let t = Instant::now();
    for id in runs {
        loop {
            let r = s.get(&format!("/runs/{id}"), key).await;
            if r.json["status"] == status {
                break;
            }
            assert!(
                t.elapsed() < within,
                "run {id} is {} after {within:?}, not {status}:\n{}",
                r.json["status"],
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The reproducer of duplicate effects with no crash (before: with 2–4
/// servers, 6 of 40 HTTP effects ran twice, because each start-up drove
/// the runs the others were driving): runs are in flight on two servers
/// while two more start; every effect runs once.
async fn servers_starting_beside_live_ones_never_repeat_an_effect(url: &str) {
    let counter = Counter::start(Duration::from_millis(300)).await;
    let a = start(url, &[]);
    let key = a.key("root", "admin", "root");
    assert_eq!(a.post_yaml("/workflows", &key, &two_calls(&counter.url)).await.status, 201);
    let b = start(url, &[]);
    let mut runs = Vec::new();
    for n in 0..20 {
        let s = if n % 2 == 0 { &a } else { &b };
        runs.push(started(s, &key, n).await);
    }
    // Two more processes start while the first calls are in flight.
    let c = start(url, &[]);
    let d = start(url, &[]);
    all_reach(&d, &key, &runs, "completed", Duration::from_secs(60)).await;
    assert_eq!(counter.twice(), Vec::<(String, usize)>::new(), "no effect ran twice");
    assert_eq!(counter.total(), 40, "every effect ran");
    drop((a, b, c, d));
}

/// The reproducer of a killed server's runs staying `running` on the
/// survivors (before: 10 of 10 after 60 s, until some process restarted).
/// One server is SIGKILLed with calls in flight and runs waiting on timers;
/// the other takes every run over within the lease timeout, fires the
/// timers, and only the calls in flight at the kill ran twice.
async fn a_killed_servers_runs_are_taken_over_by_the_survivor(url: &str) {
    let counter = Counter::start(Duration::from_millis(10)).await;
    let lease = ["--lease-timeout", "2"];
    let doomed = start(url, &lease);
    let key = doomed.key("root", "admin", "root");
    assert_eq!(doomed.post_yaml("/workflows", &key, &two_calls(&counter.url)).await.status, 201);
    let survivor = start(url, &lease);
    // Five runs past their first call, waiting on their timer; five with
    // their first call in flight (held).
    let mut runs = Vec::new();
    for n in 0..5 {
        runs.push(started(&doomed, &key, n).await);
    }
    for n in 0..5 {
        while counter.count(&format!("first-{n}")) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Their first calls answered (10 ms) and recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    counter.hold.store(true, Ordering::SeqCst);
    for n in 5..10 {
        runs.push(started(&doomed, &key, n).await);
    }
    for n in 5..10 {
        while counter.count(&format!("first-{n}")) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let killed = Instant::now();
    drop(doomed); // SIGKILL
    counter.hold.store(false, Ordering::SeqCst);
    all_reach(&survivor, &key, &runs, "completed", Duration::from_secs(8)).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(6), "taken over and finished in {took:?} (lease timeout 2 s)");
    // Only the calls in flight at the kill ran again.
    for n in 0..10 {
        let want_first = if n < 5 { 1 } else { 2 };
        assert_eq!(counter.count(&format!("first-{n}")), want_first, "first-{n}: {:?}", counter.twice());
        assert_eq!(counter.count(&format!("second-{n}")), 1, "second-{n}");
    }
    let log = survivor.logs();
    assert!(log.contains("taking over the runs of a worker that is gone"), "{log}");
    // The log is intact.
    let v = survivor.cairn(&["verify"]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
}

/// The reproducer of a CLI run's deadline waiting for a server restart
/// (before: a form with a 3 s deadline, started with `cairn run` under a
/// running `cairn serve`, was still waiting after 6 s).
async fn a_cli_runs_deadline_fires_under_a_running_server(url: &str) {
    let s = start(url, &[]);
    let key = s.key("root", "admin", "root");
    let file = s.dir.path().join("brief.yaml");
    std::fs::write(
        &file,
        "name: brief\nsteps:\n  - id: ask\n    form:\n      title: Brief\n      assignees: [writer]\n      deadline: 3s\n      \
         fields:\n        - { name: topic, type: text }\n",
    )
    .expect("write");
    let t = Instant::now();
    let out = s.cairn(&["run", file.to_str().expect("path")]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let id = text
        .split_whitespace()
        .find_map(|w| uuid::Uuid::parse_str(w.trim_end_matches(':')).ok())
        .unwrap_or_else(|| panic!("no run id in: {text}"))
        .to_string();
    let r = s.get(&format!("/runs/{id}"), &key).await;
    assert_eq!(r.json["status"], "waiting", "the CLI left it waiting: {text}\n{}", r.text);
    all_reach(&s, &key, std::slice::from_ref(&id), "failed", Duration::from_secs(6)).await;
    let fired = t.elapsed();
    let r = s.get(&format!("/runs/{id}"), &key).await;
    assert_eq!(r.json["error"]["kind"], "input.expired", "{}", r.text);
    assert!(fired >= Duration::from_secs(3), "not before the deadline: {fired:?}");
}

/// A `cairn worker` process beside `cairn serve --no-worker
/// --no-projections`: the API process drives nothing and keeps no read
/// models in the background; the worker drives what it starts, and reads
/// are up to date.
async fn an_api_process_and_a_worker_process_split_the_work(url: &str) {
    let counter = Counter::start(Duration::from_millis(1)).await;
    let api = start(url, &["--no-worker", "--no-projections"]);
    let key = api.key("root", "admin", "root");
    assert_eq!(api.post_yaml("/workflows", &key, &two_calls(&counter.url)).await.status, 201);
    let id = started(&api, &key, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counter.total(), 0, "the API process drives nothing");
    assert_eq!(api.get(&format!("/runs/{id}"), &key).await.json["status"], "running");
    let mut worker = Worker::start(&api.db_url, api.dir.path());
    all_reach(&api, &key, std::slice::from_ref(&id), "completed", Duration::from_secs(10)).await;
    assert_eq!((counter.count("first-1"), counter.count("second-1")), (1, 1));
    // Without projections in the background, a read brings them up first.
    let list = api.get("/runs?status=completed", &key).await;
    assert!(list.text.contains(&id), "{}", list.text);
    let history = api.get(&format!("/runs/{id}/history"), &key).await;
    assert!(history.text.contains("second"), "{}", history.text);
    // SIGTERM: the worker retires and exits 0.
    let status = worker.terminate();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", worker.logs());
}

async fn run_sql(url: &str, statements: &[&str]) {
    use sqlx::{AssertSqlSafe, Connection, Executor};
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        for s in statements {
            c.execute(AssertSqlSafe(*s)).await.expect(s);
        }
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
        for s in statements {
            c.execute(AssertSqlSafe(*s)).await.expect(s);
        }
    }
}

/// A database from before the wake-up index: a run waiting on a timer has
/// no entry (and no lease). The next server's start-up finds it, sees its
/// timer is later, puts it in the index, and the timer fires on time.
async fn a_run_recorded_before_the_index_still_fires_its_timer(url: &str) {
    let mut first = start(url, &[]);
    let key = first.key("root", "admin", "root");
    let wf = "name: nap\nsteps:\n  - id: pause\n    wait: { for: 4s }\n  - id: done\n    transform: { ok: true }\n";
    assert_eq!(first.post_yaml("/workflows", &key, wf).await.status, 201);
    let r = first.post("/runs", &key, &json!({ "workflow": "nap" })).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["run_id"].as_str().expect("run_id").to_owned();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(first.terminate().and_then(|s| s.code()), Some(0));
    run_sql(url, &["DELETE FROM cairn_wakeups", "DELETE FROM cairn_leases"]).await;
    let second = start(url, &[]);
    all_reach(&second, &key, std::slice::from_ref(&id), "completed", Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3500) && took < Duration::from_secs(7), "fired after {took:?}");
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
    // timeout of 3 s, so a worker slowed by the machine's load (its beat
    // every second) is not taken for dead.
    let counter = Counter::start(Duration::from_millis(400)).await;
    let lease = ["--lease-timeout", "3"];
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

/// A `cairn worker` process.
struct Worker {
    child: Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(db_url: &str, dir: &std::path::Path) -> Worker {
        let log = dir.join(format!("worker-{}.log", uuid::Uuid::now_v7().simple()));
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("worker")
            .current_dir(dir)
            .env("CAIRN_DATABASE_URL", db_url)
            .env("CAIRN_TOKEN_KEY", "test-token-key-0123456789abcdef0123456789")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start cairn worker");
        Worker { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

on_both!(
    servers_starting_beside_live_ones_never_repeat_an_effect,
    a_killed_servers_runs_are_taken_over_by_the_survivor,
    a_cli_runs_deadline_fires_under_a_running_server,
    an_api_process_and_a_worker_process_split_the_work,
    a_run_recorded_before_the_index_still_fires_its_timer,
);
