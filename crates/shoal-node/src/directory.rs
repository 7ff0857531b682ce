//! The owner directory service: the records this node holds because it
//! owns one of their keys, and the upkeep that keeps them to that.
//!
//! The directory applies publishes under a short lock and hands readers an
//! immutable snapshot. The upkeep forgets sources the failure detector
//! declared dead; asks the live sources it is not complete for (a new
//! incarnation, a new ring, a lost message, a source that says this owner
//! is behind) for a digest round; and once the ring has been stable for a
//! grace period, drops records none of whose keys this node owns any more,
//! then again every sync interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shoal_core::directory::{Here, OwnerDirectory};
use shoal_core::placement::owns_any;
use shoal_core::ring::Ring;
use shoal_core::wire::{
    DigestReply, DigestRequest, Invalidate, Publish, PublishAck, PublishBody, ResyncRequest,
};
use shoal_core::{ContainerRecord, LookupKey, NodeId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::membership::ClusterView;
use crate::peer::PeerClient;

/// Records a prune removes per hold of the directory's lock.
const PRUNE_CHUNK: usize = 256;

/// Deltas with more records than this are applied on the blocking pool.
const LARGE_DELTA: usize = 256;

/// The owner directory behind a lock for writers and a snapshot for readers.
pub struct DirectoryService {
    working: Mutex<OwnerDirectory>,
    snapshot: ArcSwap<OwnerDirectory>,
    bulk: tokio::sync::Semaphore,
    /// Who fetched which key from here within the hot cache's time.
    fetchers: Fetchers,
    /// Edits that panicked and were rolled back.
    edits_undone: std::sync::atomic::AtomicU64,
}

/// Keys waiting to be invalidated at one node; past this many, the node
/// is told to drop everything it fetched from here instead.
const INVALIDATION_QUEUE: usize = 4096;

/// The most keys this owner remembers fetchers for; past it, the least
/// used are forgotten and their fetchers told to drop them, so that a
/// cached answer never outlives the owner's memory of it.
const FETCHED_KEYS: u64 = 250_000;

/// What waits to be sent to one node.
#[derive(Debug, Default)]
struct Pending {
    keys: std::collections::BTreeSet<LookupKey>,
    everything: bool,
}

/// The nodes that fetched each key from this owner, remembered for the hot
/// cache's time; when a key's answer changes here, each of them is told to
/// drop it. Deliveries that fail are retried until the node leaves the
/// view: with a long-lived hot cache, a lost invalidation would otherwise
/// be a stale answer until the entry expires.
pub struct Fetchers {
    by_key: moka::sync::Cache<LookupKey, Arc<Mutex<std::collections::BTreeSet<NodeId>>>>,
    pending: Arc<Mutex<BTreeMap<NodeId, Pending>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Invalidations sent (keys, and flushes of everything).
    pub sent: std::sync::atomic::AtomicU64,
    /// Times a node was told to drop everything it fetched from here.
    pub flushes: Arc<std::sync::atomic::AtomicU64>,
}

/// Queues `keys` (or everything) for `node`.
fn queue(
    pending: &Mutex<BTreeMap<NodeId, Pending>>,
    flushes: &std::sync::atomic::AtomicU64,
    node: NodeId,
    keys: impl IntoIterator<Item = LookupKey>,
    everything: bool,
) {
    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
    let p = pending.entry(node).or_default();
    if p.everything {
        return;
    }
    p.keys.extend(keys);
    if everything || p.keys.len() > INVALIDATION_QUEUE {
        p.everything = true;
        p.keys.clear();
        flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Fetchers {
    fn new(remember: Duration) -> Self {
        let pending: Arc<Mutex<BTreeMap<NodeId, Pending>>> = Arc::default();
        let wake = Arc::new(tokio::sync::Notify::new());
        let flushes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let evicted = {
            let (pending, wake, flushes) = (pending.clone(), wake.clone(), flushes.clone());
            move |key: Arc<LookupKey>,
                  nodes: Arc<Mutex<std::collections::BTreeSet<NodeId>>>,
                  cause: moka::notification::RemovalCause| {
                // Forgotten for room, not expired or changed: the nodes
                // that hold it would never hear of a change.
                if cause != moka::notification::RemovalCause::Size {
                    return;
                }
                let nodes = std::mem::take(&mut *nodes.lock().unwrap_or_else(|p| p.into_inner()));
                for node in nodes {
                    queue(&pending, &flushes, node, [LookupKey::clone(&key)], false);
                }
                wake.notify_one();
            }
        };
        Fetchers {
            by_key: moka::sync::Cache::builder()
                .time_to_live(remember)
                .max_capacity(FETCHED_KEYS)
                .eviction_listener(evicted)
                .build(),
            pending,
            wake,
            sent: Default::default(),
            flushes,
        }
    }

    fn fetched(&self, key: LookupKey, by: NodeId) {
        let set = self.by_key.get_with(key, Arc::default);
        set.lock().unwrap_or_else(|p| p.into_inner()).insert(by);
    }

    fn changed(&self, keys: &[LookupKey]) {
        let mut any = false;
        for key in keys {
            let Some(set) = self.by_key.remove(key) else {
                continue;
            };
            let nodes = std::mem::take(&mut *set.lock().unwrap_or_else(|p| p.into_inner()));
            for node in nodes {
                queue(&self.pending, &self.flushes, node, [key.clone()], false);
                any = true;
            }
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// This owner can no longer say which answers changed (it lost a
    /// message from a source): every node that fetched anything from here
    /// drops all of it.
    fn flush_all(&self) {
        let mut any = false;
        for (_, set) in self.by_key.iter() {
            let nodes = std::mem::take(&mut *set.lock().unwrap_or_else(|p| p.into_inner()));
            for node in nodes {
                queue(&self.pending, &self.flushes, node, [], true);
                any = true;
            }
        }
        self.by_key.invalidate_all();
        if any {
            self.wake.notify_one();
        }
    }

    fn any(&self) -> bool {
        self.by_key.run_pending_tasks();
        self.by_key.entry_count() > 0
    }

    /// Takes what waits to be sent.
    fn take(&self) -> BTreeMap<NodeId, Pending> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back what could not be sent yet, merged with what was queued
    /// since (a flush put back is not counted again).
    fn put_back(&self, node: NodeId, p: Pending) {
        if p.everything {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let held = pending.entry(node).or_default();
            held.everything = true;
            held.keys.clear();
        } else {
            queue(&self.pending, &self.flushes, node, p.keys, false);
        }
    }
}

impl DirectoryService {
    /// An empty directory that remembers who fetched what for `remember`
    /// (the fleet's hot cache TTL, with a margin).
    pub fn new(remember: Duration) -> Self {
        DirectoryService {
            working: Mutex::default(),
            snapshot: ArcSwap::default(),
            bulk: tokio::sync::Semaphore::new(1),
            fetchers: Fetchers::new(remember),
            edits_undone: Default::default(),
        }
    }

    /// Remembers that `by` fetched `key` (canonical) from here: it is told
    /// when the key's answer changes.
    pub fn fetched(&self, key: LookupKey, by: NodeId) {
        self.fetchers.fetched(key, by);
    }

    /// The invalidation counters.
    pub fn fetchers(&self) -> &Fetchers {
        &self.fetchers
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

    /// Runs one edit of the working copy and publishes the result to
    /// readers. An edit is all or nothing: if it panics half-way (a bug;
    /// peer input is validated before it gets here), the working copy goes
    /// back to the last snapshot, which every edit leaves equal to it, and
    /// the panic carries on to the caller. The next edit then starts from a
    /// whole directory, not from what the failed one left.
    fn edit<T>(&self, f: impl FnOnce(&mut OwnerDirectory) -> T) -> T {
        let mut working = self.working.lock().unwrap_or_else(|p| {
            self.working.clear_poison();
            p.into_inner()
        });
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut working))) {
            Ok(out) => {
                self.snapshot.store(Arc::new(working.clone()));
                out
            }
            Err(panic) => {
                *working = OwnerDirectory::clone(&self.snapshot.load());
                self.edits_undone
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(working);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Edits that panicked and were undone (a bug to report).
    pub fn edits_undone(&self) -> u64 {
        self.edits_undone.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn apply(&self, p: &Publish, here: Here) -> PublishAck {
        let watched = self.fetchers.any();
        let (ack, touched, lost) = self.edit(|d| {
            let touched = if watched {
                d.keys_touched(p)
            } else {
                Vec::new()
            };
            let was_complete = d.is_complete(&p.source.node);
            let ack = d.apply(p, here);
            (ack, touched, was_complete && !d.is_complete(&p.source.node))
        });
        if lost && watched {
            // A message from this source was lost: what it changed is not
            // among the keys touched.
            self.fetchers.flush_all();
        } else if ack == PublishAck::Applied {
            self.fetchers.changed(&touched);
        }
        ack
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

    /// This node's ring changed from `before`: after joins only, the
    /// sources it was complete for stay complete; digests that arrived
    /// placed on the new ring before this node had it are checked now.
    /// Returns how many sources those digests made it complete for.
    pub fn ring_changed(&self, view: &ClusterView, before: Option<&Ring>) -> usize {
        let (ring, me) = (&view.ring, &view.me);
        let grew_from = before
            .filter(|b| ring.grew_from(b))
            .map(|b| b.fingerprint());
        self.edit(|dir| {
            dir.ring_changed(
                ring.fingerprint(),
                grew_from,
                |source| here(view, source).live,
                |r| owns_any(ring, me, r),
            )
            .len()
        })
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

    /// The sources this directory is complete for, as a lookup's answer
    /// names them: none when this node does not own `key` on its ring
    /// (its completeness says nothing of keys it does not own).
    pub fn complete_for(&self, view: &ClusterView, key: &LookupKey) -> Vec<(NodeId, u64)> {
        if !view.ring.is_owner(&view.me, key) {
            return Vec::new();
        }
        self.snapshot.load().complete_for(view.ring.fingerprint())
    }

    /// True when this directory is complete for `source` at `incarnation`
    /// on the view's ring.
    pub fn is_complete_for(&self, view: &ClusterView, source: &NodeId, incarnation: u64) -> bool {
        self.snapshot
            .load()
            .missing([(source, incarnation)], view.ring.fingerprint())
            .is_empty()
    }

    /// The live, ready sources this directory is not complete for on the
    /// view's ring (what the upkeep asks to resync it).
    pub fn missing(&self, view: &ClusterView) -> Vec<NodeId> {
        let mut missing = self
            .snapshot
            .load()
            .missing(view.sources(), view.ring.fingerprint());
        // A source that could not deliver here says so in gossip, which
        // reaches this node even when the source itself cannot.
        if !view.behind.contains(&view.me) {
            return missing;
        }
        for (source, _) in view.sources() {
            if !missing.contains(source) && view.is_behind(source, &view.me) {
                missing.push(source.clone());
            }
        }
        missing
    }

    /// Forgets a source.
    pub fn remove_source(&self, node: &NodeId) -> usize {
        let watched = self.fetchers.any();
        let (n, touched) = self.edit(|d| {
            let touched = if watched {
                d.keys_of_source(node)
            } else {
                Vec::new()
            };
            (d.remove_source(node), touched)
        });
        self.fetchers.changed(&touched);
        n
    }

    /// Drops records for which `keep` is false. The walk over every record
    /// reads a snapshot; the removals take the lock a chunk at a time, so
    /// publishes (a small delta is applied on the request's thread, under
    /// that lock) wait for a chunk, not for the whole prune.
    pub fn retain(&self, keep: impl Fn(&ContainerRecord) -> bool) -> usize {
        let doomed = self.snapshot.load().doomed(keep);
        doomed
            .chunks(PRUNE_CHUNK)
            .map(|chunk| self.edit(|d| d.drop_held(chunk)))
            .sum()
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

/// How the directory's upkeep runs.
pub struct Upkeep {
    /// This node.
    pub me: NodeId,
    /// The membership view.
    pub view: Arc<ArcSwap<ClusterView>>,
    /// The directory it keeps.
    pub directory: Arc<DirectoryService>,
    /// How to reach sources to ask for a resync.
    pub peers: PeerClient,
    /// Ticks when the view changes.
    pub view_changes: tokio::sync::watch::Receiver<u64>,
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

/// How long an owner lets a source's own digest round come before it asks
/// for one.
const RESYNC_FIRST_WAIT: Duration = Duration::from_secs(1);

impl Upkeep {
    /// Keeps the directory to what this node should hold, until shutdown:
    /// forgets sources the failure detector declared dead; asks every live
    /// source it is not complete for to resync it (again after a doubling
    /// wait while it stays incomplete); and once the ring has not changed
    /// for `grace`, drops records none of whose keys this node owns, then
    /// again every `prune_every` (an orphan a lost Remove left lives no
    /// longer than that).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        let mut ring_members: Vec<NodeId> = Vec::new();
        let mut checked_ring: Option<Arc<Ring>> = None;
        let mut stable_since = Instant::now();
        let mut pruned_at: Option<Instant> = None;
        let mut asked: BTreeMap<NodeId, (Instant, Duration)> = BTreeMap::new();
        let mut watching = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                changed = self.view_changes.changed(), if watching => {
                    watching = changed.is_ok();
                }
            }
            let v = self.view.load_full();
            // At once on a ring change, before any resync is asked: most
            // sources saw the change first and their digests are here.
            if checked_ring.as_ref().map(|r| r.fingerprint()) != Some(v.ring.fingerprint()) {
                let before = checked_ring.replace(v.ring.clone());
                let completed = self.directory.ring_changed(&v, before.as_deref());
                if completed > 0 {
                    debug!(
                        completed,
                        "digests that came ahead of the ring change now count"
                    );
                }
            }
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
            // The first ask waits: after a view change every source sends
            // every owner a digest of its own accord, and N owners asking
            // N sources at once cost each source N digest rounds (50 nodes
            // in one process timed out under them).
            let (at, wait) = asked
                .entry(source.clone())
                .or_insert((Instant::now(), RESYNC_FIRST_WAIT));
            if at.elapsed() < *wait {
                continue;
            }
            *at = Instant::now();
            *wait = (*wait * 2).min(RESYNC_MAX_WAIT);
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
                if let Err(e) = self
                    .peers
                    .resync(&source, &addr, &request, self.timeout)
                    .await
                {
                    debug!(%source, error = %e, "resync request failed");
                }
            });
        }
        futures::future::join_all(calls).await;
    }
}

/// Sends the invalidations the directory queues, batched per node: all
/// that are waiting go out at once, one request per node. A delivery that
/// fails is retried, after a doubling wait, until it lands or the node
/// leaves the view (a restarted node starts with an empty hot cache).
pub struct Invalidator {
    /// The directory whose fetchers it serves.
    pub directory: Arc<DirectoryService>,
    /// This node.
    pub me: NodeId,
    /// The membership view, for addresses.
    pub view: Arc<ArcSwap<ClusterView>>,
    /// How to reach nodes.
    pub peers: PeerClient,
    /// How long a node may take.
    pub timeout: Duration,
}

/// The first wait before an invalidation is sent again.
const INVALIDATION_RETRY: Duration = Duration::from_millis(100);

impl Invalidator {
    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let fetchers = &self.directory.fetchers;
        // Nodes whose last delivery failed: when to try again, and the
        // wait after that.
        let mut backoff: BTreeMap<NodeId, (Instant, Duration)> = BTreeMap::new();
        loop {
            let next_retry = backoff.values().map(|(at, _)| *at).min();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = fetchers.wake.notified() => {}
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(|| {
                    Instant::now() + Duration::from_secs(3600)
                }).into()), if next_retry.is_some() => {}
            }
            let view = self.view.load_full();
            let now = Instant::now();
            let mut due = Vec::new();
            for (node, p) in fetchers.take() {
                if !view.members.contains_key(&node) {
                    backoff.remove(&node);
                    continue;
                }
                match backoff.get(&node) {
                    Some((at, _)) if *at > now => fetchers.put_back(node, p),
                    _ => due.push((node, p)),
                }
            }
            let this = &self;
            let calls = due.into_iter().map(|(node, p)| {
                let addr = view.api_of(&node).map(str::to_owned);
                async move {
                    let request = Invalidate {
                        owner: this.me.clone(),
                        keys: p.keys.iter().cloned().collect(),
                        everything: p.everything,
                    };
                    let sent = match addr {
                        Some(addr) => this
                            .peers
                            .invalidate(&node, &addr, &request, this.timeout)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("its address is not known here".to_owned()),
                    };
                    (node, p, sent)
                }
            });
            for (node, p, sent) in futures::future::join_all(calls).await {
                match sent {
                    Ok(_) => {
                        backoff.remove(&node);
                        fetchers.sent.fetch_add(
                            p.keys.len().max(usize::from(p.everything)) as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                    Err(error) => {
                        let wait = backoff
                            .get(&node)
                            .map_or(INVALIDATION_RETRY, |(_, w)| (*w * 2).min(RESYNC_MAX_WAIT));
                        debug!(%node, %error, ?wait, "invalidation failed; retrying");
                        backoff.insert(node.clone(), (Instant::now() + wait, wait));
                        fetchers.put_back(node, p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::wire::SourceClock;

    fn publish(seq: u64, name: &str) -> Publish {
        let mut record = shoal_engine::synthetic_record(name, 0, &shoal_core::EngineId("e".into()));
        record.node = NodeId::from("a");
        Publish {
            source: SourceClock {
                node: NodeId::from("a"),
                incarnation: 1,
                seq,
                prev: seq - 1,
                ring: 0,
            },
            body: PublishBody::Delta {
                upserts: vec![record],
                removes: vec![],
            },
        }
    }

    const HERE: Here = Here {
        ring: 0,
        live: None,
    };

    #[test]
    fn a_flush_is_counted_once_even_when_it_waits_for_a_retry() {
        use std::sync::atomic::Ordering::Relaxed;
        let fetchers = Fetchers::new(Duration::from_secs(60));
        let n1 = NodeId::from("n1");
        fetchers.fetched(LookupKey::Name("web".into()), n1.clone());
        fetchers.flush_all();
        assert_eq!(fetchers.flushes.load(Relaxed), 1);
        let p = fetchers.take().remove(&n1).expect("n1 fetched");
        assert!(p.everything && p.keys.is_empty());
        // The delivery failed: put back, then more keys change.
        fetchers.put_back(n1.clone(), p);
        fetchers.fetched(LookupKey::Name("api".into()), n1.clone());
        fetchers.changed(&[LookupKey::Name("api".into())]);
        assert_eq!(fetchers.flushes.load(Relaxed), 1);
        let p = fetchers.take().remove(&n1).expect("still pending");
        assert!(p.everything && p.keys.is_empty(), "{p:?}");
    }

    #[test]
    fn too_many_keys_for_one_node_become_one_flush() {
        let fetchers = Fetchers::new(Duration::from_secs(60));
        let n1 = NodeId::from("n1");
        let keys: Vec<LookupKey> = (0..=INVALIDATION_QUEUE)
            .map(|i| LookupKey::Name(format!("c{i}")))
            .collect();
        for k in &keys {
            fetchers.fetched(k.clone(), n1.clone());
        }
        fetchers.changed(&keys[..INVALIDATION_QUEUE]);
        assert!(!fetchers.take()[&n1].everything, "at the bound: keys");
        for k in &keys {
            fetchers.fetched(k.clone(), n1.clone());
        }
        fetchers.changed(&keys);
        let p = fetchers.take().remove(&n1).unwrap();
        assert!(p.everything && p.keys.is_empty(), "past the bound: a flush");
    }

    #[test]
    fn an_edit_that_panics_half_way_is_undone_and_the_next_one_starts_whole() {
        let directory = DirectoryService::new(Duration::from_secs(1));
        assert_eq!(
            directory.apply(&publish(1, "web"), HERE),
            PublishAck::Applied
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            directory.edit(|d| {
                d.remove_source(&NodeId::from("a"));
                assert_eq!(d.copies(), 0);
                panic!("a bug half-way through an edit");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(directory.edits_undone(), 1);
        assert_eq!(directory.snapshot().copies(), 1, "readers never saw it");
        // The working copy is whole again: the next edit builds on it.
        assert_eq!(
            directory.apply(&publish(2, "api"), HERE),
            PublishAck::Applied
        );
        let snapshot = directory.snapshot();
        assert_eq!(snapshot.copies(), 2);
        assert_eq!(snapshot.summary(&NodeId::from("a")).unwrap().seq, 2);
        assert_eq!(directory.lookup(&LookupKey::Name("web0".into())).len(), 1);
    }
}
