//! `GET /metrics`: the process's counters and histograms in the Prometheus
//! text format, with gauges read at scrape time (projection lag, parked
//! events, task queue depths, quarantined runs). The counters are the
//! engine's ([`cairn_runtime::metrics`]); each process counts what it did,
//! so a sum over processes counts each run once. See docs/operations.md
//! "Metrics".

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_events::EventStore;
use cairn_projections::Worker;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of every `_seconds` metric: from a fast step (5 ms)
/// to a run that waited a week for an approval.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
    604_800.0,
];

/// How often histograms are drained when nobody scrapes (their samples
/// would otherwise pile up between scrapes).
const UPKEEP: Duration = Duration::from_secs(5);

/// Gauges set at scrape time.
const PROJECTION_LAG_EVENTS: &str = "cairn_projection_lag_events";
const PROJECTION_LAG_SECONDS: &str = "cairn_projection_lag_seconds";
const PROJECTION_PARKED: &str = "cairn_projection_parked_events";
const QUEUE_TASKS: &str = "cairn_task_queue_tasks";
const QUARANTINED: &str = "cairn_runs_quarantined";
const BUILD_INFO: &str = "cairn_build_info";

/// The process's recorder: installed once (the first server or worker of
/// the process installs it; later ones share it).
pub struct Metrics {
    handle: PrometheusHandle,
    /// Queues seen at an earlier scrape: one gone empty reads 0, not its
    /// last depth.
    queues: Mutex<BTreeSet<String>>,
    /// The OTLP meter provider, when metrics are sent over OTLP too.
    otlp: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Metrics {
    /// The process's metrics, installing the recorder on first use (and a
    /// task that drains histograms every few seconds; call inside a Tokio
    /// runtime).
    pub fn install() -> anyhow::Result<Arc<Metrics>> {
        static ONE: OnceLock<Arc<Metrics>> = OnceLock::new();
        if let Some(m) = ONE.get() {
            return Ok(m.clone());
        }
        let prometheus = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .map_err(|e| anyhow::anyhow!("cannot set up metrics: {e}"))?
            .build_recorder();
        let handle = prometheus.handle();
        let otlp = if super::otlp::configured() { Some(super::otlp::provider()?) } else { None };
        let installed = match &otlp {
            Some(p) => metrics::set_global_recorder(
                metrics_util::layers::FanoutBuilder::default()
                    .add_recorder(prometheus)
                    .add_recorder(super::otlp::Recorder::new(p, SECONDS))
                    .build(),
            )
            .map_err(|e| e.to_string()),
            None => metrics::set_global_recorder(prometheus).map_err(|e| e.to_string()),
        };
        installed.map_err(|e| anyhow::anyhow!("cannot set up metrics: {e}"))?;
        cairn_runtime::metrics::describe();
        use metrics::{describe_gauge, gauge};
        describe_gauge!(PROJECTION_LAG_EVENTS, "Events a projection has still to apply.");
        describe_gauge!(
            PROJECTION_LAG_SECONDS,
            metrics::Unit::Seconds,
            "Age of the newest event less that of the oldest a projection has still to apply."
        );
        describe_gauge!(PROJECTION_PARKED, "Events a projection set aside (cairn projections parked).");
        describe_gauge!(QUEUE_TASKS, "Tasks on a queue, by state (offered: waiting for a worker; claimed).");
        describe_gauge!(QUARANTINED, "Runs in quarantine (cairn quarantine list).");
        describe_gauge!(BUILD_INFO, "Always 1; the version of this process.");
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let m = Arc::new(Metrics { handle, queues: Mutex::new(BTreeSet::new()), otlp });
        let m = ONE.get_or_init(|| m).clone();
        let h = m.handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP).await;
                h.run_upkeep();
            }
        });
        Ok(m)
    }

    /// The text of a scrape: the gauges read now from `store` (and the read
    /// models, when this process has them), then everything rendered.
    pub async fn scrape(&self, store: &Arc<dyn EventStore>, read: Option<&Worker>) -> String {
        self.refresh(store, read).await;
        self.handle.render()
    }

    /// When metrics go over OTLP: reads the gauges again twice per export
    /// interval until `stop`, then sends what is left (the exporter sends
    /// on its own cadence meanwhile).
    pub fn spawn_otlp(
        self: &Arc<Self>,
        store: Arc<dyn EventStore>,
        read: Option<Arc<Worker>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let provider = self.otlp.clone()?;
        let m = self.clone();
        Some(tokio::spawn(async move {
            let every = super::otlp::refresh_interval();
            loop {
                m.refresh(&store, read.as_deref()).await;
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
            m.refresh(&store, read.as_deref()).await;
            let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "cannot send the last metrics to the OTLP endpoint");
            }
        }))
    }

    /// Reads the gauges that are not counted as things happen.
    async fn refresh(&self, store: &Arc<dyn EventStore>, read: Option<&Worker>) {
        use metrics::gauge;
        if let Some(read) = read {
            match read.status().await {
                Ok(status) => {
                    for s in status {
                        gauge!(PROJECTION_LAG_EVENTS, "projection" => s.name.clone()).set(s.lag_events as f64);
                        gauge!(PROJECTION_LAG_SECONDS, "projection" => s.name.clone()).set(s.lag_seconds);
                        gauge!(PROJECTION_PARKED, "projection" => s.name).set(s.parked as f64);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read the projections' status"),
            }
        }
        match store.queue_depths().await {
            Ok(depths) => {
                let mut seen = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let mut now = BTreeSet::new();
                for d in depths {
                    gauge!(QUEUE_TASKS, "queue" => d.queue.clone(), "state" => "offered").set(d.offered as f64);
                    gauge!(QUEUE_TASKS, "queue" => d.queue.clone(), "state" => "claimed").set(d.claimed as f64);
                    now.insert(d.queue);
                }
                for gone in seen.difference(&now) {
                    gauge!(QUEUE_TASKS, "queue" => gone.clone(), "state" => "offered").set(0.0);
                    gauge!(QUEUE_TASKS, "queue" => gone.clone(), "state" => "claimed").set(0.0);
                }
                seen.extend(now);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the task queues"),
        }
        match cairn_runtime::quarantine::Ledger::read(store).await {
            Ok(l) => gauge!(QUARANTINED).set(l.quarantined.len() as f64),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the quarantine"),
        }
    }
}

/// `GET /metrics` of a server.
pub async fn get(axum::extract::State(state): axum::extract::State<Arc<super::State>>) -> axum::response::Response {
    text(state.metrics.scrape(&state.store, Some(&state.read)).await)
}

/// The Prometheus text format's response.
pub fn text(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `cairn worker --metrics-listen`: serves `GET /metrics` (and
/// `/healthz`) on `addr` until `stop`.
pub async fn serve_for_worker(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<dyn EventStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (m, s) = (metrics.clone(), store.clone());
                async move { text(m.scrape(&s, None).await) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(local)
}
