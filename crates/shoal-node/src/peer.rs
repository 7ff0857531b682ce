//! Talking to peers: the `PeerTransport` trait and its HTTP implementation
//! on hyper's client with pooled keep-alive connections; [`PeerClient`], the typed
//! peer API under `/_shoal/v1/` (bincode bodies, see [`shoal_core::wire`])
//! with its routes defined once in [`routes`]; and [`FaultyPeers`], the one
//! fault-injecting transport the tests and shoal-sim share.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::http::{Method, Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_core::validate::Validate;
use shoal_core::wire::{
    self, ChangesReply, ChangesRequest, DigestReply, DigestRequest, Invalidate, LocalQuery,
    LocalReply, LookupReply, Publish, PublishAck, ResyncRequest,
};
use shoal_core::{LookupKey, NodeId};

/// The header a forwarded request carries; a node never forwards a request
/// that has it, so differing ring views cannot loop.
pub const HOP_HEADER: &str = "x-shoal-hop";

/// Why a peer call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No answer in time.
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout {
        /// The peer.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// Connection refused, reset, unreachable.
    #[error("{addr}: {message}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// What happened.
        message: String,
    },
    /// The peer answered with an error status.
    #[error("{addr}: HTTP {status}: {message}")]
    Status {
        /// The peer.
        addr: String,
        /// The status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The answer could not be read.
    #[error("{addr}: {message}")]
    Malformed {
        /// The peer.
        addr: String,
        /// What was wrong.
        message: String,
    },
}

/// One peer API call: POST (or GET without a body) of bincode bytes to
/// node `to` at `http://{addr}{path}`, answered with bincode bytes.
#[async_trait]
pub trait PeerTransport: Send + Sync + 'static {
    /// Makes the call, bounded by `timeout`.
    async fn call(
        &self,
        to: &NodeId,
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError>;
}

/// The real transport: HTTP/1.1 with a keep-alive pool per peer, on
/// hyper's client directly (reqwest's URL parsing, proxy and redirect
/// layers were a tenth of a forward's user-space time and bought nothing
/// on this path). With a cluster secret it signs each request for its
/// destination node and takes no successful answer that is not signed
/// for that request (see [`crate::auth`]).
pub struct HttpPeers {
    client: Client<HttpConnector, Full<Bytes>>,
    secret: Option<String>,
}

/// The `User-Agent` of peer requests.
const USER_AGENT: &str = concat!("shoal-peer/", env!("CARGO_PKG_VERSION"));

impl HttpPeers {
    /// A transport that signs every request with `secret`, if any.
    pub fn with_secret(secret: Option<String>) -> Self {
        HttpPeers {
            secret,
            ..Self::new()
        }
    }

    /// A transport with a connection pool per peer.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Below the peers' header read timeout (10 s by default), which
            // closes idle connections: one closed as a call goes out would
            // fail that call.
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpPeers {
            client,
            secret: None,
        }
    }
}

impl Default for HttpPeers {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl PeerTransport for HttpPeers {
    async fn call(
        &self,
        to: &NodeId,
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let unreachable = |message: String| PeerError::Unreachable {
            addr: addr.to_owned(),
            message,
        };
        let uri: Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| unreachable(format!("not a peer address: {e}")))?;
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let signed = self.secret.as_ref().map(|secret| {
            crate::auth::RequestAuth::sign(
                secret.as_bytes(),
                method.as_str(),
                path,
                to,
                body.as_deref().unwrap_or_default(),
                crate::clock::now_ms() / 1000,
            )
        });
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::USER_AGENT, USER_AGENT)
            .header(HOP_HEADER, "1");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, wire::CONTENT_TYPE);
        }
        for (name, value) in signed.iter().flat_map(|s| s.headers()) {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(format!("building the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(describe_client_error(&e)))?;
            let status = response.status();
            let mac = response
                .headers()
                .get(crate::auth::AUTH_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = read_bounded(addr, response, MAX_ANSWER_BYTES).await?;
            Ok::<_, PeerError>((status, mac, bytes))
        };
        let (status, mac, bytes) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| PeerError::Timeout {
                    addr: addr.to_owned(),
                    timeout,
                })??;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.to_owned(),
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        if let (Some(secret), Some(signed)) = (&self.secret, &signed) {
            crate::auth::verify_response(
                secret.as_bytes(),
                &signed.nonce,
                status.as_u16(),
                &bytes,
                mac.as_deref(),
            )
            .map_err(|why| PeerError::Malformed {
                addr: addr.to_owned(),
                message: format!("refused the answer of node {to}: {why}"),
            })?;
        }
        Ok(bytes)
    }
}

/// A client error with its causes: hyper's own text alone is often just
/// "client error (Connect)".
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The largest peer answer read: a scatter's share or an owner's matches
/// is far smaller; a peer that sends more is cut off, not buffered.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Reads an answer's body, refusing it once it passes `limit` bytes.
async fn read_bounded(
    addr: &str,
    response: hyper::Response<Incoming>,
    limit: usize,
) -> Result<Vec<u8>, PeerError> {
    let too_large = || PeerError::Malformed {
        addr: addr.to_owned(),
        message: format!("the answer is over {limit} bytes"),
    };
    if response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(too_large());
    }
    match Limited::new(response.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(PeerError::Unreachable {
            addr: addr.to_owned(),
            message: format!("reading the answer: {e}"),
        }),
    }
}

/// The peer API's routes, defined once for the router and the client.
pub mod routes {
    /// `GET`: health and view digest.
    pub const PING: &str = "/_shoal/v1/ping";
    /// `GET {LOOKUP}/{kind}/{value}`: an owner's directory matches.
    pub const LOOKUP: &str = "/_shoal/v1/lookup";
    /// The router's pattern of [`LOOKUP`].
    pub const LOOKUP_ROUTE: &str = "/_shoal/v1/lookup/{kind}/{value}";
    /// `POST`: a publish to an owner.
    pub const PUBLISH: &str = "/_shoal/v1/publish";
    /// `POST`: a digest of what an owner should hold.
    pub const DIGEST: &str = "/_shoal/v1/digest";
    /// `POST`: a node's own matches, for scatter-gather.
    pub const LOCAL: &str = "/_shoal/v1/local";
    /// `POST`: an owner asks a source for a digest round.
    pub const RESYNC: &str = "/_shoal/v1/resync";
    /// `POST`: an owner tells a node to drop hot cache entries.
    pub const INVALIDATE: &str = "/_shoal/v1/invalidate";
    /// `POST`: a node's numbered changes, for the fleet watch (a long
    /// poll).
    pub const CHANGES: &str = "/_shoal/v1/changes";
    /// `POST`: a node's own history store, for a fleet history query.
    pub const HISTORY: &str = "/_shoal/v1/history";
    /// `POST`: the job protocol ([`shoal_core::jobs::JobRequest`]).
    pub const JOBS: &str = "/_shoal/v1/jobs";
}

/// The kind of a peer call, for fault injection and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    /// [`routes::PING`].
    Ping,
    /// [`routes::LOOKUP`].
    Lookup,
    /// [`routes::PUBLISH`].
    Publish,
    /// [`routes::DIGEST`].
    Digest,
    /// [`routes::LOCAL`].
    Local,
    /// [`routes::RESYNC`].
    Resync,
    /// [`routes::INVALIDATE`].
    Invalidate,
    /// [`routes::CHANGES`].
    Changes,
    /// [`routes::HISTORY`].
    History,
    /// [`routes::JOBS`].
    Jobs,
}

impl CallKind {
    /// The kind of a call to `path`; `None` for a path that is no peer
    /// route.
    pub fn of(path: &str) -> Option<CallKind> {
        Some(match path {
            routes::PING => CallKind::Ping,
            routes::PUBLISH => CallKind::Publish,
            routes::DIGEST => CallKind::Digest,
            routes::LOCAL => CallKind::Local,
            routes::RESYNC => CallKind::Resync,
            routes::INVALIDATE => CallKind::Invalidate,
            routes::CHANGES => CallKind::Changes,
            routes::HISTORY => CallKind::History,
            routes::JOBS => CallKind::Jobs,
            p if p.starts_with(routes::LOOKUP) => CallKind::Lookup,
            _ => return None,
        })
    }
}

/// The typed peer API over a transport: one method per call.
#[derive(Clone)]
pub struct PeerClient {
    transport: Arc<dyn PeerTransport>,
}

impl PeerClient {
    /// A client over `transport`.
    pub fn new(transport: Arc<dyn PeerTransport>) -> Self {
        PeerClient { transport }
    }

    async fn typed<Q: Serialize, A: DeserializeOwned + Validate>(
        &self,
        (to, addr): (&NodeId, &str),
        path: &str,
        body: Option<&Q>,
        timeout: Duration,
    ) -> Result<A, PeerError> {
        let bytes = self
            .transport
            .call(to, addr, path, body.map(wire::encode), timeout)
            .await?;
        decode(addr, &bytes)
    }

    /// Sends a publish to an owner; answers its ack and the bytes sent.
    pub async fn publish(
        &self,
        to: &NodeId,
        addr: &str,
        p: &Publish,
        timeout: Duration,
    ) -> Result<(PublishAck, usize), PeerError> {
        let body = wire::encode(p);
        let sent = body.len();
        let answer = self
            .transport
            .call(to, addr, routes::PUBLISH, Some(body), timeout)
            .await?;
        Ok((decode(addr, &answer)?, sent))
    }

    /// Asks an owner whether it holds what the digest says.
    pub async fn digest(
        &self,
        to: &NodeId,
        addr: &str,
        d: &DigestRequest,
        timeout: Duration,
    ) -> Result<DigestReply, PeerError> {
        self.typed((to, addr), routes::DIGEST, Some(d), timeout)
            .await
    }

    /// Asks an owner for its directory's matches of a key, on behalf of
    /// `from` (the owner tells it when the answer changes).
    pub async fn lookup(
        &self,
        to: &NodeId,
        addr: &str,
        key: &LookupKey,
        from: Option<&NodeId>,
        timeout: Duration,
    ) -> Result<LookupReply, PeerError> {
        let path = match from {
            Some(from) => format!("{}?from={}", lookup_path(key), from.0),
            None => lookup_path(key),
        };
        self.typed::<(), _>((to, addr), &path, None, timeout).await
    }

    /// Tells a node that fetched these keys that their answers changed.
    pub async fn invalidate(
        &self,
        to: &NodeId,
        addr: &str,
        i: &Invalidate,
        timeout: Duration,
    ) -> Result<u64, PeerError> {
        self.typed((to, addr), routes::INVALIDATE, Some(i), timeout)
            .await
    }

    /// Asks a node for its own containers that match.
    pub async fn local(
        &self,
        to: &NodeId,
        addr: &str,
        q: &LocalQuery,
        timeout: Duration,
    ) -> Result<LocalReply, PeerError> {
        self.typed((to, addr), routes::LOCAL, Some(q), timeout)
            .await
    }

    /// A node's changes after a position, waiting for one up to the
    /// request's `wait_ms` (the fleet watch's long poll).
    pub async fn changes(
        &self,
        to: &NodeId,
        addr: &str,
        r: &ChangesRequest,
        timeout: Duration,
    ) -> Result<ChangesReply, PeerError> {
        self.typed((to, addr), routes::CHANGES, Some(r), timeout)
            .await
    }

    /// Asks a node's own history store.
    pub async fn history(
        &self,
        to: &NodeId,
        addr: &str,
        r: &shoal_core::wire::HistoryRequest,
        timeout: Duration,
    ) -> Result<shoal_core::wire::HistoryReply, PeerError> {
        self.typed((to, addr), routes::HISTORY, Some(r), timeout)
            .await
    }

    /// One call of the job protocol.
    pub async fn jobs(
        &self,
        to: &NodeId,
        addr: &str,
        r: &shoal_core::jobs::JobRequest,
        timeout: Duration,
    ) -> Result<shoal_core::jobs::JobReply, PeerError> {
        self.typed((to, addr), routes::JOBS, Some(r), timeout).await
    }

    /// Asks a source for a digest round (an owner not complete for it).
    /// The answer is whether the source took the request.
    pub async fn resync(
        &self,
        to: &NodeId,
        addr: &str,
        r: &ResyncRequest,
        timeout: Duration,
    ) -> Result<bool, PeerError> {
        self.typed((to, addr), routes::RESYNC, Some(r), timeout)
            .await
    }
}

fn decode<A: DeserializeOwned + Validate>(addr: &str, bytes: &[u8]) -> Result<A, PeerError> {
    wire::decode(bytes, crate::clock::now_ms()).map_err(|e| PeerError::Malformed {
        addr: addr.to_owned(),
        message: e.to_string(),
    })
}

/// The path of a peer lookup: the key's kind and value. Keys are
/// validated text (letters, digits, `_.-:`, and `/` inside a Kubernetes
/// name), so `/` is the one character to escape: the route takes the
/// value as one segment.
pub fn lookup_path(key: &LookupKey) -> String {
    format!("{}/{}/", routes::LOOKUP, key.kind().as_str())
        + &match key {
            LookupKey::Id(s) | LookupKey::Project(s) => s.clone(),
            LookupKey::Name(s) => s.replace('/', "%2F"),
            LookupKey::Ip(ip) => ip.to_string(),
        }
}

/// What [`FaultyPeers`] does to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails at once, as a refused connection does.
    Cut,
    /// Waits this long first (a slow link or a paused peer); the call's
    /// own timeout still applies.
    Delay(Duration),
    /// Answers this HTTP status without reaching the peer.
    Fail(u16),
}

/// A fault-injecting transport for tests and simulations: cut, delay or
/// fail calls per destination address and per call kind (`None` for
/// every kind). Calls without a matching fault go to the inner transport.
pub struct FaultyPeers {
    inner: Arc<dyn PeerTransport>,
    faults: std::sync::Mutex<std::collections::BTreeMap<(String, Option<CallKind>), Fault>>,
}

impl FaultyPeers {
    /// No faults yet.
    pub fn new(inner: Arc<dyn PeerTransport>) -> Self {
        FaultyPeers {
            inner,
            faults: std::sync::Mutex::default(),
        }
    }

    /// Sets the fault of calls to `addr` of `kind` (every kind if `None`).
    pub fn set(&self, addr: &str, kind: Option<CallKind>, fault: Fault) {
        self.lock().insert((addr.to_owned(), kind), fault);
    }

    /// Removes every fault of `addr`.
    pub fn heal(&self, addr: &str) {
        self.lock().retain(|(a, _), _| a != addr);
    }

    /// Removes every fault.
    pub fn heal_all(&self) {
        self.lock().clear();
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<(String, Option<CallKind>), Fault>>
    {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fault(&self, addr: &str, kind: Option<CallKind>) -> Option<Fault> {
        let faults = self.lock();
        kind.and_then(|k| faults.get(&(addr.to_owned(), Some(k))))
            .or_else(|| faults.get(&(addr.to_owned(), None)))
            .copied()
    }
}

#[async_trait]
impl PeerTransport for FaultyPeers {
    async fn call(
        &self,
        to: &NodeId,
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        match self.fault(addr, CallKind::of(path)) {
            Some(Fault::Cut) => Err(PeerError::Unreachable {
                addr: addr.to_owned(),
                message: "link cut by a fault".into(),
            }),
            Some(Fault::Fail(status)) => Err(PeerError::Status {
                addr: addr.to_owned(),
                status,
                message: "failed by a fault".into(),
            }),
            Some(Fault::Delay(d)) => {
                if d >= timeout {
                    tokio::time::sleep(timeout).await;
                    return Err(PeerError::Timeout {
                        addr: addr.to_owned(),
                        timeout,
                    });
                }
                tokio::time::sleep(d).await;
                self.inner.call(to, addr, path, body, timeout - d).await
            }
            None => self.inner.call(to, addr, path, body, timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_call_kind() {
        let key = LookupKey::Name("web".into());
        assert_eq!(CallKind::of(&lookup_path(&key)), Some(CallKind::Lookup));
        assert_eq!(CallKind::of(routes::PUBLISH), Some(CallKind::Publish));
        assert_eq!(CallKind::of(routes::RESYNC), Some(CallKind::Resync));
        assert_eq!(CallKind::of("/v1/containers/web"), None);
    }

    /// A peer that answers 200 to anything, signing with `secret` if any:
    /// a process without the fleet's secret.
    async fn impostor(secret: Option<&'static str>) -> String {
        use axum::http::HeaderMap;
        let app = axum::Router::new().fallback(move |headers: HeaderMap| async move {
            let nonce = headers
                .get(crate::auth::NONCE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut response = axum::response::Response::new(axum::body::Body::from("ok"));
            if let Some(secret) = secret {
                let mac = crate::auth::sign_response(secret.as_bytes(), &nonce, 200, b"ok");
                response
                    .headers_mut()
                    .insert(crate::auth::AUTH_HEADER, mac.parse().unwrap());
            }
            response
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn with_a_secret_an_answer_not_signed_with_it_is_refused() {
        let fleet = "the-fleet-secret-A";
        let client = HttpPeers::with_secret(Some(fleet.into()));
        let call = |addr: String| {
            let client = &client;
            async move {
                client
                    .call(
                        &"n2".into(),
                        &addr,
                        routes::PING,
                        None,
                        Duration::from_secs(5),
                    )
                    .await
            }
        };
        for secret in [None, Some("the-wrong-secret-B")] {
            let answer = call(impostor(secret).await).await;
            assert!(
                matches!(&answer, Err(PeerError::Malformed { message, .. }) if message.contains("refused the answer")),
                "{secret:?}: {answer:?}"
            );
        }
        assert_eq!(call(impostor(Some(fleet)).await).await.unwrap(), b"ok");
        // Without a secret, answers are taken as they come.
        let plain = HttpPeers::new()
            .call(
                &"n2".into(),
                &impostor(None).await,
                routes::PING,
                None,
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(plain.unwrap(), b"ok");
    }
}
