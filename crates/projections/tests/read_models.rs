//! Read models from real stores: incremental batches of any size equal a
//! rebuild and a direct fold; a stop names its event; two workers on
//! PostgreSQL with concurrent writers miss and double nothing.
#![allow(clippy::disallowed_methods)] // tests and benchmarks reach the database and the time directly (tampering, floors, fixtures)
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_events::{
    AiAttemptCompleted, AiAttemptStarted, BranchTaken, Cost, Event, EventStore, ExpectedVersion, InputRequested,
    InputSubmitted, Metadata, NewEvent, RunCompleted, RunFailed, RunStarted, StepCompleted, StepFailed, StepStarted,
    TokenUsage,
};
use cairn_projections::{Batch, Projection, ReadDb, Val, Worker, models};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

/// One generated run: its id and events.
fn run_events(n: u128, workflow: &str, plan: &[u8]) -> (Uuid, Vec<Event>) {
    let id = Uuid::from_u128(n + 1);
    let mut ev = vec![Event::RunStarted(RunStarted {
        run_id: id,
        workflow: workflow.to_owned(),
        workflow_version: 1,
        definition_hash: "h".into(),
        inputs: json!({}),
        started_by: format!("user{}", n % 3),
        idempotency_key: None,
        parent: None,
        fork_of: None,
        settings: None,
        started_at: None,
        schedule: None,
        trace_parent: None,
    })];
    for (i, p) in plan.iter().enumerate() {
        let step = format!("s{i}");
        let started = |attempt| {
            Event::StepStarted(StepStarted {
                step_id: step.clone(),
                attempt,
                input: json!({}),
                scope: String::new(),
                at: None,
            })
        };
        ev.push(started(1));
        match p % 7 {
            0 => {}
            5 => {
                ev.push(Event::ApprovalRequested(cairn_events::ApprovalRequested {
                    step_id: step.clone(),
                    approvers: vec!["grace".into(), "ada".into()],
                    quorum: "all".into(),
                    required_approvals: 2,
                    summary: "ship it?".into(),
                    content: json!({ "draft": i }),
                    content_hash: "c".into(),
                    deadline: None,
                    token_hash: None,
                    escalation: 0,
                    fields: Vec::new(),
                }));
                for who in ["grace", "ada"].iter().take(1 + usize::from(*p % 2)) {
                    ev.push(Event::ApprovalDecided(cairn_events::ApprovalDecided {
                        step_id: step.clone(),
                        decided_by: (*who).into(),
                        decision: "approved".into(),
                        comment: Some("fine".into()),
                        content_hash: "c".into(),
                        values: None,
                    }));
                }
            }
            6 => ev.push(Event::StepSkipped(cairn_events::StepSkipped {
                step_id: step.clone(),
                reason: "cancelled: sibling failed".into(),
                scope: String::new(),
                guard: None,
                at: None,
            })),
            1 => {
                ev.push(Event::StepFailed(StepFailed {
                    step_id: step.clone(),
                    attempt: 1,
                    error_kind: "flaky".into(),
                    message: "try again".into(),
                    retryable: true,
                    retry_after_ms: None,
                }));
                ev.push(started(2));
            }
            2 => {
                for a in 1..=2u32 {
                    ev.push(Event::AiAttemptStarted(AiAttemptStarted {
                        step_id: step.clone(),
                        attempt: a,
                        provider: "scripted".into(),
                        model: format!("m{}", p % 2),
                        messages: vec![],
                        params: Default::default(),
                    }));
                    ev.push(Event::AiAttemptCompleted(AiAttemptCompleted {
                        step_id: step.clone(),
                        attempt: a,
                        raw_output: "{}".into(),
                        usage: TokenUsage { input_tokens: u64::from(*p) + 10, output_tokens: 5 },
                        cost: Some(Cost {
                            currency: "USD".into(),
                            micros: 1000 + u64::from(*p),
                            price_table: "t@1".into(),
                        }),
                        latency_ms: 7,
                        finish_reason: Some("stop".into()),
                    }));
                }
            }
            3 => ev.push(Event::BranchTaken(BranchTaken {
                step_id: step.clone(),
                expression: "inputs.x > 1".into(),
                value: json!(true),
                target: "end".into(),
            })),
            _ => {
                ev.push(Event::InputRequested(InputRequested {
                    step_id: step.clone(),
                    fields: vec![],
                    assignees: vec!["ada".into()],
                    token_hash: "t".into(),
                    deadline: None,
                    title: None,
                }));
                if p % 2 == 0 {
                    ev.push(Event::InputSubmitted(InputSubmitted {
                        step_id: step.clone(),
                        submitted_by: "ada".into(),
                        values: json!({ "ok": true }),
                    }));
                }
            }
        }
        let attempt = if p % 7 == 1 { 2 } else { 1 };
        ev.push(Event::StepCompleted(StepCompleted {
            step_id: step,
            attempt,
            output: json!({ "i": i }),
            duration_ms: 3,
        }));
    }
    ev.push(if plan.len() % 3 == 2 {
        Event::RunFailed(RunFailed { error_kind: "boom".into(), message: "it broke".into(), failed_step: None })
    } else {
        Event::RunCompleted(RunCompleted { output: json!({}) })
    });
    (id, ev)
}

async fn append(store: &Arc<dyn EventStore>, id: Uuid, events: &[Event], version: u64) {
    let new: Vec<NewEvent> = events.iter().map(|e| NewEvent::from_event(e, Metadata::by("gen"))).collect();
    store.append(&cairn_events::run_stream(id), ExpectedVersion::Exact(version), new).await.expect("append");
}

/// A projection applied strictly one event at a time (each a batch of one),
/// to hold the folds of larger batches to.
struct OneByOne(Box<dyn Projection>);

impl Projection for OneByOne {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
    fn create(&self, suffix: &str) -> Vec<String> {
        self.0.create(suffix)
    }
    fn indexes(&self) -> Vec<String> {
        self.0.indexes()
    }
    fn wants(&self, t: &str) -> bool {
        self.0.wants(t)
    }
    fn version(&self) -> u32 {
        self.0.version()
    }
    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut cairn_projections::Tx,
        suffix: &'a str,
        events: &'a [(&'a cairn_events::RecordedEvent, &'a Event)],
    ) -> futures_util::future::BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            for (recorded, event) in events {
                self.0.apply(tx, cairn_projections::Input { suffix, recorded, event }).await?;
            }
            Ok(())
        })
    }
}

/// Every table of every projection, sorted, as values.
async fn dump(db: &ReadDb) -> BTreeMap<String, Vec<Vec<Val>>> {
    let mut out = BTreeMap::new();
    for p in models::all() {
        for t in p.tables() {
            let rows = db.rows(&format!("SELECT * FROM {t} ORDER BY 1, 2"), &[]).await.expect("dump");
            out.insert((*t).to_owned(), rows);
        }
    }
    out
}

async fn sqlite_store(dir: &std::path::Path) -> Arc<dyn EventStore> {
    cairn_events::sqlite::SqliteStore::open(dir.join("events.db"), Default::default()).await.expect("store")
}

/// The direct fold the read models must agree with: status and current
/// step per run, and token totals per run.
/// Status and current step by run.
type Statuses = BTreeMap<String, (String, Option<String>)>;
/// Input tokens and cost by run.
type Tokens = BTreeMap<String, (i64, i64)>;

fn fold(runs: &[(Uuid, Vec<Event>)]) -> (Statuses, Tokens) {
    let mut status = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    for (id, events) in runs {
        let mut st = ("running".to_owned(), None);
        for e in events {
            match e {
                Event::StepStarted(s) => {
                    st.1 = Some(s.step_id.clone());
                    st.0 = "running".into();
                }
                Event::InputRequested(_) | Event::ApprovalRequested(_) => st.0 = "waiting".into(),
                Event::StepCompleted(_) | Event::StepFailed(_) if st.0 == "waiting" => st.0 = "running".into(),
                Event::RunCompleted(_) => st.0 = "completed".into(),
                Event::RunFailed(_) => st.0 = "failed".into(),
                Event::AiAttemptCompleted(a) => {
                    let t = tokens.entry(id.to_string()).or_insert((0, 0));
                    t.0 += i64::try_from(a.usage.input_tokens).unwrap_or(0);
                    t.1 += i64::try_from(a.cost.as_ref().map_or(0, |c| c.micros)).unwrap_or(0);
                }
                _ => {}
            }
        }
        status.insert(id.to_string(), st);
    }
    (status, tokens)
}

fn check_fold(tables: &BTreeMap<String, Vec<Vec<Val>>>, runs: &[(Uuid, Vec<Event>)], total_events: usize) {
    let (status, tokens) = fold(runs);
    let got: BTreeMap<String, (String, Option<String>)> = tables["runs"]
        .iter()
        .map(|r| (r[0].to_string(), (r[3].to_string(), r[4].as_text().map(str::to_owned))))
        .collect();
    assert_eq!(got, status, "runs model vs direct fold");
    let mut got_tokens: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in &tables["costs"] {
        let t = got_tokens.entry(r[0].to_string()).or_insert((0, 0));
        t.0 += r[6].as_int().unwrap_or(0);
        t.1 += r[8].as_int().unwrap_or(0);
    }
    assert_eq!(got_tokens, tokens, "costs model vs direct fold");
    assert_eq!(tables["audit_log"].len(), total_events, "one audit row per event");
    let attempts: usize = runs.iter().flat_map(|(_, e)| e).filter(|e| matches!(e, Event::StepStarted(_))).count();
    let rows = tables["step_history"].iter().filter(|r| r[3].as_text() == Some("attempt")).count();
    assert_eq!(rows, attempts, "one step_history row per attempt");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn incremental_batches_equal_a_rebuild_and_a_direct_fold(
        plans in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5), 1..6),
        order in prop::collection::vec(any::<u8>(), 0..60),
        batch in 1usize..40,
        catch_up_every in 1usize..8,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tmp");
            let store = sqlite_store(dir.path()).await;
            let live = ReadDb::sqlite(&dir.path().join("live.db")).await.expect("db");
            let worker = Worker::new(store.clone(), live.clone(), models::all()).await.expect("worker").with_batch(batch);
            let runs: Vec<(Uuid, Vec<Event>)> =
                plans.iter().enumerate().map(|(i, p)| run_events(i as u128, &format!("wf{}", i % 2), p)).collect();
            // Interleave the runs' events in a generated order, catching up
            // now and then while they arrive.
            let mut next = vec![0usize; runs.len()];
            let mut k = 0;
            let mut total = 0;
            loop {
                let open: Vec<usize> = (0..runs.len()).filter(|&r| next[r] < runs[r].1.len()).collect();
                let Some(&r) = open.get(usize::from(order.get(k).copied().unwrap_or(0)) % open.len().max(1)) else { break };
                let take = 1 + usize::from(order.get(k + 1).copied().unwrap_or(0)) % 3;
                let end = (next[r] + take).min(runs[r].1.len());
                append(&store, runs[r].0, &runs[r].1[next[r]..end], next[r] as u64).await;
                total += end - next[r];
                next[r] = end;
                k += 1;
                if k % catch_up_every == 0 {
                    worker.catch_up().await.expect("catch up");
                }
            }
            worker.catch_up().await.expect("catch up");
            let incremental = dump(&live).await;

            // A worker starting from nothing in another database, and a
            // rebuild of the live one, give the same tables.
            let fresh = ReadDb::sqlite(&dir.path().join("fresh.db")).await.expect("db");
            Worker::new(store.clone(), fresh.clone(), models::all()).await.expect("worker").catch_up().await.expect("catch up");
            assert_eq!(dump(&fresh).await, incremental, "incremental vs from scratch");
            for name in worker.names() {
                worker.rebuild(name).await.expect("rebuild");
            }
            assert_eq!(dump(&live).await, incremental, "incremental vs rebuild");
            // The batch folds against plain one-by-one application.
            let plain = ReadDb::sqlite(&dir.path().join("plain.db")).await.expect("db");
            let one_by_one: Vec<Box<dyn Projection>> =
                models::all().into_iter().map(|p| Box::new(OneByOne(p)) as Box<dyn Projection>).collect();
            Worker::new(store.clone(), plain.clone(), one_by_one).await.expect("worker").catch_up().await.expect("catch up");
            assert_eq!(dump(&plain).await, incremental, "batch folds vs one-by-one");
            check_fold(&incremental, &runs, total);
        });
    }
}

/// An event a projection cannot apply is parked with its position and
/// error, and the projection goes on past it: later runs are in the read
/// models; a rebuild parks it again; retry and skip clear it.
async fn an_unappliable_event_is_parked_and_the_rest_goes_on(store: Arc<dyn EventStore>, db: ReadDb) {
    let worker = Worker::new(store.clone(), db.clone(), models::all()).await.expect("worker");
    let (id, events) = run_events(1, "wf", &[0]);
    append(&store, id, &events, 0).await;
    // The same run started twice: `runs` cannot insert it again.
    append(&store, id, &events[..1], events.len() as u64).await;
    let bad = events.len() as u64 + 1;
    // A later run must not be held back by it.
    let (later, more) = run_events(2, "wf", &[0, 1]);
    append(&store, later, &more, 0).await;
    worker.catch_up().await.expect("catch up");
    let status = worker.status().await.expect("status");
    let runs = status.iter().find(|s| s.name == "runs").expect("runs");
    assert_eq!((runs.position, runs.error.clone(), runs.parked), (runs.head, None, 1), "went on past it");
    let parked = worker.parked(Some("runs")).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].position, parked[0].event_type.as_str()), (bad, "RunStarted"));
    assert!(parked[0].error.contains("RunStarted at position"), "{}", parked[0].error);
    let ids: Vec<String> = db
        .rows("SELECT run_id FROM runs ORDER BY run_id", &[])
        .await
        .expect("runs")
        .into_iter()
        .map(|r| r[0].as_text().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, vec![id.to_string(), later.to_string()], "the later run is in the read model");
    let audit = status.iter().find(|s| s.name == "audit_log").expect("audit");
    assert_eq!((audit.position, audit.parked), (audit.head, 0), "the others never saw a problem");
    // A rebuild gives the same tables and parks it again.
    let before = dump(&db).await;
    worker.rebuild("runs").await.expect("rebuild parks instead of failing");
    assert_eq!(dump(&db).await, before);
    assert_eq!(worker.parked(Some("runs")).await.expect("parked").len(), 1);
    // Retry: still failing, it stays parked with its error; skip forgets it.
    assert!(worker.retry("runs", bad).await.expect("retry").is_err());
    assert_eq!(worker.parked(Some("runs")).await.expect("parked").len(), 1);
    assert!(worker.skip("runs", bad).await.expect("skip"));
    assert!(!worker.skip("runs", bad).await.expect("skip again"), "nothing left to skip");
    assert!(worker.parked(Some("runs")).await.expect("parked").is_empty());
    let runs = worker.status().await.expect("status").into_iter().find(|s| s.name == "runs").expect("runs");
    assert_eq!(runs.parked, 0);
}

/// PostgreSQL: writers append while two workers run the same projections;
/// every event is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_workers_and_concurrent_writers_miss_and_double_nothing() {
    let Some((opts, _schema)) = cairn_events::testing::fresh_pg_schema().await else { return };
    let store: Arc<dyn EventStore> =
        cairn_events::postgres::PgStore::connect_with(opts.clone(), "t".into(), Default::default())
            .await
            .expect("store");
    let db_a = ReadDb::postgres(opts.clone()).await.expect("db");
    let db_b = ReadDb::postgres(opts).await.expect("db");
    let a = Arc::new(Worker::new(store.clone(), db_a.clone(), models::all()).await.expect("a").with_batch(7));
    let b = Arc::new(Worker::new(store.clone(), db_b, models::all()).await.expect("b").with_batch(5));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let wa = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move { a.run(std::time::Duration::from_millis(20), stop).await })
    };
    let wb = {
        let b = b.clone();
        tokio::spawn(async move { b.run(std::time::Duration::from_millis(20), stop).await })
    };
    let mut writers = Vec::new();
    for w in 0..4u128 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            for r in 0..6u128 {
                let (id, events) = run_events(w * 100 + r, "wf", &[r as u8, 2, 4]);
                for (i, e) in events.iter().enumerate() {
                    append(&store, id, std::slice::from_ref(e), i as u64).await;
                }
                n += events.len();
            }
            n
        }));
    }
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer");
    }
    let head = store.head_position().await.expect("head");
    assert_eq!(head, total as u64);
    // Wait for the workers to catch up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = a.status().await.expect("status");
        if s.iter().all(|p| p.position == head) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "workers did not catch up: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop_tx.send(true).expect("stop");
    wa.await.expect("a");
    wb.await.expect("b");
    let audit = db_a
        .rows("SELECT COUNT(*), COUNT(DISTINCT position), MIN(position), MAX(position) FROM audit_log", &[])
        .await
        .expect("audit");
    assert_eq!(audit[0], vec![Val::Int(total as i64), Val::Int(total as i64), Val::Int(1), Val::Int(total as i64)]);
    let runs = db_a
        .rows("SELECT COUNT(*) FROM runs WHERE status = 'completed' OR status = 'failed'", &[])
        .await
        .expect("runs");
    assert_eq!(runs[0], vec![Val::Int(24)]);
    // Costs counted once: 2 AI attempts (12 input tokens each) per run, and
    // 2 more in each writer's run whose first step is an AI step too.
    let costs = db_a
        .rows("SELECT CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(attempts) AS BIGINT) FROM costs", &[])
        .await
        .expect("costs");
    assert_eq!(costs[0], vec![Val::Int(56 * 12), Val::Int(56)]);
}

/// SQLite has no advisory locks: two workers racing over one read database
/// are kept apart by the conditional checkpoint alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_on_one_sqlite_read_database_apply_each_event_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = sqlite_store(dir.path()).await;
    let mut total = 0;
    for r in 0..8u128 {
        let (id, events) = run_events(r, "wf", &[2, 3, 4, 1]);
        append(&store, id, &events, 0).await;
        total += events.len();
    }
    let db = ReadDb::sqlite(&dir.path().join("read.db")).await.expect("db");
    let a = Arc::new(Worker::new(store.clone(), db.clone(), models::all()).await.expect("a").with_batch(3));
    let b = Arc::new(Worker::new(store.clone(), db.clone(), models::all()).await.expect("b").with_batch(4));
    let (ra, rb) = tokio::join!(
        tokio::spawn({
            let a = a.clone();
            async move { a.catch_up().await }
        }),
        tokio::spawn({
            let b = b.clone();
            async move { b.catch_up().await }
        })
    );
    let applied = ra.expect("a").expect("a") + rb.expect("b").expect("b");
    assert!(applied >= total as u64 * 5, "every projection read every event at least once: {applied}");
    for s in a.status().await.expect("status") {
        assert_eq!((s.position, s.error), (total as u64, None), "{}", s.name);
    }
    let tables = dump(&db).await;
    assert_eq!(tables["audit_log"].len(), total);
}

/// PostgreSQL: small incremental batches, a rebuild, a worker from nothing
/// and one-by-one application all give the same tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_incremental_equals_rebuild_and_one_by_one() {
    let Some((opts, _)) = cairn_events::testing::fresh_pg_schema().await else { return };
    let store: Arc<dyn EventStore> =
        cairn_events::postgres::PgStore::connect_with(opts.clone(), "t".into(), Default::default())
            .await
            .expect("store");
    let live = ReadDb::postgres(opts.clone()).await.expect("db");
    let worker = Worker::new(store.clone(), live.clone(), models::all()).await.expect("worker").with_batch(4);
    let mut runs = Vec::new();
    for r in 0..6u128 {
        let (id, events) = run_events(r, &format!("wf{}", r % 2), &[r as u8, 2, 4, 5, 6, 1]);
        append(&store, id, &events, 0).await;
        worker.catch_up().await.expect("catch up");
        runs.push((id, events));
    }
    let incremental = dump(&live).await;
    let total: usize = runs.iter().map(|(_, e)| e.len()).sum();
    check_fold(&incremental, &runs, total);
    for name in worker.names() {
        worker.rebuild(name).await.expect("rebuild");
    }
    assert_eq!(dump(&live).await, incremental, "rebuild");
    // One by one, into a second schema's tables.
    let Some((opts2, _)) = cairn_events::testing::fresh_pg_schema().await else { return };
    let plain = ReadDb::postgres(opts2).await.expect("db");
    let one_by_one: Vec<Box<dyn Projection>> =
        models::all().into_iter().map(|p| Box::new(OneByOne(p)) as Box<dyn Projection>).collect();
    Worker::new(store, plain.clone(), one_by_one).await.expect("worker").catch_up().await.expect("catch up");
    assert_eq!(dump(&plain).await, incremental, "batch folds vs one-by-one");
}

/// PostgreSQL: a worker holds a projection while it lives; when it dies
/// (its session ends), another takes over where the checkpoint is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_postgres_workers_projections_fail_over_to_another() {
    let Some((opts, _)) = cairn_events::testing::fresh_pg_schema().await else { return };
    let store: Arc<dyn EventStore> =
        cairn_events::postgres::PgStore::connect_with(opts.clone(), "t".into(), Default::default())
            .await
            .expect("store");
    let (id, events) = run_events(1, "wf", &[1, 2]);
    append(&store, id, &events[..4], 0).await;
    let a =
        Worker::new(store.clone(), ReadDb::postgres(opts.clone()).await.expect("db"), models::all()).await.expect("a");
    a.catch_up().await.expect("a catches up");
    let b = Worker::new(store.clone(), ReadDb::postgres(opts).await.expect("db"), models::all()).await.expect("b");
    append(&store, id, &events[4..], 4).await;
    assert_eq!(b.step("runs").await.expect("step"), Batch::NotOwner, "a holds it");
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match b.step("runs").await.expect("step") {
            Batch::NotOwner => {
                assert!(std::time::Instant::now() < deadline, "the lock never came free");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => {
                assert!(
                    matches!(other, Batch::Applied { position, .. } if position == events.len() as u64),
                    "{other:?}"
                );
                break;
            }
        }
    }
}

/// A loop's run as the engine recorded it before attempts were numbered on
/// across visits: `check` starts attempt 1 on each of three visits, the
/// second visit retries once.
fn old_loop_run(n: u128) -> (Uuid, Vec<Event>) {
    let id = Uuid::from_u128(1000 + n);
    let started = |step: &str, attempt| {
        Event::StepStarted(StepStarted {
            step_id: step.into(),
            attempt,
            input: json!({}),
            scope: String::new(),
            at: None,
        })
    };
    let done = |step: &str, attempt| {
        Event::StepCompleted(StepCompleted {
            step_id: step.into(),
            attempt,
            output: json!({ "n": attempt }),
            duration_ms: 1,
        })
    };
    let mut ev = vec![Event::RunStarted(RunStarted {
        run_id: id,
        workflow: "loop".into(),
        workflow_version: 1,
        definition_hash: "h".into(),
        inputs: json!({}),
        started_by: "ada".into(),
        idempotency_key: None,
        parent: None,
        fork_of: None,
        settings: None,
        started_at: None,
        schedule: None,
        trace_parent: None,
    })];
    for visit in 1..=3 {
        ev.push(started("check", 1));
        if visit == 2 {
            ev.push(Event::StepFailed(StepFailed {
                step_id: "check".into(),
                attempt: 1,
                error_kind: "flaky".into(),
                message: "again".into(),
                retryable: true,
                retry_after_ms: None,
            }));
            ev.push(Event::RetryScheduled(cairn_events::RetryScheduled {
                step_id: "check".into(),
                next_attempt: 2,
                due_at: chrono::Utc::now(),
                backoff_ms: 10,
            }));
            ev.push(started("check", 2));
            ev.push(done("check", 2));
        } else {
            ev.push(done("check", 1));
        }
        ev.push(started("again", 1));
        ev.push(Event::BranchTaken(BranchTaken {
            step_id: "again".into(),
            expression: "steps.check.output.n < 3".into(),
            value: json!(visit < 3),
            target: if visit < 3 { "check".into() } else { "end".into() },
        }));
        ev.push(done("again", 1));
    }
    ev.push(Event::RunCompleted(RunCompleted { output: json!({}) }));
    (id, ev)
}

/// `(step, attempt, visit, status)` of a run's attempt rows, in order.
async fn attempt_rows(db: &ReadDb, id: Uuid) -> Vec<(String, i64, i64, String)> {
    db.rows(
        "SELECT step_id, attempt, visit, status FROM step_history WHERE run_id = $1 AND kind = 'attempt' ORDER BY position",
        &[Val::from(id.to_string().as_str())],
    )
    .await
    .expect("history")
    .into_iter()
    .map(|r| {
        (
            r[0].as_text().unwrap_or_default().to_owned(),
            r[1].as_int().unwrap_or(0),
            r[2].as_int().unwrap_or(0),
            r[3].as_text().unwrap_or_default().to_owned(),
        )
    })
    .collect()
}

fn expected_loop_rows() -> Vec<(String, i64, i64, String)> {
    let row = |s: &str, a, v, st: &str| (s.to_owned(), a, v, st.to_owned());
    vec![
        row("check", 1, 1, "completed"),
        row("again", 1, 1, "completed"),
        row("check", 1, 2, "failed"),
        row("check", 2, 2, "completed"),
        row("again", 1, 2, "completed"),
        row("check", 1, 3, "completed"),
        row("again", 1, 3, "completed"),
    ]
}

/// The tables and checkpoints as the binary before projection versions
/// left them: `step_history` keyed by `a:STEP:N`, stopped by a loop.
async fn old_read_schema(db: &ReadDb, stopped_at: u64) {
    for sql in [
        "CREATE TABLE cairn_projections (name TEXT PRIMARY KEY, position BIGINT NOT NULL, generation BIGINT NOT NULL, updated_at TEXT, error_position BIGINT, error TEXT)",
        "CREATE TABLE step_history (run_id TEXT NOT NULL, entry TEXT NOT NULL, position BIGINT NOT NULL, kind TEXT NOT NULL, step_id TEXT NOT NULL, attempt BIGINT, status TEXT, started_at TEXT, ended_at TEXT, duration_ms BIGINT, error_kind TEXT, error_message TEXT, input_tokens BIGINT, output_tokens BIGINT, cost_micros BIGINT, actor TEXT, detail TEXT, PRIMARY KEY (run_id, entry))",
        "CREATE TABLE step_current (run_id TEXT NOT NULL, step_id TEXT NOT NULL, attempt BIGINT NOT NULL, PRIMARY KEY (run_id, step_id))",
    ] {
        db.exec(sql, &[]).await.expect("old schema");
    }
    db.exec(
        "INSERT INTO cairn_projections (name, position, generation, error_position, error) VALUES ('step_history', $1, 0, $2, 'UNIQUE constraint failed: step_history.run_id, step_history.entry')",
        &[Val::from(stopped_at - 1), Val::from(stopped_at)],
    )
    .await
    .expect("old checkpoint");
}

/// A read database that the old `a:STEP:N` key stopped on a loop recovers
/// when the new binary starts: `step_history` is built again, current, and
/// lists every visit and attempt.
async fn a_history_stopped_by_the_old_key_recovers(store: Arc<dyn EventStore>, db: ReadDb) {
    let (id, events) = old_loop_run(1);
    append(&store, id, &events, 0).await;
    // The old key failed on the second visit's StepStarted (event 7).
    old_read_schema(&db, 7).await;
    let worker = Worker::new(store.clone(), db.clone(), models::all()).await.expect("worker");
    worker.catch_up().await.expect("catch up");
    for s in worker.status().await.expect("status") {
        assert_eq!((s.name.as_str(), s.position, s.error), (s.name.as_str(), s.head, None), "current and not stopped");
    }
    assert_eq!(attempt_rows(&db, id).await, expected_loop_rows());
    // Incremental, one event at a time, equals a rebuild.
    let before = dump(&db).await;
    worker.rebuild("step_history").await.expect("rebuild");
    assert_eq!(dump(&db).await, before, "rebuild equals the live tables");
}

/// Every visit and attempt of a loop gets its row, incrementally in
/// batches of one and in one batch, on both key shapes of the log.
async fn a_loop_lists_every_visit_and_attempt(store: Arc<dyn EventStore>, db: ReadDb) {
    let worker = Worker::new(store.clone(), db.clone(), models::all()).await.expect("worker").with_batch(1);
    let (old, events) = old_loop_run(2);
    append(&store, old, &events, 0).await;
    worker.catch_up().await.expect("catch up");
    assert_eq!(attempt_rows(&db, old).await, expected_loop_rows());
    let before = dump(&db).await;
    worker.rebuild("step_history").await.expect("rebuild");
    assert_eq!(dump(&db).await, before, "one batch equals batches of one");
}

/// A store and a read database on SQLite (kept alive by the guard).
async fn on_sqlite() -> (tempfile::TempDir, Arc<dyn EventStore>, ReadDb) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = sqlite_store(dir.path()).await;
    let db = ReadDb::sqlite(&dir.path().join("read.db")).await.expect("db");
    (dir, store, db)
}

/// A store and a read database in a fresh PostgreSQL schema; `None` when
/// the server is unreachable outside CI.
async fn on_postgres() -> Option<(Arc<dyn EventStore>, ReadDb)> {
    let (opts, _) = cairn_events::testing::fresh_pg_schema().await?;
    let store: Arc<dyn EventStore> =
        cairn_events::postgres::PgStore::connect_with(opts.clone(), "t".into(), Default::default())
            .await
            .expect("store");
    Some((store, ReadDb::postgres(opts).await.expect("db")))
}

/// Declares each `async fn NAME(store, db)` as a test on SQLite and on
/// PostgreSQL (modules `sqlite_backend` and `postgres_backend`).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_dir, store, db) = super::on_sqlite().await;
                super::$name(store, db).await
            }
        )*}
        mod postgres_backend {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, db)) = super::on_postgres().await else { return };
                super::$name(store, db).await
            }
        )*}
    };
}

/// The runs list's indexes: on the live table from the start, and still
/// there after a rebuild and a second rebuild (a rebuild fills fresh
/// tables without them and makes them after the swap). Every filter and
/// keyset paging, a page of two at a time, give exactly the runs a direct
/// sort gives; on SQLite the newest-first page walks its index (no sort).
async fn the_runs_list_pages_on_its_indexes(store: Arc<dyn EventStore>, db: ReadDb) {
    use cairn_projections::queries::{RunFilter, runs_page};
    let worker = Worker::new(store.clone(), db.clone(), models::all()).await.expect("worker");
    for n in 0..9u128 {
        // Plans of 1, 2, 3 steps: the runs of two steps fail.
        let (id, events) = run_events(n, if n % 3 == 0 { "other" } else { "wf" }, &vec![0; 1 + (n % 3) as usize]);
        append(&store, id, &events, 0).await;
    }
    worker.catch_up().await.expect("catch up");
    let indexes = |db: ReadDb| async move {
        let sql = if db.is_postgres() {
            "SELECT indexname FROM pg_indexes WHERE tablename = 'runs' AND schemaname = current_schema() AND indexname LIKE 'runs_by_%' ORDER BY 1"
        } else {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs' AND name LIKE 'runs_by_%' ORDER BY 1"
        };
        let rows = db.rows(sql, &[]).await.expect("indexes");
        rows.into_iter().map(|r| r[0].as_text().unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    let want = vec!["runs_by_start", "runs_by_status", "runs_by_workflow"];
    assert_eq!(indexes(db.clone()).await, want, "at start");
    worker.rebuild("runs").await.expect("rebuild");
    assert_eq!(indexes(db.clone()).await, want, "after a rebuild");
    worker.rebuild("runs").await.expect("rebuild again");
    assert_eq!(indexes(db.clone()).await, want, "after a second rebuild");
    if !db.is_postgres() {
        let plan = db
            .rows("EXPLAIN QUERY PLAN SELECT run_id FROM runs WHERE workflow = 'wf' ORDER BY started_at DESC, run_id DESC LIMIT 51", &[])
            .await
            .expect("plan");
        let plan = format!("{plan:?}");
        assert!(plan.contains("runs_by_workflow") && !plan.contains("TEMP B-TREE"), "{plan}");
    }
    // Every filter, paged two at a time, against a direct sort.
    let all = runs_page(&db, &RunFilter::default()).await.expect("all");
    assert_eq!(all.len(), 9);
    for (workflow, status) in
        [(None, None), (Some("wf"), None), (None, Some("failed")), (Some("other"), Some("completed"))]
    {
        let mut want: Vec<(String, String)> = all
            .iter()
            .filter(|r| workflow.is_none_or(|w| r.workflow == w) && status.is_none_or(|x| r.status == x))
            .map(|r| (r.started_at.clone(), r.run_id.clone()))
            .collect();
        want.sort_by(|a, b| b.cmp(a));
        assert!(!want.is_empty(), "{workflow:?} {status:?} matches some runs");
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let f = RunFilter {
                workflow: workflow.map(str::to_owned),
                status: status.map(str::to_owned),
                before: before.clone(),
                limit: 2,
                ..RunFilter::default()
            };
            let page = runs_page(&db, &f).await.expect("page");
            got.extend(page.iter().map(|r| (r.started_at.clone(), r.run_id.clone())));
            match page.last() {
                Some(r) if page.len() == 2 => before = Some((r.started_at.clone(), r.run_id.clone())),
                _ => break,
            }
        }
        assert_eq!(got, want, "{workflow:?} {status:?}");
    }
}

on_both!(
    the_runs_list_pages_on_its_indexes,
    an_unappliable_event_is_parked_and_the_rest_goes_on,
    a_history_stopped_by_the_old_key_recovers,
    a_loop_lists_every_visit_and_attempt,
);

/// Eight workers (each with its own connections, as eight processes would
/// have) start at the same moment on a fresh database, five times over: all
/// start, and the read models are there once. Before the set-up took a
/// lock, two servers started together on a fresh PostgreSQL database and one
/// exited with `duplicate key value violates unique constraint
/// "pg_type_typname_nsp_index"`.
async fn workers_starting_together_all_start(dbs: Vec<ReadDb>, store: Arc<dyn EventStore>) {
    let starts = dbs.into_iter().map(|db| {
        let store = store.clone();
        tokio::spawn(async move { Worker::new(store, db, models::all()).await.map(|_| ()) })
    });
    for (i, r) in futures_util::future::join_all(starts).await.into_iter().enumerate() {
        r.expect("join").unwrap_or_else(|e| panic!("worker {i} did not start: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_starting_together_on_a_fresh_postgres_schema_all_start() {
    for _ in 0..5 {
        let Some((opts, _schema)) = cairn_events::testing::fresh_pg_schema().await else { return };
        let store: Arc<dyn EventStore> =
            cairn_events::postgres::PgStore::connect_with(opts.clone(), "t".into(), Default::default())
                .await
                .expect("store");
        let mut dbs = Vec::new();
        for _ in 0..8 {
            dbs.push(ReadDb::postgres(opts.clone()).await.expect("db"));
        }
        let check = ReadDb::postgres(opts).await.expect("db");
        workers_starting_together_all_start(dbs, store).await;
        let rows = check.rows("SELECT COUNT(*) FROM cairn_projections", &[]).await.expect("checkpoints");
        assert_eq!(rows[0][0].as_int(), Some(models::all().len() as i64), "one checkpoint per read model");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_starting_together_on_a_fresh_sqlite_file_all_start() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tmp");
        let store = sqlite_store(dir.path()).await;
        let mut dbs = Vec::new();
        for _ in 0..8 {
            dbs.push(ReadDb::sqlite(&dir.path().join("read.db")).await.expect("db"));
        }
        workers_starting_together_all_start(dbs, store).await;
    }
}
