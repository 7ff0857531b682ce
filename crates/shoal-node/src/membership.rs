//! Membership: chitchat gossip (scuttlebutt anti-entropy and a phi-accrual
//! failure detector) seeded from `--peers` or `--peers-dns`, and the view of
//! the fleet every other part reads: members, their state and the ring.
//!
//! Each node gossips its API address, engine, container count and last
//! event time as chitchat key-values. The chitchat generation is the node's
//! incarnation (its start time in milliseconds), so a restarted node is a
//! new member that replaces the old.
//!
//! The detector: a node is dead when no newer heartbeat has reached us for
//! `phi_threshold` times the mean interval between heartbeats. Gossip every
//! `dead_after / 15` with a threshold of 8 declares a stopped node dead in
//! about half of `dead_after`, leaving the rest for the news to spread. A
//! lower threshold or a faster gossip finds deaths sooner but mistakes a
//! node that is only slow (a pause, a loaded machine) for a dead one more
//! often; the gossip traffic grows with the rate.

use std::collections::BTreeMap;
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
/// Key of a member's engine kind.
pub const KEY_ENGINE_KIND: &str = "engine_kind";
/// Key of a member's engine ID.
pub const KEY_ENGINE_ID: &str = "engine_id";
/// Key of a member's engine version.
pub const KEY_ENGINE_VERSION: &str = "engine_version";
/// Key of a member's live container count.
pub const KEY_CONTAINERS: &str = "containers";
/// Key of a member's last engine event (ms since the epoch).
pub const KEY_LAST_EVENT: &str = "last_event_ms";
/// Key of a member's readiness.
pub const KEY_READY: &str = "ready";
/// Key of the owners a member's publishes failed to reach since their last
/// snapshot, comma-separated: those owners are not complete for it.
pub const KEY_BEHIND: &str = "behind";

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Its node ID.
    pub node: NodeId,
    /// Its incarnation (chitchat generation).
    pub incarnation: u64,
    /// Its API address, `host:port`.
    pub api: String,
    /// Alive by the failure detector.
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
    view: Arc<ArcSwap<ClusterView>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// The gossip interval and detector for a `dead_after`.
pub fn detector(dead_after: Duration) -> (Duration, FailureDetectorConfig) {
    let gossip = (dead_after / 15).max(Duration::from_millis(20));
    (
        gossip,
        FailureDetectorConfig {
            phi_threshold: 8.0,
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

    /// Stops gossiping and the view task.
    pub async fn shutdown(self) {
        self.task.abort();
        if let Err(e) = self.handle.shutdown().await {
            warn!(error = %e, "gossip did not stop cleanly");
        }
    }
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
                let member = Member {
                    api: values.get(KEY_API).cloned().unwrap_or_default(),
                    node: node.clone(),
                    incarnation: id.generation_id,
                    alive,
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

    #[test]
    fn a_live_incarnation_speaks_for_its_node_even_with_a_smaller_number() {
        assert!(speaks_for(&member(900, true), &member(1_000, false)));
        assert!(!speaks_for(&member(1_000, false), &member(900, true)));
        assert!(speaks_for(&member(1_000, true), &member(900, true)));
        assert!(speaks_for(&member(1_000, false), &member(900, false)));
    }
}
