//! `cairn resume`, `cairn replay` and `cairn fork` through the real binary:
//! the README's recovery example as written, plans as text and JSON, bulk
//! resume, refusals with what to do instead, divergence and shadow
//! re-validation exit codes, and forks.
#![allow(missing_docs)]

mod common;

use common::{cairn, example, text};

use std::path::Path;

use serde_json::Value;

/// The id of the newest run of a workflow, from `cairn runs`.
fn run_of(db: &Path, workflow: &str) -> String {
    let out = cairn(db, &["runs"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rfind(|l| l.split_whitespace().nth(1) == Some(workflow))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run of {workflow}: {}", text(&out)))
        .to_owned()
}

#[test]
fn the_readme_recovery_example_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = common::readme_block("recovery-example");
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(&root)
        .env("PATH", common::path_with_cairn(dir.path()))
        .env("CAIRN_DATABASE_URL", format!("sqlite://{}", dir.path().join("c.db").display()))
        .output()
        .expect("bash");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("~ publish") && t.contains("= draft") && t.contains("+ announce"), "the plan:\n{t}");
    assert!(t.contains("dry run: nothing was recorded"), "{t}");
    assert!(t.contains("resumed from `publish`") && t.contains("1 completed, 0 failed"), "the resume:\n{t}");
    assert!(t.contains("no divergence"), "the replay:\n{t}");
    assert!(t.contains("after event 4") && t.contains("draft: {"), "time travel:\n{t}");
}

#[test]
fn resume_plans_refuses_and_resumes_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let post = example("publish-post.yaml");
    assert_eq!(cairn(&db, &["run", &post]).status.code(), Some(1));
    let run = run_of(&db, "publish-post");

    // JSON for tools.
    let json = cairn(&db, &["resume", &run, "--dry-run", "--format", "json"]);
    assert!(json.status.success(), "{}", text(&json));
    let plan: Value = serde_json::from_slice(&json.stdout).expect("json plan");
    assert_eq!(plan["from_step"], "publish");
    assert_eq!(plan["plan"]["kept"], serde_json::json!(["draft", "long_enough"]));
    // Downstream from the draft runs the branch again too.
    let down = cairn(&db, &["resume", &run, "--from", "draft", "--policy", "downstream", "--dry-run"]);
    let t = text(&down);
    assert!(t.contains("~ draft") && t.contains("~ long_enough"), "{t}");
    // An unknown step, a bad policy.
    let bad = cairn(&db, &["resume", &run, "--from", "drafts", "--dry-run"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("did you mean `draft`?"), "{}", text(&bad));
    assert_eq!(cairn(&db, &["resume", &run, "--policy", "sideways"]).status.code(), Some(2));
    // Without a terminal and without --yes nothing is recorded.
    let unconfirmed = cairn(&db, &["resume", &run]);
    assert_eq!(unconfirmed.status.code(), Some(1));
    assert!(text(&unconfirmed).contains("add --yes"), "{}", text(&unconfirmed));
    let events = cairn(&db, &["events", "--stream", &format!("run-{run}")]);
    assert!(!String::from_utf8_lossy(&events.stdout).contains("RunResumed"));

    let done = cairn(&db, &["--as", "ops", "resume", &run, "--yes", "--reason", "the CMS is back"]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(String::from_utf8_lossy(&done.stdout).contains("Published: Notes on durable workflows"), "{}", text(&done));
    // The audit log has who resumed and why.
    let audit = cairn(&db, &["audit", "--run", &run]);
    assert!(text(&audit).contains("resume run") && text(&audit).contains("ops"), "{}", text(&audit));
    // Completed: resume says fork.
    let again = cairn(&db, &["resume", &run, "--dry-run"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("cairn fork"), "{}", text(&again));
    let refused = cairn(&db, &["resume", &run, "--dry-run", "--format", "json"]);
    let body: Value = serde_json::from_slice(&refused.stdout).expect("a JSON refusal");
    assert_eq!(body["error"], "run-completed");

    // Fork it with another topic: a new run; the source is unchanged.
    let before = cairn(&db, &["events", "--stream", &format!("run-{run}")]).stdout;
    let fork = cairn(&db, &["fork", &run, "--at", "publish", "--input", "topic=forks"]);
    assert!(text(&fork).contains(&format!("forked from run {run} at `publish`")), "{}", text(&fork));
    assert_eq!(cairn(&db, &["events", "--stream", &format!("run-{run}")]).stdout, before);
    let bad_fork = cairn(&db, &["fork", &run, "--at", "nowhere"]);
    assert_eq!(bad_fork.status.code(), Some(1));
    assert!(text(&bad_fork).contains("is not in `publish-post` version 1"), "{}", text(&bad_fork));
}

#[test]
fn many_failed_runs_are_planned_and_resumed_together() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    let post = example("publish-post.yaml");
    for topic in ["a", "b"] {
        assert_eq!(cairn(&db, &["run", &post, "--input", &format!("topic={topic}")]).status.code(), Some(1));
    }
    let plans =
        cairn(&db, &["resume", "--workflow", "publish-post", "--status", "failed", "--dry-run", "--format", "json"]);
    assert!(plans.status.success(), "{}", text(&plans));
    let plans: Value = serde_json::from_slice(&plans.stdout).expect("json");
    assert_eq!(plans.as_array().map(Vec::len), Some(2));
    let done = cairn(&db, &["resume", "--workflow", "publish-post", "--status", "failed", "--yes"]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(text(&done).contains("2 completed, 0 failed, 0 refused"), "{}", text(&done));
    let none = cairn(&db, &["resume", "--workflow", "publish-post", "--dry-run"]);
    assert!(none.status.success() && text(&none).contains("no failed runs"), "{}", text(&none));

    // Replay every run: no divergence. Under a changed condition: exit 1 naming it.
    let all = cairn(&db, &["replay", "--workflow", "publish-post"]);
    assert!(all.status.success() && text(&all).contains("2 run(s) replayed, 0 diverged"), "{}", text(&all));
    let changed = dir.path().join("changed.yaml");
    let src = std::fs::read_to_string(&post).expect("read").replace(">= 300", ">= 1000");
    std::fs::write(&changed, src).expect("write");
    let run = run_of(&db, "publish-post");
    let d = cairn(&db, &["replay", &run, "--definition", changed.to_str().expect("path")]);
    assert_eq!(d.status.code(), Some(1), "{}", text(&d));
    assert!(text(&d).contains("DIVERGES at event 5") && text(&d).contains("now goes to `end`"), "{}", text(&d));
    // Shadow re-validation: both runs would branch differently.
    let shadow = cairn(&db, &["replay", "--workflow", "publish-post", "--definition", changed.to_str().expect("path")]);
    assert_eq!(shadow.status.code(), Some(1), "{}", text(&shadow));
    assert!(text(&shadow).contains("2 would fail or branch differently"), "{}", text(&shadow));
    assert!(
        text(&shadow).contains("[branch]: went to `publish`; the new definition goes to `end`"),
        "{}",
        text(&shadow)
    );
    // Time travel by log position: the same state as by the run's event number.
    let events = cairn(&db, &["events", "--stream", &format!("run-{run}")]);
    let fourth: Value =
        serde_json::from_str(String::from_utf8_lossy(&events.stdout).lines().nth(3).expect("4 events")).expect("json");
    let pos = fourth["global_position"].as_u64().expect("position").to_string();
    let by_pos = cairn(&db, &["replay", &run, "--position", &pos, "--format", "json"]);
    let by_at = cairn(&db, &["replay", &run, "--at", "4", "--format", "json"]);
    assert!(by_pos.status.success(), "{}", text(&by_pos));
    assert_eq!(by_pos.stdout, by_at.stdout);
    assert_eq!(cairn(&db, &["replay", &run, "--position", "0"]).status.code(), Some(1));
    // Time travel past the end, and before a step.
    assert_eq!(cairn(&db, &["replay", &run, "--at", "999"]).status.code(), Some(1));
    let before = cairn(&db, &["replay", &run, "--step", "publish", "--format", "json"]);
    let snap: Value = serde_json::from_slice(&before.stdout).expect("json");
    assert!(snap["outputs"].get("long_enough").is_some() && snap["outputs"].get("publish").is_none(), "{snap}");
}

/// On a terminal the plan is coloured and the resume asks first: `n`
/// records nothing, `y` resumes.
#[test]
fn on_a_terminal_the_plan_is_coloured_and_the_resume_asks() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    if !common::have_script() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("c.db");
    assert_eq!(cairn(&db, &["run", &example("publish-post.yaml")]).status.code(), Some(1));
    let run = run_of(&db, "publish-post");
    let on_terminal = |answer: &str| {
        let cmd = format!("'{}' resume {run}", env!("CARGO_BIN_EXE_cairn"));
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("CAIRN_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env_remove("NO_COLOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script");
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(format!("{answer}\n").as_bytes()).expect("write");
        stdin.flush().expect("flush");
        let out = child.wait_with_output().expect("wait");
        drop(stdin);
        text(&out)
    };
    let no = on_terminal("n");
    assert!(no.contains("\u{1b}[33m~\u{1b}[0m publish"), "the rerun mark is yellow:\n{no}");
    assert!(no.contains("resume 1 run(s)? [y/N]") && no.contains("nothing was recorded"), "{no}");
    let yes = on_terminal("y");
    assert!(yes.contains("resumed from `publish`") && yes.contains("Published: Notes on durable workflows"), "{yes}");
}

/// An embedding program's run, read by the `cairn` binary, which registers
/// none of its task handlers: replayed, planned and forked (the registry is
/// needed to execute, not to plan or replay). Before: `cairn replay` exited
/// 2 and `cairn resume --dry-run` 1 ("no task handler named `shout`").
async fn an_embedders_run_is_replayed_planned_and_forked_by_the_binary(url: &str) {
    use cairn_runtime::{Engine, TaskContext, TaskRegistry};
    use serde_json::json;
    let store = cairn_events::open(url).await.expect("open");
    let mut tasks = TaskRegistry::builtin();
    tasks.register("shout", |input: Value, _ctx: TaskContext| async move {
        Ok(json!({ "loud": input["text"].as_str().unwrap_or_default().to_uppercase() }))
    });
    let engine = Engine::new(store.clone(), tasks);
    let src = "name: embedded\nsteps:\n  - id: shout\n    task: shout\n    with: { text: hello }\n  - id: publish\n    task: fail\n    with: { kind: cms.down, message: the CMS is down, retryable: false }\n    resumable: true\n";
    let w = cairn_runtime::lang::parse(src, "embedded.yaml", &engine.task_names()).expect("parse");
    let v = engine.publish(&w, "embedder").await.expect("publish");
    let id = engine.start(&w, v, json!({}), "embedder").await.expect("start");
    let s = engine.drive(id, &mut |_| {}).await.expect("drive");
    assert_eq!(s.status_name(), "failed", "{:?}", s.error);
    let run = id.to_string();

    let replay = common::cairn_url(url, &["replay", &run]);
    assert_eq!(replay.status.code(), Some(0), "{}", text(&replay));
    let plan = common::cairn_url(url, &["resume", &run, "--dry-run"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let p = text(&plan);
    assert!(p.contains("= shout") && p.contains("~ publish"), "{p}");
    let json_plan = common::cairn_url(url, &["resume", &run, "--dry-run", "--format", "json"]);
    let body: Value = serde_json::from_slice(&json_plan.stdout).expect("a JSON plan");
    assert_eq!(body["from_step"], "publish", "{body}");
    // A fork is recorded; it runs on where `shout` is registered, and says so.
    let fork = common::cairn_url(url, &["fork", &run, "--at", "publish"]);
    let f = text(&fork);
    assert_eq!(fork.status.code(), Some(3), "it waits for the process with `shout`: {f}");
    assert!(f.contains(&format!("forked from run {run} at `publish`")), "{f}");
    assert!(f.contains("`shout`") && f.contains("registers"), "{f}");
    let forked = f.split_whitespace().skip_while(|w| *w != "run").nth(1).expect("the new run").to_owned();
    let forked: uuid::Uuid = forked.trim_end_matches(':').parse().unwrap_or_else(|_| panic!("{f}"));
    // The embedder goes on with it: `shout` is carried over, `publish` fails again.
    let s = engine.drive(forked, &mut |_| {}).await.expect("drive the fork");
    assert_eq!(s.outputs["shout"]["loud"], json!("HELLO"));
    assert_eq!(s.error.as_ref().map(|e| e.0.as_str()), Some("cms.down"));
}

mod embedded {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().expect("dir");
        super::an_embedders_run_is_replayed_planned_and_forked_by_the_binary(&format!(
            "sqlite://{}",
            dir.path().join("e.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(url) = crate::common::fresh_pg_url().await else { return };
        super::an_embedders_run_is_replayed_planned_and_forked_by_the_binary(&url).await;
    }
}
