//! Jobs: containers created anywhere in the fleet through a queue (issue
//! 16). This module holds the part with no I/O: what a job asks for and
//! how it is checked, the record its owner keeps, the transitions a
//! placed node reports and which of them the owner takes, where a job is
//! placed, and what becomes of a job whose node left the fleet.
//!
//! The protocol around a job, with its roles:
//! - **Entry**: any node takes `Create`, checks the spec, names the job
//!   (a UUIDv7) and hands it to the job's **owner**, the ring owner of
//!   [`JobId::ring_key`] (then the next replica).
//! - **Owner**: keeps the [`JobRecord`], copies it to the other owners
//!   after every change (a higher [`JobRecord::version`] wins), and
//!   places the job ([`choose_node`]): the requested node, else a node
//!   that has the image, fewest containers first.
//! - **Placed node**: queues the job (bounded; full is a refusal the
//!   caller sees as 429), and a worker claims it from the owner before it
//!   touches the engine ([`JobEvent::Claimed`]). The claim names the
//!   placement's `epoch`, so a claim for a placement the owner has since
//!   moved is refused, and no job is run twice.
//! - **Loss**: a job placed on a node that left the fleet is placed again
//!   when that node never claimed it, and failed with the reason when it
//!   did ([`JobRecord::after_node_left`]): the container may exist there,
//!   and a second one would double the job.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::NodeId;
use crate::validate::{self, Invalid, Validate};

/// The label every job's container carries, valued with the job ID.
pub const JOB_LABEL: &str = "shoal.job";
/// A job's container is named this, then the job ID.
pub const CONTAINER_NAME_PREFIX: &str = "shoal-job-";
/// The most arguments a job may pass.
pub const MAX_ARGUMENTS: usize = 1024;
/// The longest argument.
pub const MAX_ARGUMENT_LEN: usize = 64 * 1024;
/// The most environment variables and the most labels.
pub const MAX_ENV: usize = 1024;
/// The longest environment value.
pub const MAX_ENV_VALUE_LEN: usize = 64 * 1024;
/// The most attempts a record keeps (the first and the last ones are
/// what a reader needs; retries are bounded far below this anyway).
pub const MAX_ATTEMPTS: usize = 64;
/// The longest error kept on a record.
pub const MAX_ERROR_LEN: usize = 4096;
/// Docker refuses a memory limit under 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// The most CPUs a job may ask for.
pub const MAX_CPUS: f64 = 1024.0;

/// A job's ID: a UUIDv7, lowercase with hyphens. Its first 48 bits are
/// its creation time in ms, so IDs sort by age.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Reads a job ID as a person or a peer wrote it.
    pub fn parse(s: &str) -> Result<JobId, Invalid> {
        let b = s.as_bytes();
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        let shaped = b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => hex(c),
            });
        if !shaped {
            return Err(Invalid::new(format!(
                "{:?} is not a job ID: it is a UUID in lowercase hex with hyphens",
                s.chars().take(64).collect::<String>()
            )));
        }
        if b[14] != b'7' || !matches!(b[19], b'8' | b'9' | b'a' | b'b') {
            return Err(Invalid::new(format!("{s} is not a version 7 UUID")));
        }
        Ok(JobId(s.to_owned()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the job was named, in ms since the epoch (the UUID's first 48
    /// bits).
    pub fn created_ms(&self) -> u64 {
        let hex: String = self.0.chars().filter(|c| *c != '-').take(12).collect();
        u64::from_str_radix(&hex, 16).unwrap_or(0)
    }

    /// The name of the job's container.
    pub fn container_name(&self) -> String {
        format!("{CONTAINER_NAME_PREFIX}{}", self.0)
    }

    /// The text the ring places the job by: its owners are the owners of
    /// this key.
    pub fn ring_key(&self) -> crate::LookupKey {
        crate::LookupKey::Name(format!("job:{}", self.0))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Limits on a job's container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs (fractions allowed), as `docker run --cpus`.
    pub cpus: Option<f64>,
    /// Memory in bytes, as `docker run --memory`.
    pub memory_bytes: Option<u64>,
}

/// What a job asks for: `docker run [--name] [-e] [--cpus] [--memory]
/// [--network] [--label] IMAGE ARGUMENTS…` on one node. Privileged mode,
/// host mounts and host networking are not offered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The image, which must be on the node already: no registry is asked.
    pub image: String,
    /// The command, as `docker run IMAGE ARGS…`; empty runs the image's own.
    pub arguments: Vec<String>,
    /// Limits.
    pub resources: Resources,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// An extra name the container is also found by (its own name is
    /// always `shoal-job-<id>`): a label `shoal.job.name`.
    pub name: Option<String>,
    /// Labels to add (`shoal.*` is reserved).
    pub labels: BTreeMap<String, String>,
    /// The node to run on; none lets the owner choose.
    pub node: Option<NodeId>,
    /// A network to attach (not `host`, `none` or `container:…`).
    pub network: Option<String>,
}

/// The label that carries a job's requested name.
pub const JOB_NAME_LABEL: &str = "shoal.job.name";

impl JobSpec {
    /// Checks what a client asked for; the error names the field.
    pub fn check(&self) -> Result<(), Invalid> {
        validate::text(&self.image, validate::MAX_IMAGE_LEN, false).map_err(|e| e.at("image"))?;
        if self.arguments.len() > MAX_ARGUMENTS {
            return Err(Invalid::new(format!(
                "has {} entries; at most {MAX_ARGUMENTS} are accepted",
                self.arguments.len()
            ))
            .at("arguments"));
        }
        for (i, a) in self.arguments.iter().enumerate() {
            if a.len() > MAX_ARGUMENT_LEN || a.contains('\0') {
                return Err(Invalid::new(format!(
                    "is over {MAX_ARGUMENT_LEN} bytes or holds a NUL byte"
                ))
                .at(format!("arguments[{i}]")));
            }
        }
        if self.env.len() > MAX_ENV {
            return Err(Invalid::new(format!("at most {MAX_ENV} variables")).at("env"));
        }
        for (k, v) in &self.env {
            let good_key = !k.is_empty()
                && k.len() <= 256
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good_key {
                return Err(Invalid::new(format!(
                    "{k:?} is not a variable name: letters, digits and _, not starting with a digit"
                ))
                .at("env"));
            }
            if v.len() > MAX_ENV_VALUE_LEN || v.contains('\0') {
                return Err(Invalid::new(format!(
                    "is over {MAX_ENV_VALUE_LEN} bytes or holds a NUL byte"
                ))
                .at(format!("env.{k}")));
            }
        }
        if let Some(cpus) = self.resources.cpus
            && !(cpus.is_finite() && (0.01..=MAX_CPUS).contains(&cpus))
        {
            return Err(
                Invalid::new(format!("{cpus} is not between 0.01 and {MAX_CPUS}"))
                    .at("resources.cpus"),
            );
        }
        if let Some(m) = self.resources.memory_bytes
            && m < MIN_MEMORY_BYTES
        {
            return Err(Invalid::new(format!(
                "{m} bytes is under the engine's least, {MIN_MEMORY_BYTES} (6m)"
            ))
            .at("resources.memory"));
        }
        if let Some(name) = &self.name
            && !(crate::is_plain_name(name) && name.len() <= 128)
        {
            return Err(Invalid::new(format!(
                "{name:?} is not a name: letters, digits, _, . and -, at most 128"
            ))
            .at("name"));
        }
        if self.labels.len() > MAX_ENV {
            return Err(Invalid::new(format!("at most {MAX_ENV} labels")).at("labels"));
        }
        for (k, v) in &self.labels {
            validate::text(k, validate::MAX_LABEL_KEY_LEN, false).map_err(|e| e.at("labels"))?;
            if k == "shoal" || k.starts_with("shoal.") || k.starts_with("com.docker.compose.") {
                return Err(Invalid::new(format!("{k:?} is reserved")).at("labels"));
            }
            if v.len() > validate::MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
                return Err(Invalid::new("is too long or holds a control character")
                    .at(format!("labels.{k}")));
            }
        }
        if let Some(node) = &self.node
            && !crate::is_plain_name(&node.0)
        {
            return Err(Invalid::new(format!("{:?} is not a node ID", node.0)).at("node"));
        }
        if let Some(net) = &self.network {
            if matches!(net.as_str(), "host" | "none") || net.starts_with("container:") {
                return Err(Invalid::new(format!(
                    "{net:?} is not offered: a job gets its own network namespace"
                ))
                .at("network"));
            }
            if !crate::is_plain_name(net) || net.len() > validate::MAX_NETWORK_NAME_LEN {
                return Err(Invalid::new(format!("{net:?} is not a network name")).at("network"));
            }
        }
        Ok(())
    }

    /// The labels the job's container carries: the client's, the job's
    /// ID and its requested name.
    pub fn container_labels(&self, id: &JobId) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(JOB_LABEL.to_owned(), id.0.clone());
        if let Some(name) = &self.name {
            labels.insert(JOB_NAME_LABEL.to_owned(), name.clone());
        }
        labels
    }
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, queued or being created.
    Pending,
    /// Its container started.
    Running,
    /// It could not be run; `error` says why.
    Failed,
    /// Its container ran and exited; `exit_code` says how.
    Exited,
}

impl JobState {
    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Failed => "failed",
            JobState::Exited => "exited",
        }
    }

    /// True when nothing more happens to the job.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Failed | JobState::Exited)
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "failed" => JobState::Failed,
            "exited" => JobState::Exited,
            _ => {
                return Err(format!(
                    "{s:?} is not a job status: pending, running, failed or exited"
                ));
            }
        })
    }
}

/// One try at running the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Where.
    pub node: NodeId,
    /// When it began, ms since the epoch.
    pub at_ms: u64,
    /// Why it failed; `None` while it runs or once it succeeded.
    pub error: Option<String>,
}

/// What the owner keeps of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub id: JobId,
    /// What it asks for.
    pub spec: JobSpec,
    /// Where it stands.
    pub state: JobState,
    /// The node it is placed on.
    pub node: Option<NodeId>,
    /// Which placement this is: it grows each time the job is placed, so
    /// that a node still holding an older placement cannot claim it.
    pub epoch: u32,
    /// The placed node's worker took the job and may have touched the
    /// engine: from then on, the job is never placed elsewhere.
    pub claimed: bool,
    /// The container, once created.
    pub container_id: Option<String>,
    /// How the container exited.
    pub exit_code: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Every try, oldest first.
    pub attempts: Vec<Attempt>,
    /// When the job was last placed, ms since the epoch.
    pub placed_at_ms: u64,
    /// The placed node's incarnation then: a node that restarted since
    /// lost its queue.
    pub placed_incarnation: u64,
    /// When the owner heard its container started, ms since the epoch.
    pub started_at_ms: Option<u64>,
    /// When it last changed, ms since the epoch.
    pub updated_at_ms: u64,
    /// Grows with every change at the owner: of two copies, the higher
    /// version is the newer.
    pub version: u64,
}

/// A transition the placed node reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// A worker took the job and is about to create its container.
    Claimed,
    /// An attempt failed; another follows.
    AttemptFailed {
        /// The engine's message.
        error: String,
    },
    /// The container started.
    Running {
        /// Its ID.
        container_id: String,
    },
    /// The job cannot run: the last attempt's error, or a permanent one.
    Failed {
        /// The container, if one was created.
        container_id: Option<String>,
        /// Why.
        error: String,
    },
    /// The container exited.
    Exited {
        /// Its ID.
        container_id: String,
        /// Its exit code.
        exit_code: i64,
    },
}

/// A placed node's word about a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub id: JobId,
    /// The node that says it.
    pub node: NodeId,
    /// The placement it acts on.
    pub epoch: u32,
    /// What happened.
    pub event: JobEvent,
}

/// Why the owner did not take a report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The job is placed elsewhere, or again: the reporter must drop it.
    #[error("job {id} is placed on {node} (placement {epoch}), not here")]
    NotYours {
        /// The job.
        id: JobId,
        /// Where it is placed.
        node: String,
        /// Its placement.
        epoch: u32,
    },
    /// The job is over already.
    #[error("job {0} is over")]
    Over(JobId),
    /// The report does not follow (a start before a claim).
    #[error("job {id}: {why}")]
    OutOfOrder {
        /// The job.
        id: JobId,
        /// What was wrong.
        why: String,
    },
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl JobRecord {
    /// A new job placed on `node` (of `incarnation`).
    pub fn new(id: JobId, spec: JobSpec, node: NodeId, incarnation: u64, now_ms: u64) -> Self {
        JobRecord {
            id,
            spec,
            state: JobState::Pending,
            node: Some(node),
            epoch: 1,
            claimed: false,
            container_id: None,
            exit_code: None,
            error: None,
            attempts: Vec::new(),
            placed_at_ms: now_ms,
            placed_incarnation: incarnation,
            started_at_ms: None,
            updated_at_ms: now_ms,
            version: 1,
        }
    }

    fn touch(&mut self, now_ms: u64) {
        self.updated_at_ms = now_ms.max(self.updated_at_ms);
        self.version += 1;
    }

    fn push_attempt(&mut self, node: &NodeId, now_ms: u64) {
        if self.attempts.len() >= MAX_ATTEMPTS {
            self.attempts.remove(1);
        }
        self.attempts.push(Attempt {
            node: node.clone(),
            at_ms: now_ms,
            error: None,
        });
    }

    fn fail_attempt(&mut self, error: &str) {
        if let Some(a) = self.attempts.last_mut()
            && a.error.is_none()
        {
            a.error = Some(clip(error));
        }
    }

    /// Takes a placed node's report, or says why not. `Ok(false)` is a
    /// report the record already reflects (a retried delivery).
    pub fn apply(&mut self, report: &JobReport, now_ms: u64) -> Result<bool, Refusal> {
        let placed_here = self.node.as_ref() == Some(&report.node) && self.epoch == report.epoch;
        // An exit is the container's own word: it stands even after the
        // owner gave up on the node, as long as it is that job's container.
        if let JobEvent::Exited {
            container_id,
            exit_code,
        } = &report.event
        {
            if self.state == JobState::Exited {
                return Ok(false);
            }
            if self.container_id.as_deref() != Some(container_id) && !placed_here {
                return Err(self.not_yours());
            }
            self.state = JobState::Exited;
            self.container_id = Some(container_id.clone());
            self.exit_code = Some(*exit_code);
            self.touch(now_ms);
            return Ok(true);
        }
        if !placed_here {
            return Err(self.not_yours());
        }
        if self.state.is_final() {
            return Err(Refusal::Over(self.id.clone()));
        }
        match &report.event {
            JobEvent::Claimed => {
                if self.claimed {
                    return Ok(false);
                }
                self.claimed = true;
                self.push_attempt(&report.node, now_ms);
            }
            JobEvent::AttemptFailed { error } => {
                if !self.claimed {
                    return Err(self.out_of_order("an attempt failed before a claim"));
                }
                self.fail_attempt(error);
                self.push_attempt(&report.node, now_ms);
            }
            JobEvent::Running { container_id } => {
                if !self.claimed {
                    return Err(self.out_of_order("a start before a claim"));
                }
                if self.state == JobState::Running
                    && self.container_id.as_deref() == Some(container_id)
                {
                    return Ok(false);
                }
                self.state = JobState::Running;
                self.container_id = Some(container_id.clone());
                self.started_at_ms = Some(now_ms);
                self.error = None;
            }
            JobEvent::Failed {
                container_id,
                error,
            } => {
                self.fail_attempt(error);
                self.state = JobState::Failed;
                self.error = Some(clip(error));
                if container_id.is_some() {
                    self.container_id = container_id.clone();
                }
            }
            JobEvent::Exited { .. } => unreachable!("handled above"),
        }
        self.touch(now_ms);
        Ok(true)
    }

    fn not_yours(&self) -> Refusal {
        Refusal::NotYours {
            id: self.id.clone(),
            node: self.node.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
            epoch: self.epoch,
        }
    }

    fn out_of_order(&self, why: &str) -> Refusal {
        Refusal::OutOfOrder {
            id: self.id.clone(),
            why: why.to_owned(),
        }
    }

    /// Places the job again, on `node` (of `incarnation`): a new epoch, so
    /// the old placement's claim is refused. Only an unclaimed pending job
    /// moves.
    pub fn place(&mut self, node: NodeId, incarnation: u64, now_ms: u64) -> bool {
        if self.state != JobState::Pending || self.claimed {
            return false;
        }
        self.node = Some(node);
        self.placed_incarnation = incarnation;
        self.epoch += 1;
        self.placed_at_ms = now_ms;
        self.touch(now_ms);
        true
    }

    /// Fails the job with `error` (the owner's own verdict).
    pub fn fail(&mut self, error: &str, now_ms: u64) {
        if self.state.is_final() {
            return;
        }
        self.fail_attempt(error);
        self.state = JobState::Failed;
        self.error = Some(clip(error));
        self.touch(now_ms);
    }

    /// What the owner must do now that the placed node left the fleet.
    pub fn after_node_left(&self) -> AfterLoss {
        match self.state {
            JobState::Pending if !self.claimed => AfterLoss::PlaceAgain,
            JobState::Pending => AfterLoss::Fail(format!(
                "node {} left the fleet while creating the container; it may exist there as {} \
                 and was not created again, so that the job does not run twice",
                self.node.as_ref().map(|n| n.0.as_str()).unwrap_or("?"),
                self.id.container_name()
            )),
            // A running container runs on when its node's shoal stops;
            // its node says how it ended when it is back.
            JobState::Running | JobState::Failed | JobState::Exited => AfterLoss::Keep,
        }
    }

    /// True when `self` is newer than `other` (a copy of the same job).
    pub fn newer_than(&self, other: &JobRecord) -> bool {
        (self.version, self.updated_at_ms) > (other.version, other.updated_at_ms)
    }
}

/// What becomes of a job whose node left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterLoss {
    /// It never started there: place it on another node.
    PlaceAgain,
    /// It may have started there: fail it, saying why.
    Fail(String),
    /// Nothing to do.
    Keep,
}

/// A node the owner may place a job on, as it answered the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The node.
    pub node: NodeId,
    /// Its engines can create containers.
    pub can_create: bool,
    /// The image is on the node.
    pub has_image: bool,
    /// Its live containers.
    pub containers: u64,
}

/// Why a job cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The requested node is not a live member.
    #[error("node {0} is not a live member of the fleet")]
    NoSuchNode(String),
    /// The requested node cannot create containers.
    #[error("node {0} cannot create containers: {1}")]
    CannotCreate(String, String),
    /// No node can create containers.
    #[error("no live node can create containers (containerd and synthetic engines cannot)")]
    Nowhere,
}

/// The nodes to place a job on, best first: the requested node alone; else
/// the nodes that can create containers, those with the image first, then
/// fewest containers, then by ID. Without a requested node and with no
/// node holding the image, every node is listed, so the job fails on the
/// first with the engine's own message.
pub fn choose_node(spec: &JobSpec, candidates: &[Candidate]) -> Result<Vec<NodeId>, PlaceError> {
    if let Some(want) = &spec.node {
        let Some(c) = candidates.iter().find(|c| &c.node == want) else {
            return Err(PlaceError::NoSuchNode(want.0.clone()));
        };
        if !c.can_create {
            return Err(PlaceError::CannotCreate(
                want.0.clone(),
                "its engines (containerd, synthetic) do not create containers".into(),
            ));
        }
        return Ok(vec![c.node.clone()]);
    }
    let mut able: Vec<&Candidate> = candidates.iter().filter(|c| c.can_create).collect();
    if able.is_empty() {
        return Err(PlaceError::Nowhere);
    }
    able.sort_by(|a, b| {
        b.has_image
            .cmp(&a.has_image)
            .then(a.containers.cmp(&b.containers))
            .then(a.node.cmp(&b.node))
    });
    Ok(able.into_iter().map(|c| c.node.clone()).collect())
}

impl Validate for JobId {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        JobId::parse(&self.0).map(|_| ())
    }
}

impl Validate for JobSpec {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        self.check()
    }
}

impl Validate for JobRecord {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.id.validate(now_ms).map_err(|e| e.at("id"))?;
        self.spec.check().map_err(|e| e.at("spec"))?;
        if let Some(n) = &self.node {
            validate::text(&n.0, validate::MAX_NODE_ID_LEN, false).map_err(|e| e.at("node"))?;
        }
        if let Some(c) = &self.container_id {
            validate::container_id(c).map_err(|e| e.at("container_id"))?;
        }
        if self.attempts.len() > MAX_ATTEMPTS {
            return Err(Invalid::new("too many attempts").at("attempts"));
        }
        for a in &self.attempts {
            if a.error
                .as_ref()
                .is_some_and(|e| e.len() > MAX_ERROR_LEN + 4)
            {
                return Err(Invalid::new("an error is too long").at("attempts"));
            }
        }
        if self
            .error
            .as_ref()
            .is_some_and(|e| e.len() > MAX_ERROR_LEN + 4)
        {
            return Err(Invalid::new("too long").at("error"));
        }
        Ok(())
    }
}

impl Validate for JobReport {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.id.validate(now_ms).map_err(|e| e.at("id"))?;
        validate::text(&self.node.0, validate::MAX_NODE_ID_LEN, false).map_err(|e| e.at("node"))?;
        let (id, error) = match &self.event {
            JobEvent::Claimed => (None, None),
            JobEvent::AttemptFailed { error } => (None, Some(error)),
            JobEvent::Running { container_id } | JobEvent::Exited { container_id, .. } => {
                (Some(container_id), None)
            }
            JobEvent::Failed {
                container_id,
                error,
            } => (container_id.as_ref(), Some(error)),
        };
        if let Some(id) = id {
            validate::container_id(id).map_err(|e| e.at("container_id"))?;
        }
        if error.is_some_and(|e| e.len() > 64 * 1024) {
            return Err(Invalid::new("too long").at("error"));
        }
        Ok(())
    }
}

impl Validate for Candidate {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        validate::text(&self.node.0, validate::MAX_NODE_ID_LEN, false).map_err(|e| e.at("node"))
    }
}

/// The most records one job answer holds: `GET /v1/jobs` pages a
/// listing below this.
pub const MAX_JOB_RECORDS: usize = 100_000;

/// `POST /_shoal/v1/jobs`: one route for the job protocol's calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobRequest {
    /// Entry to owner: a new job to keep and place.
    Submit {
        /// Its ID (named by the entry node).
        id: JobId,
        /// What it asks for.
        spec: JobSpec,
    },
    /// Owner to the other owners: copies of records (the newer wins).
    Store(Vec<JobRecord>),
    /// Anyone to an owner: one job's record.
    Get(JobId),
    /// Anyone to every node: the records it holds that match.
    List {
        /// Only in this state.
        state: Option<JobState>,
        /// Only placed on this node.
        node: Option<NodeId>,
    },
    /// Owner to the placed node: queue this job.
    Run(JobRecord),
    /// Placed node to an owner: a transition.
    Report(JobReport),
    /// Owner to a node it may place on: can it create, has it the image.
    Probe {
        /// The image.
        image: String,
    },
    /// Owner to the placed node: is this placement still queued or being
    /// worked on there (a job not claimed for long)?
    Holds {
        /// The job.
        id: JobId,
        /// Its placement.
        epoch: u32,
    },
}

/// The answer to a [`JobRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobReply {
    /// Submit: the job is kept and queued on its node.
    Accepted(JobRecord),
    /// Submit or Run: the node's queue is full.
    QueueFull {
        /// The node whose queue is full.
        node: NodeId,
        /// Its size.
        size: u32,
    },
    /// Submit or Run: the job cannot be placed or run; the message says
    /// why (a bad request, not a failure to retry).
    Rejected(String),
    /// Submit: no node could be reached to take the job; trying again
    /// later may succeed.
    Unavailable(String),
    /// Store, Run: done.
    Done,
    /// Get: the record, if this node holds it.
    Record(Option<JobRecord>),
    /// List: the records.
    Records(Vec<JobRecord>),
    /// Report: taken (`true`), or already reflected (`false`).
    Taken(bool),
    /// Report: refused; the reporter drops the job.
    Refused(String),
    /// Probe: the node's answer.
    Candidate(Candidate),
    /// Holds: whether the node has the placement.
    Holds(bool),
}

impl Validate for JobRequest {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        match self {
            JobRequest::Submit { id, spec } => {
                id.validate(now_ms).map_err(|e| e.at("id"))?;
                spec.check().map_err(|e| e.at("spec"))
            }
            JobRequest::Store(records) => records_ok(records, now_ms),
            JobRequest::Get(id) => id.validate(now_ms),
            JobRequest::List { node, .. } => node.as_ref().map_or(Ok(()), |n| {
                validate::text(&n.0, validate::MAX_NODE_ID_LEN, false).map_err(|e| e.at("node"))
            }),
            JobRequest::Run(r) => r.validate(now_ms),
            JobRequest::Report(r) => r.validate(now_ms),
            JobRequest::Holds { id, .. } => id.validate(now_ms),
            JobRequest::Probe { image } => {
                validate::text(image, validate::MAX_IMAGE_LEN, false).map_err(|e| e.at("image"))
            }
        }
    }
}

fn records_ok(records: &[JobRecord], now_ms: u64) -> Result<(), Invalid> {
    if records.len() > MAX_JOB_RECORDS {
        return Err(Invalid::new(format!(
            "{} records, over {MAX_JOB_RECORDS}",
            records.len()
        )));
    }
    for (i, r) in records.iter().enumerate() {
        r.validate(now_ms).map_err(|e| e.at(format!("[{i}]")))?;
    }
    Ok(())
}

impl Validate for JobReply {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        match self {
            JobReply::Accepted(r) => r.validate(now_ms),
            JobReply::Record(r) => r.as_ref().map_or(Ok(()), |r| r.validate(now_ms)),
            JobReply::Records(rs) => records_ok(rs, now_ms),
            JobReply::Candidate(c) => c.validate(now_ms),
            JobReply::QueueFull { node, .. } => {
                validate::text(&node.0, validate::MAX_NODE_ID_LEN, false).map_err(|e| e.at("node"))
            }
            JobReply::Rejected(m) | JobReply::Refused(m) | JobReply::Unavailable(m) => {
                if m.len() > 64 * 1024 {
                    Err(Invalid::new("the message is too long"))
                } else {
                    Ok(())
                }
            }
            JobReply::Done | JobReply::Taken(_) | JobReply::Holds(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "019ad5a2-7c3e-7b21-9f00-0123456789ab";

    fn id() -> JobId {
        JobId::parse(ID).unwrap()
    }

    fn spec() -> JobSpec {
        JobSpec {
            image: "busybox".into(),
            arguments: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }
    }

    fn report(node: &str, epoch: u32, event: JobEvent) -> JobReport {
        JobReport {
            id: id(),
            node: node.into(),
            epoch,
            event,
        }
    }

    const CID: &str = "0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef";

    #[test]
    fn job_ids_are_lowercase_version_7_uuids() {
        assert!(JobId::parse(ID).is_ok());
        assert!(JobId::parse(&ID.to_uppercase()).is_err());
        assert!(JobId::parse("019ad5a2-7c3e-4b21-9f00-0123456789ab").is_err());
        assert!(JobId::parse("019ad5a27c3e7b219f000123456789ab").is_err());
        assert!(JobId::parse("../../etc").is_err());
        assert_eq!(id().created_ms(), 0x019ad5a27c3e);
        assert_eq!(id().container_name(), format!("shoal-job-{ID}"));
    }

    #[test]
    fn a_spec_refuses_host_networking_bad_env_and_reserved_labels() {
        assert!(spec().check().is_ok());
        for (what, s) in [
            (
                "network",
                JobSpec {
                    network: Some("host".into()),
                    ..spec()
                },
            ),
            (
                "env",
                JobSpec {
                    env: [("1X".into(), "v".into())].into(),
                    ..spec()
                },
            ),
            (
                "labels",
                JobSpec {
                    labels: [("shoal.job".into(), "x".into())].into(),
                    ..spec()
                },
            ),
            (
                "resources.memory",
                JobSpec {
                    resources: Resources {
                        memory_bytes: Some(1024),
                        cpus: None,
                    },
                    ..spec()
                },
            ),
            (
                "resources.cpus",
                JobSpec {
                    resources: Resources {
                        memory_bytes: None,
                        cpus: Some(f64::NAN),
                    },
                    ..spec()
                },
            ),
            (
                "image",
                JobSpec {
                    image: "bad image".into(),
                    ..spec()
                },
            ),
        ] {
            let e = s.check().unwrap_err().to_string();
            assert!(e.starts_with(what), "{what}: {e}");
        }
    }

    #[test]
    fn a_claim_is_taken_only_for_the_current_placement() {
        let mut r = JobRecord::new(id(), spec(), "a".into(), 7, 1);
        assert!(matches!(
            r.apply(&report("b", 1, JobEvent::Claimed), 2),
            Err(Refusal::NotYours { .. })
        ));
        assert!(r.place("b".into(), 7, 3));
        assert!(matches!(
            r.apply(&report("a", 1, JobEvent::Claimed), 4),
            Err(Refusal::NotYours { .. })
        ));
        assert_eq!(r.apply(&report("b", 2, JobEvent::Claimed), 5), Ok(true));
        assert_eq!(r.apply(&report("b", 2, JobEvent::Claimed), 6), Ok(false));
        assert!(!r.place("c".into(), 7, 7), "a claimed job never moves");
        assert_eq!(r.attempts.len(), 1);
    }

    #[test]
    fn transitions_record_every_attempt_and_end_final() {
        let mut r = JobRecord::new(id(), spec(), "a".into(), 7, 1);
        assert!(
            r.apply(
                &report(
                    "a",
                    1,
                    JobEvent::Running {
                        container_id: CID.into()
                    }
                ),
                2
            )
            .is_err(),
            "a start before a claim"
        );
        r.apply(&report("a", 1, JobEvent::Claimed), 2).unwrap();
        r.apply(
            &report(
                "a",
                1,
                JobEvent::AttemptFailed {
                    error: "engine busy".into(),
                },
            ),
            3,
        )
        .unwrap();
        r.apply(
            &report(
                "a",
                1,
                JobEvent::Running {
                    container_id: CID.into(),
                },
            ),
            4,
        )
        .unwrap();
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(r.attempts[0].error.as_deref(), Some("engine busy"));
        r.apply(
            &report(
                "a",
                1,
                JobEvent::Exited {
                    container_id: CID.into(),
                    exit_code: 3,
                },
            ),
            5,
        )
        .unwrap();
        assert_eq!((r.state, r.exit_code), (JobState::Exited, Some(3)));
        assert!(matches!(
            r.apply(
                &report(
                    "a",
                    1,
                    JobEvent::Failed {
                        container_id: None,
                        error: "late".into()
                    }
                ),
                6
            ),
            Err(Refusal::Over(_))
        ));
        let v = r.version;
        assert!(v >= 5);
    }

    #[test]
    fn a_node_that_left_moves_only_unclaimed_jobs() {
        let mut r = JobRecord::new(id(), spec(), "a".into(), 7, 1);
        assert_eq!(r.after_node_left(), AfterLoss::PlaceAgain);
        r.apply(&report("a", 1, JobEvent::Claimed), 2).unwrap();
        match r.after_node_left() {
            AfterLoss::Fail(why) => assert!(why.contains("left the fleet"), "{why}"),
            other => panic!("{other:?}"),
        }
        r.apply(
            &report(
                "a",
                1,
                JobEvent::Running {
                    container_id: CID.into(),
                },
            ),
            3,
        )
        .unwrap();
        assert_eq!(r.after_node_left(), AfterLoss::Keep);
    }

    #[test]
    fn placement_prefers_the_image_then_fewest_containers() {
        let c = |n: &str, img: bool, k: u64, able: bool| Candidate {
            node: n.into(),
            can_create: able,
            has_image: img,
            containers: k,
        };
        let all = [
            c("a", false, 0, true),
            c("b", true, 9, true),
            c("c", true, 3, true),
            c("d", true, 0, false),
        ];
        let order = choose_node(&spec(), &all).unwrap();
        assert_eq!(order, vec!["c".into(), "b".into(), "a".into()]);
        let named = JobSpec {
            node: Some("a".into()),
            ..spec()
        };
        assert_eq!(choose_node(&named, &all).unwrap(), vec!["a".into()]);
        let cannot = JobSpec {
            node: Some("d".into()),
            ..spec()
        };
        assert!(matches!(
            choose_node(&cannot, &all),
            Err(PlaceError::CannotCreate(..))
        ));
        let gone = JobSpec {
            node: Some("z".into()),
            ..spec()
        };
        assert!(matches!(
            choose_node(&gone, &all),
            Err(PlaceError::NoSuchNode(_))
        ));
        assert_eq!(
            choose_node(&spec(), &[c("d", true, 0, false)]),
            Err(PlaceError::Nowhere)
        );
    }

    #[test]
    fn the_newer_copy_wins() {
        let a = JobRecord::new(id(), spec(), "a".into(), 7, 1);
        let mut b = a.clone();
        b.apply(&report("a", 1, JobEvent::Claimed), 2).unwrap();
        assert!(b.newer_than(&a));
        assert!(!a.newer_than(&b));
        assert!(!a.newer_than(&a));
    }

    #[test]
    fn job_calls_round_trip_on_the_wire_and_bad_ones_are_refused() {
        let now = 0x019ad5a27c3e + 1000;
        let mut record = JobRecord::new(id(), spec(), "a".into(), 7, 1);
        record.spec.resources.cpus = Some(0.5);
        for request in [
            JobRequest::Submit {
                id: id(),
                spec: spec(),
            },
            JobRequest::Run(record.clone()),
            JobRequest::Store(vec![record.clone()]),
            JobRequest::Report(report("a", 1, JobEvent::Claimed)),
            JobRequest::List {
                state: Some(JobState::Failed),
                node: None,
            },
        ] {
            let bytes = crate::wire::encode(&request);
            assert_eq!(
                crate::wire::decode::<JobRequest>(&bytes, now).unwrap(),
                request
            );
        }
        let mut bad = record.clone();
        bad.container_id = Some("../../etc/passwd".into());
        let bytes = crate::wire::encode(&JobRequest::Run(bad));
        let e = crate::wire::decode::<JobRequest>(&bytes, now).unwrap_err();
        assert!(e.to_string().contains("container_id"), "{e}");
        let mut bad = record;
        bad.spec.network = Some("host".into());
        let bytes = crate::wire::encode(&JobRequest::Store(vec![bad]));
        assert!(crate::wire::decode::<JobRequest>(&bytes, now).is_err());
    }
}
