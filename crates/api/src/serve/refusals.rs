//! Refused requests: each is recorded as `AccessDenied` in the `refusals`
//! stream (never a run's), and failed API-key checks are limited per client
//! address so a key cannot be guessed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_events::{AccessDenied, EventStore, ExpectedVersion, Metadata, NewEvent};

/// The stream refusals go to.
pub const STREAM: &str = "refusals";

/// The window failed key checks are counted over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The problem codes that refuse a request for who made it.
pub fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "unauthenticated"
            | "bad-key"
            | "forbidden"
            | "not-allowed"
            | "bad-token"
            | "invalid-submission"
            | "too-many-failures"
            | "bad-signature"
    )
}

/// Failed key checks of one address in the current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    /// Whether the refusal for being over the limit was recorded in this window.
    reported: bool,
}

/// Failed API-key checks by client address.
#[derive(Debug)]
pub struct KeyFailures {
    max: u32,
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

/// A client over its limit.
#[derive(Debug, Clone, Copy)]
pub struct OverLimit {
    /// Seconds until the window ends.
    pub retry_after: u64,
    /// Whether this is the first refusal for it in the window (recorded;
    /// later ones are not, so the log cannot be flooded).
    pub first: bool,
    /// The failures counted.
    pub count: u32,
}

impl KeyFailures {
    /// At most `max` failed checks per address per [`WINDOW`] (0: no limit).
    pub fn new(max: u32) -> Self {
        KeyFailures { max, by_address: Mutex::new(HashMap::new()) }
    }

    /// `Some` when `ip` may not try a key now.
    pub fn over_limit(&self, ip: IpAddr) -> Option<OverLimit> {
        if self.max == 0 {
            return None;
        }
        let mut m = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let f = m.get_mut(&ip)?;
        if f.since.elapsed() >= WINDOW {
            m.remove(&ip);
            return None;
        }
        if f.count < self.max {
            return None;
        }
        let first = !f.reported;
        f.reported = true;
        let retry_after = WINDOW.saturating_sub(f.since.elapsed()).as_secs().max(1);
        Some(OverLimit { retry_after, first, count: f.count })
    }

    /// Counts a failed check from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut m = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, f| f.since.elapsed() < WINDOW);
        }
        let f = m.entry(ip).or_insert(Failures { since: Instant::now(), count: 0, reported: false });
        if f.since.elapsed() >= WINDOW {
            *f = Failures { since: Instant::now(), count: 0, reported: false };
        }
        f.count += 1;
    }
}

/// Who attempted what, put on the response by the authorizer so the
/// request's frame can record a refusal.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The identity of the key, or `unknown`.
    pub actor: String,
    /// The public id of the key presented, if it had one's shape.
    pub key_id: Option<String>,
    /// `METHOD /route`.
    pub action: String,
}

/// The public id in a presented key (`cairn_<id>_<secret>`), never its secret.
pub fn key_id_of(presented: &str) -> Option<String> {
    let id = presented.strip_prefix("cairn_")?.split('_').next()?;
    (!id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())).then(|| id.to_owned())
}

/// The run and step a request path names (`/runs/{id}/steps/{step}/…`).
pub fn run_and_step(path: &str) -> (Option<uuid::Uuid>, Option<String>) {
    let mut parts = path.trim_start_matches('/').split('/');
    if parts.next() != Some("runs") {
        return (None, None);
    }
    let run = parts.next().and_then(|r| uuid::Uuid::parse_str(r).ok());
    let step = match (parts.next(), parts.next()) {
        (Some("steps"), Some(s)) if !s.is_empty() => Some(s.to_owned()),
        _ => None,
    };
    (run, step)
}

/// Records a refusal; a failure to record is logged, never turned into
/// another answer.
pub async fn record(store: &Arc<dyn EventStore>, d: AccessDenied) {
    tracing::warn!(actor = %d.actor, action = %d.action, reason = %d.reason, origin = %d.origin, "request refused");
    let by = d.actor.clone();
    let e = cairn_events::Event::AccessDenied(d);
    if let Err(err) = store.append(STREAM, ExpectedVersion::Any, vec![NewEvent::from_event(&e, Metadata::by(by))]).await
    {
        tracing::error!(error = %err, "cannot record a refused request");
    }
}
