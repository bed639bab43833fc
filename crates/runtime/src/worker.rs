//! The worker (`cairn serve`'s and `cairn worker`'s, and an embedding
//! program's: [`Worker::spawn`]): drives runs in the background, each by one task at a time (a
//! kick while it is being driven drives it once more afterwards), and only
//! runs this worker holds a lease on (the engine claims before it drives;
//! a run another live worker holds is left to it).
//!
//! Timers are the store's wake-up index, written with the events: every
//! second this worker claims the runs due within [`HORIZON`] that no live
//! worker holds (a timer of a run started by any process, an answer
//! recorded by an API process, a dead worker's run) and keeps them in an
//! in-memory wheel until they are due. A run with nothing left but a later
//! timer holds no task, no lease and no memory here, and is not re-read
//! while it waits; the wheel sleeps until the earliest due time, so a timer
//! fires when it is due, not on the next tick of a poll. Start-up drives
//! unfinished runs on probation and never drives a quarantined one
//! ([`crate::quarantine`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::quarantine::{self, Ledger};

use crate::Engine;
use crate::run::RunState;
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
    fn take_due(&mut self, now: DateTime<Utc>) -> Vec<(Uuid, DateTime<Utc>)> {
        let due: Vec<(Uuid, DateTime<Utc>)> =
            self.by_time.iter().take_while(|(at, _)| *at <= now).map(|(at, run)| (*run, *at)).collect();
        for (run, _) in &due {
            self.remove(*run);
        }
        due
    }
}

/// How often the timer loop looks for runs released from quarantine.
const RELEASES: Duration = Duration::from_secs(2);

/// How often this worker claims due runs from the wake-up index.
const POLL: Duration = Duration::from_secs(1);

/// How often the worker looks for task claims whose heartbeat lapsed.
const REAP: Duration = Duration::from_millis(500);

/// How far ahead a poll claims runs (more than [`POLL`], so a timer is in
/// the wheel before it is due); a run waiting longer is not held.
const HORIZON: Duration = Duration::from_millis(1500);

/// Soonest a poll follows another when commits may have made runs due.
const EAGER: Duration = Duration::from_millis(50);

/// Most runs one poll claims (it polls again at once when it got as many).
const POLL_BATCH: i64 = 500;

/// The background driver.
pub struct Driver {
    engine: Arc<Engine>,
    /// Off under `cairn serve --no-worker`: nothing is driven here, the
    /// wake-up index hands runs to the workers.
    enabled: bool,
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
    /// One takeover at a time (start-up's and the polls'), so a run is put
    /// on probation once.
    taking_over: tokio::sync::Mutex<()>,
    /// Who waits for a drive here to stop, by run: told whether the drive
    /// ended the run.
    ends: Mutex<HashMap<Uuid, Vec<tokio::sync::oneshot::Sender<bool>>>>,
    /// Runs whose next step runs a task handler this process does not
    /// register (an embedding program's), until when: one claimed meanwhile
    /// is let go at once, for the process that registers it.
    elsewhere: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

/// How long a run whose handlers are elsewhere is let go untried.
const ELSEWHERE: Duration = Duration::from_secs(60);

/// Whether a drive of a run here ended it, once the drive stops.
pub type DriveEnd = tokio::sync::oneshot::Receiver<bool>;

impl Driver {
    /// A driver for `engine`.
    pub fn new(engine: Arc<Engine>, enabled: bool) -> Arc<Driver> {
        Arc::new(Driver {
            engine,
            enabled,
            active: Mutex::new(HashMap::new()),
            waits: Mutex::new(Waits::default()),
            quarantined: Mutex::new(HashSet::new()),
            ledger_version: AtomicU64::new(0),
            rearm: tokio::sync::Notify::new(),
            taking_over: tokio::sync::Mutex::new(()),
            ends: Mutex::new(HashMap::new()),
            elsewhere: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this process drives runs (not `cairn serve --no-worker`).
    pub fn drives(&self) -> bool {
        self.enabled
    }

    /// How many runs are quarantined.
    pub fn quarantined(&self) -> usize {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn is_quarantined(&self, run: Uuid) -> bool {
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).contains(&run)
    }

    /// Notes that `run` is let go untried until `until` (and forgets the
    /// runs whose time is up).
    fn leave(&self, run: Uuid, until: DateTime<Utc>) {
        let now = self.engine.clock().now();
        let mut e = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|_, t| *t > now);
        e.insert(run, until);
    }

    fn is_elsewhere(&self, run: Uuid) -> bool {
        let mut e = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
        match e.get(&run) {
            Some(until) if *until > self.engine.clock().now() => true,
            Some(_) => {
                e.remove(&run);
                false
            }
            None => false,
        }
    }

    fn is_active(&self, run: Uuid) -> bool {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&run)
    }

    /// Drives `run` (and, once it ends, the parents waiting for it) now,
    /// unless it is quarantined.
    pub fn kick(self: &Arc<Self>, run: Uuid) {
        self.drive(run, None, None);
    }

    /// Drives a run this worker just started, from the state its start
    /// recorded (no read), and, with `watch`, tells whether the drive ended
    /// it, so a request that waits for the run needs no log. `None` when this process
    /// does not drive the run (no worker here, or it is quarantined).
    pub fn kick_started(self: &Arc<Self>, run: Uuid, started: RunState, watch: bool) -> Option<DriveEnd> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = watch.then_some(tx);
        (self.drive(run, tx, Some(started)) && watch).then_some(rx)
    }

    /// Tells those waiting for a drive of `run` here how it stopped.
    fn tell(&self, run: Uuid, ended: bool) {
        let Some(list) = self.ends.lock().unwrap_or_else(|p| p.into_inner()).remove(&run) else { return };
        for tx in list {
            let _ = tx.send(ended);
        }
    }

    fn drive(
        self: &Arc<Self>,
        run: Uuid,
        watch: Option<tokio::sync::oneshot::Sender<bool>>,
        mut seed: Option<RunState>,
    ) -> bool {
        if !self.enabled {
            return false;
        }
        if self.is_quarantined(run) {
            tracing::warn!(run_id = %run, "not driving a quarantined run (cairn quarantine release)");
            return false;
        }
        if self.is_elsewhere(run) {
            // Its handlers are in another process: let the lease go at once.
            let engine = self.engine.clone();
            tokio::spawn(async move {
                let _ = engine.release(run).await;
            });
            return false;
        }
        {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = watch {
                // Under the active lock: the drive tells after its last pass.
                self.ends.lock().unwrap_or_else(|p| p.into_inner()).entry(run).or_default().push(tx);
            }
            if let Some(again) = a.get_mut(&run) {
                *again = true;
                return true;
            }
            a.insert(run, false);
        }
        self.waits.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let mut ignore = |_: &cairn_events::Event| {};
                let mut ended = false;
                let driven = match seed.take() {
                    // A fresh top-level run: no parent to drive after it.
                    Some(s) => me.engine.drive_until_idle_from(run, s, &mut ignore).await.map(|s| (run, s)),
                    None => me.engine.drive_after_answer_until_idle(run, &mut ignore).await,
                };
                match driven {
                    Ok((top, state)) => {
                        if !state.status.is_terminal() && me.engine.holds(top) {
                            me.park(top).await;
                        }
                        ended = top == run && state.status.is_terminal();
                    }
                    Err(crate::RunError::Store(e)) if e.kind() == cairn_events::StoreErrorKind::Fenced => {
                        // Taken over by another worker (this one was cut
                        // off for longer than the lease timeout): its run now.
                        tracing::warn!(run_id = %run, "the run was taken over by another worker");
                    }
                    Err(e @ crate::RunError::HandlersElsewhere { .. }) => {
                        // Not a failure: the run is due for the process that
                        // has its handlers; its wake-up stays due for it.
                        tracing::info!(run_id = %run, error = %e, "leaving the run to the process with its task handlers");
                        let until = me.engine.clock().now() + chrono::Duration::from_std(ELSEWHERE).unwrap_or_default();
                        me.leave(run, until);
                        let _ = me.engine.release(run).await;
                    }
                    Err(e) => {
                        tracing::error!(run_id = %run, error = %e, "driving the run failed; trying again in 30 s");
                        let again = me.engine.clock().now() + chrono::Duration::seconds(30);
                        let stream = cairn_events::run_stream(run);
                        if let Err(e) = me.engine.store().set_wake(&stream, Some(again.timestamp_millis())).await {
                            tracing::error!(run_id = %run, error = %e, "cannot schedule another try");
                        }
                        let _ = me.engine.release(run).await;
                    }
                }
                let mut a = me.active.lock().unwrap_or_else(|p| p.into_inner());
                match a.get_mut(&run) {
                    Some(again) if *again => *again = false,
                    _ => {
                        a.remove(&run);
                        me.tell(run, ended);
                        break;
                    }
                }
            }
        });
        true
    }

    /// A run this worker holds and that waits: kept in the wheel when its
    /// next timer is within [`HORIZON`], given up otherwise (the wake-up
    /// index brings it back to whichever worker polls when it is due).
    async fn park(self: &Arc<Self>, run: Uuid) {
        let now = self.engine.clock().now();
        match self.engine.wake_at(run).await {
            Ok(Some(at)) if at <= now + HORIZON => {
                self.waits.lock().unwrap_or_else(|p| p.into_inner()).insert(run, at);
                self.rearm.notify_one();
                return;
            }
            Ok(Some(at)) => {
                // A run recorded before the index existed has no entry yet.
                let stream = cairn_events::run_stream(run);
                if let Err(e) = self.engine.store().wake_if_unset(&stream, at.timestamp_millis()).await {
                    tracing::warn!(run_id = %run, error = %e, "cannot put the run in the wake-up index");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(run_id = %run, error = %e, "cannot tell when the run wakes"),
        }
        if let Err(e) = self.engine.release(run).await {
            tracing::warn!(run_id = %run, error = %e, "cannot give up the lease (it expires)");
        }
    }

    /// Fails the queue tasks whose worker stopped heartbeating, and drives
    /// their runs (the retry policy offers the task again).
    async fn reap(self: &Arc<Self>) {
        match self.engine.reap_tasks().await {
            Ok(runs) => {
                for run in runs {
                    tracing::info!(run_id = %run, "a task worker stopped heartbeating: its attempt failed");
                    self.kick(run);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for lapsed task claims"),
        }
    }

    /// Claims the runs due within [`HORIZON`] that no live worker holds:
    /// those due now are driven, the others wait in the wheel.
    async fn poll(self: &Arc<Self>) {
        loop {
            let now = self.engine.clock().now();
            let due = match self.engine.claim_due(now + HORIZON, POLL_BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the wake-up index");
                    return;
                }
            };
            let full = i64::try_from(due.runs.len() + due.schedules.len()).unwrap_or(i64::MAX) >= POLL_BATCH;
            for (name, at) in due.schedules {
                self.tick_schedule(name, at);
            }
            // Taken over: a worker held it and is gone (on probation here).
            let mut orphans = Vec::new();
            for (run, at, taken_over) in due.runs {
                if self.is_quarantined(run) {
                    self.set_aside(run).await;
                } else if taken_over {
                    if !self.is_active(run) {
                        orphans.push(run);
                    }
                } else if at <= now {
                    crate::metrics::woke(at, now);
                    self.kick(run);
                } else if !self.is_active(run) {
                    self.waits.lock().unwrap_or_else(|p| p.into_inner()).insert(run, at);
                    self.rearm.notify_one();
                }
            }
            if !orphans.is_empty() {
                crate::metrics::took_over(orphans.len());
                tracing::info!(runs = orphans.len(), "taking over the runs of a worker that is gone");
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.take_over(orphans).await {
                        tracing::error!(error = %e, "cannot take the runs over");
                    }
                });
            }
            if !full {
                return;
            }
        }
    }

    /// A schedule this worker claimed: at its due time, its tick (the runs
    /// of its firings started, the firings recorded with its next due
    /// time), then the claim let go. Early or late, a tick does what is
    /// due at the time it runs.
    fn tick_schedule(self: &Arc<Self>, name: String, at: DateTime<Utc>) {
        let me = self.clone();
        tokio::spawn(async move {
            let clock = me.engine.clock().clone();
            let now = clock.now();
            if at > now {
                clock.sleep_until(at).await;
            }
            crate::metrics::woke(at, clock.now());
            if let Err(e) = me.engine.tick_schedule(&name).await {
                tracing::error!(schedule = %name, error = %e, "cannot fire the schedule; it is tried again at the next poll");
            }
            if let Err(e) = me.engine.release_schedule(&name).await {
                tracing::warn!(schedule = %name, error = %e, "cannot let the schedule's claim go; it lapses with the lease timeout");
            }
        });
    }

    /// Drives every run that started and has not ended, that no live
    /// worker holds and that the wake-up index does not hand out anyway
    /// (a run waiting for people, one recorded before the index existed),
    /// on probation (see [`Driver::take_over`]).
    pub async fn resume_unfinished(self: &Arc<Self>) {
        if !self.enabled {
            return;
        }
        let listed = async {
            let indexed: HashSet<String> = self.engine.store().indexed().await?.into_iter().collect();
            let runs = self.engine.unfinished_runs().await?;
            Ok::<_, crate::RunError>(
                runs.into_iter().filter(|r| !indexed.contains(&cairn_events::run_stream(*r))).collect::<Vec<_>>(),
            )
        };
        let runs = match listed.await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::error!(error = %e, "cannot list unfinished runs");
                return;
            }
        };
        if let Err(e) = self.take_over(runs).await {
            tracing::error!(error = %e, "cannot continue unfinished runs");
        }
    }

    /// A quarantined run this worker claimed: out of the wake-up index
    /// (releasing it from quarantine puts it back) and let go.
    async fn set_aside(&self, run: Uuid) {
        let stream = cairn_events::run_stream(run);
        if let Err(e) = self.engine.store().set_wake(&stream, None).await {
            tracing::warn!(run_id = %run, error = %e, "cannot take a quarantined run out of the wake-up index");
        }
        let _ = self.engine.release(run).await;
    }

    /// Drives runs a process may have died driving (at start-up, every
    /// unfinished run; later, the runs of a worker that stopped beating),
    /// each claimed first (one another live worker holds is left to it), on
    /// probation: first each suspect alone, quarantining one a process
    /// died driving [`quarantine::DEATHS`] times in a row, then the rest
    /// together.
    async fn take_over(self: &Arc<Self>, runs: Vec<Uuid>) -> Result<(), crate::RunError> {
        let _one = self.taking_over.lock().await;
        let store = self.engine.store().clone();
        let ledger = Ledger::read(&store).await?;
        self.ledger_version.store(ledger.version, Ordering::Relaxed);
        self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).extend(ledger.quarantined.keys().copied());
        let mut rest = Vec::new();
        let mut held = 0usize;
        for run in runs {
            if ledger.is_quarantined(run) {
                held += 1;
                if self.engine.holds(run) {
                    self.set_aside(run).await;
                }
                continue;
            }
            // Already driven here (taken over by the other path), or
            // another live worker's.
            if self.is_active(run) || !self.engine.claim(run).await? {
                continue;
            }
            match ledger.suspects.get(&run) {
                Some(&deaths) if deaths >= quarantine::DEATHS => {
                    let q = quarantine::quarantine(&store, run, deaths).await?;
                    tracing::error!(run_id = %run, deaths, reason = %q.reason, "run quarantined");
                    self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).insert(run);
                    self.set_aside(run).await;
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
    /// the earliest due time (or a new wait, or the next poll of the wake-up
    /// index, or two seconds to look for runs released from quarantine).
    /// Then retires the worker: the runs it holds are free for others at once.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.enabled {
            let _ = stop.changed().await;
            return;
        }
        self.run_until(&mut stop).await;
        if let Err(e) = self.engine.retire().await {
            tracing::warn!(error = %e, "cannot retire this worker: its runs are taken over after the lease timeout");
        }
    }

    async fn run_until(self: &Arc<Self>, stop: &mut tokio::sync::watch::Receiver<bool>) {
        // Quarantined runs are known before anything is claimed.
        match Ledger::read(self.engine.store()).await {
            Ok(ledger) => {
                self.ledger_version.store(ledger.version, Ordering::Relaxed);
                self.quarantined.lock().unwrap_or_else(|p| p.into_inner()).extend(ledger.quarantined.keys().copied());
            }
            Err(e) => tracing::error!(error = %e, "cannot read the quarantine"),
        }
        let clock = self.engine.clock();
        let mut releases = tokio::time::Instant::now();
        let mut reaped = tokio::time::Instant::now();
        let mut polled = tokio::time::Instant::now() - POLL;
        // Commits (this process's; on PostgreSQL every process's, by
        // NOTIFY) may have made runs due: poll soon, at most every EAGER.
        let mut commits = self.engine.store().wakeups();
        let mut soon = false;
        let mut open = true;
        loop {
            if releases.elapsed() >= RELEASES {
                releases = tokio::time::Instant::now();
                self.follow_releases().await;
            }
            if reaped.elapsed() >= REAP {
                reaped = tokio::time::Instant::now();
                self.reap().await;
            }
            if polled.elapsed() >= POLL || (soon && polled.elapsed() >= EAGER) {
                polled = tokio::time::Instant::now();
                soon = false;
                self.poll().await;
            }
            let next_poll = if soon { polled + EAGER } else { polled + POLL };
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
                r = commits.changed(), if !soon && open => {
                    soon = r.is_ok();
                    open = r.is_ok();
                    continue;
                }
                () = tokio::time::sleep_until(next_poll) => continue,
            }
            let now = clock.now();
            let due = self.waits.lock().unwrap_or_else(|p| p.into_inner()).take_due(now);
            for (id, at) in due {
                crate::metrics::woke(at, now);
                self.kick(id);
            }
        }
    }
}

/// A worker running in the background of an embedding program: the same
/// driver `cairn serve` runs, so the program's runs get their timers,
/// wake-ups (answers recorded by other processes), leases and takeovers
/// of dead workers' runs without driving anything itself.
pub struct Worker {
    driver: Arc<Driver>,
    stop: tokio::sync::watch::Sender<bool>,
    timers: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Starts the worker on `engine` (give the engine a worker id and
    /// lease with [`Engine::with_worker`] when several processes share the
    /// database): it continues the unfinished runs and drives every run
    /// that comes due. Call inside a Tokio runtime.
    pub fn spawn(engine: Arc<Engine>) -> Worker {
        let driver = Driver::new(engine, true);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let timers = tokio::spawn(driver.clone().run(stop_rx));
        let d = driver.clone();
        tokio::spawn(async move { d.resume_unfinished().await });
        Worker { driver, stop, timers }
    }

    /// Drives a run now (one just started, or answered in this process).
    pub fn kick(&self, run: Uuid) {
        self.driver.kick(run);
    }

    /// The driver, for a host that also serves requests.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// Stops taking runs and retires this worker (its leases are given up,
    /// so another worker takes its runs at once); what was recorded stands.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.timers.await;
    }
}
