//! The real `cairn` binary with people in the loop: examples/blog-post.yaml
//! continued with the exact commands `cairn run` prints when there is no
//! terminal, the same run answered at a terminal (a pty, through
//! `script`), rejection, and the diagnostics for models and config.
#![allow(missing_docs)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{cairn, example, text};

/// examples/cms.py on a free port, killed on drop.
struct Cms {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Cms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cms() -> Cms {
    let dir = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let log = dir.path().join("posts.jsonl");
    let child = Command::new("python3")
        .arg(example("cms.py"))
        .arg(port.to_string())
        .arg(&log)
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 examples/cms.py");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Cms { child, port, log, _dir: dir }
}

impl Cms {
    fn url(&self) -> String {
        format!("cms_url=http://127.0.0.1:{}/posts", self.port)
    }

    fn posts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }
}

/// The `cairn …` command lines in what a command printed.
fn printed_commands(out: &Output) -> Vec<Vec<String>> {
    text(out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cairn "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn run_id(out: &Output) -> String {
    let t = text(out);
    let at = t.find("run ").expect("a run line");
    t[at + 4..at + 40].to_owned()
}

fn cairn_args(db: &Path, args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cairn(db, &refs)
}

#[test]
fn blog_post_continues_with_the_commands_it_prints() {
    let cms = cms();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let started = cairn(&db, &["run", &example("blog-post.yaml"), "--as", "editor", "--input", &cms.url()]);
    assert_eq!(started.status.code(), Some(3), "{}", text(&started));
    let run = run_id(&started);
    let cmds = printed_commands(&started);
    assert_eq!(cmds.len(), 1, "{}", text(&started));
    // `cairn submit RUN brief --field topic=…`: fill in the placeholder.
    let mut submit: Vec<String> = cmds[0].iter().map(|a| a.replace('…', "Durable workflows")).collect();
    assert_eq!(&submit[..3], ["submit", run.as_str(), "brief"]);
    // A bad value first: nothing recorded, every problem named.
    let mut bad = submit.clone();
    bad.extend(["--field".into(), "words=50".into()]);
    bad[3..].iter_mut().for_each(|a| *a = a.replace("Durable workflows", "Du"));
    let refused = cairn_args(&db, &bad);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("topic: has 2 characters") && text(&refused).contains("words: 50 is less"),
        "{}",
        text(&refused)
    );
    submit.push("--as".into());
    submit.push("ada".into());
    let submitted = cairn_args(&db, &submit);
    assert_eq!(submitted.status.code(), Some(3), "{}", text(&submitted));
    let t = text(&submitted);
    assert!(t.contains("reply 1 rejected, fed back") && t.contains("waits for 1 approval(s) from editor"), "{t}");
    let inbox = cairn(&db, &["inbox"]);
    assert!(text(&inbox).contains("review approval for [\"editor\"]"), "{}", text(&inbox));
    let approve: Vec<String> = printed_commands(&submitted)
        .into_iter()
        .find(|c| c[0] == "approve")
        .expect("an approve command")
        .into_iter()
        .take_while(|a| !a.starts_with('['))
        .collect();
    // Someone else may not; the editor may.
    let mut as_mallory = approve.clone();
    if let Some(i) = as_mallory.iter().position(|a| a == "--as") {
        as_mallory[i + 1] = "mallory".into();
    }
    let refused = cairn_args(&db, &as_mallory);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("[not-allowed]") && text(&refused).contains("only editor may"),
        "{}",
        text(&refused)
    );
    let mut approve = approve;
    approve.extend(["--comment".into(), "Ship it".into()]);
    let done = cairn_args(&db, &approve);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let output: serde_json::Value =
        serde_json::from_slice(&done.stdout[done.stdout.iter().position(|b| *b == b'{').expect("json")..])
            .expect("output");
    assert_eq!(output["published"], true);
    assert_eq!(output["title"], "Durable workflows: a practical guide");
    let posts = cms.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["approved_by"], "editor");
    assert_eq!(posts[0]["idempotency_key"], format!("{run}:publish:1"));
    let history = text(&cairn(&db, &["history", &run]));
    assert!(
        history.contains("input submitted by ada") && history.contains("approved by editor — Ship it"),
        "{history}"
    );
    assert!(history.contains("ai#1 rejected") && history.contains("ai#2 completed"), "{history}");
    let audit = text(&cairn(&db, &["audit", "--actor", "editor"]));
    assert!(audit.contains("decide approval"), "{audit}");
    // A late second approval names the decision that won.
    let again = cairn_args(&db, &approve);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("[already-answered]") && text(&again).contains("ApprovalDecided by editor"),
        "{}",
        text(&again)
    );
    assert!(cairn(&db, &["verify"]).status.success());
}

#[test]
fn a_rejected_post_is_shelved_with_the_reason() {
    let cms = cms();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let started = cairn(&db, &["run", &example("blog-post.yaml"), "--input", &cms.url(), "--input", "editor=grace"]);
    let run = run_id(&started);
    let s = cairn(&db, &["submit", &run, "brief", "--data", r#"{"topic": "Sagas", "audience": "managers"}"#]);
    assert_eq!(s.status.code(), Some(3), "{}", text(&s));
    let r = cairn(&db, &["reject", &run, "review", "--as", "grace", "--comment", "Not this quarter"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(String::from_utf8_lossy(&r.stdout).contains("\"reason\": \"Not this quarter\""), "{}", text(&r));
    assert!(cms.posts().is_empty(), "nothing was published");
}

/// Runs `cmd` under a real terminal (`script`) on the database `db`,
/// typing `answers` a line at a time; everything it printed.
fn at_a_terminal(db: &Path, cmd: &str, answers: &str) -> String {
    let mut child = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .env("CAIRN_DATABASE_URL", format!("sqlite://{}", db.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in answers.lines() {
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write");
        stdin.flush().expect("flush");
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let out = child.wait_with_output().expect("wait");
    drop(stdin);
    text(&out)
}

#[test]
fn a_terminal_run_asks_validates_and_asks_again() {
    if !common::have_script() {
        return;
    }
    let cms = cms();
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let cmd = format!(
        "'{}' run '{}' --as editor --input {}",
        env!("CARGO_BIN_EXE_cairn"),
        example("blog-post.yaml"),
        cms.url()
    );
    // Answers in order: a too-short topic, then a good one; the default
    // audience; a length that is not a number, then one; then the approval.
    let t = at_a_terminal(&db, &cmd, "Du\nDurable workflows\n\nabc\n500\nmaybe\ny\nLooks good\n");
    assert!(t.contains("Brief for a new blog post"), "{t}");
    assert!(t.contains("has 2 characters; at least 3 are needed"), "{t}");
    assert!(t.contains("`abc` is not a whole number"), "{t}");
    assert!(t.contains("answer y or n"), "{t}");
    assert!(t.contains("content hash"), "{t}");
    assert!(t.contains("\"published\": true"), "{t}");
    let posts = cms.posts();
    assert_eq!(posts.len(), 1, "{t}");
    assert!(posts[0]["body"].as_str().unwrap_or_default().contains("Durable workflows"));
}

/// At a terminal, approving asks for the approval's fields, each checked as
/// it is typed; the run completes with them.
#[test]
fn a_terminal_approval_asks_for_its_fields() {
    if !common::have_script() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let cmd = format!("'{}' run '{}' --as lead", env!("CARGO_BIN_EXE_cairn"), example("refund-approval.yaml"));
    // Approve, no comment; an amount that is not a number, one too high,
    // then one; a reason; no note.
    let t = at_a_terminal(&db, &cmd, "y\n\nabc\n900\n42\ndamaged\n\n");
    assert!(t.contains("Amount to refund [number"), "{t}");
    assert!(t.contains("`abc` is not a number"), "{t}");
    assert!(t.contains("✗ amount 900 is more than the most allowed, 500"), "{t}");
    assert!(t.contains("\"refunded\": 42") && t.contains("\"reason\": \"damaged\""), "{t}");
}

#[test]
fn models_and_config_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let wf = dir.path().join("w.yaml");
    std::fs::write(&wf, "name: w\nsteps:\n  - id: a\n    ai: { model: writer, prompt: hi }\n").expect("write");
    let v = cairn(&db, &["validate", &wf.display().to_string()]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(text(&v).contains("unknown-model") && text(&v).contains("CAIRN_MODEL_WRITER"), "{}", text(&v));
    let r = cairn(&db, &["run", &wf.display().to_string()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r).contains("nothing was run"), "{}", text(&r));
    // The override names a real provider: valid.
    let ok = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["validate", &wf.display().to_string()])
        .env("CAIRN_MODEL_WRITER", "ollama/llama3.2")
        .output()
        .expect("run");
    assert!(ok.status.success(), "{}", text(&ok));
    // A provider whose key is not set is named before anything runs.
    let nokey = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["validate", &wf.display().to_string()])
        .env("CAIRN_MODEL_WRITER", "openai/gpt-4o-mini")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run");
    assert_eq!(nokey.status.code(), Some(1));
    assert!(
        text(&nokey).contains("missing-api-key") && text(&nokey).contains("export OPENAI_API_KEY"),
        "{}",
        text(&nokey)
    );
    let bad = dir.path().join("cairn.yaml");
    std::fs::write(&bad, "models:\n  writer: { provider: nowhere, model: m }\n").expect("write");
    let c = cairn(&db, &["--config", &bad.display().to_string(), "validate", &wf.display().to_string()]);
    assert_eq!(c.status.code(), Some(2));
    assert!(text(&c).contains("provider `nowhere`, which is not defined"), "{}", text(&c));
}
