//! Group commit across runs, leader style: whoever finds no commit in
//! progress commits at once (no extra task hop when a run is alone); appends
//! that arrive while a commit is in flight queue up, and the next leader
//! commits all of them in one `append_many` transaction, so one fsync
//! carries many runs' steps. A leader commits one batch and hands over, and
//! first waits (briefly, bounded) for the runs the previous batch released
//! to queue their next step, so concurrent runs share every fsync instead
//! of splitting into two alternating halves.
//!
//! A batch is all-or-nothing in the store; when it fails, each request is
//! retried alone, so a conflict (or any error) reaches only the run it
//! belongs to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_events::{AppendResult, EventStore, StoreError, StreamAppend};
use tokio::sync::oneshot;

/// Most appends in one group commit.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// Group commit over one store.
pub struct GroupCommit {
    store: Arc<dyn EventStore>,
    queue: Mutex<Vec<(StreamAppend, Reply)>>,
    leader: tokio::sync::Mutex<()>,
    /// How many appends the next batch can expect: the last batch (its
    /// callers are about to append their next step) plus what queued
    /// meanwhile.
    expect: AtomicUsize,
}

/// Longest a leader waits for the callers of the previous batch to queue
/// their next appends.
const GATHER: Duration = Duration::from_micros(250);

impl GroupCommit {
    /// Group commit over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        GroupCommit {
            store,
            queue: Mutex::new(Vec::new()),
            leader: tokio::sync::Mutex::new(()),
            expect: AtomicUsize::new(1),
        }
    }

    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Appends, possibly together with other callers' appends; resolves when
    /// durable.
    pub async fn append(&self, append: StreamAppend) -> Result<AppendResult, StoreError> {
        let (reply, mut rx) = oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push((append, reply));
        loop {
            let guard = tokio::select! {
                biased;
                r = &mut rx => {
                    return r.unwrap_or_else(|_| Err(StoreError::InvalidAppend("a group commit was abandoned".into())));
                }
                g = self.leader.lock() => g,
            };
            // Leader for one batch. The runs the last batch released are
            // busy deciding their next step: give them a moment to queue it,
            // so one commit carries every run instead of alternate halves.
            // A run on its own never waits (it expects only itself).
            let want = self.expect.load(Ordering::Relaxed).min(MAX_BATCH);
            let since = Instant::now();
            while self.queued() < want && since.elapsed() < GATHER {
                tokio::task::yield_now().await;
            }
            let batch: Vec<_> = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            let n = batch.len();
            if n > 0 {
                commit_distinct_streams(&*self.store, batch).await;
                self.expect.store(n + self.queued(), Ordering::Relaxed);
            }
            // Hand over: the next waiter leads the next batch while this
            // caller goes on with its own work.
            drop(guard);
        }
    }
}

/// Commits a batch, one append per stream per transaction (a second append
/// to a stream depends on the first's outcome).
async fn commit_distinct_streams(store: &dyn EventStore, mut batch: Vec<(StreamAppend, Reply)>) {
    while !batch.is_empty() {
        let mut now: Vec<(StreamAppend, Reply)> = Vec::with_capacity(batch.len());
        let mut later = Vec::new();
        for item in batch {
            if now.iter().any(|(a, _)| a.stream_id == item.0.stream_id) {
                later.push(item);
            } else {
                now.push(item);
            }
        }
        commit(store, now).await;
        batch = later;
    }
}

async fn commit(store: &dyn EventStore, batch: Vec<(StreamAppend, Reply)>) {
    if batch.len() == 1 {
        for (a, reply) in batch {
            let _ = reply.send(store.append_many(vec![a]).await.map(|mut r| r.remove(0)));
        }
        return;
    }
    let appends: Vec<StreamAppend> = batch.iter().map(|(a, _)| a.clone()).collect();
    match store.append_many(appends).await {
        Ok(results) => {
            for ((_, reply), r) in batch.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(_) => {
            // Someone's conflict (or a fault): give each its own answer.
            for (a, reply) in batch {
                let _ = reply.send(store.append_many(vec![a]).await.map(|mut r| r.remove(0)));
            }
        }
    }
}
