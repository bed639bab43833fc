//! The engine's metrics over OTLP, when configured: a `metrics` recorder
//! that feeds an OpenTelemetry meter (the standard SDK's meter provider and
//! OTLP exporter), beside the Prometheus one. The names and labels are the
//! ones `/metrics` shows (labels become attributes; a counter keeps its
//! `_total`), so one set of dashboards and alerts reads either. Counters
//! are cumulative, as Prometheus' are. See docs/operations.md "Metrics".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// Whether metrics are sent over OTLP: an endpoint is configured
/// (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`)
/// and `OTEL_METRICS_EXPORTER` does not say `none`.
pub fn configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
}

/// The meter provider the environment describes: the OTLP metric exporter
/// (`OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`, `_HEADERS`, `_TIMEOUT`,
/// `_PROTOCOL`), read every `OTEL_METRIC_EXPORT_INTERVAL` ms (default
/// 60 000) on the Tokio runtime (call inside one); the same resource as the
/// traces, with a `service.instance.id` of this process so the series of two
/// processes never merge.
pub fn provider() -> anyhow::Result<SdkMeterProvider> {
    use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig as _, WithHttpConfig as _};
    let protocol = crate::telemetry::protocol("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL");
    let exporter = match protocol.as_str() {
        "grpc" => MetricExporter::builder().with_tonic().with_protocol(Protocol::Grpc).build(),
        "http/json" => MetricExporter::builder()
            .with_http()
            .with_http_client(cairn_runtime::http_client())
            .with_protocol(Protocol::HttpJson)
            .build(),
        "http/protobuf" => MetricExporter::builder()
            .with_http()
            .with_http_client(cairn_runtime::http_client())
            .with_protocol(Protocol::HttpBinary)
            .build(),
        other => anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other}: use grpc, http/protobuf or http/json"),
    }
    .map_err(|e| anyhow::anyhow!("cannot set up the OTLP metric exporter: {e}"))?;
    let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    tracing::info!(protocol = %protocol, "exporting metrics over OTLP");
    Ok(SdkMeterProvider::builder().with_reader(reader).with_resource(crate::telemetry::resource(true)).build())
}

/// How often the exported gauges are read again: twice per export interval,
/// so what is sent is at most half an interval old.
pub fn refresh_interval() -> std::time::Duration {
    let ms = std::env::var("OTEL_METRIC_EXPORT_INTERVAL").ok().and_then(|v| v.trim().parse::<u64>().ok());
    std::time::Duration::from_millis((ms.unwrap_or(60_000) / 2).max(100))
}

/// The recorder feeding `provider`'s meter.
pub struct Recorder {
    meter: Meter,
    /// Histogram bucket bounds of the names that end in `_seconds`.
    seconds: Vec<f64>,
    /// Descriptions and units given before an instrument is made.
    described: Mutex<HashMap<String, (Option<Unit>, String)>>,
    counters: Mutex<HashMap<Key, Arc<OtelCounter>>>,
    gauges: Mutex<HashMap<Key, Arc<OtelGauge>>>,
    histograms: Mutex<HashMap<Key, Arc<OtelHistogram>>>,
    /// The instruments, one per name.
    instruments: Mutex<Instruments>,
}

#[derive(Default)]
struct Instruments {
    counters: HashMap<String, opentelemetry::metrics::Counter<u64>>,
    gauges: HashMap<String, opentelemetry::metrics::Gauge<f64>>,
    histograms: HashMap<String, opentelemetry::metrics::Histogram<f64>>,
}

impl Recorder {
    /// A recorder on `provider`'s meter `cairn`.
    pub fn new(provider: &SdkMeterProvider, seconds: &[f64]) -> Recorder {
        Recorder {
            meter: provider.meter("cairn"),
            seconds: seconds.to_vec(),
            described: Mutex::default(),
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
            instruments: Mutex::default(),
        }
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        lock(&self.described).insert(key.as_str().to_owned(), (unit, description.into_owned()));
    }

    /// The description and OTel unit of `name` (as described, if it was).
    fn about(&self, name: &str) -> (String, Option<String>) {
        match lock(&self.described).get(name) {
            Some((unit, d)) => (d.clone(), unit.map(|u| otel_unit(u).to_owned())),
            None => (String::new(), None),
        }
    }

    fn counter(&self, name: &str) -> opentelemetry::metrics::Counter<u64> {
        let (description, unit) = self.about(name);
        let mut i = lock(&self.instruments);
        i.counters
            .entry(name.to_owned())
            .or_insert_with(|| {
                let b = self.meter.u64_counter(name.to_owned()).with_description(description);
                match unit {
                    Some(u) => b.with_unit(u).build(),
                    None => b.build(),
                }
            })
            .clone()
    }

    fn gauge(&self, name: &str) -> opentelemetry::metrics::Gauge<f64> {
        let (description, unit) = self.about(name);
        let mut i = lock(&self.instruments);
        i.gauges
            .entry(name.to_owned())
            .or_insert_with(|| {
                let b = self.meter.f64_gauge(name.to_owned()).with_description(description);
                match unit {
                    Some(u) => b.with_unit(u).build(),
                    None => b.build(),
                }
            })
            .clone()
    }

    fn histogram(&self, name: &str) -> opentelemetry::metrics::Histogram<f64> {
        let (description, unit) = self.about(name);
        let mut i = lock(&self.instruments);
        i.histograms
            .entry(name.to_owned())
            .or_insert_with(|| {
                let mut b = self.meter.f64_histogram(name.to_owned()).with_description(description);
                if name.ends_with("_seconds") {
                    b = b.with_boundaries(self.seconds.clone());
                }
                match unit {
                    Some(u) => b.with_unit(u).build(),
                    None => b.build(),
                }
            })
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The UCUM unit OpenTelemetry expects.
fn otel_unit(u: Unit) -> &'static str {
    match u {
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Bytes => "By",
        Unit::Percent => "%",
        _ => "1",
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels().map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned())).collect()
}

struct OtelCounter {
    counter: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
    /// The last absolute value set (a counter only adds).
    last: AtomicU64,
}

impl CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.last.fetch_add(value, Ordering::Relaxed);
        self.counter.add(value, &self.attributes);
    }

    fn absolute(&self, value: u64) {
        let before = self.last.fetch_max(value, Ordering::Relaxed);
        if value > before {
            self.counter.add(value - before, &self.attributes);
        }
    }
}

struct OtelGauge {
    gauge: opentelemetry::metrics::Gauge<f64>,
    attributes: Vec<KeyValue>,
    value: Mutex<f64>,
}

impl OtelGauge {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut v = lock(&self.value);
        *v = f(*v);
        self.gauge.record(*v, &self.attributes);
    }
}

impl GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct OtelHistogram {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.histogram.record(value, &self.attributes);
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if let Some(c) = lock(&self.counters).get(key) {
            return Counter::from_arc(c.clone());
        }
        let c = Arc::new(OtelCounter {
            counter: self.counter(key.name()),
            attributes: attributes(key),
            last: AtomicU64::new(0),
        });
        Counter::from_arc(lock(&self.counters).entry(key.clone()).or_insert(c).clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if let Some(g) = lock(&self.gauges).get(key) {
            return Gauge::from_arc(g.clone());
        }
        let g =
            Arc::new(OtelGauge { gauge: self.gauge(key.name()), attributes: attributes(key), value: Mutex::new(0.0) });
        Gauge::from_arc(lock(&self.gauges).entry(key.clone()).or_insert(g).clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if let Some(h) = lock(&self.histograms).get(key) {
            return Histogram::from_arc(h.clone());
        }
        let h = Arc::new(OtelHistogram { histogram: self.histogram(key.name()), attributes: attributes(key) });
        Histogram::from_arc(lock(&self.histograms).entry(key.clone()).or_insert(h).clone())
    }
}
