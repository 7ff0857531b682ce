//! Several engines on one node, served as one inventory.
//!
//! A node may watch more than one engine (`--engine docker --engine
//! containerd`). Each engine has its own [`Watcher`]; [`Engines`] merges
//! their inventories into the one the node serves and publishes, and
//! forwards their changes as one stream of deltas. A node with one engine
//! goes through the same path.
//!
//! It also holds the rule for an engine that stays lost. While lost, an
//! engine's last inventory is served, marked stale by the node. Once it has
//! been lost for `withdraw_after`, its containers leave the node's
//! inventory (as removes, so the fleet's owners drop them too), and they
//! come back with the sync that follows its return. The other engines are
//! not touched. An engine that has never answered counts as lost since the
//! start: the node gets ready without it once that long has passed and
//! another engine has synced.
//!
//! The engines' snapshots are the truth; their deltas only say which
//! containers to look at again. A batch can arrive after its engine moved
//! on, or after a rebuild read a newer snapshot; because each container is
//! re-read from its engine's current snapshot, an old batch never takes a
//! container back to an older state.
//!
//! Two engines that report the same container ID (Docker, and containerd's
//! `moby` namespace when it is not skipped) would count one container
//! twice. The engine listed first wins, and a warning says so.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::select_all;
use shoal_core::{ContainerRecord, Delta, EngineId, Inventory};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::watcher::{Published, Watcher, WatcherConfig, WatcherHandle, WatcherStatus, now_ms};

/// How often the engines' statuses are looked at: a withdrawal or a return
/// is acted on within this of its time.
const STATUS_CHECK: Duration = Duration::from_millis(250);

/// How the engines of a node are watched.
#[derive(Clone, Debug)]
pub struct EnginesConfig {
    /// Each engine's watcher.
    pub watcher: WatcherConfig,
    /// How long an engine may be lost before its containers leave the
    /// node's inventory (the node's `--engine-lost-after`).
    pub withdraw_after: Duration,
}

/// One engine as the node reports it.
#[derive(Clone, Debug)]
pub struct EngineState {
    /// The kind the node was told to watch (`docker`, `containerd`), known
    /// before the engine first answers.
    pub kind: &'static str,
    /// Its watcher's status.
    pub status: WatcherStatus,
    /// Lost too long: its containers are out of the node's inventory.
    pub withdrawn: bool,
    /// Its live containers as last read (withdrawn ones included).
    pub containers: usize,
}

impl EngineState {
    /// `synced`, `stale` (lost, last inventory served), `withdrawn` or
    /// `unreachable` (never answered).
    pub fn state(&self) -> &'static str {
        match (self.status.ready, self.withdrawn, self.status.stale) {
            (_, true, _) => "withdrawn",
            (false, false, _) => "unreachable",
            (true, false, true) => "stale",
            (true, false, false) => "synced",
        }
    }
}

/// Every engine of the node.
#[derive(Clone, Debug, Default)]
pub struct EnginesStatus {
    /// The node's inventory is read: at least one engine synced, and each
    /// other one synced too or withdrawn.
    pub ready: bool,
    /// Each engine, in the order given.
    pub engines: Vec<EngineState>,
}

impl EnginesStatus {
    /// True while some engine is not answering: what the node serves is
    /// partly a last read, or partly missing.
    pub fn stale(&self) -> bool {
        self.engines
            .iter()
            .any(|e| e.status.stale || e.withdrawn || !e.status.ready)
    }

    /// The engines' current errors, each named by its kind.
    pub fn last_error(&self) -> Option<String> {
        let errors: Vec<String> = self
            .engines
            .iter()
            .filter_map(|e| Some(format!("{}: {}", e.kind, e.status.last_error.as_ref()?)))
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    /// The newest engine event (ms since the epoch).
    pub fn last_event_ms(&self) -> Option<u64> {
        self.engines
            .iter()
            .filter_map(|e| e.status.last_event_ms)
            .max()
    }
}

/// Summed counters of every engine's watcher.
#[derive(Clone, Copy, Debug, Default)]
pub struct EnginesCounters {
    /// Engine events applied.
    pub events: u64,
    /// Full syncs.
    pub syncs: u64,
    /// Times an engine was lost.
    pub engine_losses: u64,
    /// Inspect calls made.
    pub inspects: u64,
    /// Inspect calls that failed with an engine error other than "gone".
    pub inspect_failures: u64,
}

struct Shared {
    /// The engines, in order of precedence.
    engines: Vec<Arc<dyn Engine>>,
    watchers: Vec<(&'static str, WatcherHandle)>,
    published: Published,
    withdrawn: Mutex<Vec<bool>>,
    ready: watch::Sender<bool>,
}

/// The read side: the node's inventory over all its engines. Cheap to
/// clone.
#[derive(Clone)]
pub struct EnginesHandle {
    shared: Arc<Shared>,
}

impl EnginesHandle {
    /// The engine that creates this node's job containers: the first that
    /// can. Otherwise why none can.
    pub fn creator(&self) -> Result<Arc<dyn Engine>, String> {
        let mut why = Vec::new();
        for e in &self.shared.engines {
            match e.cannot_create() {
                None => return Ok(e.clone()),
                Some(w) => why.push(w),
            }
        }
        if why.is_empty() {
            why.push("the node watches no engine".to_owned());
        }
        Err(why.join("; "))
    }

    /// The node's inventory: an immutable snapshot, read without a lock.
    pub fn inventory(&self) -> Arc<Inventory> {
        self.shared.published.inventory()
    }

    /// True once the node's inventory is read (see
    /// [`EnginesStatus::ready`]); cheaper than [`EnginesHandle::status`].
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Every engine's status.
    pub fn status(&self) -> EnginesStatus {
        let withdrawn = self
            .shared
            .withdrawn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        EnginesStatus {
            ready: *self.shared.ready.borrow(),
            engines: self
                .shared
                .watchers
                .iter()
                .zip(withdrawn)
                .map(|((kind, w), withdrawn)| EngineState {
                    kind,
                    status: w.status(),
                    withdrawn,
                    containers: w.inventory().len(),
                })
                .collect(),
        }
    }

    /// The engines lost now, each with when it was lost (ms since the
    /// epoch); usually none. Reads only that much of each watcher's
    /// status: every answer with this node's containers asks.
    pub fn lost_engines(&self) -> Vec<(EngineId, u64)> {
        self.shared
            .watchers
            .iter()
            .filter_map(|(_, w)| w.lost_at())
            .collect()
    }

    /// Asks every watcher for a full resync now (see
    /// [`crate::WatcherHandle::resync`]).
    pub fn resync(&self) {
        for (_, w) in &self.shared.watchers {
            w.resync();
        }
    }

    /// The watchers' counters, summed.
    pub fn counters(&self) -> EnginesCounters {
        let mut sum = EnginesCounters::default();
        for (_, w) in &self.shared.watchers {
            let c = w.counters();
            sum.events += c.events.load(Ordering::Relaxed);
            sum.syncs += c.syncs.load(Ordering::Relaxed);
            sum.engine_losses += c.engine_losses.load(Ordering::Relaxed);
            sum.inspects += c.inspects.load(Ordering::Relaxed);
            sum.inspect_failures += c.inspect_failures.load(Ordering::Relaxed);
        }
        sum
    }

    /// Resolves once the node's inventory is read (see
    /// [`EnginesStatus::ready`]).
    pub async fn ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `shared`, which we hold: it cannot close.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Every change of the node's inventory from now on, in batches. A
    /// subscriber that falls more than the watcher's `delta_buffer` batches
    /// behind gets `Lagged` and should start again from
    /// [`EnginesHandle::inventory`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Delta>>> {
        self.shared.published.subscribe()
    }
}

/// Starts a watcher per engine and merges them.
pub struct Engines;

impl Engines {
    /// Watches `engines`, in order of precedence (the first wins a
    /// container ID two of them report), until `shutdown` is cancelled.
    /// The returned task ends after shutdown, once every watcher stopped.
    pub fn spawn(
        engines: Vec<Arc<dyn Engine>>,
        config: EnginesConfig,
        shutdown: CancellationToken,
    ) -> (EnginesHandle, JoinHandle<()>) {
        let mut watchers = Vec::with_capacity(engines.len());
        let mut tasks = Vec::with_capacity(engines.len());
        for engine in &engines {
            let kind = engine.kind();
            let (handle, task) =
                Watcher::spawn(engine.clone(), config.watcher.clone(), shutdown.clone());
            watchers.push((kind, handle));
            tasks.push(task);
        }
        let handle = EnginesHandle {
            shared: Arc::new(Shared {
                engines,
                withdrawn: Mutex::new(vec![false; watchers.len()]),
                watchers,
                published: Published::new(config.watcher.delta_buffer),
                ready: watch::channel(false).0,
            }),
        };
        let merger = Merger {
            handle: handle.clone(),
            withdraw_after: config.withdraw_after,
            started_ms: now_ms(),
            working: Inventory::new(),
            collisions: BTreeSet::new(),
            withdrawn: vec![false; handle.shared.watchers.len()],
        };
        let task = tokio::spawn(async move {
            merger.run(shutdown).await;
            for task in tasks {
                if let Err(e) = task.await {
                    warn!(error = %e, "watcher task failed");
                }
            }
        });
        (handle, task)
    }
}

/// The writer of the node's inventory.
struct Merger {
    handle: EnginesHandle,
    withdraw_after: Duration,
    started_ms: u64,
    working: Inventory,
    /// Container IDs already warned about.
    collisions: BTreeSet<String>,
    /// Which engines are withdrawn. The merger alone decides; the shared
    /// copy is for [`EnginesHandle::status`], so a batch takes no lock.
    withdrawn: Vec<bool>,
}

impl Merger {
    fn watchers(&self) -> &[(&'static str, WatcherHandle)] {
        &self.handle.shared.watchers
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut receivers: Vec<_> = self.watchers().iter().map(|(_, w)| w.subscribe()).collect();
        if receivers.is_empty() {
            return;
        }
        let mut check = tokio::time::interval(STATUS_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = select_all(receivers.iter_mut().map(|r| Box::pin(r.recv())));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                (batch, i, _) = next => match batch {
                    Ok(batch) => {
                        if *self.handle.shared.ready.borrow() {
                            self.reread(i, &batch);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        warn!(engine = self.watchers()[i].0, missed = n,
                              "fell behind an engine's watcher; rebuilding from its inventory");
                        self.rebuild();
                    }
                    // The watchers stop with the shutdown token.
                    Err(RecvError::Closed) => return,
                },
                _ = check.tick() => self.check(),
            }
        }
    }

    /// Looks at every engine's status: withdraws the ones lost too long,
    /// brings back the ones that returned, and marks the node ready.
    fn check(&mut self) {
        let now = now_ms();
        let statuses: Vec<WatcherStatus> =
            self.watchers().iter().map(|(_, w)| w.status()).collect();
        let lost_too_long = |s: &WatcherStatus| {
            let lost_for = if s.ready {
                s.lost_for(now)
            } else {
                Some(Duration::from_millis(now.saturating_sub(self.started_ms)))
            };
            lost_for.is_some_and(|d| d >= self.withdraw_after)
        };
        let withdrawn: Vec<bool> = statuses.iter().map(lost_too_long).collect();
        let ready = statuses.iter().any(|s| s.ready)
            && statuses.iter().zip(&withdrawn).all(|(s, w)| s.ready || *w);
        let before = &self.withdrawn;
        let was_ready = *self.handle.shared.ready.borrow();
        for (i, (was, is)) in before.iter().zip(&withdrawn).enumerate() {
            let kind = self.watchers()[i].0;
            match (was, is) {
                (false, true) if statuses[i].ready => {
                    warn!(engine = kind, after = ?self.withdraw_after,
                    "engine lost too long; withdrawing its containers from the fleet")
                }
                (false, true) => warn!(engine = kind, after = ?self.withdraw_after,
                    "engine never answered; serving the other engines without it"),
                (true, false) => info!(
                    engine = kind,
                    "engine back; its containers are served again"
                ),
                _ => {}
            }
        }
        if *before != withdrawn || (ready && !was_ready) {
            self.handle
                .shared
                .withdrawn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone_from(&withdrawn);
            self.withdrawn = withdrawn;
            if ready || was_ready {
                self.rebuild();
            }
        }
        if ready && !was_ready {
            self.handle.shared.ready.send_replace(true);
        }
    }

    /// Each engine's snapshot now, `None` for a withdrawn one.
    fn snapshots(&self) -> Vec<Option<Arc<Inventory>>> {
        self.watchers()
            .iter()
            .zip(&self.withdrawn)
            .map(|((_, w), withdrawn)| (!withdrawn).then(|| w.inventory()))
            .collect()
    }

    /// What the engines say about one container: the first engine, not
    /// withdrawn, that has it in `snapshots`.
    fn truth(
        &mut self,
        id: &str,
        snapshots: &[Option<Arc<Inventory>>],
    ) -> Option<Arc<ContainerRecord>> {
        let mut holders = self
            .watchers()
            .iter()
            .zip(snapshots)
            .filter_map(|((kind, _), s)| Some((*kind, s.as_ref()?.get(id).cloned()?)));
        let (kept, record) = holders.next()?;
        if let Some((dropped, _)) = holders.next() {
            // Bounded: a warning per ID, for the first thousand.
            if self.collisions.len() < 1024 && self.collisions.insert(id.to_owned()) {
                warn!(container = %id, kept, dropped,
                      "two engines report the same container ID; keeping the first engine's");
            }
        }
        Some(record)
    }

    /// An engine's batch: each container it names is set to what the
    /// engines say now.
    fn reread(&mut self, engine: usize, batch: &[Delta]) {
        // One read of each engine's snapshot for the whole batch.
        let snapshots = self.snapshots();
        if snapshots[engine].is_none() {
            // Out of the fleet until it is back; the return rebuilds.
            return;
        }
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let id = &d.record().id;
            let delta = match self.truth(id, &snapshots) {
                Some(r) => self.working.upsert_shared(r),
                None => self.working.remove(id),
            };
            out.extend(delta);
        }
        self.publish(out);
    }

    /// Builds the node's inventory again from every engine's snapshot and
    /// publishes the difference.
    fn rebuild(&mut self) {
        let mut next = Inventory::new();
        // The first engine's record wins a shared ID: apply it last.
        for snapshot in self.snapshots().iter().rev().flatten() {
            for r in snapshot.records() {
                next.upsert_shared(r.clone());
            }
        }
        let deltas = self.working.diff(&next);
        for d in &deltas {
            self.working.apply(d);
        }
        self.publish(deltas);
    }

    fn publish(&self, deltas: Vec<Delta>) {
        self.handle.shared.published.publish(&self.working, deltas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{SyntheticEngine, SyntheticSpec, synthetic_record};
    use shoal_core::{LookupKey, NodeId};

    fn engine(prefix: &str, n: usize) -> SyntheticEngine {
        SyntheticEngine::new(SyntheticSpec {
            count: n,
            prefix: prefix.into(),
            engine_id: EngineId(format!("e-{prefix}")),
        })
    }

    fn config(withdraw_after: Duration) -> EnginesConfig {
        EnginesConfig {
            watcher: WatcherConfig {
                node: NodeId::from("n1"),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
                ..Default::default()
            },
            withdraw_after,
        }
    }

    fn spawn(
        engines: &[&SyntheticEngine],
        withdraw_after: Duration,
    ) -> (EnginesHandle, CancellationToken) {
        let stop = CancellationToken::new();
        let engines = engines
            .iter()
            .map(|e| Arc::new((*e).clone()) as Arc<dyn Engine>)
            .collect();
        let (h, _task) = Engines::spawn(engines, config(withdraw_after), stop.clone());
        (h, stop)
    }

    async fn eventually(h: &EnginesHandle, what: &str, f: impl Fn(&EnginesHandle) -> bool) {
        for _ in 0..2000 {
            if f(h) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    fn from(h: &EnginesHandle, engine: &str) -> usize {
        h.inventory()
            .records()
            .filter(|r| r.engine_id.0 == engine)
            .count()
    }

    fn named(h: &EnginesHandle, name: &str) -> Vec<Arc<ContainerRecord>> {
        h.inventory().lookup(&LookupKey::Name(name.into()))
    }

    #[tokio::test]
    async fn two_engines_are_one_inventory_and_one_delta_stream() {
        let (a, b) = (engine("a", 20), engine("b", 30));
        let (h, stop) = spawn(&[&a, &b], Duration::from_secs(60));
        h.ready().await;
        assert_eq!((from(&h, "e-a"), from(&h, "e-b")), (20, 30));
        let s = h.status();
        assert!(s.ready && !s.stale());
        assert_eq!(
            s.engines
                .iter()
                .map(|e| (e.kind, e.state(), e.containers))
                .collect::<Vec<_>>(),
            vec![("synthetic", "synced", 20), ("synthetic", "synced", 30)]
        );

        let mut deltas = h.subscribe();
        let r = synthetic_record("late-b", 0, &EngineId("e-b".into()));
        let id = r.id.clone();
        b.run(r);
        let batch = deltas.recv().await.unwrap();
        assert!(matches!(&batch[0], Delta::Upsert(r) if r.id == id && r.node.0 == "n1"));
        assert_eq!(named(&h, "late-b0").len(), 1);

        a.remove(&a.ids()[0]);
        eventually(&h, "a's removal", |h| from(h, "e-a") == 19).await;
        assert!(matches!(&deltas.recv().await.unwrap()[0], Delta::Remove(_)));
        stop.cancel();
    }

    #[tokio::test]
    async fn an_engine_lost_too_long_leaves_and_comes_back_alone() {
        let (a, b) = (engine("a", 10), engine("b", 10));
        let (h, stop) = spawn(&[&a, &b], Duration::from_millis(300));
        h.ready().await;
        let mut deltas = h.subscribe();

        b.set_up(false);
        eventually(&h, "b stale, still served", |h| {
            h.status().engines[1].state() == "stale"
        })
        .await;
        assert_eq!(from(&h, "e-b"), 10, "a lost engine's last read is served");
        assert!(h.status().stale());
        eventually(&h, "b withdrawn", |h| from(h, "e-b") == 0).await;
        assert_eq!(h.status().engines[1].state(), "withdrawn");
        assert_eq!(from(&h, "e-a"), 10, "the other engine is untouched");
        let mut removed = 0;
        while removed < 10 {
            let batch = deltas.recv().await.unwrap();
            assert!(
                batch
                    .iter()
                    .all(|d| matches!(d, Delta::Remove(r) if r.engine_id.0 == "e-b"))
            );
            removed += batch.len();
        }

        // A change while it is away comes back with it.
        b.run(synthetic_record("while-away", 0, &EngineId("e-b".into())));
        b.set_up(true);
        eventually(&h, "b back", |h| from(h, "e-b") == 11).await;
        assert_eq!(named(&h, "while-away0").len(), 1);
        assert!(!h.status().stale());
        stop.cancel();
    }

    #[tokio::test]
    async fn an_engine_that_never_answers_holds_the_node_until_it_is_given_up_on() {
        let (a, b) = (engine("a", 5), engine("b", 5));
        b.set_up(false);
        let (h, stop) = spawn(&[&a, &b], Duration::from_millis(400));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!h.is_ready(), "b may still answer: not ready yet");
        assert_eq!(h.status().engines[1].state(), "unreachable");
        assert!(h.status().last_error().unwrap().starts_with("synthetic: "));
        h.ready().await;
        assert_eq!((from(&h, "e-a"), from(&h, "e-b")), (5, 0));
        assert_eq!(h.status().engines[1].state(), "withdrawn");

        b.set_up(true);
        eventually(&h, "b joins late", |h| from(h, "e-b") == 5).await;
        stop.cancel();

        // Alone, an engine that never answers keeps the node unready.
        let c = engine("c", 5);
        c.set_up(false);
        let (h, stop) = spawn(&[&c], Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!h.is_ready());
        stop.cancel();
    }

    #[tokio::test]
    async fn a_container_id_two_engines_report_is_the_first_engines() {
        let (a, b) = (engine("a", 0), engine("b", 0));
        let (h, stop) = spawn(&[&a, &b], Duration::from_secs(60));
        h.ready().await;
        let mut in_b = synthetic_record("shared", 0, &EngineId("e-b".into()));
        let id = in_b.id.clone();
        in_b.names = vec!["from-b".into()];
        b.run(in_b);
        eventually(&h, "b's record", |h| named(h, "from-b").len() == 1).await;

        let mut in_a = synthetic_record("shared", 0, &EngineId("e-a".into()));
        in_a.names = vec!["from-a".into()];
        a.run(in_a);
        eventually(&h, "a's record wins", |h| {
            named(h, "from-a").len() == 1 && named(h, "from-b").is_empty()
        })
        .await;
        // A change in b is not news while a has it.
        b.modify(&id, "rename", |r| r.names = vec!["from-b2".into()]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(named(&h, "from-a").len(), 1);
        assert_eq!(h.inventory().len(), 1);

        a.remove(&id);
        eventually(&h, "b's record is back", |h| named(h, "from-b2").len() == 1).await;
        b.remove(&id);
        eventually(&h, "gone", |h| h.inventory().is_empty()).await;
        stop.cancel();
    }
}
