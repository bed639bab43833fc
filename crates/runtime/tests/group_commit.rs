//! Group commit: concurrent runs share transactions, and a conflict inside a
//! shared transaction reaches only the run it belongs to.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_events::{
    AppendResult, Backend, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreResult,
    StreamAppend,
};
use cairn_runtime::run::RunStatus;
use cairn_runtime::testing::GroupCommit;
use cairn_runtime::{Engine, TaskRegistry};
use futures_util::future::BoxFuture;
use serde_json::json;

/// A real SQLite store that counts transactions and can hold the first one
/// open for a while (so others queue behind it).
struct Observed {
    inner: Arc<dyn EventStore>,
    transactions: AtomicUsize,
    appends: AtomicUsize,
    largest: AtomicUsize,
    hold_first: Option<Duration>,
}

impl EventStore for Observed {
    fn append_many(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, StoreResult<Vec<AppendResult>>> {
        Box::pin(async move {
            let n = self.transactions.fetch_add(1, Ordering::SeqCst);
            self.appends.fetch_add(appends.len(), Ordering::SeqCst);
            self.largest.fetch_max(appends.len(), Ordering::SeqCst);
            if let (0, Some(d)) = (n, self.hold_first) {
                tokio::time::sleep(d).await;
            }
            self.inner.append_many(appends).await
        })
    }
    fn read_stream<'a>(&'a self, s: &'a str, v: u64) -> BoxFuture<'a, StoreResult<Vec<RecordedEvent>>> {
        self.inner.read_stream(s, v)
    }
    fn read_all(&self, p: u64, l: usize) -> BoxFuture<'_, StoreResult<Vec<RecordedEvent>>> {
        self.inner.read_all(p, l)
    }
    fn head_position(&self) -> BoxFuture<'_, StoreResult<u64>> {
        self.inner.head_position()
    }
    fn stream_version<'a>(&'a self, s: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        self.inner.stream_version(s)
    }
    fn wakeups(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.wakeups()
    }
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}

async fn observed(hold_first: Option<Duration>) -> (tempfile::TempDir, Arc<Observed>) {
    let dir = tempfile::tempdir().expect("tmp");
    let inner =
        cairn_events::sqlite::SqliteStore::open(dir.path().join("c.db"), Default::default()).await.expect("open");
    let store = Arc::new(Observed {
        inner,
        transactions: AtomicUsize::new(0),
        appends: AtomicUsize::new(0),
        largest: AtomicUsize::new(0),
        hold_first,
    });
    (dir, store)
}

fn ev() -> NewEvent {
    NewEvent::raw("Note", 1, &json!({}), Metadata::by("t"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_share_transactions_and_each_step_is_recorded_once() {
    let (_dir, store) = observed(None).await;
    let engine = Arc::new(Engine::new(store.clone(), TaskRegistry::builtin()));
    let steps: String =
        (0..5).map(|i| format!("  - id: s{i}\n    task: increment\n    with: {{ counter: {i} }}\n")).collect();
    let w = Arc::new(
        cairn_runtime::lang::parse(&format!("name: many\nsteps:\n{steps}"), "t", &engine.task_names()).expect("parse"),
    );
    let v = engine.publish(&w, "t").await.expect("publish");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (engine, w) = (engine.clone(), w.clone());
            tokio::spawn(async move {
                let id = engine.start(&w, v, json!({}), "t").await.expect("start");
                let mut quiet = |_: &Event| {};
                (id, engine.drive(id, &mut quiet).await.expect("drive"))
            })
        })
        .collect();
    for t in tasks {
        let (id, state) = t.await.expect("join");
        assert_eq!(state.status, RunStatus::Completed);
        let events = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
        let completed = events.iter().filter(|e| e.event_type == "StepCompleted").count();
        assert_eq!(completed, 5, "every step recorded exactly once");
    }
    let (tx, appends) = (store.transactions.load(Ordering::SeqCst), store.appends.load(Ordering::SeqCst));
    assert!(store.largest.load(Ordering::SeqCst) > 1, "no two runs ever shared a transaction");
    assert!(tx < appends, "{tx} transactions for {appends} appends");
    assert!(cairn_events::verify(&*store).await.expect("verify").is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_in_a_shared_transaction_fails_only_its_own_append() {
    let (_dir, store) = observed(Some(Duration::from_millis(200))).await;
    let gc = Arc::new(GroupCommit::new(store.clone()));
    let append = |stream: &str, expected| {
        let gc = gc.clone();
        let a = StreamAppend { stream_id: stream.into(), expected, events: vec![ev()] };
        tokio::spawn(async move { gc.append(a).await })
    };
    // The first commit is held open; the next three queue behind it and are
    // committed together: one of them expects the wrong version.
    let first = append("a", ExpectedVersion::NoStream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ok1 = append("b", ExpectedVersion::NoStream);
    let bad = append("c", ExpectedVersion::Exact(7));
    let ok2 = append("d", ExpectedVersion::NoStream);
    assert!(first.await.expect("join").is_ok());
    assert!(ok1.await.expect("join").is_ok());
    assert!(ok2.await.expect("join").is_ok());
    let err = bad.await.expect("join").expect_err("conflict");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.largest.load(Ordering::SeqCst), 3, "the queued appends were tried together");
    assert_eq!(store.stream_version("b").await.expect("v"), 1);
    assert_eq!(store.stream_version("c").await.expect("v"), 0);
    assert_eq!(store.stream_version("d").await.expect("v"), 1);
}
