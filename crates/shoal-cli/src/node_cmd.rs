//! `shoal node`: flags, `SHOAL_*` environment and a YAML `--config` file,
//! layered in one place (flags > environment > file > defaults) onto
//! [`NodeConfig`], then the engine, the listener and the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use shoal_core::{EngineId, NodeId};
use shoal_engine::{ContainerdEngine, DockerEngine, Engine, SyntheticEngine, SyntheticSpec};
use shoal_node::NodeConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Which engine a node watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The Docker engine at --docker-host.
    Docker,
    /// containerd at --containerd-address (Kubernetes nodes, nerdctl and
    /// ctr hosts).
    Containerd,
    /// Generated containers in memory (tests, demos, benchmarks).
    Synthetic,
}

/// `engine:` in the YAML file: one engine or a list of them
/// (`engine: docker`, `engine: [docker, containerd]`), each named like the
/// flag's values.
fn engines_from_yaml<'de, D>(d: D) -> Result<Option<Vec<EngineKind>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Engines;

    fn kind<E: serde::de::Error>(name: &str) -> Result<EngineKind, E> {
        EngineKind::from_str(name, true).map_err(|_| {
            E::custom(format!(
                "unknown engine {name:?}: expected docker, containerd or synthetic"
            ))
        })
    }

    impl<'de> serde::de::Visitor<'de> for Engines {
        type Value = Vec<EngineKind>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an engine name or a list of them")
        }

        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
            Ok(vec![kind(name)?])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                out.push(kind(&name)?);
            }
            Ok(out)
        }
    }

    d.deserialize_any(Engines).map(Some)
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 250ms, 1s, 2m)"))
}

/// Flags of `shoal node`. Every flag is also `SHOAL_<NAME>` in the
/// environment and `<name>` in the YAML file.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// A YAML file of settings (keys are the flag names); flags and
    /// environment override it.
    #[arg(long, env = "SHOAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's ID [default: the host name].
    #[arg(long, env = "SHOAL_NODE_ID")]
    pub node_id: Option<String>,
    /// Address of the HTTP API [default: 0.0.0.0:7070].
    #[arg(long, env = "SHOAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address others reach this node at [default: the listen address].
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Static peers (gossip seeds), host:port each, comma-separated: the
    /// same host:port serves HTTP (TCP) and gossip (UDP).
    #[arg(long, env = "SHOAL_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// A DNS name whose A records are the peers, name:port (a Kubernetes
    /// headless service); re-resolved while the node runs.
    #[arg(long, env = "SHOAL_PEERS_DNS")]
    pub peers_dns: Option<String>,
    /// UDP address for gossip [default: the listen address and port].
    #[arg(long, env = "SHOAL_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// An engine to watch; repeat it (or separate with commas) to watch
    /// several, e.g. --engine docker --engine containerd [default: docker].
    #[arg(long, env = "SHOAL_ENGINE", value_enum, value_delimiter = ',')]
    pub engine: Option<Vec<EngineKind>>,
    /// The Docker engine's address, unix:///path or tcp://host:port
    /// [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = "SHOAL_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// containerd's socket, for --engine containerd
    /// [default: /run/containerd/containerd.sock].
    #[arg(long, env = "SHOAL_CONTAINERD_ADDRESS")]
    pub containerd_address: Option<String>,
    /// containerd namespaces to watch, comma-separated [default: every
    /// namespace; `moby` is skipped when the node also watches Docker].
    #[arg(long, env = "SHOAL_CONTAINERD_NAMESPACES", value_delimiter = ',')]
    pub containerd_namespaces: Option<Vec<String>>,
    /// How many containers the synthetic engine holds [default: 100].
    #[arg(long, env = "SHOAL_SYNTHETIC_COUNT")]
    pub synthetic_count: Option<usize>,
    /// Name prefix of synthetic containers: P0…P{N-1} [default: the node
    /// ID and a dash].
    #[arg(long, env = "SHOAL_SYNTHETIC_PREFIX")]
    pub synthetic_prefix: Option<String>,
    /// Owners per key [default: 2].
    #[arg(long, env = "SHOAL_REPLICAS")]
    pub replicas: Option<usize>,
    /// Virtual nodes per node on the ring [default: 64].
    #[arg(long, env = "SHOAL_VNODES")]
    pub vnodes: Option<usize>,
    /// The longest a forwarded answer stays in the hot cache; owners
    /// invalidate it as soon as it changes [default: 5m].
    #[arg(long, env = "SHOAL_HOT_TTL", value_parser = parse_duration)]
    pub hot_ttl: Option<Duration>,
    /// Records the hot cache holds, about 1.5 KB each; the oldest unused
    /// go first [default: 100000].
    #[arg(long, env = "SHOAL_HOT_CAPACITY", value_parser = clap::value_parser!(u64).range(1..))]
    pub hot_capacity: Option<u64>,
    /// Changes of each node that a `/v1/watch` client can resume over
    /// after a dropped connection [default: 4096].
    #[arg(long, env = "SHOAL_WATCH_BUFFER", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watch_buffer: Option<u64>,
    /// `/v1/watch` streams served at once [default: 4096].
    #[arg(long, env = "SHOAL_MAX_WATCHERS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_watchers: Option<u64>,
    /// How long a peer may take to answer [default: 250ms].
    #[arg(long, env = "SHOAL_PEER_TIMEOUT", value_parser = parse_duration)]
    pub peer_timeout: Option<Duration>,
    /// How often to reconcile with a full engine list [default: 60s].
    #[arg(long, env = "SHOAL_RESYNC_INTERVAL", value_parser = parse_duration)]
    pub resync_interval: Option<Duration>,
    /// A dead node's records leave every directory within this; sets the
    /// gossip rate and failure detector [default: 3s].
    #[arg(long, env = "SHOAL_DEAD_AFTER", value_parser = parse_duration)]
    pub dead_after: Option<Duration>,
    /// A node whose engine has been lost this long withdraws its
    /// containers from the fleet until the engine is back; before that,
    /// answers mark them stale [default: 60s].
    #[arg(long, env = "SHOAL_ENGINE_LOST_AFTER", value_parser = parse_duration)]
    pub engine_lost_after: Option<Duration>,
    /// Anti-entropy: compare digests with every owner this often
    /// [default: 10s].
    #[arg(long, env = "SHOAL_SYNC_INTERVAL", value_parser = parse_duration)]
    pub sync_interval: Option<Duration>,
    /// Deadline of a fleet-wide listing (scatter-gather) [default: 1s].
    #[arg(long, env = "SHOAL_SCATTER_TIMEOUT", value_parser = parse_duration)]
    pub scatter_timeout: Option<Duration>,
    /// The longest a request may take [default: 10s].
    #[arg(long, env = "SHOAL_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// The largest request body accepted, in bytes [default: 262144].
    #[arg(long, env = "SHOAL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// The most calls in one JSON-RPC batch [default: 100].
    #[arg(long, env = "SHOAL_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// The most listing calls in one JSON-RPC batch [default: 8].
    #[arg(long, env = "SHOAL_MAX_BATCH_LISTINGS")]
    pub max_batch_listings: Option<usize>,
    /// Public requests handled at once; more are answered 503 with
    /// Retry-After [default: 1024].
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Peer requests (/_shoal/) handled at once, apart from the public
    /// ones; more are answered 503 [default: 512].
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_PEER_REQUESTS")]
    pub max_concurrent_peer_requests: Option<usize>,
    /// Fleet-wide listings (scatter-gathers) at once; more are answered
    /// 503 [default: 32].
    #[arg(long, env = "SHOAL_MAX_SCATTERS")]
    pub max_scatters: Option<usize>,
    /// Open connections at once; more are closed when accepted
    /// [default: 4096].
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The longest a peer request may take, snapshots included
    /// [default: 60s].
    #[arg(long, env = "SHOAL_PEER_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub peer_request_timeout: Option<Duration>,
    /// A client must send a request's headers within this; idle
    /// connections close after it too [default: 10s].
    #[arg(long, env = "SHOAL_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// A public request's body must arrive within this [default: 5s].
    #[arg(long, env = "SHOAL_BODY_READ_TIMEOUT", value_parser = parse_duration)]
    pub body_read_timeout: Option<Duration>,
    /// Shared secret of the peer API (at least 16 characters): peer requests
    /// carry an HMAC of it. Prefer --cluster-secret-file: a flag shows in
    /// the process list, an environment variable in `docker inspect`.
    #[arg(long, env = "SHOAL_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (surrounding whitespace is
    /// dropped), such as a mounted Kubernetes Secret; instead of
    /// --cluster-secret.
    #[arg(long, env = "SHOAL_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The API token (at least 16 characters): creating jobs needs it as
    /// `Authorization: Bearer <token>`; without one, this node creates no
    /// jobs. Prefer --api-token-file.
    #[arg(long, env = "SHOAL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A file holding the API token (surrounding whitespace is dropped);
    /// instead of --api-token.
    #[arg(long, env = "SHOAL_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Reads need the API token too (every route but /healthz, /readyz
    /// and /metrics; the web view then cannot list).
    #[arg(long, env = "SHOAL_API_TOKEN_READS")]
    pub api_token_reads: bool,
    /// Jobs waiting for a worker on this node; more are refused with 429
    /// [default: 100].
    #[arg(long, env = "SHOAL_QUEUE_SIZE", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub queue_size: Option<usize>,
    /// Workers creating job containers at once [default: 10].
    #[arg(long, env = "SHOAL_WORKER_COUNT", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub worker_count: Option<usize>,
    /// Retries, with doubling waits, of a job's engine calls that failed
    /// for a reason that may pass (a missing image is not retried)
    /// [default: 3].
    #[arg(long, env = "SHOAL_JOB_RETRIES", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub job_retries: Option<u32>,
    /// The history store: postgres://USER:PASSWORD@HOST/DB, which every
    /// node of a fleet can share, or sqlite://PATH [default: the embedded
    /// store, sqlite://<data-dir>/history.db].
    #[arg(
        long,
        env = "SHOAL_HISTORY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub history: Option<String>,
    /// A file holding the history store's URL (for one with a password,
    /// which a flag would show in the process list); instead of --history.
    #[arg(
        long,
        env = "SHOAL_HISTORY_FILE",
        value_name = "FILE",
        conflicts_with = "history"
    )]
    pub history_file: Option<PathBuf>,
    /// Where the embedded history store lives [default: /var/lib/shoal
    /// for root, else $XDG_DATA_HOME/shoal or ~/.local/share/shoal].
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep no history: no store is opened and `?at=` and `/v1/history`
    /// answer 503.
    #[arg(long, env = "SHOAL_NO_HISTORY", conflicts_with = "history")]
    pub no_history: bool,
    /// Do not bring the history schema up to date at startup (run
    /// `shoal migrate` instead).
    #[arg(long, env = "SHOAL_NO_MIGRATE")]
    pub no_migrate: bool,
    /// The history.retention task deletes history older than this
    /// [default: 30d].
    #[arg(long, env = "SHOAL_HISTORY_RETENTION", value_parser = parse_duration)]
    pub history_retention: Option<Duration>,
    /// Changes queued for the history store; while it is down, more are
    /// dropped and counted [default: 100000].
    #[arg(long, env = "SHOAL_HISTORY_BUFFER", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub history_buffer: Option<u64>,
    /// Log filter: a level (info, debug) or directives (shoal_engine=debug)
    /// [default: info].
    #[arg(long, env = "SHOAL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The YAML file: the same settings as the flags, by the flag's name.
/// Unknown keys are refused, so a typo is an error and not a silent default.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    node_id: Option<String>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    peers: Option<Vec<String>>,
    peers_dns: Option<String>,
    gossip_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "engines_from_yaml")]
    engine: Option<Vec<EngineKind>>,
    docker_host: Option<String>,
    containerd_address: Option<String>,
    containerd_namespaces: Option<Vec<String>>,
    synthetic_count: Option<usize>,
    synthetic_prefix: Option<String>,
    replicas: Option<usize>,
    vnodes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    hot_ttl: Option<Duration>,
    hot_capacity: Option<u64>,
    watch_buffer: Option<u64>,
    max_watchers: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    peer_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    resync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    dead_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    engine_lost_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    sync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    scatter_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    max_body_bytes: Option<usize>,
    max_batch: Option<usize>,
    max_batch_listings: Option<usize>,
    max_concurrent_requests: Option<usize>,
    max_concurrent_peer_requests: Option<usize>,
    max_scatters: Option<usize>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    peer_request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_read_timeout: Option<Duration>,
    cluster_secret: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    api_token: Option<String>,
    api_token_file: Option<PathBuf>,
    api_token_reads: Option<bool>,
    queue_size: Option<usize>,
    worker_count: Option<usize>,
    job_retries: Option<u32>,
    history: Option<String>,
    history_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    no_history: Option<bool>,
    no_migrate: Option<bool>,
    history_buffer: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    history_retention: Option<Duration>,
    /// `scheduler: {jobs: [{name, spec, desc, payload}]}`.
    scheduler: Option<SchedulerFile>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
}

impl FileConfig {
    /// Reads a YAML file; errors name the file, the line and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

/// Everything `shoal node` decided, after layering.
#[derive(Debug)]
pub struct Resolved {
    /// The node's configuration.
    pub node: NodeConfig,
    /// The engines to watch, in order of precedence, each once.
    pub engines: Vec<EngineKind>,
    /// The Docker host, for the docker engine.
    pub docker_host: String,
    /// containerd's socket, for the containerd engine.
    pub containerd_address: String,
    /// containerd namespaces to watch; `None` for every one.
    pub containerd_namespaces: Option<Vec<String>>,
    /// Synthetic containers.
    pub synthetic_count: usize,
    /// Synthetic name prefix.
    pub synthetic_prefix: String,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

/// The secret given inline or the contents of the file naming it; not both,
/// since which one wins would be a guess. `name` is the setting's
/// (`cluster-secret`, `api-token`).
fn secret(
    name: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            bail!("invalid setting: set one of {name} and {name}-file, not both")
        }
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "invalid setting: cannot read {name}-file {}",
                    path.display()
                )
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                bail!("invalid setting: {name}-file {} is empty", path.display());
            }
            Ok(Some(secret.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// The file's `scheduler` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerFile {
    #[serde(default)]
    jobs: Vec<shoal_node::scheduler::JobConfig>,
}

/// The history store's URL given inline or in a file; not both.
fn history_url(inline: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            bail!("invalid setting: set one of history and history-file, not both")
        }
        (Some(url), None) => Ok(Some(url)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "invalid setting: cannot read history-file {}",
                    path.display()
                )
            })?;
            let url = text.trim();
            if url.is_empty() {
                bail!("invalid setting: history-file {} is empty", path.display());
            }
            Ok(Some(url.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// Layers flags (with their environment) over the file over defaults.
/// `docker_host_env` is `DOCKER_HOST`, below the file.
pub fn resolve(args: NodeArgs, docker_host_env: Option<String>) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let d = NodeConfig::default();
    let node_id = args
        .node_id
        .or(file.node_id)
        .unwrap_or_else(shoal_node::host_name);
    let node = NodeConfig {
        node_id: NodeId(node_id.clone()),
        listen: args.listen.or(file.listen).unwrap_or(d.listen),
        advertise: args.advertise.or(file.advertise).unwrap_or_default(),
        peers: args.peers.or(file.peers).unwrap_or_default(),
        peers_dns: args.peers_dns.or(file.peers_dns),
        gossip_listen: args.gossip_listen.or(file.gossip_listen),
        replicas: args.replicas.or(file.replicas).unwrap_or(d.replicas),
        vnodes: args.vnodes.or(file.vnodes).unwrap_or(d.vnodes),
        hot_ttl: args.hot_ttl.or(file.hot_ttl).unwrap_or(d.hot_ttl),
        hot_capacity: args
            .hot_capacity
            .or(file.hot_capacity)
            .unwrap_or(d.hot_capacity),
        watch_buffer: args
            .watch_buffer
            .or(file.watch_buffer)
            .map_or(d.watch_buffer, |n| n as usize),
        max_watchers: args
            .max_watchers
            .or(file.max_watchers)
            .map_or(d.max_watchers, |n| n as usize),
        peer_timeout: args
            .peer_timeout
            .or(file.peer_timeout)
            .unwrap_or(d.peer_timeout),
        resync_interval: args
            .resync_interval
            .or(file.resync_interval)
            .unwrap_or(d.resync_interval),
        dead_after: args.dead_after.or(file.dead_after).unwrap_or(d.dead_after),
        engine_lost_after: args
            .engine_lost_after
            .or(file.engine_lost_after)
            .unwrap_or(d.engine_lost_after),
        sync_interval: args
            .sync_interval
            .or(file.sync_interval)
            .unwrap_or(d.sync_interval),
        scatter_timeout: args
            .scatter_timeout
            .or(file.scatter_timeout)
            .unwrap_or(d.scatter_timeout),
        request_timeout: args
            .request_timeout
            .or(file.request_timeout)
            .unwrap_or(d.request_timeout),
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(d.max_body_bytes),
        max_batch: args.max_batch.or(file.max_batch).unwrap_or(d.max_batch),
        max_batch_listings: args
            .max_batch_listings
            .or(file.max_batch_listings)
            .unwrap_or(d.max_batch_listings),
        max_concurrent_requests: args
            .max_concurrent_requests
            .or(file.max_concurrent_requests)
            .unwrap_or(d.max_concurrent_requests),
        max_concurrent_peer_requests: args
            .max_concurrent_peer_requests
            .or(file.max_concurrent_peer_requests)
            .unwrap_or(d.max_concurrent_peer_requests),
        max_scatters: args
            .max_scatters
            .or(file.max_scatters)
            .unwrap_or(d.max_scatters),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(d.max_connections),
        peer_request_timeout: args
            .peer_request_timeout
            .or(file.peer_request_timeout)
            .unwrap_or(d.peer_request_timeout),
        header_read_timeout: args
            .header_read_timeout
            .or(file.header_read_timeout)
            .unwrap_or(d.header_read_timeout),
        body_read_timeout: args
            .body_read_timeout
            .or(file.body_read_timeout)
            .unwrap_or(d.body_read_timeout),
        api_token: secret(
            "api-token",
            args.api_token.or(file.api_token),
            args.api_token_file.or(file.api_token_file),
        )?,
        api_token_reads: args.api_token_reads || file.api_token_reads == Some(true),
        queue_size: args.queue_size.or(file.queue_size).unwrap_or(d.queue_size),
        worker_count: args
            .worker_count
            .or(file.worker_count)
            .unwrap_or(d.worker_count),
        job_retries: args
            .job_retries
            .or(file.job_retries)
            .unwrap_or(d.job_retries),
        cluster_secret: secret(
            "cluster-secret",
            args.cluster_secret.or(file.cluster_secret),
            args.cluster_secret_file.or(file.cluster_secret_file),
        )?,
        history: if args.no_history || file.no_history == Some(true) {
            None
        } else {
            let given = history_url(
                args.history.or(file.history),
                args.history_file.or(file.history_file),
            )?;
            Some(given.unwrap_or_else(|| {
                shoal_history::default_url(args.data_dir.or(file.data_dir).as_deref())
            }))
        },
        history_migrate: !(args.no_migrate || file.no_migrate == Some(true)),
        history_buffer: args
            .history_buffer
            .or(file.history_buffer)
            .map_or(d.history_buffer, |n| n as usize),
        history_retention: args
            .history_retention
            .or(file.history_retention)
            .unwrap_or(d.history_retention),
        scheduler_jobs: file.scheduler.map(|s| s.jobs),
        ..d
    };
    node.validate()
        .map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
    for peer in &node.peers {
        if peer
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            bail!("invalid setting: peer {peer:?} is not host:port");
        }
    }
    let docker_host = args
        .docker_host
        .or(file.docker_host)
        .or(docker_host_env.filter(|h| !h.is_empty()))
        .unwrap_or_else(|| shoal_engine::docker::DEFAULT_DOCKER_HOST.to_owned());
    let containerd_namespaces = args
        .containerd_namespaces
        .or(file.containerd_namespaces)
        .map(|given| {
            let given: Vec<String> = given
                .into_iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            if given.is_empty() {
                bail!("invalid setting: containerd-namespaces names no namespace");
            }
            Ok(given)
        })
        .transpose()?;
    let engines = args
        .engine
        .or(file.engine)
        .unwrap_or_else(|| vec![EngineKind::Docker]);
    if engines.is_empty() {
        bail!("invalid setting: engine names no engine (docker, containerd or synthetic)");
    }
    for (i, kind) in engines.iter().enumerate() {
        if engines[..i].contains(kind) {
            bail!(
                "invalid setting: engine {} is given twice; a node watches each engine once",
                kind.to_possible_value()
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default()
            );
        }
    }
    Ok(Resolved {
        engines,
        docker_host,
        containerd_address: args
            .containerd_address
            .or(file.containerd_address)
            .unwrap_or_else(|| shoal_engine::containerd::DEFAULT_CONTAINERD_ADDRESS.to_owned()),
        containerd_namespaces,
        synthetic_count: args.synthetic_count.or(file.synthetic_count).unwrap_or(100),
        synthetic_prefix: args
            .synthetic_prefix
            .or(file.synthetic_prefix)
            .unwrap_or_else(|| format!("{node_id}-")),
        log_level: args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into()),
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        node,
    })
}

/// Sets up logging to stderr.
pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("invalid setting: log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Builds the engines the settings ask for.
fn engines(resolved: &Resolved) -> anyhow::Result<Vec<Arc<dyn Engine>>> {
    resolved
        .engines
        .iter()
        .map(|kind| engine(resolved, *kind))
        .collect()
}

/// The containerd namespaces a node skips. Docker's own containerd keeps
/// Docker's containers in `moby`: a node that watches Docker too would
/// count them twice.
fn containerd_skip(resolved: &Resolved) -> Vec<String> {
    if resolved.engines.contains(&EngineKind::Docker) {
        vec![shoal_engine::containerd::DOCKER_NAMESPACE.to_owned()]
    } else {
        Vec::new()
    }
}

/// Builds one engine.
fn engine(resolved: &Resolved, kind: EngineKind) -> anyhow::Result<Arc<dyn Engine>> {
    Ok(match kind {
        EngineKind::Docker => {
            if let Some(msg) = DockerEngine::missing_socket(&resolved.docker_host) {
                bail!(msg);
            }
            Arc::new(DockerEngine::connect(&resolved.docker_host).map_err(|e| {
                anyhow::anyhow!("{e}: --docker-host takes unix:///path or tcp://host:port")
            })?)
        }
        EngineKind::Containerd => {
            let address = &resolved.containerd_address;
            if let Some(msg) = ContainerdEngine::missing_socket(address) {
                bail!(msg);
            }
            let skip = containerd_skip(resolved);
            if !skip.is_empty()
                && resolved
                    .containerd_namespaces
                    .as_ref()
                    .is_some_and(|n| n.iter().any(|n| skip.contains(n)))
            {
                warn!(
                    "containerd-namespaces names moby, but this node also watches Docker, \
                     whose containers moby holds: skipping moby"
                );
            }
            Arc::new(ContainerdEngine::connect(
                address,
                resolved.containerd_namespaces.clone(),
                skip,
            ))
        }
        EngineKind::Synthetic => Arc::new(SyntheticEngine::new(SyntheticSpec {
            count: resolved.synthetic_count,
            prefix: resolved.synthetic_prefix.clone(),
            engine_id: EngineId(format!("synthetic-{}", resolved.node.node_id)),
        })),
    })
}

/// Runs `shoal node` until SIGTERM or SIGINT.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let resolved = resolve(args, std::env::var("DOCKER_HOST").ok())?;
    init_logging(&resolved.log_level, resolved.log_format)?;
    if resolved.node.cluster_secret.is_none() {
        warn!(
            "no cluster secret: anyone who reaches this port can write to the peer API \
             (/_shoal/); give every node the same --cluster-secret-file"
        );
    }
    if resolved.node.api_token.is_none() {
        info!(
            "no API token: this node creates no jobs (a Create is answered 403); \
             give it --api-token-file to allow them"
        );
    }
    let engines = engines(&resolved)?;
    let listen = resolved.node.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another shoal node or program holds it; choose another with --listen)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {listen}: {e}{hint}")
    })?;
    info!(
        node = %resolved.node.node_id,
        engines = ?resolved.engines,
        "starting shoal {}",
        env!("CARGO_PKG_VERSION")
    );
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
    let result = shoal_node::run(resolved.node, engines, listener, shutdown.clone()).await;
    signals.abort();
    result.map_err(anyhow::Error::from)
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let f = file(
            "node-id: from-file\nlisten: 127.0.0.1:9000\nhot-ttl: 3s\nhot-capacity: 5000\nreplicas: 3\nengine-lost-after: 2m\nmax-scatters: 4\npeer-request-timeout: 45s\n",
        );
        let args = NodeArgs {
            config: Some(f.path().to_owned()),
            node_id: Some("from-flag".into()),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        assert_eq!(r.node.node_id.0, "from-flag");
        assert_eq!(r.node.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(r.node.hot_ttl, Duration::from_secs(3));
        assert_eq!(r.node.hot_capacity, 5000);
        assert_eq!(r.node.replicas, 3);
        assert_eq!(r.node.vnodes, 64);
        assert_eq!(r.node.engine_lost_after, Duration::from_secs(120));
        assert_eq!(r.node.max_scatters, 4);
        assert_eq!(r.node.peer_request_timeout, Duration::from_secs(45));
        assert_eq!(r.node.max_connections, 4096);
    }

    #[test]
    fn an_unknown_key_names_itself_and_the_file() {
        let f = file("node-id: a\nlisten_addr: 1.2.3.4:5\n");
        let args = NodeArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let msg = resolve(args, None).unwrap_err().to_string();
        assert!(msg.contains("listen_addr"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn docker_host_env_is_below_the_file() {
        let f = file("docker-host: unix:///from/file.sock\n");
        let args = NodeArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let r = resolve(args, Some("unix:///from/env.sock".into())).unwrap();
        assert_eq!(r.docker_host, "unix:///from/file.sock");
        let r = resolve(NodeArgs::default(), Some("tcp://127.0.0.1:2375".into())).unwrap();
        assert_eq!(r.docker_host, "tcp://127.0.0.1:2375");
        let r = resolve(NodeArgs::default(), None).unwrap();
        assert_eq!(r.docker_host, "unix:///var/run/docker.sock");
    }

    #[test]
    fn containerd_settings_come_from_flags_or_the_file() {
        let r = resolve(NodeArgs::default(), None).unwrap();
        assert_eq!(r.containerd_address, "/run/containerd/containerd.sock");
        assert_eq!(r.containerd_namespaces, None, "every namespace");
        let f = file(
            "engine: containerd\ncontainerd-address: /run/k3s/containerd.sock\n\
             containerd-namespaces: [k8s.io, default]\n",
        );
        let args = NodeArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        assert_eq!(r.engines, vec![EngineKind::Containerd]);
        assert!(containerd_skip(&r).is_empty(), "no Docker: moby is watched");
        assert_eq!(r.containerd_address, "/run/k3s/containerd.sock");
        assert_eq!(
            r.containerd_namespaces,
            Some(vec!["k8s.io".to_owned(), "default".to_owned()])
        );
        let args = NodeArgs {
            containerd_namespaces: Some(vec![" ".into(), String::new()]),
            ..Default::default()
        };
        let msg = resolve(args, None).unwrap_err().to_string();
        assert!(msg.contains("containerd-namespaces"), "{msg}");
    }

    #[test]
    fn several_engines_come_from_repeated_flags_commas_or_a_yaml_list() {
        let parse = |argv: &[&str]| {
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                node: NodeArgs,
            }
            let cli = <Cli as clap::Parser>::try_parse_from(
                std::iter::once("shoal").chain(argv.iter().copied()),
            )
            .unwrap();
            resolve(cli.node, None)
        };
        let both = vec![EngineKind::Docker, EngineKind::Containerd];
        let r = parse(&["--engine", "docker", "--engine", "containerd"]).unwrap();
        assert_eq!(r.engines, both);
        assert_eq!(containerd_skip(&r), vec!["moby".to_owned()]);
        assert_eq!(
            parse(&["--engine", "docker,containerd"]).unwrap().engines,
            both
        );
        let msg = parse(&["--engine", "docker", "--engine", "docker"])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("engine docker is given twice"), "{msg}");

        let yaml = |text: &str| {
            let f = file(text);
            resolve(
                NodeArgs {
                    config: Some(f.path().to_owned()),
                    ..Default::default()
                },
                None,
            )
        };
        assert_eq!(
            yaml("engine: [docker, containerd]\n").unwrap().engines,
            both
        );
        assert_eq!(
            yaml("engine: containerd\n").unwrap().engines,
            vec![EngineKind::Containerd]
        );
        let msg = yaml("engine: [docker, dockr]\n").unwrap_err().to_string();
        assert!(msg.contains("unknown engine \"dockr\""), "{msg}");
        let msg = yaml("engine: 3\n").unwrap_err().to_string();
        assert!(msg.contains("an engine name or a list of them"), "{msg}");
        let msg = yaml("engine: []\n").unwrap_err().to_string();
        assert!(msg.contains("names no engine"), "{msg}");
    }

    #[test]
    fn a_missing_containerd_socket_is_a_clear_error() {
        let args = NodeArgs {
            engine: Some(vec![EngineKind::Containerd]),
            containerd_address: Some("/nonexistent/containerd.sock".into()),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        let msg = engines(&r).err().unwrap().to_string();
        assert!(msg.contains("/nonexistent/containerd.sock"), "{msg}");
        assert!(msg.contains("--containerd-address"), "{msg}");
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let args = NodeArgs {
            replicas: Some(0),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("replicas")
        );
        let args = NodeArgs {
            peers: Some(vec!["nohost".into()]),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("nohost")
        );
        let args = NodeArgs {
            max_scatters: Some(0),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("max-scatters")
        );
        let args = NodeArgs {
            header_read_timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("header-read-timeout")
        );
        let args = NodeArgs {
            engine_lost_after: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("engine-lost-after")
        );
        let args = NodeArgs {
            node_id: Some("bad id".into()),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("node-id")
        );
    }

    #[test]
    fn the_cluster_secret_comes_from_its_file_trimmed() {
        let secret = file("0123456789abcdef0123\n");
        let f = file(&format!(
            "cluster-secret-file: {}\n",
            secret.path().display()
        ));
        let args = NodeArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        assert_eq!(
            r.node.cluster_secret.as_deref(),
            Some("0123456789abcdef0123")
        );
        let args = NodeArgs {
            cluster_secret_file: Some(secret.path().to_owned()),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        assert_eq!(
            r.node.cluster_secret.as_deref(),
            Some("0123456789abcdef0123")
        );
        assert_eq!(
            resolve(NodeArgs::default(), None)
                .unwrap()
                .node
                .cluster_secret,
            None
        );
    }

    #[test]
    fn a_cluster_secret_file_that_is_missing_empty_short_or_doubled_is_refused() {
        let missing = NodeArgs {
            cluster_secret_file: Some("/nonexistent/shoal-secret".into()),
            ..Default::default()
        };
        let msg = resolve(missing, None).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/shoal-secret"), "{msg}");
        let empty = file(" \n");
        let args = NodeArgs {
            cluster_secret_file: Some(empty.path().to_owned()),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let short = file("short\n");
        let args = NodeArgs {
            cluster_secret_file: Some(short.path().to_owned()),
            ..Default::default()
        };
        assert!(resolve(args, None).unwrap_err().to_string().contains("16"));
        let args = NodeArgs {
            cluster_secret: Some("0123456789abcdef0123".into()),
            cluster_secret_file: Some(short.path().to_owned()),
            ..Default::default()
        };
        assert!(
            resolve(args, None)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
    }

    #[test]
    fn the_sample_config_in_the_repo_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/shoal.example.yaml");
        FileConfig::load(&path).unwrap();
        let args = NodeArgs {
            config: Some(path),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        let jobs = r.node.jobs().unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(
            jobs[1].task,
            shoal_node::scheduler::Task::Retention {
                keep: Duration::from_secs(7 * 86_400)
            }
        );
    }

    #[test]
    fn history_settings_resolve_and_bad_ones_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let args = NodeArgs {
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let r = resolve(args, None).unwrap();
        assert_eq!(
            r.node.history.as_deref(),
            Some(format!("sqlite://{}/history.db", dir.path().display()).as_str())
        );
        assert!(r.node.history_migrate);
        let none = NodeArgs {
            no_history: true,
            ..Default::default()
        };
        let none = resolve(none, None).unwrap().node;
        assert_eq!(none.history, None);
        let jobs: Vec<String> = none.jobs().unwrap().into_iter().map(|j| j.name).collect();
        assert_eq!(
            jobs,
            ["inventory.reconcile"],
            "no history tasks without history"
        );
        let f = file(
            "no-history: true\nscheduler:\n  jobs:\n    - {name: history.snapshot, spec: \"@every 1h\"}\n",
        );
        let args = NodeArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let e = format!("{:#}", resolve(args, None).unwrap_err());
        assert!(e.contains("needs the history"), "{e}");
        let url = file("postgres://shoal:secret@db/shoal\n");
        let from_file = NodeArgs {
            history_file: Some(url.path().to_owned()),
            ..Default::default()
        };
        assert_eq!(
            resolve(from_file, None).unwrap().node.history.as_deref(),
            Some("postgres://shoal:secret@db/shoal")
        );
        for (yaml, says) in [
            (
                "history: mysql://db/x\n",
                "give sqlite://PATH or postgres://",
            ),
            (
                "history-retention: 10s\n",
                "history-retention must be at least 1m",
            ),
            (
                "scheduler:\n  jobs:\n    - {name: history.snapshot, spec: \"@every soon\"}\n",
                "not a duration",
            ),
            (
                "scheduler:\n  jobs:\n    - {name: history.vacuum, spec: \"@every 1h\"}\n",
                "no such task",
            ),
            (
                "scheduler:\n  jobs:\n    - {name: history.snapshot, spec: \"@every 1h\"}\n    - {name: history.snapshot, spec: \"@every 2h\"}\n",
                "given twice",
            ),
            (
                "scheduler:\n  jobs:\n    - {name: history.snapshot, spec: \"@every 1h\", colour: red}\n",
                "colour",
            ),
        ] {
            let f = file(yaml);
            let args = NodeArgs {
                config: Some(f.path().to_owned()),
                ..Default::default()
            };
            let e = format!("{:#}", resolve(args, None).unwrap_err());
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }
}
