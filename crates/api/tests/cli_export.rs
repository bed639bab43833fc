//! The real `cairn` binary: `cairn export` and `cairn verify --export`.
#![allow(missing_docs)]

mod common;

use common::{cairn, example, text};

/// `cairn export` writes what `cairn verify --export` checks offline, in
/// both formats; a tampered file is refused naming its line.
#[test]
fn exports_verify_offline_and_tampering_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let ran = cairn(&db, &["run", &example("branch-on-input.yaml"), "--input", "total=250"]);
    assert!(ran.status.success(), "{}", text(&ran));
    let jsonl = dir.path().join("audit.jsonl");
    let out = cairn(&db, &["export", "-o", &jsonl.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let ok = cairn(&db, &["verify", "--export", &jsonl.display().to_string()]);
    assert!(ok.status.success() && text(&ok).contains("intact"), "{}", text(&ok));
    let body = std::fs::read_to_string(&jsonl).expect("read");
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, body.replacen("\\\"ada\\\"", "\\\"eve\\\"", 1)).expect("write");
    let bad = cairn(&db, &["verify", "--export", &tampered.display().to_string()]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("BROKEN") && text(&bad).contains("hash mismatch"), "{}", text(&bad));
    let csv = dir.path().join("audit.csv");
    assert!(cairn(&db, &["export", "--format", "csv", "-o", &csv.display().to_string()]).status.success());
    assert!(dir.path().join("audit.csv.manifest.json").exists());
    assert!(cairn(&db, &["verify", "--export", &csv.display().to_string()]).status.success());
    let no_output = cairn(&db, &["export", "--format", "csv"]);
    assert_eq!(no_output.status.code(), Some(2));
    assert!(text(&no_output).contains("needs --output"), "{}", text(&no_output));
}
