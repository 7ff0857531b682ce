//! The owner directory service and the publisher.
//!
//! The publisher turns this node's inventory deltas into publishes to the
//! owners of every key of each changed record (the owners of its old keys
//! too, so a rename reaches the owner of the old name), batched per owner,
//! one request per owner per batch, in order. When the ring changes it
//! sends each owner the records it gains; every `sync_interval` it sends
//! each owner a digest of what it should hold and a snapshot where the
//! owner's digest (over the records it owns now) differs, or where a
//! publish failed since: that repairs what a lost batch left wrong.
//! Publishes to this node itself skip HTTP.
//!
//! The directory service applies publishes under a short lock and hands
//! readers an immutable snapshot; it forgets sources the failure detector
//! declared dead and, once the ring has been stable for a grace period,
//! records none of whose keys this node owns any more.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shoal_core::directory::{Here, OwnerDirectory, digest_of};
use shoal_core::ring::Ring;
use shoal_core::wire::{
    DigestReply, DigestRequest, Publish, PublishAck, PublishBody, RecordId, ResyncRequest,
    SourceClock, record_digest,
};
use shoal_core::{ContainerRecord, Delta, Inventory, LookupKey, NodeId, record_keys};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::membership::ClusterView;
use crate::peer::{self, PeerTransport};

/// The owner directory behind a lock for writers and a snapshot for readers.
pub struct DirectoryService {
    working: Mutex<OwnerDirectory>,
    snapshot: ArcSwap<OwnerDirectory>,
    bulk: tokio::sync::Semaphore,
}

impl Default for DirectoryService {
    fn default() -> Self {
        DirectoryService {
            working: Mutex::default(),
            snapshot: ArcSwap::default(),
            bulk: tokio::sync::Semaphore::new(1),
        }
    }
}

impl DirectoryService {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs this node's bulk work (building, decoding and applying
    /// snapshots; pruning after a ring change) on the blocking pool, one
    /// piece at a time. Unbounded, a round of snapshots became dozens of
    /// CPU-bound threads that starved the async workers: gossip stalled,
    /// members were declared dead, the ring changed, and more snapshots
    /// followed (50 nodes with 100,000 containers in one process never
    /// converged). One at a time leaves the other cores to requests and
    /// gossip. `None` if the work panicked.
    pub async fn bulk<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.bulk.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }

    fn edit<T>(&self, f: impl FnOnce(&mut OwnerDirectory) -> T) -> T {
        let mut working = self.working.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut working);
        self.snapshot.store(Arc::new(working.clone()));
        out
    }

    fn apply(&self, p: &Publish, here: Here) -> PublishAck {
        self.edit(|d| d.apply(p, here))
    }

    /// Applies a publish: a snapshot or a large delta (thousands of
    /// records, CPU work that must not hold up gossip and requests) on the
    /// blocking pool, a small delta at once (two thread hand-offs were most
    /// of a small publish's time).
    pub async fn apply_blocking(self: &Arc<Self>, p: Publish, view: &ClusterView) -> PublishAck {
        let here = here(view, &p.source.node);
        if let PublishBody::Delta { upserts, removes } = &p.body
            && upserts.len() + removes.len() <= LARGE_DELTA
        {
            return self.apply(&p, here);
        }
        let this = self.clone();
        self.bulk(move || this.apply(&p, here))
            .await
            .unwrap_or(PublishAck::Stale)
    }

    /// Matches of a key.
    pub fn lookup(&self, key: &LookupKey) -> Vec<Arc<ContainerRecord>> {
        self.snapshot.load().lookup(key)
    }

    /// The directory now.
    pub fn snapshot(&self) -> Arc<OwnerDirectory> {
        self.snapshot.load_full()
    }

    /// Answers a digest: does this directory hold exactly that from the
    /// source, among the records whose keys this node owns on its ring?
    /// Records it is about to drop (after a ring change, within the
    /// ownership grace) do not count, so a shrunk share does not cost a
    /// snapshot. A match makes the directory complete for the source.
    pub fn check(&self, d: &DigestRequest, view: &ClusterView) -> DigestReply {
        let here = here(view, &d.source.node);
        let (ring, me) = (&view.ring, &view.me);
        self.edit(|dir| dir.check(d, here, |r| owns_any(ring, me, r)))
    }

    /// The live, ready sources this directory is not complete for on the
    /// view's ring.
    pub fn missing(&self, view: &ClusterView) -> Vec<NodeId> {
        self.snapshot
            .load()
            .missing(view.sources(), view.ring.fingerprint())
    }

    /// Forgets a source.
    pub fn remove_source(&self, node: &NodeId) -> usize {
        self.edit(|d| d.remove_source(node))
    }

    /// Drops records for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&ContainerRecord) -> bool) -> usize {
        self.edit(|d| d.retain(keep))
    }
}

/// What the directory needs of the view to take a message from `source`.
fn here(view: &ClusterView, source: &NodeId) -> Here {
    Here {
        ring: view.ring.fingerprint(),
        live: view
            .members
            .get(source)
            .filter(|m| m.alive)
            .map(|m| m.incarnation),
    }
}

/// True when any key of the record is owned by `node` on `ring`.
pub fn owns_any(ring: &Ring, node: &NodeId, r: &ContainerRecord) -> bool {
    record_keys(r).iter().any(|k| ring.is_owner(node, k))
}

/// The owners of any key of a record.
fn owners_of<'a>(ring: &'a Ring, r: &ContainerRecord, into: &mut Vec<&'a NodeId>) {
    for k in record_keys(r) {
        for o in ring.owners(&k) {
            if !into.contains(&o) {
                into.push(o);
            }
        }
    }
}

/// Counters of the publisher, for metrics and the benchmarks.
#[derive(Debug)]
pub struct PublisherCounters {
    /// From the watcher reading a change to every owner having it.
    pub lag: prometheus_client::metrics::histogram::Histogram,
    /// Publish requests sent (deltas and snapshots), self included.
    pub publishes: AtomicU64,
    /// Publish requests that failed.
    pub failures: AtomicU64,
    /// Snapshots sent.
    pub snapshots: AtomicU64,
    /// Bytes of publish bodies sent over HTTP.
    pub bytes: AtomicU64,
    /// Resync requests owners sent this node.
    pub resyncs: AtomicU64,
    /// True once the first publish round reached every owner it could:
    /// until then owners cannot be complete for this node, and it says
    /// it is not ready.
    pub started: std::sync::atomic::AtomicBool,
}

impl Default for PublisherCounters {
    fn default() -> Self {
        PublisherCounters {
            // 100 µs to about 3 s.
            lag: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16),
            ),
            publishes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Deltas with more records than this get the snapshot's time bound.
const LARGE_DELTA: usize = 256;

/// How long an owner may take to take a snapshot in.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the publisher lets a changed ring settle before it sends
/// snapshots.
const RING_SETTLE: Duration = Duration::from_millis(300);

/// Everything the publisher needs.
pub struct Publisher {
    /// This node.
    pub me: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// The membership view.
    pub view: Arc<ArcSwap<ClusterView>>,
    /// This node's directory (for keys it owns itself).
    pub directory: Arc<DirectoryService>,
    /// How to reach owners.
    pub peers: Arc<dyn PeerTransport>,
    /// The local inventory and its deltas.
    pub watcher: shoal_engine::WatcherHandle,
    /// How long an owner may take.
    pub timeout: Duration,
    /// How often to compare digests.
    pub sync_interval: Duration,
    /// Ticks when the ring or a live member's incarnation changes.
    pub ring_changes: tokio::sync::watch::Receiver<u64>,
    /// Owners that asked for a digest round.
    pub resyncs: tokio::sync::mpsc::Receiver<NodeId>,
    /// Counters.
    pub counters: Arc<PublisherCounters>,
}

struct PublisherState {
    publisher: Publisher,
    seq: u64,
    published: Inventory,
    dirty: HashSet<NodeId>,
    /// The ring the owners last got this node's records by.
    placed: Option<Arc<Ring>>,
    /// The incarnation of each live member when last seen: a member seen
    /// with a new one restarted with an empty directory.
    incarnations: BTreeMap<NodeId, u64>,
}

impl Publisher {
    /// Runs until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut deltas = self.watcher.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.watcher.ready() => {}
        }
        let mut ring_changes = self.ring_changes.clone();
        let (_, mut resyncs) = tokio::sync::mpsc::channel(1);
        std::mem::swap(&mut resyncs, &mut self.resyncs);
        let mut state = PublisherState {
            published: (*self.watcher.inventory()).clone(),
            incarnations: live_incarnations(&self.view.load()),
            publisher: self,
            seq: 0,
            dirty: HashSet::new(),
            placed: None,
        };
        state.snapshot_all().await;
        state
            .publisher
            .counters
            .started
            .store(true, Ordering::Relaxed);
        let mut sync = tokio::time::interval(state.publisher.sync_interval);
        sync.tick().await;
        // A node alone has no membership: its ring never changes.
        let mut ring_open = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                batch = deltas.recv() => match batch {
                    Ok(batch) => state.publish(&batch).await,
                    Err(RecvError::Lagged(n)) => {
                        warn!(missed = n, "publisher fell behind the watcher; sending snapshots");
                        state.published = (*state.publisher.watcher.inventory()).clone();
                        state.snapshot_all().await;
                    }
                    Err(RecvError::Closed) => return,
                },
                changed = ring_changes.changed(), if ring_open => {
                    match changed {
                        Ok(()) => {
                            // A join or a death often comes as several
                            // changes in a row: let the view settle, then
                            // send each owner what it gains, once.
                            tokio::time::sleep(RING_SETTLE).await;
                            ring_changes.borrow_and_update();
                            state.rebalance().await;
                            // Owners are complete again only after a
                            // snapshot or a clean digest on the new ring.
                            state.anti_entropy(None).await;
                        }
                        Err(_) => ring_open = false,
                    }
                }
                Some(owner) = resyncs.recv() => {
                    let mut owners = HashSet::from([owner]);
                    while let Ok(more) = resyncs.try_recv() {
                        owners.insert(more);
                    }
                    state.publisher.counters.resyncs.fetch_add(owners.len() as u64, Ordering::Relaxed);
                    state.anti_entropy(Some(&owners)).await;
                }
                _ = sync.tick() => state.anti_entropy(None).await,
            }
        }
    }
}

/// The live members' incarnations.
fn live_incarnations(view: &ClusterView) -> BTreeMap<NodeId, u64> {
    view.live()
        .map(|m| (m.node.clone(), m.incarnation))
        .collect()
}

impl PublisherState {
    fn clock(&mut self, ring: &Ring) -> SourceClock {
        self.seq += 1;
        SourceClock {
            node: self.publisher.me.clone(),
            incarnation: self.publisher.incarnation,
            seq: self.seq,
            ring: ring.fingerprint(),
        }
    }

    /// Sends one publish per owner, all owners at once, and waits for all:
    /// per owner, batches arrive in order. `ring` is the ring the bodies
    /// were placed by.
    async fn send(&mut self, per_owner: BTreeMap<NodeId, PublishBody>, ring: &Ring) {
        let view = self.publisher.view.load_full();
        let mut calls = Vec::new();
        for (owner, body) in per_owner {
            let is_snapshot = matches!(body, PublishBody::Snapshot { .. });
            // A snapshot carries thousands of records: it gets the time to
            // travel and be applied. A timed-out snapshot is abandoned by
            // the owner too, so a short bound would never let one land.
            let large = match &body {
                PublishBody::Snapshot { .. } => true,
                PublishBody::Delta { upserts, removes } => {
                    upserts.len() + removes.len() > LARGE_DELTA
                }
            };
            let message = Publish {
                source: self.clock(ring),
                body,
            };
            let p = &self.publisher;
            p.counters.publishes.fetch_add(1, Ordering::Relaxed);
            if is_snapshot {
                p.counters.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            if owner == p.me {
                p.directory.apply_blocking(message, &view).await;
                continue;
            }
            let Some(addr) = view.api_of(&owner).map(str::to_owned) else {
                self.dirty.insert(owner);
                continue;
            };
            let transport = p.peers.clone();
            let timeout = if large {
                SNAPSHOT_TIMEOUT.max(p.timeout)
            } else {
                p.timeout
            };
            let counters = p.counters.clone();
            calls.push(async move {
                let r = peer::publish(transport.as_ref(), &addr, &message, timeout).await;
                if let Ok((_, sent)) = &r {
                    counters.bytes.fetch_add(*sent as u64, Ordering::Relaxed);
                }
                (owner, r)
            });
        }
        for (owner, result) in futures::future::join_all(calls).await {
            if let Err(e) = result {
                self.publisher
                    .counters
                    .failures
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%owner, error = %e, "publish failed; the next sync sends a snapshot");
                self.dirty.insert(owner);
            }
        }
    }

    async fn publish(&mut self, batch: &[Delta]) {
        let newest = batch
            .iter()
            .map(|d| d.record().updated_at)
            .max()
            .unwrap_or(0);
        let view = self.publisher.view.load_full();
        let mut per_owner: BTreeMap<NodeId, (Vec<ContainerRecord>, Vec<RecordId>)> =
            BTreeMap::new();
        for d in batch {
            let old = self.published.get(&d.record().id);
            // Already published as it is (the first sync's deltas repeat the
            // snapshot that followed it): nothing to send.
            let unchanged = match (d, old) {
                (Delta::Upsert(r), Some(o)) => o.same_content(r),
                (Delta::Remove(_), None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            // An update that drops keys (a rename, a network left) leaves
            // the owners of only the old keys: they get a Remove, or they
            // would keep an orphan that answers for the old keys.
            let mut was = Vec::new();
            if let Some(old) = old {
                owners_of(&view.ring, old, &mut was);
            }
            let mut will = Vec::new();
            if let Delta::Upsert(r) = d {
                owners_of(&view.ring, r, &mut will);
            }
            for o in &will {
                per_owner
                    .entry((*o).clone())
                    .or_default()
                    .0
                    .push(ContainerRecord::clone(d.record()));
            }
            for o in was.iter().filter(|o| !will.contains(o)) {
                per_owner
                    .entry((*o).clone())
                    .or_default()
                    .1
                    .push(RecordId::of(d.record()));
            }
            self.published.apply(d);
        }
        if per_owner.is_empty() {
            return;
        }
        let bodies = per_owner
            .into_iter()
            .map(|(o, (upserts, removes))| (o, PublishBody::Delta { upserts, removes }))
            .collect();
        self.send(bodies, &view.ring).await;
        let lag_ms = crate::service::now_ms().saturating_sub(newest);
        self.publisher.counters.lag.observe(lag_ms as f64 / 1000.0);
    }

    /// What each live member should hold from this node on `ring`, with
    /// its digest. Cloning and digesting every record is CPU work: it runs
    /// on the blocking pool so that gossip and requests keep their threads.
    async fn assignments(
        &self,
        ring: Arc<Ring>,
    ) -> BTreeMap<NodeId, (Vec<ContainerRecord>, (u64, u64))> {
        let published = self.published.clone();
        let work = move || {
            let mut per_owner: BTreeMap<NodeId, Vec<ContainerRecord>> = ring
                .members()
                .iter()
                .map(|m| (m.clone(), Vec::new()))
                .collect();
            for r in published.records() {
                let mut owners = Vec::new();
                owners_of(&ring, r, &mut owners);
                for o in owners {
                    per_owner
                        .entry(o.clone())
                        .or_default()
                        .push(ContainerRecord::clone(r));
                }
            }
            per_owner
                .into_iter()
                .map(|(o, records)| {
                    let digest = digest_of(&records);
                    (o, (records, digest))
                })
                .collect()
        };
        self.publisher
            .directory
            .bulk(work)
            .await
            .unwrap_or_default()
    }

    /// What [`Self::assignments`] would say each member's digest is,
    /// without copying any record: anti-entropy needs the records only
    /// where a digest differs.
    async fn digests(&self, ring: Arc<Ring>) -> BTreeMap<NodeId, (u64, u64)> {
        let published = self.published.clone();
        let work = move || {
            let mut per_owner: BTreeMap<NodeId, (u64, u64)> =
                ring.members().iter().map(|m| (m.clone(), (0, 0))).collect();
            let mut owners = Vec::new();
            for r in published.records() {
                let digest = record_digest(r);
                owners.clear();
                owners_of(&ring, r, &mut owners);
                for o in &owners {
                    let (n, d) = per_owner.entry((*o).clone()).or_default();
                    *n += 1;
                    *d = d.wrapping_add(digest);
                }
            }
            per_owner
        };
        self.publisher
            .directory
            .bulk(work)
            .await
            .unwrap_or_default()
    }

    /// Snapshots to `owners` (every member when `None`) of what each
    /// holds from this node on the ring now.
    async fn snapshots(&mut self, owners: Option<&HashSet<NodeId>>) {
        let ring = self.publisher.view.load().ring.clone();
        let bodies: BTreeMap<NodeId, PublishBody> = self
            .assignments(ring.clone())
            .await
            .into_iter()
            .filter(|(o, _)| owners.is_none_or(|only| only.contains(o)))
            .map(|(o, (records, _))| (o, PublishBody::Snapshot { records }))
            .collect();
        for o in bodies.keys() {
            self.dirty.remove(o);
        }
        self.send(bodies, &ring).await;
    }

    async fn snapshot_all(&mut self) {
        self.placed = Some(self.publisher.view.load().ring.clone());
        self.dirty.clear();
        self.snapshots(None).await;
    }

    /// After a ring or membership change: each owner gets, as a delta,
    /// only the records it gains; what it loses it drops itself after the
    /// ownership grace. Snapshots to every owner made a join cost the
    /// whole fleet's records in every round (50 nodes with 100,000
    /// containers in one process could not keep up); this costs the keys
    /// that moved. Owners a publish failed to reach, and members seen with
    /// a new incarnation (restarted, so empty), get a snapshot.
    async fn rebalance(&mut self) {
        let view = self.publisher.view.load_full();
        let seen = live_incarnations(&view);
        for (node, incarnation) in &seen {
            if self
                .incarnations
                .get(node)
                .is_some_and(|before| before != incarnation)
            {
                info!(owner = %node, "member restarted; sending it a snapshot");
                self.dirty.insert(node.clone());
            }
        }
        self.incarnations = seen;
        let now = view.ring.clone();
        let Some(before) = self.placed.replace(now.clone()) else {
            return self.snapshot_all().await;
        };
        if before.fingerprint() != now.fingerprint() {
            let published = self.published.clone();
            let placed = now.clone();
            let gains = self
                .publisher
                .directory
                .bulk(move || {
                    let mut per_owner: BTreeMap<NodeId, Vec<ContainerRecord>> = BTreeMap::new();
                    for r in published.records() {
                        let (mut was, mut will) = (Vec::new(), Vec::new());
                        owners_of(&before, r, &mut was);
                        owners_of(&placed, r, &mut will);
                        for o in will.into_iter().filter(|o| !was.contains(o)) {
                            per_owner
                                .entry(o.clone())
                                .or_default()
                                .push(ContainerRecord::clone(r));
                        }
                    }
                    per_owner
                })
                .await
                .unwrap_or_default();
            let bodies: BTreeMap<NodeId, PublishBody> = gains
                .into_iter()
                .filter(|(o, _)| !self.dirty.contains(o))
                .map(|(o, upserts)| {
                    let removes = Vec::new();
                    (o, PublishBody::Delta { upserts, removes })
                })
                .collect();
            self.send(bodies, &now).await;
        }
        if !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            self.snapshots(Some(&dirty)).await;
        }
    }

    /// Sends `owners` (every member when `None`) a digest of what each
    /// should hold from this node, all at once, and a snapshot to those
    /// whose digest differs or cannot be asked. A clean digest makes the
    /// owner complete for this node.
    async fn anti_entropy(&mut self, owners: Option<&HashSet<NodeId>>) {
        let view = self.publisher.view.load_full();
        let ring = view.ring.clone();
        let clock = SourceClock {
            node: self.publisher.me.clone(),
            incarnation: self.publisher.incarnation,
            seq: self.seq,
            ring: ring.fingerprint(),
        };
        let p = &self.publisher;
        let dirty = &self.dirty;
        let asks = self
            .digests(ring.clone())
            .await
            .into_iter()
            .filter(|(o, _)| owners.is_none_or(|only| only.contains(o)))
            .map(|(owner, (count, digest))| {
                let request = DigestRequest {
                    source: clock.clone(),
                    count,
                    digest,
                };
                let view = view.clone();
                async move {
                    let matches = if dirty.contains(&owner) {
                        false
                    } else if owner == p.me {
                        p.directory.check(&request, &view).matches
                    } else if let Some(addr) = view.api_of(&owner) {
                        match peer::digest(p.peers.as_ref(), addr, &request, p.timeout).await {
                            Ok(reply) => reply.matches,
                            Err(e) => {
                                debug!(%owner, error = %e, "digest failed");
                                false
                            }
                        }
                    } else {
                        false
                    };
                    (owner, matches)
                }
            });
        let repairs: HashSet<NodeId> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|(_, matches)| !matches)
            .map(|(owner, _)| owner)
            .collect();
        if !repairs.is_empty() {
            info!(
                owners = repairs.len(),
                "anti-entropy: sending snapshots where digests differ"
            );
            self.snapshots(Some(&repairs)).await;
        }
    }
}

/// How the directory's upkeep runs.
pub struct Upkeep {
    /// This node.
    pub me: NodeId,
    /// The membership view.
    pub view: Arc<ArcSwap<ClusterView>>,
    /// The directory it keeps.
    pub directory: Arc<DirectoryService>,
    /// How to reach sources to ask for a resync.
    pub peers: Arc<dyn PeerTransport>,
    /// This node's own publisher, for its own resyncs.
    pub own_publisher: tokio::sync::mpsc::Sender<NodeId>,
    /// How long a source may take to answer.
    pub timeout: Duration,
    /// How often to look.
    pub every: Duration,
    /// How long the ring must be stable before unowned records go.
    pub grace: Duration,
    /// How often unowned records are dropped once the ring is stable.
    pub prune_every: Duration,
}

/// The longest wait between two resync requests to one source.
const RESYNC_MAX_WAIT: Duration = Duration::from_secs(5);

impl Upkeep {
    /// Keeps the directory to what this node should hold, until shutdown:
    /// forgets sources the failure detector declared dead; asks every live
    /// source it is not complete for to resync it (again after a doubling
    /// wait while it stays incomplete); and once the ring has not changed
    /// for `grace`, drops records none of whose keys this node owns, then
    /// again every `prune_every` (an orphan a lost Remove left lives no
    /// longer than that).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        let mut ring_members: Vec<NodeId> = Vec::new();
        let mut stable_since = Instant::now();
        let mut pruned_at: Option<Instant> = None;
        let mut asked: BTreeMap<NodeId, (Instant, Duration)> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let v = self.view.load_full();
            for source in self.directory.snapshot().sources() {
                if v.members.get(&source).is_some_and(|m| !m.alive) {
                    let n = self.directory.remove_source(&source);
                    info!(%source, records = n, "source declared dead; its records leave the directory");
                }
            }
            self.ask_for_resyncs(&v, &mut asked).await;
            if v.ring.members() != ring_members.as_slice() {
                ring_members = v.ring.members().to_vec();
                stable_since = Instant::now();
                pruned_at = None;
            } else if stable_since.elapsed() >= self.grace
                && pruned_at.is_none_or(|at| at.elapsed() >= self.prune_every)
            {
                let (me, ring) = (self.me.clone(), v.ring.clone());
                let work = self.directory.clone();
                let dropped = self
                    .directory
                    .bulk(move || work.retain(|r| owns_any(&ring, &me, r)))
                    .await
                    .unwrap_or(0);
                if dropped > 0 {
                    info!(
                        dropped,
                        "dropped records whose keys this node no longer owns"
                    );
                }
                pruned_at = Some(Instant::now());
            }
        }
    }

    async fn ask_for_resyncs(
        &self,
        view: &ClusterView,
        asked: &mut BTreeMap<NodeId, (Instant, Duration)>,
    ) {
        let missing = self.directory.missing(view);
        asked.retain(|node, _| missing.contains(node));
        let ring = view.ring.fingerprint();
        let mut calls = Vec::new();
        for source in missing {
            let wait = match asked.get(&source) {
                Some((at, wait)) if at.elapsed() < *wait => continue,
                Some((_, wait)) => (*wait * 2).min(RESYNC_MAX_WAIT),
                None => self.every.max(Duration::from_millis(200)),
            };
            asked.insert(source.clone(), (Instant::now(), wait));
            if source == self.me {
                let _ = self.own_publisher.try_send(source);
                continue;
            }
            let Some(addr) = view.api_of(&source).map(str::to_owned) else {
                continue;
            };
            let request = ResyncRequest {
                owner: self.me.clone(),
                ring,
            };
            calls.push(async move {
                if let Err(e) =
                    peer::resync(self.peers.as_ref(), &addr, &request, self.timeout).await
                {
                    debug!(%source, error = %e, "resync request failed");
                }
            });
        }
        futures::future::join_all(calls).await;
    }
}
