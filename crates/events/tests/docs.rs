//! docs/events.md is generated from the catalog types; this fails when it drifts.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

#[test]
fn events_md_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md");
    let generated = cairn_events::docs::events_markdown();
    if std::env::var("CAIRN_UPDATE_DOCS").is_ok() {
        std::fs::write(&path, &generated).expect("write docs/events.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/events.md is out of date with the event catalog; run `CAIRN_UPDATE_DOCS=1 cargo test -p cairn-events --test docs` and commit the result"
    );
}

#[test]
fn every_event_has_a_schema_and_is_documented() {
    let md = cairn_events::docs::events_markdown();
    let catalog = cairn_events::catalog();
    assert!(catalog.len() >= 26);
    for info in &catalog {
        assert!(md.contains(&format!("### {}\n", info.event_type)), "{} undocumented", info.event_type);
        assert!(info.schema.as_value().get("properties").is_some(), "{} has no schema properties", info.event_type);
    }
}

/// The Python check printed in docs/events.md verifies a real log written by
/// the store, and rejects a tampered one: the encoding is specified well
/// enough to check without Cairn.
#[tokio::test]
async fn documented_python_verifier_checks_a_real_log() {
    use cairn_events::{Event, EventStore, ExpectedVersion, Metadata, NewEvent, StepStarted};
    let Ok(status) = std::process::Command::new("python3").arg("--version").output() else {
        assert!(std::env::var("CI").is_err(), "python3 is needed under CI");
        eprintln!("SKIPPED: no python3");
        return;
    };
    assert!(status.status.success());
    let md = cairn_events::docs::events_markdown();
    let script = md.split("```python\n").nth(1).and_then(|s| s.split("```").next()).expect("python block in docs");

    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("cairn.db");
    let store = cairn_events::sqlite::SqliteStore::open(&db, Default::default()).await.expect("open");
    for i in 0..4u64 {
        let e = Event::StepStarted(StepStarted {
            step_id: format!("s{i}"),
            attempt: 1,
            input: serde_json::json!({"é": i}),
            scope: String::new(),
            at: None,
        });
        let mut meta = Metadata::by("tester");
        meta.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
        store
            .append(&format!("run-{}", i % 2), ExpectedVersion::Any, vec![NewEvent::from_event(&e, meta)])
            .await
            .expect("append");
    }
    store.close().await;
    let run = |script: &str| {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script.replace("\"cairn.db\"", &format!("{:?}", db.display().to_string())))
            .output()
            .expect("run python3")
    };
    let out = run(script);
    assert!(out.status.success(), "python verifier failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "intact");

    let conn = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.expect("raw");
    sqlx::query("DROP TRIGGER events_are_immutable_update").execute(&conn).await.expect("drop trigger");
    sqlx::query("UPDATE events SET payload = '{}' WHERE global_position = 3").execute(&conn).await.expect("tamper");
    conn.close().await;
    let out = run(script);
    assert!(!out.status.success(), "python verifier missed tampering");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hash mismatch"));
}
