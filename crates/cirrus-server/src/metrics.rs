//! Prometheus metrics (`GET /metrics`, OpenMetrics text). Families are updated where
//! the thing happens (the invoker); gauges of current state are read at scrape time.

use cirrus_api::{InvocationRecord, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Every metric name Cirrus exports (without the `_total`/`_bucket` suffixes the format
/// adds); a test proves each moves.
pub const NAMES: &[&str] = &[
    "cirrus_invocations",
    "cirrus_invocation_duration_seconds",
    "cirrus_cold_start_seconds",
    "cirrus_invocation_cpu_seconds",
    "cirrus_invocation_peak_memory_bytes",
    "cirrus_throttled",
    "cirrus_in_flight",
    "cirrus_loaded_versions",
    "cirrus_process_resident_memory_bytes",
    "cirrus_queued_events",
    "cirrus_dead_letter_events",
    "cirrus_event_retries",
];

/// The metrics of triggers that hold a connection (broker subscriptions); they exist
/// only while such a trigger does, and the event-source tests prove they move.
pub const SOURCE_NAMES: &[&str] = &["cirrus_trigger_messages", "cirrus_trigger_connected"];

/// A trigger that holds a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub function: String,
    pub trigger: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    function: String,
    outcome: String,
    start: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

type HistogramFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    invocations: Family<InvocationLabels, Counter>,
    duration: HistogramFamily,
    cold_start: HistogramFamily,
    cpu: Family<FunctionLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    peak_memory: HistogramFamily,
    throttled: Family<FunctionLabels, Counter>,
    in_flight: Gauge,
    loaded: Gauge,
    resident: Gauge<i64, std::sync::atomic::AtomicI64>,
    environments: Gauge,
    started: Counter,
    reused: Counter,
    retired: Counter,
    budget: Gauge<i64, std::sync::atomic::AtomicI64>,
    budget_used: Gauge<i64, std::sync::atomic::AtomicI64>,
    queued: Gauge,
    dead: Gauge,
    retries: Family<FunctionLabels, Counter>,
    source_messages: Family<TriggerLabels, Counter>,
    source_connected: Family<TriggerLabels, Gauge>,
    /// Each function's handles into the families above.
    handles: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<FunctionHandles>>>,
}

/// Clones of one function's own counters and histograms in the families, so that an
/// invocation hashes no label set and clones no label string (a family lookup does
/// both). Made on the function's first invocation, which moves all but the warm-success
/// counter; that one is made on the first warm success, so no series appears before it
/// has a sample.
struct FunctionHandles {
    warm_successes: std::sync::OnceLock<Counter>,
    duration: Histogram,
    cpu: Counter<f64, AtomicU64>,
    peak_memory: Histogram,
}

/// 50 µs to ~26 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// 64 KiB to 4 GiB, quadrupling.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(65_536.0, 4.0, 9))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<InvocationLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        let cold_start: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        let cpu = Family::<FunctionLabels, Counter<f64, AtomicU64>>::default();
        let peak_memory: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        let throttled = Family::<FunctionLabels, Counter>::default();
        let in_flight = Gauge::default();
        let loaded = Gauge::default();
        let resident = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let queued = Gauge::default();
        let dead = Gauge::default();
        let environments = Gauge::default();
        let (started, reused, retired) =
            (Counter::default(), Counter::default(), Counter::default());
        let budget = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let budget_used = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "cirrus_environments",
            "Execution environments alive now, busy or idle",
            environments.clone(),
        );
        registry.register(
            "cirrus_environments_started",
            "Execution environments started (cold starts and ones started ahead of demand)",
            started.clone(),
        );
        registry.register(
            "cirrus_environments_reused",
            "Invocations served by an environment that already existed (warm starts)",
            reused.clone(),
        );
        registry.register(
            "cirrus_environments_retired",
            "Execution environments retired (idle, used up, faulty, or to make room)",
            retired.clone(),
        );
        registry.register(
            "cirrus_memory_budget_bytes",
            "Linear memory all environments together may hold",
            budget.clone(),
        );
        registry.register(
            "cirrus_memory_budget_used_bytes",
            "Linear memory environments hold now",
            budget_used.clone(),
        );
        let retries = Family::<FunctionLabels, Counter>::default();
        let source_messages = Family::<TriggerLabels, Counter>::default();
        let source_connected = Family::<TriggerLabels, Gauge>::default();
        registry.register(
            "cirrus_trigger_messages",
            "Messages a trigger turned into durable events",
            source_messages.clone(),
        );
        registry.register(
            "cirrus_trigger_connected",
            "Whether a trigger's connection (a broker subscription) is up",
            source_connected.clone(),
        );
        registry.register(
            "cirrus_queued_events",
            "Asynchronous events waiting or being delivered",
            queued.clone(),
        );
        registry.register(
            "cirrus_dead_letter_events",
            "Events in the dead-letter queue",
            dead.clone(),
        );
        registry.register(
            "cirrus_event_retries",
            "Failed event attempts scheduled for a retry",
            retries.clone(),
        );
        registry.register(
            "cirrus_invocations",
            "Invocations by function, outcome and cold/warm start",
            invocations.clone(),
        );
        registry.register(
            "cirrus_invocation_duration_seconds",
            "Wall time of invocations (instantiation and run)",
            duration.clone(),
        );
        registry.register(
            "cirrus_cold_start_seconds",
            "Time spent loading a version on cold starts",
            cold_start.clone(),
        );
        registry.register(
            "cirrus_invocation_cpu_seconds",
            "CPU time spent by invocations",
            cpu.clone(),
        );
        registry.register(
            "cirrus_invocation_peak_memory_bytes",
            "Peak linear memory of invocations",
            peak_memory.clone(),
        );
        registry.register(
            "cirrus_throttled",
            "Requests refused with 429 by a concurrency cap",
            throttled.clone(),
        );
        registry.register(
            "cirrus_in_flight",
            "Invocations running now",
            in_flight.clone(),
        );
        registry.register(
            "cirrus_loaded_versions",
            "Function versions loaded (warm) now",
            loaded.clone(),
        );
        registry.register(
            "cirrus_process_resident_memory_bytes",
            "Resident memory of the server process",
            resident.clone(),
        );
        Self {
            registry,
            invocations,
            duration,
            cold_start,
            cpu,
            peak_memory,
            throttled,
            in_flight,
            loaded,
            resident,
            environments,
            started,
            reused,
            retired,
            budget,
            budget_used,
            queued,
            dead,
            retries,
            source_messages,
            source_connected,
            handles: Default::default(),
        }
    }

    /// A trigger turned a message into a durable event.
    pub fn source_message(&self, trigger: &TriggerLabels) {
        self.source_messages.get_or_create(trigger).inc();
    }

    pub fn source_connected(&self, trigger: &TriggerLabels, connected: bool) {
        self.source_connected
            .get_or_create(trigger)
            .set(i64::from(connected));
    }

    /// The trigger is gone: so are its series.
    pub fn source_removed(&self, trigger: &TriggerLabels) {
        self.source_messages.remove(trigger);
        self.source_connected.remove(trigger);
    }

    /// Called once per recorded invocation.
    pub fn observe(&self, r: &InvocationRecord) {
        let handles = self.handles(&r.function);
        let invocations = |outcome: &str, start: &str| {
            self.invocations
                .get_or_create(&InvocationLabels {
                    function: r.function.clone(),
                    outcome: outcome.into(),
                    start: start.into(),
                })
                .clone()
        };
        match (&r.outcome, r.cold_start) {
            (Outcome::Success, false) => handles
                .warm_successes
                .get_or_init(|| invocations("success", "warm"))
                .inc(),
            (Outcome::Success, true) => invocations("success", "cold").inc(),
            (Outcome::Error, cold) => invocations(
                r.error_code.as_deref().unwrap_or("error"),
                if cold { "cold" } else { "warm" },
            )
            .inc(),
        };
        handles.duration.observe(r.duration_ms / 1000.0);
        if let Some(init) = r.init_ms {
            self.cold_start
                .get_or_create(&FunctionLabels {
                    function: r.function.clone(),
                })
                .observe(init / 1000.0);
        }
        handles.cpu.inc_by(r.cpu_ms / 1000.0);
        handles.peak_memory.observe(r.peak_memory_bytes as f64);
    }

    fn handles(&self, function: &str) -> std::sync::Arc<FunctionHandles> {
        let cached = self
            .handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
            .cloned();
        if let Some(handles) = cached {
            return handles;
        }
        let labels = FunctionLabels {
            function: function.to_owned(),
        };
        let handles = std::sync::Arc::new(FunctionHandles {
            warm_successes: std::sync::OnceLock::new(),
            duration: self.duration.get_or_create(&labels).clone(),
            cpu: self.cpu.get_or_create(&labels).clone(),
            peak_memory: self.peak_memory.get_or_create(&labels).clone(),
        });
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(function.to_owned())
            .or_insert(handles)
            .clone()
    }

    pub fn retried(&self, function: &str) {
        self.retries
            .get_or_create(&FunctionLabels {
                function: function.to_owned(),
            })
            .inc();
    }

    pub fn throttled(&self, function: &str) {
        self.throttled
            .get_or_create(&FunctionLabels {
                function: function.to_owned(),
            })
            .inc();
    }

    /// The exposition, with current-state gauges refreshed first.
    pub fn render(&self, now: &Live, (queued, dead): (u64, u64)) -> String {
        self.in_flight.set(now.in_flight as i64);
        self.loaded.set(now.loaded as i64);
        self.environments.set(now.environments as i64);
        let catch_up = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.started, now.started);
        catch_up(&self.reused, now.reused);
        catch_up(&self.retired, now.retired);
        self.budget.set(now.budget_bytes as i64);
        self.budget_used.set(now.budget_used_bytes as i64);
        self.queued.set(queued as i64);
        self.dead.set(dead as i64);
        self.resident.set(resident_bytes());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the scaler knows now, for the gauges (counters are totals since start-up).
#[derive(Debug, Default)]
pub struct Live {
    pub in_flight: usize,
    pub loaded: usize,
    pub environments: usize,
    pub started: u64,
    pub reused: u64,
    pub retired: u64,
    pub budget_bytes: u64,
    pub budget_used_bytes: u64,
}

/// Resident set size from /proc (0 where that is not available).
fn resident_bytes() -> i64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
        })
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirrus_api::Trigger;

    fn record(function: &str, outcome: Outcome, cold: bool) -> InvocationRecord {
        InvocationRecord {
            request_id: "r".into(),
            function: function.into(),
            version: 1,
            trigger: Trigger::Http,
            attempt: 1,
            parent_request_id: None,
            started_at: "2026-12-07T00:00:00.000Z".into(),
            duration_ms: 2.0,
            billed_ms: 2,
            init_ms: cold.then_some(1.0),
            memory_mb: 128,
            peak_memory_bytes: 1 << 20,
            cpu_ms: 1.5,
            request_bytes: 0,
            response_bytes: 0,
            cold_start: cold,
            trace_id: "t".into(),
            span_id: "s".into(),
            parent_span_id: None,
            outcome,
            status: 200,
            error_code: (outcome == Outcome::Error).then(|| "timeout".into()),
            error_message: None,
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    /// Warm successes count through a cached handle, the rest through the family: both
    /// must land in the same series.
    #[test]
    fn warm_and_other_invocations_count_in_the_same_series() {
        let metrics = Metrics::new();
        metrics.observe(&record("f", Outcome::Success, true));
        let text = metrics.render(&Live::default(), (0, 0));
        assert!(
            line(
                &text,
                "cirrus_invocations_total{function=\"f\",outcome=\"success\",start=\"warm\"}"
            )
            .is_none(),
            "no warm series before a warm call: {text}"
        );
        for _ in 0..3 {
            metrics.observe(&record("f", Outcome::Success, false));
        }
        metrics.observe(&record("f", Outcome::Error, false));
        metrics.observe(&record("g", Outcome::Success, false));
        let text = metrics.render(&Live::default(), (0, 0));
        let value = |prefix: &str| {
            line(&text, prefix)
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            value("cirrus_invocations_total{function=\"f\",outcome=\"success\",start=\"warm\"}"),
            "3"
        );
        assert_eq!(
            value("cirrus_invocations_total{function=\"f\",outcome=\"success\",start=\"cold\"}"),
            "1"
        );
        assert_eq!(
            value("cirrus_invocations_total{function=\"f\",outcome=\"timeout\",start=\"warm\"}"),
            "1"
        );
        assert_eq!(
            value("cirrus_invocations_total{function=\"g\",outcome=\"success\",start=\"warm\"}"),
            "1"
        );
        assert_eq!(
            value("cirrus_invocation_duration_seconds_count{function=\"f\"}"),
            "5"
        );
        assert_eq!(
            value("cirrus_invocation_peak_memory_bytes_count{function=\"f\"}"),
            "5"
        );
        assert_eq!(
            value("cirrus_cold_start_seconds_count{function=\"f\"}"),
            "1"
        );
        assert_eq!(
            value("cirrus_invocation_cpu_seconds_total{function=\"f\"}"),
            "0.0075"
        );
    }
}
