//! `cairn tui` under a real pseudo-terminal (util-linux `script`): a person
//! opens the inbox, picks the approval waiting for them and approves it;
//! the decision is recorded as theirs and the run goes on. (The screens
//! themselves are snapshot-tested with ratatui's test backend in
//! src/tui.rs.) Without a terminal it says what to use instead.
#![allow(clippy::disallowed_methods)] // tests reach the database and the time directly

#[macro_use]
mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::text;

const APPROVAL: &str = "name: pay\nsteps:\n  - id: ask\n    approval:\n      approvers: [boss]\n      summary: \"Pay 120 to ACME?\"\n      content: { amount: 120 }\n  - id: done\n    task: echo\n    with: { paid: 120 }\n";

#[test]
fn a_person_approves_from_the_terminal() {
    if !common::have_script() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("c.db");
    let file = dir.path().join("pay.yaml");
    std::fs::write(&file, APPROVAL).expect("write");
    let o = common::cairn(&db, &["run", file.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(3), "waits for the approval: {}", text(&o));
    let t = text(&o);
    let at = t.find("cairn approve ").expect("the approve command") + "cairn approve ".len();
    let run: String = t[at..].chars().take_while(|c| !c.is_whitespace()).collect();

    // `cairn tui --as boss` in a 120x40 terminal, keys typed one by one.
    let cmd = format!(
        "stty cols 120 rows 40; exec {} tui --as boss --database sqlite://{}",
        env!("CARGO_BIN_EXE_cairn"),
        db.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut keys = child.stdin.take().expect("stdin");
    // What it draws, as it draws it.
    let drawn = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let sink = drawn.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    let screen = || String::from_utf8_lossy(&drawn.lock().expect("lock")).into_owned();
    let wait_for = |what: &str| {
        let start = Instant::now();
        while !screen().contains(what) {
            assert!(start.elapsed() < Duration::from_secs(20), "never drawn: {what:?}\n{}", screen());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut send = |k: &str| {
        keys.write_all(k.as_bytes()).expect("a key");
        keys.flush().expect("flush");
    };
    wait_for("Enter open"); // the runs list
    send("i"); // the inbox
    wait_for("Pay 120 to ACME?");
    send("\r"); // the first item: the approval
    wait_for("a approve");
    send("a"); // approve
    wait_for("approved as boss");
    send("q"); // quit
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("cairn tui did not quit:\n{}", screen());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(keys);
    let _ = reader.join();
    assert!(status.success(), "{}", screen());
    // Recorded as boss's, and the run went on to its end.
    let o = common::cairn(&db, &["events", "--stream", &format!("run-{run}")]);
    let events = text(&o);
    assert!(events.contains("ApprovalDecided") && events.contains(r#"\"decided_by\":\"boss\""#), "{events}");
    let o = common::cairn(&db, &["continue"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = common::cairn(&db, &["show", &run]);
    assert!(text(&o).contains("completed"), "{}", text(&o));
}

#[test]
fn without_a_terminal_it_says_what_to_use() {
    let dir = tempfile::tempdir().expect("dir");
    let o = common::cairn(&dir.path().join("c.db"), &["tui"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("needs a terminal") && text(&o).contains("cairn runs --format json"), "{}", text(&o));
}
