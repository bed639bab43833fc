//! The read side through the real binary: queries answer from the read
//! models, and a projection worker SIGKILLed mid-batch again and again while
//! events keep arriving ends with the same tables as a rebuild.
#![allow(missing_docs)]

mod common;

use common::{cairn, example, text};

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{Event, EventStore, ExpectedVersion, Metadata, NewEvent};
use cairn_projections::{ReadDb, Val, Worker, models};
use serde_json::json;

#[test]
fn runs_history_audit_and_status_answer_from_the_read_models() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let run = cairn(&db, &["run", &example("saga-booking.yaml")]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    let runs = cairn(&db, &["runs"]);
    let line = text(&runs).lines().nth(1).expect("a run").to_owned();
    assert!(line.contains("saga-booking") && line.contains("failed"), "{line}");
    let id = line.split_whitespace().next().expect("id").to_owned();

    let history = text(&cairn(&db, &["history", &id]));
    for expected in [
        "error [card.declined]",
        "book_hotel attempt#1 completed",
        "check_card branch taken — `inputs.card == 'valid'` = false → declined",
        "declined attempt#1 failed in 0 ms [card.declined]",
        "cancel_flight attempt#1 completed",
    ] {
        assert!(history.contains(expected), "`{expected}` missing from:\n{history}");
    }
    // Compensations came after the failure, in reverse order.
    let pos = |s: &str| history.find(s).unwrap_or(usize::MAX);
    assert!(pos("declined attempt") < pos("cancel_hotel") && pos("cancel_hotel") < pos("cancel_flight"), "{history}");

    let audit = text(&cairn(&db, &["audit", "--actor", "cli"]));
    let rows: Vec<&str> = audit.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "publish and start were done by cli:\n{audit}");
    assert!(rows[0].contains("publish workflow") && rows[1].contains("start run"), "{audit}");
    let failures = text(&cairn(&db, &["audit", "--run", &id]));
    assert!(failures.lines().any(|l| l.contains("fail step") && l.contains("failure")), "{failures}");

    let status = cairn(&db, &["projections", "status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert_eq!(text(&status).lines().filter(|l| l.ends_with("current")).count(), 5, "{}", text(&status));

    let rebuilt = cairn(&db, &["projections", "rebuild", "--all"]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    assert_eq!(text(&cairn(&db, &["history", &id])), history, "a rebuild gives the same history");
    let unknown = cairn(&db, &["projections", "rebuild", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown).contains("known: runs, step_history, costs, audit_log, inbox"), "{}", text(&unknown));
    let missing = cairn(&db, &["history", "01a2020b-0000-0000-0000-000000000000"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
}

async fn dump(db: &ReadDb) -> BTreeMap<String, Vec<Vec<Val>>> {
    let mut out = BTreeMap::new();
    for p in models::all() {
        for t in p.tables() {
            out.insert((*t).to_owned(), db.rows(&format!("SELECT * FROM {t} ORDER BY 1, 2"), &[]).await.expect("dump"));
        }
    }
    out
}

/// Appends small runs until `stop`; returns how many events it wrote.
async fn keep_writing(store: Arc<dyn EventStore>, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut n = 0u64;
    let mut r = 0u128;
    while !*stop.borrow() {
        let id = uuid::Uuid::from_u128(r + 1);
        r += 1;
        let events = [
            Event::RunStarted(cairn_events::RunStarted {
                run_id: id,
                workflow: "w".into(),
                workflow_version: 1,
                definition_hash: "h".into(),
                inputs: json!({}),
                started_by: "writer".into(),
                idempotency_key: None,
                parent: None,
                fork_of: None,
                settings: None,
                started_at: None,
                schedule: None,
                trace_parent: None,
            }),
            Event::StepStarted(cairn_events::StepStarted {
                step_id: "a".into(),
                attempt: 1,
                input: json!({}),
                scope: String::new(),
                at: None,
            }),
            Event::StepCompleted(cairn_events::StepCompleted {
                step_id: "a".into(),
                attempt: 1,
                output: json!({ "r": r as u64 }),
                duration_ms: 1,
            }),
            Event::RunCompleted(cairn_events::RunCompleted { output: json!({}) }),
        ];
        for (i, e) in events.iter().enumerate() {
            store
                .append(
                    &cairn_events::run_stream(id),
                    ExpectedVersion::Exact(i as u64),
                    vec![NewEvent::from_event(e, Metadata::by("writer"))],
                )
                .await
                .expect("append");
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_worker_killed_mid_batch_again_and_again_ends_equal_to_a_rebuild() {
    let dir = tempfile::tempdir().expect("tmp");
    let db_path = dir.path().join("c.db");
    let url = format!("sqlite://{}", db_path.display());
    let store = cairn_events::open(&url).await.expect("store");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(keep_writing(store.clone(), stop));
    // Where `cairn` keeps the read models of this SQLite file.
    let read = ReadDb::open(&cairn_projections::default_read_url(&url)).await.expect("read db");
    let progress = |read: ReadDb| async move {
        read.rows("SELECT COALESCE(SUM(position), 0) FROM cairn_projections", &[])
            .await
            .ok()
            .and_then(|r| r.first().and_then(|r| r.first()).and_then(Val::as_int))
            .unwrap_or(0)
    };
    for round in 0..6 {
        let before = progress(read.clone()).await;
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["projections", "run", "--batch", "3", "--poll-ms", "10"])
            .env("CAIRN_DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Kill once it has committed some batches: it is then mid-batch
        // most of the time, with events still arriving.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while progress(read.clone()).await < before + 150 + round * 37 {
            assert!(std::time::Instant::now() < deadline, "the worker made no progress");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    stop_tx.send(true).expect("stop");
    let written = writer.await.expect("writer");
    // A last worker finishes the job.
    let last = Worker::new(store.clone(), read.clone(), models::all()).await.expect("worker");
    last.catch_up().await.expect("catch up");
    for s in last.status().await.expect("status") {
        assert_eq!((s.position, s.error.clone()), (written, None), "{}", s.name);
    }
    let live = dump(&read).await;
    assert_eq!(live["audit_log"].len() as u64, written, "every event once in the audit log");
    assert_eq!(live["runs"].len() as u64, written / 4);
    // The same log rebuilt from nothing.
    let fresh = ReadDb::sqlite(&dir.path().join("fresh.db")).await.expect("fresh");
    Worker::new(store, fresh.clone(), models::all()).await.expect("worker").catch_up().await.expect("catch up");
    assert_eq!(dump(&fresh).await, live, "killed-and-resumed tables equal a rebuild");
}

/// While `cairn run` waits, its in-process projections already show the
/// run as waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_run_alongside_cairn_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let wf = dir.path().join("pause.yaml");
    std::fs::write(&wf, "name: pause\nsteps:\n  - id: nap\n    wait: { for: 3s }\n  - id: after\n    task: echo\n")
        .expect("write");
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["run", &wf.display().to_string()])
        .env("CAIRN_DATABASE_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        assert!(std::time::Instant::now() < deadline, "the run never showed as waiting");
        if let Ok(read) = ReadDb::open(&cairn_projections::default_read_url(&url)).await
            && let Ok(rows) = read.rows("SELECT status, current_step FROM runs", &[]).await
            && let Some(row) = rows.first()
        {
            break row.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, vec![Val::from("waiting"), Val::from("nap")]);
    assert!(child.try_wait().expect("poll").is_none(), "seen while the run still waits");
    assert!(child.wait().expect("wait").success());
    let read = ReadDb::open(&cairn_projections::default_read_url(&url)).await.expect("read");
    let rows = read.rows("SELECT status FROM runs", &[]).await.expect("rows");
    assert_eq!(rows, vec![vec![Val::from("completed")]], "and complete when it returns");
}

/// The reproducer of a loop stopping the history for good: run the loop
/// example, then another run; `projections status` is current, nothing is
/// stopped, and `history` lists every visit of the loop and the later run.
fn a_loop_keeps_the_history_current(url: &str) {
    let run = common::cairn_url(url, &["run", &example("loop-until-done.yaml"), "--input", "target=3"]);
    assert!(run.status.success(), "{}", text(&run));
    let again = common::cairn_url(url, &["run", &example("branch-on-input.yaml"), "--input", "total=250"]);
    assert!(again.status.success(), "{}", text(&again));
    let status = text(&common::cairn_url(url, &["projections", "status"]));
    assert!(!status.contains("STOPPED"), "{status}");
    assert!(status.contains("step_history"), "{status}");
    let runs = text(&common::cairn_url(url, &["runs"]));
    let id_of = |wf: &str| -> String {
        let line = runs.lines().find(|l| l.contains(wf)).unwrap_or_else(|| panic!("{wf} in {runs}"));
        line.split_whitespace().next().expect("id").to_owned()
    };
    let history = text(&common::cairn_url(url, &["history", &id_of("loop-until-done")]));
    let counts: Vec<&str> = history.lines().filter(|l| l.contains(" count attempt#")).collect();
    assert_eq!(counts.len(), 3, "every visit of `count`:\n{history}");
    assert!(counts[1].contains("attempt#2 completed (visit 2)"), "{history}");
    assert!(counts[2].contains("attempt#3 completed (visit 3)"), "{history}");
    let later = text(&common::cairn_url(url, &["history", &id_of("order-routing")]));
    assert!(later.contains("greet attempt#1 completed"), "the later run is in the history too:\n{later}");
}

#[test]
fn a_loop_keeps_the_history_current_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    a_loop_keeps_the_history_current(&format!("sqlite://{}", dir.path().join("c.db").display()));
}

#[tokio::test]
async fn a_loop_keeps_the_history_current_on_postgres() {
    let Some(url) = common::fresh_pg_url().await else { return };
    tokio::task::spawn_blocking(move || a_loop_keeps_the_history_current(&url)).await.expect("join");
}

/// A mistyped database on a read command says so and creates nothing
/// (before: the directories and empty databases were created).
#[test]
fn read_commands_refuse_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nonexistent/dir/x.db");
    let url = format!("sqlite://{}", missing.display());
    for args in [&["runs"][..], &["history", "01a2"], &["verify"], &["projections", "status"], &["audit"]] {
        let out = common::cairn_url(&url, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("there is no event log at"), "{args:?}: {}", text(&out));
    }
    assert!(!dir.path().join("nonexistent").exists(), "nothing was created");
}

/// The event log, its WAL and the read models are created owner-only (0600).
#[cfg(unix)]
#[test]
fn database_files_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    assert!(cairn(&db, &["run", &example("branch-on-input.yaml"), "--input", "total=250"]).status.success());
    assert!(cairn(&db, &["runs"]).status.success());
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.ends_with(".db") || name.ends_with("-wal") || name.ends_with("-shm") || name == "token.key" {
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
            seen += 1;
        }
    }
    assert!(seen >= 3, "the log, the read models and the key at least");
}

/// An event the `runs` read model cannot apply (the same run started twice)
/// is parked; the CLI shows, lists and skips it, and the skip is in the
/// audit log.
async fn a_parked_event_is_shown_listed_and_skipped_on_the_record(url: String) {
    let store = cairn_events::open(&url).await.expect("store");
    let id = uuid::Uuid::now_v7();
    let started = Event::RunStarted(cairn_events::RunStarted {
        run_id: id,
        workflow: "w".into(),
        workflow_version: 1,
        definition_hash: "h".into(),
        inputs: json!({}),
        started_by: "ada".into(),
        idempotency_key: None,
        parent: None,
        fork_of: None,
        settings: None,
        started_at: None,
        schedule: None,
        trace_parent: None,
    });
    let ev = || vec![NewEvent::from_event(&started, Metadata::by("ada"))];
    let stream = cairn_events::run_stream(id);
    store.append(&stream, ExpectedVersion::NoStream, ev()).await.expect("first");
    store.append(&stream, ExpectedVersion::Exact(1), ev()).await.expect("second");
    let bad = store.head_position().await.expect("head").to_string();
    drop(store);
    let url2 = url.clone();
    let bad2 = bad.clone();
    tokio::task::spawn_blocking(move || {
        // A read command brings the read models up to date.
        let runs = common::cairn_url(&url2, &["runs"]);
        assert!(runs.status.success(), "{}", text(&runs));
        let status = text(&common::cairn_url(&url2, &["projections", "status"]));
        assert!(status.contains("1 parked (cairn projections parked runs)"), "{status}");
        assert!(!status.contains("STOPPED"), "{status}");
        let parked = text(&common::cairn_url(&url2, &["projections", "parked"]));
        assert!(parked.contains(&format!("runs {bad2} RunStarted")), "{parked}");
        let skip = common::cairn_url(&url2, &["projections", "skip", "runs", &bad2, "--reason", "a duplicate start"]);
        assert!(skip.status.success(), "{}", text(&skip));
        assert!(text(&common::cairn_url(&url2, &["projections", "parked", "runs"])).contains("no parked events"));
        let audit = text(&common::cairn_url(&url2, &["audit"]));
        assert!(audit.contains("skip parked event"), "{audit}");
    })
    .await
    .expect("join");
}

#[tokio::test]
async fn a_parked_event_is_shown_listed_and_skipped_on_the_record_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    a_parked_event_is_shown_listed_and_skipped_on_the_record(format!("sqlite://{}", dir.path().join("c.db").display()))
        .await;
}

#[tokio::test]
async fn a_parked_event_is_shown_listed_and_skipped_on_the_record_on_postgres() {
    let Some(url) = common::fresh_pg_url().await else { return };
    a_parked_event_is_shown_listed_and_skipped_on_the_record(url).await;
}
