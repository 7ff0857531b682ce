//! Talking to peers: the `PeerTransport` trait (so a test can cut, delay or
//! fail a link) and its HTTP implementation on reqwest with pooled
//! keep-alive connections, plus typed calls of the peer API under
//! `/_shoal/v1/` (bincode bodies, see [`shoal_core::wire`]).

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_core::LookupKey;
use shoal_core::wire::{
    self, DigestReply, DigestRequest, LocalQuery, LocalReply, LookupReply, Publish, PublishAck,
    ResyncRequest,
};

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
/// `http://{addr}{path}`, answered with bincode bytes.
#[async_trait]
pub trait PeerTransport: Send + Sync + 'static {
    /// Makes the call, bounded by `timeout`.
    async fn call(
        &self,
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError>;
}

/// The real transport: HTTP/1.1 with keep-alive, through reqwest.
pub struct HttpPeers {
    client: reqwest::Client,
    secret: Option<String>,
}

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
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("shoal-peer/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
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
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let url = format!("http://{addr}{path}");
        let method = if body.is_some() { "POST" } else { "GET" };
        let mut request = match &body {
            Some(b) => self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
                .body(b.clone()),
            None => self.client.get(&url),
        }
        .header(HOP_HEADER, "1")
        .timeout(timeout);
        if let Some(secret) = &self.secret {
            let ts = crate::service::now_ms() / 1000;
            let mac = crate::auth::sign(
                secret.as_bytes(),
                method,
                path,
                ts,
                body.as_deref().unwrap_or_default(),
            );
            request = request
                .header(crate::auth::TS_HEADER, ts)
                .header(crate::auth::AUTH_HEADER, mac);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                PeerError::Timeout {
                    addr: addr.to_owned(),
                    timeout,
                }
            } else {
                PeerError::Unreachable {
                    addr: addr.to_owned(),
                    message: e.to_string(),
                }
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| PeerError::Unreachable {
            addr: addr.to_owned(),
            message: format!("reading the answer: {e}"),
        })?;
        if !status.is_success() {
            return Err(PeerError::Status {
                addr: addr.to_owned(),
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        Ok(bytes.to_vec())
    }
}

async fn typed<Q: Serialize, A: DeserializeOwned>(
    transport: &dyn PeerTransport,
    addr: &str,
    path: &str,
    body: Option<&Q>,
    timeout: Duration,
) -> Result<A, PeerError> {
    let bytes = transport
        .call(addr, path, body.map(wire::encode), timeout)
        .await?;
    wire::decode(&bytes).map_err(|e| PeerError::Malformed {
        addr: addr.to_owned(),
        message: e.to_string(),
    })
}

/// The path of a peer lookup: the key's kind and value, percent-free
/// (keys are validated text: letters, digits, `_.-:` only).
pub fn lookup_path(key: &LookupKey) -> String {
    format!("/_shoal/v1/lookup/{}", key.kind().as_str())
        + "/"
        + &match key {
            LookupKey::Id(s) | LookupKey::Name(s) | LookupKey::Project(s) => s.clone(),
            LookupKey::Ip(ip) => ip.to_string(),
        }
}

/// Sends a publish to an owner; answers its ack and the bytes sent.
pub async fn publish(
    t: &dyn PeerTransport,
    addr: &str,
    p: &Publish,
    timeout: Duration,
) -> Result<(PublishAck, usize), PeerError> {
    let body = wire::encode(p);
    let sent = body.len();
    let answer = t
        .call(addr, "/_shoal/v1/publish", Some(body), timeout)
        .await?;
    let ack = wire::decode(&answer).map_err(|e| PeerError::Malformed {
        addr: addr.to_owned(),
        message: e.to_string(),
    })?;
    Ok((ack, sent))
}

/// Asks an owner whether it holds what the digest says.
pub async fn digest(
    t: &dyn PeerTransport,
    addr: &str,
    d: &DigestRequest,
    timeout: Duration,
) -> Result<DigestReply, PeerError> {
    typed(t, addr, "/_shoal/v1/digest", Some(d), timeout).await
}

/// Asks an owner for its directory's matches of a key.
pub async fn lookup(
    t: &dyn PeerTransport,
    addr: &str,
    key: &LookupKey,
    timeout: Duration,
) -> Result<LookupReply, PeerError> {
    typed::<(), _>(t, addr, &lookup_path(key), None, timeout).await
}

/// Asks a source for a digest round (an owner not complete for it). The
/// answer is whether the source took the request.
pub async fn resync(
    t: &dyn PeerTransport,
    addr: &str,
    r: &ResyncRequest,
    timeout: Duration,
) -> Result<bool, PeerError> {
    typed(t, addr, "/_shoal/v1/resync", Some(r), timeout).await
}

/// Asks a node for its own containers that match.
pub async fn local(
    t: &dyn PeerTransport,
    addr: &str,
    q: &LocalQuery,
    timeout: Duration,
) -> Result<LocalReply, PeerError> {
    typed(t, addr, "/_shoal/v1/local", Some(q), timeout).await
}
