//! Lifecycle subscriptions and their deliveries. An operator subscribes an
//! endpoint (or a workflow to start) to lifecycle events (`run.failed`,
//! `step.failed`, `approval.requested`, …) across workflows; a dispatcher
//! follows the log and delivers each matching event at least once, signed,
//! with retries and backoff, recording every attempt in the `deliveries`
//! stream (the delivery log), and sets a delivery aside as dead when its
//! attempts run out, until an operator retries it.
//!
//! The dispatcher runs beside the runs, never in their path: a run's
//! commits do not wait for it, and a delivery that fails changes nothing
//! about the run it is about. One dispatcher works at a time across all
//! processes (the holder of the `deliveries` lease; its appends are fenced
//! by it, so a stale one cannot record), any process with a worker can be
//! it, and a crash loses nothing: it goes on from the last position it
//! recorded, and an event attempted already is not attempted again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{
    DELIVERIES_STREAM, DeliveriesScanned, DeliveryAttempted, DeliveryRequeued, Event, ExpectedVersion, Fence, Metadata,
    NewEvent, RecordedEvent, SUBSCRIPTIONS_STREAM, StreamAppend, SubscriptionDefined, SubscriptionDeleted,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Engine, RunError, Start};

/// The lifecycle events a subscription may want.
pub const LIFECYCLE: [&str; 7] = cairn_core::model::LIFECYCLE_EVENTS;

/// Default attempts before a delivery is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Longest an endpoint may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Events read per pass.
const BATCH: usize = 500;

/// Soonest a pass follows the one before (commits wake the dispatcher).
const EVERY: Duration = Duration::from_millis(250);

/// How long a claim of the `deliveries` lease is trusted before it is made
/// again (a takeover meanwhile makes the fenced append fail, not record).
const RECLAIM: Duration = Duration::from_secs(3);

/// How often the scanned position is recorded while events go by.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The lifecycle name of an event, if it has one.
pub fn lifecycle(e: &Event) -> Option<&'static str> {
    Some(match e {
        Event::RunStarted(_) => "run.started",
        Event::RunCompleted(_) => "run.completed",
        Event::RunFailed(_) => "run.failed",
        Event::RunCancelled(_) => "run.cancelled",
        Event::StepFailed(_) => "step.failed",
        Event::ApprovalRequested(_) => "approval.requested",
        Event::ApprovalExpired(_) => "approval.expired",
        _ => return None,
    })
}

/// What defining a subscription asks for.
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    /// Its name.
    pub name: String,
    /// The lifecycle events it wants (`*`: all).
    pub events: Vec<String>,
    /// Only runs of these workflows (empty: all).
    pub workflows: Vec<String>,
    /// Where to POST (with `secret`).
    pub url: Option<String>,
    /// The signing secret's name.
    pub secret: Option<String>,
    /// Or a workflow to start.
    pub start: Option<String>,
    /// Attempts before dead (default 8).
    pub max_attempts: Option<u32>,
}

/// A delivery as the log has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `<subscription>@<position>`.
    pub id: String,
    /// The subscription.
    pub subscription: String,
    /// The event's position.
    pub position: u64,
    /// Its lifecycle name.
    pub event: String,
    /// Its run.
    pub run_id: Option<Uuid>,
    /// Attempts made.
    pub attempts: u32,
    /// `pending` (tried again at `next_at`), `delivered` or `dead`.
    pub status: String,
    /// The last answer's status.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: Option<String>,
    /// When it is tried next (pending).
    pub next_at: Option<DateTime<Utc>>,
    /// When it was last attempted.
    pub updated_at: String,
}

/// The deliveries stream folded.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Every delivery by id.
    pub deliveries: BTreeMap<String, Delivery>,
    /// The last position the dispatcher recorded as looked at.
    pub scanned: u64,
    /// The stream's version.
    pub version: u64,
}

impl Ledger {
    fn apply(&mut self, r: &RecordedEvent) -> Result<(), RunError> {
        self.version = r.stream_version;
        match Event::decode(r)? {
            Event::DeliveryAttempted(a) => {
                let d = self.deliveries.entry(a.id.clone()).or_insert_with(|| Delivery {
                    id: a.id.clone(),
                    subscription: a.subscription.clone(),
                    position: a.position,
                    event: a.event.clone(),
                    run_id: a.run_id,
                    attempts: 0,
                    status: "pending".into(),
                    last_status: None,
                    last_error: None,
                    next_at: None,
                    updated_at: String::new(),
                });
                d.attempts = d.attempts.max(a.attempt);
                d.status = match a.outcome.as_str() {
                    "failed" => "pending".into(),
                    other => other.to_owned(),
                };
                d.last_status = a.status;
                d.last_error = a.error;
                d.next_at = a.next_at;
                d.updated_at = r.recorded_at.clone();
            }
            Event::DeliveryRequeued(q) => {
                if let Some(d) = self.deliveries.get_mut(&q.id) {
                    d.status = "pending".into();
                    d.attempts = 0;
                    d.next_at = None;
                }
            }
            Event::DeliveriesScanned(s) => self.scanned = self.scanned.max(s.position),
            _ => {}
        }
        Ok(())
    }
}

fn refused(code: &'static str, message: impl Into<String>) -> RunError {
    RunError::Refused { code, message: message.into() }
}

/// The backoff before attempt `n + 1` (1 s, 2 s, 4 s, … up to 5 minutes).
fn backoff(attempt: u32) -> Duration {
    let secs = 1u64.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

impl Engine {
    /// Every live subscription, by name.
    pub async fn subscriptions(&self) -> Result<BTreeMap<String, SubscriptionDefined>, RunError> {
        let mut out = BTreeMap::new();
        for r in self.store.read_stream(SUBSCRIPTIONS_STREAM, 1).await? {
            match Event::decode(&r)? {
                Event::SubscriptionDefined(d) => {
                    out.insert(d.name.clone(), d);
                }
                Event::SubscriptionDeleted(d) => {
                    out.remove(&d.name);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Defines a subscription, or redefines one (events from now on follow
    /// it). Checked first: the events, the URL and its secret's presence
    /// here, or the workflow to start; nothing is recorded when one is wrong.
    pub async fn define_subscription(&self, r: SubscriptionRequest, by: &str) -> Result<SubscriptionDefined, RunError> {
        let bad = |m: String| refused("invalid-subscription", m);
        crate::error::check_name("subscription", &r.name, "invalid-subscription")?;
        if r.events.is_empty() {
            return Err(bad(format!("name the events it wants: {} (or `*`)", LIFECYCLE.join(", "))));
        }
        for e in &r.events {
            if e != "*" && !LIFECYCLE.contains(&e.as_str()) {
                return Err(bad(format!("event `{e}` is not one of {} (or `*`)", LIFECYCLE.join(", "))));
            }
        }
        match (&r.url, &r.start) {
            (Some(url), None) => {
                let u = url::Url::parse(url).map_err(|e| bad(format!("url `{url}`: {e}")))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(bad(format!("url `{url}`: only http and https")));
                }
                let Some(secret) = &r.secret else {
                    return Err(bad(
                        "a url needs a signing secret: name one (`secret`, read from CAIRN_SECRET_<NAME>)".into(),
                    ));
                };
                if self.fx.secrets.get(secret).is_none() {
                    return Err(bad(format!(
                        "no secret `{secret}` in this process: set CAIRN_SECRET_{secret} where deliveries are made"
                    )));
                }
            }
            (None, Some(w)) => {
                if self.latest_version(w).await?.is_none() {
                    return Err(bad(format!("no workflow named `{w}` is published; publish it first")));
                }
            }
            _ => return Err(bad("give either `url` (with `secret`) or `start` (a workflow), not both".into())),
        }
        let d = SubscriptionDefined {
            name: r.name,
            events: r.events,
            workflows: r.workflows,
            url: r.url,
            secret: r.secret,
            start: r.start,
            max_attempts: r.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).clamp(1, 100),
            from_position: self.store.head_position().await?,
            by: by.to_owned(),
        };
        let e = Event::SubscriptionDefined(d.clone());
        let new = vec![NewEvent::from_event(&e, Metadata::by(by))];
        self.store.append(SUBSCRIPTIONS_STREAM, ExpectedVersion::Any, new).await?;
        Ok(d)
    }

    /// Deletes a subscription.
    pub async fn delete_subscription(&self, name: &str, by: &str) -> Result<(), RunError> {
        if !self.subscriptions().await?.contains_key(name) {
            return Err(refused("unknown-subscription", format!("no subscription named `{name}`")));
        }
        let e = Event::SubscriptionDeleted(SubscriptionDeleted { name: name.to_owned(), by: by.to_owned() });
        let new = vec![NewEvent::from_event(&e, Metadata::by(by))];
        self.store.append(SUBSCRIPTIONS_STREAM, ExpectedVersion::Any, new).await?;
        Ok(())
    }

    /// The delivery log folded.
    pub async fn deliveries(&self) -> Result<Ledger, RunError> {
        let mut l = Ledger::default();
        for r in self.store.read_stream(DELIVERIES_STREAM, 1).await? {
            l.apply(&r)?;
        }
        Ok(l)
    }

    /// Puts a dead delivery back to be tried again.
    pub async fn requeue_delivery(&self, id: &str, by: &str) -> Result<(), RunError> {
        let l = self.deliveries().await?;
        match l.deliveries.get(id) {
            None => return Err(refused("unknown-delivery", format!("no delivery `{id}` (cairn deliveries list)"))),
            Some(d) if d.status != "dead" => {
                return Err(refused(
                    "not-dead",
                    format!("delivery `{id}` is {}; only a dead one is put back", d.status),
                ));
            }
            Some(_) => {}
        }
        let e = Event::DeliveryRequeued(DeliveryRequeued { id: id.to_owned(), by: by.to_owned() });
        let new = vec![NewEvent::from_event(&e, Metadata::by(by))];
        self.store.append(DELIVERIES_STREAM, ExpectedVersion::Any, new).await?;
        Ok(())
    }
}

/// Follows the log and makes the deliveries, while this process holds the
/// `deliveries` lease.
pub struct Dispatcher {
    engine: Arc<Engine>,
    http: reqwest::Client,
    /// Runs' workflows and versions, by run (bounded: cleared when large).
    runs: std::sync::Mutex<HashMap<Uuid, (String, u32)>>,
    /// Workflow versions' hooks (`on:`).
    hooks: std::sync::Mutex<HashMap<(String, u32), Hooks>>,
    /// The lease's token and when it was claimed.
    claimed: std::sync::Mutex<Option<(i64, tokio::time::Instant)>>,
}

/// A workflow version's hooks.
type Hooks = Arc<Vec<cairn_core::model::Hook>>;

/// One attempt to make.
struct Attempt {
    id: String,
    sub: SubscriptionDefined,
    position: u64,
    event: String,
    run_id: Option<Uuid>,
    workflow: Option<String>,
    payload: Value,
    recorded_at: String,
    attempt: u32,
}

impl Dispatcher {
    /// A dispatcher for `engine` (which must be a worker's: it holds a lease).
    pub fn new(engine: Arc<Engine>) -> Arc<Dispatcher> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Arc::new(Dispatcher {
            engine,
            http,
            runs: Default::default(),
            hooks: Default::default(),
            claimed: Default::default(),
        })
    }

    /// Runs until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut commits = self.engine.store().wakeups();
        let mut ledger: Option<Ledger> = None;
        let mut checkpointed = tokio::time::Instant::now();
        loop {
            let began = tokio::time::Instant::now();
            let pause = match self.pass(&mut ledger, &mut checkpointed).await {
                Ok(true) => Duration::from_millis(50),
                Ok(false) => Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, "deliveries: a pass failed; trying again");
                    ledger = None;
                    Duration::from_secs(2)
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = commits.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
            // Commits come by the thousand under load: one pass takes them
            // all, at most every EVERY.
            let wait = EVERY.saturating_sub(began.elapsed());
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: claims the lease, reads what is new, attempts what is due,
    /// records it. `true` when there may be more to do at once.
    async fn pass(
        &self,
        ledger: &mut Option<Ledger>,
        checkpointed: &mut tokio::time::Instant,
    ) -> Result<bool, RunError> {
        let e = &self.engine;
        let held = *self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let token = match held {
            Some((t, at)) if at.elapsed() < RECLAIM => t,
            _ => {
                let got = e.claim_stream(DELIVERIES_STREAM).await?;
                *self.claimed.lock().unwrap_or_else(|p| p.into_inner()) = got.map(|t| (t, tokio::time::Instant::now()));
                match got {
                    Some(t) => t,
                    None => {
                        // Another process dispatches.
                        *ledger = None;
                        return Ok(false);
                    }
                }
            }
        };
        let fence = Fence {
            stream_id: DELIVERIES_STREAM.to_owned(),
            worker_id: e.worker_id().unwrap_or_default().to_owned(),
            token,
        };
        // The ledger, brought up to date (another dispatcher may have written).
        let mut l = ledger.take().unwrap_or_default();
        for r in e.store().read_stream(DELIVERIES_STREAM, l.version + 1).await? {
            l.apply(&r)?;
        }
        // New events first, then the subscriptions: one defined after the
        // read starts after every event in it.
        let from = l.scanned + 1;
        let batch = e.store().read_all(from, BATCH).await?;
        let subs = e.subscriptions().await?;
        let now = e.clock().now();
        let mut todo = Vec::new();
        // Retries due, and requeued ones.
        for d in l.deliveries.values() {
            if d.status != "pending" || d.next_at.is_some_and(|t| t > now) {
                continue;
            }
            let Some(r) = e.store().read_all(d.position, 1).await?.into_iter().next() else { continue };
            let sub = match subs.get(&d.subscription) {
                Some(s) => s.clone(),
                None => match self.hook_subs(&r, &d.event).await?.into_iter().find(|h| h.name == d.subscription) {
                    Some(h) => h,
                    None => continue,
                },
            };
            let workflow = self.run_of(&r).await?.map(|(w, _)| w);
            todo.push(Attempt {
                id: d.id.clone(),
                sub,
                position: d.position,
                event: d.event.clone(),
                run_id: d.run_id,
                workflow,
                payload: serde_json::from_str(&r.payload).unwrap_or(Value::Null),
                recorded_at: r.recorded_at.clone(),
                attempt: d.attempts + 1,
            });
        }
        // New events.
        let mut scanned = l.scanned;
        for r in &batch {
            scanned = r.global_position;
            let Ok(ev) = Event::decode(r) else { continue };
            // A run started in this batch needs no read to know its workflow.
            if let (Event::RunStarted(s), Some(run)) =
                (&ev, r.stream_id.strip_prefix("run-").and_then(|x| Uuid::parse_str(x).ok()))
            {
                let mut m = self.runs.lock().unwrap_or_else(|p| p.into_inner());
                if m.len() > 10_000 {
                    m.clear();
                }
                m.insert(run, (s.workflow.clone(), s.workflow_version));
            }
            let Some(name) = lifecycle(&ev) else { continue };
            let hooked = self.hook_subs(r, name).await?;
            let mut workflow = None;
            for sub in subs.values().chain(hooked.iter()) {
                if r.global_position <= sub.from_position
                    || !sub.events.iter().any(|x| x == "*" || x == name)
                    || l.deliveries.contains_key(&format!("{}@{}", sub.name, r.global_position))
                {
                    continue;
                }
                if workflow.is_none() {
                    workflow = Some(self.run_of(r).await?.map(|(w, _)| w));
                }
                let wf = workflow.clone().flatten();
                if !sub.workflows.is_empty() && !wf.as_ref().is_some_and(|w| sub.workflows.contains(w)) {
                    continue;
                }
                todo.push(Attempt {
                    id: format!("{}@{}", sub.name, r.global_position),
                    sub: sub.clone(),
                    position: r.global_position,
                    event: name.to_owned(),
                    run_id: r.stream_id.strip_prefix("run-").and_then(|s| Uuid::parse_str(s).ok()),
                    workflow: wf,
                    payload: serde_json::from_str(&r.payload).unwrap_or(Value::Null),
                    recorded_at: r.recorded_at.clone(),
                    attempt: 1,
                });
            }
        }
        let more = batch.len() == BATCH;
        // Every attempt at once: one slow endpoint delays no other.
        let outcomes = futures_util::future::join_all(todo.into_iter().map(|a| self.attempt(a))).await;
        let mut events: Vec<Event> = outcomes.into_iter().map(Event::DeliveryAttempted).collect();
        let advanced = scanned > l.scanned;
        if advanced && (!events.is_empty() || checkpointed.elapsed() >= CHECKPOINT_EVERY) {
            events.push(Event::DeliveriesScanned(DeliveriesScanned { position: scanned }));
            *checkpointed = tokio::time::Instant::now();
        }
        if !events.is_empty() {
            let new = events.iter().map(|x| NewEvent::from_event(x, Metadata::by("cairn"))).collect();
            let append =
                StreamAppend { stream_id: DELIVERIES_STREAM.to_owned(), expected: ExpectedVersion::Any, events: new };
            if let Err(x) = e.store().append_guarded(vec![append], vec![fence], Vec::new()).await {
                // Taken over (fenced): claim again on the next pass.
                *self.claimed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(x.into());
            }
            for x in &events {
                if let Event::DeliveryAttempted(a) = x {
                    crate::metrics::delivered(&a.subscription, &a.outcome);
                }
            }
        } else if advanced {
            // Nothing recorded: go on from here in memory.
            l.scanned = scanned;
        }
        *ledger = Some(l);
        Ok(more)
    }

    /// The workflow and version of the run an event is about.
    async fn run_of(&self, r: &RecordedEvent) -> Result<Option<(String, u32)>, RunError> {
        let Some(run) = r.stream_id.strip_prefix("run-").and_then(|s| Uuid::parse_str(s).ok()) else {
            return Ok(None);
        };
        if let Some(w) = self.runs.lock().unwrap_or_else(|p| p.into_inner()).get(&run) {
            return Ok(Some(w.clone()));
        }
        let first = self.engine.store().read_stream(&r.stream_id, 1).await?;
        let w = match first.first().map(Event::decode).transpose()? {
            Some(Event::RunStarted(s)) => (s.workflow, s.workflow_version),
            _ => return Ok(None),
        };
        let mut m = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(run, w.clone());
        Ok(Some(w))
    }

    /// The subscriptions a run's own definition declares (`on:`) for
    /// `event`: each hook is one, named `on:<workflow>:<event>:<index>`.
    async fn hook_subs(&self, r: &RecordedEvent, event: &str) -> Result<Vec<SubscriptionDefined>, RunError> {
        let Some((workflow, version)) = self.run_of(r).await? else { return Ok(Vec::new()) };
        let key = (workflow.clone(), version);
        let cached = self.hooks.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let hooks = match cached {
            Some(h) => h,
            None => {
                let h = match self.engine.recorded_definition(&workflow, version).await {
                    Ok(w) => Arc::new(w.hooks.clone()),
                    Err(e) => {
                        tracing::warn!(workflow = %workflow, version, error = %e, "deliveries: cannot read the definition's hooks");
                        Arc::new(Vec::new())
                    }
                };
                self.hooks.lock().unwrap_or_else(|p| p.into_inner()).insert(key, h.clone());
                h
            }
        };
        Ok(hooks
            .iter()
            .enumerate()
            .filter(|(_, h)| h.event == event)
            .map(|(i, h)| SubscriptionDefined {
                name: format!("on:{workflow}:{event}:{i}"),
                events: vec![event.to_owned()],
                workflows: vec![workflow.clone()],
                url: h.url.clone(),
                secret: h.secret.clone(),
                start: h.start.clone(),
                max_attempts: h.max_attempts,
                from_position: 0,
                by: format!("workflow:{workflow}"),
            })
            .collect())
    }

    /// Makes one attempt; never fails (its outcome says how it went).
    async fn attempt(&self, a: Attempt) -> DeliveryAttempted {
        let body = json!({
            "id": a.id,
            "type": a.event,
            "subscription": a.sub.name,
            "position": a.position,
            "occurred_at": a.recorded_at,
            "run_id": a.run_id,
            "workflow": a.workflow,
            "data": a.payload,
        });
        let result: Result<Option<u16>, (Option<u16>, String)> = match (&a.sub.url, &a.sub.start) {
            (Some(url), _) => self.post(url, a.sub.secret.as_deref(), &a.id, &a.event, &body).await,
            (None, Some(w)) => self.start(w, &a, body.clone()).await,
            (None, None) => Err((None, "the subscription has neither a url nor a workflow".into())),
        };
        let base = DeliveryAttempted {
            id: a.id.clone(),
            subscription: a.sub.name.clone(),
            position: a.position,
            event: a.event.clone(),
            run_id: a.run_id,
            attempt: a.attempt,
            outcome: "delivered".into(),
            status: None,
            error: None,
            next_at: None,
        };
        match result {
            Ok(status) => DeliveryAttempted { status, ..base },
            Err((status, error)) if a.attempt >= a.sub.max_attempts => {
                tracing::warn!(delivery = %a.id, error = %error, "a delivery is dead: no attempts left");
                DeliveryAttempted { outcome: "dead".into(), status, error: Some(error), ..base }
            }
            Err((status, error)) => {
                let wait = chrono::Duration::from_std(backoff(a.attempt)).unwrap_or_default();
                let next_at = Some(self.engine.clock().now() + wait);
                DeliveryAttempted { outcome: "failed".into(), status, error: Some(error), next_at, ..base }
            }
        }
    }

    async fn post(
        &self,
        url: &str,
        secret: Option<&str>,
        id: &str,
        event: &str,
        body: &Value,
    ) -> Result<Option<u16>, (Option<u16>, String)> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let secret = secret.and_then(|s| self.engine.fx.secrets.get(s)).ok_or((
            None,
            "the subscription's secret is not set in the dispatching process (CAIRN_SECRET_<NAME>)".to_owned(),
        ))?;
        let t = self.engine.clock().now().timestamp();
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&bytes);
        let sig = hex::encode(cairn_core::human::hmac(secret.as_bytes(), &signed));
        let r = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("cairn-delivery", id)
            .header("cairn-event", event)
            .header("cairn-signature", format!("t={t},v1={sig}"))
            .body(bytes)
            .send()
            .await
            .map_err(|e| (None, format!("{e}")))?;
        let status = r.status().as_u16();
        if r.status().is_success() {
            Ok(Some(status))
        } else {
            Err((Some(status), format!("the endpoint answered {status}")))
        }
    }

    async fn start(&self, workflow: &str, a: &Attempt, event: Value) -> Result<Option<u16>, (Option<u16>, String)> {
        let e = &self.engine;
        let by = format!("subscription:{}", a.sub.name);
        let run_id = Start::idempotent_id(&by, &a.id);
        let err = |m: String| (None, m);
        if e.store().stream_version(&cairn_events::run_stream(run_id)).await.map_err(|x| err(x.to_string()))? > 0 {
            return Ok(None);
        }
        let version = e
            .latest_version(workflow)
            .await
            .map_err(|x| err(x.to_string()))?
            .ok_or_else(|| err(format!("workflow `{workflow}` is not published")))?;
        let w = e.definition(workflow, version).await.map_err(|x| err(x.to_string()))?;
        let opts =
            Start { run_id: Some(run_id), idempotency_key: Some(a.id.clone()), drive: false, trace_parent: None };
        match e.start_with(&w, version, json!({ "event": event }), &by, opts).await {
            Ok(_) => Ok(None),
            Err(RunError::Store(x)) if x.is_conflict() => Ok(None),
            Err(x) => Err(err(x.to_string())),
        }
    }
}
