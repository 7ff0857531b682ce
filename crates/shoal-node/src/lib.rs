//! One shoal node: it watches its engine and answers the public API from
//! memory.
//!
//! [`run`] is the whole node: it starts the [`shoal_engine::Watcher`], serves
//! [`app`] on a bound listener and, when the shutdown token is cancelled,
//! stops taking connections, lets requests in flight finish (up to
//! `shutdown_grace`) and waits for the watcher to stop. [`NodeService`] holds
//! what every request needs and answers lookups, listings, projects and
//! members the same way for REST ([`api`]) and JSON-RPC ([`jrpc`]).
//! [`NodeConfig`] is the plain configuration the `shoal` command fills.

pub mod api;
pub mod config;
pub mod error;
pub mod jrpc;
pub mod metrics;
pub mod service;

use std::sync::Arc;

use shoal_engine::{Engine, Watcher, WatcherConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use api::app;
pub use config::NodeConfig;
pub use error::ApiError;
pub use service::{LookupAnswer, LookupPath, NodeService};

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

/// Runs a node on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: NodeConfig,
    engine: Arc<dyn Engine>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    config.validate().map_err(NodeError::Config)?;
    let watcher_stop = shutdown.child_token();
    let (watcher, watcher_task) = Watcher::spawn(
        engine,
        WatcherConfig {
            node: config.node_id.clone(),
            resync_interval: config.resync_interval,
            ..WatcherConfig::default()
        },
        watcher_stop.clone(),
    );
    let grace = config.shutdown_grace;
    let service = Arc::new(NodeService::new(config, watcher));
    let addr = listener.local_addr()?;
    info!(node = %service.node_id(), %addr, "listening");

    let server = axum::serve(listener, app(service.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    let served = tokio::select! {
        r = &mut server => r,
        _ = shutdown.cancelled() => {
            // Graceful shutdown has begun; give requests in flight a bound.
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(?grace, "requests still in flight after the grace period; closing");
                    Ok(())
                }
            }
        }
    };
    watcher_stop.cancel();
    if let Err(e) = watcher_task.await {
        warn!(error = %e, "watcher task failed");
    }
    info!(node = %service.node_id(), "stopped");
    served.map_err(NodeError::Serve)
}
