//! The answers of the public API (their JSON field names are the API) and
//! the JSON-RPC method names, shared by the REST routes, JSON-RPC and the
//! metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_core::{ContainerRecord, NodeId};

/// JSON-RPC `Inventory.Get {ref, by?}`: a lookup.
pub const METHOD_GET: &str = "Inventory.Get";
/// JSON-RPC `Inventory.List {filters?}`: a fleet listing.
pub const METHOD_LIST: &str = "Inventory.List";
/// JSON-RPC `Inventory.Nodes {}`: the members.
pub const METHOD_NODES: &str = "Inventory.Nodes";
/// JSON-RPC `Inventory.Projects {name?}`: compose projects, or one project.
pub const METHOD_PROJECTS: &str = "Inventory.Projects";
/// JSON-RPC `History.Query {name?, id?, ip?, project?, node?, label?,
/// since?, until?, limit?, cursor?}`: recorded changes.
pub const METHOD_HISTORY: &str = "History.Query";
/// JSON-RPC `ContainerService.Create [{image, arguments, resources, env,
/// name?, labels?, node?, network?}]`: queues a job (needs the API token).
pub const METHOD_CREATE: &str = "ContainerService.Create";
/// JSON-RPC `ContainerService.Status [{job_id}]`: a job, as its owner has
/// it.
pub const METHOD_STATUS: &str = "ContainerService.Status";
/// JSON-RPC `ContainerService.List {status?, node?, limit?}`: the fleet's
/// jobs.
pub const METHOD_JOBS: &str = "ContainerService.List";

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

/// A container as an answer shows it: its record, and whether the engine
/// that runs it is lost. The record's fields are the answer's; `stale`
/// and `engine_lost_at` appear only on a record whose engine has been
/// lost for longer than `stale_after` ([`crate::config::STALE_AFTER`]), as
/// the serving node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct AnsweredRecord {
    /// The record as its node published it.
    #[serde(flatten)]
    pub record: Arc<ContainerRecord>,
    /// True when its engine is lost: the record is the last one read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// When its engine was lost (ms since the epoch), on a stale record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_lost_at: Option<u64>,
}

impl From<Arc<ContainerRecord>> for AnsweredRecord {
    fn from(record: Arc<ContainerRecord>) -> Self {
        AnsweredRecord {
            record,
            stale: false,
            engine_lost_at: None,
        }
    }
}

/// The answer to `GET /v1/containers/{ref}`.
#[derive(Clone, Debug, Serialize)]
pub struct LookupAnswer {
    /// Every match, each with its node; never a silent pick.
    pub containers: Vec<AnsweredRecord>,
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
    /// Matching containers, by node then ID: one page of them.
    pub containers: Vec<AnsweredRecord>,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
    /// The `cursor` of the next page, when more remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
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
    /// Every project, by name: one page of them.
    pub projects: Vec<ProjectSummary>,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
    /// The `cursor` of the next page, when more remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The answer to `GET /v1/projects/{name}`.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectAnswer {
    /// The project name.
    pub project: String,
    /// Its containers, by node then ID.
    pub containers: Vec<AnsweredRecord>,
    /// Which nodes answered.
    pub nodes: NodesCovered,
    /// The node that answered.
    pub served_by: NodeId,
}

/// One of a member's engines, as `/v1/nodes` shows it and gossip carries
/// it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EngineView {
    /// docker, containerd or synthetic.
    pub kind: String,
    /// The engine's ID; `null` until it first answers. Records carry it.
    pub id: Option<String>,
    /// The engine's version; `null` until it first answers.
    pub version: Option<String>,
    /// `synced`, `stale` (lost; its last inventory is served and marked),
    /// `withdrawn` (lost longer than `--engine-lost-after`; its containers
    /// are out of the fleet) or `unreachable` (never answered).
    pub state: String,
    /// Its live containers as last read.
    pub containers: usize,
    /// Its current error (on the node's own entry only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Its engines, in the order it was given them (empty until a dead
    /// or starting member gossiped them).
    pub engines: Vec<EngineView>,
    /// Live containers on its engines, as it serves them.
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
    /// Its history writer: the store, whether it is up, and how many
    /// changes it wrote, holds and dropped; `null` without history.
    pub history: Option<crate::history::HistoryStatus>,
    /// Its job path: whether it creates containers (and why not), its
    /// queue and workers; `null` when not known yet.
    pub jobs: Option<crate::jobs::JobsStatus>,
}

/// The answer to `GET /v1/nodes`.
#[derive(Clone, Debug, Serialize)]
pub struct NodesAnswer {
    /// Every member.
    pub nodes: Vec<NodeView>,
    /// The node that answered.
    pub served_by: NodeId,
    /// How the answering node checks peer requests: `hmac` with a cluster
    /// secret, `none` without one (anyone who reaches its port can write
    /// to its peer API).
    pub peer_auth: &'static str,
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
