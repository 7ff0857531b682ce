//! The node's configuration: a plain struct with documented defaults. The
//! `shoal` command layers flags, environment and a YAML file onto it.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_core::NodeId;

/// How long an engine may be lost before answers mark its records stale.
/// Shorter losses are blips (a daemon restart, a socket that comes back at
/// once) and the last inventory is still right; longer, clients are told
/// the record may be out of date and since when.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// Everything a node needs to run, with the defaults of `shoal node`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's ID (default: the host name).
    pub node_id: NodeId,
    /// Where the HTTP API listens (default `0.0.0.0:7070`).
    pub listen: SocketAddr,
    /// The address peers and `/v1/nodes` use for this node (default: the
    /// listen address, with the host name for an unspecified IP).
    pub advertise: String,
    /// Static peers, `host:port` each (the cluster builds on them).
    pub peers: Vec<String>,
    /// A DNS name whose A records are the peers, `name:port`.
    pub peers_dns: Option<String>,
    /// UDP address for gossip (default: the listen address; TCP and UDP
    /// ports are separate, so one `host:port` per peer serves both).
    pub gossip_listen: Option<SocketAddr>,
    /// Owners per key (default 2).
    pub replicas: usize,
    /// Virtual nodes per node on the ring (default 64).
    pub vnodes: usize,
    /// The longest a forwarded answer may be served from the hot cache
    /// (default 5 min): a backstop, since owners tell the nodes that
    /// fetched an answer when it changes, and a ring change drops it.
    pub hot_ttl: Duration,
    /// How long a peer may take to answer (default 250 ms).
    pub peer_timeout: Duration,
    /// A dead node's records leave every directory within this (default
    /// 3 s); it sets the gossip rate and the failure detector.
    pub dead_after: Duration,
    /// A node whose engine has been lost this long withdraws its records
    /// from the fleet, until the engine is back (default 60 s). Before
    /// that, answers mark them stale.
    pub engine_lost_after: Duration,
    /// Answers mark a record stale once its engine has been lost longer
    /// than this (default [`STALE_AFTER`], 5 s; not a flag: tests shorten
    /// it).
    pub stale_after: Duration,
    /// Anti-entropy: compare digests with every owner this often (default
    /// 10 s).
    pub sync_interval: Duration,
    /// An owner drops records whose keys it no longer owns after the ring
    /// has been stable this long (default 30 s).
    pub ownership_grace: Duration,
    /// Deadline of a fleet-wide scatter-gather (default 1 s).
    pub scatter_timeout: Duration,
    /// The largest peer request body accepted (default 64 MiB: snapshots).
    pub max_peer_body_bytes: usize,
    /// Shared secret of the peer API: peer requests carry an HMAC of it
    /// (default: none; peer routes then trust the network).
    pub cluster_secret: Option<String>,
    /// Records the hot cache may hold (default 100 000, about 150 MB at
    /// most): with owners' invalidations keeping it coherent, this, not
    /// the TTL, is what bounds it.
    pub hot_capacity: u64,
    /// Reconcile with a full engine list this often (default 60 s).
    pub resync_interval: Duration,
    /// Changes of each node a watch can resume over (default 4096): this
    /// node's own, and its copy of each peer's.
    pub watch_buffer: usize,
    /// `GET /v1/watch` streams served at once; more are answered 503
    /// (default 4096).
    pub max_watchers: usize,
    /// An idle watch stream gets a heartbeat this often (default 15 s).
    pub watch_heartbeat: Duration,
    /// The longest a public request may take before it is answered 503
    /// (default 10 s).
    pub request_timeout: Duration,
    /// The longest a peer request (`/_shoal/...`) may take, its body
    /// included (default 60 s: longer than the 30 s a publisher allows a
    /// snapshot, so the sender's deadline is the one that counts).
    pub peer_request_timeout: Duration,
    /// A connection must send a request's headers within this; an idle
    /// keep-alive connection is closed after it too (default 10 s).
    pub header_read_timeout: Duration,
    /// A public request's body must arrive within this, else 400 (default
    /// 5 s). Peer bodies are bounded by `peer_request_timeout`.
    pub body_read_timeout: Duration,
    /// Open connections at once; more are closed as soon as they are
    /// accepted (default 4096).
    pub max_connections: usize,
    /// The largest request body accepted (default 256 KiB).
    pub max_body_bytes: usize,
    /// The most calls in one JSON-RPC batch (default 100).
    pub max_batch: usize,
    /// Public requests handled at once; more are answered 503 with
    /// `Retry-After` at once (default 1024).
    pub max_concurrent_requests: usize,
    /// Peer requests handled at once, apart from the public ones; more are
    /// answered 503 with `Retry-After` (default 512).
    pub max_concurrent_peer_requests: usize,
    /// Fleet-wide scatter-gathers (listings, projects, lookups' last
    /// resort) at once; more are answered 503 with `Retry-After` (default
    /// 32).
    pub max_scatters: usize,
    /// Listing calls (`Inventory.List`, `Inventory.Projects`) one JSON-RPC
    /// batch may hold (default 8); each also takes a scatter like a REST
    /// listing.
    pub max_batch_listings: usize,
    /// How long shutdown waits for requests in flight (default 10 s).
    pub shutdown_grace: Duration,
    /// The history store: `sqlite://PATH` or `postgres://…` (default
    /// none here; `shoal node` gives the embedded store under its data
    /// directory unless told `--no-history`).
    pub history: Option<String>,
    /// Bring the store's schema up to date at startup (default true).
    pub history_migrate: bool,
    /// Changes queued for the store at most; more are dropped and counted
    /// while it is down (default 100 000).
    pub history_buffer: usize,
    /// The retention deletes history older than this (default 30 days).
    pub history_retention: Duration,
    /// The scheduler's jobs (`scheduler.jobs` of the YAML file); none
    /// given: the defaults of [`crate::scheduler::Job::defaults`].
    pub scheduler_jobs: Option<Vec<crate::scheduler::JobConfig>>,
    /// The API token (`--api-token`): creating jobs needs it as
    /// `Authorization: Bearer`; without one, no job is created here.
    pub api_token: Option<String>,
    /// Reads need the token too (`--api-token-reads`; default off).
    pub api_token_reads: bool,
    /// Jobs waiting for a worker on this node at most (default 100).
    pub queue_size: usize,
    /// Workers creating job containers at once (default 10).
    pub worker_count: usize,
    /// Retries of a job's engine calls that failed for a reason that may
    /// pass (default 3).
    pub job_retries: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: NodeId::from("shoal"),
            listen: SocketAddr::from(([0, 0, 0, 0], 7070)),
            advertise: String::new(),
            peers: Vec::new(),
            peers_dns: None,
            gossip_listen: None,
            replicas: 2,
            vnodes: 64,
            hot_ttl: Duration::from_secs(300),
            peer_timeout: Duration::from_millis(250),
            dead_after: Duration::from_secs(3),
            engine_lost_after: Duration::from_secs(60),
            stale_after: STALE_AFTER,
            sync_interval: Duration::from_secs(10),
            ownership_grace: Duration::from_secs(30),
            scatter_timeout: Duration::from_secs(1),
            max_peer_body_bytes: 64 * 1024 * 1024,
            hot_capacity: 100_000,
            watch_buffer: 4096,
            max_watchers: 4096,
            watch_heartbeat: Duration::from_secs(15),
            cluster_secret: None,
            resync_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            peer_request_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(5),
            max_connections: 4096,
            max_body_bytes: 256 * 1024,
            max_batch: 100,
            max_concurrent_requests: 1024,
            max_concurrent_peer_requests: 512,
            max_scatters: 32,
            max_batch_listings: 8,
            shutdown_grace: Duration::from_secs(10),
            history: None,
            history_migrate: true,
            history_buffer: 100_000,
            history_retention: Duration::from_secs(30 * 86_400),
            scheduler_jobs: None,
            api_token: None,
            api_token_reads: false,
            queue_size: 100,
            worker_count: 10,
            job_retries: 3,
        }
    }
}

impl NodeConfig {
    /// The scheduler's jobs: those configured, else the defaults. Each name
    /// at most once.
    pub fn jobs(&self) -> Result<Vec<crate::scheduler::Job>, String> {
        use crate::scheduler::Job;
        let Some(given) = &self.scheduler_jobs else {
            // Without history, only the tasks that need none.
            let mut jobs = Job::defaults(self.resync_interval, self.history_retention);
            jobs.retain(|j| self.history.is_some() || !j.needs_history());
            return Ok(jobs);
        };
        let mut seen = std::collections::BTreeSet::new();
        given
            .iter()
            .map(|c| {
                if !seen.insert(c.name.as_str()) {
                    return Err(format!("scheduler job {:?} is given twice", c.name));
                }
                let job = Job::from_config(c, self.history_retention)?;
                if job.needs_history() && self.history.is_none() {
                    return Err(format!(
                        "scheduler job {:?} needs the history, and this node keeps none (no-history)",
                        c.name
                    ));
                }
                Ok(job)
            })
            .collect()
    }

    /// The address to show for this node: `advertise`, else the listen
    /// address.
    pub fn advertised(&self) -> String {
        if self.advertise.is_empty() {
            self.listen.to_string()
        } else {
            self.advertise.clone()
        }
    }

    /// Checks the values that no type rules out; the message names the
    /// setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.0.is_empty() {
            return Err("node-id must not be empty".into());
        }
        if !shoal_core::is_plain_name(&self.node_id.0) {
            return Err(format!(
                "node-id {:?} may hold only letters, digits, '_', '.' and '-'",
                self.node_id.0
            ));
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err("cluster-secret must be at least 16 characters".into());
        }
        if let Some(t) = &self.api_token
            && (t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("api-token must be at least 16 printable characters without spaces".into());
        }
        if self.api_token_reads && self.api_token.is_none() {
            return Err("api-token-reads needs an api-token".into());
        }
        if !(1..=100_000).contains(&self.queue_size) {
            return Err("queue-size must be between 1 and 100000".into());
        }
        if !(1..=1000).contains(&self.worker_count) {
            return Err("worker-count must be between 1 and 1000".into());
        }
        if self.job_retries > 100 {
            return Err("job-retries must be at most 100".into());
        }
        if self.replicas == 0 {
            return Err("replicas must be at least 1".into());
        }
        if self.vnodes == 0 {
            return Err("vnodes must be at least 1".into());
        }
        if self.hot_capacity == 0 {
            return Err(
                "hot-capacity must be at least 1 (hot-ttl: 0s turns the hot cache off)".into(),
            );
        }
        if self.max_body_bytes < 1024 {
            return Err("max-body-bytes must be at least 1024".into());
        }
        if self.max_batch == 0 {
            return Err("max-batch must be at least 1".into());
        }
        for (name, n) in [
            ("max-concurrent-requests", self.max_concurrent_requests),
            (
                "max-concurrent-peer-requests",
                self.max_concurrent_peer_requests,
            ),
            ("max-connections", self.max_connections),
            ("max-watchers", self.max_watchers),
            ("watch-buffer", self.watch_buffer),
            ("max-scatters", self.max_scatters),
            ("max-batch-listings", self.max_batch_listings),
            ("history-buffer", self.history_buffer),
        ] {
            if n == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        for (name, d) in [
            ("request-timeout", self.request_timeout),
            ("peer-request-timeout", self.peer_request_timeout),
            ("header-read-timeout", self.header_read_timeout),
            ("body-read-timeout", self.body_read_timeout),
            ("peer-timeout", self.peer_timeout),
            ("resync-interval", self.resync_interval),
            ("dead-after", self.dead_after),
            ("engine-lost-after", self.engine_lost_after),
            ("sync-interval", self.sync_interval),
            ("scatter-timeout", self.scatter_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        if self.history_retention < Duration::from_secs(60) {
            return Err("history-retention must be at least 1m".into());
        }
        self.jobs()?;
        if let Some(url) = &self.history
            && !["sqlite://", "postgres://", "postgresql://"]
                .iter()
                .any(|p| url.starts_with(p))
        {
            return Err(format!(
                "history {:?}: give sqlite://PATH or postgres://USER@HOST/DB",
                shoal_history::redacted(url)
            ));
        }
        Ok(())
    }
}
