//! The OpenAPI document generates a working client: openapi-python-client
//! (from PyPI, installed by .ci/install-test-tools) generates a Python
//! package from a real server's `/openapi.json`, and that package publishes
//! a workflow, starts a run, answers its approval and waits for the end
//! (tests/generated_client/drive.py). Before: the generator refused the
//! document (`items: true` in a schema). On SQLite and PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;
#[path = "../../runtime/tests/common/servers.rs"]
mod servers;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use server::Server;

/// approve-payment.yaml as JSON (the generated client sends JSON bodies).
const WORKFLOW: &str = r#"{
  "name": "approve-payment",
  "inputs": { "type": "object", "required": ["amount", "payee"],
              "properties": { "amount": { "type": "number" }, "payee": { "type": "string" } } },
  "steps": [
    { "id": "approve", "approval": { "approvers": ["boss"], "summary": "Pay {{ inputs.amount }} to {{ inputs.payee }}?",
                                     "content": { "amount": "{{ inputs.amount }}", "payee": "{{ inputs.payee }}" }, "deadline": "3d" } },
    { "id": "pay", "task": "echo", "with": { "paid": "{{ inputs.amount }}", "to": "{{ inputs.payee }}" } }
  ],
  "output": "{{ steps.pay.output }}"
}"#;

async fn a_generated_python_client_starts_a_run_and_answers_its_approval(url: &str) {
    let Some(generator) = servers::tool("openapi-python-client") else { return };
    let python = generator.with_file_name("python");
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let ops = s.key("ops", "operator", "ops");
    let boss = s.key("boss", "approver", "boss");
    let doc = s.send("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, 200);
    assert!(doc.json.get("jsonSchemaDialect").is_none(), "Swagger UI warns on jsonSchemaDialect");
    assert!(!doc.text.contains(r#""items":true"#), "generators read only object schemas");

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("openapi.json"), &doc.text).expect("write");
    let out = Command::new(&generator)
        .args(["generate", "--path", "openapi.json", "--output-path", "client", "--meta", "none"])
        .current_dir(dir.path())
        .output()
        .expect("openapi-python-client");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && dir.path().join("client/api/runs/start_run.py").exists(), "{log}");
    // Only the bodies no generator reads (YAML, JSON lines) are left out.
    for warning in log.split("WARNING").skip(1) {
        assert!(
            warning.contains("application/yaml") || warning.contains("application/x-ndjson"),
            "an unexpected warning: {warning}"
        );
    }
    // `--meta none` writes the package itself: import it as `cairn_client`.
    std::fs::rename(dir.path().join("client"), dir.path().join("cairn_client")).expect("rename");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generated_client/drive.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("PYTHONPATH", dir.path())
        .env("CAIRN_URL", &s.url)
        .env("CAIRN_OPS_KEY", &ops)
        .env("CAIRN_BOSS_KEY", &boss)
        .env("CAIRN_WORKFLOW", WORKFLOW)
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let run: Value = serde_json::from_str(text.trim()).expect("the ended run as JSON");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], serde_json::json!({ "paid": 120, "to": "ACME" }), "{run}");
    // What the generated client did is what the server recorded.
    let id = run["run_id"].as_str().expect("id");
    let history = s.get(&format!("/runs/{id}/history"), &ops).await;
    assert!(
        history.text.contains("paid from the generated client") && history.text.contains("boss"),
        "{}",
        history.text
    );
}

on_both_mt!(a_generated_python_client_starts_a_run_and_answers_its_approval);
