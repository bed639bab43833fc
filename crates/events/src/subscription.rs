//! Tailing the log: every committed event once, in global order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::envelope::RecordedEvent;
use crate::store::{EventStore, StoreResult};

/// How often a subscription polls when no wake-up arrives (the floor that
/// catches writes from other processes on SQLite and lost notifications).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
const BATCH: usize = 512;

/// A live tail of the log from a position. Because `read_all` never skips a
/// committed event, tailing it yields each event exactly once, in order.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    next_position: u64,
    buffer: VecDeque<RecordedEvent>,
    wake: watch::Receiver<u64>,
    poll: Duration,
}

impl Subscription {
    pub(crate) fn new(store: Arc<dyn EventStore>, from_position: u64) -> Self {
        let wake = store.wakeups();
        Subscription {
            store,
            next_position: from_position.max(1),
            buffer: VecDeque::new(),
            wake,
            poll: DEFAULT_POLL_INTERVAL,
        }
    }

    /// Changes the polling floor.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The position of the next event this subscription will yield.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Waits for and returns the next event.
    pub async fn next(&mut self) -> StoreResult<RecordedEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.next_position = e.global_position + 1;
                return Ok(e);
            }
            self.fill().await?;
        }
    }

    /// Returns the events available now (at most one batch), waiting for at
    /// least one.
    pub async fn next_batch(&mut self) -> StoreResult<Vec<RecordedEvent>> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        let batch: Vec<_> = self.buffer.drain(..).collect();
        if let Some(last) = batch.last() {
            self.next_position = last.global_position + 1;
        }
        Ok(batch)
    }

    async fn fill(&mut self) -> StoreResult<()> {
        loop {
            // Mark the current wake-up value seen before reading, so a commit
            // that lands after the read wakes the wait below.
            self.wake.borrow_and_update();
            let events = self.store.read_all(self.next_position, BATCH).await?;
            if !events.is_empty() {
                self.buffer.extend(events);
                return Ok(());
            }
            // A timeout just means: read again (the polling floor).
            if let Ok(Err(_closed)) = tokio::time::timeout(self.poll, self.wake.changed()).await {
                tokio::time::sleep(self.poll).await;
            }
        }
    }
}

/// Tails the log from `from_position`, yielding every committed event once,
/// in order, waking on commits and polling as the floor.
pub fn subscribe(store: std::sync::Arc<dyn EventStore>, from_position: u64) -> Subscription {
    Subscription::new(store, from_position)
}
