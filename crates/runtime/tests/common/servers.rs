//! Real servers for tests, started as separate processes on loopback:
//! fakellm and aiosmtpd (installed by `.ci/install-test-tools`) and our own
//! small OpenAI-compatible server (tests/support/llm_server.py) for what
//! fakellm cannot do (Retry-After, refusing `json_schema`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its scratch directory.
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Where the installed test tools are.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("CAIRN_TEST_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/venv/bin"),
    }
}

/// The path of an installed tool; `None` (printing SKIPPED) when it is
/// missing, except under CI, where a missing tool fails the test.
pub fn tool(name: &str) -> Option<PathBuf> {
    let p = tools_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} is not installed at {}; run `bash .ci/install-test-tools`",
        p.display()
    );
    eprintln!("SKIPPED: {name} is not installed; run `bash .ci/install-test-tools`");
    None
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Waits until something accepts connections on the port.
pub fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port} within 30 s");
}

fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir, what: &str) -> Server {
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    wait_listening(port, &mut child, what);
    Server { child, port, dir }
}

/// fakellm answering from `rules` (its YAML config); `None` when not installed.
pub fn fakellm(rules: &str) -> Option<Server> {
    let bin = tool("fakellm")?;
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("fakellm.yaml");
    std::fs::write(&config, rules).expect("write rules");
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--config"]).arg(&config);
    cmd.env("FAKELLM_CONFIG", &config);
    Some(spawn(cmd, port, dir, "fakellm"))
}

/// Our OpenAI-compatible server answering `replies` (a JSON list) in order
/// and logging every request to `requests.jsonl` in its directory.
pub fn llm_server(replies: serde_json::Value) -> Option<Server> {
    let python = tool("python")?;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("replies.json"), replies.to_string()).expect("write");
    let port = free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/llm_server.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(port.to_string()).arg(dir.path());
    Some(spawn(cmd, port, dir, "llm_server.py"))
}

/// The requests `llm_server` received.
pub fn requests(s: &Server) -> Vec<serde_json::Value> {
    std::fs::read_to_string(s.dir.path().join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// An aiosmtpd SMTP server delivering into a Maildir; on `port` when given.
pub fn smtp_on(port: Option<u16>) -> Option<Server> {
    let bin = tool("aiosmtpd")?;
    let dir = tempfile::tempdir().expect("tmp");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(dir.path().join("mail").join(sub)).expect("maildir");
    }
    let port = port.unwrap_or_else(free_port);
    let mut cmd = Command::new(bin);
    cmd.args(["-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
        .arg(dir.path().join("mail"));
    Some(spawn(cmd, port, dir, "aiosmtpd"))
}

/// Undoes quoted-printable (soft line breaks and `=XX`), as a mail reader does.
fn unquote(t: &str) -> String {
    let t = t.replace("=\r\n", "").replace("=\n", "");
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'='
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The messages an SMTP server delivered, as text (quoted-printable undone).
pub fn mails(s: &Server) -> Vec<String> {
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(s.dir.path().join("mail/new"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| (e.path(), std::fs::read_to_string(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.into_iter().map(|(_, t)| unquote(&t)).collect()
}
