//! Drives runs in the background: each run by one task at a time (a kick
//! while it is being driven drives it once more afterwards), and a timer
//! loop that wakes runs whose deadline, reminder or retry falls due while
//! they wait for people.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_engine::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The background driver.
pub struct Driver {
    engine: Arc<Engine>,
    /// Runs being driven → whether to drive once more when done.
    active: Mutex<HashMap<Uuid, bool>>,
    /// Parked runs and when they next have something to do.
    waits: Mutex<BTreeMap<Uuid, DateTime<Utc>>>,
}

impl Driver {
    /// A driver for `engine`.
    pub fn new(engine: Arc<Engine>) -> Arc<Driver> {
        Arc::new(Driver { engine, active: Mutex::new(HashMap::new()), waits: Mutex::new(BTreeMap::new()) })
    }

    /// Drives `run` (and, once it ends, the parents waiting for it) now.
    pub fn kick(self: &Arc<Self>, run: Uuid) {
        {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = a.get_mut(&run) {
                *again = true;
                return;
            }
            a.insert(run, false);
        }
        self.waits.lock().unwrap_or_else(|p| p.into_inner()).remove(&run);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let mut ignore = |_: &cairn_events::Event| {};
                match me.engine.drive_after_answer(run, &mut ignore).await {
                    Ok((_, state)) => {
                        if !state.status.is_terminal() {
                            match me.engine.wake_at(run).await {
                                Ok(Some(at)) => {
                                    me.waits.lock().unwrap_or_else(|p| p.into_inner()).insert(run, at);
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

    /// Drives every run that started and has not ended.
    pub async fn resume_unfinished(self: &Arc<Self>) {
        match self.engine.unfinished_runs().await {
            Ok(runs) => {
                if !runs.is_empty() {
                    tracing::info!(runs = runs.len(), "continuing unfinished runs");
                }
                for r in runs {
                    self.kick(r);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list unfinished runs"),
        }
    }

    /// Wakes parked runs as their waits fall due, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let now = self.engine.clock().now();
            let due: Vec<Uuid> = {
                let w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
                w.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect()
            };
            for id in due {
                self.kick(id);
            }
        }
    }
}
