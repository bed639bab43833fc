//! Webhook triggers (issue 21 point 2): `POST /hooks/{name}` starts a run
//! from a signed delivery, GitHub and Stripe style; a bad signature is
//! refused and audited; a replayed delivery id starts nothing new; bad
//! definitions are refused with what to fix. On SQLite and PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests reach the time directly

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;

use serde_json::{Value, json};
use server::Server;

const GH_SECRET: &str = "It's a Secret to Everybody";
const STRIPE_SECRET: &str = "whsec_test_0123456789";

use common::hmac_hex as hmac;

async fn deliver(s: &Server, hook: &str, body: &str, headers: &[(&str, &str)]) -> server::Resp {
    s.send("POST", &format!("/hooks/{hook}"), None, Some(("application/json", body.as_bytes().to_vec())), headers).await
}

async fn put(s: &Server, key: &str, name: &str, body: Value) -> server::Resp {
    s.send(
        "PUT",
        &format!("/triggers/{name}"),
        Some(key),
        Some(("application/json", body.to_string().into_bytes())),
        &[],
    )
    .await
}

async fn webhooks_start_runs_once_per_delivery_and_refuse_bad_signatures(url: &str) {
    let s = Server::start_with(
        &[],
        &[("CAIRN_DATABASE_URL", url), ("CAIRN_SECRET_GH", GH_SECRET), ("CAIRN_SECRET_STRIPE", STRIPE_SECRET)],
    );
    let admin = s.key("root", "admin", "root");
    let viewer = s.key("v", "viewer", "v");
    let flow = "name: on-push\ninputs:\n  type: object\n  required: [repo]\n  properties: { repo: { type: string }, event: { type: string } }\n\
                steps:\n  - id: a\n    task: echo\n    with: { repo: '{{ inputs.repo }}', event: '{{ inputs.event }}' }\noutput: '{{ steps.a.output }}'\n";
    assert_eq!(s.post_yaml("/workflows", &admin, flow).await.status, 201);
    let gh = json!({
        "workflow": "on-push", "signature": "github", "secret": "GH",
        "inputs": { "repo": "{{ body.repository.full_name }}", "event": "{{ headers['x-github-event'] }}" }
    });
    // Refused definitions, each with what to fix; nothing recorded.
    let bad = |patch: Value| {
        let mut b = gh.clone();
        for (k, v) in patch.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    for (patch, says) in [
        (json!({ "signature": "gitlab" }), "github, stripe"),
        (json!({ "secret": "NOPE" }), "CAIRN_SECRET_NOPE"),
        (json!({ "delivery_id": "query:id" }), "header:<Name>"),
        (json!({ "workflow": "nope" }), "publish it first"),
        (json!({ "inputs": { "repo": "{{ body.x | nosuchfilter }}" } }), "inputs"),
    ] {
        let r = put(&s, &admin, "gh", bad(patch)).await;
        assert!(r.problem(422, "invalid-trigger")["detail"].as_str().is_some_and(|d| d.contains(says)), "{}", r.text);
    }
    deliver(&s, "gh", "{}", &[]).await.problem(404, "unknown-trigger");
    put(&s, &viewer, "gh", gh.clone()).await.problem(403, "forbidden");
    let r = put(&s, &admin, "gh", gh.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["hook"], "/hooks/gh");

    // A GitHub delivery: signed, mapped, started, driven.
    let body = r#"{"ref":"refs/heads/main","repository":{"full_name":"acme/site"}}"#;
    let sig = format!("sha256={}", hmac(GH_SECRET.as_bytes(), body.as_bytes()));
    let good = [("x-hub-signature-256", sig.as_str()), ("x-github-delivery", "d-1"), ("x-github-event", "push")];
    let r = deliver(&s, "gh", body, &good).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!((r.json["started"].as_bool(), r.json["delivery_id"].as_str()), (Some(true), Some("d-1")));
    let run = r.json["run_id"].as_str().expect("run").to_owned();
    let done = s.wait_status(&run, &admin, &["completed", "failed"]).await;
    assert_eq!(done["output"], json!({ "repo": "acme/site", "event": "push" }), "{done}");
    assert_eq!(done["started_by"], "hook:gh", "{done}");

    // The same delivery again (a retry, or a replay): nothing new.
    let r = deliver(&s, "gh", body, &good).await;
    assert_eq!(
        (r.status, r.json["started"].as_bool(), r.json["run_id"].as_str()),
        (200, Some(false), Some(run.as_str()))
    );
    let runs = s.get("/runs?workflow=on-push", &admin).await;
    assert_eq!(runs.json["items"].as_array().map(Vec::len), Some(1), "{}", runs.text);

    // Bad signatures: refused, and audited as refused requests.
    let forged = format!("sha256={}", hmac(b"guess", body.as_bytes()));
    let tampered = r#"{"ref":"refs/heads/main","repository":{"full_name":"evil/site"}}"#;
    for (b, sig) in [(body, forged.as_str()), (tampered, sig.as_str()), (body, "sha256=zz"), (body, "md5=00")] {
        let h = [("x-hub-signature-256", sig), ("x-github-delivery", "d-2"), ("x-github-event", "push")];
        deliver(&s, "gh", b, &h).await.problem(401, "bad-signature");
    }
    deliver(&s, "gh", body, &[("x-github-delivery", "d-3")]).await.problem(401, "bad-signature");
    // Signed, but no delivery id.
    deliver(&s, "gh", body, &[("x-hub-signature-256", &sig)]).await.problem(400, "bad-delivery");
    let audit = s.get("/audit?limit=1000", &admin).await;
    let denied: Vec<&Value> = audit.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["outcome"] == "denied" && r["reason"] == "bad-signature")
        .collect();
    assert_eq!(denied.len(), 5, "{}", audit.text);
    assert_eq!(denied[0]["action"], "POST /hooks/{name}", "{}", audit.text);
    let runs = s.get("/runs?workflow=on-push", &admin).await;
    assert_eq!(runs.json["items"].as_array().map(Vec::len), Some(1), "nothing started: {}", runs.text);

    // Stripe style: a timestamped signature; a stale one is a replay.
    let stripe = json!({ "workflow": "on-push", "signature": "stripe", "secret": "STRIPE",
                         "inputs": { "repo": "{{ body.data.object.id }}", "event": "{{ body.type }}" } });
    assert_eq!(put(&s, &admin, "pay", stripe).await.status, 200);
    let body = r#"{"id":"evt_1","type":"charge.succeeded","data":{"object":{"id":"ch_9"}}}"#;
    let signed = |t: i64| format!("t={t},v1={}", hmac(STRIPE_SECRET.as_bytes(), format!("{t}.{body}").as_bytes()));
    let now = chrono::Utc::now().timestamp();
    let r = deliver(&s, "pay", body, &[("stripe-signature", &signed(now))]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let paid = r.json["run_id"].as_str().expect("run").to_owned();
    let done = s.wait_status(&paid, &admin, &["completed", "failed"]).await;
    assert_eq!(done["output"], json!({ "repo": "ch_9", "event": "charge.succeeded" }), "{done}");
    let r = deliver(&s, "pay", body, &[("stripe-signature", &signed(now - 600))]).await;
    assert!(r.problem(401, "bad-signature")["detail"].as_str().is_some_and(|d| d.contains("tolerance")), "{}", r.text);
    let r = deliver(&s, "pay", body, &[("stripe-signature", &signed(now + 1))]).await;
    assert_eq!((r.status, r.json["run_id"].as_str()), (200, Some(paid.as_str())), "the same event id: {}", r.text);

    // Listed with the secret's name, never its value; deleted, gone.
    let list = s.get("/triggers", &viewer).await;
    assert_eq!(list.json["items"].as_array().map(Vec::len), Some(2), "{}", list.text);
    assert!(!list.text.contains(GH_SECRET) && !list.text.contains(STRIPE_SECRET), "{}", list.text);
    let o = s.cairn(&["triggers", "list", "--format", "json"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"/hooks/pay\""), "{}", String::from_utf8_lossy(&o.stderr));
    let r = s.send("DELETE", "/triggers/gh", Some(&admin), None, &[]).await;
    assert_eq!(r.status, 204, "{}", r.text);
    deliver(&s, "gh", body, &good).await.problem(404, "unknown-trigger");
}

on_both!(webhooks_start_runs_once_per_delivery_and_refuse_bad_signatures);
