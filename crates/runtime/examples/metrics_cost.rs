//! METRICS: what counting costs. W10 (10 sequential task steps per run) in
//! process on SQLite, in rounds that alternate between no recorder (the
//! floor: every `metrics` call is a no-op) and the Prometheus recorder that
//! `cairn serve` installs, with its histogram buckets. The recorder is set
//! for this thread (a current-thread runtime: every run's work is on it), so
//! both are measured in one process on one database, round after round.
//!
//! ```text
//! cargo run --release -p cairn-runtime --example metrics_cost [-- --quick]
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use cairn_events::{Event, EventStore};
use cairn_runtime::run::RunStatus;
use cairn_runtime::{Engine, TaskRegistry};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde_json::json;

#[path = "bench/mod.rs"]
mod bench;

const W10: &str = include_str!("w10.yaml");

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(bench(std::env::args().any(|a| a == "--quick")));
}

async fn bench(quick: bool) {
    let (rounds, runs, conc) = if quick { (3, 200, 16) } else { (5, 1000, 16) };
    println!("METRICS: W10 in process on SQLite, {runs} runs {conc} at a time per round, {rounds} rounds of each");
    println!("floor: the same runs with no recorder installed (every metrics call a no-op), alternating rounds");
    let dir = tempfile::tempdir_in(".").unwrap();
    let store: Arc<dyn EventStore> =
        cairn_events::sqlite::SqliteStore::open(dir.path().join("m.db"), Default::default()).await.unwrap();
    let engine = Arc::new(Engine::new(store, TaskRegistry::builtin()));
    let w = Arc::new(cairn_runtime::lang::parse(W10, "w10.yaml", &engine.task_names()).unwrap());
    let version = engine.publish(&w, "bench").await.unwrap();
    let one = move |_: usize| {
        let (engine, w) = (engine.clone(), w.clone());
        async move {
            let mut quiet = |_: &Event| {};
            let (_, s) = engine.run(&w, version, json!({}), "bench", &mut quiet).await.unwrap();
            assert_eq!(s.status, RunStatus::Completed);
        }
    };
    for i in 0..20 {
        one(i).await; // warm-up
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &[0.005, 0.05, 0.5, 5.0, 60.0, 3600.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    cairn_runtime::metrics::describe();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(bench::measure(1, runs, conc, one.clone()).await.runs_per_s);
        let guard = metrics::set_default_local_recorder(&recorder);
        on.push(bench::measure(1, runs, conc, one.clone()).await.runs_per_s);
        drop(guard);
        handle.run_upkeep();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    let text = handle.render();
    let started = text.lines().find(|l| l.starts_with("cairn_runs_started_total")).unwrap_or("(none)");
    println!("counted: {started}");
    println!(
        "sqlite    throughput @{conc} with metrics {on:>7.0} runs/s | floor (none) {off:>7.0} runs/s | ratio {:.3}x",
        on / off
    );
    println!("peak RSS {:.1} MiB", bench::peak_rss_mib());
}
