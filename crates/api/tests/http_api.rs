//! `cairn serve` over real HTTP on a bound port: every endpoint, its auth
//! failures and bad inputs, idempotent starts, live events with
//! Last-Event-ID, people, audit, costs and the compliance export.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)

// Only this test binary needs the HTTP client (the others stay small).
#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use common::ECHO;
use serde_json::{Value, json};
use server::Server;

const APPROVAL: &str = r#"
name: pay
inputs:
  type: object
  properties:
    amount: { type: integer, default: 1 }
  required: [amount]
steps:
  - id: ask
    approval:
      approvers: [boss]
      summary: "Pay {{ inputs.amount }}?"
      content: { amount: "{{ inputs.amount }}" }
  - id: done
    task: echo
    with: { paid: "{{ inputs.amount }}" }
"#;

const FORM: &str = r#"
name: brief
steps:
  - id: brief
    form:
      title: A brief
      assignees: [writer]
      fields:
        - { name: topic, type: text, required: true, min_length: 3 }
        - { name: words, type: integer, min: 100, max: 2000, default: 400 }
  - id: done
    transform: { topic: "{{ steps.brief.output.topic }}" }
"#;

fn ids(r: &Value) -> Vec<String> {
    r["items"]
        .as_array()
        .map_or_else(Vec::new, |a| a.iter().map(|i| i["run_id"].as_str().unwrap_or("").to_owned()).collect())
}

#[tokio::test]
async fn health_readiness_the_document_and_the_docs_need_no_key() {
    let s = Server::start(&[]);
    let h = s.send("GET", "/healthz", None, None, &[]).await;
    assert_eq!((h.status, h.json["status"].as_str()), (200, Some("ok")));
    let r = s.send("GET", "/readyz", None, None, &[]).await;
    assert_eq!((r.status, r.json["status"].as_str()), (200, Some("ready")), "{}", r.text);
    assert!(r.json["head_position"].is_u64());

    let doc = s.send("GET", "/openapi.json", None, None, &[]).await.json;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/workflows",
        "/workflows/validate",
        "/workflows/{name}",
        "/workflows/{name}/versions",
        "/workflows/{name}/versions/{version}",
        "/workflows/{name}/archive",
        "/runs",
        "/runs/{id}",
        "/runs/{id}/cancel",
        "/runs/{id}/history",
        "/runs/{id}/context",
        "/runs/{id}/events",
        "/runs/{id}/live",
        "/inbox",
        "/runs/{id}/steps/{step}/submission",
        "/runs/{id}/steps/{step}/decision",
        "/audit",
        "/costs",
        "/exports/audit",
        "/exports/audit/manifest",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "{p} is not in the document");
    }
    // Every operation documents its errors as problem+json; protected ones 401 and 403.
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("ops") {
            let responses = op["responses"].as_object().expect("responses");
            let p500 = &responses["500"]["content"]["application/problem+json"]["schema"]["$ref"];
            assert_eq!(p500, "#/components/schemas/Problem", "{method} {path}");
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(responses.contains_key("401") && responses.contains_key("403"), "{method} {path}");
            }
        }
    }
    assert!(doc["components"]["schemas"]["RunView"]["properties"]["status"].is_object());

    let page = s.send("GET", "/docs", None, None, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("/docs/swagger-ui-bundle.js") && page.text.contains("/openapi.json"));
    assert!(!page.text.contains("https://"), "the docs page must not fetch anything from elsewhere");
    for (file, ctype) in [("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")] {
        let a = s.send("GET", &format!("/docs/{file}"), None, None, &[]).await;
        assert_eq!(a.status, 200, "{file}");
        assert!(a.header("content-type").is_some_and(|c| c.starts_with(ctype)), "{file}");
        assert!(a.text.len() > 100_000, "{file} is {} bytes", a.text.len());
    }
    s.send("GET", "/docs/nope.js", None, None, &[]).await.problem(404, "no-such-file");
    s.send("GET", "/no/such/path", None, None, &[]).await.problem(404, "no-such-path");
    s.send("DELETE", "/healthz", None, None, &[]).await.problem(405, "method-not-allowed");
}

#[tokio::test]
async fn every_protected_endpoint_refuses_a_missing_unknown_or_revoked_key() {
    // Hundreds of keyless requests from one address: the failed-key limit
    // (tested on its own) would answer 429 after ten.
    let s = Server::start(&["--max-key-failures", "0"]);
    let admin = s.key("root", "admin", "root");
    let doc = s.send("GET", "/openapi.json", None, None, &[]).await.json;
    let run = "01a23166-77a7-75c7-ac1c-7a41263c3bd1";
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let concrete =
            path.replace("{id}", run).replace("{name}", "x").replace("{step}", "s").replace("{version}", "1");
        for (method, op) in ops.as_object().expect("ops") {
            if op["security"].as_array().is_none_or(|s| s.is_empty()) {
                continue;
            }
            let m = method.to_uppercase();
            let none = s.send(&m, &concrete, None, None, &[]).await;
            none.problem(401, "unauthenticated");
            assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"cairn\""));
            let bogus = s.send(&m, &concrete, Some("cairn_000000000000_nope"), None, &[]).await;
            bogus.problem(401, "bad-key");
            let basic = s.send(&m, &concrete, None, None, &[("authorization", "Basic cm9vdDpyb290")]).await;
            basic.problem(401, "unauthenticated");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} protected operations");
    // A revoked key is refused from then on (the key cache lives a second).
    assert_eq!(s.get("/runs", &admin).await.status, 200);
    let o = s.cairn(&["keys", "revoke", "root"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.get("/runs", &admin).await.problem(401, "bad-key");
}

#[tokio::test]
async fn roles_are_enforced_per_endpoint() {
    let s = Server::start(&[]);
    let admin = s.key("root", "admin", "root");
    let operator = s.key("ops", "operator", "ops");
    let approver = s.key("boss", "approver", "boss");
    let viewer = s.key("eyes", "viewer", "eyes");
    assert_eq!(s.post_yaml("/workflows", &admin, APPROVAL).await.status, 201);

    // Viewers read.
    for p in ["/runs", "/workflows", "/workflows/pay", "/inbox", "/costs"] {
        assert_eq!(s.get(p, &viewer).await.status, 200, "viewer GET {p}");
    }
    // …and may not write, answer, audit or export.
    let start = json!({"workflow": "pay", "inputs": {"amount": 2}});
    let p = s.post("/runs", &viewer, &start).await.problem(403, "forbidden").clone();
    assert!(p["detail"].as_str().unwrap_or("").contains("operator"), "{p}");
    s.post_yaml("/workflows", &viewer, ECHO).await.problem(403, "forbidden");
    s.get("/audit", &viewer).await.problem(403, "forbidden");
    s.get("/exports/audit", &viewer).await.problem(403, "forbidden");
    s.post_yaml("/workflows", &approver, ECHO).await.problem(403, "forbidden");
    s.post("/runs", &approver, &start).await.problem(403, "forbidden");

    // Operators start and audit; approvers decide when they are listed.
    let run = s.post("/runs", &operator, &start).await;
    assert_eq!(run.status, 201, "{}", run.text);
    let id = run.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &viewer, &["waiting"]).await;
    assert_eq!(s.get("/audit", &operator).await.status, 200);
    s.post(&format!("/runs/{id}/steps/ask/decision"), &viewer, &json!({"approve": true}))
        .await
        .problem(403, "forbidden");
    // The operator's role is strong enough, but it is not a listed approver.
    let p = s.post(&format!("/runs/{id}/steps/ask/decision"), &operator, &json!({"approve": true})).await;
    p.problem(403, "not-allowed");
    assert!(p.json["detail"].as_str().unwrap_or("").contains("boss"), "{}", p.text);
    let ok = s.post(&format!("/runs/{id}/steps/ask/decision"), &approver, &json!({"approve": true})).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(ok.json["by"], "boss");
    let done = s.wait_status(&id, &viewer, &["completed"]).await;
    assert_eq!(done["output"], json!({"paid": 2}));
}

#[tokio::test]
async fn workflows_are_created_listed_versioned_archived_and_validated() {
    let s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    let c = s.post_yaml("/workflows", &k, APPROVAL).await;
    assert_eq!(c.status, 201, "{}", c.text);
    assert_eq!(c.header("location"), Some("/workflows/pay/versions/1"));
    assert_eq!((c.json["name"].as_str(), c.json["latest_version"].as_u64()), (Some("pay"), Some(1)));
    assert_eq!(c.json["versions"][0]["published_by"], "root");
    // JSON works too.
    let as_json = json!({"name": "echo-json", "steps": [{"id": "one", "task": "echo", "with": {"a": 1}}]});
    let j = s.post("/workflows", &k, &as_json).await;
    assert_eq!(j.status, 201, "{}", j.text);
    // A second create of a name is a conflict.
    s.post_yaml("/workflows", &k, APPROVAL).await.problem(409, "workflow-exists");

    // Errors: every diagnostic, with line and column; nothing published.
    let bad = "name: broken\nsteps:\n  - id: a\n    task: echo\n    next: nowhere\n  - id: a\n    task: nope\n";
    let r = s.post_yaml("/workflows", &k, bad).await;
    r.problem(422, "invalid-definition");
    let errs = r.json["errors"].as_array().expect("errors");
    assert!(errs.len() >= 2, "{}", r.text);
    for e in errs {
        assert!(e["line"].as_u64().is_some_and(|l| l > 0) && e["column"].as_u64().is_some(), "{e}");
        assert!(e["code"].is_string() && e["message"].is_string(), "{e}");
    }
    s.get("/workflows/broken", &k).await.problem(404, "unknown-workflow");
    let v = s.post_yaml("/workflows/validate", &k, bad).await;
    v.problem(422, "invalid-definition");
    assert_eq!(v.json["errors"].as_array().map(Vec::len), Some(errs.len()));
    let ok = s.post_yaml("/workflows/validate", &k, ECHO).await;
    assert_eq!((ok.status, ok.json["valid"].as_bool()), (200, Some(true)), "{}", ok.text);
    s.get("/workflows/echo", &k).await.problem(404, "unknown-workflow");
    s.send("POST", "/workflows", Some(&k), Some(("application/json", b"{not json".to_vec())), &[])
        .await
        .problem(400, "malformed-json");
    s.send("POST", "/workflows", Some(&k), Some(("image/png", b"x".to_vec())), &[])
        .await
        .problem(415, "unsupported-media-type");
    s.send("POST", "/workflows", Some(&k), Some(("application/yaml", Vec::new())), &[])
        .await
        .problem(400, "empty-body");

    // A run keeps its version when a new one is published.
    let run = s.post("/runs", &k, &json!({"workflow": "pay", "inputs": {"amount": 7}})).await;
    let id = run.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["waiting"]).await;
    let v2 = APPROVAL.replace("Pay {{", "Now pay {{");
    let p = s.post_yaml("/workflows/pay/versions", &k, &v2).await;
    assert_eq!((p.status, p.json["latest_version"].as_u64()), (201, Some(2)), "{}", p.text);
    let same = s.post_yaml("/workflows/pay/versions", &k, &v2).await;
    assert_eq!((same.status, same.json["latest_version"].as_u64()), (200, Some(2)), "unchanged: {}", same.text);
    s.post_yaml("/workflows/pay/versions", &k, ECHO).await.problem(422, "name-mismatch");
    s.post_yaml("/workflows/nope/versions", &k, ECHO).await.problem(404, "unknown-workflow");
    let w = s.get("/workflows/pay", &k).await;
    assert_eq!(w.json["versions"].as_array().map(Vec::len), Some(2));
    let src = s.get("/workflows/pay/versions/1", &k).await;
    assert_eq!(src.json["source"], APPROVAL);
    s.get("/workflows/pay/versions/9", &k).await.problem(404, "unknown-version");
    s.get("/workflows/pay/versions/x", &k).await.problem(404, "unknown-version");
    assert_eq!(s.get(&format!("/runs/{id}"), &k).await.json["version"], 1);
    let newer = s.post("/runs", &k, &json!({"workflow": "pay"})).await;
    assert_eq!(newer.json["version"], 2, "{}", newer.text);
    let pinned = s.post("/runs", &k, &json!({"workflow": "pay", "version": 1})).await;
    assert_eq!(pinned.json["version"], 1, "{}", pinned.text);
    s.post("/runs", &k, &json!({"workflow": "pay", "version": 5})).await.problem(404, "unknown-version");

    // Archive: no new runs, history and running runs kept.
    let a = s.send("POST", "/workflows/pay/archive", Some(&k), None, &[]).await;
    assert_eq!((a.status, a.json["archived"].as_bool()), (200, Some(true)), "{}", a.text);
    assert_eq!(s.send("POST", "/workflows/pay/archive", Some(&k), None, &[]).await.status, 200);
    s.post("/runs", &k, &json!({"workflow": "pay"})).await.problem(409, "workflow-archived");
    s.post_yaml("/workflows/pay/versions", &k, APPROVAL).await.problem(409, "workflow-archived");
    assert_eq!(s.get(&format!("/runs/{id}"), &k).await.json["status"], "waiting");
    // The state at the head says what the run says (before: `running`).
    assert_eq!(s.get(&format!("/runs/{id}/state"), &k).await.json["status"], "waiting");
    let list = s.get("/workflows", &k).await;
    let names: Vec<(&str, bool)> = list.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|w| (w["name"].as_str().unwrap_or(""), w["archived"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(names, vec![("echo-json", false), ("pay", true)]);
    let audit = s.get("/audit?limit=1000", &k).await;
    let types: Vec<&str> =
        audit.json["items"].as_array().expect("items").iter().filter_map(|r| r["event_type"].as_str()).collect();
    assert!(types.contains(&"WorkflowArchived") && types.contains(&"WorkflowVersionPublished"), "{types:?}");
}

#[tokio::test]
async fn runs_are_started_read_listed_paged_and_cancelled_and_bad_input_is_refused() {
    let s = Server::start(&["--max-body-bytes", "2000"]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, APPROVAL).await.status, 201);
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);

    // Bad input, each with its own problem.
    let bad_inputs = s.post("/runs", &k, &json!({"workflow": "pay", "inputs": {"amount": "lots"}})).await;
    bad_inputs.problem(422, "invalid-inputs");
    assert_eq!(bad_inputs.json["errors"][0]["field"], "/inputs/amount", "{}", bad_inputs.text);
    s.post("/runs", &k, &json!({"workflow": "nope"})).await.problem(404, "unknown-workflow");
    s.post("/runs", &k, &json!({"workflow": "pay", "colour": "red"})).await.problem(422, "invalid-body");
    s.post("/runs", &k, &json!({"inputs": {}})).await.problem(422, "invalid-body");
    s.post("/runs", &k, &json!([1, 2])).await.problem(422, "invalid-body");
    s.send("POST", "/runs", Some(&k), Some(("application/json", b"{\"workflow\": ".to_vec())), &[])
        .await
        .problem(400, "malformed-json");
    s.send("POST", "/runs", Some(&k), Some(("text/csv", b"a,b".to_vec())), &[])
        .await
        .problem(415, "unsupported-media-type");
    let big = json!({"workflow": "echo", "inputs": {"n": 1, "pad": "x".repeat(5000)}});
    s.post("/runs", &k, &big).await.problem(413, "body-too-large");
    s.send(
        "POST",
        "/runs",
        Some(&k),
        Some(("application/json", br#"{"workflow":"echo"}"#.to_vec())),
        &[("idempotency-key", "")],
    )
    .await
    .problem(400, "bad-idempotency-key");
    s.get("/runs/not-a-uuid", &k).await.problem(404, "unknown-run");
    s.get("/runs/01a23166-77a7-75c7-ac1c-7a41263c3bd1", &k).await.problem(404, "unknown-run");
    s.get("/runs?limit=0", &k).await.problem(400, "bad-query");
    s.get("/runs?limit=abc", &k).await.problem(400, "bad-query");
    s.get("/runs?status=sleeping", &k).await.problem(400, "bad-query");
    s.get("/runs?since=yesterday", &k).await.problem(400, "bad-query");
    s.get("/runs?colour=red", &k).await.problem(400, "bad-query");

    // Five runs: two waiting, three completed.
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut waiting = Vec::new();
    for a in [1, 2] {
        let r = s.post("/runs", &k, &json!({"workflow": "pay", "inputs": {"amount": a}})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.header("location"), Some(format!("/runs/{}", r.json["run_id"].as_str().unwrap_or("")).as_str()));
        waiting.push(r.json["run_id"].as_str().expect("id").to_owned());
    }
    let mut echoes = Vec::new();
    for n in [10, 11, 12] {
        let r = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": n}})).await;
        echoes.push(r.json["run_id"].as_str().expect("id").to_owned());
    }
    for id in &echoes {
        let done = s.wait_status(id, &k, &["completed"]).await;
        assert!(done["ended_at"].is_string() && done["error"].is_null(), "{done}");
    }
    let w = s.wait_status(&waiting[0], &k, &["waiting"]).await;
    assert_eq!(w["waiting"][0]["step_id"], "ask");
    assert_eq!(w["waiting"][0]["content"], json!({"amount": 1}));
    assert_eq!(w["waiting"][0]["answer_url"], format!("/runs/{}/steps/ask/decision", waiting[0]));
    s.wait_status(&waiting[1], &k, &["waiting"]).await;

    // Pages of two, newest first, then filters.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/runs?limit=2&cursor={}", urlencode(c)),
            None => "/runs?limit=2".to_owned(),
        };
        let page = s.get(&q, &k).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(ids(&page.json));
        match page.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut all: Vec<String> = waiting.iter().chain(&echoes).cloned().collect();
    all.reverse();
    assert_eq!(seen, all, "every run once, newest first");
    let mut completed = ids(&s.get("/runs?status=completed", &k).await.json);
    completed.sort();
    let mut want = echoes.clone();
    want.sort();
    assert_eq!(completed, want);
    assert_eq!(ids(&s.get("/runs?workflow=pay&status=waiting", &k).await.json).len(), 2);
    let since = t0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(ids(&s.get(&format!("/runs?since={}", urlencode(&since)), &k).await.json).len(), 5);
    assert_eq!(ids(&s.get(&format!("/runs?until={}", urlencode(&since)), &k).await.json).len(), 0);

    // Context, events, history.
    let ctx = s.get(&format!("/runs/{}/context", echoes[0]), &k).await;
    assert_eq!(ctx.json["inputs"], json!({"n": 10}));
    assert_eq!(ctx.json["outputs"]["one"], json!({"n": 10}));
    let ev = s.get(&format!("/runs/{}/events", echoes[0]), &k).await;
    let items = ev.json["items"].as_array().expect("items");
    assert_eq!(items[0]["event_type"], "RunStarted");
    assert_eq!(items.last().map(|e| e["event_type"].clone()), Some(json!("RunCompleted")));
    for (i, e) in items.iter().enumerate() {
        assert_eq!(e["stream_version"], i as u64 + 1);
        assert_eq!(e["hash"].as_str().map(str::len), Some(64));
        assert!(e["global_position"].as_u64().is_some_and(|p| p > 0));
        assert_eq!(e["metadata"]["trace_id"], echoes[0].replace('-', ""), "{e}");
        if i > 0 {
            assert_eq!(e["prev_hash"], items[i - 1]["hash"]);
        }
    }
    let tail = s.get(&format!("/runs/{}/events?after=2", echoes[0]), &k).await;
    assert_eq!(tail.json["items"][0]["stream_version"], 3);
    let h = s.get(&format!("/runs/{}/history", echoes[0]), &k).await;
    let kinds: Vec<&str> =
        h.json["items"].as_array().expect("items").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(!kinds.is_empty(), "{}", h.text);
    assert_eq!(h.json["items"][0]["step_id"], "one");
    s.get("/runs/01a23166-77a7-75c7-ac1c-7a41263c3bd1/history", &k).await.problem(404, "unknown-run");
    s.get("/runs/01a23166-77a7-75c7-ac1c-7a41263c3bd1/events", &k).await.problem(404, "unknown-run");

    // Cancel: a waiting run, once.
    let c = s.post(&format!("/runs/{}/cancel", waiting[0]), &k, &json!({"reason": "not needed"})).await;
    assert_eq!((c.status, c.json["status"].as_str()), (200, Some("cancelled")), "{}", c.text);
    s.post(&format!("/runs/{}/cancel", waiting[0]), &k, &json!({})).await.problem(409, "invalid-state");
    let bare = s.send("POST", &format!("/runs/{}/cancel", waiting[1]), Some(&k), None, &[]).await;
    assert_eq!(bare.status, 200, "a cancel needs no body: {}", bare.text);
    s.post(&format!("/runs/{}/cancel", echoes[0]), &k, &json!({})).await.problem(409, "invalid-state");
    let events = s.get(&format!("/runs/{}/events", waiting[0]), &k).await.json;
    let last = events["items"].as_array().and_then(|a| a.last()).cloned().unwrap_or_default();
    assert_eq!(
        (last["event_type"].as_str(), last["payload"]["reason"].as_str()),
        (Some("RunCancelled"), Some("not needed"))
    );
    assert_eq!(last["metadata"]["actor"], "root");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn twenty_concurrent_starts_with_one_idempotency_key_give_one_run(url: &str) {
    let s = std::sync::Arc::new(Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]));
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, APPROVAL).await.status, 201);
    let body = json!({"workflow": "pay", "inputs": {"amount": 3}}).to_string().into_bytes();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        let k = k.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = s
                .send("POST", "/runs", Some(&k), Some(("application/json", body)), &[("idempotency-key", "order-42")])
                .await;
            (
                r.status,
                r.json["run_id"].as_str().unwrap_or("").to_owned(),
                r.header("idempotent-replayed").map(str::to_owned),
            )
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let created = results.iter().filter(|r| r.0 == 201).count();
    let replayed = results.iter().filter(|r| r.0 == 200 && r.2.as_deref() == Some("true")).count();
    assert_eq!((created, replayed), (1, 19), "{results:?}");
    let id = results[0].1.clone();
    assert!(results.iter().all(|r| r.1 == id), "{results:?}");
    let page = s.get("/runs?workflow=pay", &k).await;
    assert_eq!(ids(&page.json), vec![id.clone()], "one run in the read model");
    let events = s.get(&format!("/runs/{id}/events"), &k).await.json;
    let starts = events["items"].as_array().expect("items").iter().filter(|e| e["event_type"] == "RunStarted").count();
    assert_eq!(starts, 1);
    assert_eq!(events["items"][0]["payload"]["idempotency_key"], "order-42");
    // The same key with another body is refused; another key is another run.
    let other = json!({"workflow": "pay", "inputs": {"amount": 4}}).to_string().into_bytes();
    let r = s
        .send("POST", "/runs", Some(&k), Some(("application/json", other.clone())), &[("idempotency-key", "order-42")])
        .await;
    r.problem(422, "idempotency-key-reused");
    assert!(r.json["detail"].as_str().unwrap_or("").contains(&id), "{}", r.text);
    let fresh =
        s.send("POST", "/runs", Some(&k), Some(("application/json", other)), &[("idempotency-key", "order-43")]).await;
    assert_eq!(fresh.status, 201);
    assert_ne!(fresh.json["run_id"].as_str(), Some(id.as_str()));
    // Keys are the caller's own: another identity's key makes another run.
    let k2 = s.key("other", "operator", "other");
    let mine = s
        .send("POST", "/runs", Some(&k2), Some(("application/json", body.clone())), &[("idempotency-key", "order-42")])
        .await;
    assert_eq!(mine.status, 201, "{}", mine.text);
    assert_ne!(mine.json["run_id"].as_str(), Some(id.as_str()));
    // After a deploy (a new version), a retry of the same request resolves
    // to the version its first start used: the same run, not a 422.
    let v2 =
        APPROVAL.replace("amount: { type: integer, default: 1 }", "amount: { type: integer, default: 1, minimum: 0 }");
    assert_ne!(v2, APPROVAL, "the new version differs");
    let published = s.post_yaml("/workflows/pay/versions", &k, &v2).await;
    assert_eq!(published.status, 201, "{}", published.text);
    let retry = s
        .send("POST", "/runs", Some(&k), Some(("application/json", body.clone())), &[("idempotency-key", "order-42")])
        .await;
    assert_eq!((retry.status, retry.json["run_id"].as_str()), (200, Some(id.as_str())), "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    // Naming the new version explicitly is another request.
    let v2_body = json!({"workflow": "pay", "version": 2, "inputs": {"amount": 3}}).to_string().into_bytes();
    let r = s
        .send("POST", "/runs", Some(&k), Some(("application/json", v2_body)), &[("idempotency-key", "order-42")])
        .await;
    r.problem(422, "idempotency-key-reused");
    assert!(r.json["detail"].as_str().unwrap_or("").contains("not v2"), "{}", r.text);
}

/// Reads SSE events from a response until `n` events or `end` arrived.
async fn read_sse(resp: &mut reqwest::Response, n: usize) -> Vec<(String, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await.expect("an SSE chunk in time");
        let Some(chunk) = chunk.expect("chunk") else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if event.is_empty() && data.is_empty() {
                continue; // keep-alive comment
            }
            let done = event == "end";
            out.push((id, event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            if done {
                return out;
            }
        }
    }
    out
}

#[tokio::test]
async fn live_events_reconnecting_with_last_event_id_miss_nothing() {
    let s = Server::start(&[]);
    let k = s.key("boss", "admin", "boss");
    assert_eq!(s.post_yaml("/workflows", &k, APPROVAL).await.status, 201);
    let id = s.post("/runs", &k, &json!({"workflow": "pay", "inputs": {"amount": 9}})).await.json["run_id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.wait_status(&id, &k, &["waiting"]).await;
    let url = format!("{}/runs/{id}/live", s.url);
    let mut first = s.client().get(&url).bearer_auth(&k).send().await.expect("connect");
    assert_eq!(first.status(), 200);
    assert!(first.headers()["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"));
    let got = read_sse(&mut first, 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("1", "RunStarted"));
    assert_eq!(got[0].2["payload"]["inputs"], json!({"amount": 9}));
    drop(first); // the client goes away

    // Things happen while it is away.
    let d = s.post(&format!("/runs/{id}/steps/ask/decision"), &k, &json!({"approve": true})).await;
    assert_eq!(d.status, 201, "{}", d.text);
    s.wait_status(&id, &k, &["completed"]).await;

    let mut again =
        s.client().get(&url).bearer_auth(&k).header("last-event-id", got[1].0.clone()).send().await.expect("reconnect");
    let rest = read_sse(&mut again, 100).await;
    assert_eq!(rest.last().map(|e| e.1.as_str()), Some("end"), "{rest:?}");
    let mut versions: Vec<u64> =
        got.iter().chain(&rest).filter(|e| e.1 != "end").map(|e| e.0.parse().expect("id")).collect();
    let all = s.get(&format!("/runs/{id}/events"), &k).await.json;
    let n = all["items"].as_array().expect("items").len() as u64;
    assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "every event exactly once, in order");
    versions.dedup();
    let types: Vec<&str> = rest.iter().map(|e| e.1.as_str()).collect();
    assert!(types.contains(&"ApprovalDecided") && types.contains(&"RunCompleted"), "{types:?}");
    for (i, e) in got.iter().chain(&rest).filter(|e| e.1 != "end").enumerate() {
        assert_eq!(e.2, all["items"][i], "the live event is the stored one");
    }
    // After the end, a reconnect gets `end` at once; ?after= works like the header.
    let mut late = s.client().get(format!("{url}?after={n}")).bearer_auth(&k).send().await.expect("late");
    let end = read_sse(&mut late, 5).await;
    assert_eq!(end.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), vec!["end"]);
    let bad = s.send("GET", &format!("/runs/{id}/live"), Some(&k), None, &[("last-event-id", "x")]).await;
    bad.problem(400, "bad-last-event-id");
    s.get("/runs/01a23166-77a7-75c7-ac1c-7a41263c3bd1/live", &k).await.problem(404, "unknown-run");
}

#[tokio::test]
async fn forms_and_approvals_are_answered_over_http_with_every_check() {
    let s = Server::start(&[]);
    let admin = s.key("root", "admin", "root");
    let writer = s.key("writer", "approver", "writer");
    let boss = s.key("boss", "approver", "boss");
    let boss2 = s.key("boss-laptop", "approver", "boss");
    assert_eq!(s.post_yaml("/workflows", &admin, FORM).await.status, 201);
    assert_eq!(s.post_yaml("/workflows", &admin, APPROVAL).await.status, 201);
    let form_run =
        s.post("/runs", &admin, &json!({"workflow": "brief"})).await.json["run_id"].as_str().expect("id").to_owned();
    let pay_run = s.post("/runs", &admin, &json!({"workflow": "pay", "inputs": {"amount": 5}})).await.json["run_id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.wait_status(&form_run, &admin, &["waiting"]).await;
    let w = s.wait_status(&pay_run, &admin, &["waiting"]).await;
    let hash = w["waiting"][0]["content_hash"].as_str().expect("hash").to_owned();

    // The inbox: all, and each person's own.
    let all = s.get("/inbox", &admin).await;
    assert_eq!(all.json["items"].as_array().map(Vec::len), Some(2), "{}", all.text);
    let mine = s.get("/inbox?assignee=me", &writer).await;
    let items = mine.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", mine.text);
    assert_eq!((items[0]["kind"].as_str(), items[0]["step_id"].as_str()), (Some("form"), Some("brief")));
    assert_eq!(items[0]["answer_url"], format!("/runs/{form_run}/steps/brief/submission"));
    assert_eq!(s.get("/inbox?assignee=boss", &admin).await.json["items"].as_array().map(Vec::len), Some(1));

    // A form: every bad field at once; not an assignee; then accepted.
    let sub = format!("/runs/{form_run}/steps/brief/submission");
    let bad = s.post(&sub, &writer, &json!({"values": {"topic": "ab", "words": 5, "colour": "red"}})).await;
    bad.problem(422, "invalid-submission");
    let fields: Vec<&str> =
        bad.json["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    for f in ["/values/topic", "/values/words", "/values/colour"] {
        assert!(fields.contains(&f), "{f} missing in {fields:?}");
    }
    s.post(&sub, &boss, &json!({"values": {"topic": "Rust"}})).await.problem(403, "not-allowed");
    s.post(&sub, &writer, &json!({"values": {"topic": "Rust"}, "token": "crt_forged"})).await.problem(403, "bad-token");
    s.post(&sub, &writer, &json!({"topic": "Rust"})).await.problem(422, "invalid-body");
    let ok = s.post(&sub, &writer, &json!({"values": {"topic": "Rust"}})).await;
    assert_eq!((ok.status, ok.json["by"].as_str()), (201, Some("writer")), "{}", ok.text);
    let done = s.wait_status(&form_run, &admin, &["completed"]).await;
    assert_eq!(done["output"], json!({"topic": "Rust"}));
    let again = s.post(&sub, &writer, &json!({"values": {"topic": "Again"}})).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(
        again.json["code"] == "not-waiting" || again.json["winner"]["event_type"] == "InputSubmitted",
        "{}",
        again.text
    );

    // An approval: a stale content hash is refused; the first decision wins.
    let dec = format!("/runs/{pay_run}/steps/ask/decision");
    let stale = s.post(&dec, &boss, &json!({"approve": true, "content_hash": "0".repeat(64)})).await;
    stale.problem(409, "content-changed");
    s.post(&dec, &boss, &json!({"approve": "yes"})).await.problem(422, "invalid-body");
    s.post(&format!("/runs/{pay_run}/steps/nope/decision"), &boss, &json!({"approve": true}))
        .await
        .problem(409, "not-waiting");
    let first = s.post(&dec, &boss, &json!({"approve": true, "comment": "fine", "content_hash": hash})).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let second = s.post(&dec, &boss2, &json!({"approve": false})).await;
    // The run may have moved on already (not waiting) or still be settling
    // (already answered); either way the second decision is refused, and a
    // conflict names the winner.
    assert_eq!(second.status, 409, "{}", second.text);
    if second.json["code"] == "already-answered" {
        assert_eq!(second.json["winner"]["event_type"], "ApprovalDecided");
        assert_eq!(second.json["winner"]["by"], "boss");
    }
    let done = s.wait_status(&pay_run, &admin, &["completed"]).await;
    assert_eq!(done["output"], json!({"paid": 5}));
    let h = s.get(&format!("/runs/{pay_run}/history"), &admin).await;
    let decision = h.json["items"].as_array().expect("items").iter().find(|e| e["kind"] == "approval").cloned();
    assert_eq!(decision.map(|d| d["actor"].clone()), Some(json!("boss")), "{}", h.text);
}

#[tokio::test]
async fn a_deadline_falls_due_while_the_server_waits() {
    let s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    let wf = r#"
name: expiring
steps:
  - id: ask
    approval:
      approvers: [boss]
      summary: "Quick?"
      deadline: 1s
      on_timeout: reject
      on_reject: continue
  - id: after
    transform: { approved: "{{ steps.ask.output.approved }}" }
"#;
    assert_eq!(s.post_yaml("/workflows", &k, wf).await.status, 201, "{}", s.logs());
    let id =
        s.post("/runs", &k, &json!({"workflow": "expiring"})).await.json["run_id"].as_str().expect("id").to_owned();
    let done = s.wait_status(&id, &k, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], json!({"approved": false}));
    let events = s.get(&format!("/runs/{id}/events"), &k).await.json;
    assert!(events["items"].as_array().expect("items").iter().any(|e| e["event_type"] == "ApprovalExpired"));
}

#[tokio::test]
async fn audit_costs_and_the_compliance_export_over_http_verify_offline() {
    let s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    let mut runs = Vec::new();
    for n in 0..3 {
        let id = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": n}})).await.json["run_id"]
            .as_str()
            .expect("id")
            .to_owned();
        s.wait_status(&id, &k, &["completed"]).await;
        runs.push(id);
    }
    // Audit: filters and pages.
    let one = s.get(&format!("/audit?run={}", runs[0]), &k).await;
    let rows = one.json["items"].as_array().expect("items");
    assert!(
        rows.iter().all(|r| r["resource"].as_str().unwrap_or("").starts_with(&format!("run-{}", runs[0]))),
        "{}",
        one.text
    );
    assert_eq!(rows[0]["event_type"], "RunStarted");
    assert_eq!(rows[0]["actor"], "root");
    assert!(rows.iter().all(|r| r["hash"].as_str().map(str::len) == Some(64)));
    // A step's events name the step; the run's own name the run.
    let resource = |t: &str| rows.iter().find(|r| r["event_type"] == t).map(|r| r["resource"].clone());
    assert_eq!(resource("StepCompleted"), Some(json!(format!("run-{}/one", runs[0]))), "{}", one.text);
    assert_eq!(resource("RunCompleted"), Some(json!(format!("run-{}", runs[0]))), "{}", one.text);
    let mut positions = Vec::new();
    let mut cursor = None;
    loop {
        let q = match cursor {
            Some(c) => format!("/audit?limit=4&cursor={c}"),
            None => "/audit?limit=4".into(),
        };
        let page = s.get(&q, &k).await;
        positions.extend(page.json["items"].as_array().expect("items").iter().filter_map(|r| r["position"].as_u64()));
        match page.json["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let head = s.send("GET", "/readyz", None, None, &[]).await.json["head_position"].as_u64().expect("head");
    assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(s.get("/audit?actor=nobody", &k).await.json["items"], json!([]));
    s.get("/audit?since=soon", &k).await.problem(400, "bad-query");
    s.get("/audit?limit=5000", &k).await.problem(400, "bad-query");

    // Costs: no AI here, so groups are empty, but every grouping answers.
    for by in ["run", "workflow", "model", "day"] {
        let c = s.get(&format!("/costs?by={by}&since=2020-01-01"), &k).await;
        assert_eq!((c.status, c.json["by"].as_str()), (200, Some(by)), "{}", c.text);
    }
    s.get("/costs?by=colour", &k).await.problem(400, "bad-query");

    // Export JSONL: verifies offline with `cairn verify --export`.
    let e = s.get("/exports/audit?format=jsonl", &k).await;
    assert_eq!(e.status, 200);
    assert_eq!(e.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(e.header("cairn-export-through"), Some(head.to_string().as_str()));
    let file = s.dir.path().join("export.jsonl");
    std::fs::write(&file, &e.text).expect("write");
    let v = s.cairn(&["verify", "--export", file.to_str().expect("path")]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    let lines: Vec<&str> = e.text.lines().collect();
    assert!(lines.last().is_some_and(|l| l.starts_with("{\"manifest\"")));
    // A changed record is named.
    let tampered = e.text.replacen("\"n\\\":1", "\"n\\\":7", 1);
    assert_ne!(tampered, e.text);
    std::fs::write(&file, tampered).expect("write");
    let v = s.cairn(&["verify", "--export", file.to_str().expect("path")]);
    assert!(!v.status.success());
    let out = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert!(out.contains("hash mismatch"), "{out}");

    // One run, as CSV with its manifest.
    let csv = s.get(&format!("/exports/audit?format=csv&run={}", runs[1]), &k).await;
    assert_eq!(csv.header("content-type"), Some("text/csv"));
    let through = csv.header("cairn-export-through").expect("through").to_owned();
    let m = s.get(&format!("/exports/audit/manifest?format=csv&run={}&through={through}", runs[1]), &k).await;
    let file = s.dir.path().join("run.csv");
    std::fs::write(&file, &csv.text).expect("write");
    std::fs::write(s.dir.path().join("run.csv.manifest.json"), &m.text).expect("write");
    let v = s.cairn(&["verify", "--export", file.to_str().expect("path")]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).contains("1 streams"), "{}", String::from_utf8_lossy(&v.stdout));
    s.get("/exports/audit?format=xml", &k).await.problem(400, "bad-query");
}

#[tokio::test]
async fn a_large_export_streams_in_chunks() {
    let s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    for n in 0..40 {
        let r = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": n}})).await;
        assert_eq!(r.status, 201);
    }
    for _ in 0..200 {
        if s.get("/runs?status=completed&limit=100", &k).await.json["items"].as_array().map(Vec::len) == Some(40) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut resp = s.client().get(format!("{}/exports/audit", s.url)).bearer_auth(&k).send().await.expect("export");
    assert!(resp.headers().get("content-length").is_none(), "streamed, not buffered");
    let (mut chunks, mut bytes) = (0, 0);
    while let Some(c) = resp.chunk().await.expect("chunk") {
        chunks += 1;
        bytes += c.len();
    }
    assert!(bytes > 64 * 1024 && chunks > 1, "{bytes} bytes in {chunks} chunks");
}

#[tokio::test]
async fn without_keys_only_on_loopback_unless_insecure() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--no-auth", "--listen", "0.0.0.0:0"])
        .env("CAIRN_DATABASE_URL", "sqlite:///nonexistent-dir/never-created.db")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refusing") && err.contains("--insecure"), "{err}");

    let s = Server::start(&["--no-auth", "--as", "dev"]);
    assert_eq!(s.post_yaml("/workflows", "ignored", ECHO).await.status, 201);
    let r = s.send("POST", "/runs", None, Some(("application/json", br#"{"workflow":"echo"}"#.to_vec())), &[]).await;
    assert_eq!((r.status, r.json["started_by"].as_str()), (201, Some("dev")), "{}", r.text);

    let open = Server::start(&["--no-auth", "--insecure", "--listen", "0.0.0.0:0"]);
    let port = open.url.rsplit(':').next().expect("port").to_owned();
    let h = open.send("GET", "/healthz", None, None, &[]).await;
    assert_eq!(h.status, 200);
    assert!(open.url.contains("0.0.0.0") && !port.is_empty());
}

#[tokio::test]
async fn json_logs_carry_request_ids() {
    let s = Server::start(&["--log-format", "json"]);
    let r = s.send("GET", "/healthz", None, None, &[("x-request-id", "req-abc-123")]).await;
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    let p = s.send("GET", "/runs", None, None, &[]).await;
    let id = p.header("x-request-id").expect("made one").to_owned();
    assert_eq!(p.json["request_id"], id.as_str(), "the problem names the request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = s.logs();
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "no JSON log lines in:\n{logs}");
    let hit = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "req-abc-123" && l["status"] == 200)
        .unwrap_or_else(|| panic!("no log line for the request in:\n{logs}"));
    assert_eq!(hit["span"]["path"], "/healthz");
    assert!(hit["latency_ms"].is_number());
    assert!(lines.iter().any(|l| l["span"]["request_id"] == id.as_str() && l["status"] == 401), "{logs}");
}

/// The README's HTTP example works as written: a server, a workflow, a run
/// started with curl, approved, completed.
#[test]
fn the_readme_http_example_works_as_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let (status, text) = common::run_readme_block("http-example", dir.path(), &[], 60);
    assert!(status.success(), "{text}");
    assert!(text.contains("\"name\":\"approve-payment\""), "the workflow was not created:\n{text}");
    assert!(text.contains("\"kind\":\"approval\"") && text.contains("Pay 120 to ACME Ltd?"), "the inbox:\n{text}");
    assert!(text.contains("\"by\":\"boss\""), "the decision:\n{text}");
    assert!(text.contains("\"status\":\"completed\"") && text.contains("\"paid\":120"), "the run:\n{text}");
    assert!(!text.contains("urn:cairn:problem"), "a request failed:\n{text}");
}

#[tokio::test]
async fn costs_group_the_tokens_of_ai_attempts() {
    let s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    let wf = r#"
name: summarise
steps:
  - id: sum
    ai:
      model: scripted
      prompt: Summarise the news in one JSON object.
      scripted:
        - '{"oops": 1}'
        - { content: '{"summary": "All quiet."}', input_tokens: 120, output_tokens: 30 }
    output_contract:
      type: object
      required: [summary]
      properties: { summary: { type: string } }
"#;
    let c = s.post_yaml("/workflows", &k, wf).await;
    assert_eq!(c.status, 201, "{}", c.text);
    let id =
        s.post("/runs", &k, &json!({"workflow": "summarise"})).await.json["run_id"].as_str().expect("id").to_owned();
    let done = s.wait_status(&id, &k, &["completed", "failed"]).await;
    assert_eq!(done["output"], json!({"summary": "All quiet."}), "{done}");
    let by_run = s.get("/costs?by=run", &k).await;
    let row = by_run.json["items"].as_array().expect("items").iter().find(|r| r["key"] == id.as_str()).cloned();
    let row = row.unwrap_or_else(|| panic!("no cost row for the run: {}", by_run.text));
    assert_eq!(row["attempts"], 2, "{row}");
    assert!(row["input_tokens"].as_i64().is_some_and(|t| t >= 120), "{row}");
    assert!(row["output_tokens"].as_i64().is_some_and(|t| t >= 30), "{row}");
    let by_wf = s.get("/costs?by=workflow", &k).await;
    assert_eq!(by_wf.json["items"][0]["key"], "summarise", "{}", by_wf.text);
    let h = s.get(&format!("/runs/{id}/history"), &k).await;
    assert!(h.json["items"].as_array().expect("items").iter().any(|e| e["input_tokens"] == 120), "{}", h.text);
    // A range of days: today's attempts are in a range through today, not
    // in one that ended yesterday; a range the wrong way round is refused.
    let started = done["started_at"].as_str().expect("started_at");
    let today: chrono::NaiveDate = started[..10].parse().expect("a day");
    let yesterday = today.pred_opt().expect("day");
    let has_run = |c: &server::Resp| c.json["items"].as_array().expect("items").iter().any(|r| r["key"] == id.as_str());
    let c = s.get(&format!("/costs?by=run&since={today}&until={today}"), &k).await;
    assert!(has_run(&c), "{}", c.text);
    let c = s.get(&format!("/costs?by=run&since=2020-01-01&until={yesterday}"), &k).await;
    assert!(!has_run(&c) && c.status == 200, "{}", c.text);
    // A reversed range holds no day (as for /runs and /audit): empty, not
    // an error (schemathesis holds a schema-valid query to a 2xx).
    let reversed = s.get(&format!("/costs?by=run&since={today}&until={yesterday}"), &k).await;
    assert_eq!((reversed.status, reversed.json["items"].clone()), (200, json!([])), "{}", reversed.text);
    s.get("/costs?until=2026-13-01", &k).await.problem(400, "bad-query");
    // The CLI reads the same range from the read models.
    let cli = |args: &[&str]| {
        let o = s.cairn(args);
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (ok, out) = cli(&["costs", "--by", "run", "--until", &yesterday.to_string()]);
    assert!(ok && !out.contains(&id), "{out}");
    let (ok, out) = cli(&["costs", "--by", "run", "--since", &today.to_string()]);
    assert!(ok && out.contains(&id), "{out}");
    let (ok, out) = cli(&["costs", "--since", &today.to_string(), "--until", &yesterday.to_string()]);
    assert!(!ok && out.contains("swap them"), "{out}");
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_keeps_what_was_recorded() {
    let mut s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, APPROVAL).await.status, 201);
    let id = s.post("/runs", &k, &json!({"workflow": "pay", "inputs": {"amount": 4}})).await.json["run_id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.wait_status(&id, &k, &["waiting"]).await;
    let status = s.terminate().expect("the server exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", s.logs());
    assert!(s.logs().contains("shutting down"), "{}", s.logs());
    // What was recorded is there for the next process: the run still waits.
    let again = s.cairn(&["runs"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains(&id), "{}", String::from_utf8_lossy(&again.stdout));
}

#[tokio::test]
async fn a_failed_run_is_planned_then_resumed_over_http() {
    let s = Server::start(&[]);
    let k = s.key("root", "admin", "root");
    let viewer = s.key("v", "viewer", "v");
    let wf = r#"name: flaky
steps:
  - id: draft
    transform: { title: "Hello" }
  - id: publish
    task: fail
    with: { succeed_on_attempt: 3, kind: cms.unavailable }
    retry: { max_attempts: 2, initial_interval: 10ms }
  - id: announce
    task: echo
    with: { text: "{{ steps.draft.output.title }}" }
"#;
    assert_eq!(s.post_yaml("/workflows", &k, wf).await.status, 201);
    let id = s.post("/runs", &k, &json!({"workflow": "flaky"})).await.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["failed"]).await;
    let path = format!("/runs/{id}/resume");
    s.post(&path, &viewer, &json!({"dry_run": true})).await.problem(403, "forbidden");
    let plan = s.post(&path, &k, &json!({"dry_run": true})).await;
    assert_eq!(plan.status, 200, "{}", plan.text);
    assert_eq!(plan.json["resumed"], false);
    assert_eq!(plan.json["plan"]["plan"]["rerun"], json!(["publish"]));
    assert_eq!(plan.json["plan"]["plan"]["kept"], json!(["draft"]));
    assert_eq!(plan.json["plan"]["plan"]["newly_reached"], json!(["announce"]));
    let marks: Vec<&str> =
        plan.json["plan"]["lines"].as_array().expect("lines").iter().filter_map(|l| l["mark"].as_str()).collect();
    assert_eq!(marks, vec!["kept", "rerun", "newly_reached"]);
    assert_eq!(s.get(&format!("/runs/{id}"), &k).await.json["status"], "failed", "a dry run records nothing");
    s.post(&path, &k, &json!({"from": "drafts"})).await.problem(422, "unknown-step");
    s.post(&path, &k, &json!({"policy": "sideways"})).await.problem(422, "invalid-body");
    let done = s.post(&path, &k, &json!({"reason": "the CMS is back"})).await;
    assert_eq!((done.status, done.json["resumed"].as_bool()), (200, Some(true)), "{}", done.text);
    let run = s.wait_status(&id, &k, &["completed"]).await;
    assert_eq!(run["output"], json!({"text": "Hello"}));
    let again = s.post(&path, &k, &json!({})).await;
    again.problem(409, "run-completed");
    assert!(again.json["detail"].as_str().unwrap_or("").contains("fork"), "{}", again.text);
    let events = s.get(&format!("/runs/{id}/events"), &k).await;
    assert!(events.text.contains("\"RunResumed\"") && events.text.contains("the CMS is back"), "{}", events.text);

    // Replay and time travel over HTTP (a viewer may).
    let r = s.get(&format!("/runs/{id}/replay"), &viewer).await;
    assert_eq!((r.status, r.json["divergence"].clone()), (200, Value::Null), "{}", r.text);
    assert!(r.json["decisions_checked"].as_u64().unwrap_or(0) >= 4, "{}", r.text);
    let st = s.get(&format!("/runs/{id}/state?step=publish"), &viewer).await;
    assert_eq!(st.status, 200, "{}", st.text);
    assert_eq!(st.json["outputs"], json!({"draft": {"title": "Hello"}}));
    assert_eq!(st.json["status"], "running");
    let now = s.get(&format!("/runs/{id}/state"), &viewer).await;
    assert_eq!(now.json["status"], "completed", "{}", now.text);
    s.get(&format!("/runs/{id}/state?at=999"), &viewer).await.problem(422, "out-of-range");
    s.get(&format!("/runs/{id}/state?step=nowhere"), &viewer).await.problem(422, "step-not-reached");
    s.get(&format!("/runs/{id}/state?at=1&step=draft"), &viewer).await.problem(400, "bad-query");

    // Shadow re-validation: a stricter contract on the draft would reject what was recorded.
    let stricter = wf.replace(
        "    transform: { title: \"Hello\" }\n",
        "    transform: { title: \"Hello\" }\n    output_contract: { type: object, required: [body] }\n",
    );
    let sh = s.post_yaml("/workflows/flaky/shadow", &viewer, &stricter).await;
    assert_eq!(sh.status, 200, "{}", sh.text);
    assert_eq!((sh.json["checked"].as_u64(), sh.json["affected"].as_u64()), (Some(1), Some(1)), "{}", sh.text);
    assert_eq!(sh.json["runs"][0]["findings"][0]["kind"], "contract");
    assert_eq!(sh.json["runs"][0]["findings"][0]["step"], "draft");
    assert!(sh.json["runs"][0]["divergence"]["message"].as_str().unwrap_or("").contains("StepFailed"), "{}", sh.text);
    let same = s.post_yaml("/workflows/flaky/shadow", &viewer, wf).await;
    assert_eq!(same.json["affected"].as_u64(), Some(0), "{}", same.text);
    s.post_yaml("/workflows/other/shadow", &viewer, wf).await.problem(404, "unknown-workflow");
    let other = "name: nope\nsteps:\n  - id: a\n    task: echo\n";
    s.post_yaml("/workflows/flaky/shadow", &viewer, other).await.problem(422, "name-mismatch");

    // A completed run is forked instead: a new run from `announce`, the draft carried over.
    let fork = format!("/runs/{id}/fork");
    s.post(&fork, &viewer, &json!({"at": "announce"})).await.problem(403, "forbidden");
    s.post(&fork, &k, &json!({"at": "nowhere"})).await.problem(422, "unknown-step");
    s.post(&fork, &k, &json!({})).await.problem(422, "invalid-body");
    let f = s.post(&fork, &k, &json!({"at": "announce"})).await;
    assert_eq!(f.status, 201, "{}", f.text);
    let new_id = f.json["run_id"].as_str().expect("id").to_owned();
    assert_ne!(new_id, id);
    assert_eq!(f.header("location"), Some(format!("/runs/{new_id}").as_str()));
    let forked = s.wait_status(&new_id, &k, &["completed"]).await;
    assert_eq!(forked["output"], json!({"text": "Hello"}));
    let fe = s.get(&format!("/runs/{new_id}/events"), &k).await;
    assert!(
        fe.text.contains("\"fork_of\"") && fe.text.contains(&id) && fe.text.contains("\"StepKept\""),
        "{}",
        fe.text
    );
    assert_eq!(
        fe.text.matches("\"StepStarted\"").count(),
        1,
        "only announce ran; publish was carried over: {}",
        fe.text
    );
}

/// The reproducer of one request freezing the read side: an input nested
/// 123 levels, under a transform that nests it 4 deeper. Now refused with
/// 422 `limit-exceeded` naming the path, nothing written, the server ready,
/// and later runs listed.
async fn an_input_past_the_nesting_limit_is_refused_and_the_read_side_goes_on(url: &str) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    let wrap = "name: wrap\ninputs: { type: object, properties: { x: {} } }\nsteps:\n  - id: wrap\n    transform: { one: { two: { three: { four: \"{{ inputs.x }}\" } } } }\n";
    assert_eq!(s.post_yaml("/workflows", &k, wrap).await.status, 201);
    let deep = (0..123).fold(json!("leaf"), |v, _| json!({ "a": v }));
    let head = s.send("GET", "/readyz", None, None, &[]).await.json["head_position"].as_u64().expect("head");
    let r = s.post("/runs", &k, &json!({"workflow": "wrap", "inputs": {"x": deep}})).await;
    let p = r.problem(422, "limit-exceeded");
    assert!(p["errors"][0]["field"].as_str().is_some_and(|f| f.starts_with("/inputs/x/a/a")), "{}", r.text);
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("max_depth")), "{}", r.text);
    let ready = s.send("GET", "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["head_position"].as_u64(), Some(head), "nothing was written");
    let later = s.post("/runs", &k, &json!({"workflow": "wrap", "inputs": {"x": 1}})).await;
    assert_eq!(later.status, 201, "{}", later.text);
    let id = later.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["completed"]).await;
    let runs = s.get("/runs?workflow=wrap", &k).await;
    assert_eq!(ids(&runs.json), vec![id], "the later run is listed");
    assert_eq!(s.send("GET", "/readyz", None, None, &[]).await.status, 200);
}

/// The reproducer of a caller making the server build gigabytes: a small
/// input (`times`) to a template that repeats a string or a list `n` times and
/// keeps only the length. Before, the run completed after the server built
/// 100 MB for the string (2.4 GB for the list); now the step fails with an
/// error that names the limit on what a template may build, the server
/// stays ready, and the run's record says why.
async fn a_template_cannot_make_the_server_build_gigabytes(url: &str) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    let wf = "name: grow\ninputs: { type: object, properties: { times: { type: integer } }, required: [times] }\nsteps:\n  - id: text\n    transform: { len: \"{{ ('x' * inputs.times) | length }}\" }\n  - id: list\n    transform: { len: \"{{ ([0] * inputs.times) | length }}\" }\n";
    let published = s.post_yaml("/workflows", &k, wf).await;
    assert_eq!(published.status, 201, "{}", published.text);
    let small = s.post("/runs?wait=10", &k, &json!({"workflow": "grow", "inputs": {"times": 1000}})).await;
    assert_eq!(small.status, 201, "{}", small.text);
    let id = small.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["completed"]).await;
    let out = s.get(&format!("/runs/{id}"), &k).await.json;
    assert_eq!(out["output"]["len"], 1000, "an ordinary repetition still works: {out}");

    let r = s.post("/runs", &k, &json!({"workflow": "grow", "inputs": {"times": 100_000_000}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["failed"]).await;
    let events = s.get(&format!("/runs/{id}/events"), &k).await;
    let limit = (64 << 20).to_string(); // cairn_core::template::MAX_RENDER_WORK
    assert!(events.text.contains(&limit) && events.text.contains("bytes of strings and lists"), "{}", events.text);
    assert_eq!(s.send("GET", "/readyz", None, None, &[]).await.status, 200);
}

/// A decision made the moment a person can see the request never fails
/// (before: 21 of 60 got 409 `not-waiting` and 5 got 403 `bad-token`, since
/// the request is recorded by the background driver after the start
/// answered, and the token was derived from an earlier read).
async fn a_decision_right_after_the_start_is_recorded(url: &str) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let boss = s.key("boss", "admin", "boss");
    assert_eq!(s.post_yaml("/workflows", &boss, APPROVAL).await.status, 201);
    for i in 0..60 {
        let r = s.post("/runs", &boss, &json!({"workflow": "pay", "inputs": {"amount": i}})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.json["run_id"].as_str().expect("id").to_owned();
        let d = s.post(&format!("/runs/{id}/steps/ask/decision"), &boss, &json!({"approve": true})).await;
        assert_eq!(d.status, 201, "try {i}: {}", d.text);
    }
}

/// Statements that make every write fail as a full disk would, and undo it.
struct WritesFail {
    on: &'static [&'static str],
    off: &'static [&'static str],
}

const SQLITE_FULL: WritesFail = WritesFail {
    on: &[
        "CREATE TRIGGER full_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        "CREATE TRIGGER full_probe BEFORE INSERT ON cairn_health BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        "CREATE TRIGGER full_probe2 BEFORE UPDATE ON cairn_health BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    ],
    off: &["DROP TRIGGER full_events", "DROP TRIGGER full_probe", "DROP TRIGGER full_probe2"],
};

const POSTGRES_FULL: WritesFail = WritesFail {
    on: &[
        "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'; END $$",
        "CREATE TRIGGER full_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION disk_full()",
        "CREATE TRIGGER full_probe BEFORE INSERT OR UPDATE ON cairn_health FOR EACH ROW EXECUTE FUNCTION disk_full()",
    ],
    off: &["DROP TRIGGER full_events ON events", "DROP TRIGGER full_probe ON cairn_health"],
};

/// The disk-full reproducer (before: writes answered 500 and `/readyz` said
/// ready; the problem named the database path). Now a failed write answers
/// 503 `store-unavailable` naming nothing, readiness answers 503 until a
/// write succeeds again, and nothing recorded is lost.
async fn readiness_follows_failing_writes(url: &str, full: WritesFail) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    let first = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": 1}})).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let first = first.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&first, &k, &["completed"]).await;
    assert_eq!(s.send("GET", "/readyz", None, None, &[]).await.status, 200);

    common::run_sql(url, full.on).await;
    let r = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": 2}})).await;
    r.problem(503, "store-unavailable");
    let secret_parts = ["cairn.db", "/tmp", "postgres://", "No space", "disk is full"];
    assert!(!secret_parts.iter().any(|p| r.text.contains(p)), "the problem names nothing: {}", r.text);
    for _ in 0..2 {
        let ready = s.send("GET", "/readyz", None, None, &[]).await;
        ready.problem(503, "not-ready");
        assert!(ready.text.contains("writes to the event store have failed since"), "{}", ready.text);
        assert!(!secret_parts.iter().any(|p| ready.text.contains(p)), "{}", ready.text);
    }
    assert_eq!(s.get(&format!("/runs/{first}"), &k).await.json["status"], "completed", "reads still answer");

    common::run_sql(url, full.off).await;
    let ready = s.send("GET", "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, 200, "a write succeeds again: {}", ready.text);
    let again = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": 3}})).await;
    assert_eq!(again.status, 201, "{}", again.text);
    s.wait_status(again.json["run_id"].as_str().expect("id"), &k, &["completed"]).await;
    assert_eq!(s.get(&format!("/runs/{first}"), &k).await.json["status"], "completed", "nothing was lost");
    assert!(s.logs().contains("disk is full") || s.logs().contains("No space"), "the cause is logged");
}

#[tokio::test]
async fn sqlite_readiness_follows_failing_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("full.db").display());
    readiness_follows_failing_writes(&url, SQLITE_FULL).await;
}

#[tokio::test]
async fn postgres_readiness_follows_failing_writes() {
    let Some(url) = common::fresh_pg_url().await else { return };
    readiness_follows_failing_writes(&url, POSTGRES_FULL).await;
}

/// An HTTP endpoint that counts requests and, until `answer` is set, never
/// answers: a run calling it is always mid-effect when the server is killed.
struct Hang {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    answer: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn hang() -> Hang {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let answer = std::sync::Arc::new(AtomicBool::new(false));
    let (h, a) = (hits.clone(), answer.clone());
    let app = axum::Router::new().route(
        "/hang",
        axum::routing::post(move || {
            let (h, a) = (h.clone(), a.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                if !a.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                axum::Json(json!({ "ok": true }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hang { url: format!("http://{addr}/hang"), hits, answer }
}

async fn hits_reach(h: &Hang, n: usize) {
    for _ in 0..400 {
        if h.hits.load(std::sync::atomic::Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the endpoint was called {} times, not {n}", h.hits.load(std::sync::atomic::Ordering::SeqCst));
}

/// The crash-loop reproducer (before: a run whose driving killed the process
/// killed every restart, because start-up drives it again). The process is
/// killed (SIGKILL, as the kernel's OOM killer does) each time the run's
/// effect is in flight: after the second death while driving it at
/// start-up, the next start quarantines it, stays up and ready (degraded),
/// drives the others, and drives it again only once an operator releases it.
async fn a_run_that_kills_every_start_is_quarantined(url: &str) {
    let h = hang().await;
    let env = [("CAIRN_DATABASE_URL", url)];
    let s = Server::start_with(&[], &env);
    let k = s.key("root", "admin", "root");
    let wf = format!(
        "name: killer\nsteps:\n  - id: call\n    http: {{ method: POST, url: '{}', body: {{}} }}\n    timeout: 10m\n",
        h.url
    );
    assert_eq!(s.post_yaml("/workflows", &k, &wf).await.status, 201);
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    let r = s.post("/runs", &k, &json!({"workflow": "killer"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["run_id"].as_str().expect("id").to_owned();
    hits_reach(&h, 1).await;
    drop(s); // killed while driving it (not at start-up: no probation yet)
    for n in [2, 3] {
        let s = Server::start_with(&[], &env);
        hits_reach(&h, n).await; // start-up drives it again ...
        drop(s); // ... and dies
    }
    let s = Server::start_with(&[], &env);
    let mut ready = Value::Null;
    for _ in 0..100 {
        ready = s.send("GET", "/readyz", None, None, &[]).await.json;
        if ready["quarantined"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["quarantined"], 1, "{ready}");
    let other = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": 5}})).await;
    s.wait_status(other.json["run_id"].as_str().expect("id"), &k, &["completed"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.hits.load(std::sync::atomic::Ordering::SeqCst), 3, "the quarantined run is not driven");
    assert_eq!(s.get(&format!("/runs/{id}"), &k).await.json["status"], "running", "its own stream is untouched");
    let list = s.cairn(&["quarantine", "list"]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(text.contains(&id) && text.contains("quarantined") && text.contains("died 2 times"), "{text}");
    let audit = s.get("/audit?limit=200", &k).await;
    assert!(audit.text.contains("quarantine run"), "recorded in the audit log: {}", audit.text);

    h.answer.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = s.cairn(&["quarantine", "release", &id, "--reason", "endpoint fixed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.wait_status(&id, &k, &["completed"]).await;
    let ready = s.send("GET", "/readyz", None, None, &[]).await.json;
    assert_eq!((ready["status"].as_str(), ready["quarantined"].as_u64()), (Some("ready"), Some(0)), "{ready}");
    let again = s.cairn(&["quarantine", "release", &id]);
    assert_eq!(again.status.code(), Some(1), "releasing twice is refused");
}

/// Three conditions that each cost just under the limit (999² evaluations):
/// decisions that keep a CPU busy for a while, with no effect to wait on.
const BUSY: &str = "name: busy\ninputs: { type: object, properties: { items: { type: array } } }\nsteps:\n  - id: c1\n    branch: { if: \"inputs.items.all(a, inputs.items.all(b, a + b >= 0))\", then: c2 }\n  - id: c2\n    branch: { if: \"inputs.items.all(a, inputs.items.all(b, a + b >= 0))\", then: c3 }\n  - id: c3\n    branch: { if: \"inputs.items.all(a, inputs.items.all(b, a + b >= 0))\", then: done }\n  - id: done\n    transform: { ok: true }\n";

/// The reproducer of one busy run blocking the server (before: `/healthz`
/// took 9.9 s while a run computed, and `--request-timeout 30` answered
/// after 93 s). Deciding runs off the async executor: with more busy starts
/// in flight than the server has worker threads (two here), `/healthz` answers in a
/// small part of the time one busy start takes (both measured here, so the
/// ratio holds on a slow machine), and a start past `--request-timeout`
/// answers 503 `timeout`; a retry with its Idempotency-Key gets one run.
async fn busy_runs_never_stall_other_requests(url: &str) {
    let s = Server::start_with(&["--request-timeout", "120"], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, BUSY).await.status, 201);
    let items: Vec<u32> = (0..999).collect();
    let body = json!({"workflow": "busy", "inputs": {"items": items}});
    // One busy start alone: how long one takes here.
    let t = std::time::Instant::now();
    assert_eq!(s.post("/runs", &k, &body).await.status, 201);
    let one = t.elapsed();
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let (c, url, k, body) = (s.client().clone(), s.url.clone(), k.clone(), body.to_string());
            tokio::spawn(async move {
                let r = c.post(format!("{url}/runs")).bearer_auth(k).header("content-type", "application/json");
                r.body(body).send().await.expect("send").status().as_u16()
            })
        })
        .collect();
    tokio::time::sleep(one / 4).await;
    let t = std::time::Instant::now();
    assert_eq!(s.send("GET", "/healthz", None, None, &[]).await.status, 200);
    let health = t.elapsed();
    let working = busy.iter().filter(|b| !b.is_finished()).count();
    assert!(
        health < one / 4 && working >= 2,
        "/healthz took {health:?} (one busy start takes {one:?}) while {working} of 3 were working"
    );
    for b in busy {
        assert_eq!(b.await.expect("join"), 201);
    }
    drop(s);

    // Past `--request-timeout` the start answers 503 `timeout` (the
    // executor is free for the timer to fire); a retry with the same
    // Idempotency-Key, given time, gets one run, never two.
    let s = Server::start_with(&["--request-timeout", "1"], &[("CAIRN_DATABASE_URL", url)]);
    let key = [("idempotency-key", "busy-1")];
    let json = || Some(("application/json", body.to_string().into_bytes()));
    let r = s.send("POST", "/runs", Some(&k), json(), &key).await;
    r.problem(503, "timeout");
    assert_eq!(s.send("GET", "/healthz", None, None, &[]).await.status, 200);
    drop(s);
    let s = Server::start_with(&["--request-timeout", "120"], &[("CAIRN_DATABASE_URL", url)]);
    let again = s.send("POST", "/runs", Some(&k), json(), &key).await;
    assert!(matches!(again.status, 200 | 201), "{}", again.text);
    let id = again.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["completed"]).await;
    let runs = s.get("/runs?workflow=busy&limit=100", &k).await;
    assert_eq!(runs.json["items"].as_array().map(Vec::len), Some(5), "four, and one for the key: {}", runs.text);
}

/// The refusals reproducer (before: a decision by someone not listed, a
/// wrong token, an invalid submission or a failed API-key check wrote
/// nothing to the audit log, and key checks were not rate-limited). Each is
/// now an `AccessDenied` in the `refusals` stream, listed in the audit log
/// with the outcome `denied`, the actor, the action, the reason and the
/// client's address, and the run's own stream is untouched; past
/// `--max-key-failures` an address gets 429 without any key being checked.
async fn refusals_are_audited_and_key_guessing_is_limited(url: &str) {
    let s = Server::start_with(&["--max-key-failures", "4"], &[("CAIRN_DATABASE_URL", url)]);
    let admin = s.key("root", "admin", "root");
    let writer = s.key("writer", "operator", "writer");
    let boss = s.key("boss", "operator", "boss");
    let reader = s.key("auditor", "viewer", "auditor");
    assert_eq!(s.post_yaml("/workflows", &admin, FORM).await.status, 201);
    let run =
        s.post("/runs", &admin, &json!({"workflow": "brief"})).await.json["run_id"].as_str().expect("id").to_owned();
    let sub = format!("/runs/{run}/steps/brief/submission");
    let version =
        || async { s.get(&format!("/runs/{run}/events"), &admin).await.json["items"].as_array().map(Vec::len) };
    // Once the form is requested (the background driver records it).
    let mut before = version().await;
    for _ in 0..200 {
        if s.get("/inbox", &admin).await.json["items"].as_array().is_some_and(|i| !i.is_empty()) {
            before = version().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    s.post(&sub, &boss, &json!({"values": {"topic": "Rust"}})).await.problem(403, "not-allowed");
    s.post(&sub, &writer, &json!({"values": {"topic": "Rust"}, "token": "crt_forged"})).await.problem(403, "bad-token");
    s.post(&sub, &writer, &json!({"values": {"topic": "ab"}})).await.problem(422, "invalid-submission");
    s.post("/runs", &reader, &json!({"workflow": "brief"})).await.problem(403, "forbidden");
    assert_eq!(version().await, before, "nothing was written to the run's stream");

    let audit = s.get("/audit?limit=1000", &admin).await;
    let denied: Vec<&Value> =
        audit.json["items"].as_array().expect("items").iter().filter(|r| r["outcome"] == "denied").collect();
    let reasons: Vec<(String, String)> = denied
        .iter()
        .map(|r| (r["actor"].as_str().unwrap_or("").to_owned(), r["reason"].as_str().unwrap_or("").to_owned()))
        .collect();
    for want in
        [("boss", "not-allowed"), ("writer", "bad-token"), ("writer", "invalid-submission"), ("auditor", "forbidden")]
    {
        assert!(reasons.contains(&(want.0.to_owned(), want.1.to_owned())), "{want:?} not in {reasons:?}");
    }
    let first = denied.iter().find(|r| r["actor"] == "boss").expect("boss");
    assert_eq!(first["action"], "POST /runs/{id}/steps/{step}/submission");
    assert_eq!(first["resource"], format!("run-{run}/brief"));
    assert!(first["origin"].as_str().is_some_and(|o| o.starts_with("127.0.0.1")), "{first}");
    assert!(!audit.text.contains("crt_forged"), "a presented token is never recorded");

    // Guessing keys: 4 failures, then 429 without checking (even a valid key).
    let guess = "cairn_abcdef123456_notthesecret";
    for _ in 0..4 {
        s.get("/runs", guess).await.problem(401, "bad-key");
    }
    let limited = s.get("/runs", guess).await;
    limited.problem(429, "too-many-failures");
    assert!(limited.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s <= 60));
    s.get("/runs", &admin).await.problem(429, "too-many-failures");
    s.get("/runs", guess).await.problem(429, "too-many-failures");
    drop(s);
    // A new server (another window) reads what was recorded.
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let audit = s.get("/audit?limit=1000", &admin).await;
    let rows: Vec<&Value> =
        audit.json["items"].as_array().expect("items").iter().filter(|r| r["outcome"] == "denied").collect();
    let bad_key = rows.iter().filter(|r| r["reason"] == "bad-key").count();
    let over = rows.iter().filter(|r| r["reason"] == "too-many-failures").count();
    assert_eq!((bad_key, over), (4, 1), "each failed check, and the first refusal over the limit only");
    assert!(!audit.text.contains("notthesecret"), "never a key's secret");
    let events = s.cairn(&["events", "--stream", "refusals"]);
    let events = String::from_utf8_lossy(&events.stdout).to_string();
    assert!(
        events.contains("abcdef123456") && !events.contains("notthesecret"),
        "the key id, never its secret: {events}"
    );
}

const SECRET: &str = "s3cr3t-Tok3n-0123456789xyz";

/// A service that echoes the `Authorization` header's secret back in the
/// forms services use: as is, upper-cased, reversed, hex, base64 and inside a
/// Basic credential; `/fail` refuses with the secret in its error body.
async fn echo_secret() -> String {
    use base64::Engine as _;
    fn forms(h: &axum::http::HeaderMap) -> Value {
        let token = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").trim_start_matches("Bearer ");
        let b64 = base64::engine::general_purpose::STANDARD;
        json!({
            "seen": token,
            "upper": token.to_uppercase(),
            "reversed": token.chars().rev().collect::<String>(),
            "hex": hex::encode(token),
            "b64": b64.encode(token),
            "basic": format!("Basic {}", b64.encode(format!("user:{token}"))),
            "note": format!("your token {token} is valid"),
        })
    }
    let app = axum::Router::new()
        .route("/echo", axum::routing::post(|h: axum::http::HeaderMap| async move { axum::Json(forms(&h)) }))
        .route(
            "/fail",
            axum::routing::post(|h: axum::http::HeaderMap| async move {
                (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({ "error": forms(&h) })))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The forms of [`SECRET`] a leak would take, computed here independently
/// of the engine.
fn secret_forms() -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        SECRET.to_owned(),
        SECRET.to_uppercase(),
        SECRET.to_lowercase(),
        SECRET.chars().rev().collect(),
        hex::encode(SECRET),
        b64.encode(SECRET).trim_end_matches('=').to_owned(),
        b64.encode(format!("user:{SECRET}")).trim_end_matches('=').to_owned(),
    ]
}

fn leaks(haystack: &[u8]) -> Vec<String> {
    secret_forms().into_iter().filter(|f| haystack.windows(f.len()).any(|w| w == f.as_bytes())).collect()
}

/// The secrets reproducer: a secret used in an `http` step's header, echoed
/// back by the service in other forms (upper-case, reversed, hex, base64, a
/// Basic credential) in a response and in an error. Neither it nor any of
/// these forms is anywhere: the database files and WAL (or every table on
/// PostgreSQL), an export, the server's log, the API's answers. The
/// placeholder shows where each was.
async fn a_secret_is_nowhere_in_any_form(url: &str, files: Option<&std::path::Path>) {
    let base = echo_secret().await;
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url), ("CAIRN_SECRET_API_TOKEN", SECRET)]);
    let k = s.key("root", "admin", "root");
    let wf = "name: leaky\ninputs: { type: object, properties: { base: { type: string } }, required: [base] }\nsteps:\n  - id: call\n    http:\n      method: POST\n      url: \"{{ inputs.base }}/echo\"\n      headers: { Authorization: \"Bearer {{ secrets.API_TOKEN }}\" }\n      body: { q: 1 }\n  - id: refused\n    http:\n      method: POST\n      url: \"{{ inputs.base }}/fail\"\n      headers: { Authorization: \"Bearer {{ secrets.API_TOKEN }}\" }\n      body: { q: 2 }\n";
    assert_eq!(s.post_yaml("/workflows", &k, wf).await.status, 201);
    let r = s.post("/runs", &k, &json!({"workflow": "leaky", "inputs": {"base": base}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &k, &["failed"]).await;

    let mut answers = String::new();
    for path in [
        format!("/runs/{id}"),
        format!("/runs/{id}/events"),
        format!("/runs/{id}/context"),
        format!("/runs/{id}/history"),
        format!("/audit?run={id}&limit=1000"),
        "/runs".to_owned(),
    ] {
        let a = s.get(&path, &k).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        answers.push_str(&a.text);
    }
    let context = s.get(&format!("/runs/{id}/context"), &k).await.json;
    assert_eq!(context["outputs"]["call"]["body"]["seen"], "[redacted:API_TOKEN]", "the echo was recorded: {context}");
    assert_eq!(context["outputs"]["call"]["body"]["basic"], "Basic [redacted:API_TOKEN]", "{context}");
    assert!(answers.contains("[redacted:API_TOKEN]"));
    assert_eq!(leaks(answers.as_bytes()), Vec::<String>::new(), "in the API's answers");

    let export = s.dir.path().join("all.jsonl");
    let out = s.cairn(&["export", "-o", export.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = std::fs::read(&export).expect("export");
    assert!(exported.windows(10).any(|w| w == b"[redacted:"), "the export has the run");
    assert_eq!(leaks(&exported), Vec::<String>::new(), "in the export");
    assert_eq!(leaks(s.logs().as_bytes()), Vec::<String>::new(), "in the server's log");

    let mut stored = Vec::new();
    match files {
        Some(dir) => {
            for f in std::fs::read_dir(dir).expect("dir") {
                let p = f.expect("entry").path();
                if p.is_file() && p != export {
                    stored.extend(std::fs::read(&p).expect("read"));
                }
            }
            assert!(stored.len() > 10_000, "the database files were read");
        }
        None => {
            use sqlx::{Connection, Row};
            let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(&mut c)
            .await
            .expect("tables");
            assert!(tables.iter().any(|t| t == "events") && tables.len() > 5, "{tables:?}");
            for t in tables {
                let sql = format!("SELECT t::text FROM \"{t}\" t");
                for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut c).await.expect("rows") {
                    stored.extend(row.get::<String, _>(0).into_bytes());
                }
            }
        }
    }
    assert!(stored.windows(10).any(|w| w == b"[redacted:"), "the stored run was searched");
    assert_eq!(leaks(&stored), Vec::<String>::new(), "in the stored data");
}

#[tokio::test]
async fn sqlite_a_secret_is_nowhere_in_any_form() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("leak.db").display());
    a_secret_is_nowhere_in_any_form(&url, Some(dir.path())).await;
}

#[tokio::test]
async fn postgres_a_secret_is_nowhere_in_any_form() {
    let Some(url) = common::fresh_pg_url().await else { return };
    a_secret_is_nowhere_in_any_form(&url, None).await;
}

/// docs/api.md's table of statuses and codes is exactly the registry the
/// server answers from (`src/serve/codes.rs`), code for code, status for
/// status. (The binary is not built as a unit-test harness, so this reads
/// the registry's source.)
#[test]
fn the_documented_codes_are_the_registry() {
    let doc = include_str!("../../../docs/api.md");
    let start = doc.find("| status | codes |").expect("the table");
    let table = &doc[start..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    let mut documented = Vec::new();
    for line in table.lines().skip(2) {
        let cells: Vec<&str> = line.split('|').collect();
        let status: u16 = cells[1].trim().parse().expect("status");
        // The codes, without the notes in parentheses after some.
        let mut plain = String::new();
        let mut depth = 0;
        for ch in cells[2].chars() {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        for (i, part) in plain.split('`').enumerate() {
            if i % 2 == 1 && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                documented.push((part.to_owned(), status));
            }
        }
    }
    let registry = registry();
    let http: Vec<(String, u16)> =
        registry.iter().filter_map(|(n, status, _)| status.map(|s| (n.clone(), s))).collect();
    assert!(http.len() > 40, "the registry was read: {registry:?}");
    assert_eq!(documented, http, "docs/api.md and `cairn codes` list the same codes with the same statuses");
    let mut names: Vec<&str> = registry.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), registry.len(), "each code once");
}

/// Every code of the registry (`cairn codes --format json`): name, HTTP
/// status, exit code.
fn registry() -> Vec<(String, Option<u16>, u8)> {
    let out = common::cairn_url("sqlite://unused.db", &["codes", "--format", "json"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let codes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    codes
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_owned();
            let status = c["status"].as_u64().map(|s| u16::try_from(s).expect("status"));
            (name, status, u8::try_from(c["exit"].as_u64().expect("exit")).expect("exit"))
        })
        .collect()
}

/// docs/errors.md lists every code of the registry, in its order, with its
/// HTTP status and exit code; and the exit codes are the four documented.
#[test]
fn every_code_is_documented_with_its_status_and_exit_code() {
    let doc = include_str!("../../../docs/errors.md");
    let start = doc.find("| code | HTTP | exit | meaning |").expect("the table");
    let table = &doc[start..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    let documented: Vec<(String, Option<u16>, u8)> = table
        .lines()
        .skip(2)
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let status = cells[2].parse().ok();
            assert!(status.is_some() || cells[2] == "–", "{line}");
            assert!(cells[4].len() > 10, "{name} has a meaning: {line}");
            (name, status, cells[3].parse().expect("exit"))
        })
        .collect();
    let registry = registry();
    assert!(registry.len() > 60, "the registry was read: {registry:?}");
    assert_eq!(documented, registry, "docs/errors.md and `cairn codes` list the same codes, statuses and exit codes");
    for (name, status, exit) in &registry {
        assert!([1, 2, 3].contains(exit), "{name}: exit {exit} is one of the documented");
        if let Some(s) = status {
            assert_eq!(*exit, if *s >= 500 { 2 } else { 1 }, "{name}: a refusal exits 1, a server failure 2");
        }
    }
}

/// Start and wait (RFC 7240 `Prefer: wait=N`): the answer to the start
/// carries the run's end (output, or error) when it ends within N seconds,
/// and the run as it is otherwise; `GET /runs/{id}?wait=N` waits for a run
/// already started; a `wait` that is not seconds is ignored (RFC 7240).
async fn a_start_can_wait_for_the_run_to_end(url: &str) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    let quick = "name: quick\nsteps:\n  - id: a\n    task: echo\n    with: { n: '{{ inputs.n }}' }\n  - id: b\n    task: increment\n    with: { counter: '{{ steps.a.output.n }}' }\noutput: '{{ steps.b.output }}'\n";
    assert_eq!(s.post_yaml("/workflows", &k, quick).await.status, 201);
    let slow = "name: slow\nsteps:\n  - id: pause\n    wait: { for: 2s }\n  - id: done\n    task: echo\n    with: { ok: true }\n";
    assert_eq!(s.post_yaml("/workflows", &k, slow).await.status, 201);
    let failing =
        "name: failing\nsteps:\n  - id: boom\n    task: fail\n    with: { kind: card.declined, retryable: false }\n";
    assert_eq!(s.post_yaml("/workflows", &k, failing).await.status, 201);
    let start = |wf: &str, prefer: &str| {
        let body = json!({"workflow": wf, "inputs": {"n": 41}}).to_string().into_bytes();
        let prefer = prefer.to_owned();
        let s = &s;
        let k = k.clone();
        async move { s.send("POST", "/runs", Some(&k), Some(("application/json", body)), &[("prefer", &prefer)]).await }
    };

    // Ends within the wait: the answer is its end.
    let r = start("quick", "wait=10").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["status"], "completed", "{}", r.text);
    assert_eq!(r.json["output"]["counter"], 42, "{}", r.text);
    assert_eq!(r.header("preference-applied"), Some("wait=10"));
    // Other preferences beside it are ignored; a failure is an end too.
    let r = start("failing", "respond-async, wait=10").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["status"], "failed", "{}", r.text);
    assert_eq!(r.json["error"]["kind"], "card.declined", "{}", r.text);

    // Its drive stops short of the end (a timer), and the run ends within
    // the wait: the answer follows it through the log to its end.
    let r = start("slow", "wait=20").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["status"], "completed", "{}", r.text);
    assert_eq!(r.json["output"]["ok"], true, "{}", r.text);

    // Does not end within the wait: answered as it is, then waited for.
    let r = start("slow", "wait=0").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_ne!(r.json["status"], "completed", "{}", r.text);
    let id = r.json["run_id"].as_str().expect("id").to_owned();
    let g = s.get(&format!("/runs/{id}?wait=20"), &k).await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.json["status"], "completed", "{}", g.text);

    // Without a wait, nothing changes: the start answers at once.
    let r = start("quick", "").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("preference-applied"), None);

    // A wait that is not seconds is ignored, as RFC 7240 says of
    // preferences: answered at once, without Preference-Applied.
    let r = start("quick", "wait=soon").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("preference-applied"), None);
    // Refused: a wait longer than a request may take; an unknown run.
    let p = s.get(&format!("/runs/{id}?wait=61"), &k).await;
    assert!(p.problem(400, "bad-query")["detail"].as_str().is_some_and(|d| d.contains("60")), "{}", p.text);
    s.get(&format!("/runs/{}?wait=1", uuid::Uuid::now_v7()), &k).await.problem(404, "unknown-run");
}

/// `--threads 2` (async work on two threads instead of one): runs start,
/// end and are waited for, over a start-and-wait and over live events.
async fn a_server_on_two_threads_drives_and_answers(url: &str) {
    let s = Server::start_with(&["--threads", "2"], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    assert_eq!(s.post_yaml("/workflows", &k, ECHO).await.status, 201);
    let body = json!({"workflow": "echo", "inputs": {"n": 7}}).to_string().into_bytes();
    for _ in 0..5 {
        let r =
            s.send("POST", "/runs", Some(&k), Some(("application/json", body.clone())), &[("prefer", "wait=10")]).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json["status"], "completed", "{}", r.text);
    }
    let r = s.post("/runs", &k, &json!({"workflow": "echo", "inputs": {"n": 8}})).await;
    let id = r.json["run_id"].as_str().expect("id").to_owned();
    let live = s.get(&format!("/runs/{id}/live"), &k).await;
    assert!(live.text.contains("event: RunCompleted") && live.text.contains("event: end"), "{}", live.text);
    // `--threads 0` is refused with what to give instead.
    let out = common::cairn_url(url, &["serve", "--threads", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The server's timer wheel fires every wait of a loop, each after it falls
/// due and never before (a waiting run holds no task: the wheel drives it).
async fn a_loop_of_waits_completes_under_the_server(url: &str) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    let ticks = "name: ticks\nsteps:\n  - id: start\n    transform: { counter: 0 }\n  - id: tick\n    wait: { for: 1s }\n    max_visits: 4\n  - id: count\n    task: increment\n    with: \"{{ steps.count.output if steps.count is defined else steps.start.output }}\"\n    max_visits: 4\n  - id: again\n    branch:\n      if: \"steps.count.output.counter >= 3\"\n      then: done\n      else: tick\n  - id: done\n    transform: { ticks: 3 }\n";
    assert_eq!(s.post_yaml("/workflows", &k, ticks).await.status, 201);
    let r = s.post("/runs", &k, &json!({"workflow": "ticks"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["run_id"].as_str().expect("id").to_owned();
    let done = s.get(&format!("/runs/{id}?wait=30"), &k).await;
    assert_eq!(done.json["status"], "completed", "{}\n{}", done.text, s.logs());
    let events = s.get(&format!("/runs/{id}/events"), &k).await.json;
    let items = events["items"].as_array().expect("items");
    let mut due = std::collections::HashMap::new();
    let mut fired = 0;
    for e in items {
        match e["event_type"].as_str() {
            Some("TimerStarted") => {
                let at: chrono::DateTime<chrono::Utc> =
                    e["payload"]["due_at"].as_str().expect("due").parse().expect("time");
                due.insert(e["payload"]["timer_id"].as_str().expect("id").to_owned(), at);
            }
            Some("TimerFired") => {
                let at: chrono::DateTime<chrono::Utc> = e["recorded_at"].as_str().expect("at").parse().expect("time");
                let timer = e["payload"]["timer_id"].as_str().expect("id");
                assert!(at >= due[timer], "timer {timer} fired at {at}, before it was due at {}", due[timer]);
                fired += 1;
            }
            _ => {}
        }
    }
    assert_eq!(fired, 3, "every wait of the loop fired once: {events}");
}

/// An approval with typed fields over HTTP: the request lists them in its
/// `ApprovalRequested`; a decision with bad values is refused (422, each
/// field named under `/values`) and records nothing; values on an approval
/// without fields are refused; the right values are the step's output.
async fn an_approval_decision_carries_checked_values(url: &str) {
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url)]);
    let lead = s.key("lead", "approver", "lead");
    let ops = s.key("ops", "admin", "ops");
    let wf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/refund-approval.yaml"))
        .expect("example");
    assert_eq!(s.post_yaml("/workflows", &ops, &wf).await.status, 201);
    let run = s.post("/runs", &ops, &json!({"workflow": "refund-approval", "inputs": {"order": "A-17"}})).await;
    let id = run.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &ops, &["waiting"]).await;
    let events = s.get(&format!("/runs/{id}/events"), &ops).await.json;
    let req = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["event_type"] == "ApprovalRequested")
        .expect("request")
        .clone();
    let names: Vec<&str> =
        req["payload"]["fields"].as_array().expect("fields").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["amount", "reason", "note"], "{req}");
    let dec = format!("/runs/{id}/steps/review/decision");
    let bad = s.post(&dec, &lead, &json!({"approve": true, "values": {"amount": 0, "colour": "red"}})).await;
    bad.problem(422, "invalid-submission");
    let fields: Vec<&str> =
        bad.json["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    for f in ["/values/amount", "/values/reason", "/values/colour"] {
        assert!(fields.contains(&f), "{f} missing in {}", bad.text);
    }
    s.post(&dec, &lead, &json!({"approve": true, "values": []})).await.problem(422, "invalid-body");
    let ok = s
        .post(&dec, &lead, &json!({"approve": true, "values": {"amount": 80, "reason": "late"}, "comment": "sorry"}))
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let done = s.wait_status(&id, &ops, &["completed"]).await;
    assert_eq!(
        done["output"],
        json!({"order": "A-17", "refunded": 80, "reason": "late", "decided_by": "lead"}),
        "{done}"
    );
    let events = s.get(&format!("/runs/{id}/events"), &ops).await.json;
    let decided: Vec<&Value> =
        events["items"].as_array().expect("items").iter().filter(|e| e["event_type"] == "ApprovalDecided").collect();
    assert_eq!(decided.len(), 1, "the refusals recorded nothing: {events}");
    assert_eq!(decided[0]["payload"]["values"], json!({"amount": 80, "reason": "late"}));

    // An approval without fields refuses values instead of dropping them.
    assert_eq!(s.post_yaml("/workflows", &ops, APPROVAL).await.status, 201);
    let run = s.post("/runs", &ops, &json!({"workflow": "pay", "inputs": {"amount": 2}})).await;
    let id = run.json["run_id"].as_str().expect("id").to_owned();
    s.wait_status(&id, &ops, &["waiting"]).await;
    let boss = s.key("boss", "approver", "boss");
    let p =
        s.post(&format!("/runs/{id}/steps/ask/decision"), &boss, &json!({"approve": true, "values": {"x": 1}})).await;
    p.problem(422, "invalid-submission");
    assert!(p.text.contains("asks for no fields"), "{}", p.text);
}

/// `/metrics` (issue 21 point 4): a scrape needs a key; the counters move
/// with what the server did (runs started and ended by workflow and status,
/// step durations, failures, retries, AI attempts, tokens and cost, the
/// lateness of a timer), and the gauges read at scrape time follow the
/// task queue and the read models.
async fn metrics_count_what_the_server_did(url: &str) {
    let cfg = tempfile::tempdir().expect("dir");
    let cfg_path = cfg.path().join("cairn.yaml");
    std::fs::write(
        &cfg_path,
        "models:\n  priced:\n    provider: scripted\n    model: scripted\n    input_per_million: 2.0\n    \
         output_per_million: 4.0\n    currency: EUR\n",
    )
    .expect("config");
    let s = Server::start_with(&["--config", cfg_path.to_str().expect("path")], &[("CAIRN_DATABASE_URL", url)]);
    let k = s.key("root", "admin", "root");
    let viewer = s.key("prom", "viewer", "prometheus");
    s.send("GET", "/metrics", None, None, &[]).await.problem(401, "unauthenticated");
    let before = s.metrics(&viewer).await;
    assert_eq!(before.get("cairn_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0, "{}", before.1);
    assert!(before.1.contains("# HELP cairn_projection_lag_events"), "{}", before.1);

    let flows = [
        "name: quick\nsteps:\n  - id: a\n    task: echo\n    with: { n: 1 }\n  - id: b\n    task: echo\n    with: { n: 2 }\n",
        "name: flaky\nsteps:\n  - id: boom\n    task: fail\n    with: { kind: net.reset, retryable: true }\n    \
         retry: { max_attempts: 2, initial_interval: 10ms }\n",
        "name: nap\nsteps:\n  - id: pause\n    wait: { for: 1s }\n",
        "name: long\nsteps:\n  - id: pause\n    wait: { for: 1h }\n",
        "name: queued\nsteps:\n  - id: work\n    queue: metrics.q\n",
        "name: summarise\nsteps:\n  - id: sum\n    ai:\n      model: priced\n      prompt: Summarise.\n      scripted:\n        \
         - '{\"oops\": 1}'\n        - { content: '{\"summary\": \"quiet\"}', input_tokens: 120, output_tokens: 30 }\n    \
         output_contract: { type: object, required: [summary], properties: { summary: { type: string } } }\n",
    ];
    for f in flows {
        let r = s.post_yaml("/workflows", &k, f).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let start = |wf: &'static str| {
        let s = &s;
        let k = k.clone();
        async move {
            let body = json!({ "workflow": wf }).to_string().into_bytes();
            let r = s.send("POST", "/runs", Some(&k), Some(("application/json", body)), &[("prefer", "wait=20")]).await;
            assert_eq!(r.status, 201, "{}", r.text);
            r.json
        }
    };
    for _ in 0..2 {
        assert_eq!(start("quick").await["status"], "completed");
    }
    assert_eq!(start("flaky").await["status"], "failed");
    assert_eq!(start("nap").await["status"], "completed");
    assert_eq!(start("summarise").await["status"], "completed");
    let long =
        s.post("/runs", &k, &json!({ "workflow": "long" })).await.json["run_id"].as_str().expect("id").to_owned();
    let r = s.post(&format!("/runs/{long}/cancel"), &k, &json!({ "reason": "not needed" })).await;
    assert!(r.status < 300, "{}", r.text);
    let queued = s.post("/runs", &k, &json!({ "workflow": "queued" })).await;
    assert_eq!(queued.status, 201, "{}", queued.text);

    let m = s.metrics(&viewer).await;
    let wf = |w| [("workflow", w)];
    let ended = |w, status| m.get("cairn_runs_ended_total", &[("workflow", w), ("status", status)]);
    assert_eq!(m.get("cairn_runs_started_total", &wf("quick")), 2.0, "{}", m.1);
    assert_eq!(ended("quick", "completed"), 2.0, "{}", m.1);
    assert_eq!(ended("flaky", "failed"), 1.0, "{}", m.1);
    assert_eq!(ended("long", "cancelled"), 1.0, "{}", m.1);
    assert_eq!(ended("nap", "completed"), 1.0, "{}", m.1);
    assert_eq!(m.get("cairn_runs_started_total", &wf("queued")), 1.0, "{}", m.1);
    assert_eq!(ended("queued", "completed"), 0.0, "{}", m.1);
    // Histograms: a count per completed step attempt; the nap run lasted its second.
    let steps = |step| m.get("cairn_step_duration_seconds_count", &[("workflow", "quick"), ("step", step)]);
    assert_eq!((steps("a"), steps("b")), (2.0, 2.0), "{}", m.1);
    let nap = [("workflow", "nap"), ("status", "completed")];
    assert_eq!(m.get("cairn_run_duration_seconds_count", &nap), 1.0, "{}", m.1);
    assert!(m.get("cairn_run_duration_seconds_sum", &nap) >= 1.0, "{}", m.1);
    assert_eq!(
        m.get("cairn_run_duration_seconds_bucket", &[("workflow", "nap"), ("status", "completed"), ("le", "0.5")]),
        0.0,
        "{}",
        m.1
    );
    // Two failed attempts of the flaky step, one retry between them.
    let boom = [("workflow", "flaky"), ("step", "boom"), ("error_kind", "net.reset")];
    assert_eq!(m.get("cairn_step_failures_total", &boom), 2.0, "{}", m.1);
    assert_eq!(m.get("cairn_retries_total", &[("workflow", "flaky"), ("step", "boom")]), 1.0, "{}", m.1);
    // The AI step: its tokens and their price, in millionths of a euro.
    let ai =
        |k: &str, v: &str| m.get(&format!("cairn_ai_{k}"), &[("workflow", "summarise"), v.split_once('=').expect("l")]);
    assert!(ai("attempts_total", "outcome=completed") >= 2.0, "{}", m.1);
    assert!(ai("tokens_total", "direction=input") >= 120.0, "{}", m.1);
    assert!(ai("tokens_total", "direction=output") >= 30.0, "{}", m.1);
    assert!(ai("cost_micros_total", "currency=EUR") >= 360.0, "120 × 2 + 30 × 4 µ€: {}", m.1);
    // The nap's timer was woken (its lateness observed).
    assert!(m.get("cairn_wakeup_lateness_seconds_count", &[]) >= 1.0, "{}", m.1);
    // Gauges at scrape: the queued task waits; the read models are there.
    assert_eq!(m.get("cairn_task_queue_tasks", &[("queue", "metrics.q"), ("state", "offered")]), 1.0, "{}", m.1);
    assert!(m.1.contains("cairn_projection_lag_events{projection=\"runs\"}"), "{}", m.1);
    assert_eq!(m.get("cairn_runs_quarantined", &[]), 0.0, "{}", m.1);
    // The queue drained: 0, not its last depth.
    let w = s.key("w", "worker", "w");
    let r = s.post("/tasks/poll", &w, &json!({ "queues": ["metrics.q"], "worker": "w1", "wait_ms": 2000 })).await;
    let token = r.json["tasks"][0]["token"].as_str().unwrap_or_else(|| panic!("{}", r.text)).to_owned();
    let r = s.post("/tasks/complete", &w, &json!({ "token": token, "output": { "ok": true } })).await;
    assert!(r.status < 300, "{}", r.text);
    s.wait_status(queued.json["run_id"].as_str().expect("id"), &k, &["completed"]).await;
    let m = s.metrics(&viewer).await;
    assert_eq!(m.get("cairn_task_queue_tasks", &[("queue", "metrics.q"), ("state", "offered")]), 0.0, "{}", m.1);
    assert_eq!(m.get("cairn_runs_ended_total", &[("workflow", "queued"), ("status", "completed")]), 1.0, "{}", m.1);
}

on_both!(
    metrics_count_what_the_server_did,
    a_server_on_two_threads_drives_and_answers,
    a_loop_of_waits_completes_under_the_server,
    a_start_can_wait_for_the_run_to_end,
    a_run_that_kills_every_start_is_quarantined,
    busy_runs_never_stall_other_requests,
    refusals_are_audited_and_key_guessing_is_limited,
    twenty_concurrent_starts_with_one_idempotency_key_give_one_run,
    an_input_past_the_nesting_limit_is_refused_and_the_read_side_goes_on,
    a_decision_right_after_the_start_is_recorded,
    a_template_cannot_make_the_server_build_gigabytes,
    an_approval_decision_carries_checked_values,
);

/// Four servers started at the same moment on a fresh PostgreSQL database
/// all start and all are ready (before: one exited with `duplicate key value
/// violates unique constraint "pg_type_typname_nsp_index"`, the read-model
/// tables being created concurrently without a lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_started_together_on_a_fresh_postgres_database_all_start() {
    let Some(url) = common::fresh_pg_url().await else { return };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Server::start_with(&[], &[("CAIRN_DATABASE_URL", &url)]))
        })
        .collect();
    let servers: Vec<Server> = starts.into_iter().map(|t| t.join().expect("a server started")).collect();
    for s in &servers {
        let r = s.send("GET", "/readyz", None, None, &[]).await;
        assert_eq!(r.status, 200, "{}\n{}", r.text, s.logs());
    }
}
