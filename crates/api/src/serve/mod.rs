//! `cairn serve`: the HTTP API over the event log, the engine and the read
//! models, in one process. Runs started or answered over HTTP are driven by
//! this process; waits (deadlines, reminders, retries) are woken by its
//! timer loop; the projections follow the log in the background. See
//! docs/api.md.

mod api;
mod console;
mod docs;

mod extract;
pub(crate) mod graph;
pub(crate) mod listen;
mod live;
mod metrics;
mod otlp;
mod pages;
mod people;
mod problem;
mod reads;
mod refusals;
mod routes;
mod runs;
mod schedules;
mod subscriptions;
mod tasks;
mod triggers;
mod workflows;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_events::EventStore;
use cairn_projections::Worker;
use cairn_runtime::Engine;
use futures_util::FutureExt;
use tracing::Instrument;

use self::api::Access;
use self::extract::Caller;
use self::problem::ApiError;
use crate::keys::{Keys, Role};

/// Arguments of `cairn serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The address to listen on (`127.0.0.1:0` picks a free port; the
    /// address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080", env = "CAIRN_LISTEN")]
    pub listen: String,
    /// Serve without API keys: every request acts as `--as` (default
    /// `anonymous`) with the admin role. Only on a loopback address unless
    /// `--insecure` is given too.
    #[arg(long)]
    pub no_auth: bool,
    /// Allow `--no-auth` on a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Log lines as `text` or `json` (one object per line, with request ids).
    #[arg(long, default_value = "text", value_parser = ["text", "json"], env = "CAIRN_LOG_FORMAT")]
    pub log_format: String,
    /// The largest request body taken, in bytes (larger: 413).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long a request may take before it is answered 503, in seconds
    /// (streams, once started, are not cut).
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// Longest a task worker's poll (`POST /tasks/poll`) waits for a task,
    /// in seconds (also never past the request timeout less two seconds).
    #[arg(long, default_value_t = 20)]
    pub max_poll_wait: u64,
    /// A file of `NAME=value` secret lines, added to the
    /// `CAIRN_SECRET_<NAME>` environment variables.
    #[arg(long)]
    pub secrets_file: Option<std::path::PathBuf>,
    /// Decide on the threads that answer requests instead of the blocking
    /// pool: cheaper per step, but a run with expensive templates or
    /// conditions then delays other requests while it is decided.
    #[arg(long)]
    pub decide_inline: bool,
    /// Failed API-key checks a client address may make per minute; past
    /// them it is answered 429 `too-many-failures` without checking keys
    /// until the minute is over (0: no limit).
    #[arg(long, default_value_t = 10)]
    pub max_key_failures: u32,
    /// How long a console sign-in lasts, in seconds (its cookie's
    /// lifetime; revoking the key ends it sooner).
    #[arg(long, default_value_t = 8 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_ttl: u64,
    /// Serve the API only: runs started or answered here are driven by the
    /// `cairn worker` processes (or servers) on the same database.
    #[arg(long)]
    pub no_worker: bool,
    /// Do not follow the log with the read models in the background: a
    /// read brings them up to date first, as always. For API processes
    /// beside one `cairn projections run` (the projections then cost this
    /// process nothing while runs go on; see docs/performance.md).
    #[arg(long)]
    pub no_projections: bool,
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The threads a server or worker runs its async work on.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Threads for requests and runs' async work (1: one thread, the
    /// default; more for PostgreSQL on many cores). SQLite statements run
    /// on their connections' threads, decisions on the blocking pool and
    /// the read models on a thread of their own whatever this is: one
    /// thread hands work on without waking another, the cheapest on small
    /// machines (see docs/performance.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024), env = "CAIRN_THREADS")]
    pub threads: u16,
}

impl RuntimeArgs {
    /// The runtime these arguments ask for.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(self.threads)).enable_all().build()
        }
    }
}

/// How a worker holds runs.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaseArgs {
    /// Seconds a worker may go without beating before another takes its
    /// runs over (it beats every third of it); a takeover follows within a
    /// poll (one second), so within 10 s by default.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u64).range(1..=3600), env = "CAIRN_LEASE_TIMEOUT")]
    pub lease_timeout: u64,
    /// This worker's name, unique among the processes on the database
    /// (default: host, process id and a random part).
    #[arg(long, env = "CAIRN_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl LeaseArgs {
    fn apply(&self, engine: Engine) -> Engine {
        match &self.worker_id {
            Some(id) => engine.with_worker(id.clone(), Duration::from_secs(self.lease_timeout)),
            None => {
                let id = engine.worker_id().map(str::to_owned).unwrap_or_default();
                engine.with_worker(id, Duration::from_secs(self.lease_timeout))
            }
        }
    }
}

/// Arguments of `cairn worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Log lines as `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"], env = "CAIRN_LOG_FORMAT")]
    pub log_format: String,
    /// A file of `NAME=value` secret lines, added to the
    /// `CAIRN_SECRET_<NAME>` environment variables.
    #[arg(long)]
    pub secrets_file: Option<std::path::PathBuf>,
    /// Serve this worker's metrics at `http://ADDR/metrics` in the
    /// Prometheus format (no key is asked: listen on a loopback or private
    /// address). `cairn serve` has them at its own `/metrics`.
    #[arg(long, env = "CAIRN_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Ctrl-C or SIGTERM.
async fn signalled() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut t) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            t.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// `cairn worker`: drives runs (timers, answers recorded by API processes,
/// runs of dead workers) until interrupted, then retires.
pub async fn worker(
    database: &str,
    setup: &crate::commands::setup::SetupArgs,
    args: WorkerArgs,
) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&args.log_format)?;
    let secrets = crate::commands::setup::load_secrets(args.secrets_file.as_deref())?;
    let metrics_at = match &args.metrics_listen {
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("--metrics-listen {a}: {e}; give an address like 127.0.0.1:9464"))?,
        ),
        None => None,
    };
    let engine = crate::commands::setup::engine(database, setup, secrets).await?;
    let engine = Arc::new(args.lease.apply(engine).with_offloaded_decisions());
    let driver = cairn_runtime::worker::Driver::new(engine.clone(), true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut otlp_metrics = None;
    if metrics_at.is_some() || otlp::configured() {
        let m = metrics::Metrics::install()?;
        otlp_metrics = m.spawn_otlp(engine.store().clone(), None, stop_rx.clone());
        if let Some(addr) = metrics_at {
            let local = metrics::serve_for_worker(addr, m, engine.store().clone(), stop_rx.clone()).await?;
            out!("metrics on http://{local}/metrics");
        }
    }
    let exporter = crate::telemetry::spawn_exporter(engine.clone(), stop_rx.clone()).await?;
    let timers = tokio::spawn(driver.clone().run(stop_rx.clone()));
    tokio::spawn(cairn_runtime::deliveries::Dispatcher::new(engine.clone()).run(stop_rx));
    {
        let d = driver.clone();
        tokio::spawn(async move { d.resume_unfinished().await });
    }
    out!("worker {} on {}", engine.worker_id().unwrap_or("-"), engine.store().describe());
    tracing::info!(worker = engine.worker_id().unwrap_or("-"), database = %engine.store().describe(), "working");
    signalled().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = timers.await;
    if let Some(e) = exporter {
        let _ = e.await;
    }
    if let Some(m) = otlp_metrics {
        let _ = m.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything a handler can reach.
pub struct State {
    engine: Arc<Engine>,
    store: Arc<dyn EventStore>,
    read: Arc<Worker>,
    keys: tokio::sync::RwLock<(Keys, Instant)>,
    auth: bool,
    anonymous: String,
    driver: Arc<cairn_runtime::worker::Driver>,
    tail: Arc<live::Tail>,
    openapi: serde_json::Value,
    access: api::AccessMap,
    timeout: Duration,
    /// Longest a task poll waits.
    max_poll_wait: Duration,
    key_failures: refusals::KeyFailures,
    /// How long a console sign-in lasts.
    session_ttl: Duration,
    /// The process's counters, rendered at `/metrics`.
    metrics: Arc<metrics::Metrics>,
}

impl State {
    /// The read models, brought up to the log's head first so a read after
    /// a write sees it.
    async fn read(&self) -> Result<&cairn_projections::ReadDb, ApiError> {
        self.read.catch_up().await?;
        Ok(self.read.db())
    }

    /// The key a presented secret is: from the cache, re-read when older
    /// than a second or when the key is not in it (a new key).
    async fn authenticate(&self, presented: &str) -> Result<Option<crate::keys::Key>, ApiError> {
        {
            let k = self.keys.read().await;
            if k.1.elapsed() < Duration::from_secs(1)
                && let Some(key) = k.0.authenticate(presented)
            {
                return Ok(Some(key.clone()));
            }
        }
        let fresh = Keys::load(&self.store).await.map_err(ApiError::internal)?;
        let found = fresh.authenticate(presented).cloned();
        *self.keys.write().await = (fresh, Instant::now());
        Ok(found)
    }

    /// The live (not revoked) key with this id, from the cache when it is
    /// under a second old: a console session names its key by id.
    async fn key_by_id(&self, key_id: &str) -> Result<Option<crate::keys::Key>, ApiError> {
        {
            let k = self.keys.read().await;
            if k.1.elapsed() < Duration::from_secs(1) {
                return Ok(k.0.find(key_id).filter(|k| k.key_id == key_id && !k.revoked).cloned());
            }
        }
        let fresh = Keys::load(&self.store).await.map_err(ApiError::internal)?;
        let found = fresh.find(key_id).filter(|k| k.key_id == key_id && !k.revoked).cloned();
        *self.keys.write().await = (fresh, Instant::now());
        Ok(found)
    }
}

/// A server's engine, read models, routes and background work, started
/// but not listening: `cairn serve` puts it on a socket, `cairn mcp` on
/// stdio.
pub struct Running {
    /// Every route, with its state and middleware (authorization, framing).
    pub app: axum::Router,
    state: Arc<State>,
    /// Says stop to the background work.
    pub stop_tx: Arc<tokio::sync::watch::Sender<bool>>,
    /// Turns `true` when the background work is told to stop.
    pub stop: tokio::sync::watch::Receiver<bool>,
    projections: Option<tokio::sync::oneshot::Receiver<()>>,
    timers: tokio::task::JoinHandle<()>,
    exporter: Option<tokio::task::JoinHandle<()>>,
    otlp_metrics: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the background work and waits for it.
    pub async fn finish(self) {
        let _ = self.stop_tx.send(true);
        if let Some(p) = self.projections {
            let _ = p.await;
        }
        let _ = self.timers.await;
        if let Some(e) = self.exporter {
            let _ = e.await;
        }
        if let Some(m) = self.otlp_metrics {
            let _ = m.await;
        }
    }
}

/// Builds and starts a server's parts (see [`Running`]); prints nothing on
/// stdout.
pub async fn start(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &crate::commands::setup::SetupArgs,
    args: &Args,
) -> anyhow::Result<Running> {
    let secrets = crate::commands::setup::load_secrets(args.secrets_file.as_deref())?;
    // Deciding runs off the async executor: a busy run never stalls requests.
    let engine = crate::commands::setup::engine(database, setup, secrets).await?;
    let engine = args.lease.apply(engine);
    let engine = Arc::new(if args.decide_inline { engine } else { engine.with_offloaded_decisions() });
    let store = engine.store().clone();
    let worker = Arc::new(crate::commands::read::worker_on(store.clone(), database, read).await?);
    let keys = Keys::load(&store).await?;
    if !args.no_auth && keys.all().all(|k| k.revoked) {
        eprintln!(
            "note: no API key exists yet, so every request but /healthz, /readyz, /openapi.json and /docs will be \
             refused: create one with `cairn keys create --name NAME --role admin`"
        );
    }
    let driver = cairn_runtime::worker::Driver::new(engine.clone(), !args.no_worker);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tail = live::Tail::spawn(store.clone(), stop_rx.clone()).await;
    let (router, openapi, access) = routes::api();
    let state = Arc::new(State {
        engine: engine.clone(),
        store: store.clone(),
        read: worker.clone(),
        keys: tokio::sync::RwLock::new((keys, Instant::now())),
        auth: !args.no_auth,
        anonymous: setup.identity.clone().unwrap_or_else(|| "anonymous".into()),
        driver: driver.clone(),
        tail,
        openapi,
        access,
        timeout: Duration::from_secs(args.request_timeout.max(1)),
        max_poll_wait: Duration::from_secs(args.max_poll_wait),
        session_ttl: Duration::from_secs(args.session_ttl),
        key_failures: refusals::KeyFailures::new(args.max_key_failures),
        metrics: metrics::Metrics::install()?,
    });
    let app = router
        .merge(pages::router())
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(args.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), frame))
        .with_state(state.clone());
    // The read models follow the log on a thread of their own, beside the
    // one answering requests and driving runs.
    let projections = if args.no_projections {
        None
    } else {
        let w = worker.clone();
        let rx = stop_rx.clone();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("cairn-projections".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(w.run(Duration::from_millis(200), rx)),
                Err(e) => tracing::error!(error = %e, "cannot start the read models' thread"),
            }
            let _ = done.send(());
        })?;
        Some(finished)
    };
    let exporter = crate::telemetry::spawn_exporter(engine.clone(), stop_rx.clone()).await?;
    let otlp_metrics = state.metrics.spawn_otlp(store.clone(), Some(worker.clone()), stop_rx.clone());
    let timers = tokio::spawn(driver.clone().run(stop_rx.clone()));
    // Lifecycle deliveries: one dispatcher across the processes that drive runs.
    if !args.no_worker {
        tokio::spawn(cairn_runtime::deliveries::Dispatcher::new(engine.clone()).run(stop_rx.clone()));
    }
    // Runs a crash or restart left unfinished continue, on probation, while
    // requests are served.
    {
        let d = driver.clone();
        tokio::spawn(async move { d.resume_unfinished().await });
    }
    Ok(Running { app, state, stop_tx: Arc::new(stop_tx), stop: stop_rx, projections, timers, exporter, otlp_metrics })
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found("no-such-path", format!("no endpoint at {} (see /openapi.json)", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not served at {} (see /openapi.json)", req.method(), req.uri().path()),
    )
}

/// Checks the key against the operation's role; puts the [`Caller`] in
/// the request.
async fn authorize(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let mut attempt = refusals::Attempt {
        actor: "unknown".into(),
        key_id: None,
        action: format!("{} {}", req.method(), if path.is_empty() { req.uri().path() } else { &path }),
    };
    let mut r = match check(&state, req, next, &path, &mut attempt).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    r.extensions_mut().insert(attempt);
    r
}

async fn check(
    state: &Arc<State>,
    mut req: Request,
    next: Next,
    path: &str,
    attempt: &mut refusals::Attempt,
) -> Result<Response, ApiError> {
    // A method the path does not serve falls through to the router's 405.
    let access = state.access.iter().find(|((m, p), _)| *m == req.method() && *p == path).map(|(_, a)| *a);
    let Some(Access::Role(needed)) = access else { return Ok(next.run(req).await) };
    let caller = if state.auth {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        attempt.key_id = presented.and_then(refusals::key_id_of);
        let ip = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if let Some(ip) = ip
            && let Some(over) = state.key_failures.over_limit(ip)
        {
            if over.first {
                let (run_id, step_id) = refusals::run_and_step(req.uri().path());
                let d = cairn_events::AccessDenied {
                    actor: attempt.actor.clone(),
                    key_id: attempt.key_id.clone(),
                    action: attempt.action.clone(),
                    run_id,
                    step_id,
                    reason: "too-many-failures".into(),
                    origin: ip.to_string(),
                };
                refusals::record(&state.store, d).await;
            }
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-failures",
                format!(
                    "{} failed API-key checks from this address within a minute; no key is checked from it for {} s",
                    over.count, over.retry_after
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&over.retry_after.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(r);
        }
        let Some(presented) = presented else {
            if let Some(ip) = ip {
                state.key_failures.failed(ip);
            }
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this endpoint needs an API key: send `Authorization: Bearer cairn_…` (create one with `cairn keys create`)",
            ));
        };
        let Some(key) = state.authenticate(presented).await? else {
            if let Some(ip) = ip {
                state.key_failures.failed(ip);
            }
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad-key",
                "the API key is not known or was revoked; ask an admin for a key (`cairn keys create`)",
            ));
        };
        Caller { identity: key.identity, role: key.role, key_id: Some(key.key_id) }
    } else {
        Caller { identity: state.anonymous.clone(), role: Role::Admin, key_id: None }
    };
    attempt.actor = caller.identity.clone();
    attempt.key_id = caller.key_id.clone();
    if !caller.role.may(needed) {
        let why = match (caller.role, needed) {
            (Role::Worker, _) => "a worker key may only poll, heartbeat, complete and fail tasks".to_owned(),
            (_, Role::Worker) => "task operations need a key of the worker, operator or admin role".to_owned(),
            _ => format!("it needs the {} role or a stronger one", needed.name()),
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a key with the {} role may not do this; {why}", caller.role.name()),
        ));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Every request: a request id (taken from `x-request-id` or made), a
/// span and a log line, a time limit, and a 500 instead of a panic.
async fn frame(axum::extract::State(state): axum::extract::State<Arc<State>>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let origin = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let started = Instant::now();
    let work = std::panic::AssertUnwindSafe(next.run(req)).catch_unwind();
    let mut response = match tokio::time::timeout(state.timeout, work).instrument(span.clone()).await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            span.in_scope(|| tracing::error!(panic = %what, "handler panicked"));
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed on this request; it was logged",
            )
            .into_response()
        }
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {}s; try again", state.timeout.as_secs()),
        )
        .into_response(),
    };
    let status = response.status();
    // A request refused for who made it is recorded (but not each one past
    // the failed-key limit: the authorizer records the first of those).
    if let Some(problem::Code(code)) = response.extensions().get::<problem::Code>()
        && refusals::is_refusal(code)
        && code != "too-many-failures"
    {
        let attempt = response.extensions().get::<refusals::Attempt>().cloned().unwrap_or(refusals::Attempt {
            actor: "unknown".into(),
            key_id: None,
            action: format!("{method} {path}"),
        });
        let (run_id, step_id) = refusals::run_and_step(&path);
        let d = cairn_events::AccessDenied {
            actor: attempt.actor,
            key_id: attempt.key_id,
            action: attempt.action,
            run_id,
            step_id,
            reason: code.clone(),
            origin: origin.clone().unwrap_or_else(|| "unknown".into()),
        };
        refusals::record(&state.store, d).await;
    }
    // Problems carry the request id too.
    if response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/problem+json") {
        response = with_request_id(response, &id).await;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), latency_ms = ms, "request");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms = ms, "request");
        }
    });
    response
}

async fn with_request_id(response: Response, id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) => {
            v["request_id"] = serde_json::Value::String(id.to_owned());
            serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec())
        }
        Err(_) => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
