//! The `Watcher`: turns an engine into a correct, live local inventory and a
//! stream of deltas.
//!
//! 1. Subscribe to events first, then list and inspect, then apply the
//!    events that arrived meanwhile: nothing falls between list and
//!    subscribe.
//! 2. Every container event (and network connect/disconnect, which names a
//!    container) re-reads that container: the inventory holds what the
//!    engine says now, whatever order events came in.
//! 3. When the engine goes away the last inventory stays, marked stale
//!    with the time it was lost (what to do about a long loss is the
//!    node's business); the watcher reconnects with capped, jittered
//!    exponential backoff that never gives up, builds a whole new inventory
//!    and only then swaps it in (make-before-break), publishing the
//!    difference.
//! 4. A full list every `resync_interval` repairs what dropped events left
//!    wrong.
//! 5. Only the engine saying a container is gone takes it out. An inspect
//!    that fails otherwise (an HTTP 500, a body that cannot be decoded)
//!    keeps the last record and re-reads that container with capped
//!    exponential backoff until the engine answers: a hiccup in one call
//!    must not remove a live container from the fleet.
//!
//! Readers get an immutable snapshot (`WatcherHandle::inventory`) without a
//! lock; the watcher task is the only writer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use shoal_core::history::{self, Observed};
use shoal_core::{ContainerRecord, Delta, EngineId, Inventory, NodeId};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::engine::{Engine, EngineError, EngineEvent, EngineIdentity, EventStream};

/// How the watcher behaves; every limit has a documented default.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// The node stamped on every record.
    pub node: NodeId,
    /// How often to reconcile with a full list (default 60 s); zero for
    /// never on its own, only when asked ([`WatcherHandle::resync`], the
    /// node's scheduler).
    pub resync_interval: Duration,
    /// First reconnect delay, and first re-read delay of a container whose
    /// inspect failed (default 100 ms); it doubles per failure.
    pub backoff_initial: Duration,
    /// Longest reconnect or re-read delay (default 10 s).
    pub backoff_max: Duration,
    /// Inspect calls in flight at once (default 16).
    pub inspect_concurrency: usize,
    /// Events taken off the queue and applied as one batch (default 512).
    pub event_batch: usize,
    /// Events queued between the engine's stream and the watcher (default
    /// 16384); when full the stream waits, and the engine may drop us, which
    /// is a reconnect.
    pub event_queue: usize,
    /// Delta batches a slow subscriber may fall behind before it must
    /// resync from a snapshot (default 1024).
    pub delta_buffer: usize,
    /// Where the changes go for the history, if anywhere (default none).
    pub history: Option<HistorySink>,
}

/// Where watchers send the changes they see, for the history: a bounded
/// queue that is never waited for. When it is full a change is dropped and
/// counted: the history must not slow the inventory.
#[derive(Clone, Debug)]
pub struct HistorySink {
    tx: mpsc::Sender<Observed>,
    dropped: Arc<AtomicU64>,
}

impl HistorySink {
    /// A sink holding at most `capacity` changes, and its reader.
    pub fn channel(capacity: usize) -> (HistorySink, mpsc::Receiver<Observed>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            HistorySink {
                tx,
                dropped: Arc::default(),
            },
            rx,
        )
    }

    /// Queues a change, or drops and counts it when the queue is full.
    pub fn send(&self, change: Observed) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(change) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Changes dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Changes waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The last records of containers that stopped, so that a later removal
/// can be recorded with what the container was. Bounded: the oldest are
/// forgotten first.
#[derive(Default)]
struct Ended {
    records: HashMap<String, Arc<ContainerRecord>>,
    order: std::collections::VecDeque<String>,
}

impl Ended {
    const CAPACITY: usize = 4096;

    fn put(&mut self, record: Arc<ContainerRecord>) {
        let id = record.id.clone();
        if self.records.insert(id.clone(), record).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.records.remove(&old);
            }
        }
    }

    fn take(&mut self, id: &str) -> Option<Arc<ContainerRecord>> {
        let taken = self.records.remove(id);
        if taken.is_some() {
            self.order.retain(|o| o != id);
        }
        taken
    }

    fn get(&self, id: &str) -> Option<Arc<ContainerRecord>> {
        self.records.get(id).cloned()
    }
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            node: NodeId::default(),
            resync_interval: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            inspect_concurrency: 16,
            event_batch: 512,
            event_queue: 16_384,
            delta_buffer: 1024,
            history: None,
        }
    }
}

/// What the watcher knows about its engine, for `/readyz`, `/v1/nodes` and
/// logs.
#[derive(Clone, Debug, Default)]
pub struct WatcherStatus {
    /// The first full sync is done.
    pub ready: bool,
    /// The engine is lost; the inventory is the last one read.
    pub stale: bool,
    /// When the engine was lost after a sync (ms since the epoch): the
    /// first failure, not the last reconnect attempt. `None` while it
    /// answers, and cleared by the sync that follows its return.
    pub lost_at_ms: Option<u64>,
    /// The engine, once it answered.
    pub engine: Option<EngineIdentity>,
    /// The last failure, while it lasts.
    pub last_error: Option<String>,
    /// When the inventory was last fully read (ms since the epoch).
    pub last_sync_ms: Option<u64>,
    /// When the last engine event arrived (ms since the epoch).
    pub last_event_ms: Option<u64>,
}

impl WatcherStatus {
    /// How long the engine has been lost at `now_ms` (ms since the
    /// epoch); `None` while it answers.
    pub fn lost_for(&self, now_ms: u64) -> Option<Duration> {
        self.lost_at_ms
            .map(|at| Duration::from_millis(now_ms.saturating_sub(at)))
    }
}

/// Counters of the watcher's work, for metrics.
#[derive(Debug, Default)]
pub struct WatcherCounters {
    /// Engine events applied.
    pub events: AtomicU64,
    /// Full syncs (first, reconnect, periodic).
    pub syncs: AtomicU64,
    /// Times the engine was lost.
    pub engine_losses: AtomicU64,
    /// Inspect calls made.
    pub inspects: AtomicU64,
    /// Inspect calls that failed with an engine error other than "gone";
    /// the container kept its last record and is re-read with backoff.
    pub inspect_failures: AtomicU64,
}

/// An inventory's readers' side: the snapshot and the changes, written by
/// one task (a watcher, or the engines' merger).
pub(crate) struct Published {
    inventory: ArcSwap<Inventory>,
    deltas: broadcast::Sender<Arc<Vec<Delta>>>,
}

impl Published {
    pub(crate) fn new(buffer: usize) -> Self {
        Published {
            inventory: ArcSwap::from_pointee(Inventory::new()),
            deltas: broadcast::channel(buffer.max(1)).0,
        }
    }

    pub(crate) fn inventory(&self) -> Arc<Inventory> {
        self.inventory.load_full()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Delta>>> {
        self.deltas.subscribe()
    }

    /// Readers see `working` first, then subscribers get `deltas`.
    pub(crate) fn publish(&self, working: &Inventory, deltas: Vec<Delta>) {
        if deltas.is_empty() {
            return;
        }
        self.inventory.store(Arc::new(working.clone()));
        // No subscriber is fine: the snapshot above is the truth.
        let _ = self.deltas.send(Arc::new(deltas));
    }
}

struct Shared {
    published: Published,
    status: Mutex<WatcherStatus>,
    ready: watch::Sender<bool>,
    counters: WatcherCounters,
    /// Asks the watcher for a full resync now.
    resync_now: tokio::sync::Notify,
}

/// The read side of a watcher. Cheap to clone.
#[derive(Clone)]
pub struct WatcherHandle {
    shared: Arc<Shared>,
}

impl WatcherHandle {
    /// The current inventory: an immutable snapshot, read without a lock.
    pub fn inventory(&self) -> Arc<Inventory> {
        self.shared.published.inventory()
    }

    /// The engine's status now.
    pub fn status(&self) -> WatcherStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The engine's ID and when it was lost, while it is lost after a
    /// sync (see [`WatcherStatus::lost_at_ms`]); no copy of the status.
    pub fn lost_at(&self) -> Option<(EngineId, u64)> {
        let s = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        Some((s.engine.as_ref()?.id.clone(), s.lost_at_ms?))
    }

    /// Counters of the watcher's work.
    pub fn counters(&self) -> &WatcherCounters {
        &self.shared.counters
    }

    /// Asks for a full resync (list and inspect everything) as soon as the
    /// watcher is connected; asks made meanwhile count once.
    pub fn resync(&self) {
        self.shared.resync_now.notify_one();
    }

    /// Resolves once the first full sync is done.
    pub async fn ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `shared`, which we hold: it cannot close.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Every change from now on, in batches. A subscriber that falls more
    /// than `delta_buffer` batches behind gets `Lagged` and should start
    /// again from [`WatcherHandle::inventory`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Delta>>> {
        self.shared.published.subscribe()
    }

    fn update_status(&self, f: impl FnOnce(&mut WatcherStatus)) {
        f(&mut self.shared.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Capped exponential backoff with full jitter in [d/2, d].
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// What one inspect said about one container.
enum Inspected {
    // Boxed: a record is large next to the other variants.
    Live(Box<ContainerRecord>),
    /// The engine says so: gone, or no longer live.
    Gone,
    /// The engine answered with an error: we do not know.
    Unreadable,
}

/// Containers whose last inspect was unreadable, each with its own backoff,
/// so that one broken container is re-read slowly without holding back the
/// others.
struct InspectRetries {
    initial: Duration,
    max: Duration,
    pending: HashMap<String, (Backoff, tokio::time::Instant)>,
}

impl InspectRetries {
    fn new(initial: Duration, max: Duration) -> Self {
        InspectRetries {
            initial,
            max,
            pending: HashMap::new(),
        }
    }

    /// Schedules the next re-read of `id`, later each time it fails again.
    fn failed(&mut self, id: &str) {
        let (backoff, due) = self.pending.entry(id.to_owned()).or_insert_with(|| {
            (
                Backoff::new(self.initial, self.max),
                tokio::time::Instant::now(),
            )
        });
        *due = tokio::time::Instant::now() + backoff.next_delay();
    }

    /// After a full sync: the list is the truth about which containers
    /// live, so only the ones it named and could not read stay pending
    /// (keeping their backoff, so a resync does not restart it).
    fn sync_failed(&mut self, unreadable: &HashSet<String>) {
        self.pending.retain(|id, _| unreadable.contains(id));
        for id in unreadable {
            self.failed(id);
        }
    }

    fn answered(&mut self, id: &str) {
        self.pending.remove(id);
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.pending.values().map(|(_, due)| *due).min()
    }

    fn due(&self, now: tokio::time::Instant) -> Vec<String> {
        self.pending
            .iter()
            .filter(|(_, (_, due))| *due <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The writer: owns the engine and the working copy of the inventory.
pub struct Watcher {
    engine: Arc<dyn Engine>,
    config: WatcherConfig,
    handle: WatcherHandle,
    working: Inventory,
    retries: InspectRetries,
    ended: Ended,
}

impl Watcher {
    /// Starts watching `engine` until `shutdown` is cancelled. The returned
    /// task ends after shutdown; await it to know the watcher stopped.
    pub fn spawn(
        engine: Arc<dyn Engine>,
        config: WatcherConfig,
        shutdown: CancellationToken,
    ) -> (WatcherHandle, JoinHandle<()>) {
        let handle = WatcherHandle {
            shared: Arc::new(Shared {
                published: Published::new(config.delta_buffer),
                status: Mutex::new(WatcherStatus::default()),
                ready: watch::channel(false).0,
                counters: WatcherCounters::default(),
                resync_now: tokio::sync::Notify::new(),
            }),
        };
        let watcher = Watcher {
            engine,
            retries: InspectRetries::new(config.backoff_initial, config.backoff_max),
            config,
            handle: handle.clone(),
            working: Inventory::new(),
            ended: Ended::default(),
        };
        let task = tokio::spawn(watcher.run(shutdown));
        (handle, task)
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.follow(&mut backoff, &shutdown) => r,
            };
            let Err(e) = result else { return };
            let had_inventory = self.handle.status().ready;
            self.handle
                .counters()
                .engine_losses
                .fetch_add(1, Ordering::Relaxed);
            self.handle.update_status(|s| {
                s.stale = s.ready;
                if s.ready && s.lost_at_ms.is_none() {
                    s.lost_at_ms = Some(now_ms());
                }
                s.last_error = Some(e.to_string());
            });
            let delay = backoff.next_delay();
            if had_inventory {
                warn!(error = %e, retry_in = ?delay, containers = self.working.len(),
                      "engine lost; serving the last inventory, marked stale");
            } else {
                warn!(error = %e, retry_in = ?delay, "engine not reachable yet");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection: subscribe, sync, then follow events and resync
    /// periodically until the engine fails (Err) or shutdown (Ok).
    async fn follow(
        &mut self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), EngineError> {
        let identity = self.engine.identity().await?;
        let stream = self.engine.subscribe().await?;
        let (tx, mut rx) = mpsc::channel(self.config.event_queue.max(1));
        // The reader keeps draining the engine even while a resync runs, so
        // that the engine does not drop us as a slow consumer.
        let _reader = AbortOnDropHandle::new(tokio::spawn(forward(stream, tx)));
        self.sync(&identity).await?;
        backoff.reset();
        info!(engine = %identity, containers = self.working.len(), "inventory synced");

        // Zero: only when asked.
        let every = self.config.resync_interval;
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + every.max(Duration::from_secs(1)),
            every.max(Duration::from_secs(1)),
        );
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let periodic = !every.is_zero();
        let mut batch = Vec::with_capacity(self.config.event_batch);
        loop {
            let next_retry = self.retries.next_due();
            let retry_due = async move {
                match next_retry {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = rx.recv_many(&mut batch, self.config.event_batch.max(1)) => {
                    if n == 0 {
                        return Err(EngineError::StreamLost("event reader stopped".into()));
                    }
                    let events = std::mem::take(&mut batch)
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()?;
                    self.apply_events(&identity, events).await?;
                }
                _ = resync.tick(), if periodic => {
                    self.sync(&identity).await?;
                    debug!(containers = self.working.len(), "periodic resync done");
                }
                _ = self.handle.shared.resync_now.notified() => {
                    self.sync(&identity).await?;
                    debug!(containers = self.working.len(), "resync on request done");
                }
                _ = retry_due => {
                    let ids = self.retries.due(tokio::time::Instant::now());
                    self.reread(&identity, ids).await?;
                }
            }
        }
    }

    fn stamp(
        &self,
        identity: &EngineIdentity,
        mut r: ContainerRecord,
        now: u64,
    ) -> ContainerRecord {
        r.node = self.config.node.clone();
        r.engine_id = identity.id.clone();
        r.updated_at = now;
        r
    }

    /// Reads the whole engine into a new inventory, then swaps it in.
    async fn sync(&mut self, identity: &EngineIdentity) -> Result<(), EngineError> {
        let ids = self.engine.list().await?;
        let read = self.inspect_all(ids).await?;
        let now = now_ms();
        let mut records = Vec::with_capacity(read.len());
        let mut unreadable = HashSet::new();
        for (id, inspected) in read {
            match inspected {
                Inspected::Live(r) => records.push(self.stamp(identity, *r, now)),
                Inspected::Gone => {}
                Inspected::Unreadable => {
                    records.extend(self.working.get(&id).map(|r| ContainerRecord::clone(r)));
                    unreadable.insert(id);
                }
            }
        }
        self.retries.sync_failed(&unreadable);
        let next = Inventory::from_records(records);
        let deltas = self.working.diff(&next);
        self.record_sync(&deltas, now);
        // Keep records whose content did not change as they were, so the
        // diff of the next sync is against what readers saw.
        for d in &deltas {
            self.working.apply(d);
        }
        self.publish(deltas);
        self.handle.counters().syncs.fetch_add(1, Ordering::Relaxed);
        self.handle.update_status(|s| {
            s.ready = true;
            s.stale = false;
            s.lost_at_ms = None;
            s.engine = Some(identity.clone());
            s.last_error = None;
            s.last_sync_ms = Some(now);
        });
        self.handle.shared.ready.send_replace(true);
        Ok(())
    }

    /// Inspects each container. Fails only when the engine is lost.
    async fn inspect_all(&self, ids: Vec<String>) -> Result<Vec<(String, Inspected)>, EngineError> {
        let engine = &self.engine;
        let counters = self.handle.counters();
        futures::stream::iter(ids)
            .map(|id| async move {
                counters.inspects.fetch_add(1, Ordering::Relaxed);
                match engine.inspect(&id).await {
                    Ok(Some(r)) => Ok((id, Inspected::Live(Box::new(r)))),
                    Ok(None) => Ok((id, Inspected::Gone)),
                    // One container the engine cannot describe is neither a
                    // lost engine nor a gone container.
                    Err(EngineError::Api(msg)) => {
                        counters.inspect_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(container = %id, error = %msg,
                              "inspect failed; keeping the last record and retrying");
                        Ok((id, Inspected::Unreadable))
                    }
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(self.config.inspect_concurrency.max(1))
            .try_collect()
            .await
    }

    async fn apply_events(
        &mut self,
        identity: &EngineIdentity,
        events: Vec<EngineEvent>,
    ) -> Result<(), EngineError> {
        self.handle
            .counters()
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let mut seen = HashSet::with_capacity(events.len());
        let ids: Vec<String> = events
            .iter()
            .inspect(|e| debug!(container = %e.container_id, action = %e.action, "engine event"))
            .map(|e| e.container_id.clone())
            .filter(|id| seen.insert(id.clone()))
            .collect();
        // What each container was before, for the history.
        let before: HashMap<String, Arc<ContainerRecord>> = match &self.config.history {
            Some(_) => ids
                .iter()
                .filter_map(|id| Some((id.clone(), self.working.get(id)?.clone())))
                .collect(),
            None => HashMap::new(),
        };
        self.reread(identity, ids).await?;
        self.record_events(&events, before);
        self.handle
            .update_status(|s| s.last_event_ms = Some(now_ms()));
        Ok(())
    }

    /// Inspects these containers again and applies what the engine says.
    async fn reread(
        &mut self,
        identity: &EngineIdentity,
        ids: Vec<String>,
    ) -> Result<(), EngineError> {
        let read = self.inspect_all(ids).await?;
        let now = now_ms();
        let mut deltas = Vec::with_capacity(read.len());
        for (id, inspected) in read {
            let delta = match inspected {
                Inspected::Live(r) => {
                    self.retries.answered(&id);
                    self.working.upsert(self.stamp(identity, *r, now))
                }
                Inspected::Gone => {
                    self.retries.answered(&id);
                    self.working.remove(&id)
                }
                Inspected::Unreadable => {
                    self.retries.failed(&id);
                    None
                }
            };
            deltas.extend(delta);
        }
        self.publish(deltas);
        Ok(())
    }

    fn publish(&self, deltas: Vec<Delta>) {
        self.handle.shared.published.publish(&self.working, deltas);
    }

    /// Sends the history what a batch of events did: each event that
    /// names a change, with the container's record before and after.
    fn record_events(
        &mut self,
        events: &[EngineEvent],
        mut before: HashMap<String, Arc<ContainerRecord>>,
    ) {
        let Some(sink) = self.config.history.clone() else {
            return;
        };
        let now = now_ms() as i64;
        let live_before = before.clone();
        // Containers whose stop or removal an event of this batch said.
        let mut ended_here: HashSet<&str> = HashSet::new();
        let mut removed_here: HashSet<&str> = HashSet::new();
        for e in events {
            let Some(kind) = e.facts.kind else { continue };
            let id = e.container_id.as_str();
            let after = self.working.get(id).cloned();
            let was = match kind {
                // Gone for good: its last record, if an earlier batch
                // kept it.
                history::ChangeKind::Removed => {
                    removed_here.insert(id);
                    before.get(id).cloned().or_else(|| self.ended.take(id))
                }
                // The container may have left the inventory on an earlier
                // event (a kill): the stop then completes what was kept.
                history::ChangeKind::Stopped => {
                    before.get(id).cloned().or_else(|| self.ended.get(id))
                }
                _ => before.get(id).cloned(),
            };
            if let Some(change) = history::from_event(&e.facts, was.as_ref(), after.as_ref(), now) {
                if change.kind.ends() {
                    ended_here.insert(id);
                }
                sink.send(change);
            }
            // A start then a stop in one batch: the stop ends the run the
            // start began.
            if let Some(a) = after {
                before.insert(id.to_owned(), a);
            }
        }
        // Containers that left the inventory on events that did not say
        // why (a kill before its die): their run ended now. The die, if
        // it comes, adds its exit code to the same change.
        for (id, was) in live_before {
            if self.working.get(&id).is_some() {
                continue;
            }
            if !ended_here.contains(id.as_str()) {
                sink.send(history::stopped(was.clone(), now, None));
            }
            if !removed_here.contains(id.as_str()) {
                self.ended.put(was);
            }
        }
    }

    /// Sends the history what a full sync found changed: containers that
    /// started or stopped unseen, and what changed in the others. Called
    /// before the deltas are applied.
    fn record_sync(&mut self, deltas: &[Delta], now: u64) {
        let Some(sink) = self.config.history.clone() else {
            return;
        };
        let now = now as i64;
        for d in deltas {
            match d {
                Delta::Upsert(r) => match self.working.get(&r.id) {
                    None => sink.send(history::started(r.clone(), now)),
                    Some(old) => {
                        for change in history::from_sync_update(old, r, now) {
                            sink.send(change);
                        }
                    }
                },
                Delta::Remove(r) => {
                    sink.send(history::stopped(r.clone(), now, None));
                    self.ended.put(r.clone());
                }
            }
        }
    }
}

async fn forward(mut stream: EventStream, tx: mpsc::Sender<Result<EngineEvent, EngineError>>) {
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{SyntheticEngine, SyntheticSpec, synthetic_record};
    use shoal_core::{EngineId, LookupKey};

    fn engine(n: usize) -> SyntheticEngine {
        SyntheticEngine::new(SyntheticSpec {
            count: n,
            prefix: "c".into(),
            engine_id: EngineId("e1".into()),
        })
    }

    fn config() -> WatcherConfig {
        WatcherConfig {
            node: NodeId::from("n1"),
            ..Default::default()
        }
    }

    async fn eventually(handle: &WatcherHandle, what: &str, f: impl Fn(&Inventory) -> bool) {
        for _ in 0..2000 {
            if f(&handle.inventory()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    fn names(inv: &Inventory, name: &str) -> usize {
        inv.lookup(&LookupKey::Name(name.into())).len()
    }

    #[tokio::test]
    async fn first_sync_reads_every_container_and_stamps_the_node() {
        let e = engine(50);
        let stop = CancellationToken::new();
        let (h, task) = Watcher::spawn(Arc::new(e.clone()), config(), stop.clone());
        h.ready().await;
        let inv = h.inventory();
        assert_eq!(inv.len(), 50);
        assert!(
            inv.records()
                .all(|r| r.node.0 == "n1" && r.engine_id.0 == "e1")
        );
        assert!(h.status().ready && !h.status().stale);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn events_start_rename_and_remove_show_up() {
        let e = engine(3);
        let stop = CancellationToken::new();
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), config(), stop.clone());
        h.ready().await;
        let mut deltas = h.subscribe();

        let mut r = synthetic_record("new", 0, &EngineId("e1".into()));
        r.names = vec!["fresh".into()];
        let id = r.id.clone();
        e.run(r);
        eventually(&h, "fresh appears", |inv| names(inv, "fresh") == 1).await;
        assert!(matches!(&deltas.recv().await.unwrap()[0], Delta::Upsert(r) if r.id == id));

        e.modify(&id, "rename", |r| r.names = vec!["renamed".into()]);
        eventually(&h, "rename moves the name", |inv| {
            names(inv, "renamed") == 1 && names(inv, "fresh") == 0
        })
        .await;

        e.modify(&id, "pause", |r| {
            r.state = shoal_core::ContainerState::Paused
        });
        eventually(&h, "paused", |inv| {
            inv.get(&id)
                .is_some_and(|r| r.state == shoal_core::ContainerState::Paused)
        })
        .await;

        e.remove(&id);
        eventually(&h, "removed", |inv| {
            inv.get(&id).is_none() && inv.len() == 3
        })
        .await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_lost_engine_keeps_the_inventory_stale_then_converges() {
        let e = engine(10);
        let stop = CancellationToken::new();
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), config(), stop.clone());
        h.ready().await;

        e.set_up(false);
        for _ in 0..400 {
            if h.status().stale {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(h.status().stale, "a lost engine marks the inventory stale");
        assert_eq!(
            h.inventory().len(),
            10,
            "the last inventory is still served"
        );

        // While it is away, containers change without any event reaching us.
        let gone = e.ids()[0].clone();
        e.remove(&gone);
        e.run(synthetic_record("late", 1, &EngineId("e1".into())));
        e.set_up(true);
        eventually(&h, "converges after reconnect", |inv| {
            inv.len() == 10 && inv.get(&gone).is_none() && names(inv, "late1") == 1
        })
        .await;
        for _ in 0..400 {
            if !h.status().stale {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!h.status().stale);
        stop.cancel();
    }

    async fn until(h: &WatcherHandle, what: &str, f: impl Fn(&WatcherStatus) -> bool) {
        for _ in 0..2000 {
            if f(&h.status()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    #[tokio::test]
    async fn the_loss_time_is_the_first_failure_and_clears_when_the_engine_is_back() {
        let e = engine(3);
        let stop = CancellationToken::new();
        let cfg = WatcherConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..config()
        };
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), cfg, stop.clone());
        h.ready().await;
        assert_eq!(h.status().lost_at_ms, None);

        let before = now_ms();
        e.set_up(false);
        until(&h, "the engine is lost", |s| s.stale).await;
        let lost_at = h
            .status()
            .lost_at_ms
            .expect("a lost engine has a loss time");
        assert!(lost_at >= before);
        let calls = e.calls();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(e.calls() > calls + 2, "it kept trying to reconnect");
        assert_eq!(
            h.status().lost_at_ms,
            Some(lost_at),
            "failed reconnects do not move the loss time"
        );
        assert!(h.status().lost_for(now_ms()).unwrap() >= Duration::from_millis(200));

        e.set_up(true);
        until(&h, "the engine is back", |s| !s.stale).await;
        assert_eq!(h.status().lost_at_ms, None);
        assert_eq!(h.status().lost_for(now_ms()), None);
        stop.cancel();
    }

    #[tokio::test]
    async fn periodic_resync_repairs_a_dropped_event() {
        let e = engine(5);
        let stop = CancellationToken::new();
        let cfg = WatcherConfig {
            resync_interval: Duration::from_millis(50),
            ..config()
        };
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), cfg, stop.clone());
        h.ready().await;
        let id = e.ids()[0].clone();
        e.modify_silently(&id, |r| r.names = vec!["quiet".into()]);
        eventually(&h, "resync sees the silent rename", |inv| {
            names(inv, "quiet") == 1
        })
        .await;
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_backoff_never_gives_up() {
        let e = engine(1);
        e.set_up(false);
        let stop = CancellationToken::new();
        let cfg = WatcherConfig {
            backoff_max: Duration::from_secs(2),
            ..config()
        };
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), cfg, stop.clone());
        // An hour of virtual time: capped at 2 s, it keeps trying.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let calls = e.calls();
        assert!(calls > 1000, "only {calls} attempts in an hour");
        assert!(!h.status().ready);
        assert!(h.status().last_error.is_some());
        e.set_up(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(h.status().ready);
        assert_eq!(h.inventory().len(), 1);
        stop.cancel();
    }

    fn inspect_failures(h: &WatcherHandle) -> u64 {
        h.counters().inspect_failures.load(Ordering::Relaxed)
    }

    async fn failures_reach(h: &WatcherHandle, n: u64) {
        for _ in 0..2000 {
            if inspect_failures(h) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "inspect failures stayed at {}, not {n}",
            inspect_failures(h)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_container_keeps_its_record_until_the_engine_answers() {
        let e = engine(3);
        let stop = CancellationToken::new();
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), config(), stop.clone());
        h.ready().await;
        let id = e.ids()[0].clone();
        let old_name = h.inventory().get(&id).unwrap().names[0].clone();

        e.fail_inspect(&id, 3);
        let start = tokio::time::Instant::now();
        e.modify(&id, "rename", |r| r.names = vec!["renamed".into()]);
        for n in 1..=3 {
            failures_reach(&h, n).await;
            let inv = h.inventory();
            assert_eq!(inv.len(), 3, "after failure {n}");
            assert_eq!(names(&inv, &old_name), 1, "after failure {n}");
        }

        eventually(&h, "the retry applies the rename", |inv| {
            names(inv, "renamed") == 1 && names(inv, &old_name) == 0
        })
        .await;
        // Three failures back off at least 50 + 100 + 200 ms (100 ms
        // doubling, jittered to half): retries do not spin.
        assert!(start.elapsed() >= Duration::from_millis(350));
        assert_eq!(inspect_failures(&h), 3);

        e.remove(&id);
        eventually(&h, "gone once the engine says so", |inv| {
            inv.get(&id).is_none() && inv.len() == 2
        })
        .await;
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_new_container_appears_once_it_can_be_read() {
        let e = engine(1);
        let stop = CancellationToken::new();
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), config(), stop.clone());
        h.ready().await;
        let r = synthetic_record("new", 0, &EngineId("e1".into()));
        let id = r.id.clone();

        e.fail_inspect(&id, 1);
        e.run(r);
        failures_reach(&h, 1).await;
        assert!(
            h.inventory().get(&id).is_none(),
            "nothing to keep, nothing added"
        );
        eventually(&h, "the retry adds it", |inv| inv.get(&id).is_some()).await;
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_resync_keeps_a_container_whose_inspect_fails() {
        let e = engine(3);
        let stop = CancellationToken::new();
        let cfg = WatcherConfig {
            resync_interval: Duration::from_secs(1),
            ..config()
        };
        let (h, _task) = Watcher::spawn(Arc::new(e.clone()), cfg, stop.clone());
        h.ready().await;
        let id = e.ids()[0].clone();
        let old_name = h.inventory().get(&id).unwrap().names[0].clone();

        e.fail_inspect(&id, 2);
        e.modify_silently(&id, |r| r.names = vec!["quiet".into()]);
        let syncs = h.counters().syncs.load(Ordering::Relaxed);
        failures_reach(&h, 1).await;
        assert!(h.counters().syncs.load(Ordering::Relaxed) > syncs);
        let inv = h.inventory();
        assert_eq!(inv.len(), 3);
        assert_eq!(names(&inv, &old_name), 1, "the resync kept the last record");

        eventually(&h, "a retry reads the silent rename", |inv| {
            names(inv, "quiet") == 1 && inv.len() == 3
        })
        .await;
        assert_eq!(inspect_failures(&h), 2);
        stop.cancel();
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[7] >= Duration::from_millis(500) && delays[7] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
