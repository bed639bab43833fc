//! Projection benchmark: rebuild speed per projection in events per second,
//! next to `read_all` alone over the same log in the same run (the floor),
//! and projection lag while W10 runs at full speed.
//!
//! ```text
//! cargo run --release -p cairn-projections --example projection_bench [-- --events N]
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_events::{
    AiAttemptCompleted, AiAttemptStarted, Cost, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RunCompleted,
    RunStarted, StepCompleted, StepStarted, StreamAppend, TokenUsage,
};
use cairn_projections::{ReadDb, Worker, models};
use cairn_runtime::{Engine, TaskRegistry};
use serde_json::json;

/// Ten events of a run with an AI step, as the engine writes them.
fn run(n: u64) -> (String, Vec<Event>) {
    let id = uuid::Uuid::from_u128(u128::from(n) + 1);
    let step = |s: &str, a| {
        Event::StepStarted(StepStarted {
            step_id: s.into(),
            attempt: a,
            input: json!({ "n": n }),
            scope: String::new(),
            at: None,
        })
    };
    let done = |s: &str| {
        Event::StepCompleted(StepCompleted {
            step_id: s.into(),
            attempt: 1,
            output: json!({ "ok": true, "n": n }),
            duration_ms: 3,
        })
    };
    (
        cairn_events::run_stream(id),
        vec![
            Event::RunStarted(RunStarted {
                run_id: id,
                workflow: format!("wf{}", n % 7),
                workflow_version: 1,
                definition_hash: "h".into(),
                inputs: json!({ "topic": "bench" }),
                started_by: "bench".into(),
                idempotency_key: None,
                parent: None,
                fork_of: None,
                settings: None,
                started_at: None,
                schedule: None,
                trace_parent: None,
            }),
            step("fetch", 1),
            done("fetch"),
            step("draft", 1),
            Event::AiAttemptStarted(AiAttemptStarted {
                step_id: "draft".into(),
                attempt: 1,
                provider: "scripted".into(),
                model: "m".into(),
                messages: vec![],
                params: Default::default(),
            }),
            Event::AiAttemptCompleted(AiAttemptCompleted {
                step_id: "draft".into(),
                attempt: 1,
                raw_output: "{\"title\":\"t\"}".into(),
                usage: TokenUsage { input_tokens: 120, output_tokens: 40 },
                cost: Some(Cost { currency: "USD".into(), micros: 900, price_table: "p@1".into() }),
                latency_ms: 5,
                finish_reason: Some("stop".into()),
            }),
            done("draft"),
            step("publish", 1),
            done("publish"),
            Event::RunCompleted(RunCompleted { output: json!({}) }),
        ],
    )
}

async fn fill(store: &Arc<dyn EventStore>, events: u64) {
    let runs = events / 10;
    let mut n = 0;
    while n < runs {
        let batch: Vec<StreamAppend> = (n..(n + 200).min(runs))
            .map(|i| {
                let (stream, evs) = run(i);
                StreamAppend {
                    stream_id: stream,
                    expected: ExpectedVersion::NoStream,
                    events: evs.iter().map(|e| NewEvent::from_event(e, Metadata::by("bench"))).collect(),
                }
            })
            .collect();
        n += batch.len() as u64;
        store.append_many(batch).await.unwrap();
    }
}

async fn read_all_floor(store: &Arc<dyn EventStore>) -> f64 {
    let t = Instant::now();
    let mut from = 1;
    let mut n = 0u64;
    loop {
        let page = store.read_all(from, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.global_position + 1;
        n += page.len() as u64;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(".").unwrap();
    let store: Arc<dyn EventStore> =
        cairn_events::sqlite::SqliteStore::open(dir.path().join("events.db"), Default::default()).await.unwrap();
    let t = Instant::now();
    fill(&store, events).await;
    println!(
        "projection benchmark on SQLite (WAL, synchronous=FULL): {events} events written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let floor = read_all_floor(&store).await;
    println!("floor: read_all alone, pages of 1,000: {floor:>10.0} events/s");
    let db = ReadDb::sqlite(&dir.path().join("read.db")).await.unwrap();
    let worker = Worker::new(store.clone(), db, models::all()).await.unwrap();
    let mut total = 0.0;
    for name in worker.names() {
        let t = Instant::now();
        let n = worker.rebuild(name).await.unwrap();
        let s = t.elapsed().as_secs_f64();
        total += s;
        println!(
            "rebuild {name:<13} {n} events in {s:>6.1} s = {:>9.0} events/s ({:.2}x read_all)",
            n as f64 / s,
            n as f64 / s / floor
        );
    }
    println!("all five rebuilt in {total:.1} s (goal: one million events in under a minute each)");

    // A run of 1,000 events: its history from the read model.
    let big = uuid::Uuid::from_u128(u128::MAX);
    let mut events = vec![NewEvent::from_event(&run(0).1[0], Metadata::by("bench"))];
    if let Event::RunStarted(mut r) = run(0).1[0].clone() {
        r.run_id = big;
        events = vec![NewEvent::from_event(&Event::RunStarted(r), Metadata::by("bench"))];
    }
    for i in 0..500u32 {
        let s = format!("s{i}");
        events.push(NewEvent::from_event(
            &Event::StepStarted(StepStarted {
                step_id: s.clone(),
                attempt: 1,
                input: json!({}),
                scope: String::new(),
                at: None,
            }),
            Metadata::by("engine"),
        ));
        if i < 499 {
            events.push(NewEvent::from_event(
                &Event::StepCompleted(StepCompleted {
                    step_id: s,
                    attempt: 1,
                    output: json!({ "i": i }),
                    duration_ms: 1,
                }),
                Metadata::by("engine"),
            ));
        }
    }
    store.append(&cairn_events::run_stream(big), ExpectedVersion::NoStream, events).await.unwrap();
    worker.catch_up().await.unwrap();
    let t = Instant::now();
    let rows = cairn_projections::queries::history(worker.db(), &big.to_string()).await.unwrap();
    println!(
        "history of a run of 1,000 events ({} entries) from the read model: {:.2} ms",
        rows.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );

    // Lag while W10 runs at full speed (16 at a time) in the same process.
    let w10_dir = tempfile::tempdir_in(".").unwrap();
    let store: Arc<dyn EventStore> =
        cairn_events::sqlite::SqliteStore::open(w10_dir.path().join("w10.db"), Default::default()).await.unwrap();
    let db = ReadDb::sqlite(&w10_dir.path().join("w10-read.db")).await.unwrap();
    let worker = Arc::new(Worker::new(store.clone(), db, models::all()).await.unwrap());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let runner = {
        let w = worker.clone();
        tokio::spawn(async move { w.run(Duration::from_millis(50), stop).await })
    };
    let engine = Arc::new(Engine::new(store.clone(), TaskRegistry::builtin()));
    let src = include_str!("../../runtime/examples/w10.yaml");
    let w = Arc::new(cairn_runtime::lang::parse(src, "w10.yaml", &engine.task_names()).unwrap());
    let version = engine.publish(&w, "bench").await.unwrap();
    let (lag_tx, mut lag_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let (mut max_events, mut max_secs) = (0u64, 0f64);
            while !*lag_rx.borrow() {
                if let Ok(status) = worker.status().await {
                    for s in status {
                        max_events = max_events.max(s.lag_events);
                        max_secs = max_secs.max(s.lag_seconds);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = lag_rx.changed() => {}
                }
            }
            (max_events, max_secs)
        })
    };
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for _ in 0..2000 {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (engine, w) = (engine.clone(), w.clone());
        tasks.push(tokio::spawn(async move {
            let mut quiet = |_: &Event| {};
            engine.run(&w, version, json!({}), "bench", &mut quiet).await.unwrap();
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    // Time for the projections to finish after the last run ended.
    let t_drain = Instant::now();
    let head = store.head_position().await.unwrap();
    while worker.status().await.unwrap().iter().any(|s| s.position < head) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = t_drain.elapsed().as_secs_f64();
    lag_tx.send(true).unwrap();
    let (max_events, max_secs) = sampler.await.unwrap();
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
    println!(
        "W10 with projections in-process: 2000 runs in {secs:.2} s = {:.0} runs/s ({:.0} events/s); max lag {max_events} events / {max_secs:.2} s; caught up {drain:.2} s after the last run (goal: lag under 1 s)",
        2000.0 / secs,
        head as f64 / secs
    );
}
