//! Time, as an input. Everything in Cairn that reads the time (the store's
//! `recorded_at`, the runner's "now" for the decider, timers, retries,
//! deadlines) reads it from a [`Clock`], so tests and the simulator drive
//! time instead of sleeping on the wall clock.
//!
//! Architecture invariant: outside this module, no crate reads the wall
//! clock for anything that is recorded or decided.
#![allow(clippy::disallowed_methods)] // the one place that reads the wall clock

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

/// A source of the current time and of waits until a time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once [`Clock::now`] has reached `t`.
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// The wall clock (`Utc::now`) and tokio's timers: what runs in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let wait = (t - Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to: tests and the deterministic
/// simulator set or advance it, and every wait due by then wakes.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: tokio::sync::watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        let (moved, _) = tokio::sync::watch::channel(start);
        Arc::new(ManualClock { now: Mutex::new(start), moved })
    }

    /// Moves the clock forward by `d` (never back).
    pub fn advance(&self, d: std::time::Duration) {
        let to = self.now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        self.set(to);
    }

    /// Moves the clock to `t` if that is later than now.
    pub fn set(&self, t: DateTime<Utc>) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if t > *now {
            *now = t;
            self.moved.send_replace(t);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut rx = self.moved.subscribe();
        Box::pin(async move {
            // A closed channel (the clock dropped) never wakes: nothing moves it any more.
            let _ = rx.wait_for(|now| *now >= t).await;
        })
    }
}

/// A shared clock handle for configurations: the system clock by default.
#[derive(Clone)]
pub struct ClockHandle(pub Arc<dyn Clock>);

impl ClockHandle {
    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }

    /// Resolves once the clock has reached `t`.
    pub fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        self.0.sleep_until(t)
    }
}

impl Default for ClockHandle {
    fn default() -> Self {
        ClockHandle(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockHandle")
    }
}

impl<C: Clock> From<Arc<C>> for ClockHandle {
    fn from(c: Arc<C>) -> Self {
        ClockHandle(c)
    }
}
