//! The CLI for scripts: `cairn runs` filters (`--workflow`, `--status`,
//! `--since`, `--limit`) and formats (`json`, `ids`), `cairn start NAME`
//! (a published workflow by name; `--wait`), `cairn workflows list|show`,
//! `cairn workflows archive`, `--format json` on history, inbox, audit, costs,
//! keys, projections status and quarantine, `cairn report`, and shell
//! completions. Before: `cairn runs` had no filters (the README
//! scraped it with `awk`), there was no way to start a published workflow
//! by name, and no completions. On SQLite and PostgreSQL.
#![allow(missing_docs)]

mod common;

use common::{example, text};
use serde_json::{Value, json};

fn json_of(url: &str, args: &[&str]) -> Value {
    let out = common::cairn_url(url, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&out)))
}

fn lines(url: &str, args: &[&str]) -> Vec<String> {
    let out = common::cairn_url(url, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn scripting(url: &str) {
    // One completed run, then a published workflow started by name three ways.
    let ran = common::cairn_url(url, &["run", &example("branch-on-input.yaml"), "--input", "total=250"]);
    assert!(ran.status.success(), "{}", text(&ran));
    let published = common::cairn_url(url, &["publish", &example("approve-payment.yaml")]);
    assert!(published.status.success(), "{}", text(&published));

    // Refusals say what was wrong and record nothing.
    let unknown = common::cairn_url(url, &["start", "nope"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("no workflow named `nope`") && text(&unknown).contains("cairn publish"));
    let version = common::cairn_url(url, &["start", "approve-payment@7"]);
    assert!(!version.status.success() && text(&version).contains("has no version 7 (the latest is 1)"));
    let bad = common::cairn_url(url, &["start", "approve-payment", "--input", "amount=oops", "--input", "payee=x"]);
    assert!(!bad.status.success() && text(&bad).contains("/amount") && text(&bad).contains("nothing was started"));
    assert_eq!(lines(url, &["runs", "--format", "ids"]).len(), 1, "no run was recorded by a refusal");

    // Without --wait: the run id, left to a worker (`continue` is one).
    let started = lines(url, &["start", "approve-payment", "-i", "amount=5", "-i", "payee=ACME"]);
    assert_eq!(started.len(), 1, "{started:?}");
    let left = started[0].clone();
    assert!(uuid::Uuid::parse_str(&left).is_ok(), "{left}");
    // --wait drives it here: waiting for the approval, exit 3; as JSON.
    let out = common::cairn_url(
        url,
        &["start", "approve-payment@1", "-i", "amount=7", "-i", "payee=ACME", "--wait", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let waited: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(waited["status"], "waiting", "{waited}");
    let done = json_of(url, &["start", "order-routing", "-i", "total=20", "--wait", "--format", "json"]);
    assert_eq!(
        (done["status"].as_str(), &done["output"]),
        (Some("completed"), &json!({"charged": 24.0, "customer": "ada"}))
    );

    // `runs`: filters and formats.
    let all = json_of(url, &["runs", "--format", "json"]);
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.windows(2).all(|w| w[0]["started_at"].as_str() <= w[1]["started_at"].as_str()), "oldest first");
    for field in ["run_id", "workflow", "version", "status", "current_step", "started_at", "ended_at", "error_kind"] {
        assert!(all[0].get(field).is_some(), "{field} in {}", all[0]);
    }
    let completed = lines(url, &["runs", "--status", "completed", "--format", "ids"]);
    assert_eq!(completed.len(), 2, "{completed:?}");
    assert_eq!(completed[1], done["run_id"].as_str().expect("id"), "the newest last");
    let payments = lines(url, &["runs", "--workflow", "approve-payment", "--format", "ids"]);
    assert_eq!(payments, [left.clone(), waited["run_id"].as_str().expect("id").to_owned()]);
    assert_eq!(
        lines(url, &["runs", "--workflow", "approve-payment", "--limit", "1", "--format", "ids"]),
        payments[1..]
    );
    assert_eq!(lines(url, &["runs", "--since", "1h", "--format", "ids"]).len(), 4);
    assert!(lines(url, &["runs", "--since", "2099-01-01", "--format", "ids"]).is_empty());
    assert!(lines(url, &["runs", "--since", "2099-01-01T00:00:00+02:00", "--format", "ids"]).is_empty());
    let table = lines(url, &["runs", "--status", "waiting"]);
    assert!(table[0].starts_with("run ") && table.len() == 2 && table[1].contains("approve-payment"), "{table:?}");
    let since = common::cairn_url(url, &["runs", "--since", "tomorrow"]);
    assert_eq!(since.status.code(), Some(2), "{}", text(&since));
    assert!(text(&since).contains("`tomorrow` is not a time") && text(&since).contains("2026-12-01"));
    let status = common::cairn_url(url, &["runs", "--status", "done"]);
    assert!(!status.status.success() && text(&status).contains("completed"), "{}", text(&status));

    // The run left to a worker is driven by one.
    assert!(common::cairn_url(url, &["continue"]).status.success());
    let left_now = json_of(url, &["runs", "--workflow", "approve-payment", "--status", "waiting", "--format", "json"]);
    assert_eq!(left_now.as_array().map(Vec::len), Some(2), "both wait for the approval now: {left_now}");

    // The other read commands as JSON.
    let routed = done["run_id"].as_str().expect("id");
    let history = json_of(url, &["history", routed, "--format", "json"]);
    assert_eq!((history["run_id"].as_str(), history["status"].as_str()), (Some(routed), Some("completed")));
    let entries = history["entries"].as_array().expect("entries");
    assert!(entries.iter().any(|e| e["step_id"] == "greet" && e["status"] == "completed"), "{history}");
    let inbox = json_of(url, &["inbox", "--format", "json"]);
    assert_eq!(inbox.as_array().map(Vec::len), Some(2), "{inbox}");
    assert!(inbox[0]["kind"] == "approval" && inbox[0]["step_id"] == "approve", "{inbox}");
    let audit = json_of(url, &["audit", "--run", routed, "--format", "json"]);
    let audit = audit.as_array().expect("array");
    assert!(!audit.is_empty() && audit.iter().all(|a| a["hash"].as_str().is_some_and(|h| h.len() == 64)), "{audit:?}");
    assert!(json_of(url, &["costs", "--by", "model", "--format", "json"]).is_array());

    // `report`: runs and failure rate by workflow, attempts by step, p50/p95.
    let report = json_of(url, &["report", "--since", "1h", "--format", "json"]);
    let routing = &report["workflows"]["order-routing"];
    assert_eq!((routing["total"].as_u64(), routing["by_status"]["completed"].as_u64()), (Some(2), Some(2)), "{report}");
    assert_eq!(routing["failure_rate"], 0.0);
    assert!(routing["p50_ms"].is_u64() && routing["p95_ms"].as_u64() >= routing["p50_ms"].as_u64(), "{routing}");
    let payment = &report["workflows"]["approve-payment"];
    assert_eq!((payment["total"].as_u64(), payment["by_status"]["waiting"].as_u64()), (Some(2), Some(2)), "{report}");
    assert!(payment["failure_rate"].is_null() && payment["p50_ms"].is_null(), "nothing ended: {payment}");
    let steps = report["steps"].as_array().expect("steps");
    let standard =
        steps.iter().find(|s| s["workflow"] == "order-routing" && s["step"] == "standard").expect("standard");
    assert_eq!(
        (standard["total"].as_u64(), standard["by_status"]["failed"].as_u64()),
        (Some(3), Some(2)),
        "{standard}"
    );
    let text_report = lines(url, &["report", "--workflow", "order-routing"]);
    assert!(text_report.iter().any(|l| l.starts_with("order-routing") && l.contains("66.7%")), "{text_report:?}");
    assert!(!text_report.iter().any(|l| l.contains("approve-payment")), "filtered: {text_report:?}");
    let empty = json_of(url, &["report", "--since", "2099-01-01", "--format", "json"]);
    assert!(empty["workflows"].as_object().is_some_and(|w| w.is_empty()) && empty["steps"] == json!([]), "{empty}");
    let swapped = common::cairn_url(url, &["report", "--since", "1h", "--until", "2h"]);
    assert!(!swapped.status.success() && text(&swapped).contains("swap them"), "{}", text(&swapped));

    // `workflows list|show`.
    let list = json_of(url, &["workflows", "list", "--format", "json"]);
    let names: Vec<&str> = list.as_array().expect("array").iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, ["approve-payment", "order-routing"]);
    assert_eq!(list[0]["latest_version"], 1);
    let table = lines(url, &["workflows", "list"]);
    assert!(table.len() == 3 && table[1].starts_with("approve-payment"), "{table:?}");
    let show = json_of(url, &["workflows", "show", "order-routing@1", "--format", "json"]);
    let source = std::fs::read_to_string(example("branch-on-input.yaml")).expect("example");
    assert_eq!((show["version"].as_u64(), show["source"].as_str()), (Some(1), Some(source.as_str())));
    assert_eq!(show["versions"][0]["published_by"], "cli", "{show}");
    let text_show = text(&common::cairn_url(url, &["workflows", "show", "approve-payment"]));
    assert!(text_show.contains("workflow approve-payment") && text_show.contains("--- v1 ---"), "{text_show}");
    let missing = common::cairn_url(url, &["workflows", "show", "order-routing@3"]);
    assert!(!missing.status.success() && text(&missing).contains("has no version 3; it has 1"), "{}", text(&missing));
    let none = common::cairn_url(url, &["workflows", "show", "nope"]);
    assert!(!none.status.success() && text(&none).contains("cairn workflows list"), "{}", text(&none));

    // An archived workflow takes no new runs, from the CLI as over HTTP.
    let archived = common::cairn_url(url, &["workflows", "archive", "order-routing", "--as", "ops"]);
    assert!(archived.status.success(), "{}", text(&archived));
    let list = json_of(url, &["workflows", "list", "--format", "json"]);
    assert_eq!((list[1]["name"].as_str(), list[1]["archived"].as_bool()), (Some("order-routing"), Some(true)));
    let refused = common::cairn_url(url, &["start", "order-routing", "-i", "total=20"]);
    assert!(!refused.status.success() && text(&refused).contains("is archived"), "{}", text(&refused));
    assert_eq!(lines(url, &["runs", "--workflow", "order-routing", "--format", "ids"]).len(), 2, "nothing started");
    let audit = text(&common::cairn_url(url, &["audit", "--actor", "ops"]));
    assert!(audit.contains("order-routing"), "the archive is in the audit log: {audit}");

    // The other lists as JSON.
    let quarantine = json_of(url, &["quarantine", "list", "--format", "json"]);
    assert_eq!(quarantine, json!({"quarantined": [], "probation": []}));
    let status = json_of(url, &["projections", "status", "--format", "json"]);
    let status = status.as_array().expect("array");
    assert!(!status.is_empty() && status.iter().all(|p| p["lag_events"] == 0 && p["stopped"].is_null()), "{status:?}");
    let created = common::cairn_url(url, &["keys", "create", "--name", "bot", "--role", "viewer"]);
    assert!(created.status.success(), "{}", text(&created));
    let keys = json_of(url, &["keys", "list", "--format", "json"]);
    assert_eq!(
        (keys[0]["name"].as_str(), keys[0]["role"].as_str(), keys[0]["revoked"].as_bool()),
        (Some("bot"), Some("viewer"), Some(false))
    );
    assert!(
        !String::from_utf8_lossy(&created.stdout).trim().is_empty()
            && !keys.to_string().contains(String::from_utf8_lossy(&created.stdout).trim()),
        "never the secret"
    );

    // An idempotency key starts at most one run (per identity); a retry
    // prints the first run; the same key with other inputs is refused.
    let keyed = |amount: &str, extra: &[&str]| {
        let mut a = vec!["start", "approve-payment", "-i", amount, "-i", "payee=K", "--idempotency-key", "k1"];
        a.extend_from_slice(extra);
        common::cairn_url(url, &a)
    };
    let first = keyed("amount=9", &[]);
    assert!(first.status.success(), "{}", text(&first));
    let again = keyed("amount=9", &[]);
    assert!(again.status.success() && text(&again).contains("started with this key already"), "{}", text(&again));
    assert_eq!(again.stdout, first.stdout, "the same run");
    let other = keyed("amount=10", &[]);
    assert!(!other.status.success() && text(&other).contains("another request"), "{}", text(&other));
    let someone = keyed("amount=9", &["--as", "someone"]);
    assert!(someone.status.success() && someone.stdout != first.stdout, "a key is per identity: {}", text(&someone));
    assert_eq!(
        lines(url, &["runs", "--workflow", "approve-payment", "--format", "ids"]).len(),
        4,
        "two new runs, not four"
    );
}

#[test]
fn the_cli_scripts_well_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    scripting(&format!("sqlite://{}", dir.path().join("c.db").display()));
}

#[tokio::test]
async fn the_cli_scripts_well_on_postgres() {
    let Some(url) = common::fresh_pg_url().await else { return };
    tokio::task::spawn_blocking(move || scripting(&url)).await.expect("join");
}

/// Completions for every shell clap knows; bash's parses (`bash -n`) and
/// completes the subcommands added here. Building them checks the whole
/// command tree (before: `cancel --as` clashed with the global `--as`).
#[test]
fn completions_are_printed_for_every_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = common::cairn(&db, &["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 10_000, "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for sub in ["workflows", "start", "runs", "completions"] {
            assert!(script.contains(sub), "{shell} completes `{sub}`");
        }
        if shell == "bash" {
            let path = dir.path().join("cairn.bash");
            std::fs::write(&path, &out.stdout).expect("write");
            let check = std::process::Command::new("bash").arg("-n").arg(&path).output().expect("bash");
            assert!(check.status.success(), "{}", text(&check));
        }
    }
    assert!(!db.exists(), "printing completions touches no database");
    let bad = common::cairn(&db, &["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}
