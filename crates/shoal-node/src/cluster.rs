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
use shoal_core::directory::{OwnerDirectory, SourceSummary, digest_of};
use shoal_core::ring::Ring;
use shoal_core::wire::{
    DigestReply, DigestRequest, Publish, PublishAck, PublishBody, RecordId, SourceClock,
    record_digest,
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

    fn apply(&self, p: &Publish) -> PublishAck {
        self.edit(|d| d.apply(p))
    }

    /// Applies a publish: a snapshot or a large delta (thousands of
    /// records, CPU work that must not hold up gossip and requests) on the
    /// blocking pool, a small delta at once (two thread hand-offs were most
    /// of a small publish's time).
    pub async fn apply_blocking(self: &Arc<Self>, p: Publish) -> PublishAck {
        if let PublishBody::Delta { upserts, removes } = &p.body
            && upserts.len() + removes.len() <= LARGE_DELTA
        {
            return self.apply(&p);
        }
        let this = self.clone();
        self.bulk(move || this.apply(&p))
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
    /// source, among the records whose keys `me` owns on `ring`? Records it
    /// is about to drop (after a ring change, within the ownership grace)
    /// do not count, so a shrunk share does not cost a snapshot.
    pub fn check(&self, d: &DigestRequest, ring: &Ring, me: &NodeId) -> DigestReply {
        let owned = |r: &ContainerRecord| owns_any(ring, me, r);
        let matches = match self.snapshot.load().summary_where(&d.source.node, owned) {
            Some(SourceSummary {
                incarnation,
                count,
                digest,
                ..
            }) => incarnation == d.source.incarnation && count == d.count && digest == d.digest,
            None => d.count == 0,
        };
        DigestReply { matches }
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
    /// Ticks when the ring changes.
    pub ring_changes: tokio::sync::watch::Receiver<u64>,
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
}

impl Publisher {
    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut deltas = self.watcher.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.watcher.ready() => {}
        }
        let mut ring_changes = self.ring_changes.clone();
        let mut state = PublisherState {
            published: (*self.watcher.inventory()).clone(),
            publisher: self,
            seq: 0,
            dirty: HashSet::new(),
            placed: None,
        };
        state.snapshot_all().await;
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
                        }
                        Err(_) => ring_open = false,
                    }
                }
                _ = sync.tick() => state.anti_entropy().await,
            }
        }
    }
}

impl PublisherState {
    fn clock(&mut self) -> SourceClock {
        self.seq += 1;
        SourceClock {
            node: self.publisher.me.clone(),
            incarnation: self.publisher.incarnation,
            seq: self.seq,
        }
    }

    /// Sends one publish per owner, all owners at once, and waits for all:
    /// per owner, batches arrive in order.
    async fn send(&mut self, per_owner: BTreeMap<NodeId, PublishBody>) {
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
                source: self.clock(),
                body,
            };
            let p = &self.publisher;
            p.counters.publishes.fetch_add(1, Ordering::Relaxed);
            if is_snapshot {
                p.counters.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            if owner == p.me {
                p.directory.apply_blocking(message).await;
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
            let mut owners = Vec::new();
            if let Some(old) = old {
                owners_of(&view.ring, old, &mut owners);
            }
            owners_of(&view.ring, d.record(), &mut owners);
            for o in owners {
                let entry = per_owner.entry(o.clone()).or_default();
                match d {
                    Delta::Upsert(r) => entry.0.push(ContainerRecord::clone(r)),
                    Delta::Remove(r) => entry.1.push(RecordId::of(r)),
                }
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
        self.send(bodies).await;
        let lag_ms = crate::service::now_ms().saturating_sub(newest);
        self.publisher.counters.lag.observe(lag_ms as f64 / 1000.0);
    }

    /// What each live member should hold from this node, with its
    /// digest. Cloning and digesting every record is CPU work: it runs on
    /// the blocking pool so that gossip and requests keep their threads.
    async fn assignments(&self) -> BTreeMap<NodeId, (Vec<ContainerRecord>, (u64, u64))> {
        let ring = self.publisher.view.load_full().ring.clone();
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
    async fn digests(&self) -> BTreeMap<NodeId, (u64, u64)> {
        let ring = self.publisher.view.load_full().ring.clone();
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

    async fn snapshot_all(&mut self) {
        self.placed = Some(self.publisher.view.load().ring.clone());
        let bodies = self
            .assignments()
            .await
            .into_iter()
            .map(|(o, (records, _))| (o, PublishBody::Snapshot { records }))
            .collect();
        self.dirty.clear();
        self.send(bodies).await;
    }

    /// After a ring change: each owner gets, as a delta, only the records
    /// it gains; what it loses it drops itself after the ownership grace.
    /// Snapshots to every owner made a join cost the whole fleet's records
    /// in every round (50 nodes with 100,000 containers in one process
    /// could not keep up); this costs the keys that moved. Owners a publish
    /// failed to reach get a snapshot.
    async fn rebalance(&mut self) {
        let now = self.publisher.view.load().ring.clone();
        let Some(before) = self.placed.replace(now.clone()) else {
            return self.snapshot_all().await;
        };
        let published = self.published.clone();
        let gains = self
            .publisher
            .directory
            .bulk(move || {
                let mut per_owner: BTreeMap<NodeId, Vec<ContainerRecord>> = BTreeMap::new();
                for r in published.records() {
                    let (mut was, mut will) = (Vec::new(), Vec::new());
                    owners_of(&before, r, &mut was);
                    owners_of(&now, r, &mut will);
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
        let mut bodies: BTreeMap<NodeId, PublishBody> = gains
            .into_iter()
            .map(|(o, upserts)| {
                let removes = Vec::new();
                (o, PublishBody::Delta { upserts, removes })
            })
            .collect();
        if !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            for (o, (records, _)) in self.assignments().await {
                if dirty.contains(&o) {
                    bodies.insert(o, PublishBody::Snapshot { records });
                }
            }
        }
        self.send(bodies).await;
    }

    async fn anti_entropy(&mut self) {
        let view = self.publisher.view.load_full();
        let mut repairs = HashSet::new();
        for (owner, (count, digest)) in self.digests().await {
            let request = DigestRequest {
                source: SourceClock {
                    node: self.publisher.me.clone(),
                    incarnation: self.publisher.incarnation,
                    seq: self.seq,
                },
                count,
                digest,
            };
            let matches = if self.dirty.contains(&owner) {
                false
            } else if owner == self.publisher.me {
                let ring = view.ring.clone();
                self.publisher
                    .directory
                    .check(&request, &ring, &self.publisher.me)
                    .matches
            } else if let Some(addr) = view.api_of(&owner) {
                match peer::digest(
                    self.publisher.peers.as_ref(),
                    addr,
                    &request,
                    self.publisher.timeout,
                )
                .await
                {
                    Ok(reply) => reply.matches,
                    Err(e) => {
                        debug!(%owner, error = %e, "digest failed");
                        false
                    }
                }
            } else {
                false
            };
            if !matches {
                repairs.insert(owner);
            }
        }
        if !repairs.is_empty() {
            let repairs: BTreeMap<NodeId, PublishBody> = self
                .assignments()
                .await
                .into_iter()
                .filter(|(o, _)| repairs.contains(o))
                .map(|(o, (records, _))| (o, PublishBody::Snapshot { records }))
                .collect();
            info!(
                owners = repairs.len(),
                "anti-entropy: sending snapshots where digests differ"
            );
            for o in repairs.keys() {
                self.dirty.remove(o);
            }
            self.send(repairs).await;
        }
    }
}

/// Keeps the directory to what this node should hold: forgets sources the
/// failure detector declared dead, and once the ring has not changed for
/// `grace`, records none of whose keys this node owns.
pub async fn maintain_directory(
    me: NodeId,
    view: Arc<ArcSwap<ClusterView>>,
    directory: Arc<DirectoryService>,
    every: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    let mut ring_members: Vec<NodeId> = Vec::new();
    let mut stable_since = Instant::now();
    // Unowned records are dropped once per stable period of the ring.
    let mut pruned = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let v = view.load_full();
        for source in directory.snapshot().sources() {
            if v.members.get(&source).is_some_and(|m| !m.alive) {
                let n = directory.remove_source(&source);
                info!(%source, records = n, "source declared dead; its records leave the directory");
            }
        }
        if v.ring.members() != ring_members.as_slice() {
            ring_members = v.ring.members().to_vec();
            stable_since = Instant::now();
            pruned = false;
        } else if !pruned && stable_since.elapsed() >= grace {
            let (directory, me, ring) = (directory.clone(), me.clone(), v.ring.clone());
            let work = directory.clone();
            let dropped = directory
                .bulk(move || work.retain(|r| owns_any(&ring, &me, r)))
                .await
                .unwrap_or(0);
            if dropped > 0 {
                info!(
                    dropped,
                    "dropped records whose keys this node no longer owns"
                );
            }
            pruned = true;
        }
    }
}
