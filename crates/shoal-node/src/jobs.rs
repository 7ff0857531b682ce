//! Jobs on this node, in its three roles (see [`shoal_core::jobs`] for the
//! protocol and the rules it keeps without I/O):
//! - **entry** ([`Jobs::create`]): names the job and hands it to its owner;
//! - **owner** ([`Jobs::submit`], the report and store calls, and the
//!   upkeep tick): keeps the record, copies it to the other owners,
//!   places the job and places it again when its node leaves;
//! - **placed node** ([`Jobs::run`] and the workers): a bounded queue
//!   (`--queue-size`) drained by `--worker-count` workers that claim each
//!   job from its owner, create and start its container with retries
//!   (`--job-retries`), report every transition, and wait for the exit.
//!
//! Every peer call goes through one route, `POST /_shoal/v1/jobs`
//! ([`JobRequest`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{Map, Value};
use shoal_core::NodeId;
use shoal_core::jobs::{
    AfterLoss, Candidate, JOB_LABEL, JobEvent, JobId, JobRecord, JobReply, JobReport, JobRequest,
    JobSpec, JobState, Resources, choose_node,
};
use shoal_engine::{Engine, EngineError, EnginesHandle, NewContainer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::membership::ClusterView;
use crate::peer::{PeerClient, PeerError};

/// How the job path runs; each value has a flag.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Jobs waiting for a worker on this node; more are refused (429).
    pub queue_size: usize,
    /// Workers creating containers at once.
    pub worker_count: usize,
    /// Tries after the first when an engine call fails for a reason that
    /// may pass.
    pub retries: u32,
    /// The wait before the first retry; it doubles each time.
    pub retry_backoff: Duration,
    /// A peer call of the job path (a submit places and copies the job, so
    /// it gets more than a lookup's forward).
    pub call_timeout: Duration,
    /// A node that does not answer a placement probe within this is
    /// passed over.
    pub probe_timeout: Duration,
    /// A job its node has not claimed after this is asked about, and
    /// placed again when the node does not hold it.
    pub claim_timeout: Duration,
    /// Finished jobs are forgotten after this.
    pub keep_finished: Duration,
    /// How often the owner looks after the jobs it holds.
    pub upkeep_every: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            queue_size: 100,
            worker_count: 10,
            retries: 3,
            retry_backoff: Duration::from_millis(500),
            call_timeout: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(1),
            claim_timeout: Duration::from_secs(30),
            keep_finished: Duration::from_secs(24 * 3600),
            upkeep_every: Duration::from_secs(1),
        }
    }
}

/// Counters of the job path, for `/metrics`.
#[derive(Default, Debug)]
pub struct JobCounters {
    /// Jobs accepted at this node as their entry.
    pub created: AtomicU64,
    /// Creates refused because a queue was full.
    pub refused_full: AtomicU64,
    /// Jobs this node's workers started.
    pub started: AtomicU64,
    /// Jobs this node's workers failed.
    pub failed: AtomicU64,
    /// Jobs this node placed again after their node left.
    pub replaced: AtomicU64,
}

/// What `/v1/nodes` says about a node's jobs (gossiped as `jobs`).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct JobsStatus {
    /// Its engines can create containers.
    pub creates: bool,
    /// Why not, when they cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// `--queue-size`.
    pub queue_size: usize,
    /// `--worker-count`.
    pub workers: usize,
}

/// The job path of one node.
pub struct Jobs {
    me: NodeId,
    config: JobsConfig,
    view: Arc<ArcSwap<ClusterView>>,
    peers: PeerClient,
    engines: EnginesHandle,
    /// The records this node holds as an owner or replica.
    records: Mutex<HashMap<JobId, JobRecord>>,
    queue: mpsc::Sender<JobRecord>,
    queue_rx: Mutex<Option<mpsc::Receiver<JobRecord>>>,
    /// Containers whose exit a waiter reports, so a second waiter is not
    /// started for one (a restart's recovery and a worker).
    waiting: Mutex<std::collections::HashSet<String>>,
    /// The placements queued or being worked on here, for an owner that
    /// asks ([`JobRequest::Holds`]).
    holding: Mutex<std::collections::HashSet<(JobId, u32)>>,
    /// The counters.
    pub counters: JobCounters,
}

/// What `Create` answers.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The job.
    pub job_id: String,
    /// "Job created successfully".
    pub message: &'static str,
    /// Where it is placed.
    pub node: Option<String>,
    /// `pending`.
    pub status: &'static str,
}

/// One attempt, as the API shows it.
#[derive(Debug, Serialize)]
pub struct AttemptView {
    /// Where.
    pub node: String,
    /// When it began, ms since the epoch.
    pub at: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// A job as `Status` and `GET /v1/jobs/{id}` answer it.
#[derive(Debug, Serialize)]
pub struct JobView {
    /// The job.
    pub job_id: String,
    /// pending, running, failed or exited.
    pub status: &'static str,
    /// Where it is placed.
    pub node: Option<String>,
    /// Its container, once created.
    pub container_id: Option<String>,
    /// The container's name.
    pub container_name: String,
    /// How it exited.
    pub exit_code: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Every try, oldest first.
    pub attempts: Vec<AttemptView>,
    /// The image.
    pub image: String,
    /// The requested name, if any.
    pub name: Option<String>,
    /// When it was created, ms since the epoch.
    pub created_at: u64,
    /// When its container started, ms since the epoch.
    pub started_at: Option<u64>,
    /// When it last changed, ms since the epoch.
    pub updated_at: u64,
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        JobView {
            job_id: r.id.to_string(),
            status: r.state.as_str(),
            node: r.node.as_ref().map(|n| n.0.clone()),
            container_id: r.container_id.clone(),
            container_name: r.id.container_name(),
            exit_code: r.exit_code,
            error: r.error.clone(),
            attempts: r
                .attempts
                .iter()
                .map(|a| AttemptView {
                    node: a.node.0.clone(),
                    at: a.at_ms,
                    error: a.error.clone(),
                })
                .collect(),
            image: r.spec.image.clone(),
            name: r.spec.name.clone(),
            created_at: r.id.created_ms(),
            started_at: r.started_at_ms,
            updated_at: r.updated_at_ms,
        }
    }
}

/// `GET /v1/jobs`: the fleet's jobs that match, oldest first.
#[derive(Debug, Serialize)]
pub struct JobsAnswer {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// More matched than `limit`.
    pub truncated: bool,
    /// The nodes that answered and those that did not.
    pub nodes: crate::answers::NodesCovered,
}

/// What `GET /v1/jobs` lists.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only in this state.
    pub state: Option<JobState>,
    /// Only placed on this node.
    pub node: Option<NodeId>,
    /// At most this many (default 1000).
    pub limit: usize,
}

/// The most jobs one listing answers.
pub const MAX_LIST: usize = 10_000;

impl Jobs {
    /// The job path of node `me`.
    pub fn new(
        me: NodeId,
        config: JobsConfig,
        view: Arc<ArcSwap<ClusterView>>,
        peers: PeerClient,
        engines: EnginesHandle,
    ) -> Self {
        let (queue, rx) = mpsc::channel(config.queue_size.max(1));
        Jobs {
            me,
            config,
            view,
            peers,
            engines,
            records: Mutex::new(HashMap::new()),
            queue,
            queue_rx: Mutex::new(Some(rx)),
            waiting: Mutex::new(Default::default()),
            holding: Mutex::new(Default::default()),
            counters: JobCounters::default(),
        }
    }

    /// Jobs waiting for a worker here.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// What `/v1/nodes` shows of this node's jobs.
    pub fn node_status(&self) -> JobsStatus {
        let why_not = self.engines.creator().err();
        JobsStatus {
            creates: why_not.is_none(),
            why_not,
            queued: self.queued(),
            queue_size: self.config.queue_size,
            workers: self.config.worker_count,
        }
    }

    /// Records held here (as an owner or replica).
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, JobRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job's owners on this node's ring, first owner first.
    fn owners(&self, id: &JobId) -> Vec<NodeId> {
        self.view
            .load()
            .ring
            .owners(&id.ring_key())
            .into_iter()
            .cloned()
            .collect()
    }

    /// One job call to `to`, answered here when `to` is this node.
    async fn call(
        self: &Arc<Self>,
        to: &NodeId,
        request: JobRequest,
    ) -> Result<JobReply, PeerError> {
        self.call_within(to, request, self.config.call_timeout)
            .await
    }

    /// [`Self::call`] bounded by `timeout`.
    async fn call_within(
        self: &Arc<Self>,
        to: &NodeId,
        request: JobRequest,
        timeout: Duration,
    ) -> Result<JobReply, PeerError> {
        if *to == self.me {
            return Ok(Box::pin(self.clone().handle(request)).await);
        }
        let view = self.view.load();
        let Some(addr) = view.api_of(to) else {
            return Err(PeerError::Unreachable {
                addr: to.0.clone(),
                message: "not a member".into(),
            });
        };
        self.peers.jobs(to, addr, &request, timeout).await
    }

    /// Answers one peer call (`POST /_shoal/v1/jobs`), or the same call
    /// made to itself.
    pub async fn handle(self: Arc<Self>, request: JobRequest) -> JobReply {
        match request {
            JobRequest::Submit { id, spec } => self.submit(id, spec).await,
            JobRequest::Store(records) => {
                self.store(records);
                JobReply::Done
            }
            JobRequest::Get(id) => JobReply::Record(self.lock().get(&id).cloned()),
            JobRequest::List { state, node } => JobReply::Records(
                self.lock()
                    .values()
                    .filter(|r| state.is_none_or(|s| r.state == s))
                    .filter(|r| node.as_ref().is_none_or(|n| r.node.as_ref() == Some(n)))
                    .take(shoal_core::jobs::MAX_JOB_RECORDS)
                    .cloned()
                    .collect(),
            ),
            JobRequest::Run(record) => self.run(record),
            JobRequest::Report(report) => self.take_report(report).await,
            JobRequest::Probe { image } => JobReply::Candidate(self.probe(&image).await),
            JobRequest::Holds { id, epoch } => JobReply::Holds(
                self.holding
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&(id, epoch)),
            ),
        }
    }

    // ---- entry ----

    /// Creates a job from any node: names it, hands it to its owner (the
    /// next replica when the owner cannot be reached) and answers once it
    /// is kept and queued.
    pub async fn create(self: &Arc<Self>, spec: JobSpec) -> Result<Created, ApiError> {
        spec.check()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let id = JobId::parse(&uuid::Uuid::now_v7().to_string())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let owners = self.owners(&id);
        let mut failures = Vec::new();
        for owner in &owners {
            let request = JobRequest::Submit {
                id: id.clone(),
                spec: spec.clone(),
            };
            match self.call(owner, request).await {
                Ok(JobReply::Accepted(r)) => {
                    self.counters.created.fetch_add(1, Ordering::Relaxed);
                    info!(job = %id, node = ?r.node, image = %spec.image, "job created");
                    return Ok(Created {
                        job_id: id.to_string(),
                        message: "Job created successfully",
                        node: r.node.map(|n| n.0),
                        status: "pending",
                    });
                }
                Ok(JobReply::QueueFull { node, size }) => {
                    self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::TooManyRequests(format!(
                        "the job queue of node {node} is full ({size} jobs wait); try again shortly"
                    )));
                }
                Ok(JobReply::Rejected(why)) => return Err(ApiError::BadRequest(why)),
                Ok(JobReply::Unavailable(why)) => return Err(ApiError::Unavailable(why)),
                Ok(other) => {
                    return Err(ApiError::Internal(format!(
                        "owner {owner} answered a submit with {other:?}"
                    )));
                }
                // The owner may have taken the job and be slow: handing it
                // to the next one could run it twice.
                Err(e @ PeerError::Timeout { .. }) => {
                    return Err(ApiError::Unavailable(format!(
                        "the owner of job {id} did not answer in time ({e}); the job may exist: ask for its status"
                    )));
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(ApiError::Unavailable(format!(
            "no owner of job {id} could be reached: {}",
            failures.join("; ")
        )))
    }

    /// A job's record, from its owners in ring order: the first that
    /// holds it answers, so every node answers alike.
    pub async fn status(self: &Arc<Self>, id: &JobId) -> Result<JobRecord, ApiError> {
        let mut failed = Vec::new();
        let owners = self.owners(id);
        for owner in &owners {
            match self.call(owner, JobRequest::Get(id.clone())).await {
                Ok(JobReply::Record(Some(r))) => return Ok(r),
                Ok(_) => {}
                Err(e) => failed.push(e.to_string()),
            }
        }
        // After a ring change a record may sit on a node that no longer
        // owns it, until the upkeep copies it over: ask the rest.
        let others: Vec<NodeId> = self
            .view
            .load()
            .live()
            .map(|m| m.node.clone())
            .filter(|n| !owners.contains(n))
            .collect();
        let asks = others
            .iter()
            .map(|n| self.call(n, JobRequest::Get(id.clone())));
        let mut best: Option<JobRecord> = None;
        for answer in futures::future::join_all(asks).await {
            if let Ok(JobReply::Record(Some(r))) = answer
                && best.as_ref().is_none_or(|b| r.newer_than(b))
            {
                best = Some(r);
            }
        }
        if let Some(r) = best {
            return Ok(r);
        }
        if failed.is_empty() {
            Err(ApiError::NotFound(format!("no job {id}")))
        } else {
            Err(ApiError::Unavailable(format!(
                "job {id} was not found, and some of its owners did not answer: {}",
                failed.join("; ")
            )))
        }
    }

    /// The fleet's jobs that match: every live node's records, the newest
    /// copy of each.
    pub async fn list(self: &Arc<Self>, filter: &JobFilter) -> JobsAnswer {
        let (newest, nodes) = self.records_everywhere(filter).await;
        let limit = if filter.limit == 0 {
            1000
        } else {
            filter.limit
        };
        JobsAnswer {
            jobs: newest.values().take(limit).map(JobView::from).collect(),
            truncated: newest.len() > limit,
            nodes,
        }
    }

    /// Every live node's records that match, the newest copy of each.
    async fn records_everywhere(
        self: &Arc<Self>,
        filter: &JobFilter,
    ) -> (BTreeMap<JobId, JobRecord>, crate::answers::NodesCovered) {
        let members: Vec<NodeId> = self.view.load().live().map(|m| m.node.clone()).collect();
        let calls = members.iter().map(|n| {
            let request = JobRequest::List {
                state: filter.state,
                node: filter.node.clone(),
            };
            async move { (n.clone(), self.call(n, request).await) }
        });
        let mut newest: BTreeMap<JobId, JobRecord> = BTreeMap::new();
        let mut covered = crate::answers::NodesCovered::default();
        for (node, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(JobReply::Records(records)) => {
                    covered.ok.push(node);
                    for r in records {
                        match newest.get(&r.id) {
                            Some(have) if !r.newer_than(have) => {}
                            _ => {
                                newest.insert(r.id.clone(), r);
                            }
                        }
                    }
                }
                Ok(other) => covered.failed.push(crate::answers::FailedNode {
                    node,
                    error: format!("answered {other:?}"),
                }),
                Err(e) => covered.failed.push(crate::answers::FailedNode {
                    node,
                    error: e.to_string(),
                }),
            }
        }
        (newest, covered)
    }

    // ---- owner ----

    /// Keeps a new job, places it and queues it on its node; copies the
    /// record to the other owners before answering.
    async fn submit(self: Arc<Self>, id: JobId, spec: JobSpec) -> JobReply {
        if let Some(r) = self.lock().get(&id) {
            return JobReply::Accepted(r.clone());
        }
        let order = match self.placement(&spec, None).await {
            Ok(order) => order,
            Err(why) => return JobReply::Rejected(why),
        };
        let mut full = None;
        let mut failures = Vec::new();
        let mut unreachable = 0;
        for node in order {
            let incarnation = self.incarnation_of(&node);
            let record = JobRecord::new(
                id.clone(),
                spec.clone(),
                node.clone(),
                incarnation,
                now_ms(),
            );
            self.lock().insert(id.clone(), record.clone());
            match self.call(&node, JobRequest::Run(record.clone())).await {
                Ok(JobReply::Done) => {
                    let record = self.lock().get(&id).cloned().unwrap_or(record);
                    self.replicate(&record).await;
                    return JobReply::Accepted(record);
                }
                Ok(JobReply::QueueFull { node, size }) => {
                    self.lock().remove(&id);
                    full = Some(JobReply::QueueFull { node, size });
                    // A named node is the only choice; otherwise the next
                    // candidate may have room.
                    if spec.node.is_some() {
                        break;
                    }
                }
                Ok(JobReply::Rejected(why)) => {
                    self.lock().remove(&id);
                    failures.push(format!("{node}: {why}"));
                }
                Ok(other) => {
                    self.lock().remove(&id);
                    failures.push(format!("{node}: answered {other:?}"));
                }
                Err(e) => {
                    // The node may have queued it and be slow: keep the
                    // record, which the upkeep places again if it is not
                    // claimed in time.
                    if matches!(e, PeerError::Timeout { .. }) {
                        let record = self.lock().get(&id).cloned().unwrap_or(record);
                        self.replicate(&record).await;
                        return JobReply::Accepted(record);
                    }
                    self.lock().remove(&id);
                    unreachable += 1;
                    failures.push(e.to_string());
                }
            }
        }
        if let Some(full) = full {
            return full;
        }
        let why = format!("no node could take the job: {}", failures.join("; "));
        if unreachable > 0 {
            JobReply::Unavailable(why)
        } else {
            JobReply::Rejected(why)
        }
    }

    /// A member's incarnation in this node's view (0 when unknown).
    fn incarnation_of(&self, node: &NodeId) -> u64 {
        self.view
            .load()
            .members
            .get(node)
            .map_or(0, |m| m.incarnation)
    }

    /// The nodes to place a job on, best first (`except` left out).
    async fn placement(
        self: &Arc<Self>,
        spec: &JobSpec,
        except: Option<&NodeId>,
    ) -> Result<Vec<NodeId>, String> {
        let view = self.view.load_full();
        // The live members, or the one named if it is one.
        let asked: Vec<NodeId> = view
            .live()
            .map(|m| m.node.clone())
            .filter(|n| match &spec.node {
                Some(named) => n == named,
                None => Some(n) != except,
            })
            .collect();
        let probes = asked.iter().map(|n| {
            let request = JobRequest::Probe {
                image: spec.image.clone(),
            };
            // A node that cannot say this at once is no place for a
            // job now.
            async move {
                self.call_within(n, request, self.config.probe_timeout)
                    .await
            }
        });
        let candidates: Vec<Candidate> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|a| match a {
                Ok(JobReply::Candidate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let order = choose_node(spec, &candidates).map_err(|e| e.to_string())?;
        // Without a named node, a node that has the image is the only
        // sensible place when one does: the others would fail.
        let any_has = candidates.iter().any(|c| c.has_image && c.can_create);
        Ok(order
            .into_iter()
            .filter(|n| {
                !any_has
                    || spec.node.is_some()
                    || candidates.iter().any(|c| &c.node == n && c.has_image)
            })
            .collect())
    }

    /// What this node can offer a job.
    async fn probe(&self, image: &str) -> Candidate {
        let containers = self.engines.inventory().len() as u64;
        let (can_create, has_image) = match self.engines.creator() {
            Ok(engine) => (true, engine.has_image(image).await.unwrap_or(false)),
            Err(_) => (false, false),
        };
        Candidate {
            node: self.me.clone(),
            can_create,
            has_image,
            containers,
        }
    }

    /// Takes copies of records, keeping the newer of two.
    fn store(&self, records: Vec<JobRecord>) {
        let mut held = self.lock();
        for r in records {
            match held.get(&r.id) {
                Some(have) if !r.newer_than(have) => {}
                _ => {
                    held.insert(r.id.clone(), r);
                }
            }
        }
    }

    /// Copies a record to its other owners (bounded by the call timeout).
    async fn replicate(self: &Arc<Self>, record: &JobRecord) {
        let others: Vec<NodeId> = self
            .owners(&record.id)
            .into_iter()
            .filter(|n| *n != self.me)
            .collect();
        let calls = others.iter().map(|n| {
            let request = JobRequest::Store(vec![record.clone()]);
            async move { (n, self.call(n, request).await) }
        });
        for (n, r) in futures::future::join_all(calls).await {
            if let Err(e) = r {
                debug!(job = %record.id, replica = %n, error = %e, "could not copy a job record");
            }
        }
    }

    /// A placed node's report, at an owner or replica.
    async fn take_report(self: Arc<Self>, report: JobReport) -> JobReply {
        let outcome = {
            let mut held = self.lock();
            held.get_mut(&report.id).map(|r| {
                r.apply(&report, now_ms())
                    .map(|changed| (changed, r.clone()))
            })
        };
        match outcome {
            None => JobReply::Rejected(format!("job {} is not held by {}", report.id, self.me)),
            Some(Err(refusal)) => JobReply::Refused(refusal.to_string()),
            Some(Ok((changed, record))) => {
                if changed {
                    self.replicate(&record).await;
                }
                JobReply::Taken(changed)
            }
        }
    }

    /// One round of the owner's care for the jobs it holds: copies to new
    /// owners after a ring change, jobs whose node left placed again or
    /// failed, unclaimed jobs placed again, finished ones forgotten.
    pub async fn upkeep(self: &Arc<Self>, ring_seen: &mut u64) {
        let view = self.view.load_full();
        let ring_changed = view.ring.fingerprint() != *ring_seen;
        *ring_seen = view.ring.fingerprint();
        let now = now_ms();
        let keep = self.config.keep_finished.as_millis() as u64;
        let mut copies: BTreeMap<NodeId, Vec<JobRecord>> = BTreeMap::new();
        let mut care = Vec::new();
        {
            let mut held = self.lock();
            held.retain(|_, r| !(r.state.is_final() && now.saturating_sub(r.updated_at_ms) > keep));
            for r in held.values() {
                // Placing the key is the loop's cost: only a ring change
                // (copies) or a pending job (care) needs its owners.
                if !ring_changed && r.state != JobState::Pending {
                    continue;
                }
                let owners = view.ring.owners(&r.id.ring_key());
                if ring_changed {
                    for o in owners.iter().filter(|o| ***o != self.me) {
                        copies.entry((*o).clone()).or_default().push(r.clone());
                    }
                }
                if owners.first().is_some_and(|o| **o == self.me) && r.state == JobState::Pending {
                    care.push(r.clone());
                }
            }
        }
        for (node, records) in copies {
            for chunk in records.chunks(1000) {
                if let Err(e) = self.call(&node, JobRequest::Store(chunk.to_vec())).await {
                    debug!(to = %node, error = %e, "could not copy job records after a ring change");
                }
            }
        }
        // Before it joined, this node's view would take live nodes for
        // gone: it judges no placement until then.
        if !view.joined {
            return;
        }
        for r in care {
            let placed = r.node.clone().unwrap_or_default();
            let member = view.members.get(&placed).filter(|m| m.alive);
            let action = match member {
                None => r.after_node_left(),
                // A node that restarted lost its queue; what it claimed,
                // its recovery takes up again.
                Some(m) if m.incarnation != r.placed_incarnation && !r.claimed => {
                    AfterLoss::PlaceAgain
                }
                Some(_)
                    if !r.claimed
                        && now.saturating_sub(r.placed_at_ms)
                            > self.config.claim_timeout.as_millis() as u64 =>
                {
                    // Not claimed for long: still queued behind others
                    // (fine), or never queued (a Run that timed out).
                    let holds = JobRequest::Holds {
                        id: r.id.clone(),
                        epoch: r.epoch,
                    };
                    match self.call(&placed, holds).await {
                        Ok(JobReply::Holds(false)) => AfterLoss::PlaceAgain,
                        _ => AfterLoss::Keep,
                    }
                }
                Some(_) => AfterLoss::Keep,
            };
            let live = member.is_some();
            match action {
                AfterLoss::Keep => {}
                AfterLoss::Fail(why) => {
                    warn!(job = %r.id, node = %placed, "{why}");
                    let record = self.edit(&r.id, |rec| rec.fail(&why, now_ms()));
                    if let Some(record) = record {
                        self.replicate(&record).await;
                    }
                }
                AfterLoss::PlaceAgain => self.place_again(&r, live, &placed).await,
            }
        }
    }

    fn edit(&self, id: &JobId, f: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let mut held = self.lock();
        let r = held.get_mut(id)?;
        f(r);
        Some(r.clone())
    }

    /// Places a job again: on another node when `placed` left, or
    /// anywhere when it did not claim the job in time.
    async fn place_again(self: &Arc<Self>, r: &JobRecord, live: bool, placed: &NodeId) {
        let except = if live { None } else { Some(placed) };
        let spec = &r.spec;
        if !live && spec.node.is_some() {
            let why = format!(
                "node {placed}, which the job named, left the fleet before it took the job"
            );
            if let Some(record) = self.edit(&r.id, |rec| rec.fail(&why, now_ms())) {
                self.replicate(&record).await;
            }
            return;
        }
        let order = match self.placement(spec, except).await {
            Ok(order) => order,
            Err(why) => {
                debug!(job = %r.id, %why, "cannot place the job again yet");
                return;
            }
        };
        for node in order {
            let incarnation = self.incarnation_of(&node);
            let Some(record) = self.edit(&r.id, |rec| {
                rec.place(node.clone(), incarnation, now_ms());
            }) else {
                return;
            };
            if record.node.as_ref() != Some(&node) {
                return; // claimed meanwhile
            }
            self.replicate(&record).await;
            match self.call(&node, JobRequest::Run(record.clone())).await {
                Ok(JobReply::Done) | Err(PeerError::Timeout { .. }) => {
                    self.counters.replaced.fetch_add(1, Ordering::Relaxed);
                    info!(job = %r.id, from = %placed, to = %node, "job placed again");
                    return;
                }
                Ok(other) => debug!(job = %r.id, to = %node, ?other, "could not place the job"),
                Err(e) => debug!(job = %r.id, to = %node, error = %e, "could not place the job"),
            }
        }
    }

    // ---- placed node ----

    /// Queues a job placed here; a full queue is refused.
    fn run(&self, record: JobRecord) -> JobReply {
        if let Err(why) = self.engines.creator() {
            return JobReply::Rejected(format!("node {} cannot create containers: {why}", self.me));
        }
        let key = (record.id.clone(), record.epoch);
        self.hold(key.clone(), true);
        match self.queue.try_send(record) {
            Ok(()) => JobReply::Done,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.hold(key, false);
                JobReply::QueueFull {
                    node: self.me.clone(),
                    size: self.config.queue_size as u32,
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.hold(key, false);
                JobReply::Rejected(format!("node {} is stopping", self.me))
            }
        }
    }

    /// Marks a placement as held here, or no longer.
    fn hold(&self, key: (JobId, u32), held: bool) {
        let mut holding = self.holding.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            holding.insert(key);
        } else {
            holding.remove(&key);
        }
    }

    /// Reports a transition to the job's owners (the first that holds the
    /// job takes it), trying again for a while when none answers. `Ok`
    /// with the owner's answer; `Err` when the job is not this node's to
    /// run any more, or no owner could be reached.
    async fn report(
        self: &Arc<Self>,
        record: &JobRecord,
        event: JobEvent,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let report = JobReport {
            id: record.id.clone(),
            node: self.me.clone(),
            epoch: record.epoch,
            event,
        };
        let mut wait = Duration::from_millis(200);
        for _ in 0..8 {
            let mut last = String::new();
            for owner in self.owners(&record.id) {
                match self.call(&owner, JobRequest::Report(report.clone())).await {
                    Ok(JobReply::Taken(_)) => return Ok(()),
                    Ok(JobReply::Refused(why)) => return Err(why),
                    Ok(other) => last = format!("{owner}: {other:?}"),
                    Err(e) => last = e.to_string(),
                }
            }
            debug!(job = %record.id, %last, "no owner took the report; trying again");
            tokio::select! {
                _ = stop.cancelled() => return Err("the node is stopping".into()),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        Err(format!("no owner of job {} took the report", record.id))
    }

    /// Starts the workers and the owner's upkeep; they stop with `stop`.
    pub fn spawn(self: &Arc<Self>, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
        let rx = self
            .queue_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut tasks = Vec::new();
        let waiters = Arc::new(tokio::sync::Mutex::new(tokio::task::JoinSet::new()));
        if let Some(rx) = rx {
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..self.config.worker_count.max(1) {
                let (jobs, rx, stop, waiters) =
                    (self.clone(), rx.clone(), stop.clone(), waiters.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => return,
                            r = async { rx.lock().await.recv().await } => r,
                        };
                        let Some(record) = next else { return };
                        let key = (record.id.clone(), record.epoch);
                        jobs.work(record, &stop, &waiters).await;
                        jobs.hold(key, false);
                    }
                }));
            }
        }
        // Recovery waits for the fleet and the engine; the owner's upkeep
        // does not wait for it.
        let (jobs, stop1, waiters1) = (self.clone(), stop.clone(), waiters.clone());
        tasks.push(tokio::spawn(async move {
            jobs.recover(&stop1, &waiters1).await;
        }));
        let (jobs, stop2) = (self.clone(), stop.clone());
        let waiters2 = waiters.clone();
        tasks.push(tokio::spawn(async move {
            let mut ring_seen = 0;
            let mut tick = tokio::time::interval(jobs.config.upkeep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    _ = tick.tick() => jobs.upkeep(&mut ring_seen).await,
                }
            }
            // The waiters only report exits: a node that stops stops
            // waiting, and its recovery finds the exits when it is back.
            waiters2.lock().await.shutdown().await;
        }));
        tasks
    }

    /// One job, by a worker: claim it, create and start its container
    /// (retrying what may pass), report each step, then wait for its exit.
    async fn work(
        self: &Arc<Self>,
        record: JobRecord,
        stop: &CancellationToken,
        waiters: &Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
    ) {
        if let Err(why) = self.report(&record, JobEvent::Claimed, stop).await {
            info!(job = %record.id, %why, "job not claimed; dropped here");
            return;
        }
        let engine = match self.engines.creator() {
            Ok(e) => e,
            Err(why) => {
                let _ = self
                    .report(
                        &record,
                        JobEvent::Failed {
                            container_id: None,
                            error: why,
                        },
                        stop,
                    )
                    .await;
                return;
            }
        };
        let container = new_container(&record);
        let mut wait = self.config.retry_backoff;
        let mut attempt = 0;
        loop {
            let mut created = None;
            let result: Result<String, EngineError> = async {
                let id = engine.create(&container).await?;
                created = Some(id.clone());
                engine.start(&id).await.map(|()| id)
            }
            .await;
            match result {
                Ok(container_id) => {
                    self.counters.started.fetch_add(1, Ordering::Relaxed);
                    if self
                        .report(
                            &record,
                            JobEvent::Running {
                                container_id: container_id.clone(),
                            },
                            stop,
                        )
                        .await
                        .is_ok()
                    {
                        self.wait_for_exit(record, engine, container_id, waiters)
                            .await;
                    }
                    return;
                }
                Err(e) if e.is_transient() && attempt < self.config.retries => {
                    attempt += 1;
                    warn!(job = %record.id, attempt, error = %e, "job attempt failed; retrying");
                    if self
                        .report(
                            &record,
                            JobEvent::AttemptFailed {
                                error: e.to_string(),
                            },
                            stop,
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait *= 2;
                }
                Err(e) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(job = %record.id, error = %e, "job failed");
                    let _ = self
                        .report(
                            &record,
                            JobEvent::Failed {
                                container_id: created,
                                error: e.to_string(),
                            },
                            stop,
                        )
                        .await;
                    return;
                }
            }
        }
    }

    /// Reports the container's exit when it comes, from a task of its own.
    async fn wait_for_exit(
        self: &Arc<Self>,
        record: JobRecord,
        engine: Arc<dyn Engine>,
        container_id: String,
        waiters: &Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
    ) {
        if !self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(container_id.clone())
        {
            return;
        }
        let jobs = self.clone();
        let mut set = waiters.lock().await;
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let stop = CancellationToken::new();
            match engine.wait(&container_id).await {
                Ok(exit_code) => {
                    let _ = jobs
                        .report(
                            &record,
                            JobEvent::Exited {
                                container_id: container_id.clone(),
                                exit_code,
                            },
                            &stop,
                        )
                        .await;
                }
                Err(e) => debug!(job = %record.id, error = %e, "waiting for the job's exit failed"),
            }
            jobs.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&container_id);
        });
    }

    /// After a start: this node's job containers (found by their label)
    /// are matched with their records, so a restart loses no exit and a
    /// claimed job whose container was never made is made now.
    async fn recover(
        self: &Arc<Self>,
        stop: &CancellationToken,
        waiters: &Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
    ) {
        let Ok(engine) = self.engines.creator() else {
            return;
        };
        // The ring must be the fleet's before owners are asked.
        for _ in 0..600 {
            if stop.is_cancelled() {
                return;
            }
            if self.view.load().joined && self.engines.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let containers = match engine.labelled(JOB_LABEL).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot list this node's job containers");
                return;
            }
        };
        let mut found = 0;
        let mut matched = std::collections::HashSet::new();
        for c in containers {
            let Ok(id) = JobId::parse(&c.value) else {
                continue;
            };
            let Ok(record) = self.status(&id).await else {
                continue;
            };
            // A job its owner failed while this node was gone (it may
            // have had a container here, the owner said) must not run:
            // the client was told it failed, and may have run it again.
            if record.state == JobState::Failed
                && (c.live || c.exit_code.is_none())
                && record.container_id.as_deref() != Some(c.id.as_str())
            {
                warn!(job = %id, container = %c.id,
                      "removing the container of a job failed while this node was gone");
                if let Err(e) = engine.remove(&c.id).await {
                    warn!(job = %id, error = %e, "could not remove the container");
                }
                continue;
            }
            if record.node.as_ref() != Some(&self.me) || record.state.is_final() {
                continue;
            }
            let event = match (c.live, c.exit_code) {
                (true, _) => JobEvent::Running {
                    container_id: c.id.clone(),
                },
                (false, Some(exit_code)) => JobEvent::Exited {
                    container_id: c.id.clone(),
                    exit_code,
                },
                // Created, never started: the claimed job is taken up
                // again below, and its start finds this container.
                (false, None) => continue,
            };
            found += 1;
            matched.insert(id.clone());
            if !record.claimed {
                let _ = self.report(&record, JobEvent::Claimed, stop).await;
            }
            if self.report(&record, event, stop).await.is_ok() && c.live {
                self.wait_for_exit(record, engine.clone(), c.id, waiters)
                    .await;
            }
        }
        if found > 0 {
            info!(
                jobs = found,
                "found this node's job containers after the start"
            );
        }
    }
}

/// The container a job's record asks for.
pub fn new_container(record: &JobRecord) -> NewContainer {
    let spec = &record.spec;
    NewContainer {
        name: record.id.container_name(),
        image: spec.image.clone(),
        cmd: spec.arguments.clone(),
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        labels: spec.container_labels(&record.id),
        cpus: spec.resources.cpus,
        memory_bytes: spec.resources.memory_bytes,
        network: spec.network.clone(),
    }
}

/// Reads a Create's parameters: `{image, arguments, resources, env, name,
/// labels, node, network}`; unknown members are refused, so a typo is an
/// error and not an ignored setting.
pub fn spec_from_json(value: &Value) -> Result<JobSpec, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let Value::Object(map) = value else {
        return Err(bad(
            "the job must be a JSON object with at least \"image\"".into()
        ));
    };
    const MEMBERS: [&str; 8] = [
        "image",
        "arguments",
        "resources",
        "env",
        "name",
        "labels",
        "node",
        "network",
    ];
    if let Some(k) = map.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown member {k:?}; a job takes {MEMBERS:?} (privileged mode, mounts and host networking are not offered)"
        )));
    }
    let string = |k: &str| -> Result<Option<String>, ApiError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{k} must be a string"))),
        }
    };
    let image = string("image")?.ok_or_else(|| bad("image is required".into()))?;
    let arguments = match map.get("arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad("arguments must be a list of strings".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => vec![s.clone()],
        Some(_) => return Err(bad("arguments must be a list of strings".into())),
    };
    let string_map = |k: &str| -> Result<BTreeMap<String, String>, ApiError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(key, v)| match v {
                    Value::String(s) => Ok((key.clone(), s.clone())),
                    Value::Number(n) => Ok((key.clone(), n.to_string())),
                    Value::Bool(b) => Ok((key.clone(), b.to_string())),
                    _ => Err(bad(format!("{k}.{key} must be a string"))),
                })
                .collect(),
            Some(_) => Err(bad(format!("{k} must be an object of strings"))),
        }
    };
    let resources = match map.get("resources") {
        None | Some(Value::Null) => Resources::default(),
        Some(Value::Object(r)) => resources_from_json(r)?,
        Some(_) => return Err(bad("resources must be an object: {cpus, memory}".into())),
    };
    let spec = JobSpec {
        image,
        arguments,
        resources,
        env: string_map("env")?,
        name: string("name")?,
        labels: string_map("labels")?,
        node: string("node")?.map(NodeId),
        network: string("network")?,
    };
    spec.check().map_err(|e| bad(e.to_string()))?;
    Ok(spec)
}

fn resources_from_json(r: &Map<String, Value>) -> Result<Resources, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let mut out = Resources::default();
    for (k, v) in r {
        match k.as_str() {
            "cpus" | "cpu" => {
                let cpus = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                out.cpus = Some(cpus.ok_or_else(|| {
                    bad(format!(
                        "resources.{k} must be a number of CPUs such as 0.5"
                    ))
                })?);
            }
            "memory" => {
                out.memory_bytes = Some(match v {
                    Value::Number(n) => n.as_u64().ok_or_else(|| {
                        bad("resources.memory must be a whole number of bytes".into())
                    })?,
                    Value::String(s) => parse_bytes(s).ok_or_else(|| {
                        bad(format!(
                            "resources.memory {s:?} is not a size such as 64m, 1g or 67108864"
                        ))
                    })?,
                    _ => return Err(bad("resources.memory must be a size such as \"64m\"".into())),
                });
            }
            other => {
                return Err(bad(format!(
                    "unknown resource {other:?}; resources are cpus and memory"
                )));
            }
        }
    }
    Ok(out)
}

/// `64m`, `1g`, `512k`, `1.5g` or plain bytes, as `docker run --memory`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (number, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let bytes = n * scale as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_create_reads_the_seed_shape_and_refuses_unknown_members() {
        let spec = spec_from_json(&json!({
            "image": "busybox",
            "arguments": ["sleep", "30"],
            "resources": {"cpus": 0.5, "memory": "64m"},
            "env": {"A": "1", "B": 2},
        }))
        .unwrap();
        assert_eq!(spec.arguments, ["sleep", "30"]);
        assert_eq!(spec.resources.cpus, Some(0.5));
        assert_eq!(spec.resources.memory_bytes, Some(64 << 20));
        assert_eq!(spec.env["B"], "2");
        for bad in [
            json!({"image": "busybox", "privileged": true}),
            json!({"image": "busybox", "resources": {"gpus": 1}}),
            json!({"image": "busybox", "resources": {"memory": "lots"}}),
            json!({"image": "busybox", "network": "host"}),
            json!({"image": "busybox", "env": {"A B": "x"}}),
            json!({"arguments": ["x"]}),
            json!(["busybox"]),
        ] {
            let e = spec_from_json(&bad).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn sizes_read_like_docker_run_memory() {
        assert_eq!(parse_bytes("64m"), Some(64 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("512KB"), Some(512 << 10));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("-1m"), None);
        assert_eq!(parse_bytes("1x"), None);
    }
}
