//! Prometheus metrics of one node, rendered as text on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_core::directory::OwnerDirectory;
use shoal_engine::EnginesHandle;

use crate::directory::Fetchers;
use crate::membership::ClusterView;
use crate::publisher::PublisherCounters;

/// Labels of a served HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/v1/containers/{ref}`), or `unmatched`.
    pub route: String,
    /// The HTTP method: a standard one, or `other` (see [`method_label`]).
    pub method: &'static str,
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

/// The `method` label of a request: the standard methods by name, any
/// other string `other`, so that made-up methods cannot create series.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// What the metrics read of the node when they are rendered.
pub struct NodeState<'a> {
    /// The owner directory now.
    pub directory: &'a OwnerDirectory,
    /// The membership view now.
    pub view: &'a ClusterView,
    /// The publisher's counters.
    pub publisher: &'a PublisherCounters,
    /// The directory's invalidation counters.
    pub fetchers: &'a Fetchers,
    /// The node's engines.
    pub engines: &'a EnginesHandle,
    /// Gossip packets dropped by the cluster secret check.
    pub gossip_refused: &'a AtomicU64,
    /// Peer requests refused by the cluster secret check, if there is one.
    pub peer_refused: Option<&'a AtomicU64>,
    /// The history writer, if the node keeps history.
    pub history: Option<crate::history::HistoryStatus>,
    /// The job path.
    pub jobs: &'a crate::jobs::Jobs,
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
    engine_inspect_failures: Counter,
    last_event_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    forward_seconds: Family<ForwardLabels, Histogram, fn() -> Histogram>,
    directory_copies: Gauge,
    directory_keys: Gauge,
    members: Family<MemberLabels, Gauge>,
    publishes: Counter,
    publish_failures: Counter,
    publish_stale: Counter,
    publish_snapshots: Counter,
    publish_bytes: Counter,
    publish_resyncs: Counter,
    publish_overflows: Counter,
    invalidations_sent: Counter,
    invalidation_flushes: Counter,
    gossip_refused: Counter,
    peer_refused: Counter,
    history_written: Counter,
    history_dropped: Counter,
    history_queued: Gauge,
    history_up: Gauge,
    jobs_created: Counter,
    jobs_refused_full: Counter,
    jobs_started: Counter,
    jobs_failed: Counter,
    jobs_placed_again: Counter,
    jobs_queued: Gauge,
    jobs_held: Gauge,
}

/// Labels of a forward.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// ok or error.
    pub outcome: &'static str,
}

/// Labels of the member count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// alive or dead.
    pub state: &'static str,
}

impl Metrics {
    /// Registers every metric under the `shoal_` prefix, the publisher's
    /// lag histogram included.
    pub fn new(publisher: &PublisherCounters) -> Self {
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
            engine_inspect_failures: Counter::default(),
            last_event_age: Gauge::default(),
            forward_seconds: Family::new_with_constructor(latency_histogram),
            directory_copies: Gauge::default(),
            directory_keys: Gauge::default(),
            members: Family::default(),
            publishes: Counter::default(),
            publish_failures: Counter::default(),
            publish_stale: Counter::default(),
            publish_snapshots: Counter::default(),
            publish_bytes: Counter::default(),
            publish_resyncs: Counter::default(),
            publish_overflows: Counter::default(),
            invalidations_sent: Counter::default(),
            invalidation_flushes: Counter::default(),
            gossip_refused: Counter::default(),
            peer_refused: Counter::default(),
            history_written: Counter::default(),
            history_dropped: Counter::default(),
            history_queued: Gauge::default(),
            history_up: Gauge::default(),
            jobs_created: Counter::default(),
            jobs_refused_full: Counter::default(),
            jobs_started: Counter::default(),
            jobs_failed: Counter::default(),
            jobs_placed_again: Counter::default(),
            jobs_queued: Gauge::default(),
            jobs_held: Gauge::default(),
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
            "engine_inspect_failures",
            "Inspect calls that failed without the engine saying the container is gone; \
             the last record is kept and the container re-read with backoff",
            m.engine_inspect_failures.clone(),
        );
        registry.register(
            "engine_last_event_age_seconds",
            "Seconds since the last engine event (-1: none yet)",
            m.last_event_age.clone(),
        );
        registry.register(
            "forward_duration_seconds",
            "Time of a forwarded lookup, by outcome",
            m.forward_seconds.clone(),
        );
        registry.register(
            "directory_record_copies",
            "Record copies in this node's owner directory",
            m.directory_copies.clone(),
        );
        registry.register(
            "directory_keys",
            "Keys indexed in this node's owner directory",
            m.directory_keys.clone(),
        );
        registry.register(
            "members",
            "Members by state, as this node sees them",
            m.members.clone(),
        );
        registry.register(
            "publishes",
            "Publish requests sent to owners (self included)",
            m.publishes.clone(),
        );
        registry.register(
            "publish_failures",
            "Publish requests that failed",
            m.publish_failures.clone(),
        );
        registry.register(
            "publish_stale",
            "Publishes an owner took for stale although they came from this node's live incarnation (failures too)",
            m.publish_stale.clone(),
        );
        registry.register(
            "publish_snapshots",
            "Snapshots sent to owners",
            m.publish_snapshots.clone(),
        );
        registry.register(
            "publish_bytes",
            "Bytes of publish bodies sent over HTTP",
            m.publish_bytes.clone(),
        );
        registry.register(
            "publish_resyncs",
            "Resync requests owners sent this node",
            m.publish_resyncs.clone(),
        );
        registry.register(
            "publish_overflows",
            "Messages dropped because their owner's queue was full (the owner gets a snapshot)",
            m.publish_overflows.clone(),
        );
        registry.register(
            "invalidations_sent",
            "Hot cache keys this owner told fetching nodes to drop",
            m.invalidations_sent.clone(),
        );
        registry.register(
            "invalidation_flushes",
            "Times this owner told a node to drop everything it fetched from here (a message from a source was lost, or too many keys changed at once)",
            m.invalidation_flushes.clone(),
        );
        registry.register(
            "gossip_refused",
            "Gossip packets dropped: not sealed with this node's cluster secret, or too old",
            m.gossip_refused.clone(),
        );
        registry.register(
            "peer_requests_refused",
            "Peer requests refused by the cluster secret check (401, or 503 with the nonce cache full)",
            m.peer_refused.clone(),
        );
        registry.register(
            "history_written",
            "Changes this node recorded in the history store (new to it)",
            m.history_written.clone(),
        );
        registry.register(
            "history_dropped",
            "Changes dropped because the history queue was full (the store was down or slow)",
            m.history_dropped.clone(),
        );
        registry.register(
            "history_queued",
            "Changes waiting to be written to the history store",
            m.history_queued.clone(),
        );
        registry.register(
            "history_up",
            "1 while the history store takes writes, 0 while it does not, -1 without history",
            m.history_up.clone(),
        );
        for (name, help, counter) in [
            (
                "jobs_created",
                "Jobs created with this node as their entry",
                &m.jobs_created,
            ),
            (
                "jobs_refused_full",
                "Creates refused 429 at this node because a job queue was full",
                &m.jobs_refused_full,
            ),
            (
                "jobs_started",
                "Job containers this node's workers started",
                &m.jobs_started,
            ),
            (
                "jobs_failed",
                "Jobs this node's workers failed (after their retries)",
                &m.jobs_failed,
            ),
            (
                "jobs_placed_again",
                "Jobs this node, as their owner, placed on another node after theirs left or did not take them",
                &m.jobs_placed_again,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "jobs_queued",
            "Jobs waiting for a worker on this node",
            m.jobs_queued.clone(),
        );
        registry.register(
            "jobs_held",
            "Job records this node holds as an owner or replica",
            m.jobs_held.clone(),
        );
        registry.register(
            "publish_lag_seconds",
            "From the watcher reading a change to an owner having it, per delivery",
            publisher.lag.clone(),
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

    /// Times one forward.
    pub fn observe_forward(&self, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.forward_seconds
            .get_or_create(&ForwardLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// Counts one JSON-RPC call.
    pub fn observe_rpc(&self, method: &str, ok: bool) {
        let method = match method {
            crate::answers::METHOD_GET
            | crate::answers::METHOD_LIST
            | crate::answers::METHOD_NODES
            | crate::answers::METHOD_PROJECTS
            | crate::answers::METHOD_HISTORY => method.to_owned(),
            _ => "invalid".to_owned(),
        };
        let outcome = if ok { "ok" } else { "error" };
        self.rpc_calls
            .get_or_create(&RpcLabels { method, outcome })
            .inc();
    }

    /// Renders the Prometheus text, first reading the node's state.
    pub fn render(&self, node: NodeState<'_>, now_ms: u64) -> String {
        let engines = node.engines;
        let directory = node.directory;
        self.directory_copies.set(directory.copies() as i64);
        self.directory_keys.set(directory.keys() as i64);
        let view = node.view;
        let alive = view.members.values().filter(|m| m.alive).count();
        self.members
            .get_or_create(&MemberLabels { state: "alive" })
            .set(alive as i64);
        self.members
            .get_or_create(&MemberLabels { state: "dead" })
            .set((view.members.len() - alive) as i64);
        let p = &node.publisher;
        for (counter, source) in [
            (&self.publishes, &p.publishes),
            (&self.publish_failures, &p.failures),
            (&self.publish_stale, &p.stale),
            (&self.publish_snapshots, &p.snapshots),
            (&self.publish_bytes, &p.bytes),
            (&self.publish_resyncs, &p.resyncs),
            (&self.publish_overflows, &p.overflows),
            (&self.invalidations_sent, &node.fetchers.sent),
            (&self.invalidation_flushes, &node.fetchers.flushes),
            (&self.gossip_refused, node.gossip_refused),
            (&self.jobs_created, &node.jobs.counters.created),
            (&self.jobs_refused_full, &node.jobs.counters.refused_full),
            (&self.jobs_started, &node.jobs.counters.started),
            (&self.jobs_failed, &node.jobs.counters.failed),
            (&self.jobs_placed_again, &node.jobs.counters.replaced),
            (
                &self.peer_refused,
                node.peer_refused.unwrap_or(&AtomicU64::new(0)),
            ),
        ] {
            counter
                .inner()
                .store(source.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.jobs_queued.set(node.jobs.queued() as i64);
        self.jobs_held.set(node.jobs.held() as i64);
        match &node.history {
            Some(h) => {
                self.history_written
                    .inner()
                    .store(h.written, Ordering::Relaxed);
                self.history_dropped
                    .inner()
                    .store(h.dropped, Ordering::Relaxed);
                self.history_queued.set(h.queued as i64);
                self.history_up.set(i64::from(h.up));
            }
            None => {
                self.history_up.set(-1);
            }
        }
        let status = engines.status();
        let counters = engines.counters();
        self.containers.set(engines.inventory().len() as i64);
        self.ready.set(i64::from(status.ready));
        self.engine_stale.set(i64::from(status.stale()));
        let age = status
            .last_event_ms()
            .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0)
            .unwrap_or(-1.0);
        self.last_event_age.set(age);
        for (counter, source) in [
            (&self.engine_events, counters.events),
            (&self.engine_syncs, counters.syncs),
            (&self.engine_losses, counters.engine_losses),
            (&self.engine_inspects, counters.inspects),
            (&self.engine_inspect_failures, counters.inspect_failures),
        ] {
            counter.inner().store(source, Ordering::Relaxed);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
