//! One shoal node: it watches its engines and answers the public API from
//! memory.
//!
//! [`run`] is the whole node: it starts [`shoal_engine::Engines`] (a
//! watcher per engine, merged into one inventory), serves
//! [`app`] on a bound listener and, when the shutdown token is cancelled,
//! tells the fleet it is leaving (gossip, for two gossip intervals, still
//! serving), then stops taking connections, lets requests in flight finish
//! (up to `shutdown_grace`) and waits for the watchers to stop.
//! [`NodeService`] holds what every request needs and answers lookups,
//! listings, projects and members the same way for REST ([`api`]) and
//! JSON-RPC ([`jrpc`]).
//! [`NodeConfig`] is the plain configuration the `shoal` command fills.

pub mod answers;
pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod directory;
pub mod encoded;
pub mod error;
pub mod gossip;
pub mod guard;
pub mod history;
pub mod jobs;
pub mod jrpc;
pub mod lookup;
pub mod membership;
pub mod metrics;
pub mod page;
pub mod peer;
pub mod publisher;
pub mod scheduler;
pub mod service;
pub mod ui;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use membership::{Membership, MembershipConfig};
use shoal_engine::{Engine, Engines, EnginesConfig, WatcherConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use answers::{LookupAnswer, LookupPath};
pub use api::app;
pub use config::NodeConfig;
pub use error::ApiError;
pub use service::NodeService;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Serving failed.
    #[error("serving HTTP failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs a node on `listener` until `shutdown` is cancelled: peers over
/// HTTP, gossip over UDP, both signed if the config has a cluster secret.
pub async fn run(
    config: NodeConfig,
    engines: Vec<Arc<dyn Engine>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let secret = config.cluster_secret.clone();
    run_with(
        config,
        engines,
        listener,
        Arc::new(peer::HttpPeers::with_secret(secret)),
        Arc::new(gossip::UdpNet),
        shutdown,
    )
    .await
}

/// The address peers reach this node's API at: `--advertise`, else the
/// listen address, with the host name for an unspecified IP.
fn api_address(config: &NodeConfig, bound: SocketAddr) -> String {
    if !config.advertise.is_empty() {
        return config.advertise.clone();
    }
    if bound.ip().is_unspecified() {
        return format!("{}:{}", host_name(), bound.port());
    }
    bound.to_string()
}

/// This host's name (the default node ID and advertised host).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Resolves `host:port` to the address gossip peers send to.
async fn resolve(addr: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .ok()?
        .find(|a| a.is_ipv4())
        .or(None)
}

/// Runs a node with the given peer transport and gossip network (tests
/// use these to run a fleet in one process and cut links). Gossip is
/// sealed with the config's cluster secret, if any, on any network.
pub async fn run_with(
    mut config: NodeConfig,
    engines: Vec<Arc<dyn Engine>>,
    listener: TcpListener,
    peers: Arc<dyn peer::PeerTransport>,
    gossip: Arc<dyn gossip::GossipNet>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    config.validate().map_err(NodeError::Config)?;
    if engines.is_empty() {
        return Err(NodeError::Config("a node needs at least one engine".into()));
    }
    let bound = listener.local_addr()?;
    config.listen = bound;
    config.advertise = api_address(&config, bound);
    let incarnation = clock::now_ms();
    let tasks_stop = shutdown.child_token();
    // The history writer stops last, after the watchers, so that it
    // writes what they saw up to the end.
    let history_stop = CancellationToken::new();
    let (history, history_task) = match &config.history {
        Some(url) => {
            let (history, rx) = history::History::new(url, config.history_buffer);
            let task = tokio::spawn(history::run_writer(
                history.clone(),
                rx,
                config.node_id.clone(),
                config.history_migrate,
                std::time::Duration::from_secs(5),
                history_stop.clone(),
            ));
            (Some(history), Some(task))
        }
        None => (None, None),
    };
    let (engines, engines_task) = Engines::spawn(
        engines,
        EnginesConfig {
            watcher: WatcherConfig {
                node: config.node_id.clone(),
                // With inventory.reconcile on the scheduler, the watchers
                // resync only when it asks.
                resync_interval: if config
                    .jobs()
                    .map_err(NodeError::Config)?
                    .iter()
                    .any(|j| j.task == scheduler::Task::Reconcile)
                {
                    std::time::Duration::ZERO
                } else {
                    config.resync_interval
                },
                history: history.as_ref().map(|h| h.sink()),
                ..WatcherConfig::default()
            },
            withdraw_after: config.engine_lost_after,
        },
        tasks_stop.clone(),
    );

    let gossip_listen = config.gossip_listen.unwrap_or(bound);
    let gossip_advertise = match resolve(&config.advertise).await {
        Some(a) => SocketAddr::new(a.ip(), gossip_listen.port()),
        None => SocketAddr::new(
            if gossip_listen.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                gossip_listen.ip()
            },
            gossip_listen.port(),
        ),
    };
    let gossip = gossip::GossipTransport::new(gossip, config.cluster_secret.as_deref());
    let mut seeds = config.peers.clone();
    seeds.extend(config.peers_dns.clone());
    let membership = Membership::start(
        MembershipConfig {
            node: config.node_id.clone(),
            incarnation,
            api: config.advertise.clone(),
            gossip_listen,
            gossip_advertise,
            seeds,
            dead_after: config.dead_after,
            vnodes: config.vnodes,
            replicas: config.replicas,
            join_timeout: config.dead_after,
        },
        Vec::new(),
        &gossip,
        tasks_stop.clone(),
    )
    .await
    .map_err(|e| NodeError::Config(e.to_string()))?;

    let grace = config.shutdown_grace;
    let service = Arc::new(
        NodeService::with_cluster(
            config,
            engines,
            membership.shared_view(),
            peers,
            incarnation,
        )
        .counting_gossip_refusals(gossip.refusals())
        .with_history(history),
    );
    let mut tasks = service.spawn_tasks(membership.ring_changes(), &tasks_stop);
    tasks.extend(service.spawn_scheduler(&tasks_stop));
    tasks.extend(service.spawn_jobs(&tasks_stop));
    let membership = Arc::new(membership);
    tasks.push(tokio::spawn(gossip_self(
        service.clone(),
        membership.clone(),
        tasks_stop.clone(),
    )));
    info!(node = %service.node_id(), addr = %bound, api = %service.config().advertise, gossip = %gossip_advertise, "listening");

    let stop_serving = CancellationToken::new();
    let server = guard::serve(
        listener,
        app(service.clone()),
        service.config(),
        stop_serving.clone().cancelled_owned(),
    );
    let mut server = std::pin::pin!(server);
    let served = tokio::select! {
        r = &mut server => r,
        _ = shutdown.cancelled() => {
            // Tell the fleet first, still serving: peers drop this node's
            // records at once instead of after the failure detector, and
            // those that have not heard yet still get answers here.
            let failed = tokio::select! {
                r = &mut server => Some(r),
                _ = membership.leave() => None,
            };
            stop_serving.cancel();
            match failed {
                Some(r) => r,
                // Give requests in flight a bound.
                None => match tokio::time::timeout(grace, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!(?grace, "requests still in flight after the grace period; closing");
                        Ok(())
                    }
                },
            }
        }
    };
    tasks_stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    if let Err(e) = engines_task.await {
        warn!(error = %e, "engines task failed");
    }
    history_stop.cancel();
    if let Some(task) = history_task {
        let _ = task.await;
    }
    if let Ok(membership) = Arc::try_unwrap(membership) {
        membership.shutdown().await;
    }
    info!(node = %service.node_id(), "stopped");
    served.map_err(NodeError::Serve)
}

/// Gossips this node's engine, container count and last event age.
async fn gossip_self(
    service: Arc<NodeService>,
    membership: Arc<Membership>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => membership.set(service.gossip_values()).await,
        }
    }
}
