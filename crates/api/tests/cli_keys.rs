//! The real `cairn` binary: API keys are shown once, stored hashed, checked,
//! revoked, and both acts are in the audit log.
#![allow(missing_docs)]

mod common;

use std::process::Command;

use common::{cairn, text};

fn check(db: &std::path::Path, key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["keys", "check"])
        .env("CAIRN_DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("CAIRN_API_KEY", key)
        .output()
        .expect("run")
}

#[test]
fn keys_are_shown_once_stored_hashed_checked_and_revoked() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let made = cairn(&db, &["--as", "root", "keys", "create", "--name", "deploy", "--role", "operator"]);
    assert!(made.status.success(), "{}", text(&made));
    let key = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    assert!(key.starts_with("cairn_") && key.len() > 70, "{key}");
    assert!(text(&made).contains("only time it is shown"));
    let ok = check(&db, &key);
    assert!(
        ok.status.success() && text(&ok).contains("`deploy`") && text(&ok).contains("role operator"),
        "{}",
        text(&ok)
    );
    assert_eq!(check(&db, &format!("{key}x")).status.code(), Some(1));
    // Listing and the log never show the secret.
    let secret = key.rsplit('_').next().expect("secret");
    let list = cairn(&db, &["keys", "list"]);
    assert!(text(&list).contains("deploy") && !text(&list).contains(secret), "{}", text(&list));
    let events = cairn(&db, &["events"]);
    assert!(text(&events).contains("ApiKeyCreated") && !text(&events).contains(secret));
    // Mistakes are refused with what to do.
    let dup = cairn(&db, &["keys", "create", "--name", "deploy", "--role", "viewer"]);
    assert!(!dup.status.success() && text(&dup).contains("already named"), "{}", text(&dup));
    let role = cairn(&db, &["keys", "create", "--name", "x", "--role", "god"]);
    assert_eq!(role.status.code(), Some(1));
    assert!(text(&role).contains("admin, operator, approver, viewer"), "{}", text(&role));
    let revoked = cairn(&db, &["--as", "root", "keys", "revoke", "deploy", "--reason", "rotated"]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert_eq!(check(&db, &key).status.code(), Some(1), "a revoked key no longer works");
    let again = cairn(&db, &["keys", "revoke", "deploy"]);
    assert_eq!(again.status.code(), Some(1));
    let audit = text(&cairn(&db, &["audit", "--actor", "root"]));
    assert!(audit.contains("create API key") && audit.contains("revoke API key"), "{audit}");
}
