//! Drives runs in the background: each run by one task at a time (a kick
//! while it is being driven drives it once more afterwards), and a timer
//! loop that wakes runs whose wait, deadline, reminder or retry falls due.
//! A run with nothing left but a timer holds no task and is not re-read
//! while it waits: the loop sleeps until the earliest due time (re-armed
//! when an earlier one comes), so a timer fires when it is due, not on the
//! next tick of a poll. Start-up drives unfinished runs on probation and
//! never drives a quarantined one (crate::quarantine).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::quarantine::{self, Ledger};

use cairn_runtime::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Parked runs by when they next have something to do, indexed both ways:
/// the earliest is found, and the due ones taken, without a scan of all.
#[derive(Default)]
struct Waits {
    by_run: HashMap<Uuid, DateTime<Utc>>,
    by_time: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Waits {
    fn insert(&mut self, run: Uuid, at: DateTime<Utc>) {
        if let Some(old) = self.by_run.insert(run, at) {
            self.by_time.remove(&(old, run));
        }
        self.by_time.insert((at, run));
    }

    fn remove(&mut self, run: Uuid) {
        if let Some(old) = self.by_run.remove(&run) {
            self.by_time.remove(&(old, run));
        }
    }

    fn next(&self) -> Option<DateTime<Utc>> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes the runs due by `now`, earliest first (a drive puts a run back
    /// with its next due time).
    fn take_due(&mut self, now: DateTime<Utc>) -> Vec<Uuid> {
        let due: Vec<Uuid> = self.by_time.iter().take_while(|(at, _)| *at <= now).map(|(_, run)| *run).collect();
        for run in &due {
            self.remove(*run);
        }
        due
    }
}

/// How often the timer loop looks for runs released from quarantine.
const RELEASES: Duration = Duration::from_secs(2);

/// The background driver.
pub struct Driver {
    engine: Arc<Engine>,
    /// Runs being driven → whether to drive once more when done.
    active: Mutex<HashMap<Uuid, bool>>,
    /// Parked runs and when they next have something to do.
    waits: Mutex<Waits>,
    /// Quarantined runs: never driven.
    quarantined: Mutex<HashSet<Uuid>>,
    /// The version of the `operations` stream the quarantine was read at.
    ledger_version: AtomicU64,
    /// Told when a wait is added, so the timer loop re-arms.
    rearm: tokio::sync::Notify,
}

impl Driver {
    /// A driver for `engine`.
    pub fn new(engine: Arc<Engine>) -> Arc<Driver> {
        Arc::new(Driver {
            engine,
            active: Mutex::new(HashMap::new()),
            waits: Mutex::new(Waits::default()),
            quarantined: Mutex::new(HashSet::new()),
            ledger_version: AtomicU64::new(0),
            rearm: tokio::sync::Notify::new(),
        })
    }

    /// How many runs are quarantined.
    pub fn quarantined(&self) -> usize {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn is_quarantined(&self, run: Uuid) -> bool {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).contains(&run)
    }

    fn is_active(&self, run: Uuid) -> bool {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&run)
    }

    /// Drives `run` (and, once it ends, the parents waiting for it) now,
    /// unless it is quarantined.
    pub fn kick(self: &Arc<Self>, run: Uuid) {
        if self.is_quarantined(run) {
            tracing::warn!(run_id = %run, "not driving a quarantined run (cairn quarantine release)");
            return;
        }
        {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = a.get_mut(&run) {
                *again = true;
                return;
            }
            a.insert(run, false);
        }
        self.waits.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let mut ignore = |_: &cairn_events::Event| {};
                match me.engine.drive_after_answer_until_idle(run, &mut ignore).await {
                    Ok((_, state)) => {
                        if !state.status.is_terminal() {
                            match me.engine.wake_at(run).await {
                                Ok(Some(at)) => {
                                    me.waits.lock().unwrap_or_else(|p| p.into_inner()).insert(run, at);
                                    me.rearm.notify_one();
                                }
                                Ok(None) => {}
                                Err(e) => tracing::error!(run_id = %run, error = %e, "cannot tell when the run wakes"),
                            }
                        }
                    }
                    Err(e) => tracing::error!(run_id = %run, error = %e, "driving the run failed"),
                }
                let mut a = me.active.lock().unwrap_or_else(|p| p.into_inner());
                match a.get_mut(&run) {
                    Some(again) if *again => *again = false,
                    _ => {
                        a.remove(&run);
                        break;
                    }
                }
            }
        });
    }

    /// Drives every run that started and has not ended, on probation:
    /// first each suspect alone (a run a dead process was driving),
    /// quarantining one the process died driving [`quarantine::DEATHS`]
    /// times in a row, then the rest together.
    pub async fn resume_unfinished(self: &Arc<Self>) {
        if let Err(e) = self.try_resume_unfinished().await {
            tracing::error!(error = %e, "cannot continue unfinished runs");
        }
    }

    async fn try_resume_unfinished(self: &Arc<Self>) -> anyhow::Result<()> {
        let store = self.engine.store().clone();
        let ledger = Ledger::read(&store).await?;
        self.ledger_version.store(ledger.version, Ordering::Relaxed);
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).extend(ledger.quarantined.keys().copied());
        let runs = self.engine.unfinished_runs().await?;
        let mut rest = Vec::new();
        let mut held = 0usize;
        for run in runs {
            if ledger.is_quarantined(run) {
                held += 1;
                continue;
            }
            match ledger.suspects.get(&run) {
                Some(&deaths) if deaths >= quarantine::DEATHS => {
                    let q = quarantine::quarantine(&store, run, deaths).await?;
                    tracing::error!(run_id = %run, deaths, reason = %q.reason, "run quarantined");
                    self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).insert(run);
                    held += 1;
                }
                Some(&deaths) => {
                    // Alone, so that dying again names this run.
                    tracing::warn!(run_id = %run, deaths, "a process died driving this run: driving it alone first");
                    quarantine::on_probation(&store, &[run], true).await?;
                    self.kick(run);
                    let t = tokio::time::Instant::now();
                    while self.is_active(run) && t.elapsed() < quarantine::PROBATION {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    quarantine::passed(&store, &[run]).await?;
                }
                None => rest.push(run),
            }
        }
        if held > 0 {
            tracing::warn!(runs = held, "quarantined runs are not driven (cairn quarantine)");
        }
        if rest.is_empty() {
            return Ok(());
        }
        tracing::info!(runs = rest.len(), "continuing unfinished runs");
        quarantine::on_probation(&store, &rest, false).await?;
        for r in &rest {
            self.kick(*r);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            while t.elapsed() < quarantine::PROBATION && rest.iter().any(|r| me.is_active(*r)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Err(e) = quarantine::passed(&me.engine.store().clone(), &rest).await {
                tracing::error!(error = %e, "cannot record that runs passed probation");
            }
        });
        Ok(())
    }

    /// Drives runs an operator released since the quarantine was read.
    async fn follow_releases(self: &Arc<Self>) {
        let store = self.engine.store().clone();
        let Ok(version) = store.stream_version(quarantine::STREAM).await else { return };
        if version == self.ledger_version.load(Ordering::Relaxed) {
            return;
        }
        let Ok(ledger) = Ledger::read(&store).await else { return };
        self.ledger_version.store(ledger.version, Ordering::Relaxed);
        let released: Vec<Uuid> = {
            let mut q = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<Uuid> = q.iter().filter(|r| !ledger.is_quarantined(**r)).copied().collect();
            for r in &gone {
                q.remove(r);
            }
            gone
        };
        for r in released {
            tracing::info!(run_id = %r, "released from quarantine: driving it");
            self.kick(r);
        }
    }

    /// Wakes parked runs as their waits fall due, until `stop`: sleeps until
    /// the earliest due time (or a new wait, or two seconds to look for runs
    /// released from quarantine).
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let clock = self.engine.clock();
        let mut releases = tokio::time::Instant::now();
        loop {
            if releases.elapsed() >= RELEASES {
                releases = tokio::time::Instant::now();
                self.follow_releases().await;
            }
            let next = self.waits.lock().unwrap_or_else(|p| p.into_inner()).next();
            let due = async {
                match next {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = due => {}
                () = self.rearm.notified() => continue,
                () = tokio::time::sleep(RELEASES) => continue,
            }
            let now = clock.now();
            let due = self.waits.lock().unwrap_or_else(|p| p.into_inner()).take_due(now);
            for id in due {
                self.kick(id);
            }
        }
    }
}
