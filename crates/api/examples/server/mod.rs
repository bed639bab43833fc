//! A real `cairn serve` for the HTTP benchmarks: the binary built beside
//! the example (or named by `CAIRN_BENCH_BIN`, to measure another build),
//! on a SQLite file, with an admin key.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cairn_binary() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("CAIRN_BENCH_BIN") {
        return bin.into();
    }
    // target/<profile>/examples/http_load → target/<profile>/cairn
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).unwrap().join("cairn");
    if let Ok(cargo) = std::env::var("CARGO") {
        // target/<profile>/examples/…: build the binary of the same profile.
        let dir = exe.parent().and_then(|p| p.parent()).and_then(|p| p.file_name()).unwrap().to_string_lossy();
        let profile = if dir == "debug" { "dev".to_owned() } else { dir.into_owned() };
        let mut c = Command::new(cargo);
        c.args(["build", "-q", "-p", "cairn-api", "--bin", "cairn", "--profile", &profile]);
        assert!(c.status().unwrap().success(), "building cairn failed");
    }
    assert!(bin.exists(), "{} is missing: cargo build --release -p cairn-api", bin.display());
    bin
}

pub fn serve(bin: &std::path::Path, dir: &std::path::Path) -> (Server, String) {
    let db = format!("sqlite://{}", dir.join("http.db").display());
    let out = Command::new(bin)
        .args(["keys", "create", "--name", "bench", "--role", "admin"])
        .env("CAIRN_DATABASE_URL", &db)
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // `CAIRN_BENCH_SERVE_ARGS="--decide-inline"` compares how the server decides.
    let extra = std::env::var("CAIRN_BENCH_SERVE_ARGS").unwrap_or_default();
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra.split_whitespace())
        .env("CAIRN_DATABASE_URL", &db)
        .env("CAIRN_TOKEN_KEY", "bench-token-key-0123456789abcdef0123456789")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    (Server { child, url }, key)
}

/// A `cairn serve` with `args` on the database at `db` (SQLite or
/// PostgreSQL), its stderr to `log`.
pub fn serve_on(bin: &std::path::Path, db: &str, args: &[&str], log: &std::path::Path) -> Server {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("CAIRN_DATABASE_URL", db)
        .env("CAIRN_TOKEN_KEY", "bench-token-key-0123456789abcdef0123456789")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}")).to_owned();
    Server { child, url }
}

/// A new admin key on the database at `db`.
pub fn admin_key(bin: &std::path::Path, db: &str) -> String {
    let out = Command::new(bin)
        .args(["keys", "create", "--name", "bench", "--role", "admin"])
        .env("CAIRN_DATABASE_URL", db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A fresh schema of the test PostgreSQL server (`CAIRN_TEST_PG_URL`), as a
/// database URL whose search path is that schema.
pub async fn fresh_pg_db(prefix: &str) -> String {
    use sqlx::{AssertSqlSafe, Connection, Executor};
    let base = cairn_events::testing::pg_url();
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("PostgreSQL (CAIRN_TEST_PG_URL)");
    let schema = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    admin.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Starts a run of `workflow` and waits for its end in the same request
/// (`Prefer: wait=30`); checks it completed; returns how long it took.
pub async fn start_and_wait(http: &reqwest::Client, url: &str, key: &str, workflow: &str) -> std::time::Duration {
    let t = std::time::Instant::now();
    let r = http
        .post(format!("{url}/runs"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("prefer", "wait=30")
        .body(format!(r#"{{"workflow":"{workflow}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    t.elapsed()
}

/// Publishes the workflow `yaml` through the server at `url`.
pub async fn publish(http: &reqwest::Client, url: &str, key: &str, yaml: &str) {
    let r = http
        .post(format!("{url}/workflows"))
        .bearer_auth(key)
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}
