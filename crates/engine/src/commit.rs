//! Group commit across runs, leader style: whoever finds no commit in
//! progress commits at once (no extra task hop when a run is alone); appends
//! that arrive while a commit is in flight queue up, and the next leader
//! commits all of them in one `append_many` transaction, so one fsync
//! carries many runs' steps.
//!
//! A batch is all-or-nothing in the store; when it fails, each request is
//! retried alone, so a conflict (or any error) reaches only the run it
//! belongs to.

use std::sync::{Arc, Mutex};

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
}

impl GroupCommit {
    /// Group commit over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        GroupCommit { store, queue: Mutex::new(Vec::new()), leader: tokio::sync::Mutex::new(()) }
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
            // Leader: commit everything queued so far (ours included, unless
            // an earlier leader already did).
            loop {
                let batch: Vec<_> = {
                    let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                commit_distinct_streams(&*self.store, batch).await;
            }
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
