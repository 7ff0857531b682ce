//! The publisher: carries out what this node's publishing protocol
//! ([`shoal_core::protocol::Source`]) says, one ordered queue per owner.
//!
//! The protocol decides what goes to whom on each input: the watcher's
//! deltas, a changed view, an owner's resync request, a failed delivery,
//! the answers of a digest round and the anti-entropy tick. This task
//! feeds it those inputs and hands each message to its owner's queue. A
//! queue delivers in order, one publish at a time (deltas that queued up
//! behind one another go as one), so a slow or hung owner
//! delays only itself; a queue that overflows drops what it holds and its
//! owner gets a snapshot instead. Publishes to this node itself skip HTTP.
//! An engine lost for `engine_lost_after` has already left the local
//! inventory (`shoal_engine::engines`): its containers come here as
//! removes, and as upserts when it is back.
//! Work that walks every record (snapshots, digests, gains) runs on the
//! blocking pool through [`DirectoryService::bulk`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use shoal_core::protocol::{self, Message, Out, Source};
use shoal_core::wire::PublishAck;
use shoal_core::{Delta, NodeId};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::directory::DirectoryService;
use crate::membership::ClusterView;
use crate::peer::PeerClient;

/// Counters of the publisher, for metrics and the benchmarks.
#[derive(Debug)]
pub struct PublisherCounters {
    /// From the watcher reading a change to an owner having it, per
    /// delivery.
    pub lag: Histogram,
    /// Publish requests sent (deltas, batched, and snapshots), self
    /// included.
    pub publishes: AtomicU64,
    /// Messages that could not be delivered (their owner gets a snapshot).
    pub failures: AtomicU64,
    /// Publishes an owner answered `Stale` although they came from this
    /// node's live incarnation (counted in `failures` too).
    pub stale: AtomicU64,
    /// Snapshots sent.
    pub snapshots: AtomicU64,
    /// Bytes of publish bodies sent over HTTP.
    pub bytes: AtomicU64,
    /// Resync requests owners sent this node.
    pub resyncs: AtomicU64,
    /// Messages dropped because their owner's queue was full.
    pub overflows: AtomicU64,
    /// True once the first publish round was handed to every owner's
    /// queue: until then owners cannot be complete for this node, and it
    /// says it is not ready.
    pub started: AtomicBool,
    /// Owners a delivery failed to reach since their last snapshot; the
    /// node gossips them so they count themselves incomplete for it.
    pub behind: Mutex<BTreeSet<NodeId>>,
}

impl Default for PublisherCounters {
    fn default() -> Self {
        PublisherCounters {
            // 100 µs to about 3 s.
            lag: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            publishes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            started: AtomicBool::new(false),
            behind: Mutex::default(),
        }
    }
}

/// Deltas with more records than this are placed on the blocking pool and
/// get the snapshot's time bound.
const LARGE_DELTA: usize = 256;

/// How long an owner may take to take a snapshot in.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the publisher lets a changed view settle before it acts on it.
const VIEW_SETTLE: Duration = Duration::from_millis(300);

/// A queue batches the deltas waiting behind one another into a publish
/// of up to about this many records (an owner applies a publish this small
/// at once, without the blocking pool).
const BATCH_RECORDS: usize = LARGE_DELTA;

/// Messages one owner's queue holds before it overflows.
const QUEUE_BOUND: usize = 1024;

/// How soon owners behind get their snapshot after a failed delivery.
const REPAIR_AFTER: Duration = Duration::from_millis(500);

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
    pub peers: PeerClient,
    /// The local inventory (every engine's) and its deltas.
    pub engines: shoal_engine::EnginesHandle,
    /// How long an owner may take.
    pub timeout: Duration,
    /// How often to compare digests.
    pub sync_interval: Duration,
    /// Ticks when the ring or a live member's incarnation changes.
    pub view_changes: tokio::sync::watch::Receiver<u64>,
    /// Owners that asked for a digest round.
    pub resyncs: mpsc::Receiver<NodeId>,
    /// Counters.
    pub counters: Arc<PublisherCounters>,
}

/// What a queue tells the publisher.
enum Feedback {
    /// A message to this owner was not delivered.
    Failed(NodeId),
    /// A digest's answer.
    Digest(NodeId, bool),
}

/// One message on its way, with the newest change it carries (for the
/// lag histogram).
struct Envelope {
    message: Message,
    newest_ms: Option<u64>,
}

/// The protocol's state, shared with the blocking pool for bulk work.
type Core = Arc<Mutex<Source>>;

fn lock(core: &Core) -> std::sync::MutexGuard<'_, Source> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

fn protocol_view(view: &ClusterView) -> protocol::View {
    protocol::View {
        ring: view.ring.clone(),
        live: view
            .live()
            .map(|m| (m.node.clone(), m.incarnation))
            .collect(),
    }
}

impl Publisher {
    /// Runs until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut deltas = self.engines.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = self.engines.ready() => {}
        }
        let mut resyncs = std::mem::replace(&mut self.resyncs, mpsc::channel(1).1);
        let core: Core = Arc::new(Mutex::new(Source::new(self.me.clone(), self.incarnation)));
        let (feedback_tx, mut feedback) = mpsc::unbounded_channel();
        let mut queues = Queues {
            publisher: &self,
            senders: BTreeMap::new(),
            tasks: JoinSet::new(),
            feedback: feedback_tx,
        };
        let inventory = (*self.engines.inventory()).clone();
        let view = protocol_view(&self.view.load());
        let first = self.bulk(&core, move |s| s.start(inventory, &view)).await;
        queues.dispatch(&core, first, None);
        self.counters.started.store(true, Ordering::Relaxed);

        let mut view_changes = self.view_changes.clone();
        let mut view_open = true;
        let mut sync = tokio::time::interval(self.sync_interval);
        sync.tick().await;
        let mut repair = tokio::time::interval(REPAIR_AFTER);
        // While an owner stays behind (hung, or failing every request),
        // repairs back off to the sync interval: each walks every record.
        let mut repair_wait = REPAIR_AFTER;
        let mut next_repair = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // An engine lost too long leaves the inventory as removes
                // (see `shoal_engine::engines`), so they reach the owners
                // like any change.
                batch = deltas.recv() => match batch {
                    Ok(batch) => {
                        let newest = batch.iter().map(|d| d.record().updated_at).max();
                        let out = self.deltas(&core, batch).await;
                        queues.dispatch(&core, out, newest);
                    }
                    Err(RecvError::Lagged(n)) => {
                        warn!(missed = n, "publisher fell behind the watcher; sending snapshots");
                        let inventory = (*self.engines.inventory()).clone();
                        let view = protocol_view(&self.view.load());
                        let out = self.bulk(&core, move |s| s.restart_from(inventory, &view)).await;
                        queues.dispatch(&core, out, None);
                    }
                    Err(RecvError::Closed) => break,
                },
                changed = view_changes.changed(), if view_open => {
                    if changed.is_err() {
                        view_open = false;
                        continue;
                    }
                    // A join or a death often comes as several changes in
                    // a row: let the view settle, then act once.
                    tokio::time::sleep(VIEW_SETTLE).await;
                    view_changes.borrow_and_update();
                    let view = self.view.load_full();
                    queues.retire(&view);
                    let view = protocol_view(&view);
                    let out = self.bulk(&core, move |s| s.view_changed(&view)).await;
                    queues.dispatch(&core, out, None);
                }
                Some(owner) = resyncs.recv() => {
                    let mut owners = BTreeSet::from([owner]);
                    while let Ok(more) = resyncs.try_recv() {
                        owners.insert(more);
                    }
                    self.counters.resyncs.fetch_add(owners.len() as u64, Ordering::Relaxed);
                    let out = self.bulk(&core, move |s| s.digest_round(Some(&owners))).await;
                    queues.dispatch(&core, out, None);
                }
                Some(first) = feedback.recv() => {
                    let mut differ = Vec::new();
                    for f in std::iter::once(first).chain(std::iter::from_fn(|| feedback.try_recv().ok())) {
                        match f {
                            Feedback::Failed(owner) => lock(&core).failed(&owner),
                            Feedback::Digest(owner, matches) => differ.push((owner, matches)),
                        }
                    }
                    if differ.iter().any(|(_, m)| !m) {
                        let out = self.bulk(&core, move |s| s.digests_replied(&differ)).await;
                        queues.dispatch(&core, out, None);
                    }
                }
                _ = repair.tick() => {
                    if lock(&core).behind().is_empty() {
                        repair_wait = REPAIR_AFTER;
                    } else if tokio::time::Instant::now() >= next_repair {
                        let out = self.bulk(&core, move |s| s.repair()).await;
                        queues.dispatch(&core, out, None);
                        next_repair = tokio::time::Instant::now() + repair_wait;
                        repair_wait = (repair_wait * 2).min(self.sync_interval);
                    }
                }
                _ = sync.tick() => {
                    let out = self.bulk(&core, move |s| s.digest_round(None)).await;
                    queues.dispatch(&core, out, None);
                }
            }
            *self
                .counters
                .behind
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = lock(&core).behind().clone();
        }
        drop(queues.senders);
        queues.tasks.shutdown().await;
    }

    /// Runs protocol work that walks every record on the blocking pool.
    async fn bulk(
        &self,
        core: &Core,
        work: impl FnOnce(&mut Source) -> Vec<Out> + Send + 'static,
    ) -> Vec<Out> {
        let core = core.clone();
        self.directory
            .bulk(move || work(&mut lock(&core)))
            .await
            .unwrap_or_default()
    }

    async fn deltas(&self, core: &Core, batch: Arc<Vec<Delta>>) -> Vec<Out> {
        if batch.len() <= LARGE_DELTA {
            return lock(core).deltas(&batch);
        }
        self.bulk(core, move |s| s.deltas(&batch)).await
    }
}

/// The per-owner queues.
struct Queues<'p> {
    publisher: &'p Publisher,
    senders: BTreeMap<NodeId, mpsc::Sender<Envelope>>,
    tasks: JoinSet<()>,
    feedback: mpsc::UnboundedSender<Feedback>,
}

impl Queues<'_> {
    /// Hands each message to its owner's queue, in order. A full queue
    /// drops the message: its owner is behind and gets a snapshot.
    fn dispatch(&mut self, core: &Core, out: Vec<Out>, newest_ms: Option<u64>) {
        for (owner, message) in out {
            let counters = &self.publisher.counters;
            if message.is_snapshot() {
                counters.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            let envelope = Envelope {
                newest_ms: newest_ms.filter(|_| !message.is_snapshot()),
                message,
            };
            let sender = self.sender(&owner);
            if sender.try_send(envelope).is_err() {
                counters.overflows.fetch_add(1, Ordering::Relaxed);
                debug!(%owner, "owner's queue is full; it gets a snapshot instead");
                lock(core).failed(&owner);
            }
        }
    }

    fn sender(&mut self, owner: &NodeId) -> &mpsc::Sender<Envelope> {
        if !self.senders.contains_key(owner) {
            let (tx, rx) = mpsc::channel(QUEUE_BOUND);
            let p = self.publisher;
            let queue = OwnerQueue {
                owner: owner.clone(),
                me: p.me.clone(),
                view: p.view.clone(),
                directory: p.directory.clone(),
                peers: p.peers.clone(),
                timeout: p.timeout,
                counters: p.counters.clone(),
                feedback: self.feedback.clone(),
            };
            self.tasks.spawn(queue.run(rx));
            self.senders.insert(owner.clone(), tx);
        }
        &self.senders[owner]
    }

    /// Closes the queues of nodes that are no longer members.
    fn retire(&mut self, view: &ClusterView) {
        self.senders
            .retain(|owner, _| view.members.get(owner).is_some_and(|m| m.alive));
    }
}

/// Delivers one owner's messages in order.
struct OwnerQueue {
    owner: NodeId,
    me: NodeId,
    view: Arc<ArcSwap<ClusterView>>,
    directory: Arc<DirectoryService>,
    peers: PeerClient,
    timeout: Duration,
    counters: Arc<PublisherCounters>,
    feedback: mpsc::UnboundedSender<Feedback>,
}

impl OwnerQueue {
    async fn run(self, mut rx: mpsc::Receiver<Envelope>) {
        let mut held: Option<Envelope> = None;
        loop {
            let next = match held.take() {
                Some(envelope) => envelope,
                None => match rx.recv().await {
                    Some(envelope) => envelope,
                    None => break,
                },
            };
            let Envelope {
                mut message,
                mut newest_ms,
            } = next;
            // The deltas that queued up while the last publish was in
            // flight go with this one: under load an owner gets fewer,
            // larger publishes; an idle queue sends at once.
            while message.size() < BATCH_RECORDS {
                let Ok(more) = rx.try_recv() else { break };
                match message.absorb(more.message) {
                    Ok(()) => newest_ms = newest_ms.max(more.newest_ms),
                    Err(other) => {
                        held = Some(Envelope {
                            message: other,
                            newest_ms: more.newest_ms,
                        });
                        break;
                    }
                }
            }
            let delivered = self.deliver(message).await;
            if delivered && let Some(newest) = newest_ms {
                let lag_ms = now_ms().saturating_sub(newest);
                self.counters.lag.observe(lag_ms as f64 / 1000.0);
            }
        }
    }

    /// An owner took a publish from this node's live incarnation for
    /// stale: it holds another incarnation of this node that it believes
    /// newer (a forged one, or its view has not seen this restart yet).
    /// Counted as a failed delivery, so the owner is behind and gets a
    /// snapshot once it takes this incarnation again; taken as a success,
    /// this node's containers would stay hidden there.
    fn stale(&self) -> String {
        self.counters.stale.fetch_add(1, Ordering::Relaxed);
        warn!(owner = %self.owner, "owner answered Stale to this incarnation's publish; it gets a snapshot");
        "the owner answered Stale to this node's live incarnation".to_owned()
    }

    async fn deliver(&self, message: Message) -> bool {
        if let Message::Publish(_) = message {
            self.counters.publishes.fetch_add(1, Ordering::Relaxed);
        }
        let view = self.view.load_full();
        let digest = matches!(message, Message::Digest(_));
        let owner = self.owner.clone();
        let result = if self.owner == self.me {
            match message {
                Message::Publish(p) => match self.directory.apply_blocking(p, &view).await {
                    PublishAck::Applied => Ok(None),
                    PublishAck::Stale => Err(self.stale()),
                },
                Message::Digest(d) => Ok(Some(self.directory.check(&d, &view).matches)),
            }
        } else if let Some(addr) = view.api_of(&self.owner) {
            // A snapshot carries thousands of records: it gets the time to
            // travel and be applied. A timed-out snapshot is abandoned by
            // the owner too, so a short bound would never let one land.
            let timeout = if message.is_snapshot() || message.size() > LARGE_DELTA {
                SNAPSHOT_TIMEOUT.max(self.timeout)
            } else {
                self.timeout
            };
            match message {
                Message::Publish(p) => {
                    match self.peers.publish(&self.owner, addr, &p, timeout).await {
                        Ok((ack, sent)) => {
                            self.counters
                                .bytes
                                .fetch_add(sent as u64, Ordering::Relaxed);
                            match ack {
                                PublishAck::Applied => Ok(None),
                                PublishAck::Stale => Err(self.stale()),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Message::Digest(d) => self
                    .peers
                    .digest(&self.owner, addr, &d, timeout)
                    .await
                    .map(|r| Some(r.matches))
                    .map_err(|e| e.to_string()),
            }
        } else {
            Err("its address is not known".to_owned())
        };
        match result {
            Ok(Some(matches)) => {
                let _ = self.feedback.send(Feedback::Digest(owner, matches));
                true
            }
            Ok(None) => true,
            Err(error) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                if digest {
                    debug!(%owner, %error, "digest failed");
                } else {
                    info!(%owner, %error, "publish failed; the owner gets a snapshot");
                }
                let _ = self.feedback.send(Feedback::Failed(owner));
                false
            }
        }
    }
}
