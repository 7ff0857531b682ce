//! Membership: chitchat gossip (scuttlebutt anti-entropy and a phi-accrual
//! failure detector) seeded from `--peers` or `--peers-dns`, and the view of
//! the fleet every other part reads: members, their state and the ring.
//!
//! Each node gossips its API address, engine, container count, last
//! event time and, while its engine is lost, when it was lost, as
//! chitchat key-values. The chitchat generation is the node's
//! incarnation (its start time in milliseconds), so a restarted node is a
//! new member that replaces the old.
//!
//! A node that shuts down says so first: it sets [`KEY_LEAVING`], pushes it
//! to every live member and keeps gossiping for [`LEAVE_ROUNDS`] gossip
//! intervals ([`Membership::leave`]). Peers count a leaving incarnation as
//! not alive as soon as they hear it, without waiting for the detector; a
//! restart is a new incarnation without the key, alive again.
//!
//! The detector: a node is dead when no newer heartbeat has reached us for
//! `phi_threshold` times the mean interval between heartbeats. Gossip every
//! `dead_after / 15` with a threshold of 8 declares a stopped node dead in
//! about half of `dead_after`, leaving the rest for the news to spread.
//! Past a `dead_after` of 3 s the interval stays at 200 ms and the
//! threshold grows instead, so deaths take as long and joins no longer. A
//! lower threshold or a faster gossip finds deaths sooner but mistakes a
//! node that is only slow (a pause, a loaded machine) for a dead one more
//! often; the gossip traffic grows with the rate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use shoal_core::NodeId;
use shoal_core::ring::Ring;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Key of a member's API address.
pub const KEY_API: &str = "api";
/// Key of a member's engines: a JSON list of
/// [`crate::answers::EngineView`] (errors left out).
pub const KEY_ENGINES: &str = "engines";
/// Key of a member's live container count.
pub const KEY_CONTAINERS: &str = "containers";
/// Key of a member's last engine event (ms since the epoch).
pub const KEY_LAST_EVENT: &str = "last_event_ms";
/// Key of when a member's engines were lost: a JSON object of engine ID to
/// ms since the epoch, or empty while every engine answers (the common
/// case, read on every answer without parsing).
pub const KEY_ENGINE_LOST: &str = "engine_lost_ms";
/// Key of a member's history: a JSON
/// [`crate::history::HistoryStatus`], or empty without one.
pub const KEY_HISTORY: &str = "history";
/// Key of a member's job path: whether it creates containers, its queue
/// (JSON, [`crate::jobs::JobsStatus`]).
pub const KEY_JOBS: &str = "jobs";
/// Key of a member's readiness.
pub const KEY_READY: &str = "ready";
/// Key of the owners a member's publishes failed to reach since their last
/// snapshot, comma-separated: those owners are not complete for it.
pub const KEY_BEHIND: &str = "behind";
/// Key a member sets to "true" when it shuts down: from then on its
/// incarnation is out of the fleet.
pub const KEY_LEAVING: &str = "leaving";

/// Gossip intervals a leaving node keeps gossiping before it stops: the
/// first push to every member can be lost (UDP), the rounds after it repeat
/// it and spread it from peer to peer.
pub const LEAVE_ROUNDS: u32 = 2;

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Its node ID.
    pub node: NodeId,
    /// Its incarnation (chitchat generation).
    pub incarnation: u64,
    /// Its API address, `host:port`.
    pub api: String,
    /// Alive by the failure detector, and not leaving.
    pub alive: bool,
    /// Its gossiped key-values.
    pub values: BTreeMap<String, String>,
}

impl Member {
    /// A gossiped value.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// The fleet as this node sees it now.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// This node.
    pub me: NodeId,
    /// Every member known, alive or dead, by node ID (newest incarnation).
    pub members: BTreeMap<NodeId, Member>,
    /// The ring of the live members.
    pub ring: Arc<Ring>,
    /// True once this node has joined the fleet: it has seen another live
    /// member, or it has no one to join (no seeds but itself), or no one
    /// answered within the join timeout (the first node of a fleet). Until
    /// then its ring is itself alone and would claim every key.
    pub joined: bool,
    /// The owners some live member says it is behind on (its publishes
    /// to them failed since their last snapshot): what they answer may
    /// lack its changes, so the hot cache does not serve their answers.
    pub behind: BTreeSet<NodeId>,
}

impl ClusterView {
    /// A view of one node alone: it owns every key.
    pub fn alone(
        me: NodeId,
        api: String,
        incarnation: u64,
        vnodes: usize,
        replicas: usize,
    ) -> Self {
        let mut members = BTreeMap::new();
        members.insert(
            me.clone(),
            Member {
                node: me.clone(),
                incarnation,
                api,
                alive: true,
                values: BTreeMap::new(),
            },
        );
        ClusterView {
            ring: Arc::new(Ring::new([me.clone()], vnodes, replicas)),
            me,
            members,
            joined: true,
            behind: BTreeSet::new(),
        }
    }

    /// The live members.
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.alive)
    }

    /// The sources an owner must hold to be complete: live members that
    /// say they are ready (their first publish round is done), with their
    /// incarnations. A member that has not read its engine yet has
    /// nothing to publish.
    pub fn sources(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.live()
            .filter(|m| matches!(m.value(KEY_READY), Some("true" | "stale")))
            .map(|m| (&m.node, m.incarnation))
    }

    /// True when `source` says its publishes to `owner` failed since the
    /// owner's last snapshot.
    pub fn is_behind(&self, source: &NodeId, owner: &NodeId) -> bool {
        self.members
            .get(source)
            .and_then(|m| m.value(KEY_BEHIND))
            .is_some_and(|v| v.split(',').any(|n| n == owner.0))
    }

    /// A member's API address.
    pub fn api_of(&self, node: &NodeId) -> Option<&str> {
        self.members.get(node).map(|m| m.api.as_str())
    }
}

/// How membership runs.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its API address as peers reach it.
    pub api: String,
    /// UDP address to gossip on.
    pub gossip_listen: SocketAddr,
    /// UDP address peers gossip to.
    pub gossip_advertise: SocketAddr,
    /// Seeds, `host:port` (names are re-resolved by chitchat).
    pub seeds: Vec<String>,
    /// A dead node's records leave every directory within this.
    pub dead_after: Duration,
    /// Virtual nodes per member.
    pub vnodes: usize,
    /// Owners per key.
    pub replicas: usize,
    /// How long to wait for another member before joining alone.
    pub join_timeout: Duration,
}

impl MembershipConfig {
    /// True when a seed names someone other than this node.
    fn has_peers(&self) -> bool {
        let own = [self.api.clone(), self.gossip_advertise.to_string()];
        self.seeds.iter().any(|s| !own.contains(s))
    }
}

/// The running membership: the chitchat server and the view it keeps.
pub struct Membership {
    handle: ChitchatHandle,
    gossip_interval: Duration,
    view: Arc<ArcSwap<ClusterView>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// The longest gossip interval. A joiner is live to a member only after
/// two of its heartbeats reached it, so joins take a few intervals
/// whatever `dead_after` is: a long `dead_after` (a crowded host) must not
/// make them slow.
pub const GOSSIP_MAX_INTERVAL: Duration = Duration::from_millis(200);

/// The gossip interval and detector for a `dead_after`: gossip every
/// `dead_after / 15`, at most [`GOSSIP_MAX_INTERVAL`], and a phi threshold
/// that declares a silent node dead after about `8 * dead_after / 15`
/// whatever the interval (phi is the time since the last heartbeat over the
/// mean interval between heartbeats).
pub fn detector(dead_after: Duration) -> (Duration, FailureDetectorConfig) {
    let slow = dead_after / 15;
    let gossip = slow.clamp(Duration::from_millis(20), GOSSIP_MAX_INTERVAL);
    (
        gossip,
        FailureDetectorConfig {
            phi_threshold: 8.0 * (slow.as_secs_f64() / gossip.as_secs_f64()).max(1.0),
            sampling_window_size: 100,
            max_interval: dead_after,
            initial_interval: gossip,
            dead_node_grace_period: Duration::from_secs(3600),
        },
    )
}

impl Membership {
    /// Starts gossiping. The view starts with this node alone and follows
    /// what gossip learns.
    pub async fn start(
        config: MembershipConfig,
        initial: Vec<(String, String)>,
        transport: &dyn Transport,
        shutdown: CancellationToken,
    ) -> Result<Self, MembershipError> {
        let (gossip_interval, failure_detector_config) = detector(config.dead_after);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                config.node.0.clone(),
                config.incarnation,
                config.gossip_advertise,
            ),
            cluster_id: "shoal".to_owned(),
            gossip_interval,
            listen_addr: config.gossip_listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let mut kvs = initial;
        kvs.push((KEY_API.to_owned(), config.api.clone()));
        let handle = spawn_chitchat(chitchat_config, kvs, transport)
            .await
            .map_err(|e| {
                MembershipError(format!(
                    "cannot start gossip on udp {}: {e}",
                    config.gossip_listen
                ))
            })?;
        let view = Arc::new(ArcSwap::from_pointee(ClusterView {
            joined: !config.has_peers(),
            ..ClusterView::alone(
                config.node.clone(),
                config.api.clone(),
                config.incarnation,
                config.vnodes,
                config.replicas,
            )
        }));
        let (tx, changes) = watch::channel(0u64);
        let task = tokio::spawn(refresh(
            handle.chitchat(),
            view.clone(),
            tx,
            config,
            gossip_interval,
            shutdown,
        ));
        Ok(Membership {
            handle,
            gossip_interval,
            view,
            changes,
            task,
        })
    }

    /// The view now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    /// The shared view, for readers that outlive this handle's borrow.
    pub fn shared_view(&self) -> Arc<ArcSwap<ClusterView>> {
        self.view.clone()
    }

    /// Ticks every time the ring's members or a live member's incarnation
    /// change.
    pub fn ring_changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Sets this node's gossiped values.
    pub async fn set(&self, values: Vec<(&str, String)>) {
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        let me = guard.self_node_state();
        for (k, v) in values {
            if me.get(k) != Some(v.as_str()) {
                me.set(k, v);
            }
        }
    }

    /// Tells the fleet this incarnation is leaving and returns once the
    /// news had [`LEAVE_ROUNDS`] gossip intervals to spread (at once when
    /// no other member is live). Peers drop it from their rings and its
    /// records from their directories as soon as they hear it, rather than
    /// after the failure detector gives up on it. Gossip runs on; the
    /// caller goes on serving meanwhile, since peers that have not heard
    /// yet still send requests here.
    pub async fn leave(&self) {
        let chitchat = self.handle.chitchat();
        let peers: BTreeSet<SocketAddr> = {
            let mut guard = chitchat.lock().await;
            guard.self_node_state().set(KEY_LEAVING, "true");
            let me = guard.self_chitchat_id().clone();
            guard
                .live_nodes()
                .filter(|id| **id != me)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        if peers.is_empty() {
            return;
        }
        info!(
            peers = peers.len(),
            rounds = LEAVE_ROUNDS,
            "leaving the fleet: telling the other members"
        );
        for _ in 0..LEAVE_ROUNDS {
            // chitchat's own rounds reach 3 random members; a handshake
            // with every live member carries the news to all at once.
            for &peer in &peers {
                if let Err(e) = self.handle.gossip(peer) {
                    warn!(error = %e, "gossip stopped before the leave was told");
                    return;
                }
            }
            tokio::time::sleep(self.gossip_interval).await;
        }
    }

    /// Stops gossiping and the view task.
    pub async fn shutdown(self) {
        self.task.abort();
        if let Err(e) = self.handle.shutdown().await {
            warn!(error = %e, "gossip did not stop cleanly");
        }
    }
}

/// The owners some live member says it is behind on (see
/// [`ClusterView::behind`]).
pub fn behind_owners(members: &BTreeMap<NodeId, Member>) -> BTreeSet<NodeId> {
    members
        .values()
        .filter(|m| m.alive)
        .filter_map(|m| m.value(KEY_BEHIND))
        .flat_map(|v| v.split(','))
        .filter(|n| !n.is_empty())
        .map(NodeId::from)
        .collect()
}

async fn refresh(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    view: Arc<ArcSwap<ClusterView>>,
    changes: watch::Sender<u64>,
    config: MembershipConfig,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    let mut generation = 0u64;
    let started = tokio::time::Instant::now();
    let mut joined = !config.has_peers();
    let mut incarnations: Vec<(NodeId, u64)> = Vec::new();
    // chitchat counts a member it has not had heartbeats from yet as dead;
    // here a member is dead only once it has been seen alive, so a joiner's
    // records are not pruned before its first heartbeats arrive.
    let mut seen_alive: std::collections::HashSet<ChitchatId> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (members, pending) = {
            let guard = chitchat.lock().await;
            let live: Vec<ChitchatId> = guard.live_nodes().cloned().collect();
            seen_alive.extend(live.iter().cloned());
            // A member the cluster state names, with no live incarnation
            // and never seen alive here: its heartbeats have not arrived
            // yet (or it died before this node started). While one is,
            // this node's view may lack a live member.
            let pending = guard.dead_nodes().any(|id| {
                !seen_alive.iter().any(|s| s.node_id == id.node_id)
                    && !live.iter().any(|l| l.node_id == id.node_id)
            });
            let dead: Vec<ChitchatId> = guard
                .dead_nodes()
                .filter(|id| seen_alive.contains(*id))
                .cloned()
                .collect();
            let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
            for (id, alive) in live
                .iter()
                .map(|i| (i, true))
                .chain(dead.iter().map(|i| (i, false)))
            {
                let node = NodeId(id.node_id.to_string());
                let values: BTreeMap<String, String> = guard
                    .node_state(id)
                    .map(|s| {
                        s.key_values()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let is_me = node == config.node && id.generation_id == config.incarnation;
                let member = Member {
                    api: values.get(KEY_API).cloned().unwrap_or_default(),
                    node: node.clone(),
                    incarnation: id.generation_id,
                    // This node serves on through its own leave.
                    alive: alive && (is_me || !says_leaving(&values)),
                    values,
                };
                let replace = members
                    .get(&node)
                    .is_none_or(|held| speaks_for(&member, held));
                if replace {
                    members.insert(node, member);
                }
            }
            (members, pending)
        };
        if !joined {
            // Joined once another member is alive and no member the state
            // names is still pending; or, at the latest, after the join
            // timeout (the first node of a fleet, or one that died for
            // good before this node started).
            let others = members.values().any(|m| m.alive && m.node != config.node);
            joined = (others && !pending) || started.elapsed() >= config.join_timeout;
            if joined {
                info!(alone = !others, pending, "joined the fleet");
            }
        }
        let current = view.load();
        let mut live: Vec<NodeId> = members
            .values()
            .filter(|m| m.alive && !m.api.is_empty())
            .map(|m| m.node.clone())
            .collect();
        if !live.contains(&config.node) {
            live.push(config.node.clone());
        }
        live.sort();
        let ring = if live.as_slice() == current.ring.members() {
            current.ring.clone()
        } else {
            info!(members = ?live, "ring changed");
            generation += 1;
            Arc::new(Ring::new(live, config.vnodes, config.replicas))
        };
        // A member restarted under the same ID leaves the ring as it is,
        // but its directory is empty: that is a change too.
        let live_incarnations: Vec<(NodeId, u64)> = members
            .values()
            .filter(|m| m.alive)
            .map(|m| (m.node.clone(), m.incarnation))
            .collect();
        if live_incarnations != incarnations {
            if !incarnations.is_empty() {
                generation += 1;
            }
            incarnations = live_incarnations;
        }
        let mut members = members;
        members
            .entry(config.node.clone())
            .or_insert_with(|| Member {
                node: config.node.clone(),
                incarnation: config.incarnation,
                api: config.api.clone(),
                alive: true,
                values: BTreeMap::new(),
            });
        view.store(Arc::new(ClusterView {
            me: config.node.clone(),
            behind: behind_owners(&members),
            members,
            ring,
            joined,
        }));
        changes.send_if_modified(|g| {
            if *g != generation {
                *g = generation;
                true
            } else {
                false
            }
        });
    }
}

/// True when a member's gossip says its incarnation is shutting down.
fn says_leaving(values: &BTreeMap<String, String>) -> bool {
    values.get(KEY_LEAVING).is_some_and(|v| v == "true")
}

/// True when `candidate` speaks for its node rather than `held` (two
/// incarnations of one node). A live incarnation wins over a dead one,
/// whatever their numbers: a clock that stepped back across a restart gives
/// the live process the smaller one. Among equals, the newest.
fn speaks_for(candidate: &Member, held: &Member) -> bool {
    (candidate.alive, candidate.incarnation) > (held.alive, held.incarnation)
}

/// Why membership could not start; shown to users as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MembershipError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn member(incarnation: u64, alive: bool) -> Member {
        Member {
            node: NodeId::from("a"),
            incarnation,
            api: "a:1".into(),
            alive,
            values: BTreeMap::new(),
        }
    }

    /// Long enough that the detector cannot be what removes a member
    /// within the few gossip intervals these tests allow.
    const DEAD_AFTER: Duration = Duration::from_secs(60);

    /// `node` gossiping on logical port `port` of `transport`, seeded with
    /// the member on port `seed`.
    async fn start(
        transport: &chitchat::transport::ChannelTransport,
        node: &str,
        port: u16,
        incarnation: u64,
        seed: u16,
        stop: &CancellationToken,
    ) -> Membership {
        let gossip: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = MembershipConfig {
            node: NodeId::from(node),
            incarnation,
            api: format!("{node}:7070"),
            gossip_listen: gossip,
            gossip_advertise: gossip,
            seeds: vec![format!("127.0.0.1:{seed}")],
            dead_after: DEAD_AFTER,
            vnodes: 8,
            replicas: 2,
            join_timeout: DEAD_AFTER,
        };
        Membership::start(config, Vec::new(), transport, stop.clone())
            .await
            .unwrap()
    }

    /// Waits until `done` holds of `seen`'s view and says how long that
    /// took; fails the test after `within` (virtual time).
    async fn wait_for(
        seen: &Membership,
        within: Duration,
        what: &str,
        done: impl Fn(&ClusterView) -> bool,
    ) -> Duration {
        let started = tokio::time::Instant::now();
        while !done(&seen.view()) {
            assert!(
                started.elapsed() < within,
                "not within {within:?}: {what}; the view: {:?}",
                seen.view().members
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    fn in_ring(view: &ClusterView, node: &str) -> bool {
        view.ring.members().contains(&NodeId::from(node))
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaving_member_is_out_at_once_and_its_restart_is_back_in() {
        let transport = chitchat::transport::ChannelTransport::default();
        let (gossip, _) = detector(DEAD_AFTER);
        let stop = CancellationToken::new();
        let a = start(&transport, "a", 1, 1_000, 2, &stop).await;
        let b = start(&transport, "b", 2, 1_000, 1, &stop).await;
        wait_for(&a, gossip * 10, "a sees b alive", |v| in_ring(v, "b")).await;

        // b still gossips (heartbeats included) all through: only its
        // word can take it out. The news travels in one handshake and a's
        // view follows at its next refresh; the detector alone would take
        // half of DEAD_AFTER, and never while b heartbeats.
        let (_, out_after) = tokio::join!(
            b.leave(),
            wait_for(&a, gossip * 2, "a drops the leaving b", |v| {
                !in_ring(v, "b") && v.members.get(&NodeId::from("b")).is_some_and(|m| !m.alive)
            })
        );
        println!("b left a's view {out_after:?} after it said so (gossip every {gossip:?})");
        b.shutdown().await;

        // Restarted with a smaller incarnation (a clock stepped back): the
        // new incarnation never said it leaves, so it is alive and speaks
        // for b, while the leaving one may still be heard of.
        let b = start(&transport, "b", 2, 900, 1, &stop).await;
        wait_for(&a, gossip * 10, "a takes the restarted b back", |v| {
            in_ring(v, "b")
                && v.members
                    .get(&NodeId::from("b"))
                    .is_some_and(|m| m.alive && m.incarnation == 900)
        })
        .await;
        stop.cancel();
        b.shutdown().await;
        a.shutdown().await;
    }

    #[test]
    fn a_live_incarnation_speaks_for_its_node_even_with_a_smaller_number() {
        assert!(speaks_for(&member(900, true), &member(1_000, false)));
        assert!(!speaks_for(&member(1_000, false), &member(900, true)));
        assert!(speaks_for(&member(1_000, true), &member(900, true)));
        assert!(speaks_for(&member(1_000, false), &member(900, false)));
    }
}
