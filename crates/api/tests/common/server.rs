//! A real `cairn serve` on a free port of 127.0.0.1, over a fresh SQLite
//! database, and a small HTTP client for it.
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    child: Child,
    pub url: String,
    pub db: PathBuf,
    /// The database URL (the SQLite file `db` unless the environment named another).
    pub db_url: String,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// A response: status, headers, body as JSON (Null when not JSON) and text.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json of this status and code.
    pub fn problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "expected {status} {code}, got: {}", self.text);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.text);
        assert_eq!(self.json["type"], format!("urn:cairn:problem:{code}"), "{}", self.text);
        assert_eq!(self.json["status"], status);
        assert!(self.json["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.json["detail"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.json["request_id"].as_str().is_some());
        &self.json
    }
}

/// A plain HTTP client (rustls with ring, as the engine's).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("client")
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("cairn.db");
        let log = dir.path().join("server.log");
        let db_url = env
            .iter()
            .find(|(k, _)| *k == "CAIRN_DATABASE_URL")
            .map_or_else(|| format!("sqlite://{}", db.display()), |(_, v)| (*v).to_owned());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .current_dir(dir.path())
            .env("CAIRN_DATABASE_URL", &db_url)
            .env("CAIRN_TOKEN_KEY", "test-token-key-0123456789abcdef0123456789")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start cairn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the address");
        let url = line.trim().strip_prefix("listening on ").map(str::to_owned).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the server did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        Server { child, url, db, db_url, log, dir, http: client() }
    }

    /// `cairn ARGS` on the server's database.
    pub fn cairn(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .current_dir(self.dir.path())
            .env("CAIRN_DATABASE_URL", &self.db_url)
            .env("CAIRN_TOKEN_KEY", "test-token-key-0123456789abcdef0123456789")
            .output()
            .expect("run cairn")
    }

    /// A new API key.
    pub fn key(&self, name: &str, role: &str, identity: &str) -> String {
        let o = self.cairn(&["keys", "create", "--name", name, "--role", role, "--identity", identity]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the server to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request; `body` is (content type, bytes).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, format!("{}{path}", self.url)).timeout(Duration::from_secs(30));
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some((ct, b)) = body {
            r = r.header("content-type", ct).body(b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, json, text }
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.send("GET", path, Some(key), None, &[]).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.send("POST", path, Some(key), Some(("application/json", body.to_string().into_bytes())), &[]).await
    }

    pub async fn post_yaml(&self, path: &str, key: &str, yaml: &str) -> Resp {
        self.send("POST", path, Some(key), Some(("application/yaml", yaml.as_bytes().to_vec())), &[]).await
    }

    /// Polls GET /runs/{id} until its status is one of `want`.
    pub async fn wait_status(&self, run: &str, key: &str, want: &[&str]) -> Value {
        for _ in 0..300 {
            let r = self.get(&format!("/runs/{run}"), key).await;
            assert_eq!(r.status, 200, "{}", r.text);
            if want.contains(&r.json["status"].as_str().unwrap_or("")) {
                return r.json;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {run} never reached {want:?}:\n{}", self.logs());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape in the Prometheus text format, by series: `name{k="v",…}` with
/// the labels sorted, to its value.
pub struct Scrape(pub std::collections::BTreeMap<String, f64>, pub String);

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut series = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"));
            let key = match name.split_once('{') {
                None => name.to_owned(),
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels: {line:?}"));
                    let mut labels: Vec<&str> = inner.split("\",").map(|l| l.trim_end_matches('"')).collect();
                    labels.sort_unstable();
                    let labels: Vec<String> = labels.iter().map(|l| format!("{l}\"")).collect();
                    format!("{n}{{{}}}", labels.join(","))
                }
            };
            series.insert(key, value);
        }
        Scrape(series, text.to_owned())
    }

    /// The value of `name` with exactly these labels (0 when absent: a
    /// counter that never moved is not rendered).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        l.sort_unstable();
        let key = if l.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", l.join(",")) };
        self.0.get(&key).copied().unwrap_or(0.0)
    }
}

impl Server {
    /// `GET /metrics` with `key`, parsed.
    pub async fn metrics(&self, key: &str) -> Scrape {
        let r = self.get("/metrics", key).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            r.headers
        );
        Scrape::parse(&r.text)
    }
}
