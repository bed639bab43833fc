//! `cairn mcp` driven by a real MCP client, the official Python SDK
//! (`tests/mcp_client.py`, from PyPI `mcp`; required under CI), on SQLite
//! and PostgreSQL: over stdio (`cairn mcp --as ana`) and over streamable
//! HTTP (`cairn serve`'s `/mcp` with API keys). The client initializes,
//! lists the tools, publishes a workflow whose run fails, plans the resume,
//! tries it without `confirm` (nothing is recorded), resumes with it, and the
//! run completes; it reads the contracts resource and a prompt. Over HTTP a
//! viewer key may read the run but is refused the resume.
#![allow(clippy::disallowed_methods)] // tests reach the database and the time directly

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;
#[allow(unreachable_pub)]
#[path = "../../runtime/tests/common/servers.rs"]
mod servers;

use serde_json::{Value, json};
use server::Server;

/// The Python with the MCP SDK; `None` (SKIPPED) outside CI without it.
fn python() -> Option<std::path::PathBuf> {
    let python = servers::tool("python")?;
    let ok = std::process::Command::new(&python).args(["-c", "import mcp"]).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the MCP Python SDK is not installed; run `bash .ci/install-test-tools`"
        );
        eprintln!("SKIPPED: the MCP Python SDK is not installed; run `bash .ci/install-test-tools`");
        return None;
    }
    Some(python)
}

/// Runs the client with `args`; what it saw.
fn client(python: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the MCP client failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"))
}

/// What every transport must show: the tools, a plan that records nothing,
/// a resume refused without `confirm` and done with it, the run completed,
/// the contracts and the prompt.
fn a_resume_is_planned_confirmed_and_completes(seen: &Value, identity: &str) {
    assert_eq!(seen["server"], "cairn", "{seen}");
    let tools: Vec<&str> = seen["tools"].as_array().expect("tools").iter().filter_map(Value::as_str).collect();
    for t in
        ["list_runs", "get_run", "plan_resume", "resume_run", "inbox", "decide_approval", "start_run", "export_run"]
    {
        assert!(tools.contains(&t), "no tool {t}: {tools:?}");
    }
    // A definition with a mistake: each problem said, nothing published.
    let bad = seen["validate_bad"].as_str().expect("text");
    assert!(bad.starts_with("422 invalid-definition") && bad.contains("unknown field `tsak`"), "{bad}");
    assert_eq!(seen["started_status"], "failed");
    // The plan, as data and as the CLI's diff; nothing recorded.
    assert_eq!(seen["plan_error"], false);
    assert_eq!(seen["plan"]["kept"], json!(["draft"]));
    assert_eq!(seen["plan"]["rerun"], json!(["publish"]));
    assert_eq!(seen["plan"]["newly_reached"], json!(["announce"]));
    let text = seen["plan_text"].as_str().expect("text");
    assert!(
        text.contains("nothing was recorded") && text.contains("~ publish") && text.contains("+ announce"),
        "{text}"
    );
    assert_eq!(seen["status_after_plan"], "failed");
    // Without confirm: a tool error that says what to do, and no event.
    assert_eq!(seen["unconfirmed_error"], true);
    assert!(seen["unconfirmed_text"].as_str().is_some_and(|t| t.contains("confirm: true")), "{seen}");
    assert_eq!(
        (seen["status_after_unconfirmed"].clone(), seen["recorded_by_unconfirmed"].clone()),
        (json!("failed"), json!(0))
    );
    // With it: resumed and completed; a second resume is refused with the API's reason.
    assert_eq!(seen["resume_error"], false, "{}", seen["resume_text"]);
    assert_eq!(
        (seen["final_status"].clone(), seen["final_output"].clone()),
        (json!("completed"), json!({"text": "Hello"}))
    );
    assert!(
        seen["again_text"].as_str().is_some_and(|t| t.starts_with("409 run-completed") && t.contains("fork")),
        "{seen}"
    );
    assert!(seen["bad_id_text"].as_str().is_some_and(|t| t.contains("not a run id")), "{seen}");
    // Resources: the definition, each step's contract and what it may read.
    let resources: Vec<&str> =
        seen["resources"].as_array().expect("resources").iter().filter_map(Value::as_str).collect();
    assert!(
        resources.contains(&"cairn://workflows/flaky/versions/1/contracts")
            && resources.contains(&"cairn://docs/recovery"),
        "{resources:?}"
    );
    let steps = seen["contracts"]["steps"].as_array().expect("steps");
    let announce = steps.iter().find(|s| s["id"] == "announce").expect("announce");
    assert_eq!(
        announce["available"],
        json!(["steps.draft.output.author", "steps.draft.output.title", "steps.publish.output"])
    );
    assert_eq!(announce["reads"]["fields"], json!(["steps.draft.output.title"]));
    assert!(seen["prompt"].as_str().is_some_and(|p| p.contains("plan_resume") && p.contains(identity)), "{seen}");
}

async fn over_stdio(db: &str) {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let dir = dir.path().to_str().expect("path").to_owned();
    let env = [
        ("CAIRN_DATABASE_URL", db),
        ("CAIRN_TOKEN_KEY", "test-token-key-0123456789abcdef0123456789"),
        ("HOME", dir.as_str()),
    ];
    let seen = client(&python, &["stdio", env!("CARGO_BIN_EXE_cairn")], &env);
    // The run was started as `--as ana`, trusted as given on stdio.
    a_resume_is_planned_confirmed_and_completes(&seen, "\"started_by\": \"ana\"");
    // What the MCP session recorded is in the log for every other surface.
    let run = seen["run_id"].as_str().expect("run id");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["events", "--stream", &format!("run-{run}")])
        .env("CAIRN_DATABASE_URL", db)
        .output()
        .expect("cairn events");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("RunResumed") && text.contains("the CMS is back"), "{text}");
}

async fn over_http(db: &str) {
    let Some(python) = python() else { return };
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", db)]);
    let admin = s.key("root", "admin", "root");
    let viewer = s.key("v", "viewer", "v");
    let url = format!("{}/mcp", s.url);
    let seen = client(&python, &["http", &url, &admin, &viewer], &[]);
    a_resume_is_planned_confirmed_and_completes(&seen, "\"started_by\": \"root\"");
    // A viewer reads the run but may not resume it: the API's own refusal.
    assert_eq!(seen["viewer_error"], true);
    assert!(seen["viewer_text"].as_str().is_some_and(|t| t.starts_with("403 forbidden")), "{seen}");
    assert_eq!(seen["viewer_can_read"], "failed");
    // The resume was recorded as the admin key's identity, with its reason.
    let run = seen["run_id"].as_str().expect("run id");
    let events = s.get(&format!("/runs/{run}/events"), &admin).await;
    let resumed =
        events.json["items"].as_array().expect("items").iter().find(|e| e["event_type"] == "RunResumed").cloned();
    let resumed = resumed.unwrap_or_else(|| panic!("no RunResumed: {}", events.text));
    assert_eq!(resumed["metadata"]["actor"], "root", "{resumed}");
    // Without a key, a tool call gets the API's 401 as its error.
    let seen = client(&python, &["http-anon", &url, "cairn_nope_nope"], &[]);
    assert_eq!(seen["error"], true, "{seen}");
    assert!(seen["text"].as_str().is_some_and(|t| t.starts_with("401 ")), "{seen}");
}

on_both_mt!(over_stdio, over_http);
