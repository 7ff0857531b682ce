//! What keeps a node up under abuse: admission of requests (a concurrency
//! limit and a timeout per class of routes, shedding with 503 and
//! `Retry-After` beyond the limit instead of queueing), and the accept loop
//! that bounds connections and closes those that are slow to send their
//! headers (slow-loris). Public and peer routes are separate classes, so a
//! flood of public requests cannot starve the fleet's own traffic, and a
//! peer snapshot is bounded by the peer timeout, not the public one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_http::timeout::TimeoutBody;
use tracing::{debug, warn};

use crate::config::NodeConfig;
use crate::error::ApiError;

/// One class of routes: how many of its requests run at once, and how
/// long each may take.
#[derive(Clone)]
pub struct Gate {
    /// Which class, for messages: `public` or `peer`.
    class: &'static str,
    permits: Arc<Semaphore>,
    limit: usize,
    timeout: Duration,
    /// How long the body may take to arrive, when tighter than `timeout`.
    body_timeout: Option<Duration>,
}

impl Gate {
    /// The gate of the public routes.
    pub fn public(config: &NodeConfig) -> Self {
        Gate {
            body_timeout: Some(config.body_read_timeout),
            ..Self::new(
                "public",
                config.max_concurrent_requests,
                config.request_timeout,
            )
        }
    }

    /// The gate of the peer routes.
    pub fn peer(config: &NodeConfig) -> Self {
        Self::new(
            "peer",
            config.max_concurrent_peer_requests,
            config.peer_request_timeout,
        )
    }

    fn new(class: &'static str, limit: usize, timeout: Duration) -> Self {
        Gate {
            class,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            timeout,
            body_timeout: None,
        }
    }
}

/// Admits a request if its class has room, else sheds it at once (503,
/// `Retry-After`); an admitted request is answered 503 `timeout` when it
/// takes longer than its class allows, and a body that does not arrive
/// within the body timeout fails to read (400).
pub async fn admit(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let Ok(_permit) = gate.permits.try_acquire() else {
        return ApiError::Overloaded(format!(
            "this node is handling its limit of {} {} requests; retry shortly",
            gate.limit, gate.class
        ))
        .into_response();
    };
    if let Some(limit) = gate.body_timeout {
        request = request.map(|body| Body::new(TimeoutBody::new(limit, body)));
    }
    match tokio::time::timeout(gate.timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(format!("the request took longer than {:?}", gate.timeout))
            .into_response(),
    }
}

/// Serves `app` on `listener` until `stop` resolves, then stops accepting
/// and resolves once every open connection has finished its request in
/// flight (the caller bounds that wait). At most `max_connections` are
/// open at once: one more is closed as soon as it is accepted. A
/// connection must send each request's headers within
/// `header_read_timeout` (an idle keep-alive connection is closed after
/// it as well).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &NodeConfig,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = config.max_connections, "connection limit reached; closing");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Connections finish the request they are serving and close; idle
    // ones close at once.
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// As axum's own loop does: errors of one connection are skipped; others
/// (out of file descriptors) pause accepting a moment rather than spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "accepting a connection failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
