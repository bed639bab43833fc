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

use cairn_events::{AppendResult, EventStore, Fence, StoreError, StreamAppend, Wake};
use tokio::sync::oneshot;

/// Most appends in one group commit.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// One caller's append with the lease it must hold and the wake-up index
/// changes that go with it.
struct Request {
    append: StreamAppend,
    fence: Option<Fence>,
    wakes: Vec<Wake>,
    reply: Reply,
}

/// Group commit over one store.
pub struct GroupCommit {
    store: Arc<dyn EventStore>,
    queue: Mutex<Vec<Request>>,
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
        self.append_guarded(append, None, Vec::new()).await
    }

    /// [`GroupCommit::append`] refused unless `fence`'s lease still holds,
    /// with `wakes` written in the same transaction.
    pub async fn append_guarded(
        &self,
        append: StreamAppend,
        fence: Option<Fence>,
        wakes: Vec<Wake>,
    ) -> Result<AppendResult, StoreError> {
        let (reply, mut rx) = oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(Request { append, fence, wakes, reply });
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
async fn commit_distinct_streams(store: &dyn EventStore, mut batch: Vec<Request>) {
    while !batch.is_empty() {
        let mut now: Vec<Request> = Vec::with_capacity(batch.len());
        let mut later = Vec::new();
        for item in batch {
            if now.iter().any(|r| r.append.stream_id == item.append.stream_id) {
                later.push(item);
            } else {
                now.push(item);
            }
        }
        commit(store, now).await;
        batch = later;
    }
}

async fn alone(store: &dyn EventStore, r: Request) {
    let out = store.append_guarded(vec![r.append], r.fence.into_iter().collect(), r.wakes).await;
    let _ = r.reply.send(out.map(|mut v| v.remove(0)));
}

async fn commit(store: &dyn EventStore, batch: Vec<Request>) {
    if batch.len() == 1 {
        for r in batch {
            alone(store, r).await;
        }
        return;
    }
    let appends: Vec<StreamAppend> = batch.iter().map(|r| r.append.clone()).collect();
    let fences: Vec<Fence> = batch.iter().filter_map(|r| r.fence.clone()).collect();
    let wakes: Vec<Wake> = batch.iter().flat_map(|r| r.wakes.iter().cloned()).collect();
    match store.append_guarded(appends, fences, wakes).await {
        Ok(results) => {
            for (r, out) in batch.into_iter().zip(results) {
                let _ = r.reply.send(Ok(out));
            }
        }
        Err(_) => {
            // Someone's conflict, a lost lease (or a fault): give each its
            // own answer.
            for r in batch {
                alone(store, r).await;
            }
        }
    }
}
