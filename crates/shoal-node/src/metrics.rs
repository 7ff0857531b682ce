//! Prometheus metrics of one node, rendered as text on `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_engine::WatcherHandle;

/// Labels of a served HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/v1/containers/{ref}`), or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// Labels of a lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// hot, owner, forwarded or fallback.
    pub path: &'static str,
    /// found or not_found.
    pub result: &'static str,
}

/// Labels of a JSON-RPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The method, or `invalid` for calls that named none.
    pub method: String,
    /// ok or error.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    lookups: Family<LookupLabels, Counter>,
    rpc_calls: Family<RpcLabels, Counter>,
    containers: Gauge,
    ready: Gauge,
    engine_stale: Gauge,
    engine_events: Counter,
    engine_syncs: Counter,
    engine_losses: Counter,
    engine_inspects: Counter,
    last_event_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `shoal_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            lookups: Family::default(),
            rpc_calls: Family::default(),
            containers: Gauge::default(),
            ready: Gauge::default(),
            engine_stale: Gauge::default(),
            engine_events: Counter::default(),
            engine_syncs: Counter::default(),
            engine_losses: Counter::default(),
            engine_inspects: Counter::default(),
            last_event_age: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests served", m.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            m.request_seconds.clone(),
        );
        registry.register("lookups", "Lookups by path and result", m.lookups.clone());
        registry.register(
            "jsonrpc_calls",
            "JSON-RPC calls by method and outcome",
            m.rpc_calls.clone(),
        );
        registry.register(
            "local_containers",
            "Live containers on this node's engine",
            m.containers.clone(),
        );
        registry.register(
            "ready",
            "1 once the first engine sync is done",
            m.ready.clone(),
        );
        registry.register(
            "engine_stale",
            "1 while the engine is lost and the inventory is the last one read",
            m.engine_stale.clone(),
        );
        registry.register(
            "engine_events",
            "Engine events applied",
            m.engine_events.clone(),
        );
        registry.register(
            "engine_syncs",
            "Full engine syncs (first, reconnect, periodic)",
            m.engine_syncs.clone(),
        );
        registry.register(
            "engine_losses",
            "Times the engine was lost",
            m.engine_losses.clone(),
        );
        registry.register(
            "engine_inspects",
            "Inspect calls made to the engine",
            m.engine_inspects.clone(),
        );
        registry.register(
            "engine_last_event_age_seconds",
            "Seconds since the last engine event (-1: none yet)",
            m.last_event_age.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one served request.
    pub fn observe_request(&self, labels: RequestLabels, took: Duration) {
        self.request_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts one lookup.
    pub fn observe_lookup(&self, path: &'static str, found: bool) {
        let result = if found { "found" } else { "not_found" };
        self.lookups
            .get_or_create(&LookupLabels { path, result })
            .inc();
    }

    /// Counts one JSON-RPC call.
    pub fn observe_rpc(&self, method: &str, ok: bool) {
        let method = match method {
            crate::jrpc::METHOD_GET
            | crate::jrpc::METHOD_LIST
            | crate::jrpc::METHOD_NODES
            | crate::jrpc::METHOD_PROJECTS => method.to_owned(),
            _ => "invalid".to_owned(),
        };
        let outcome = if ok { "ok" } else { "error" };
        self.rpc_calls
            .get_or_create(&RpcLabels { method, outcome })
            .inc();
    }

    /// Renders the Prometheus text, first reading the watcher's state.
    pub fn render(&self, watcher: &WatcherHandle, now_ms: u64) -> String {
        let status = watcher.status();
        let counters = watcher.counters();
        self.containers.set(watcher.inventory().len() as i64);
        self.ready.set(i64::from(status.ready));
        self.engine_stale.set(i64::from(status.stale));
        let age = status
            .last_event_ms
            .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0)
            .unwrap_or(-1.0);
        self.last_event_age.set(age);
        for (counter, source) in [
            (&self.engine_events, &counters.events),
            (&self.engine_syncs, &counters.syncs),
            (&self.engine_losses, &counters.engine_losses),
            (&self.engine_inspects, &counters.inspects),
        ] {
            counter
                .inner()
                .store(source.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
