//! What a node answers, independent of how it is asked: the REST routes and
//! JSON-RPC both call these, so both give the same answers and errors.
//!
//! With no peers the node owns every key and the fleet is this node; the
//! cluster adds ownership, forwarding and scatter-gather behind the same
//! functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use shoal_core::{ContainerRecord, Inventory, ListFilter, LookupKey, NodeId};
use shoal_engine::WatcherHandle;

use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

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
    /// True once the engine's first sync is done.
    pub ready: bool,
    /// synced, stale or not_synced.
    pub engine: &'static str,
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

/// One node's state, shared by every request.
pub struct NodeService {
    /// Its configuration.
    pub config: NodeConfig,
    /// Its engine's watcher.
    pub watcher: WatcherHandle,
    /// Its metrics.
    pub metrics: Metrics,
}

impl NodeService {
    /// A service over a running watcher.
    pub fn new(config: NodeConfig, watcher: WatcherHandle) -> Self {
        NodeService {
            config,
            watcher,
            metrics: Metrics::new(),
        }
    }

    /// This node's ID.
    pub fn node_id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// The local inventory, or 503 before the first sync (an empty
    /// inventory then would answer "not found" for containers that exist).
    fn synced_inventory(&self) -> Result<Arc<Inventory>, ApiError> {
        let status = self.watcher.status();
        if !status.ready {
            let why = status
                .last_error
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(ApiError::Unavailable(format!(
                "node {} has not read its engine yet{why}",
                self.node_id()
            )));
        }
        Ok(self.watcher.inventory())
    }

    fn covered(&self) -> NodesCovered {
        NodesCovered {
            ok: vec![self.node_id().clone()],
            failed: vec![],
        }
    }

    /// Looks a key up. 404 when nothing matches.
    pub fn lookup(&self, key: &LookupKey) -> Result<LookupAnswer, ApiError> {
        let inventory = self.synced_inventory()?;
        let containers = inventory.lookup(key);
        let path = LookupPath::Owner;
        self.metrics
            .observe_lookup(path.as_str(), !containers.is_empty());
        if containers.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container matches {}",
                describe(key)
            )));
        }
        Ok(LookupAnswer {
            containers,
            served_by: self.node_id().clone(),
            path,
        })
    }

    /// Lists the fleet's containers that match `filter`.
    pub fn list(&self, filter: &ListFilter) -> Result<ListAnswer, ApiError> {
        let inventory = self.synced_inventory()?;
        let containers = match &filter.project {
            // The project index narrows before the scan.
            Some(p) => inventory.lookup(&LookupKey::Project(p.clone())),
            None => inventory.records().cloned().collect(),
        }
        .into_iter()
        .filter(|r| filter.matches(r))
        .collect();
        Ok(ListAnswer {
            containers,
            nodes: self.covered(),
            served_by: self.node_id().clone(),
        })
    }

    /// Every compose project.
    pub fn projects(&self) -> Result<ProjectsAnswer, ApiError> {
        let inventory = self.synced_inventory()?;
        let projects = inventory
            .projects()
            .into_iter()
            .map(|(name, records)| summarize(name, &records))
            .collect();
        Ok(ProjectsAnswer {
            projects,
            nodes: self.covered(),
            served_by: self.node_id().clone(),
        })
    }

    /// One compose project's containers. 404 when it has none.
    pub fn project(&self, name: &str) -> Result<ProjectAnswer, ApiError> {
        let key = shoal_core::parse_ref(name, Some(shoal_core::KeyKind::Project))?;
        let inventory = self.synced_inventory()?;
        let containers = inventory.lookup(&key);
        if containers.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container runs in project {name:?}"
            )));
        }
        Ok(ProjectAnswer {
            project: name.to_owned(),
            containers,
            nodes: self.covered(),
            served_by: self.node_id().clone(),
        })
    }

    /// The members of the fleet.
    pub fn nodes(&self) -> NodesAnswer {
        let status = self.watcher.status();
        let now = now_ms();
        let me = NodeView {
            id: self.node_id().clone(),
            address: self.config.advertised(),
            state: "alive",
            engine: status.engine.as_ref().map(|e| EngineView {
                kind: e.kind.to_owned(),
                id: e.id.0.clone(),
                version: e.version.clone(),
            }),
            containers: status.ready.then(|| self.watcher.inventory().len()),
            last_event_age_s: status
                .last_event_ms
                .map(|t| now.saturating_sub(t) as f64 / 1000.0),
            stale: status.stale,
            ready: status.ready,
            ring_share: 1.0,
            engine_error: status.last_error,
        };
        NodesAnswer {
            nodes: vec![me],
            served_by: self.node_id().clone(),
        }
    }

    /// Readiness: the engine's first sync is done. A node whose engine is
    /// lost after that stays ready (it serves the fleet and its last
    /// inventory) and says its engine is stale.
    pub fn readiness(&self) -> Readiness {
        let s = self.watcher.status();
        Readiness {
            ready: s.ready,
            engine: match (s.ready, s.stale) {
                (false, _) => "not_synced",
                (true, true) => "stale",
                (true, false) => "synced",
            },
            error: s.last_error,
        }
    }
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
