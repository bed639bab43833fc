//! Resume, replay, fork and shadow re-validation against real stores: each
//! policy on sequences, branches, parallel, map and approvals; a run failed
//! by an HTTP 500 that resumes once the endpoint is fixed; every refusal;
//! two racing resumes; and a property test that `failed-only` never runs a
//! step again whose inputs are unchanged.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

// The core's decider itself: a property test decides again on every prefix.
use cairn_core::decider::decide;
use cairn_events::{Event, EventStore};
use cairn_runtime::people::Vote;
use cairn_runtime::recovery::{self, Mark, Refusal, ResumeError, ResumeRequest};
use cairn_runtime::run::{Policy, RunStatus, fold};
use cairn_runtime::{Engine, TaskError, TaskRegistry};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Tasks that count their calls by step: `ok` echoes its input, `counter`
/// returns how often it ran, `broken` fails until `fixed` is set.
#[derive(Clone, Default)]
struct World {
    fixed: Arc<AtomicBool>,
    calls: Arc<Mutex<BTreeMap<String, u32>>>,
    counter: Arc<AtomicU32>,
}

impl World {
    fn engine(&self, store: &Arc<dyn EventStore>) -> Engine {
        let mut tasks = TaskRegistry::builtin();
        let w = self.clone();
        tasks.register("ok", move |input: Value, ctx: cairn_runtime::TaskContext| {
            w.count(&ctx.step_id);
            async move { Ok(input) }
        });
        let w = self.clone();
        tasks.register("counter", move |_input: Value, ctx: cairn_runtime::TaskContext| {
            w.count(&ctx.step_id);
            let n = w.counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(json!({ "n": n })) }
        });
        let w = self.clone();
        tasks.register("broken", move |input: Value, ctx: cairn_runtime::TaskContext| {
            w.count(&ctx.step_id);
            let fixed = w.fixed.load(Ordering::SeqCst);
            async move {
                if fixed { Ok(input) } else { Err(TaskError::new("service.down", "the service is down", false)) }
            }
        });
        Engine::new(store.clone(), tasks)
    }

    fn count(&self, step: &str) {
        *self.calls.lock().expect("calls").entry(step.to_owned()).or_default() += 1;
    }

    fn calls(&self, step: &str) -> u32 {
        self.calls.lock().expect("calls").get(step).copied().unwrap_or(0)
    }

    fn fix(&self) {
        self.fixed.store(true, Ordering::SeqCst);
    }
}

async fn failed_run(e: &Engine, src: &str, inputs: Value) -> Uuid {
    let (w, v) = common::publish(e, src).await;
    let id = e.start(&w, v, inputs, "test").await.expect("start");
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Failed, "{:?}", s.error);
    id
}

async fn resume(e: &Engine, id: Uuid, req: &ResumeRequest) -> cairn_runtime::run::RunState {
    e.resume(id, req).await.unwrap_or_else(|err| panic!("resume: {err}"));
    e.drive(id, &mut |_: &Event| {}).await.expect("drive")
}

fn req() -> ResumeRequest {
    ResumeRequest::new("ops@example.com")
}

fn marks(p: &recovery::Plan) -> Vec<(String, Mark)> {
    p.lines.iter().map(|l| (l.step.clone(), l.mark)).collect()
}

fn kept(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepKept(k) => Some(k.step_id.clone()),
            _ => None,
        })
        .collect()
}

const SEQUENCE: &str = r#"name: seq
inputs: { type: object, properties: { topic: { type: string, default: cats } } }
steps:
  - id: fetch
    task: counter
  - id: draft
    task: ok
    with: { title: "On {{ inputs.topic }}", n: "{{ steps.fetch.output.n }}" }
  - id: stamp
    task: ok
    with: { topic: "{{ inputs.topic }}" }
  - id: publish
    task: broken
    with: { title: "{{ steps.draft.output.title }}" }
  - id: announce
    task: ok
    with: { text: "{{ steps.publish.output.title }}" }
"#;

async fn failed_only_runs_the_failed_step_again_and_keeps_the_rest(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, SEQUENCE, json!({})).await;
    let plan = e.plan_resume(id, &req()).await.expect("plan");
    assert_eq!(plan.from_step, "publish");
    assert_eq!(plan.plan.rerun, vec!["publish"]);
    assert_eq!(plan.plan.kept, vec!["fetch", "draft", "stamp"]);
    assert_eq!(plan.plan.newly_reached, vec!["announce"]);
    assert!(marks(&plan).contains(&("announce".into(), Mark::NewlyReached)), "{:?}", plan.lines);
    // A dry run records nothing.
    assert_eq!(e.state(id).await.expect("state").status, RunStatus::Failed);

    world.fix();
    assert!(!e.unfinished_runs().await.expect("scan").contains(&id));
    e.resume(id, &req()).await.expect("resume");
    // A resumed run a crash interrupts is continued like any other.
    assert!(e.unfinished_runs().await.expect("scan").contains(&id));
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.output, Some(json!({ "text": "On cats" })));
    assert_eq!((world.calls("fetch"), world.calls("draft"), world.calls("publish")), (1, 1, 2));
    let events = common::events(&store, id).await;
    let resumed = events.iter().find_map(|ev| match ev {
        Event::RunResumed(r) => Some(r.clone()),
        _ => None,
    });
    let resumed = resumed.expect("RunResumed recorded");
    assert_eq!((resumed.by.as_str(), resumed.policy.as_str()), ("ops@example.com", "failed-only"));
    // The attempt after the resume is numbered on: its own idempotency key.
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::StepStarted(x) if x.step_id == "publish" => Some(x.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![1, 2]);
}

async fn resuming_from_an_earlier_step_reruns_only_what_reads_a_changed_output(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, SEQUENCE, json!({})).await;
    let r = ResumeRequest { from: Some("fetch".into()), ..req() };
    let plan = e.plan_resume(id, &r).await.expect("plan");
    assert_eq!(plan.plan.rerun, vec!["fetch", "publish"]);
    assert_eq!(plan.plan.rerun_if_changed, vec!["draft"], "draft reads fetch; stamp reads only inputs");
    assert_eq!(plan.plan.kept, vec!["stamp"]);
    world.fix();
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    // fetch returned another n, so draft ran again; stamp was kept.
    assert_eq!((world.calls("fetch"), world.calls("draft"), world.calls("stamp")), (2, 2, 1));
    assert_eq!(kept(&common::events(&store, id).await), vec!["stamp"]);
    assert_eq!(s.outputs["draft"]["n"], json!(2));
}

async fn downstream_reruns_everything_after_the_step(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, SEQUENCE, json!({})).await;
    let r = ResumeRequest { from: Some("draft".into()), policy: Policy::Downstream, ..req() };
    let plan = e.plan_resume(id, &r).await.expect("plan");
    assert_eq!(plan.plan.rerun, vec!["draft", "stamp", "publish"]);
    assert_eq!(plan.plan.kept, vec!["fetch"]);
    // A step before the one resumed from is not entered again, whatever changed.
    let mut inputs = serde_json::Map::new();
    inputs.insert("topic".into(), json!("dogs"));
    let later = ResumeRequest { from: Some("publish".into()), inputs, ..req() };
    let p = e.plan_resume(id, &later).await.expect("plan");
    assert!(p.plan.rerun_if_changed.is_empty(), "draft and stamp read the topic but come before: {:?}", p.plan);
    assert_eq!(p.plan.kept, vec!["fetch", "draft", "stamp"]);
    assert!(
        p.warnings.iter().any(|w| w.contains("draft, stamp read a changed input but come before `publish`")),
        "{:?}",
        p.warnings
    );
    world.fix();
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!((world.calls("fetch"), world.calls("draft"), world.calls("stamp")), (1, 2, 2));
    assert!(kept(&common::events(&store, id).await).is_empty());
}

const BRANCHY: &str = r#"name: branchy
inputs: { type: object, properties: { fast: { type: boolean, default: false } } }
steps:
  - id: prepare
    task: counter
  - id: route
    branch: { if: "inputs.fast", then: quick, else: slow }
  - id: slow
    task: broken
    next: finish
  - id: quick
    task: ok
    with: { via: quick }
  - id: finish
    task: ok
    with: { n: "{{ steps.prepare.output.n }}" }
"#;

async fn a_changed_input_changes_the_branch_and_the_plan_shows_it(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, BRANCHY, json!({})).await;
    let mut inputs = serde_json::Map::new();
    inputs.insert("fast".into(), json!(true));
    let r = ResumeRequest { from: Some("route".into()), inputs, ..req() };
    let plan = e.plan_resume(id, &r).await.expect("plan");
    assert_eq!(plan.plan.rerun, vec!["route"]);
    assert_eq!(plan.plan.kept, vec!["prepare"]);
    assert_eq!(plan.plan.newly_reached, vec!["quick", "finish"]);
    assert_eq!(plan.plan.no_longer_reached, vec!["slow"]);
    assert!(marks(&plan).contains(&("slow".into(), Mark::NoLongerReached)), "{:?}", plan.lines);
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(world.calls("slow"), 1, "the failed branch is not taken again");
    assert_eq!((world.calls("prepare"), world.calls("quick")), (1, 1));
    assert_eq!(s.inputs["fast"], json!(true));
}

const PARALLEL: &str = r#"name: par
steps:
  - id: both
    parallel:
      fail_fast: false
      branches:
        - name: left
          steps:
            - id: l1
              task: ok
              with: { side: left }
            - id: l2
              task: ok
              with: { after: "{{ steps.l1.output.side }}" }
        - name: right
          steps:
            - id: r1
              task: broken
              with: { side: right }
  - id: after
    task: ok
    with: { got: "{{ steps.both.output }}" }
"#;

async fn only_the_failed_branch_of_a_parallel_runs_again(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, PARALLEL, json!({})).await;
    let plan = e.plan_resume(id, &req()).await.expect("plan");
    assert_eq!(plan.from_step, "both");
    assert!(plan.plan.failed.contains(&"r1".to_owned()), "{:?}", plan.plan);
    assert_eq!(plan.plan.kept, vec!["l1", "l2"]);
    world.fix();
    let s = resume(&e, id, &req()).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!((world.calls("l1"), world.calls("l2"), world.calls("r1")), (1, 1, 2));
    assert_eq!(kept(&common::events(&store, id).await), vec!["l1", "l2"]);
    assert_eq!(*s.outputs["both"], json!({ "left": { "after": "left" }, "right": { "side": "right" } }));
}

const DAG: &str = r#"name: graph
steps:
  - id: g
    dag:
      fail_fast: false
      steps:
        - id: a
          task: ok
          with: { v: a }
        - id: b
          task: broken
          with: { v: b }
        - id: c
          depends_on: [a]
          task: ok
          with: { after: "{{ steps.a.output.v }}" }
        - id: d
          depends_on: [b, c]
          task: ok
          with: { from: "{{ steps.b.output.v }}{{ steps.c.output.after }}" }
"#;

/// A failed dag resumes from the dag: what completed and reads nothing
/// that changed is kept; the failed step runs again, then what never
/// started because it depended on it.
async fn a_dag_resumes_its_failed_step_and_what_waited_for_it(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, DAG, json!({})).await;
    let events = common::events(&store, id).await;
    assert!(!events.iter().any(|ev| matches!(ev, Event::StepStarted(x) if x.step_id == "d")), "`d` waits for `b`");
    let plan = e.plan_resume(id, &req()).await.expect("plan");
    assert_eq!(plan.from_step, "g");
    assert!(plan.plan.failed.contains(&"b".to_owned()), "{:?}", plan.plan);
    assert_eq!(plan.plan.kept, vec!["a", "c"]);
    world.fix();
    let s = resume(&e, id, &req()).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!((world.calls("a"), world.calls("b"), world.calls("c"), world.calls("d")), (1, 2, 1, 1));
    let mut k = kept(&common::events(&store, id).await);
    k.sort();
    assert_eq!(k, vec!["a", "c"]);
    assert_eq!(s.outputs["g"]["d"], json!({ "from": "ba" }));
}

const MAP: &str = r#"name: mapped
inputs: { type: object, properties: { items: { type: array, default: [1, 2, 3] }, bad: { type: integer, default: 2 } } }
steps:
  - id: each
    map:
      items: "{{ inputs.items }}"
      fail_fast: false
      steps:
        - id: price
          task: ok
          with: { item: "{{ item }}" }
        - id: check
          branch: { if: "item == inputs.bad", then: charge, else: done }
        - id: charge
          task: broken
          with: { item: "{{ item }}" }
          end: true
        - id: done
          task: ok
          with: { item: "{{ item }}" }
"#;

async fn only_the_failed_iteration_of_a_map_runs_again(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, MAP, json!({})).await;
    let plan = e.plan_resume(id, &req()).await.expect("plan");
    assert!(plan.plan.failed.contains(&"each[1].charge".to_owned()), "{:?}", plan.plan);
    assert!(plan.plan.kept.contains(&"each[0].done".to_owned()), "{:?}", plan.plan);
    world.fix();
    let s = resume(&e, id, &req()).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    // Three prices once each; the failed charge twice; the other iterations kept.
    assert_eq!((world.calls("each[0].price"), world.calls("each[1].price"), world.calls("each[2].price")), (1, 1, 1));
    assert_eq!(world.calls("each[1].charge"), 2);
    let k = kept(&common::events(&store, id).await);
    assert!(k.contains(&"each[0].done".to_owned()) && k.contains(&"each[1].price".to_owned()), "{k:?}");
    assert_eq!(*s.outputs["each"], json!([{ "item": 1 }, { "item": 2 }, { "item": 3 }]));
}

const APPROVED: &str = r#"name: approved
steps:
  - id: draft
    task: counter
  - id: review
    approval:
      approvers: [grace]
      summary: "Publish draft {{ steps.draft.output.n }}?"
      content: "{{ steps.draft.output }}"
  - id: publish
    task: broken
    with: { n: "{{ steps.draft.output.n }}" }
"#;

async fn approve(e: &Engine, id: Uuid) {
    let s = e.state(id).await.expect("state");
    let (step, h) = s.waiting_for_people().first().map(|(st, h)| ((*st).to_owned(), (*h).clone())).expect("waits");
    let token = e.resume_token(id, &step, h.attempt);
    let vote = Vote::new("grace", token, true);
    e.decide_approval(id, &step, &vote).await.expect("approve");
}

async fn an_approval_is_kept_unless_what_it_approved_would_change(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let (w, v) = common::publish(&e, APPROVED).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    approve(&e, id).await;
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Failed);

    // failed-only from the failed step: the approval stands.
    let plan = e.plan_resume(id, &req()).await.expect("plan");
    assert!(plan.plan.stale_approvals.is_empty(), "{:?}", plan.plan);
    // From the draft: the approved content may change, so the approval may be asked again.
    let from_draft = ResumeRequest { from: Some("draft".into()), ..req() };
    let plan = e.plan_resume(id, &from_draft).await.expect("plan");
    assert_eq!(plan.plan.stale_approvals, vec!["review"]);
    assert_eq!(plan.plan.rerun_if_changed, vec!["review"]);
    world.fix();
    let s = resume(&e, id, &from_draft).await;
    // The draft changed (counter), so the approval is requested again, as attempt 2.
    assert_eq!(s.status, RunStatus::Running);
    let waiting = s.waiting_for_people();
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].0, waiting[0].1.attempt), ("review", 2));
    approve(&e, id).await;
    let s = e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(*s.outputs["publish"], json!({ "n": 2 }));

    // The approval reads the draft for its summary only: the content it
    // approved stays the same, so it stands although the draft changed.
    let summary_only = APPROVED
        .replace("name: approved", "name: approved-summary")
        .replace("content: \"{{ steps.draft.output }}\"", "content: { fixed: true }");
    world.fixed.store(false, Ordering::SeqCst);
    let (w, v) = common::publish(&e, &summary_only).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    approve(&e, id).await;
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Failed);
    world.fix();
    let s = resume(&e, id, &from_draft).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let events = common::events(&store, id).await;
    let reason = events.iter().find_map(|ev| match ev {
        Event::StepKept(k) if k.step_id == "review" => Some(k.reason.clone()),
        _ => None,
    });
    assert!(reason.is_some_and(|r| r.contains("content it approved is unchanged")), "{events:?}");
}

/// An HTTP server answering 500 until fixed, then 200 with the request body.
async fn flaky_server(fixed: Arc<AtomicBool>, hits: Arc<AtomicU32>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (fixed, hits) = (fixed.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if fixed.load(Ordering::SeqCst) {
                    ("200 OK", r#"{"published":true}"#)
                } else {
                    ("500 Internal Server Error", r#"{"error":"cms down"}"#)
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

async fn a_run_failed_by_an_http_500_resumes_once_the_endpoint_is_fixed(store: Arc<dyn EventStore>) {
    let (fixed, hits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let port = flaky_server(fixed.clone(), hits.clone()).await;
    let src = format!(
        r#"name: cms
steps:
  - id: draft
    task: counter
  - id: publish
    http: {{ method: PUT, url: "http://127.0.0.1:{port}/posts/1", body: "{{{{ steps.draft.output }}}}" }}
    retry: {{ max_attempts: 2, initial_interval: 10ms }}
  - id: notify
    http: {{ method: POST, url: "http://127.0.0.1:{port}/notify" }}
"#
    );
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, &src, json!({})).await;
    assert_eq!(hits.load(Ordering::SeqCst), 2, "two attempts, both 500");
    let s = e.state(id).await.expect("state");
    assert_eq!(s.error.as_ref().map(|x| x.0.as_str()), Some("http.status.500"));
    fixed.store(true, Ordering::SeqCst);
    let s = resume(&e, id, &req()).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(world.calls("draft"), 1, "the draft is kept");
    assert_eq!(s.outputs["publish"]["body"], json!({ "published": true }));

    // A resume that would send a POST again needs force.
    let post = src.replace("method: PUT", "method: POST").replace("name: cms", "name: cms-post");
    fixed.store(false, Ordering::SeqCst);
    let id = failed_run(&e, &post, json!({})).await;
    match e.plan_resume(id, &req()).await {
        Err(ResumeError::Refused(Refusal::NotIdempotent { steps })) => assert!(steps.contains("`publish`"), "{steps}"),
        other => panic!("{other:?}"),
    }
    fixed.store(true, Ordering::SeqCst);
    let s = resume(&e, id, &ResumeRequest { force: true, ..req() }).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
}

async fn runs_that_cannot_be_resumed_say_what_to_do_instead(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    // Completed: fork it.
    world.fix();
    let (w, v) = common::publish(&e, SEQUENCE).await;
    let done = e.start(&w, v, json!({}), "test").await.expect("start");
    e.drive(done, &mut |_: &Event| {}).await.expect("drive");
    let err = e.plan_resume(done, &req()).await.expect_err("completed");
    assert!(
        matches!(err, ResumeError::Refused(Refusal::Completed { .. })) && err.to_string().contains("cairn fork"),
        "{err}"
    );
    // Running (waiting for a person).
    let (w, v) = common::publish(&e, APPROVED).await;
    let waiting = e.start(&w, v, json!({}), "test").await.expect("start");
    e.drive(waiting, &mut |_: &Event| {}).await.expect("drive");
    let err = e.plan_resume(waiting, &req()).await.expect_err("running");
    assert!(
        matches!(err, ResumeError::Refused(Refusal::StillRunning { .. })) && err.to_string().contains("`review`"),
        "{err}"
    );
    // Cancelled: only with force.
    e.cancel(waiting, "ops", Some("wrong draft".into())).await.expect("cancel");
    let err = e.plan_resume(waiting, &req()).await.expect_err("cancelled");
    assert!(err.to_string().contains("by ops") && err.to_string().contains("--force"), "{err}");
    let plan = e.plan_resume(waiting, &ResumeRequest { force: true, ..req() }).await.expect("forced");
    assert_eq!(plan.from_step, "review");
    // A step marked `resumable: false`.
    world.fixed.store(false, Ordering::SeqCst);
    let once = SEQUENCE
        .replace("    task: broken\n", "    task: broken\n    resumable: false\n")
        .replace("name: seq", "name: once");
    let id = failed_run(&e, &once, json!({})).await;
    let err = e.plan_resume(id, &req()).await.expect_err("not resumable");
    assert!(matches!(&err, ResumeError::Refused(Refusal::NotResumable { step, .. }) if step == "publish"), "{err}");
    assert!(err.to_string().contains("fork"), "{err}");
    // An unknown step, a step never reached.
    let id = failed_run(&e, SEQUENCE, json!({})).await;
    let err = e.plan_resume(id, &ResumeRequest { from: Some("drafts".into()), ..req() }).await.expect_err("unknown");
    assert!(err.to_string().contains("did you mean `draft`?"), "{err}");
    let err =
        e.plan_resume(id, &ResumeRequest { from: Some("announce".into()), ..req() }).await.expect_err("unreached");
    assert!(matches!(err, ResumeError::Refused(Refusal::NotReached { .. })), "{err}");
    // New inputs that break the schema.
    let mut bad = serde_json::Map::new();
    bad.insert("topic".into(), json!(42));
    let err = e.plan_resume(id, &ResumeRequest { inputs: bad, ..req() }).await.expect_err("bad input");
    assert!(
        matches!(err, ResumeError::Refused(Refusal::InvalidInputs { .. })) && err.to_string().contains("/topic"),
        "{err}"
    );
    // A process without the run's task handlers (an embedding program's)
    // plans it all the same: handlers execute, they do not decide.
    let bare = Engine::new(store.clone(), TaskRegistry::builtin());
    let elsewhere = bare.plan_resume(id, &req()).await.expect("planned without the handlers");
    let here = e.plan_resume(id, &req()).await.expect("plan");
    assert_eq!(marks(&elsewhere), marks(&here));
    // A run whose pinned version is gone (never published here) is refused.
    let ghost = Uuid::now_v7();
    let mut started = run_started("ghost", json!({}));
    if let Event::RunStarted(r) = &mut started {
        r.run_id = ghost;
    }
    let failed = Event::RunFailed(cairn_events::RunFailed {
        error_kind: "boom".into(),
        message: "it broke".into(),
        failed_step: None,
    });
    store
        .append(
            &cairn_events::run_stream(ghost),
            cairn_events::ExpectedVersion::NoStream,
            [started, failed]
                .iter()
                .map(|ev| cairn_events::NewEvent::from_event(ev, cairn_events::Metadata::by("t")))
                .collect(),
        )
        .await
        .expect("append");
    let err = e.plan_resume(ghost, &req()).await.expect_err("definition gone");
    assert!(
        matches!(err, ResumeError::Refused(Refusal::DefinitionGone { .. })) && err.to_string().contains("version 1"),
        "{err}"
    );
    // A kept output that breaks the step's contract is refused before anything runs.
    let strict = "name: strict\nsteps:\n  - id: a\n    task: ok\n    with: { n: 1 }\n  - id: b\n    task: broken\n";
    let id = failed_run(&e, strict, json!({})).await;
    let events = common::events(&store, id).await;
    let stricter = cairn_runtime::lang::parse(
        &strict.replace(
            "    with: { n: 1 }\n",
            "    with: { n: 1 }\n    output_contract: { type: object, required: [m] }\n",
        ),
        "t.yaml",
        &e.task_names(),
    )
    .expect("parse");
    let err = cairn_runtime::recovery::plan(&stricter, &events, &req()).expect_err("contract");
    assert!(matches!(&err, Refusal::KeptOutputBreaksContract { step, .. } if step == "a"), "{err}");
    // Nothing above changed the runs.
    assert_eq!(e.state(id).await.expect("state").status, RunStatus::Failed);
}

async fn two_concurrent_resumes_one_wins(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = Arc::new(world.engine(&store));
    let id = failed_run(&e, SEQUENCE, json!({})).await;
    let mut tasks = Vec::new();
    for who in ["ada", "grace", "linus", "barbara"] {
        let e = e.clone();
        tasks.push(tokio::spawn(async move { e.resume(id, &ResumeRequest::new(who)).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => won += 1,
            Err(
                ResumeError::Refused(Refusal::Conflict { .. }) | ResumeError::Refused(Refusal::StillRunning { .. }),
            ) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(won, 1);
    let n = common::events(&store, id).await.iter().filter(|e| matches!(e, Event::RunResumed(_))).count();
    assert_eq!(n, 1);
}

async fn a_fork_carries_outputs_over_and_leaves_the_source_alone(store: Arc<dyn EventStore>) {
    let world = World::default();
    world.fix();
    let e = world.engine(&store);
    let (w, v) = common::publish(&e, SEQUENCE).await;
    let source = e.start(&w, v, json!({}), "test").await.expect("start");
    e.drive(source, &mut |_: &Event| {}).await.expect("drive");
    let before = common::events(&store, source).await;
    let mut inputs = serde_json::Map::new();
    inputs.insert("topic".into(), json!("dogs"));
    let fork = e.fork(source, "stamp", inputs, "ada").await.expect("fork");
    let s = e.drive(fork, &mut |_: &Event| {}).await.expect("drive");
    assert_eq!(s.status, RunStatus::Completed);
    let events = common::events(&store, fork).await;
    match &events[0] {
        Event::RunStarted(r) => {
            let origin = r.fork_of.as_ref().expect("fork_of");
            assert_eq!((origin.run_id, origin.step_id.as_str()), (source, "stamp"));
            assert_eq!(r.inputs["topic"], json!("dogs"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(kept(&events), vec!["fetch", "draft"]);
    assert_eq!(*s.outputs["stamp"], json!({ "topic": "dogs" }));
    assert_eq!(s.outputs["draft"]["title"], json!("On cats"), "carried over as it was");
    assert_eq!(world.calls("fetch"), 1);
    assert_eq!(common::events(&store, source).await, before, "the source run is unchanged");
    // A fork replays like any run: its carried outputs are taken as given.
    let recorded = store.read_stream(&cairn_events::run_stream(fork), 1).await.expect("read");
    let report = cairn_runtime::replay::check(&w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "{:?}", report.divergence);
    let err = e.fork(source, "l1", serde_json::Map::new(), "ada").await.expect_err("unknown");
    assert!(matches!(err, ResumeError::Refused(Refusal::UnknownStep { .. })), "{err}");
}

async fn replay_reproduces_every_decision_and_finds_a_changed_condition(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, BRANCHY, json!({})).await;
    world.fix();
    resume(&e, id, &ResumeRequest { from: Some("slow".into()), ..req() }).await;
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let w = e.definition("branchy", 1).await.expect("definition");
    let report = cairn_runtime::replay::check(&w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "{:?}", report.divergence);
    assert!(report.decisions_checked >= 4, "{report:?}");
    // The same run under a definition whose condition changed.
    let changed = cairn_runtime::lang::parse(
        &BRANCHY.replace("if: \"inputs.fast\"", "if: \"!inputs.fast\""),
        "t.yaml",
        &e.task_names(),
    )
    .expect("parse");
    let report = cairn_runtime::replay::check(&changed, &recorded).expect("replay");
    let d = report.divergence.expect("diverges");
    assert_eq!(d.recorded["type"], json!("BranchTaken"));
    assert!(d.message.contains("went to `slow`") && d.message.contains("now goes to `quick`"), "{}", d.message);
    // Time travel: the state just before `slow` first ran.
    let n = cairn_runtime::replay::before_step(&recorded, "slow").expect("decode").expect("ran");
    let snap = cairn_runtime::replay::snapshot(&recorded, n).expect("snapshot");
    assert!(snap.outputs.contains_key("prepare") && !snap.outputs.contains_key("slow"), "{snap:?}");
    assert!(snap.pending.iter().any(|p| p.contains("`route` completed")), "{snap:?}");
    // Shadow re-validation: the new condition and a stricter contract.
    let stricter = cairn_runtime::lang::parse(
        &BRANCHY.replace("if: \"inputs.fast\"", "if: \"!inputs.fast\"").replace(
            "    task: counter\n",
            "    task: counter\n    output_contract: { type: object, properties: { n: { type: string } } }\n",
        ),
        "t.yaml",
        &e.task_names(),
    )
    .expect("parse");
    let findings = cairn_runtime::replay::shadow(&stricter, &recorded).expect("shadow");
    let kinds: Vec<(&str, &str)> = findings.iter().map(|f| (f.kind.as_str(), f.step.as_str())).collect();
    assert_eq!(kinds, vec![("contract", "prepare"), ("branch", "route")], "{findings:?}");
}

async fn downstream_on_parallel_map_and_approvals(store: Arc<dyn EventStore>) {
    // Parallel: from a step in the good branch, what follows it runs again;
    // the failed branch runs again; nothing else is kept inside the branch.
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, PARALLEL, json!({})).await;
    let r = ResumeRequest { from: Some("l1".into()), policy: Policy::Downstream, ..req() };
    let plan = e.plan_resume(id, &r).await.expect("plan");
    let mut rerun = plan.plan.rerun.clone();
    rerun.sort();
    assert_eq!(rerun, vec!["both", "l1", "l2", "r1"], "{:?}", plan.plan);
    world.fix();
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!((world.calls("l1"), world.calls("l2"), world.calls("r1")), (2, 2, 2));

    // Map: downstream from the container runs every iteration again.
    let world = World::default();
    let e = world.engine(&store);
    let id = failed_run(&e, &MAP.replace("name: mapped", "name: mapped2"), json!({})).await;
    let r = ResumeRequest { policy: Policy::Downstream, ..req() };
    world.fix();
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!((world.calls("each[0].price"), world.calls("each[2].done")), (2, 2));
    assert!(kept(&common::events(&store, id).await).is_empty());

    // Approval: downstream from the draft asks for the approval again even
    // if the draft came out the same.
    let world = World::default();
    let e = world.engine(&store);
    let src =
        APPROVED.replace("name: approved", "name: approved2").replace("task: counter", "task: ok\n    with: { n: 1 }");
    let (w, v) = common::publish(&e, &src).await;
    let id = e.start(&w, v, json!({}), "test").await.expect("start");
    e.drive(id, &mut |_: &Event| {}).await.expect("drive");
    approve(&e, id).await;
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Failed);
    let r = ResumeRequest { from: Some("draft".into()), policy: Policy::Downstream, ..req() };
    let plan = e.plan_resume(id, &r).await.expect("plan");
    assert_eq!(plan.plan.rerun, vec!["draft", "review", "publish"]);
    assert_eq!(plan.plan.stale_approvals, vec!["review"]);
    world.fix();
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Running, "the approval is requested again");
    approve(&e, id).await;
    assert_eq!(e.drive(id, &mut |_: &Event| {}).await.expect("drive").status, RunStatus::Completed);
    // Under failed-only the same resume keeps the approval: the draft is unchanged.
    let id = {
        world.fixed.store(false, Ordering::SeqCst);
        let id = e.start(&w, v, json!({}), "test").await.expect("start");
        e.drive(id, &mut |_: &Event| {}).await.expect("drive");
        approve(&e, id).await;
        e.drive(id, &mut |_: &Event| {}).await.expect("drive");
        id
    };
    world.fix();
    let s = resume(&e, id, &ResumeRequest { from: Some("draft".into()), ..req() }).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(kept(&common::events(&store, id).await), vec!["review"]);
}

async fn the_plan_estimates_what_ai_steps_cost_to_run_again(store: Arc<dyn EventStore>) {
    let config = "price_table: t\nmodels:\n  writer: { provider: scripted, model: demo, input_per_million: 1000, output_per_million: 2000 }\n";
    let world = World::default();
    let e = world.engine(&store).with_config(cairn_runtime::Config::parse(config, "cairn.yaml").expect("config"));
    let src = r#"name: ai-then-publish
steps:
  - id: write
    ai:
      model: writer
      prompt: "Write a title"
      scripted: [{ content: '{"title": "T"}', input_tokens: 100, output_tokens: 50 }]
    output_contract: { type: object, required: [title], properties: { title: { type: string } } }
  - id: publish
    task: broken
    with: { title: "{{ steps.write.output.title }}" }
"#;
    let id = failed_run(&e, src, json!({})).await;
    let plan = e.plan_resume(id, &ResumeRequest { from: Some("write".into()), ..req() }).await.expect("plan");
    assert_eq!(plan.plan.ai_costs.len(), 1, "{:?}", plan.plan);
    assert_eq!((plan.plan.ai_costs[0].step_id.as_str(), plan.plan.ai_costs[0].model.as_str()), ("write", "writer"));
    assert!((plan.plan.estimated_cost - 0.2).abs() < 1e-9, "{}", plan.plan.estimated_cost);
    assert!(
        plan.lines.iter().any(|l| l.step == "write" && l.note.contains("cost last time 0.200000")),
        "{:?}",
        plan.lines
    );
    // The failed-only resume from the publish step calls no model.
    let plan = e.plan_resume(id, &req()).await.expect("plan");
    assert!(plan.plan.ai_costs.is_empty() && plan.plan.estimated_cost == 0.0, "{:?}", plan.plan);
}

async fn a_failed_child_run_is_resumed_through_its_parent(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    common::publish(&e, "name: child\nsteps:\n  - id: work\n    task: broken\n    with: { done: true }\n").await;
    let parent = "name: parent\nsteps:\n  - id: prep\n    task: counter\n  - id: sub\n    workflow: { name: child }\n  - id: after\n    task: ok\n    with: { got: \"{{ steps.sub.output }}\" }\n";
    let id = failed_run(&e, parent, json!({})).await;
    let children = |evs: &[Event]| -> Vec<Uuid> {
        evs.iter()
            .filter_map(|e| match e {
                Event::ChildRunStarted(c) => Some(c.child_run_id),
                _ => None,
            })
            .collect()
    };
    let first = children(&common::events(&store, id).await);
    assert_eq!(first.len(), 1);
    let err = e.plan_resume(first[0], &req()).await.expect_err("a child run");
    assert!(
        matches!(err, ResumeError::Refused(Refusal::ChildRun { .. }))
            && err.to_string().contains(&format!("cairn resume {id}")),
        "{err}"
    );
    world.fix();
    let s = resume(&e, id, &req()).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(world.calls("prep"), 1);
    let all = children(&common::events(&store, id).await);
    assert_eq!(all.len(), 2, "the step's attempt after the resume starts a new child run");
    assert_ne!(all[0], all[1]);
    assert_eq!(e.state(all[0]).await.expect("state").status, RunStatus::Failed, "the first child is left as it was");
}

async fn a_step_no_longer_reached_leaves_the_context(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let src = r#"name: rerouted
inputs: { type: object, properties: { route: { type: string, default: long } } }
steps:
  - id: pick
    switch:
      cases: [{ when: "inputs.route == 'long'", goto: detour }]
      default: direct
  - id: detour
    task: ok
    with: { via: detour }
  - id: stuck
    task: broken
    next: finish
  - id: direct
    task: ok
    with: { via: direct }
  - id: finish
    transform: "{{ steps.detour.output if steps.detour is defined else (steps.direct.output if steps.direct is defined else none) }}"
"#;
    let id = failed_run(&e, src, json!({})).await;
    let mut inputs = serde_json::Map::new();
    inputs.insert("route".into(), json!("short"));
    let r = ResumeRequest { from: Some("pick".into()), inputs, ..req() };
    let plan = e.plan_resume(id, &r).await.expect("plan");
    assert_eq!(plan.plan.no_longer_reached, vec!["detour", "stuck"], "{:?}", plan.plan);
    assert_eq!(plan.plan.newly_reached, vec!["direct", "finish"], "{:?}", plan.plan);
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert!(!s.outputs.contains_key("detour"), "{:?}", s.outputs);
    assert_eq!(s.output, Some(json!({ "via": "direct" })));
}

async fn a_map_reruns_only_the_iterations_whose_item_changed(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let src = r#"name: relist
inputs: { type: object, properties: { items: { type: array, default: [1, 2, 3] } } }
steps:
  - id: list
    task: ok
    with: { items: "{{ inputs.items }}" }
  - id: each
    map:
      items: "{{ steps.list.output.items }}"
      fail_fast: false
      steps:
        - id: price
          task: ok
          with: { item: "{{ item }}" }
        - id: check
          branch: { if: "item == 2", then: charge, else: done }
        - id: charge
          task: broken
          end: true
        - id: done
          task: ok
          with: { item: "{{ item }}" }
"#;
    let id = failed_run(&e, src, json!({})).await;
    let mut inputs = serde_json::Map::new();
    inputs.insert("items".into(), json!([1, 5, 3]));
    let r = ResumeRequest { from: Some("list".into()), inputs, ..req() };
    let s = resume(&e, id, &r).await;
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    // Items 1 and 3 are where they were: kept. Item 2 became 5: priced again, no charge.
    assert_eq!((world.calls("each[0].price"), world.calls("each[1].price"), world.calls("each[2].price")), (1, 2, 1));
    assert_eq!(world.calls("each[1].charge"), 1, "the new item takes the other branch");
    assert_eq!(*s.outputs["each"], json!([{ "item": 1 }, { "item": 5 }, { "item": 3 }]));
}

/// A saga whose compensation failed is half undone: a resume plans to run
/// that compensation again and then the ones queued after it, runs them,
/// and the run fails again with its original error (a saga ends failed).
/// A run whose undo finished is still refused, naming what ran. (Before:
/// refused, `run-compensated`, whatever was left undone.)
async fn a_saga_whose_compensation_failed_resumes_and_finishes_the_undo(store: Arc<dyn EventStore>) {
    let world = World::default();
    let e = world.engine(&store);
    let src = r#"name: saga
steps:
  - id: book_a
    task: ok
    compensate: undo_a
  - id: book_b
    task: ok
    compensate: undo_b
  - id: pay
    task: broken
compensations:
  - id: undo_a
    task: ok
  - id: undo_b
    task: broken
"#;
    let id = failed_run(&e, src, json!({})).await;
    let s = e.state(id).await.expect("state");
    let (_, message, _) = s.error.clone().expect("error");
    assert!(message.contains("then compensation failed"), "{message}");
    // The plan: undo_b again (it failed), then undo_a (never ran).
    let p = e.plan_resume(id, &req()).await.expect("a plan that finishes the undo");
    assert_eq!(p.from_step, "undo_b");
    assert_eq!(marks(&p), vec![("undo_b".to_owned(), Mark::Rerun), ("undo_a".to_owned(), Mark::NewlyReached)]);
    assert!(p.warnings.iter().any(|w| w.contains("finishes the undo, then the run fails again")), "{:?}", p.warnings);
    // Only from the failed compensation, and with the inputs it had.
    let mut other = req();
    other.from = Some("book_a".into());
    let err = e.plan_resume(id, &other).await.expect_err("from elsewhere");
    assert!(err.to_string().contains("finishes the undo from there"), "{err}");
    world.fix();
    let s = resume(&e, id, &req()).await;
    assert_eq!(s.status, RunStatus::Failed);
    let (kind, message, step) = s.error.clone().expect("error");
    assert_eq!((kind.as_str(), step.as_deref()), ("service.down", Some("pay")), "the original error: {message}");
    assert!(!message.contains("compensation failed"), "{message}");
    let events = e.events(id).await.expect("events");
    let completed: Vec<&str> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::StepCompleted(c) if c.step_id.starts_with("undo") => Some(c.step_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(completed, ["undo_b", "undo_a"], "each compensation completed once, in order");
    assert!(
        !events.iter().any(|ev| matches!(ev, Event::StepStarted(x) if x.step_id == "pay" && x.attempt > 1)),
        "pay is not run again"
    );
    // The resumed undo replays as it was decided.
    let (w, _) = common::publish(&e, src).await;
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let report = cairn_runtime::replay::check(&w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "{:?}", report.divergence);
    // Undone: now refused, naming what ran.
    let err = e.plan_resume(id, &req()).await.expect_err("compensated");
    let text = err.to_string();
    assert!(matches!(err, ResumeError::Refused(Refusal::Compensated { .. })), "{text}");
    assert!(text.contains("`undo_a`") && text.contains("`undo_b`"), "{text}");
}

both_backends!(
    failed_only_runs_the_failed_step_again_and_keeps_the_rest,
    two_concurrent_resumes_one_wins,
    a_saga_whose_compensation_failed_resumes_and_finishes_the_undo,
    a_dag_resumes_its_failed_step_and_what_waited_for_it,
);

mod sqlite_only {
    macro_rules! on_sqlite {
        ($($name:ident),*) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_dir, store) = crate::common::sqlite().await;
                super::$name(store).await
            }
        )*};
    }
    on_sqlite!(
        resuming_from_an_earlier_step_reruns_only_what_reads_a_changed_output,
        downstream_reruns_everything_after_the_step,
        a_changed_input_changes_the_branch_and_the_plan_shows_it,
        only_the_failed_branch_of_a_parallel_runs_again,
        only_the_failed_iteration_of_a_map_runs_again,
        an_approval_is_kept_unless_what_it_approved_would_change,
        a_run_failed_by_an_http_500_resumes_once_the_endpoint_is_fixed,
        runs_that_cannot_be_resumed_say_what_to_do_instead,
        a_fork_carries_outputs_over_and_leaves_the_source_alone,
        replay_reproduces_every_decision_and_finds_a_changed_condition,
        downstream_on_parallel_map_and_approvals,
        the_plan_estimates_what_ai_steps_cost_to_run_again,
        a_failed_child_run_is_resumed_through_its_parent,
        a_step_no_longer_reached_leaves_the_context,
        a_map_reruns_only_the_iterations_whose_item_changed
    );
}

// ---- the property: failed-only never re-runs a step whose inputs are unchanged

/// A sequence of `ok` steps, each reading some earlier steps and inputs,
/// with one step that fails (`broken`) in the recorded run.
fn generated(reads: &[(u8, u8)], failing: usize) -> String {
    let mut src = String::from(
        "name: g\ninputs: { type: object, properties: { a: { type: integer, default: 0 }, b: { type: integer, default: 0 } } }\nsteps:\n",
    );
    for (i, (mask, inputs)) in reads.iter().enumerate() {
        let mut with = vec![format!("me: {i}")];
        for j in 0..i {
            if mask & (1 << (j % 8)) != 0 {
                with.push(format!("s{j}: \"{{{{ steps.s{j}.output.me }}}}\""));
            }
        }
        if inputs & 1 != 0 {
            with.push("a: \"{{ inputs.a }}\"".into());
        }
        if inputs & 2 != 0 {
            with.push("b: \"{{ inputs.b }}\"".into());
        }
        let task = if i == failing { "fail" } else { "echo" };
        src.push_str(&format!("  - id: s{i}\n    task: {task}\n    with: {{ {} }}\n", with.join(", ")));
    }
    src
}

/// The `RunStarted` of a run driven purely.
fn run_started(workflow: &str, inputs: Value) -> Event {
    Event::RunStarted(cairn_events::RunStarted {
        run_id: Uuid::nil(),
        workflow: workflow.into(),
        workflow_version: 1,
        definition_hash: String::new(),
        inputs,
        started_by: "t".into(),
        idempotency_key: None,
        parent: None,
        fork_of: None,
        settings: None,
        started_at: None,
        schedule: None,
        trace_parent: None,
    })
}

/// The `RunResumed` that records a plan, as [`Engine::resume`] would.
fn run_resumed(plan: &recovery::Plan) -> Event {
    Event::RunResumed(cairn_events::RunResumed {
        from_step: plan.from_step.clone(),
        policy: plan.policy.clone(),
        plan: plan.plan.clone(),
        by: "t".into(),
        reason: None,
        inputs: plan.inputs.clone(),
        forced: false,
    })
}

/// Drives a run purely: `echo` returns its input; `fail` fails while `broken`.
fn drive(w: &cairn_runtime::Workflow, events: &mut Vec<Event>, broken: bool) {
    drive_with(w, events, &|inst| {
        broken
            && matches!(&w.step(cairn_core::path::InstancePath::new(inst).step()).expect("step").kind,
                cairn_runtime::StepKind::Task { handler, .. } if handler == "fail")
    });
}

/// Drives a run purely: every effect returns its input, except the step
/// instances `fails` names, which fail.
fn drive_with(w: &cairn_runtime::Workflow, events: &mut Vec<Event>, fails: &dyn Fn(&str) -> bool) {
    let now = chrono::Utc::now();
    for _ in 0..2000 {
        let s = fold(events.iter());
        let d = decide(w, &s, now);
        if !d.append.is_empty() {
            events.extend(d.append);
            continue;
        }
        let Some(x) = d.execute.first() else { return };
        events.push(if fails(&x.step_id) {
            Event::StepFailed(cairn_events::StepFailed {
                step_id: x.step_id.clone(),
                attempt: x.attempt,
                error_kind: "down".into(),
                message: "down".into(),
                retryable: false,
                retry_after_ms: None,
            })
        } else {
            Event::StepCompleted(cairn_events::StepCompleted {
                step_id: x.step_id.clone(),
                attempt: x.attempt,
                output: x.input.clone(),
                duration_ms: 0,
            })
        });
    }
    panic!("the run did not settle");
}

/// A map over `inputs.list` between two steps; its body reads the item and,
/// if asked, a step before the map.
fn mapped(body_reads_pre: bool) -> String {
    let pre = if body_reads_pre { ", a: \"{{ steps.pre.output.a }}\"" } else { "" };
    format!(
        r#"name: gm
inputs: {{ type: object, properties: {{ list: {{ type: array }}, a: {{ type: integer }} }} }}
steps:
  - id: pre
    task: echo
    with: {{ a: "{{{{ inputs.a }}}}" }}
  - id: each
    map:
      items: "{{{{ inputs.list }}}}"
      fail_fast: false
      steps:
        - id: m
          task: echo
          with: {{ item: "{{{{ item }}}}"{pre} }}
        - id: m2
          task: echo
          with: {{ v: "{{{{ steps.m.output.item }}}}" }}
  - id: post
    task: echo
    with: {{ all: "{{{{ steps.each.output }}}}" }}
"#
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn failed_only_never_reruns_a_step_whose_inputs_are_unchanged(
        reads in prop::collection::vec((any::<u8>(), 0u8..4), 2..8),
        failing in 0usize..8,
        from in 0usize..8,
        new_a in 0i64..2,
        new_b in 0i64..2,
    ) {
        let n = reads.len();
        let failing = failing % n;
        let from = from % (failing + 1);
        let src = generated(&reads, failing);
        let w = cairn_runtime::lang::parse(&src, "g.yaml", &["echo", "fail"]).expect("parse");
        let mut events = vec![run_started("g", json!({ "a": 0, "b": 0 }))];
        drive(&w, &mut events, true);
        prop_assert_eq!(fold(events.iter()).status, RunStatus::Failed);
        let prior_inputs: BTreeMap<String, Value> = events.iter().filter_map(|e| match e {
            Event::StepStarted(s) => Some((s.step_id.clone(), s.input.clone())),
            _ => None,
        }).collect();
        let mut inputs = serde_json::Map::new();
        inputs.insert("a".into(), json!(new_a));
        inputs.insert("b".into(), json!(new_b));
        let r = ResumeRequest { from: Some(format!("s{from}")), inputs, ..ResumeRequest::new("t") };
        let plan = cairn_runtime::recovery::plan(&w, &events, &r).expect("plan");
        let resumed_at = events.len();
        let before = fold(events.iter());
        events.push(run_resumed(&plan));
        drive(&w, &mut events, false);
        let s = fold(events.iter());
        prop_assert_eq!(s.status, RunStatus::Completed);
        for e in &events[resumed_at..] {
            match e {
                Event::StepStarted(x) => {
                    let forced = x.step_id == plan.from_step || plan.plan.failed.contains(&x.step_id);
                    let changed = prior_inputs.get(&x.step_id) != Some(&x.input);
                    prop_assert!(forced || changed, "`{}` ran again with unchanged input {}", x.step_id, x.input);
                }
                Event::StepKept(k) => {
                    prop_assert!(prior_inputs.contains_key(&k.step_id));
                    prop_assert_eq!(Some(&k.output), before.outputs.get(&k.step_id).map(|v| &**v));
                }
                _ => {}
            }
        }
        // And no step with changed input was kept: every step ran with its current inputs.
        for (id, out) in &s.outputs {
            let i: usize = id[1..].parse().expect("index");
            let mut want = serde_json::Map::new();
            want.insert("me".into(), json!(i));
            for j in 0..i {
                if reads[i].0 & (1 << (j % 8)) != 0 {
                    want.insert(format!("s{j}"), json!(j));
                }
            }
            if reads[i].1 & 1 != 0 { want.insert("a".into(), json!(new_a)); }
            if reads[i].1 & 2 != 0 { want.insert("b".into(), json!(new_b)); }
            // Steps before the one resumed from are not entered again.
            if i != failing && i >= from {
                prop_assert_eq!(&**out, &Value::Object(want), "step {} has a stale output", id);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    /// The same property through a map: an iteration runs again only if its
    /// item (or what its steps read) changed; the outputs are then current.
    #[test]
    fn failed_only_through_a_map_reruns_only_changed_iterations(
        list in prop::collection::vec(0i64..3, 1..5),
        changes in prop::collection::vec(prop::option::of(0i64..3), 0..6),
        failing in 0usize..5,
        body_reads_pre in any::<bool>(),
        new_a in 0i64..2,
        from_pre in any::<bool>(),
    ) {
        let failing = failing % list.len();
        let w = cairn_runtime::lang::parse(&mapped(body_reads_pre), "gm.yaml", &["echo"]).expect("parse");
        let mut events = vec![run_started("gm", json!({ "list": list, "a": 0 }))];
        let broken = format!("each[{failing}].m");
        drive_with(&w, &mut events, &|inst| inst == broken);
        prop_assert_eq!(fold(events.iter()).status, RunStatus::Failed);
        let prior_inputs: BTreeMap<String, Value> = events.iter().filter_map(|e| match e {
            Event::StepStarted(s) => Some((s.step_id.clone(), s.input.clone())),
            _ => None,
        }).collect();
        // The new list: some items changed, perhaps longer or shorter.
        let mut new_list: Vec<i64> = list.clone();
        for (i, c) in changes.iter().enumerate() {
            match (c, i < new_list.len()) {
                (Some(v), true) => new_list[i] = *v,
                (Some(v), false) => new_list.push(*v),
                (None, _) => {}
            }
        }
        if changes.len() == 1 && changes[0].is_none() { new_list.truncate(1); }
        let mut inputs = serde_json::Map::new();
        inputs.insert("list".into(), json!(new_list));
        inputs.insert("a".into(), json!(new_a));
        let from = if from_pre { "pre" } else { "each" };
        let r = ResumeRequest { from: Some(from.into()), inputs, ..ResumeRequest::new("t") };
        let plan = cairn_runtime::recovery::plan(&w, &events, &r).expect("plan");
        let resumed_at = events.len();
        events.push(run_resumed(&plan));
        drive_with(&w, &mut events, &|_| false);
        let s = fold(events.iter());
        prop_assert_eq!(s.status, RunStatus::Completed);
        for e in &events[resumed_at..] {
            if let Event::StepStarted(x) = e {
                let forced = x.step_id == plan.from_step
                    || plan.plan.failed.contains(&x.step_id)
                    || x.step_id == "each";
                let changed = prior_inputs.get(&x.step_id) != Some(&x.input);
                prop_assert!(forced || changed, "`{}` ran again with unchanged input {}", x.step_id, x.input);
            }
        }
        // Every iteration's outputs are what it computes from the new item.
        let a = if from_pre { new_a } else { 0 };
        let want: Vec<Value> = new_list.iter().map(|v| json!({ "v": v })).collect();
        prop_assert_eq!(&*s.outputs["each"], &Value::Array(want));
        for (j, v) in new_list.iter().enumerate() {
            let mut m = json!({ "item": v });
            if body_reads_pre { m["a"] = json!(a); }
            prop_assert_eq!(&*s.outputs[&format!("each[{j}].m")], &m, "iteration {}", j);
        }
    }
}
