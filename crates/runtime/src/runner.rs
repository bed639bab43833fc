//! The durable runner: loads a run's events, folds them, asks the decider,
//! performs the decision and appends the outcome with the expected version.
//! `StepStarted` is recorded before an effect and the outcome after it; after
//! a crash an attempt with no outcome runs again (effects at-least-once,
//! recorded outcomes exactly once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_events::{
    ChildRunCompleted, ChildRunStarted, Event, EventStore, ExpectedVersion, Metadata, NewEvent, ParentRun,
    RunCancelled, RunStarted, StepCompleted, StepFailed, StoreError, StreamAppend, WorkflowVersionPublished,
};
use chrono::Utc;
use futures_util::future::{AbortHandle, Aborted, BoxFuture, FutureExt, abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use uuid::Uuid;

use crate::commit::GroupCommit;
use crate::error::RunError;
use crate::tasks::{TaskContext, TaskError, TaskRegistry};
use cairn_core::decider::{Cursor, Decision, Effect, Execution, RunState, RunStatus, bare, decide, evolve};
use cairn_core::lang;
use cairn_core::model::{StepKind, Workflow};
use cairn_core::secrets::Secrets;

/// Most running runs whose last read state [`Engine::state`] keeps.
const STATES_CACHED: usize = 4096;

/// An inline decision slower than this counts as slow (see
/// [`Engine::think`]); [`SLOW_DECISIONS`] slow ones in a row, or one over
/// [`INLINE_DECISION_MAX`], move its definition's runs to the blocking pool
/// (one preempted decision on a busy machine does not).
pub const INLINE_DECISION_SLOW: std::time::Duration = std::time::Duration::from_millis(2);

/// How many slow inline decisions in a row move a definition to the pool.
pub const SLOW_DECISIONS: u8 = 3;

/// One inline decision slower than this moves its definition to the pool.
pub const INLINE_DECISION_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// Options of [`Engine::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// The run's id (default: a new UUIDv7).
    pub run_id: Option<Uuid>,
    /// The caller's idempotency key, recorded in `RunStarted`.
    pub idempotency_key: Option<String>,
    /// This engine drives the run next (a worker that kicks it after the
    /// start): it holds the run from its first append, so no other worker
    /// picks it up meanwhile. Otherwise the run is due for whichever
    /// worker claims it first.
    pub drive: bool,
    /// The caller's W3C `traceparent`, recorded so the run's trace links
    /// to the caller's span.
    pub trace_parent: Option<String>,
}

impl Start {
    /// The run id an idempotency key names: the same identity and key
    /// always give the same id, so the event store's "no such stream yet"
    /// check lets exactly one start through (the HTTP API's
    /// `Idempotency-Key` and `cairn start --idempotency-key` share it).
    pub fn idempotent_id(identity: &str, key: &str) -> Uuid {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"cairn-idempotency\0");
        h.update(identity.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        uuid::Builder::from_custom_bytes(b).into_uuid()
    }
}

/// Where a run comes from, beside its workflow and inputs.
#[derive(Debug, Default)]
pub(crate) struct Origin {
    /// The parent run, for a child run.
    pub(crate) parent: Option<ParentRun>,
    /// The caller's idempotency key.
    pub(crate) idempotency_key: Option<String>,
    /// For a fork: where from, and the carried `StepKept` events.
    pub(crate) fork: Option<(cairn_events::ForkOrigin, Vec<Event>)>,
    /// The schedule firing that starts it.
    pub(crate) schedule: Option<cairn_events::ScheduleOrigin>,
    /// The caller's W3C `traceparent`.
    pub(crate) trace_parent: Option<String>,
}

/// Receives every event the runner appends, for progress displays.
pub type Observer<'a> = &'a mut (dyn FnMut(&Event) + Send);

/// Runs workflows durably against an event store.
pub struct Engine {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) commits: GroupCommit,
    tasks: TaskRegistry,
    definitions: Mutex<HashMap<(String, u32), Arc<Workflow>>>,
    /// The last state read of running runs (see [`Engine::state`]).
    states: Mutex<HashMap<Uuid, RunState>>,
    actor: String,
    /// What the effects use: HTTP client, configuration, secrets, the token
    /// key, and the clock "now" comes from for every decision, timer and retry.
    pub(crate) fx: crate::effects::Effects,
    /// Whether deciding runs on the blocking pool (a server: one busy run
    /// never stalls other requests) or inline (the CLI, benchmarks).
    offload: bool,
    /// When offloading: whether a definition (by its hash) decides cheaply
    /// enough to decide inline, and how many of its inline decisions in a
    /// row were slow (see [`Engine::think`]).
    light: Mutex<HashMap<String, (bool, u8)>>,
    /// This engine as a worker: the runs it holds (when the store keeps
    /// leases; see [`Engine::with_worker`]).
    leases: Option<Arc<crate::lease::Leases>>,
}

impl Engine {
    /// The top-level runs of a workflow started at or after `since`, oldest
    /// first, with their status now, from a scan of the log.
    pub async fn runs_of(
        &self,
        workflow: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<crate::scan::RunSummary>, RunError> {
        crate::scan::top_level_runs(&*self.store, Some(workflow), since).await
    }

    /// The resume token of a step attempt's form or approval.
    pub fn resume_token(&self, run_id: Uuid, step: &str, attempt: u32) -> String {
        self.fx.resume_token(run_id, step, attempt)
    }

    /// The personal answer token of `identity` for a step attempt's form or
    /// approval: what its notification links to (see
    /// [`cairn_core::human::answer_token`]).
    pub fn answer_token(&self, run_id: Uuid, step: &str, attempt: u32, identity: &str) -> String {
        cairn_core::human::answer_token(&self.fx.token_key, run_id, step, attempt, identity)
    }

    /// Who a personal answer token for this step attempt was made for, if
    /// it is one.
    pub fn answer_token_identity(&self, run_id: Uuid, step: &str, attempt: u32, token: &str) -> Option<String> {
        cairn_core::human::answer_token_identity(&self.fx.token_key, run_id, step, attempt, token)
    }

    /// A MAC for `purpose` under this engine's token key (see
    /// [`cairn_core::human::keyed_mac`]): what a host signs its own
    /// short-lived credentials with (a console session, a CSRF token).
    pub fn keyed_mac(&self, purpose: &str, msg: &[u8]) -> [u8; 32] {
        cairn_core::human::keyed_mac(&self.fx.token_key, purpose, msg)
    }

    /// `w` (compiled from a file, say) with this engine's configuration:
    /// models, prices, people and prompt templates, as the decider sees them.
    pub fn configured(&self, mut w: Workflow) -> Workflow {
        w.config = self.fx.config.clone();
        w
    }

    /// An engine over `store` with these task handlers.
    pub fn new(store: Arc<dyn EventStore>, tasks: TaskRegistry) -> Self {
        let keeps_leases = store.keeps_leases();
        Engine {
            commits: GroupCommit::new(store.clone()),
            store,
            tasks,
            definitions: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            actor: "engine".into(),
            fx: crate::effects::Effects {
                secrets: Secrets::default(),
                http: crate::http::client(),
                config: Arc::new(cairn_core::config::Config::default()),
                // A key of this process alone unless the config brings a shared one.
                token_key: [Uuid::new_v4().into_bytes(), Uuid::new_v4().into_bytes()].concat(),
                clock: cairn_events::clock::ClockHandle::default(),
            },
            offload: false,
            light: Mutex::new(HashMap::new()),
            leases: keeps_leases.then(|| {
                Arc::new(crate::lease::Leases::new(
                    crate::lease::Leases::fresh_id(),
                    crate::lease::DEFAULT_LEASE_TIMEOUT,
                ))
            }),
        }
    }

    /// Names this engine as a worker (`id`, unique among the processes on
    /// one database) whose runs other workers take over when it has not
    /// beaten for `lease_timeout`. Every engine over a database is a worker
    /// with a fresh id and [`DEFAULT_LEASE_TIMEOUT`](crate::DEFAULT_LEASE_TIMEOUT) unless named here.
    pub fn with_worker(mut self, id: impl Into<String>, lease_timeout: std::time::Duration) -> Self {
        if self.leases.is_some() {
            self.leases = Some(Arc::new(crate::lease::Leases::new(id.into(), lease_timeout)));
        }
        self
    }

    /// This engine's worker id (`None` over a store that keeps no leases).
    pub fn worker_id(&self) -> Option<&str> {
        self.leases.as_deref().map(|l| l.id.as_str())
    }

    /// How long this worker may go without beating before its runs are
    /// taken over.
    pub fn lease_timeout(&self) -> std::time::Duration {
        self.leases.as_deref().map_or(crate::lease::DEFAULT_LEASE_TIMEOUT, crate::lease::Leases::timeout)
    }

    /// Claims `run` for this worker: `true` when it now holds the run (or
    /// the store keeps no leases), `false` while another live worker does.
    pub async fn claim(&self, run: Uuid) -> Result<bool, RunError> {
        match &self.leases {
            Some(l) => l.claim(&self.store, run).await,
            None => Ok(true),
        }
    }

    /// Whether this worker holds `run`.
    pub fn holds(&self, run: Uuid) -> bool {
        self.leases.as_deref().is_none_or(|l| l.holds(run))
    }

    /// Gives up this worker's lease on `run` (its wake-up index entry says
    /// when a worker is next needed).
    pub async fn release(&self, run: Uuid) -> Result<(), RunError> {
        match &self.leases {
            Some(l) => l.release(&self.store, run).await,
            None => Ok(()),
        }
    }

    /// Claims the runs due by `by` (timers, answers recorded elsewhere, a
    /// dead worker's runs) that no live worker holds, at most `limit`;
    /// returns each with when it is due and whether it was taken over from
    /// a worker that died (or retired) holding it.
    pub async fn claim_due(&self, by: chrono::DateTime<Utc>, limit: i64) -> Result<crate::lease::Claimed, RunError> {
        match &self.leases {
            Some(l) => l.claim_due(&self.store, by, limit).await,
            None => Ok(crate::lease::Claimed::default()),
        }
    }

    /// Claims a stream that is not a run's for this worker (the delivery
    /// dispatcher's): its lease token while held, `None` while another live
    /// worker holds it or this engine is not a worker.
    pub async fn claim_stream(&self, stream: &str) -> Result<Option<i64>, RunError> {
        match &self.leases {
            Some(l) => l.claim_stream(&self.store, stream).await,
            None => Ok(None),
        }
    }

    /// Lets this worker's claim of a schedule go (after its tick).
    pub async fn release_schedule(&self, name: &str) -> Result<(), RunError> {
        match &self.leases {
            Some(l) => l.release_schedule(&self.store, name).await,
            None => Ok(()),
        }
    }

    /// Ends this worker cleanly: it stops beating and every run it holds is
    /// free for another worker at once. Call it when the process exits.
    pub async fn retire(&self) -> Result<(), RunError> {
        match &self.leases {
            Some(l) => l.retire(&self.store).await,
            None => Ok(()),
        }
    }

    /// Decides (templates, conditions, the decider's fold) on tokio's
    /// blocking pool rather than the async executor: a run whose templates
    /// or conditions are expensive then never delays other requests or
    /// runs, a request timeout can answer while it works, and a server on
    /// one async thread decides on the other cores. Runs of a definition
    /// that decides cheaply are still decided inline (no comprehension, no
    /// template statement; moved to the pool for good by slow decisions,
    /// see [`INLINE_DECISION_SLOW`]): the hop to the pool and back costs more
    /// than such a decision. For servers; in-process use decides inline.
    pub fn with_offloaded_decisions(mut self) -> Self {
        self.offload = true;
        self
    }

    /// Runs the CPU-bound decision `f` for a run of `w` off the async
    /// executor when offloading (see [`Engine::with_offloaded_decisions`]),
    /// inline otherwise, or when `w` decides cheaply: a definition with no
    /// comprehension in its conditions and no template statement (`{%`,
    /// `range(`) costs time linear in its (bounded) data, a few
    /// microseconds a step, less than the hop to another thread. Slow
    /// inline decisions (see [`INLINE_DECISION_SLOW`]) move the definition
    /// to the blocking pool from then on.
    pub(crate) async fn think<T: Send + 'static>(&self, w: &Workflow, f: impl FnOnce() -> T + Send + 'static) -> T {
        if !(self.offload && tokio::runtime::Handle::try_current().is_ok()) {
            return f();
        }
        if self.decides_lightly(w) {
            let t = std::time::Instant::now();
            let v = f();
            let took = t.elapsed();
            let mut light = self.light.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((inline, slow)) = light.get_mut(&w.definition_hash) {
                *slow = if took > INLINE_DECISION_SLOW { slow.saturating_add(1) } else { 0 };
                *inline &= *slow < SLOW_DECISIONS && took <= INLINE_DECISION_MAX;
            }
            return v;
        }
        match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the decider's blocking task was cancelled: {e}"),
        }
    }

    /// Whether runs of `w` are decided on the thread that drives them (the
    /// CLI and embedding programs always; a server when `w` decides cheaply,
    /// see [`Engine::with_offloaded_decisions`]) rather than on the
    /// blocking pool.
    pub fn decides_inline(&self, w: &Workflow) -> bool {
        !self.offload || self.decides_lightly(w)
    }

    /// Whether runs of `w` decide inline on a server (see [`Engine::think`]).
    fn decides_lightly(&self, w: &Workflow) -> bool {
        let mut light = self.light.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((l, _)) = light.get(&w.definition_hash) {
            return *l;
        }
        if light.len() >= 4096 {
            light.clear();
        }
        // The compiled steps, not the source: YAML escapes cannot hide a marker.
        let compiled = format!("{:?}{:?}{:?}", w.steps, w.compensations, w.output);
        let heavy = ["{%", "range(", ".all(", ".exists(", ".exists_one(", ".map(", ".filter("];
        let l = !heavy.iter().any(|m| compiled.contains(m));
        light.insert(w.definition_hash.clone(), (l, 0));
        l
    }

    /// Uses this configuration: AI providers and models, prices, email,
    /// people, prompt templates and the resume-token key.
    pub fn with_config(mut self, config: cairn_core::config::Config) -> Self {
        if !config.token_key.is_empty() {
            self.fx.token_key = config.token_key.clone();
        }
        self.fx.config = Arc::new(config);
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self
    }

    /// Reads the time from `clock` (tests and the simulator drive it; give
    /// the store the same clock so `recorded_at` agrees).
    pub fn with_clock(mut self, clock: impl Into<cairn_events::clock::ClockHandle>) -> Self {
        self.fx.clock = clock.into();
        self
    }

    /// The clock this engine reads the time from.
    pub fn clock(&self) -> &cairn_events::clock::ClockHandle {
        &self.fx.clock
    }

    /// The configuration.
    pub fn config(&self) -> &cairn_core::config::Config {
        &self.fx.config
    }

    /// `w` with this engine's configuration, from the cache when it holds
    /// that version.
    async fn bound(&self, w: &Workflow, version: u32) -> Result<Arc<Workflow>, RunError> {
        if let Some(c) = self.definitions.lock().unwrap_or_else(|p| p.into_inner()).get(&(w.name.clone(), version))
            && c.definition_hash == w.definition_hash
        {
            return Ok(c.clone());
        }
        let mut b = w.clone();
        b.config = self.fx.config.clone();
        Ok(Arc::new(b))
    }

    /// Uses these secrets for `{{ secrets.NAME }}`.
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.fx.secrets = secrets;
        self
    }

    /// The names of the secrets this engine has.
    pub fn secret_names(&self) -> Vec<&str> {
        self.fx.secrets.names()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The task handler names, for validation.
    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.names()
    }

    /// Publishes a definition as a new version of its workflow unless the
    /// latest version has the same source; returns the version.
    pub async fn publish(&self, w: &Workflow, by: &str) -> Result<u32, RunError> {
        let stream = cairn_events::workflow_stream(&w.name);
        let events = self.store.read_stream(&stream, 1).await?;
        let mut latest: Option<WorkflowVersionPublished> = None;
        for e in &events {
            if let Event::WorkflowVersionPublished(p) = Event::decode(e)? {
                latest = Some(p);
            }
        }
        if let Some(l) = &latest
            && l.definition_hash == w.definition_hash
        {
            return Ok(l.version);
        }
        let version = latest.map(|l| l.version + 1).unwrap_or(1);
        let event = Event::WorkflowVersionPublished(WorkflowVersionPublished {
            name: w.name.clone(),
            version,
            definition_hash: w.definition_hash.clone(),
            source: w.source.clone(),
            published_by: by.to_owned(),
        });
        self.store
            .append(
                &stream,
                ExpectedVersion::Exact(events.len() as u64),
                vec![NewEvent::from_event(&event, Metadata::by(by))],
            )
            .await?;
        let mut bound = w.clone();
        bound.config = self.fx.config.clone();
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).insert((w.name.clone(), version), Arc::new(bound));
        Ok(version)
    }

    /// The definition a run is pinned to, compiled from the stored source,
    /// to execute: every task handler it names must be registered here.
    pub async fn definition(&self, name: &str, version: u32) -> Result<Arc<Workflow>, RunError> {
        if let Some(w) = self.definitions.lock().unwrap_or_else(|p| p.into_inner()).get(&(name.to_owned(), version)) {
            return Ok(w.clone());
        }
        let source = self.published_source(name, version).await?;
        let mut w = lang::parse(&source, &format!("{name}@{version}"), &self.tasks.names()).map_err(|d| {
            match lang::parse_published(&source, &format!("{name}@{version}")) {
                // It compiles once its handlers are taken as known: they are
                // registered in another process (an embedding program).
                Ok(_) => RunError::HandlersElsewhere { name: name.to_owned(), version, handlers: missing_handlers(&d) },
                Err(_) => {
                    RunError::Definition { name: name.to_owned(), version, message: format!("no longer compiles: {d}") }
                }
            }
        })?;
        w.config = self.fx.config.clone();
        let w = Arc::new(w);
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).insert((name.to_owned(), version), w.clone());
        Ok(w)
    }

    /// The definition a run is pinned to, to read, plan, replay or fork
    /// its runs: task handlers it names need not be registered here (they
    /// execute, they do not decide), so an embedding program's runs are
    /// read by the `cairn` binary.
    pub async fn recorded_definition(&self, name: &str, version: u32) -> Result<Arc<Workflow>, RunError> {
        if let Ok(w) = self.definition(name, version).await {
            return Ok(w);
        }
        let source = self.published_source(name, version).await?;
        let mut w = lang::parse_published(&source, &format!("{name}@{version}")).map_err(|d| RunError::Definition {
            name: name.to_owned(),
            version,
            message: format!("no longer compiles: {d}"),
        })?;
        w.config = self.fx.config.clone();
        Ok(Arc::new(w))
    }

    /// The source of a published version.
    async fn published_source(&self, name: &str, version: u32) -> Result<String, RunError> {
        let events = self.store.read_stream(&cairn_events::workflow_stream(name), 1).await?;
        let mut source = None;
        for e in &events {
            if let Event::WorkflowVersionPublished(p) = Event::decode(e)?
                && p.version == version
            {
                source = Some(p.source);
            }
        }
        source.ok_or_else(|| RunError::Definition {
            name: name.to_owned(),
            version,
            message: "this version was never published".into(),
        })
    }

    /// Starts a run of a published version; returns its id. The run's first
    /// pure decisions (up to the first effect) are recorded with `RunStarted`.
    pub async fn start(&self, w: &Workflow, version: u32, inputs: Value, started_by: &str) -> Result<Uuid, RunError> {
        Ok(self.start_with(w, version, inputs, started_by, Start::default()).await?.0)
    }

    /// Whether run `id` (an idempotency key's, see [`Start::idempotent_id`])
    /// was started by the same request: `None` when no run has that id;
    /// `Some(Err(why))` when it started another workflow, another version
    /// (only when `pinned`: without one the key stands for the version the
    /// first request got, so a retry after a deploy is the same request) or
    /// other inputs (defaults filled in by the version it started with).
    pub async fn same_start(
        &self,
        id: Uuid,
        w: &Workflow,
        version: u32,
        pinned: bool,
        inputs: &Value,
    ) -> Result<Option<Result<(), String>>, RunError> {
        let events = self.store.read_stream(&cairn_events::run_stream(id), 1).await?;
        let Some(first) = events.first() else { return Ok(None) };
        let Ok(Event::RunStarted(started)) = Event::decode(first) else {
            return Ok(Some(Err(format!("run {id} does not begin with RunStarted: the key cannot be used"))));
        };
        let first_version = if pinned { version } else { started.workflow_version };
        let same_version = started.workflow == w.name && started.workflow_version == first_version;
        let with_defaults = if same_version && first_version != version {
            self.definition(&started.workflow, first_version).await?.inputs_with_defaults(inputs)
        } else {
            w.inputs_with_defaults(inputs)
        };
        if same_version && started.inputs == with_defaults {
            return Ok(Some(Ok(())));
        }
        let what = if same_version { "with other inputs".to_owned() } else { format!("not v{version}") };
        Ok(Some(Err(format!(
            "this idempotency key already started run {id} with another request ({} v{}, {what}); use a new key for a new run",
            started.workflow, started.workflow_version
        ))))
    }

    /// Starts a run with a chosen id and idempotency key; gives its id and
    /// the state the start recorded (for a host that drives the run next
    /// without reading it back: [`Engine::drive_until_idle_from`]). With a
    /// chosen id the append expects no stream, so of two starts with one id
    /// exactly one records `RunStarted`; the other gets a conflict
    /// ([`StoreError::is_conflict`]) and can read the winner's run.
    pub async fn start_with(
        &self,
        w: &Workflow,
        version: u32,
        inputs: Value,
        started_by: &str,
        opts: Start,
    ) -> Result<(Uuid, RunState), RunError> {
        self.check_children(w).await?;
        let id = opts.run_id.unwrap_or_else(Uuid::now_v7);
        let origin =
            Origin { idempotency_key: opts.idempotency_key, trace_parent: opts.trace_parent, ..Origin::default() };
        let (id, _, state) = self.start_run(w, version, inputs, started_by, id, origin, opts.drive).await?;
        Ok((id, state))
    }

    /// [`Engine::drive_until_idle`] from `state`, the run's state as this
    /// worker recorded it (a start's), without reading the run first; when
    /// this worker does not hold the run, as [`Engine::drive_until_idle`].
    pub async fn drive_until_idle_from(
        &self,
        run_id: Uuid,
        state: RunState,
        observer: Observer<'_>,
    ) -> Result<RunState, RunError> {
        self.drive_idle(run_id, Some(state), observer).await
    }

    /// When a run that is waiting (for people, or on a timer) next has
    /// something to do: a deadline, a reminder, a retry. `None` when nothing
    /// is due without an answer, or the run has ended.
    pub async fn wake_at(&self, run_id: Uuid) -> Result<Option<chrono::DateTime<Utc>>, RunError> {
        let state = self.state(run_id).await?;
        if state.status.is_terminal() {
            return Ok(None);
        }
        let w = self.definition(&state.workflow, state.workflow_version).await?;
        let now = self.fx.clock.now();
        let d = decide(&w, &state, now);
        if !d.append.is_empty() || !d.execute.is_empty() {
            return Ok(Some(now));
        }
        Ok(d.wake_at)
    }

    /// Starts a run: `RunStarted` (then, for a fork, the carried outputs)
    /// and the first pure decisions, in one append expecting no stream,
    /// with its wake-up index entry. With `claim`, this worker holds the
    /// run first (it goes on to drive it); otherwise the run is due for
    /// whichever worker claims it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_run(
        &self,
        w: &Workflow,
        version: u32,
        inputs: Value,
        started_by: &str,
        run_id: Uuid,
        origin: Origin,
        claim: bool,
    ) -> Result<(Uuid, Vec<Event>, RunState), RunError> {
        let Origin { parent, idempotency_key, fork, schedule, trace_parent } = origin;
        let bound = self.bound(w, version).await?;
        let w = &*bound;
        let workflow = w.name.clone();
        let inputs = w.inputs_with_defaults(&inputs);
        // Before the schema check (which recurses): what is too deep or too
        // large to record is refused, and nothing is written.
        self.fx.config.limits.check_value("/inputs", &inputs).map_err(|l| RunError::Limit(Box::new(l)))?;
        if let Some(schema) = &w.inputs_schema {
            let errors = cairn_core::contract::violations(schema, &inputs);
            if !errors.is_empty() {
                return Err(RunError::InvalidInputs { workflow: w.name.clone(), errors });
            }
        }
        let event = Event::RunStarted(RunStarted {
            run_id,
            workflow: w.name.clone(),
            workflow_version: version,
            definition_hash: w.definition_hash.clone(),
            inputs,
            started_by: started_by.to_owned(),
            idempotency_key,
            parent,
            fork_of: fork.as_ref().map(|(o, _)| o.clone()),
            settings: cairn_core::settings::resolve(w, &self.fx.config),
            started_at: Some(self.fx.clock.now()),
            schedule,
            trace_parent,
        });
        let mut state = evolve(RunState::default(), &event);
        let mut events = vec![event];
        for e in fork.map(|(_, c)| c).unwrap_or_default() {
            state = evolve(state, &e);
            events.push(e);
        }
        let now = self.fx.clock.now();
        let (state, events, next) = self
            .think(&bound.clone(), move || {
                let (state, next) = settle(&bound, state, &mut events, now);
                (state, events, next)
            })
            .await;
        let mut new = vec![NewEvent::from_event(&events[0], crate::trace::metadata(started_by, run_id, &events[0]))];
        new.extend(events[1..].iter().map(|e| NewEvent::from_event(e, crate::trace::metadata(&self.actor, run_id, e))));
        // This worker takes the new run's lease in the append that creates it.
        let fence = match (&self.leases, claim) {
            (Some(l), true) => Some(l.new_run(&self.store, run_id).await?),
            _ => None,
        };
        let ended = state.status.is_terminal();
        let mut wake = crate::lease::wake_for(run_id, ended, &next);
        if !claim && wake.due_ms == Some(0) {
            // Not a worker's yet: due now for whichever claims it (0 would
            // mean a worker was driving it and died).
            wake.due_ms = Some(now.timestamp_millis().max(1));
        }
        let claimed = fence.is_some();
        self.append_fenced(run_id, ExpectedVersion::NoStream, new, vec![wake.clone()], fence).await?;
        crate::metrics::recorded(&workflow, state.started_at, &events, now);
        // Held unless it ended at once (the append let it go).
        if let Some(l) = &self.leases
            && claimed
            && wake.due_ms.is_some()
        {
            l.took(run_id);
        }
        Ok((run_id, events, state))
    }

    /// Appends to a run's stream through the group commit, fenced by this
    /// worker's lease on it when it holds one, with `wakes` in the same
    /// transaction.
    async fn append(
        &self,
        run_id: Uuid,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        wakes: Vec<cairn_events::Wake>,
    ) -> Result<cairn_events::AppendResult, StoreError> {
        let fence = self.leases.as_deref().and_then(|l| l.fence(run_id));
        self.append_fenced(run_id, expected, events, wakes, fence).await
    }

    /// [`Engine::append`] with the fence given (a new run's, of token 0).
    async fn append_fenced(
        &self,
        run_id: Uuid,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        wakes: Vec<cairn_events::Wake>,
        fence: Option<cairn_events::Fence>,
    ) -> Result<cairn_events::AppendResult, StoreError> {
        let append = StreamAppend { stream_id: cairn_events::run_stream(run_id), expected, events };
        // A fenced append that takes the run out of the wake-up index also
        // gives up its lease (in the store's transaction).
        let lets_go =
            fence.as_ref().is_some_and(|f| wakes.iter().any(|w| w.stream_id == f.stream_id && w.due_ms.is_none()));
        let out = self.commits.append_guarded(append, fence, wakes).await;
        if out.is_ok()
            && lets_go
            && let Some(l) = &self.leases
        {
            l.lost(run_id);
        }
        if let (Err(e), Some(l)) = (&out, &self.leases)
            && e.kind() == cairn_events::StoreErrorKind::Fenced
        {
            tracing::info!(run_id = %run_id, worker = %l.id, "another worker took this run over: leaving it");
            l.lost(run_id);
        }
        out
    }

    /// Appends a command to a run (a person's answer, a resume) that makes
    /// it due for a worker at once, in the wake-up index of the same
    /// transaction: whichever worker is free drives it, in this process or
    /// another.
    pub(crate) async fn append_due_now(
        &self,
        run_id: Uuid,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<cairn_events::AppendResult, StoreError> {
        let stream_id = cairn_events::run_stream(run_id);
        let wake =
            cairn_events::Wake { stream_id: stream_id.clone(), due_ms: Some(self.fx.clock.now().timestamp_millis()) };
        let append = StreamAppend { stream_id, expected, events };
        // Through the group commit: answers arriving together (task
        // workers' completions, say) share one transaction.
        self.commits.append_guarded(append, None, vec![wake]).await
    }

    /// The folded state of a run.
    pub async fn state(&self, run_id: Uuid) -> Result<RunState, RunError> {
        // A stream only grows: fold what was recorded since the state read last.
        let cached = self.states.lock().unwrap_or_else(|p| p.into_inner()).get(&run_id).cloned();
        let mut s = cached.unwrap_or_default();
        let events = self.store.read_stream(&cairn_events::run_stream(run_id), s.version + 1).await?;
        if events.is_empty() && s.version == 0 {
            return Err(RunError::UnknownRun(run_id));
        }
        for e in &events {
            s = evolve(s, &Event::decode(e)?);
        }
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= STATES_CACHED && !states.contains_key(&run_id) {
            states.clear();
        }
        if !s.status.is_terminal() {
            states.insert(run_id, s.clone());
        } else {
            states.remove(&run_id);
        }
        Ok(s)
    }

    /// Cancels a running run.
    pub async fn cancel(&self, run_id: Uuid, by: &str, reason: Option<String>) -> Result<(), RunError> {
        let stream = cairn_events::run_stream(run_id);
        let mut s = self.state(run_id).await?;
        let e = Event::RunCancelled(RunCancelled { by: by.to_owned(), reason: reason.clone() });
        // A cancel is never refused because the run moved on: on a conflict
        // it reads what was appended meanwhile and tries again, until it is
        // recorded or the run has ended.
        loop {
            if s.status.is_terminal() {
                return Err(RunError::InvalidState {
                    run_id,
                    status: format!("{:?}", s.status).to_lowercase(),
                    message: "only a running run can be cancelled".into(),
                });
            }
            let new = vec![NewEvent::from_event(&e, crate::trace::metadata(by, run_id, &e))];
            let append =
                StreamAppend { stream_id: stream.clone(), expected: ExpectedVersion::Exact(s.version), events: new };
            // Ended: out of the wake-up index; its schedule woken (a
            // firing may wait for it to end).
            let mut wakes = vec![cairn_events::Wake { stream_id: stream.clone(), due_ms: None }];
            if let Some(name) = &s.schedule {
                let due = Some(self.fx.clock.now().timestamp_millis());
                wakes.push(cairn_events::Wake { stream_id: cairn_events::schedule_stream(name), due_ms: due });
            }
            match self.store.append_guarded(vec![append], Vec::new(), wakes).await {
                Ok(_) => {
                    crate::metrics::recorded(&s.workflow, s.started_at, std::slice::from_ref(&e), self.fx.clock.now());
                    break;
                }
                Err(err) if err.is_conflict() => {
                    for r in self.store.read_stream(&stream, s.version + 1).await? {
                        s = evolve(s, &Event::decode(&r)?);
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        // Child runs go with their parent.
        for t in s.threads.values() {
            if let Cursor::Child { child_run_id, .. } = &t.cursor {
                let why = Some(format!("parent run {run_id} was cancelled"));
                match Box::pin(self.cancel(*child_run_id, by, why)).await {
                    Ok(()) | Err(RunError::InvalidState { .. } | RunError::UnknownRun(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Drives a run until it ends, sleeping through waits. Effects of
    /// parallel branches and map iterations run concurrently; outcomes that
    /// are ready together are recorded in one commit. This worker claims the
    /// run first: one another live worker holds is left to it (its state is
    /// returned as it is), so no two live workers drive a run; every append
    /// is fenced by the lease, and the expected version decides between a
    /// driver and people's answers.
    pub fn drive<'a>(&'a self, run_id: Uuid, observer: Observer<'a>) -> BoxFuture<'a, Result<RunState, RunError>> {
        Box::pin(self.drive_run(run_id, observer))
    }

    async fn drive_run(&self, run_id: Uuid, observer: Observer<'_>) -> Result<RunState, RunError> {
        // Another live worker drives it: its state as it is.
        if !self.claim(run_id).await? {
            return self.state(run_id).await;
        }
        let state = self.state(run_id).await;
        let out = match state {
            Ok(state) => self.drive_from(run_id, state, observer, false).await,
            Err(e) => Err(e),
        };
        self.release(run_id).await?;
        out
    }

    /// Drives a run like [`Engine::drive`], but returns instead of sleeping
    /// when all it has left is a timer ([`Engine::wake_at`] tells when):
    /// for a host that schedules its own wake-ups, and for the simulator,
    /// which moves the clock itself.
    ///
    /// This worker keeps its lease on a run left waiting on a timer (the
    /// host fires it, or gives it up with [`Engine::release`]); an ended
    /// run, or one another live worker drives, it does not hold.
    pub async fn drive_until_idle(&self, run_id: Uuid, observer: Observer<'_>) -> Result<RunState, RunError> {
        self.drive_idle(run_id, None, observer).await
    }

    /// [`Engine::drive_until_idle`], from `seed` when this worker holds the
    /// run (no read).
    async fn drive_idle(
        &self,
        run_id: Uuid,
        seed: Option<RunState>,
        observer: Observer<'_>,
    ) -> Result<RunState, RunError> {
        let seed = seed.filter(|_| self.holds(run_id));
        if seed.is_none() && !self.claim(run_id).await? {
            return self.state(run_id).await;
        }
        let state = match seed {
            Some(s) => Ok(s),
            None => self.state(run_id).await,
        };
        let out = match state {
            Ok(state) => Box::pin(self.drive_from(run_id, state, observer, true)).await,
            Err(e) => Err(e),
        };
        if !matches!(&out, Ok(s) if !s.status.is_terminal()) {
            self.release(run_id).await?;
        }
        out
    }

    /// Starts a run and drives it to its end, from the state `start`
    /// recorded (no re-read); the observer sees every event, the first ones
    /// included.
    pub async fn run(
        &self,
        w: &Workflow,
        version: u32,
        inputs: Value,
        started_by: &str,
        observer: Observer<'_>,
    ) -> Result<(Uuid, RunState), RunError> {
        self.check_children(w).await?;
        let (run_id, events, state) =
            self.start_run(w, version, inputs, started_by, Uuid::now_v7(), Origin::default(), true).await?;
        for e in &events {
            observer(e);
        }
        if state.status.is_terminal() {
            return Ok((run_id, state));
        }
        let out = Box::pin(self.drive_from(run_id, state, observer, false)).await;
        self.release(run_id).await?;
        Ok((run_id, out?))
    }

    async fn drive_from(
        &self,
        run_id: Uuid,
        mut state: RunState,
        observer: Observer<'_>,
        until_idle: bool,
    ) -> Result<RunState, RunError> {
        let w = self.definition(&state.workflow, state.workflow_version).await?;
        // What this drive last wrote to the wake-up index (written again
        // only when it changes).
        let mut woke: Option<Option<i64>> = None;
        let mut running: FuturesUnordered<BoxFuture<'_, (EffectKey, EffectResult)>> = FuturesUnordered::new();
        let mut handles: HashMap<EffectKey, AbortHandle> = HashMap::new();
        // Child runs that stopped to wait for people (not awaited again in this drive).
        let mut parked_children: std::collections::HashSet<EffectKey> = std::collections::HashSet::new();
        let mut next: Option<Decision> = None;
        loop {
            let d = match next.take() {
                Some(d) => d,
                None => {
                    let (now, wf, s) = (self.fx.clock.now(), w.clone(), std::mem::take(&mut state));
                    let (s, d) = self
                        .think(&w, move || {
                            let d = decide(&wf, &s, now);
                            (s, d)
                        })
                        .await;
                    state = s;
                    d
                }
            };
            if !d.append.is_empty() {
                next = self.commit(&w, run_id, &mut state, d.append, &mut woke, observer).await?;
                continue;
            }
            // Start what is newly due; stop what no longer is (a branch
            // cancelled by a failing sibling, a run cancelled elsewhere).
            let wanted: Vec<EffectKey> =
                d.execute.iter().map(EffectKey::of).filter(|k| !parked_children.contains(k)).collect();
            handles.retain(|k, h| {
                let keep = wanted.contains(k);
                if !keep {
                    h.abort();
                }
                keep
            });
            for ex in d.execute {
                let key = EffectKey::of(&ex);
                if handles.contains_key(&key) || parked_children.contains(&key) {
                    continue;
                }
                let input = self.effective_input(&w, &state, &ex.step_id, ex.input.clone());
                let (fut, handle) = abortable(self.execute(&w, run_id, ex, input));
                handles.insert(key.clone(), handle);
                running.push(Box::pin(async move { (key, fut.await) }));
            }
            if handles.is_empty() {
                // Waiting for people holds nothing: a submission or
                // decision (or `continue`, for timers) drives it again.
                if d.parked || !parked_children.is_empty() {
                    return Ok(state);
                }
                let Some(t) = d.wake_at else { return Ok(state) };
                if until_idle {
                    return Ok(state);
                }
                // Re-read at least every second so a cancel is noticed.
                tokio::select! {
                    () = self.fx.clock.sleep_until(t) => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                state = self.state(run_id).await?;
                continue;
            }
            let first = match d.wake_at {
                Some(t) => {
                    tokio::select! {
                        r = running.next() => r,
                        () = self.fx.clock.sleep_until(t) => None,
                    }
                }
                None => running.next().await,
            };
            let mut ready = Vec::new();
            ready.extend(first);
            // Whatever else has finished goes into the same commit.
            while let Some(Some(r)) = running.next().now_or_never() {
                ready.push(r);
            }
            let mut outcomes = Vec::new();
            for (key, result) in ready {
                let Ok(result) = result else { continue }; // aborted
                handles.remove(&key);
                let events = result?;
                if events.is_empty() && key.sub == "child" {
                    parked_children.insert(key);
                    continue;
                }
                // A cancelled branch's late result is not recorded.
                if state.awaits(&key.step_id, key.attempt) && key.still_open(&state) {
                    outcomes.extend(events);
                }
            }
            if !outcomes.is_empty() {
                next = self.commit(&w, run_id, &mut state, outcomes, &mut woke, observer).await?;
            }
        }
    }

    /// Records `events` and the pure decisions that follow them in one
    /// commit: each outcome is durable before anything it enables starts.
    /// Returns the next decision once recorded; `None` after a conflict
    /// (the state was re-read: decide afresh).
    async fn commit(
        &self,
        w: &Arc<Workflow>,
        run_id: Uuid,
        state: &mut RunState,
        mut events: Vec<Event>,
        woke: &mut Option<Option<i64>>,
        observer: Observer<'_>,
    ) -> Result<Option<Decision>, RunError> {
        let (now, wf, before) = (self.fx.clock.now(), w.clone(), state.clone());
        let (after, next, events) = self
            .think(w, move || {
                let (after, next) = settle(&wf, events.iter().fold(before, evolve), &mut events, now);
                (after, next, events)
            })
            .await;
        let new: Vec<NewEvent> =
            events.iter().map(|e| NewEvent::from_event(e, crate::trace::metadata(&self.actor, run_id, e))).collect();
        let ended = after.status.is_terminal();
        let wake = crate::lease::wake_for(run_id, ended, &next);
        let mut wakes = Vec::new();
        if *woke != Some(wake.due_ms) {
            wakes.push(wake.clone());
        }
        // A child that ended wakes the parent waiting for it; a scheduled
        // run, its schedule (a firing may wait for it to end).
        if ended && let Some(p) = &after.parent {
            let due = Some(self.fx.clock.now().timestamp_millis());
            wakes.push(cairn_events::Wake { stream_id: cairn_events::run_stream(p.run_id), due_ms: due });
        }
        if ended && let Some(name) = &after.schedule {
            let due = Some(self.fx.clock.now().timestamp_millis());
            wakes.push(cairn_events::Wake { stream_id: cairn_events::schedule_stream(name), due_ms: due });
        }
        match self.append(run_id, ExpectedVersion::Exact(state.version), new, wakes).await {
            Ok(_) => {
                *woke = Some(wake.due_ms);
                crate::metrics::recorded(&after.workflow, after.started_at, &events, now);
                for e in &events {
                    observer(e);
                }
                *state = after;
                Ok(Some(next))
            }
            Err(e) if e.is_conflict() => {
                *state = self.state(run_id).await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Performs one effect and returns the events that record its outcome.
    async fn execute(&self, w: &Workflow, run_id: Uuid, ex: Execution, input: Value) -> Result<Vec<Event>, RunError> {
        let Execution { step_id, attempt, effect, timeout, .. } = ex;
        let started = Instant::now();
        let outcome = match effect {
            Effect::StartChild { workflow, version, child_run_id } => {
                return self.start_child(run_id, step_id, attempt, &workflow, version, child_run_id, input).await;
            }
            Effect::AwaitChild { child_run_id } => return self.await_child(step_id, attempt, child_run_id).await,
            Effect::Ai { number, scripted } => {
                return Ok(vec![self.fx.call_model(w, run_id, &step_id, number, scripted, input, timeout).await]);
            }
            Effect::Request => return Ok(self.fx.request(w, run_id, &step_id, attempt, &input).into_iter().collect()),
            Effect::Notify { purpose, identity, address, send_attempt } => {
                return Ok(vec![
                    self.fx
                        .notify(run_id, &step_id, attempt, &purpose, &identity, &address, send_attempt, &input)
                        .await,
                ]);
            }
            effect => self.perform(run_id, &step_id, attempt, effect, input, timeout).await,
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(vec![self.outcome_event(w, step_id, attempt, outcome, duration_ms)])
    }

    /// The event that records an attempt's outcome: the output checked
    /// against the limits and the step's `output_contract` (a breach fails
    /// the attempt, not retried), secrets scrubbed.
    pub(crate) fn outcome_event(
        &self,
        w: &Workflow,
        step_id: String,
        attempt: u32,
        outcome: Result<Value, TaskError>,
        duration_ms: u64,
    ) -> Event {
        let contract = w.step(bare(&step_id)).and_then(|s| s.output_contract.as_ref());
        // An output too deep or too large to record fails the attempt
        // (kind `limit`, not retried) instead of an append the log refuses.
        let outcome = outcome.and_then(|output| match self.fx.config.limits.check_value("/output", &output) {
            Ok(()) => Ok(output),
            Err(l) => Err(TaskError::new("limit", format!("the step's output was not recorded: {l}"), false)),
        });
        let outcome = outcome.and_then(|output| match contract.map(|c| cairn_core::contract::violations(c, &output)) {
            Some(v) if !v.is_empty() => Err(TaskError::new(
                "contract",
                format!("the output does not satisfy the output_contract: {}", cairn_core::contract::describe(&v)),
                false,
            )),
            _ => Ok(output),
        });
        match outcome {
            Ok(mut output) => {
                self.fx.secrets.scrub(&mut output);
                Event::StepCompleted(StepCompleted { step_id, attempt, output, duration_ms })
            }
            Err(e) => Event::StepFailed(StepFailed {
                step_id,
                attempt,
                error_kind: e.kind,
                message: self.fx.secrets.scrub_str(&e.message),
                retryable: e.retryable,
                retry_after_ms: e.retry_after_ms,
            }),
        }
    }

    /// The latest published version of a workflow.
    pub async fn latest_version(&self, name: &str) -> Result<Option<u32>, RunError> {
        let events = self.store.read_stream(&cairn_events::workflow_stream(name), 1).await?;
        let mut latest = None;
        for e in &events {
            if let Event::WorkflowVersionPublished(p) = Event::decode(e)? {
                latest = Some(p.version);
            }
        }
        Ok(latest)
    }

    /// Checks that every child workflow `w` starts is published.
    pub async fn check_children(&self, w: &Workflow) -> Result<(), RunError> {
        for name in &w.children {
            if self.latest_version(name).await?.is_none() {
                return Err(RunError::Definition {
                    name: name.clone(),
                    version: 0,
                    message: format!(
                        "`{}` starts it as a child run, but it was never published; publish it first (`cairn publish FILE`)",
                        w.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Starts the child run of a `workflow` step (or finds the one an
    /// interrupted attempt started: its id is derived from the attempt).
    #[allow(clippy::too_many_arguments)]
    async fn start_child(
        &self,
        parent: Uuid,
        step_id: String,
        attempt: u32,
        workflow: &str,
        version: Option<u32>,
        child_run_id: Uuid,
        inputs: Value,
    ) -> Result<Vec<Event>, RunError> {
        let fail = |kind: &str, message: String| {
            Ok(vec![Event::StepFailed(StepFailed {
                step_id: step_id.clone(),
                attempt,
                error_kind: kind.to_owned(),
                message,
                retryable: false,
                retry_after_ms: None,
            })])
        };
        let started = |workflow_version: u32| {
            Ok(vec![Event::ChildRunStarted(ChildRunStarted {
                step_id: step_id.clone(),
                child_run_id,
                workflow: workflow.to_owned(),
                workflow_version,
            })])
        };
        let existing = self.store.read_stream(&cairn_events::run_stream(child_run_id), 1).await?;
        if let Some(first) = existing.first()
            && let Event::RunStarted(r) = Event::decode(first)?
        {
            return started(r.workflow_version);
        }
        let version = match version {
            Some(v) => v,
            None => match self.latest_version(workflow).await? {
                Some(v) => v,
                None => return fail("child.unknown-workflow", format!("workflow `{workflow}` was never published")),
            },
        };
        let w = match self.definition(workflow, version).await {
            Ok(w) => w,
            Err(RunError::Definition { message, .. }) => {
                return fail("child.unknown-workflow", format!("workflow `{workflow}` version {version}: {message}"));
            }
            Err(e) => return Err(e),
        };
        let parent = ParentRun { run_id: parent, step_id: step_id.clone() };
        match self
            .start_run(
                &w,
                version,
                inputs,
                &format!("run:{}", parent.run_id),
                child_run_id,
                Origin { parent: Some(parent), ..Origin::default() },
                true,
            )
            .await
        {
            Ok(_) => started(version),
            Err(RunError::InvalidInputs { errors, .. }) => fail(
                "child.invalid-inputs",
                format!(
                    "the inputs do not satisfy the `inputs` schema of `{workflow}`: {}",
                    cairn_core::contract::describe(&errors)
                ),
            ),
            // Another process started it first.
            Err(RunError::Store(e)) if e.is_conflict() => started(version),
            Err(e) => Err(e),
        }
    }

    /// Drives a child run to its end and records its result in the parent.
    async fn await_child(&self, step_id: String, attempt: u32, child: Uuid) -> Result<Vec<Event>, RunError> {
        let started = Instant::now();
        let s = self.drive(child, &mut |_| {}).await?;
        // The child waits for people: so does the parent (nothing to record).
        if s.status == RunStatus::Running {
            return Ok(Vec::new());
        }
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, result, outcome) = match s.status {
            RunStatus::Completed => {
                let output = s.output.clone().unwrap_or(Value::Null);
                (
                    "completed",
                    output.clone(),
                    Event::StepCompleted(StepCompleted { step_id: step_id.clone(), attempt, output, duration_ms }),
                )
            }
            status => {
                let (kind, message, failed_step) =
                    s.error.clone().unwrap_or_else(|| ("cancelled".into(), "the child run was cancelled".into(), None));
                let name = if status == RunStatus::Cancelled { "cancelled" } else { "failed" };
                let at = failed_step.as_deref().map(|f| format!(" at step `{f}`")).unwrap_or_default();
                (
                    name,
                    serde_json::json!({ "error_kind": kind, "message": message, "failed_step": failed_step }),
                    Event::StepFailed(StepFailed {
                        step_id: step_id.clone(),
                        attempt,
                        error_kind: format!("child.{}", if name == "cancelled" { "cancelled" } else { &kind }),
                        message: format!("child run {child} {name}{at}: {message}"),
                        retryable: true,
                        retry_after_ms: None,
                    }),
                )
            }
        };
        Ok(vec![
            Event::ChildRunCompleted(ChildRunCompleted {
                step_id,
                child_run_id: child,
                status: status.to_owned(),
                result,
            }),
            outcome,
        ])
    }

    /// The input to execute with: the recorded input, or, when the step
    /// uses secrets, its templates rendered again with the real values (the
    /// recorded input holds placeholders).
    fn effective_input(&self, w: &Workflow, state: &RunState, step_id: &str, recorded: Value) -> Value {
        if w.secret_refs.is_empty() {
            return recorded;
        }
        let template = match w.step(bare(step_id)).map(|s| &s.kind) {
            Some(StepKind::Task { input, .. }) => input,
            Some(StepKind::Http { request, .. }) => request,
            _ => return recorded,
        };
        let mut text_uses_secrets = false;
        let _ = cairn_core::template::walk_strings::<()>(template, &mut |t| {
            text_uses_secrets |= t.contains("secrets.");
            Ok(())
        });
        if !text_uses_secrets {
            return recorded;
        }
        let mut ctx = cairn_core::decider::context(state, step_id);
        ctx.set("secrets", self.fx.secrets.template_value());
        cairn_core::template::render(template, &ctx).unwrap_or(recorded)
    }

    async fn perform(
        &self,
        run_id: Uuid,
        step_id: &str,
        attempt: u32,
        effect: Effect,
        input: Value,
        timeout: Option<std::time::Duration>,
    ) -> Result<Value, TaskError> {
        let ctx = TaskContext { run_id, step_id: step_id.to_owned(), attempt };
        let fut = match effect {
            Effect::Http { retry_on_status } => {
                let key = ctx.idempotency_key();
                let t = timeout.unwrap_or(cairn_core::model::DEFAULT_HTTP_TIMEOUT);
                let traceparent = format!(
                    "00-{}-{}-01",
                    crate::trace::trace_id(run_id),
                    crate::trace::step_span(run_id, step_id, attempt)
                );
                return crate::http::send(&self.fx.http, &input, t, &key, &retry_on_status, &traceparent).await;
            }
            Effect::Task { handler } => match self.tasks.get(&handler) {
                None => {
                    return Err(TaskError::new(
                        "unknown-task",
                        format!("no task handler named `{handler}` in this process"),
                        false,
                    ));
                }
                Some(h) => h.call(input, ctx),
            },
            Effect::StartChild { .. }
            | Effect::AwaitChild { .. }
            | Effect::Ai { .. }
            | Effect::Request
            | Effect::Notify { .. } => {
                return Err(TaskError::new("internal", "this effect is not performed as a task".to_owned(), false));
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(TaskError::new("timeout", format!("attempt took longer than {t:?}"), true))),
            None => fut.await,
        }
    }

    /// Top-level runs that started and have not ended (or were resumed
    /// since), oldest first; child runs are driven by their parents. Scans
    /// the log.
    pub async fn unfinished_runs(&self) -> Result<Vec<Uuid>, RunError> {
        Ok(crate::scan::top_level_runs(&*self.store, None, None)
            .await?
            .into_iter()
            .filter(|r| r.status == "running")
            .map(|r| r.run_id)
            .collect())
    }
}

/// Extends `events` with the pure decisions that follow `state` (the state
/// after `events`), stopping before any effect, wait or end of decisions;
/// returns the state after all of them and the decision that stopped it
/// (its effects and wake-up), so the caller need not decide again.
/// Time-dependent decisions (retry due times) use the current time, exactly
/// as deciding them one append later would.
pub(crate) fn settle(
    w: &Workflow,
    mut state: RunState,
    events: &mut Vec<Event>,
    now: chrono::DateTime<Utc>,
) -> (RunState, Decision) {
    let mut d = decide(w, &state, now);
    for _ in 0..1_000 {
        if d.append.is_empty() {
            break;
        }
        let more = std::mem::take(&mut d.append);
        for e in &more {
            state = evolve(state, e);
        }
        events.extend(more);
        d = decide(w, &state, now);
    }
    (state, d)
}

/// What a running effect ends with: its outcome events, a failure of the
/// store, or `Aborted` when it was cancelled.
type EffectResult = Result<Result<Vec<Event>, RunError>, Aborted>;

/// Identifies one running effect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EffectKey {
    step_id: String,
    attempt: u32,
    /// Tells apart the effects of one attempt: `child`, `ai<N>`,
    /// `notify:<purpose>:<address>`.
    sub: String,
}

impl EffectKey {
    fn of(ex: &Execution) -> Self {
        let sub = match &ex.effect {
            Effect::AwaitChild { .. } => "child".to_owned(),
            Effect::Ai { number, .. } => format!("ai{number}"),
            Effect::Notify { purpose, address, .. } => format!("notify:{purpose}:{address}"),
            _ => String::new(),
        };
        EffectKey { step_id: ex.step_id.clone(), attempt: ex.attempt, sub }
    }

    /// Whether the state still waits for this effect's outcome (an AI
    /// attempt that is still the open one).
    fn still_open(&self, state: &RunState) -> bool {
        match self.sub.strip_prefix("ai").and_then(|n| n.parse::<u32>().ok()) {
            Some(n) => state.ai.get(&self.step_id).and_then(|p| p.open.as_ref()).is_some_and(|(o, _)| *o == n),
            None => true,
        }
    }
}

/// The task handler names a definition's `unknown-task` diagnostics name.
fn missing_handlers(d: &lang::Diagnostics) -> Vec<String> {
    let mut out: Vec<String> =
        d.0.iter()
            .filter(|x| x.code == "unknown-task")
            .filter_map(|x| x.message.split('`').nth(1).map(|n| format!("`{n}`")))
            .collect();
    out.dedup();
    out
}
