//! The node's history: the writer that takes what the watchers saw into
//! the store, and the answers of `/v1/history` and `?at=`.
//!
//! The watchers never wait for the store. They put each change on a
//! bounded queue (`--history-buffer`); the writer takes it off in batches
//! of up to [`BATCH`] and records each batch in one transaction. When the
//! store cannot be reached the writer keeps the batch it holds and tries
//! again with backoff while the queue fills; once full, new changes are
//! dropped and counted (`/v1/nodes`, `shoal_history_dropped_total`). When
//! the store is back, the queue drains: what was held is all there.
//!
//! With PostgreSQL every node of the fleet writes to one database, and any
//! node answers a query from it. With the embedded store each node holds
//! what its own watchers saw, and a query asks every live node (a
//! scatter-gather that names the nodes that failed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Serialize;
use shoal_core::history::Observed;
use shoal_core::wire::{HistoryFilter, HistoryReply, HistoryRequest};
use shoal_core::{ContainerRecord, NodeId};
use shoal_engine::watcher::HistorySink;
use shoal_history::{Change, HistoryError, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::answers::NodesCovered;
use crate::error::ApiError;

/// Changes the writer records in one transaction, at most.
pub const BATCH: usize = 512;

/// How the node keeps its history.
pub struct History {
    url: String,
    shared: bool,
    store: ArcSwapOption<Store>,
    sink: HistorySink,
    /// Changes recorded (new to the store).
    written: AtomicU64,
    /// Changes the writer holds while the store is down.
    held: AtomicUsize,
    last_error: std::sync::Mutex<Option<String>>,
}

/// What `/v1/nodes` says about this node's history.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct HistoryStatus {
    /// `postgres` (shared by the fleet) or `sqlite` (this node's own).
    pub backend: String,
    /// The store, without its password.
    pub store: String,
    /// True while the last write (or connection) succeeded.
    pub up: bool,
    /// Changes recorded since the node started.
    pub written: u64,
    /// Changes waiting to be written.
    pub queued: usize,
    /// Changes dropped because the queue was full while the store was
    /// down or slow.
    pub dropped: u64,
    /// Why the store cannot be written to, while it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl History {
    /// The history kept at `url` with a queue of `buffer` changes; the
    /// watchers' end of the queue, and the writer's.
    pub fn new(url: &str, buffer: usize) -> (Arc<History>, mpsc::Receiver<Observed>) {
        let (sink, rx) = HistorySink::channel(buffer);
        let history = History {
            url: url.to_owned(),
            shared: url.starts_with("postgres://") || url.starts_with("postgresql://"),
            store: ArcSwapOption::empty(),
            sink,
            written: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            last_error: std::sync::Mutex::new(Some("not connected yet".into())),
        };
        (Arc::new(history), rx)
    }

    /// Where the watchers send their changes.
    pub fn sink(&self) -> HistorySink {
        self.sink.clone()
    }

    /// True when every node writes to this one store (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The store, once connected.
    pub fn store(&self) -> Result<Arc<Store>, ApiError> {
        self.store.load_full().ok_or_else(|| {
            ApiError::Unavailable(format!(
                "the history store {} is not reachable: {}",
                shoal_history::redacted(&self.url),
                self.error().unwrap_or_else(|| "not connected yet".into())
            ))
        })
    }

    fn error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Changes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }

    /// What `/v1/nodes` and the metrics show.
    pub fn status(&self) -> HistoryStatus {
        let error = self.error();
        HistoryStatus {
            backend: if self.shared { "postgres" } else { "sqlite" }.to_owned(),
            store: shoal_history::redacted(&self.url),
            up: error.is_none(),
            written: self.written.load(Ordering::Relaxed),
            queued: self.sink.queued() + self.held.load(Ordering::Relaxed),
            dropped: self.sink.dropped(),
            error,
        }
    }
}

/// Connects (and migrates, if asked), then writes what the watchers send
/// until `stop`; then writes what is left, for up to `flush` longer.
pub async fn run_writer(
    history: Arc<History>,
    mut rx: mpsc::Receiver<Observed>,
    node: NodeId,
    migrate: bool,
    flush: Duration,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let store = loop {
        let connected = async {
            let store = Store::connect(&history.url).await?;
            if migrate {
                let version = store.migrate().await?;
                info!(store = %shoal_history::redacted(&history.url), version, "history schema up to date");
            }
            Ok::<_, HistoryError>(store)
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = connected => r,
        };
        match result {
            Ok(store) => break Arc::new(store),
            Err(e) => {
                warn!(store = %shoal_history::redacted(&history.url), error = %e, retry_in = ?backoff,
                      "history store not reachable; lookups go on, changes queue");
                history.set_error(Some(e.to_string()));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    history.store.store(Some(store.clone()));
    history.set_error(None);
    let mut batch: Vec<Observed> = Vec::with_capacity(BATCH);
    let mut deadline = None;
    loop {
        if batch.is_empty() {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = stop.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + flush);
                    rx.close();
                    continue;
                }
            };
            if n == 0 {
                return;
            }
        }
        let changes: Vec<Change> = batch.iter().map(|o| Change::observed(o, &node)).collect();
        history.held.store(changes.len(), Ordering::Relaxed);
        match store.record(&changes).await {
            Ok(new) => {
                history.written.fetch_add(new, Ordering::Relaxed);
                history.held.store(0, Ordering::Relaxed);
                if history.error().is_some() {
                    info!(store = %shoal_history::redacted(&history.url), "history store back; catching up");
                    history.set_error(None);
                }
                batch.clear();
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                if history.error().is_none() {
                    warn!(store = %shoal_history::redacted(&history.url), error = %e,
                          "history write failed; holding the changes and retrying");
                }
                history.set_error(Some(e.to_string()));
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    warn!(
                        held = batch.len() + rx.len(),
                        "stopping with history changes unwritten"
                    );
                    return;
                }
                let wait = tokio::time::sleep(backoff);
                tokio::select! {
                    _ = wait => {}
                    _ = stop.cancelled(), if deadline.is_none() => {
                        deadline = Some(tokio::time::Instant::now() + flush);
                        rx.close();
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) && !batch.is_empty() {
            return;
        }
    }
}

/// One change as `/v1/history` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeView {
    /// What happened.
    pub kind: String,
    /// When (RFC 3339).
    pub at: String,
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// The node that recorded it.
    pub node: NodeId,
    /// The container's ID.
    pub container_id: String,
    /// Its name then.
    pub name: String,
    /// A stop's exit code, when the engine said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The network, the health status or the old name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The record as it was after the change.
    pub record: ContainerRecord,
}

/// The answer to `GET /v1/history`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryAnswer {
    /// The changes, oldest first: one page.
    pub changes: Vec<ChangeView>,
    /// The `cursor` of the next page, when more remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// `postgres` (the fleet's one store) or `nodes` (each node's own).
    pub source: &'static str,
    /// Which nodes answered (with `nodes`).
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
}

/// One container as it was at a time.
#[derive(Clone, Debug, Serialize)]
pub struct PastRecord {
    /// The record as its last change before the time left it.
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// That change.
    pub change: String,
    /// When it happened (RFC 3339).
    pub changed_at: String,
}

/// The answer to `GET /v1/containers/{ref}?at=`.
#[derive(Clone, Debug, Serialize)]
pub struct PastAnswer {
    /// The time asked about (RFC 3339).
    pub at: String,
    /// Every container the key matched then.
    pub containers: Vec<PastRecord>,
    /// See [`HistoryAnswer::source`].
    pub source: &'static str,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
}

/// ms since the epoch as RFC 3339 (UTC, ms).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Reads a time a person gave: RFC 3339, or ms since the epoch.
pub fn parse_time(name: &str, s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    shoal_core::history::parse_time_ms(s).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name} {:?} is not a time: give RFC 3339 (2026-12-01T02:14:00Z) or ms since the epoch",
            s.chars().take(64).collect::<String>()
        ))
    })
}

fn store_error(e: HistoryError) -> ApiError {
    match e {
        HistoryError::BadQuery(m) => ApiError::BadRequest(m),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// Answers a peer's (or this node's own) request from this node's store.
pub async fn answer_locally(
    history: &History,
    request: &HistoryRequest,
) -> Result<HistoryReply, ApiError> {
    let store = history.store()?;
    match request {
        HistoryRequest::Changes(f) => {
            let page = store.query(f).await.map_err(store_error)?;
            Ok(HistoryReply {
                changes: page.changes,
                next: page.next,
            })
        }
        HistoryRequest::AsOf { key, at_ms } => {
            let changes = store.as_of(key, *at_ms).await.map_err(store_error)?;
            Ok(HistoryReply {
                changes,
                next: None,
            })
        }
    }
}

/// What each node answered, merged: changes in the stores' one order,
/// each once.
pub fn merge_changes(answers: Vec<HistoryReply>, limit: usize) -> (Vec<Change>, Option<String>) {
    let mut more = false;
    let mut all: Vec<Change> = Vec::new();
    for a in answers {
        more |= a.next.is_some();
        all.extend(a.changes);
    }
    all.sort_by(|a, b| shoal_history::order_key(a).cmp(&shoal_history::order_key(b)));
    all.dedup_by(|a, b| shoal_history::order_key(a) == shoal_history::order_key(b));
    if all.len() > limit {
        all.truncate(limit);
        more = true;
    }
    let next = if more {
        all.last().map(shoal_history::cursor_after)
    } else {
        None
    };
    (all, next)
}

/// Each container's latest state at the time, once, from every node's
/// answer.
pub fn merge_past(answers: Vec<HistoryReply>) -> Vec<PastRecord> {
    let mut latest: std::collections::BTreeMap<(String, String), Change> = Default::default();
    for c in answers.into_iter().flat_map(|a| a.changes) {
        let k = (c.record.engine_id.0.clone(), c.record.id.clone());
        match latest.get(&k) {
            Some(held) if held.at_ms >= c.at_ms => {}
            _ => {
                latest.insert(k, c);
            }
        }
    }
    latest
        .into_values()
        .map(|c| PastRecord {
            change: c.kind.as_str().to_owned(),
            changed_at: rfc3339_ms(c.at_ms),
            record: c.record,
        })
        .collect()
}

/// Shows a change.
pub fn view(c: Change) -> ChangeView {
    ChangeView {
        kind: c.kind.as_str().to_owned(),
        at: rfc3339_ms(c.at_ms),
        at_ms: c.at_ms,
        node: c.node,
        container_id: c.record.id.clone(),
        name: c.record.primary_name().to_owned(),
        exit_code: c.exit_code,
        detail: c.detail,
        record: c.record,
    }
}

/// Reads `/v1/history`'s query (and `History.Query`'s params).
pub fn read_filter<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HistoryFilter, ApiError> {
    let mut f = HistoryFilter {
        limit: 100,
        ..HistoryFilter::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in pairs {
        if !seen.insert(k.to_owned()) {
            return Err(ApiError::BadRequest(format!("{k} is given more than once")));
        }
        if v.is_empty() || v.len() > 1024 {
            return Err(ApiError::BadRequest(format!(
                "{k} must be 1 to 1024 bytes long"
            )));
        }
        let slot = match k {
            "name" => &mut f.name,
            "id" => {
                if !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::BadRequest(format!(
                        "id {:?} is not an ID prefix (hex)",
                        v.chars().take(64).collect::<String>()
                    )));
                }
                &mut f.id
            }
            "ip" => {
                let ip: std::net::IpAddr = v.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "ip {:?} is not an IP address",
                        v.chars().take(64).collect::<String>()
                    ))
                })?;
                f.ip = Some(ip.to_string());
                continue;
            }
            "project" => &mut f.project,
            "node" => &mut f.node,
            "label" => &mut f.label,
            "cursor" => {
                shoal_history::check_cursor(v).map_err(store_error)?;
                &mut f.cursor
            }
            "since" => {
                f.since_ms = Some(parse_time("since", v)?);
                continue;
            }
            "until" => {
                f.until_ms = Some(parse_time("until", v)?);
                continue;
            }
            "limit" => {
                f.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=shoal_core::wire::MAX_HISTORY as u32).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit {:?} is not a number from 1 to {}",
                            v.chars().take(64).collect::<String>(),
                            shoal_core::wire::MAX_HISTORY
                        ))
                    })?;
                continue;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {:?}: /v1/history takes name, id, ip, project, node, label, since, until, limit and cursor",
                    other.chars().take(64).collect::<String>()
                )));
            }
        };
        *slot = Some(v.to_owned());
    }
    Ok(f)
}
