//! Lifecycle subscriptions (issue 21 point 3): an endpoint that is down
//! delays no run; its deliveries are retried with backoff, visible in the
//! delivery log, signed when they arrive, and dead after their attempts,
//! until an operator puts them back; a subscription can start a workflow
//! instead. On SQLite and PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::Server;

const SECRET: &str = "subscription-secret-0123";

use common::hmac_hex as hmac;

async fn put(s: &Server, key: &str, name: &str, body: Value) -> server::Resp {
    let b = body.to_string().into_bytes();
    s.send("PUT", &format!("/subscriptions/{name}"), Some(key), Some(("application/json", b)), &[]).await
}

/// Polls `GET /deliveries?QUERY` until `ok` holds of its items.
async fn deliveries_until(
    s: &Server,
    key: &str,
    query: &str,
    within: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let r = s.get(&format!("/deliveries?{query}"), key).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.json["items"].as_array().cloned().unwrap_or_default();
        if ok(&items) {
            return items;
        }
        assert!(t.elapsed() < within, "deliveries never got there: {}\n{}", r.text, s.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// An endpoint on `port` that records what it is sent.
async fn receiver(port: u16) -> Received {
    let got: Received = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let g = g.clone();
            async move {
                g.lock().expect("lock").push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the receiver's port");
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}

async fn a_down_endpoint_delays_no_run_and_its_deliveries_are_retried_and_visible(url: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let s = Server::start_with(&[], &[("CAIRN_DATABASE_URL", url), ("CAIRN_SECRET_HOOK", SECRET)]);
    let admin = s.key("root", "admin", "root");
    for flow in [
        "name: quick\nsteps:\n  - id: a\n    task: echo\n    with: { n: 1 }\n",
        "name: boom\nsteps:\n  - id: a\n    task: fail\n    with: { kind: card.declined, retryable: false }\n",
        "name: incident\ninputs: { type: object, properties: { event: { type: object } } }\nsteps:\n  - id: page\n    task: echo\n    with: { about: '{{ inputs.event.run_id }}' }\noutput: '{{ steps.page.output }}'\n",
    ] {
        assert_eq!(s.post_yaml("/workflows", &admin, flow).await.status, 201);
    }
    // A workflow's own lifecycle hooks (`on:`): an endpoint and a workflow.
    let guarded = format!(
        "name: guarded\non:\n  run.failed:\n    - url: http://127.0.0.1:{port}/hook\n      secret: HOOK\n    - start: incident\n\
         steps:\n  - id: a\n    task: fail\n    with: {{ kind: disk.full, retryable: false }}\n"
    );
    let r = s.post_yaml("/workflows", &admin, &guarded).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bad = "name: badhooks\non:\n  run.exploded:\n    - start: incident\n  run.failed:\n    - url: http://x\nsteps:\n  - id: a\n    task: echo\n";
    let r = s.post_yaml("/workflows", &admin, bad).await;
    r.problem(422, "invalid-definition");
    assert!(r.text.contains("not a lifecycle event") && r.text.contains("needs a `secret`"), "{}", r.text);
    // Refused definitions, with what to fix.
    let hook = format!("http://127.0.0.1:{port}/hook");
    for (body, says) in [
        (json!({ "events": ["run.exploded"], "url": hook, "secret": "HOOK" }), "run.failed"),
        (json!({ "events": ["run.failed"], "url": hook }), "secret"),
        (json!({ "events": ["run.failed"], "url": hook, "secret": "NOPE" }), "CAIRN_SECRET_NOPE"),
        (json!({ "events": ["run.failed"], "url": "ftp://x", "secret": "HOOK" }), "http"),
        (json!({ "events": ["run.failed"], "start": "nope" }), "publish it first"),
    ] {
        let r = put(&s, &admin, "bad", body).await;
        assert!(
            r.problem(422, "invalid-subscription")["detail"].as_str().is_some_and(|d| d.contains(says)),
            "{}",
            r.text
        );
    }
    let ok = |r: server::Resp| assert_eq!(r.status, 200, "{}", r.text);
    ok(put(&s, &admin, "ops", json!({ "events": ["run.completed", "run.failed"], "workflows": ["quick", "boom"], "url": hook, "secret": "HOOK", "max_attempts": 20 })).await);
    ok(put(&s, &admin, "fragile", json!({ "events": ["run.failed"], "workflows": ["boom"], "url": "http://127.0.0.1:1/never", "secret": "HOOK", "max_attempts": 2 })).await);
    ok(put(&s, &admin, "page", json!({ "events": ["run.failed"], "workflows": ["boom"], "start": "incident" })).await);

    // The endpoint is down: the runs are not delayed.
    let t = Instant::now();
    let start = |wf: &'static str| {
        let (s, admin) = (&s, admin.clone());
        async move {
            let b = json!({ "workflow": wf }).to_string().into_bytes();
            let r =
                s.send("POST", "/runs", Some(&admin), Some(("application/json", b)), &[("prefer", "wait=10")]).await;
            assert_eq!(r.status, 201, "{}", r.text);
            r.json
        }
    };
    let quick = start("quick").await;
    let boom = start("boom").await;
    let guarded = start("guarded").await;
    assert_eq!((quick["status"].as_str(), boom["status"].as_str()), (Some("completed"), Some("failed")));
    assert_eq!(guarded["status"], "failed", "{guarded}");
    assert!(t.elapsed() < Duration::from_secs(3), "runs delayed by a down endpoint: {:?}", t.elapsed());

    // Attempted, failed, visible with why and when next.
    let pending = deliveries_until(&s, &admin, "subscription=ops", Duration::from_secs(10), |items| {
        items.len() == 2 && items.iter().all(|d| d["status"] == "pending" && d["attempts"].as_u64() >= Some(1))
    })
    .await;
    assert!(
        pending.iter().all(|d| d["last_error"].as_str().is_some_and(|e| !e.is_empty()) && d["next_at"].is_string()),
        "{pending:?}"
    );
    // Out of attempts: dead, until put back.
    let dead = deliveries_until(&s, &admin, "status=dead", Duration::from_secs(15), |items| items.len() == 1).await;
    assert_eq!(
        (dead[0]["subscription"].as_str(), dead[0]["attempts"].as_u64()),
        (Some("fragile"), Some(2)),
        "{dead:?}"
    );
    // The workflow subscription and the guarded workflow's own hook each
    // started an incident run, once.
    let t = Instant::now();
    let incidents = loop {
        let r = s.get("/runs?workflow=incident", &admin).await;
        let items = r.json["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 2 {
            assert_eq!(items.len(), 2, "{}", r.text);
            break items;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no incident runs: {}\n{}", r.text, s.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut about = Vec::new();
    for i in &incidents {
        let done = s.wait_status(i["run_id"].as_str().expect("id"), &admin, &["completed", "failed"]).await;
        about.push(done["output"]["about"].as_str().unwrap_or("").to_owned());
    }
    about.sort();
    let mut want =
        vec![boom["run_id"].as_str().unwrap_or("").to_owned(), guarded["run_id"].as_str().unwrap_or("").to_owned()];
    want.sort();
    assert_eq!(about, want);

    // The endpoint comes up: the retries reach it; each event once, signed.
    let got = receiver(port).await;
    deliveries_until(&s, &admin, "subscription=ops", Duration::from_secs(40), |items| {
        items.len() == 2 && items.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    deliveries_until(&s, &admin, "subscription=on:guarded:run.failed:0", Duration::from_secs(40), |items| {
        items.len() == 1 && items[0]["status"] == "delivered"
    })
    .await;
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 3, "each event delivered once");
    let mut kinds = Vec::new();
    for (headers, body) in &got {
        let sig = headers.get("cairn-signature").and_then(|v| v.to_str().ok()).expect("signed");
        let (t, v1) = sig.split_once(",v1=").expect("t=…,v1=…");
        let t = t.strip_prefix("t=").expect("t=");
        assert_eq!(v1, hmac(SECRET.as_bytes(), format!("{t}.{body}").as_bytes()), "the signature verifies");
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(headers.get("cairn-delivery").and_then(|v| v.to_str().ok()), v["id"].as_str());
        kinds.push((v["type"].as_str().unwrap_or("").to_owned(), v["workflow"].as_str().unwrap_or("").to_owned()));
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("run.completed".to_owned(), "quick".to_owned()),
            ("run.failed".to_owned(), "boom".to_owned()),
            ("run.failed".to_owned(), "guarded".to_owned())
        ]
    );

    // Put back: a dead one yes, a delivered one no, an unknown one 404.
    let id = dead[0]["id"].as_str().expect("id").to_owned();
    let r = s.send("POST", &format!("/deliveries/{id}/retry"), Some(&admin), None, &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = s.get("/deliveries?subscription=fragile", &admin).await;
    assert_ne!(d.json["items"][0]["status"], "dead", "{}", d.text);
    let delivered = pending[0]["id"].as_str().expect("id");
    s.send("POST", &format!("/deliveries/{delivered}/retry"), Some(&admin), None, &[]).await.problem(409, "not-dead");
    s.send("POST", "/deliveries/nope@1/retry", Some(&admin), None, &[]).await.problem(404, "unknown-delivery");
    // The CLI reads the same log.
    let o = s.cairn(&["deliveries", "list", "--subscription", "ops", "--format", "json"]);
    let listed: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
}

on_both_mt!(a_down_endpoint_delays_no_run_and_its_deliveries_are_retried_and_visible);
