//! Guided authoring (issue 22, point 3): `cairn new` templates validate and
//! run on both backends; `cairn graph` output of every example and template
//! parses in the real tools (Graphviz's `dot`; the Mermaid library in a real
//! browser) and its SVG is well-formed XML; `cairn explain` says what each
//! step reads and produces and which reads no contract guarantees, with a fix.
#![allow(clippy::disallowed_methods)] // tests reach the database and the time directly

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::text;
use serde_json::Value;

const TEMPLATES: &[&str] = &["ai-approval", "saga", "fan-out", "scheduled-report"];

/// `cairn ARGS` in `dir` on the database `db`.
fn cairn(dir: &Path, db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(dir)
        .env("CAIRN_DATABASE_URL", db)
        .env_remove("CAIRN_CONFIG")
        .output()
        .expect("run cairn")
}

/// The last JSON object a `cairn run` printed (its output).
fn output_of(o: &Output) -> Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let at = out.find("\n{").map_or(0, |i| i + 1);
    serde_json::from_str(out[at..].trim()).unwrap_or_else(|e| panic!("no JSON output ({e}):\n{}", text(o)))
}

/// Each template written by `cairn new` validates and runs to its end.
async fn templates_validate_and_run(db: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    for t in TEMPLATES {
        let file = format!("{t}-flow.yaml");
        let o = cairn(d, db, &["new", t, &format!("{t}-flow"), "--output", &file]);
        assert!(o.status.success(), "{}", text(&o));
        let yaml = std::fs::read_to_string(d.join(&file)).expect("written");
        assert!(yaml.contains(&format!("name: {t}-flow")), "{yaml}");
        let o = cairn(d, db, &["validate", &file]);
        assert!(o.status.success(), "{t}: {}", text(&o));
    }
    // fan-out: every item handled, then summed.
    let o = cairn(d, db, &["run", "fan-out-flow.yaml"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(output_of(&o), serde_json::json!({"count": 3, "total": 47.5}));
    // scheduled-report: the AI summary checked against its contract.
    let o = cairn(d, db, &["run", "scheduled-report-flow.yaml"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(output_of(&o)["headline"], "A steady day");
    // saga: a declined payment undoes both reservations, in reverse order.
    let o = cairn(d, db, &["run", "saga-flow.yaml"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    let (ship, stock) = (t.find("cancel_shipping").expect("undone"), t.find("release_stock").expect("undone"));
    assert!(ship < stock, "compensations in reverse order:\n{t}");
    let o = cairn(d, db, &["run", "saga-flow.yaml", "--input", "fail_payment=false"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(output_of(&o)["charged"], true);
    // ai-approval: the draft retried against its contract, the approval
    // waits, an approve completes it.
    let o = cairn(d, db, &["run", "ai-approval-flow.yaml", "--as", "editor"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "waits for the approval:\n{t}");
    let at = t.find("cairn approve ").expect("the approve command") + "cairn approve ".len();
    let run: String = t[at..].chars().take_while(|c| !c.is_whitespace()).collect();
    let o = cairn(d, db, &["approve", &run, "review", "--as", "editor"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cairn(d, db, &["show", &run]);
    let t = text(&o);
    assert!(t.contains("completed") && t.contains("All about durable workflows"), "{t}");
}

/// What `cairn new` refuses: an unknown template, a file that exists, a
/// name the language refuses; `-o -` prints.
#[test]
fn new_says_what_is_wrong() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let db = format!("sqlite://{}", d.join("c.db").display());
    let o = cairn(d, &db, &["new", "sagas"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no template `sagas`") && text(&o).contains("saga, fan-out"), "{}", text(&o));
    let o = cairn(d, &db, &["new", "--list"]);
    for t in TEMPLATES {
        assert!(text(&o).contains(t), "{}", text(&o));
    }
    std::fs::write(d.join("saga.yaml"), "mine").expect("write");
    let o = cairn(d, &db, &["new", "saga"]);
    assert!(!o.status.success() && text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(d.join("saga.yaml")).expect("read"), "mine", "kept");
    let o = cairn(d, &db, &["new", "saga", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cairn(d, &db, &["new", "saga", "no such name!", "-o", "-"]);
    assert!(!o.status.success() && text(&o).contains("cannot name a workflow"), "{}", text(&o));
    let o = cairn(d, &db, &["new", "fan-out", "orders", "-o", "-"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("name: orders"), "{}", text(&o));
}

/// Every example and template, drawn three ways.
fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("../../examples"))
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    let dir = tempfile::tempdir().expect("dir").keep();
    for t in TEMPLATES {
        let f = dir.join(format!("{t}.yaml"));
        let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(["new", t, "-o"]).arg(&f).output().expect("new");
        assert!(o.status.success(), "{}", text(&o));
        files.push(f);
    }
    files.sort();
    files
}

fn graph(file: &Path, format: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["graph", "--format", format])
        .arg(file)
        .output()
        .expect("cairn graph");
    assert!(o.status.success(), "{}: {}", file.display(), text(&o));
    String::from_utf8(o.stdout).expect("utf-8")
}

/// Whether a tool is here; under CI it must be.
fn have(what: &str, ok: bool) -> bool {
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{what} is missing; run `bash .ci/install-test-tools`");
        eprintln!("SKIPPED: {what} is missing; run `bash .ci/install-test-tools`");
    }
    ok
}

#[test]
fn graphs_parse_in_graphviz() {
    if !have("graphviz (dot)", Command::new("dot").arg("-V").output().is_ok()) {
        return;
    }
    for f in sources() {
        let dot = graph(&f, "dot");
        let mut child = Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("dot");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), dot.as_bytes()).expect("write");
        let o = child.wait_with_output().expect("dot");
        assert!(o.status.success() && !o.stderr.iter().any(|_| true), "{}:\n{dot}\n{}", f.display(), text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("<svg"), "{}", f.display());
    }
}

#[test]
fn graphs_parse_and_render_in_mermaid() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/node/node_modules");
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ok = modules.join("mermaid").exists()
        && modules.join("playwright-core").exists()
        && Path::new(&chromium).exists()
        && Command::new("node").arg("--version").output().is_ok();
    if !have("node, mermaid, playwright-core or chromium", ok) {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut files = Vec::new();
    for f in sources() {
        let out = dir.path().join(format!("{}.mmd", f.file_stem().expect("stem").to_string_lossy()));
        std::fs::write(&out, graph(&f, "mermaid")).expect("write");
        files.push(out);
    }
    // The checker fails on what Mermaid does not take.
    let broken = dir.path().join("zz-broken.mmd");
    std::fs::write(&broken, "flowchart TD\n  a[\"x\"] -->\n").expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/mermaid.mjs");
    let o = Command::new("node")
        .arg(&script)
        .args(&files)
        .arg(&broken)
        .env("CAIRN_NODE_MODULES", &modules)
        .env("CAIRN_CHROMIUM", &chromium)
        .output()
        .expect("node");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "every diagram parses and renders:\n{t}"
    );
    assert!(t.lines().any(|l| l.starts_with("error ") && l.contains("zz-broken")), "{t}");
}

#[test]
fn svg_graphs_are_well_formed_and_styled() {
    for f in sources() {
        let svg = graph(&f, "svg");
        assert!(svg.starts_with("<?xml") && svg.contains("<svg class=\"graph\"") && svg.contains("<style>"), "{svg}");
        // Well-formed XML, as a viewer or an image tool reads it.
        let o = Command::new("python3")
            .args(["-c", "import sys, xml.etree.ElementTree as E; E.fromstring(sys.stdin.read().encode())"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(&mut c.stdin.take().expect("stdin"), svg.as_bytes())?;
                c.wait_with_output()
            })
            .expect("python3");
        assert!(o.status.success(), "{}: {}", f.display(), text(&o));
    }
}

#[test]
fn explain_shows_reads_products_and_mapping_problems() {
    let blog = common::example("blog-post.yaml");
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["explain", &blog, "--format", "json"])
        .output()
        .expect("explain");
    assert!(o.status.success(), "{}", text(&o));
    let e: Value = serde_json::from_slice(&o.stdout).expect("json");
    let step = |id: &str| e["steps"].as_array().expect("steps").iter().find(|s| s["id"] == id).cloned().expect(id);
    let publish = step("publish");
    let avail: Vec<&str> =
        publish["available"].as_array().expect("available").iter().filter_map(Value::as_str).collect();
    assert!(avail.contains(&"steps.draft.output.title") && avail.contains(&"inputs.cms_url"), "{avail:?}");
    assert!(!avail.contains(&"steps.publish.output"), "a step's own output is not available to it: {avail:?}");
    let produces = step("draft")["produces"].clone();
    assert!(produces.as_array().is_some_and(|p| p.iter().any(|x| x == "steps.draft.output.title")), "{produces}");
    // A field a contract declares but does not require: likely missing, with a fix.
    let problems = e["problems"].as_array().expect("problems");
    let comment = problems.iter().find(|p| p["reads"] == "steps.review.output.comment").expect("the comment read");
    assert_eq!(comment["confidence"], "likely");
    assert!(comment["fix"].as_str().is_some_and(|f| f.contains("required") && f.contains("default")), "{comment}");
    // An HTTP response always has a body: no problem there.
    assert!(!problems.iter().any(|p| p["reads"] == "steps.publish.output.body"), "{problems:?}");
    // Text for people.
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(["explain", &blog]).output().expect("explain");
    let t = text(&o);
    assert!(t.contains("mapping problems:") && t.contains("fix: add `comment` to `required`"), "{t}");
    // A file that does not compile: its problems, not an explanation.
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nsteps:\n  - id: a\n    tsak: echo\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).arg("explain").arg(&bad).output().expect("explain");
    assert!(!o.status.success() && text(&o).contains("unknown field `tsak`"), "{}", text(&o));
}

on_both!(templates_validate_and_run);
