//! What a node answers, independent of how it is asked: the REST routes and
//! JSON-RPC both call these, so both give the same answers and errors.
//!
//! A lookup goes hot cache -> owned slice (this node's directory) -> a
//! forward to the key's owners in turn -> scatter-gather over every live
//! node. Listings and projects are scatter-gather with a deadline; a
//! partial answer names the nodes that failed. With no peers the node owns
//! every key and the fleet is this node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use arc_swap::ArcSwap;
use moka::future::Cache;
use serde::Serialize;
use shoal_core::model::COMPOSE_PROJECT_LABEL;
use shoal_core::wire::LocalQuery;
use shoal_core::{ContainerRecord, Inventory, ListFilter, LookupKey, NodeId};
use shoal_engine::WatcherHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cluster::{DirectoryService, Publisher, PublisherCounters, Upkeep};
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::membership::{
    ClusterView, KEY_CONTAINERS, KEY_ENGINE_ID, KEY_ENGINE_KIND, KEY_ENGINE_VERSION,
    KEY_LAST_EVENT, KEY_READY,
};
use crate::metrics::Metrics;
use crate::peer::{self, HttpPeers, PeerTransport};

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LookupPath {
    /// From the short-lived hot cache.
    Hot,
    /// From the slice of the key space this node owns.
    Owner,
    /// By the owner, through one forward.
    Forwarded,
    /// By asking every live node, because every owner was down.
    Fallback,
}

impl LookupPath {
    /// The word used in answers, headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LookupPath::Hot => "hot",
            LookupPath::Owner => "owner",
            LookupPath::Forwarded => "forwarded",
            LookupPath::Fallback => "fallback",
        }
    }
}

/// The answer to `GET /v1/containers/{ref}`.
#[derive(Clone, Debug, Serialize)]
pub struct LookupAnswer {
    /// Every match, each with its node; never a silent pick.
    pub containers: Vec<Arc<ContainerRecord>>,
    /// The node that answered.
    pub served_by: NodeId,
    /// How it answered.
    pub path: LookupPath,
}

/// Which nodes a fleet-wide answer covers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodesCovered {
    /// Nodes that answered.
    pub ok: Vec<NodeId>,
    /// Nodes that did not, with why; a non-empty list means a partial
    /// answer.
    pub failed: Vec<FailedNode>,
}

/// A node that could not contribute to a fleet-wide answer.
#[derive(Clone, Debug, Serialize)]
pub struct FailedNode {
    /// The node.
    pub node: NodeId,
    /// Why.
    pub error: String,
}

/// The answer to `GET /v1/containers?…`.
#[derive(Clone, Debug, Serialize)]
pub struct ListAnswer {
    /// Matching containers, by node then ID.
    pub containers: Vec<Arc<ContainerRecord>>,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
}

/// One compose project, fleet-wide.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectSummary {
    /// The project name.
    pub name: String,
    /// How many containers it has.
    pub containers: usize,
    /// Its services.
    pub services: BTreeSet<String>,
    /// Node -> names of its containers there.
    pub nodes: BTreeMap<NodeId, Vec<String>>,
}

/// The answer to `GET /v1/projects`.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectsAnswer {
    /// Every project, by name.
    pub projects: Vec<ProjectSummary>,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
}

/// The answer to `GET /v1/projects/{name}`.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectAnswer {
    /// The project name.
    pub project: String,
    /// Its containers, by node then ID.
    pub containers: Vec<Arc<ContainerRecord>>,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
}

/// A member's engine, as `/v1/nodes` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EngineView {
    /// docker or synthetic.
    pub kind: String,
    /// The engine's ID.
    pub id: String,
    /// The engine's version.
    pub version: String,
}

/// One member of the fleet.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    /// Its ID.
    pub id: NodeId,
    /// Its API address.
    pub address: String,
    /// alive, suspect or dead.
    pub state: &'static str,
    /// Its engine, once it answered.
    pub engine: Option<EngineView>,
    /// Live containers on its engine.
    pub containers: Option<usize>,
    /// Seconds since its engine's last event; `null` before the first.
    pub last_event_age_s: Option<f64>,
    /// True while its engine is lost and its inventory is the last read.
    pub stale: bool,
    /// True once its first engine sync is done.
    pub ready: bool,
    /// The share of the key space it owns (0 to 1).
    pub ring_share: f64,
    /// The last engine error, while it lasts.
    pub engine_error: Option<String>,
}

/// The answer to `GET /v1/nodes`.
#[derive(Clone, Debug, Serialize)]
pub struct NodesAnswer {
    /// Every member.
    pub nodes: Vec<NodeView>,
    /// The node that answered.
    pub served_by: NodeId,
}

/// The answer to `GET /readyz`.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    /// True once the engine's first sync is done and the node has joined
    /// the fleet.
    pub ready: bool,
    /// synced, stale or not_synced.
    pub engine: &'static str,
    /// joined, or joining while no other member has been heard from.
    pub membership: &'static str,
    /// The last engine error, while it lasts.
    pub error: Option<String>,
}

/// Milliseconds since the Unix epoch, for ages.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn describe(key: &LookupKey) -> String {
    match key {
        LookupKey::Id(s) => format!("id {s:?}"),
        LookupKey::Name(s) => format!("name {s:?}"),
        LookupKey::Ip(ip) => format!("ip \"{ip}\""),
        LookupKey::Project(s) => format!("project {s:?}"),
    }
}

/// A lookup's answer as the hot cache holds it.
#[derive(Debug)]
struct Found {
    containers: Vec<Arc<ContainerRecord>>,
    path: LookupPath,
}

/// A lookup's answer that the hot cache does not keep, or why there is
/// none: moka keeps only what the loader returns as `Ok`.
#[derive(Debug)]
enum Uncached {
    Found(Arc<Found>),
    Failed(ApiError),
}

/// How a lookup was asked.
#[derive(Clone, Copy, Debug, Default)]
pub struct LookupOptions {
    /// `Cache-Control: no-cache`: skip the hot cache.
    pub no_cache: bool,
    /// `x-shoal-hop`: already forwarded once; answer from here.
    pub hop: bool,
}

/// One node's state, shared by every request.
pub struct NodeService {
    /// Its configuration.
    pub config: NodeConfig,
    /// Its incarnation (start time in ms): a restart is a new one.
    pub incarnation: u64,
    /// Its engine's watcher.
    pub watcher: WatcherHandle,
    /// Its metrics.
    pub metrics: Metrics,
    /// The fleet as this node sees it.
    pub view: Arc<ArcSwap<ClusterView>>,
    /// The records this node owns keys of.
    pub directory: Arc<DirectoryService>,
    /// How to reach peers.
    pub peers: Arc<dyn PeerTransport>,
    /// The publisher's counters.
    pub publisher: Arc<PublisherCounters>,
    hot: Option<Cache<LookupKey, Arc<Found>>>,
    /// Owners that asked this node for a resync, to its publisher.
    resyncs: tokio::sync::mpsc::Sender<NodeId>,
    /// The publisher's end, until the publisher starts.
    resyncs_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<NodeId>>>,
}

/// Resync requests waiting for the publisher; more are refused (the owner
/// asks again) rather than queued without bound.
const RESYNC_QUEUE: usize = 1024;

impl NodeService {
    /// A node alone (it owns every key), talking HTTP to peers.
    pub fn new(config: NodeConfig, watcher: WatcherHandle) -> Self {
        let incarnation = now_ms();
        let view = ClusterView::alone(
            config.node_id.clone(),
            config.advertised(),
            incarnation,
            config.vnodes,
            config.replicas,
        );
        Self::with_cluster(
            config,
            watcher,
            Arc::new(ArcSwap::from_pointee(view)),
            Arc::new(HttpPeers::new()),
            incarnation,
        )
    }

    /// A node in a fleet whose view membership keeps.
    pub fn with_cluster(
        config: NodeConfig,
        watcher: WatcherHandle,
        view: Arc<ArcSwap<ClusterView>>,
        peers: Arc<dyn PeerTransport>,
        incarnation: u64,
    ) -> Self {
        let hot = (!config.hot_ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(config.hot_ttl)
                .max_capacity(config.hot_capacity)
                .weigher(|_: &LookupKey, v: &Arc<Found>| {
                    u32::try_from(v.containers.len() + 1).unwrap_or(u32::MAX)
                })
                .build()
        });
        let publisher = Arc::new(PublisherCounters::default());
        let (resyncs, resyncs_rx) = tokio::sync::mpsc::channel(RESYNC_QUEUE);
        NodeService {
            resyncs,
            resyncs_rx: std::sync::Mutex::new(Some(resyncs_rx)),
            config,
            incarnation,
            watcher,
            metrics: Metrics::new(&publisher),
            view,
            directory: Arc::new(DirectoryService::new()),
            peers,
            publisher,
            hot,
        }
    }

    /// Starts the publisher and the directory's upkeep; they stop with
    /// `shutdown`.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        ring_changes: tokio::sync::watch::Receiver<u64>,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let resyncs = self
            .resyncs_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| tokio::sync::mpsc::channel(1).1);
        let publisher = Publisher {
            resyncs,
            me: self.node_id().clone(),
            incarnation: self.incarnation,
            view: self.view.clone(),
            directory: self.directory.clone(),
            peers: self.peers.clone(),
            watcher: self.watcher.clone(),
            timeout: self.config.peer_timeout,
            sync_interval: self.config.sync_interval,
            ring_changes,
            counters: self.publisher.clone(),
        };
        let upkeep = Upkeep {
            me: self.node_id().clone(),
            view: self.view.clone(),
            directory: self.directory.clone(),
            peers: self.peers.clone(),
            own_publisher: self.resyncs.clone(),
            timeout: self.config.peer_timeout,
            every: (self.config.dead_after / 10).max(Duration::from_millis(50)),
            grace: self.config.ownership_grace,
            prune_every: self.config.sync_interval,
        };
        vec![
            tokio::spawn(publisher.run(shutdown.clone())),
            tokio::spawn(upkeep.run(shutdown.clone())),
        ]
    }

    /// Takes an owner's request for a digest round of this node's
    /// publisher; false when the queue is full (the owner asks again).
    pub fn request_resync(&self, owner: NodeId) -> bool {
        self.resyncs.try_send(owner).is_ok()
    }

    /// This node's ID.
    pub fn node_id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// The local inventory, or why it cannot be used yet.
    fn local_inventory(&self) -> Result<Arc<Inventory>, String> {
        let status = self.watcher.status();
        if !status.ready {
            let why = status
                .last_error
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(format!(
                "node {} has not read its engine yet{why}",
                self.node_id()
            ));
        }
        Ok(self.watcher.inventory())
    }

    /// This node's own containers that match a query (the peer `local`
    /// route and the local part of every scatter-gather).
    pub fn local_matches(&self, query: &LocalQuery) -> Result<Vec<Arc<ContainerRecord>>, String> {
        let inventory = self.local_inventory()?;
        Ok(match query {
            LocalQuery::Key(key) => inventory.lookup(key),
            LocalQuery::Filter(filter) => match &filter.project {
                // The project index narrows before the scan.
                Some(p) => inventory.lookup(&LookupKey::Project(p.clone())),
                None => inventory.records().cloned().collect(),
            }
            .into_iter()
            .filter(|r| filter.matches(r))
            .collect(),
        })
    }

    /// Looks a key up: hot cache, the owned slice, a forward to the
    /// owners in turn, then every live node. An owner's answer counts only
    /// for the sources it is complete for; the sources it names as missing
    /// are asked for their own matches. 404 only when nothing matches and
    /// every source was accounted for.
    pub async fn lookup(
        &self,
        key: &LookupKey,
        options: LookupOptions,
    ) -> Result<LookupAnswer, ApiError> {
        let view = self.view.load_full();
        joined(&view)?;
        let me = self.node_id();
        let found = if options.hop {
            // Asked by a peer: this node's directory as it is, never
            // forwarded again.
            Arc::new(Found {
                containers: self.directory.lookup(key),
                path: LookupPath::Owner,
            })
        } else if view.ring.owners(key).contains(&me) {
            if view.members.len() == 1 {
                // Alone, the directory is this engine: before its first
                // sync an empty answer would deny containers that exist.
                self.local_inventory().map_err(ApiError::Unavailable)?;
            }
            let containers = self.directory.lookup(key);
            let missing = self.directory.missing(&view);
            if missing.is_empty() {
                Arc::new(Found {
                    containers,
                    path: LookupPath::Owner,
                })
            } else {
                self.complete_from_sources(key, containers, missing, &view)
                    .await?
            }
        } else {
            match (&self.hot, options.no_cache) {
                (Some(hot), false) => match hot.get(key).await {
                    Some(found) => Arc::new(Found {
                        containers: found.containers.clone(),
                        path: LookupPath::Hot,
                    }),
                    // Concurrent identical lookups share one forward. Only
                    // a final answer that found something is kept: a miss
                    // cached would deny a container that starts a moment
                    // later, for the whole TTL.
                    None => hot
                        .try_get_with(key.clone(), async {
                            let found = self
                                .remote_lookup(key, &view)
                                .await
                                .map_err(Uncached::Failed)?;
                            if found.path == LookupPath::Forwarded && !found.containers.is_empty() {
                                Ok(found)
                            } else {
                                Err(Uncached::Found(found))
                            }
                        })
                        .await
                        .or_else(|e| match &*e {
                            Uncached::Found(found) => Ok(found.clone()),
                            Uncached::Failed(e) => Err(e.clone()),
                        })?,
                },
                _ => self.remote_lookup(key, &view).await?,
            }
        };
        self.metrics
            .observe_lookup(found.path.as_str(), !found.containers.is_empty());
        if found.containers.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container matches {}",
                describe(key)
            )));
        }
        Ok(LookupAnswer {
            containers: found.containers.clone(),
            served_by: me.clone(),
            path: found.path,
        })
    }

    async fn remote_lookup(
        &self,
        key: &LookupKey,
        view: &ClusterView,
    ) -> Result<Arc<Found>, ApiError> {
        for owner in view.ring.owners(key) {
            let Some(addr) = view.api_of(owner) else {
                continue;
            };
            let started = std::time::Instant::now();
            match peer::lookup(self.peers.as_ref(), addr, key, self.config.peer_timeout).await {
                Ok(reply) => {
                    self.metrics.observe_forward(started.elapsed(), true);
                    let containers = reply.records.into_iter().map(Arc::new).collect();
                    if reply.missing.is_empty() {
                        return Ok(Arc::new(Found {
                            containers,
                            path: LookupPath::Forwarded,
                        }));
                    }
                    return self
                        .complete_from_sources(key, containers, reply.missing, view)
                        .await;
                }
                Err(e) => {
                    self.metrics.observe_forward(started.elapsed(), false);
                    debug!(%owner, error = %e, key = %key, "forward failed; trying the next owner");
                }
            }
        }
        let (containers, covered) = self.scatter(&LocalQuery::Key(key.clone())).await?;
        final_or_unavailable(key, containers, &covered.failed)
    }

    /// Completes an owner's answer that is missing some sources: each of
    /// them is asked for its own matches, which replace what the owner had
    /// from it. An answer that found something stands even if a source
    /// failed; an empty one is final only if none did.
    async fn complete_from_sources(
        &self,
        key: &LookupKey,
        owner_records: Vec<Arc<ContainerRecord>>,
        missing: Vec<NodeId>,
        view: &ClusterView,
    ) -> Result<Arc<Found>, ApiError> {
        let query = LocalQuery::Key(key.clone());
        let targets = missing
            .into_iter()
            .map(|n| {
                let addr = view.api_of(&n).map(str::to_owned);
                (n, addr)
            })
            .collect();
        let (answered, failed) = self.ask_local(&query, targets).await;
        let asked: Vec<NodeId> = answered.iter().map(|(n, _)| n.clone()).collect();
        let kept = owner_records
            .into_iter()
            .filter(|r| !asked.contains(&r.node));
        let fresh = answered.into_iter().flat_map(|(_, records)| records);
        let containers = merge_freshest(kept.chain(fresh));
        final_or_unavailable(key, containers, &failed)
    }

    /// Asks each node for its own matches of `query` (this node answers
    /// from its inventory), all at once within the scatter deadline.
    async fn ask_local(
        &self,
        query: &LocalQuery,
        targets: Vec<(NodeId, Option<String>)>,
    ) -> (Vec<(NodeId, Vec<Arc<ContainerRecord>>)>, Vec<FailedNode>) {
        let me = self.node_id();
        let timeout = self.config.scatter_timeout;
        let calls = targets.into_iter().map(|(node, addr)| async move {
            if node == *me {
                return (node, self.local_matches(query));
            }
            let Some(addr) = addr else {
                return (node, Err("its address is not known here".to_owned()));
            };
            let r = peer::local(self.peers.as_ref(), &addr, query, timeout)
                .await
                .map_err(|e| e.to_string())
                .and_then(|reply| {
                    if reply.ready {
                        Ok(reply.records.into_iter().map(Arc::new).collect())
                    } else {
                        Err(format!("node {} has not read its engine yet", reply.node))
                    }
                });
            (node, r)
        });
        let mut answered = Vec::new();
        let mut failed = Vec::new();
        for (node, result) in futures::future::join_all(calls).await {
            match result {
                Ok(records) => answered.push((node, records)),
                Err(error) => failed.push(FailedNode { node, error }),
            }
        }
        (answered, failed)
    }

    /// Asks every live node for its own matches, within the scatter
    /// deadline; each container once (the freshest copy).
    async fn scatter(
        &self,
        query: &LocalQuery,
    ) -> Result<(Vec<Arc<ContainerRecord>>, NodesCovered), ApiError> {
        let view = self.view.load_full();
        joined(&view)?;
        let targets = view
            .live()
            .map(|m| (m.node.clone(), Some(m.api.clone())))
            .collect();
        let (answered, failed) = self.ask_local(query, targets).await;
        let ok = answered.iter().map(|(n, _)| n.clone()).collect();
        let mut containers = merge_freshest(answered.into_iter().flat_map(|(_, r)| r));
        containers.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
        Ok((containers, NodesCovered { ok, failed }))
    }

    /// Lists the fleet's containers that match `filter`.
    pub async fn list(&self, filter: &ListFilter) -> Result<ListAnswer, ApiError> {
        let (containers, nodes) = self.scatter(&LocalQuery::Filter(filter.clone())).await?;
        if nodes.ok.is_empty() {
            return Err(unavailable(&nodes));
        }
        Ok(ListAnswer {
            containers,
            nodes,
            served_by: self.node_id().clone(),
        })
    }

    /// Every compose project, fleet-wide.
    pub async fn projects(&self) -> Result<ProjectsAnswer, ApiError> {
        let filter = ListFilter {
            labels: vec![(COMPOSE_PROJECT_LABEL.to_owned(), None)],
            ..ListFilter::default()
        };
        let (containers, nodes) = self.scatter(&LocalQuery::Filter(filter)).await?;
        if nodes.ok.is_empty() {
            return Err(unavailable(&nodes));
        }
        let mut by_project: BTreeMap<String, Vec<Arc<ContainerRecord>>> = BTreeMap::new();
        for r in containers {
            if let Some(p) = &r.project {
                by_project.entry(p.clone()).or_default().push(r.clone());
            }
        }
        Ok(ProjectsAnswer {
            projects: by_project
                .into_iter()
                .map(|(name, records)| summarize(name, &records))
                .collect(),
            nodes,
            served_by: self.node_id().clone(),
        })
    }

    /// One compose project's containers, fleet-wide. 404 when it has none.
    pub async fn project(&self, name: &str) -> Result<ProjectAnswer, ApiError> {
        let key = shoal_core::parse_ref(name, Some(shoal_core::KeyKind::Project))?;
        let (containers, nodes) = self.scatter(&LocalQuery::Key(key)).await?;
        if nodes.ok.is_empty() {
            return Err(unavailable(&nodes));
        }
        if containers.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container runs in project {name:?}"
            )));
        }
        Ok(ProjectAnswer {
            project: name.to_owned(),
            containers,
            nodes,
            served_by: self.node_id().clone(),
        })
    }

    /// The members of the fleet.
    pub fn nodes(&self) -> NodesAnswer {
        let view = self.view.load_full();
        let now = now_ms();
        let status = self.watcher.status();
        let nodes = view
            .members
            .values()
            .map(|m| {
                let me = m.node == *self.node_id();
                let engine = if me {
                    status.engine.as_ref().map(|e| EngineView {
                        kind: e.kind.to_owned(),
                        id: e.id.0.clone(),
                        version: e.version.clone(),
                    })
                } else {
                    m.value(KEY_ENGINE_ID).map(|id| EngineView {
                        kind: m.value(KEY_ENGINE_KIND).unwrap_or("").to_owned(),
                        id: id.to_owned(),
                        version: m.value(KEY_ENGINE_VERSION).unwrap_or("").to_owned(),
                    })
                };
                let (containers, last_event, ready, stale, error) = if me {
                    (
                        status.ready.then(|| self.watcher.inventory().len()),
                        status.last_event_ms,
                        status.ready,
                        status.stale,
                        status.last_error.clone(),
                    )
                } else {
                    (
                        m.value(KEY_CONTAINERS).and_then(|v| v.parse().ok()),
                        m.value(KEY_LAST_EVENT).and_then(|v| v.parse().ok()),
                        m.value(KEY_READY) == Some("true"),
                        m.value(KEY_READY) == Some("stale"),
                        None,
                    )
                };
                NodeView {
                    id: m.node.clone(),
                    address: m.api.clone(),
                    state: if m.alive { "alive" } else { "dead" },
                    engine,
                    containers: if m.alive { containers } else { None },
                    last_event_age_s: last_event
                        .map(|t: u64| now.saturating_sub(t) as f64 / 1000.0),
                    stale,
                    ready: ready || stale,
                    ring_share: view.ring.share(&m.node),
                    engine_error: error,
                }
            })
            .collect();
        NodesAnswer {
            nodes,
            served_by: self.node_id().clone(),
        }
    }

    /// What this node gossips about itself.
    pub fn gossip_values(&self) -> Vec<(&'static str, String)> {
        let s = self.watcher.status();
        let mut values = vec![
            (KEY_CONTAINERS, self.watcher.inventory().len().to_string()),
            (
                KEY_READY,
                // Ready for the fleet once the first publish round is
                // done: owners wait for that to count themselves complete.
                match (
                    s.ready
                        && self
                            .publisher
                            .started
                            .load(std::sync::atomic::Ordering::Relaxed),
                    s.stale,
                ) {
                    (true, true) => "stale",
                    (true, false) => "true",
                    _ => "false",
                }
                .to_owned(),
            ),
        ];
        if let Some(t) = s.last_event_ms {
            values.push((KEY_LAST_EVENT, t.to_string()));
        }
        if let Some(e) = s.engine {
            values.push((KEY_ENGINE_KIND, e.kind.to_owned()));
            values.push((KEY_ENGINE_ID, e.id.0));
            values.push((KEY_ENGINE_VERSION, e.version));
        }
        values
    }

    /// Readiness: the engine's first sync is done and the node has joined
    /// the fleet (before that its ring is itself alone). A node whose
    /// engine is lost after that stays ready (it serves the fleet and its
    /// last inventory) and says its engine is stale.
    pub fn readiness(&self) -> Readiness {
        let s = self.watcher.status();
        let joined = self.view.load().joined;
        Readiness {
            ready: s.ready && joined,
            membership: if joined { "joined" } else { "joining" },
            engine: match (s.ready, s.stale) {
                (false, _) => "not_synced",
                (true, true) => "stale",
                (true, false) => "synced",
            },
            error: s.last_error,
        }
    }
}

/// Refuses to answer for the fleet before this node has joined it: its
/// ring would be itself alone, and its answers would deny the rest.
fn joined(view: &ClusterView) -> Result<(), ApiError> {
    if view.joined {
        Ok(())
    } else {
        Err(ApiError::Unavailable(format!(
            "node {} is still joining the fleet",
            view.me
        )))
    }
}

/// Each container once, by `(engine, id)`: the freshest copy when several
/// sources watch its engine.
fn merge_freshest(
    records: impl IntoIterator<Item = Arc<ContainerRecord>>,
) -> Vec<Arc<ContainerRecord>> {
    let mut merged: BTreeMap<(String, String), Arc<ContainerRecord>> = BTreeMap::new();
    for r in records {
        let id = (r.engine_id.0.clone(), r.id.clone());
        match merged.get(&id) {
            Some(kept) if kept.updated_at >= r.updated_at => {}
            _ => {
                merged.insert(id, r);
            }
        }
    }
    merged.into_values().collect()
}

/// A lookup's answer once every source was asked: what was found stands,
/// even if some source failed; nothing is final (a 404) only when none
/// failed, else the lookup is unavailable, naming who did not answer.
fn final_or_unavailable(
    key: &LookupKey,
    containers: Vec<Arc<ContainerRecord>>,
    failed: &[FailedNode],
) -> Result<Arc<Found>, ApiError> {
    if containers.is_empty() && !failed.is_empty() {
        let why: Vec<String> = failed
            .iter()
            .map(|f| format!("{}: {}", f.node, f.error))
            .collect();
        return Err(ApiError::Unavailable(format!(
            "no container matches {} among the nodes that answered, and these did not: {}",
            describe(key),
            why.join("; ")
        )));
    }
    Ok(Arc::new(Found {
        containers,
        path: LookupPath::Fallback,
    }))
}

fn unavailable(nodes: &NodesCovered) -> ApiError {
    let failed: Vec<String> = nodes.failed.iter().map(|f| f.error.clone()).collect();
    ApiError::Unavailable(format!("no node could answer: {}", failed.join("; ")))
}

fn summarize(name: String, records: &[Arc<ContainerRecord>]) -> ProjectSummary {
    let mut nodes: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    let mut services = BTreeSet::new();
    for r in records {
        nodes
            .entry(r.node.clone())
            .or_default()
            .push(r.primary_name().to_owned());
        services.extend(r.service.clone());
    }
    ProjectSummary {
        name,
        containers: records.len(),
        services,
        nodes,
    }
}
