//! Compliance exports of a real log: JSONL and CSV verify offline, every
//! kind of tampering is named at its line, filters keep chains checkable,
//! and the Python check in docs/compliance.md agrees.
#![allow(missing_docs)]

use std::io::Cursor;
use std::sync::Arc;

use cairn_events::export::{ExportFilter, Format, export, verify_export};
use cairn_events::{Event, EventStore, ExpectedVersion, Metadata, NewEvent, StepStarted};
use serde_json::json;

async fn log() -> (tempfile::TempDir, Arc<dyn EventStore>) {
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn EventStore> =
        cairn_events::sqlite::SqliteStore::open(dir.path().join("c.db"), Default::default()).await.expect("open");
    for i in 0..12u64 {
        let e = Event::StepStarted(StepStarted {
            step_id: format!("s{i}"),
            attempt: 1,
            // Commas, quotes, new lines and non-ASCII: the CSV must carry them.
            input: json!({ "text": format!("a,b \"q\" {i}\nline two é ✓"), "n": i }),
            scope: String::new(),
            at: None,
        });
        store
            .append(
                &format!("run-{}", i % 3),
                ExpectedVersion::Any,
                vec![NewEvent::from_event(&e, Metadata::by("ada"))],
            )
            .await
            .expect("append");
    }
    (dir, store)
}

async fn jsonl(store: &Arc<dyn EventStore>, filter: &ExportFilter) -> String {
    let mut out = Vec::new();
    export(&**store, filter, Format::Jsonl, &mut out, None).await.expect("export");
    String::from_utf8(out).expect("utf-8")
}

fn check(text: &str) -> Result<cairn_events::export::Manifest, cairn_events::export::ExportBreak> {
    verify_export(&mut Cursor::new(text.as_bytes()), Format::Jsonl, None)
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test]
async fn a_jsonl_export_verifies_and_every_tampering_is_named() {
    let (_d, store) = log().await;
    let text = jsonl(&store, &ExportFilter::default()).await;
    let m = check(&text).expect("intact");
    assert_eq!((m.count, m.streams, m.first_position, m.last_position), (12, 3, 1, 12));
    let l = lines(&text);
    assert_eq!(l.len(), 12 + 3 + 1, "records, heads, manifest");

    // A changed byte in a payload.
    let mut t = l.clone();
    t[4] = t[4].replace("line two", "line 2");
    let b = check(&join(&t)).expect_err("broken");
    assert_eq!((b.line, b.position), (5, Some(5)));
    assert!(b.detail.contains("hash mismatch"), "{b}");

    // A record removed from the middle of a stream (run-1's version 2 is position 5).
    let mut t = l.clone();
    t.remove(4);
    let b = check(&join(&t)).expect_err("broken");
    assert!(b.detail.contains("records are missing") && b.detail.contains("run-1"), "{b}");

    // Two records swapped.
    let mut t = l.clone();
    t.swap(2, 3);
    let b = check(&join(&t)).expect_err("broken");
    assert_eq!(b.line, 4, "{b}");

    // Cut short: no manifest.
    let b = check(&join(&l[..13])).expect_err("broken");
    assert!(b.detail.contains("cut short"), "{b}");

    // A record dropped at the end, manifest kept: the count and hash differ.
    let mut t = l.clone();
    t.remove(11);
    let b = check(&join(&t)).expect_err("broken");
    assert!(b.detail.contains("head of run-2") || b.detail.contains("manifest"), "{b}");

    // A head or the manifest edited.
    let mut t = l.clone();
    t[15] = t[15].replace("\"count\":12", "\"count\":11");
    assert!(check(&join(&t)).expect_err("broken").detail.contains("counts 11 records"));
    let mut t = l.clone();
    let last_hash = serde_json::from_str::<serde_json::Value>(&t[12]).expect("head")["head"]["last_hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    t[12] = t[12].replace(&last_hash, &"f".repeat(64));
    assert!(check(&join(&t)).expect_err("broken").detail.contains("does not match its records"));
}

#[tokio::test]
async fn a_csv_export_carries_awkward_payloads_and_verifies() {
    let (_d, store) = log().await;
    let (mut csv, mut side) = (Vec::new(), Vec::new());
    export(&*store, &ExportFilter::default(), Format::Csv, &mut csv, Some(&mut side)).await.expect("export");
    let m = verify_export(&mut Cursor::new(&csv), Format::Csv, Some(&mut Cursor::new(&side))).expect("intact");
    assert_eq!(m.count, 12);
    let text = String::from_utf8(csv.clone()).expect("utf-8");
    assert!(text.starts_with("position,stream_id,"));
    // The payload's JSON-escaped quotes (\") are doubled inside a quoted field.
    assert!(text.contains(r#"\""q\"""#), "quotes doubled inside quoted fields");
    let tampered = text.replacen("é", "e", 1);
    let b = verify_export(&mut Cursor::new(tampered.as_bytes()), Format::Csv, Some(&mut Cursor::new(&side)))
        .expect_err("broken");
    assert!(b.detail.contains("hash mismatch"), "{b}");
    assert_eq!(b.position, Some(1));
}

#[tokio::test]
async fn filtered_exports_stay_checkable() {
    let (_d, store) = log().await;
    let one = jsonl(&store, &ExportFilter { stream: Some("run-1".into()), ..Default::default() }).await;
    let m = check(&one).expect("intact");
    assert_eq!((m.count, m.streams), (4, 1));
    // From the middle of the log on: later streams start past version 1,
    // anchored by their heads' first_prev_hash.
    let all = store.read_all(1, 100).await.expect("read");
    let since = chrono::DateTime::parse_from_rfc3339(&all[6].recorded_at).expect("time").with_timezone(&chrono::Utc);
    let part = jsonl(&store, &ExportFilter { since: Some(since), ..Default::default() }).await;
    let m = check(&part).expect("intact");
    assert!(m.count >= 6 && m.first_position >= 7 - 1, "{m:?}");
    let heads: Vec<serde_json::Value> =
        part.lines().filter(|l| l.starts_with("{\"head\"")).map(|l| serde_json::from_str(l).expect("json")).collect();
    assert!(heads.iter().all(|h| h["head"]["first_prev_hash"] != "0".repeat(64)), "{heads:?}");
}

#[tokio::test]
async fn the_python_check_in_docs_agrees() {
    let Ok(v) = std::process::Command::new("python3").arg("--version").output() else {
        assert!(std::env::var("CI").is_err(), "python3 is needed under CI");
        eprintln!("SKIPPED: no python3");
        return;
    };
    assert!(v.status.success());
    let md = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/compliance.md"))
        .expect("docs/compliance.md");
    let script = md.split("```python\n").nth(1).and_then(|s| s.split("```").next()).expect("a python block");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("check.py"), script).expect("write");
    let (_d, store) = log().await;
    let text = jsonl(&store, &ExportFilter::default()).await;
    let run = |name: &str, body: &str| {
        std::fs::write(dir.path().join(name), body).expect("write");
        std::process::Command::new("python3")
            .arg(dir.path().join("check.py"))
            .arg(dir.path().join(name))
            .output()
            .expect("python3")
    };
    let ok = run("good.jsonl", &text);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "intact");
    let bad = run("bad.jsonl", &text.replacen("line two", "line 2", 1));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hash mismatch"), "{}", String::from_utf8_lossy(&bad.stderr));
    let cut: String = text.lines().take(12).map(|l| format!("{l}\n")).collect();
    assert!(String::from_utf8_lossy(&run("cut.jsonl", &cut).stderr).contains("cut short"));
}
