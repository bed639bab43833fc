//! Run ownership: which worker drives which run. An engine over a store
//! that keeps leases is a worker: it claims a run before driving it, fences
//! every append it makes for the run with the lease's token (an append from
//! an owner whose run was taken over is refused, never merged), beats while
//! it lives and gives the lease up when the run no longer needs it. A worker
//! that stops beating for the lease timeout loses its runs to any other
//! worker; one that exits cleanly retires, freeing them at once.
//!
//! Lease times are wall-clock milliseconds (every process compares them),
//! independent of the engine's clock, which only decides when timers fall due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cairn_events::{EventStore, Fence, Wake};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::RunError;

/// How long a worker may go without beating before its runs are taken over
/// (by the next poll of another worker, within a second: 10 s in all).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(9);

/// The leases of one worker.
pub(crate) struct Leases {
    pub(crate) id: String,
    about: String,
    timeout: Duration,
    /// Runs held → their token.
    held: Mutex<HashMap<Uuid, i64>>,
    /// The beat task, started at the first claim.
    beating: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// This host's name, as the kernel has it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` of this host has exited (a zombie has too). Where
/// there is no /proc to tell, it is taken to be alive: its runs are then
/// taken over after the lease timeout, as a remote worker's are.
fn process_gone(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Now on the wall clock, whatever clock the engine decides with: other
/// processes compare these times.
fn wall_ms() -> i64 {
    use cairn_events::clock::Clock as _;
    cairn_events::clock::SystemClock.now().timestamp_millis()
}

impl Leases {
    pub(crate) fn new(id: String, timeout: Duration) -> Self {
        let about = format!("{} pid {}", host(), std::process::id());
        Leases { id, about, timeout, held: Mutex::new(HashMap::new()), beating: Mutex::new(None) }
    }

    /// A worker id of this process: host, process and a random part.
    pub(crate) fn fresh_id() -> String {
        let tail = Uuid::new_v4().simple().to_string();
        format!("{}-{}-{}", host(), std::process::id(), &tail[..8])
    }

    /// Retires the workers of this host whose process is gone (killed, or
    /// crashed): their runs are free at once instead of after the lease
    /// timeout, so a restart, or `cairn continue` after a killed `cairn
    /// run`, takes them over without waiting.
    async fn reap_local(&self, store: &Arc<dyn EventStore>) -> Result<(), RunError> {
        let me = host();
        for (id, _, about) in store.workers().await? {
            let Some((h, pid)) = about.rsplit_once(" pid ") else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if h == me && pid != std::process::id() && id != self.id && process_gone(pid) {
                tracing::info!(worker = %id, pid, "retiring a worker of this host whose process is gone");
                store.retire(&id).await?;
            }
        }
        Ok(())
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn timeout_ms(&self) -> i64 {
        i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)
    }

    /// Beats before anything is claimed, then every third of the timeout
    /// from a task that ends with the engine.
    async fn ensure_beating(self: &Arc<Self>, store: &Arc<dyn EventStore>) -> Result<(), RunError> {
        if self.beating.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        self.reap_local(store).await?;
        store.beat(&self.id, &self.about, wall_ms()).await?;
        let mut slot = self.beating.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let me: Weak<Leases> = Arc::downgrade(self);
            let store = store.clone();
            let every = self.timeout / 3;
            *slot = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(me) = me.upgrade() else { return };
                    if let Err(e) = store.beat(&me.id, &me.about, wall_ms()).await {
                        tracing::warn!(worker = %me.id, error = %e, "cannot beat: runs may be taken over");
                    }
                }
            }));
        }
        Ok(())
    }

    /// Claims `run`: `true` when this worker now holds it, `false` while
    /// another live worker does. A run it holds already costs nothing (if it
    /// was taken over meanwhile, the next fenced append says so).
    pub(crate) async fn claim(self: &Arc<Self>, store: &Arc<dyn EventStore>, run: Uuid) -> Result<bool, RunError> {
        if self.holds(run) {
            return Ok(true);
        }
        self.ensure_beating(store).await?;
        let stream = cairn_events::run_stream(run);
        match store.claim(&stream, &self.id, wall_ms() - self.timeout_ms()).await? {
            Some(token) => {
                self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(run, token);
                Ok(true)
            }
            None => {
                self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&run);
                Ok(false)
            }
        }
    }

    /// Claims the runs of the wake-up index due by `by` that no live worker
    /// holds; returns them with their due times, and whether the claim took
    /// the run over from a worker that died or retired holding it.
    pub(crate) async fn claim_due(
        self: &Arc<Self>,
        store: &Arc<dyn EventStore>,
        by: DateTime<Utc>,
        limit: i64,
    ) -> Result<Claimed, RunError> {
        self.ensure_beating(store).await?;
        let got = store.claim_due(&self.id, by.timestamp_millis(), wall_ms() - self.timeout_ms(), limit).await?;
        let mut out = Vec::with_capacity(got.len());
        let mut schedules = Vec::new();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (stream, token, due) in got {
            if let Some(name) = stream.strip_prefix("schedule-") {
                // Held until its tick is recorded, then released.
                schedules.push((name.to_owned(), DateTime::from_timestamp_millis(due).unwrap_or_default()));
                continue;
            }
            let Some(run) = stream.strip_prefix("run-").and_then(|s| Uuid::parse_str(s).ok()) else { continue };
            held.insert(run, token);
            // A first claim has token 1; a lease still there, held by
            // another, is raised.
            out.push((run, DateTime::from_timestamp_millis(due).unwrap_or_default(), token > 1));
        }
        Ok(Claimed { runs: out, schedules })
    }

    /// The fence that takes a new run's lease in the append that creates
    /// it (token 0); [`Leases::took`] once that append is recorded.
    pub(crate) async fn new_run(self: &Arc<Self>, store: &Arc<dyn EventStore>, run: Uuid) -> Result<Fence, RunError> {
        self.ensure_beating(store).await?;
        Ok(Fence { stream_id: cairn_events::run_stream(run), worker_id: self.id.clone(), token: 0 })
    }

    /// A new run's lease was taken with its first append (token 1).
    pub(crate) fn took(&self, run: Uuid) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(run, 1);
    }

    pub(crate) fn holds(&self, run: Uuid) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&run)
    }

    pub(crate) fn fence(&self, run: Uuid) -> Option<Fence> {
        let token = *self.held.lock().unwrap_or_else(|p| p.into_inner()).get(&run)?;
        Some(Fence { stream_id: cairn_events::run_stream(run), worker_id: self.id.clone(), token })
    }

    /// Forgets `run` (taken over by another worker).
    pub(crate) fn lost(&self, run: Uuid) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&run);
    }

    /// Claims a stream that is not a run's (the dispatcher's): its token
    /// while this worker holds it, `None` while another live worker does.
    pub(crate) async fn claim_stream(
        self: &Arc<Self>,
        store: &Arc<dyn EventStore>,
        stream: &str,
    ) -> Result<Option<i64>, RunError> {
        self.ensure_beating(store).await?;
        Ok(store.claim(stream, &self.id, wall_ms() - self.timeout_ms()).await?)
    }

    /// Lets a schedule's claim go (its tick is recorded).
    pub(crate) async fn release_schedule(&self, store: &Arc<dyn EventStore>, name: &str) -> Result<(), RunError> {
        store.release(&cairn_events::schedule_stream(name), &self.id).await?;
        Ok(())
    }

    pub(crate) async fn release(&self, store: &Arc<dyn EventStore>, run: Uuid) -> Result<(), RunError> {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&run).is_some() {
            store.release(&cairn_events::run_stream(run), &self.id).await?;
        }
        Ok(())
    }

    /// Stops beating and frees every run this worker holds at once.
    pub(crate) async fn retire(&self, store: &Arc<dyn EventStore>) -> Result<(), RunError> {
        if let Some(task) = self.beating.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
        store.retire(&self.id).await?;
        Ok(())
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        if let Some(task) = self.beating.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// What a worker's claim of due work took: runs (with when each was due
/// and whether it was taken over from a worker that died) and schedules
/// (with when each is due), held until let go.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Runs.
    pub runs: Vec<(Uuid, chrono::DateTime<Utc>, bool)>,
    /// Schedules, by name.
    pub schedules: Vec<(String, chrono::DateTime<Utc>)>,
}

/// The wake-up index entry for a run after a decision: due at once while
/// there is work (0: whoever drives it; a dead driver's run is due at once),
/// at the decision's wake-up when only a timer is left, none when it waits
/// for people with no deadline or has ended.
pub(crate) fn wake_for(run: Uuid, ended: bool, d: &cairn_core::decider::Decision) -> Wake {
    let due_ms = if ended {
        None
    } else if !d.append.is_empty() || !d.execute.is_empty() {
        Some(0)
    } else {
        d.wake_at.map(|t| t.timestamp_millis().max(0))
    };
    Wake { stream_id: cairn_events::run_stream(run), due_ms }
}
