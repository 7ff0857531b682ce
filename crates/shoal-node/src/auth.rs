//! The cluster secret (`--cluster-secret`) on the peer API: how a peer
//! request and its answer are signed and checked. (Gossip packets are
//! sealed with the same secret in [`crate::gossip`].)
//!
//! A signed peer request carries five headers: `x-shoal-ts` (Unix
//! seconds), `x-shoal-nonce` (128 random bits, hex), `x-shoal-to` (the ID
//! of the node it is meant for), `x-shoal-body` (the hex SHA-256 of its
//! body) and `x-shoal-auth`, the hex HMAC-SHA256 under the secret of
//! `shoal-peer-request \n METHOD \n path?query \n ts \n nonce \n to \n
//! body-sha256`. Because the MAC covers the body's hash and not the body,
//! a node with a secret ([`PeerGuard`]) checks everything from the
//! headers before it reads a byte of the body, and refuses (401):
//! - a request without the headers or with a MAC that does not verify;
//! - one signed more than [`MAX_SKEW`] seconds off its clock;
//! - one meant for another node (a request captured on its way to one
//!   owner cannot be replayed to another);
//! - one whose nonce it has seen already ([`NonceCache`]): a replay.
//!
//! Only then is the body read, within the peer body limit, and its hash
//! compared with `x-shoal-body` (401 if it differs).
//!
//! The answer is signed too: `x-shoal-auth` on the response is the HMAC
//! of `shoal-peer-response \n nonce \n status \n body-sha256`, bound to
//! the request by its nonce. A client with a secret takes no successful
//! answer whose MAC does not verify, so a process without the secret
//! cannot answer a forwarded lookup even if it gets the request.
//!
//! Without a secret, nothing is signed and peer routes trust the network.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use shoal_core::NodeId;

/// The API token (`--api-token`) that writes (job creation) need, and
/// reads too with `--api-token-reads`: `Authorization: Bearer <token>`.
/// Only the token's SHA-256 is kept, and a presented token is compared by
/// its SHA-256, so the comparison's time says nothing about the token.
pub struct ApiToken {
    digest: Option<[u8; 32]>,
}

impl ApiToken {
    /// The check of `token`; `None`: nothing that needs a token is allowed.
    pub fn new(token: Option<&str>) -> Self {
        ApiToken {
            digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// Checks the `Authorization` header's value; `what` names what the
    /// token is needed for, for the message.
    pub fn check(&self, authorization: Option<&[u8]>, what: &str) -> Result<(), crate::ApiError> {
        let Some(expected) = &self.digest else {
            return Err(crate::ApiError::Forbidden(format!(
                "{what} is off on this node: it has no API token (start it with --api-token, \
                 SHOAL_API_TOKEN or --api-token-file)"
            )));
        };
        let Some(value) = authorization else {
            return Err(crate::ApiError::Unauthorized(format!(
                "{what} needs the API token: send Authorization: Bearer <token>"
            )));
        };
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .map(|t| t.trim_ascii());
        let Some(presented) = presented else {
            return Err(crate::ApiError::Unauthorized(
                "the Authorization header must be Bearer <token>".into(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if &digest != expected {
            return Err(crate::ApiError::Unauthorized(format!(
                "{what}: the API token is wrong"
            )));
        }
        Ok(())
    }
}

/// The header with the MAC (of the request, and of the response).
pub const AUTH_HEADER: &str = "x-shoal-auth";
/// The header with the signing time, in Unix seconds.
pub const TS_HEADER: &str = "x-shoal-ts";
/// The header with the request's random nonce, 32 hex digits.
pub const NONCE_HEADER: &str = "x-shoal-nonce";
/// The header with the ID of the node the request is meant for.
pub const TO_HEADER: &str = "x-shoal-to";
/// The header with the hex SHA-256 of the request body.
pub const BODY_HEADER: &str = "x-shoal-body";
/// How far a request's time may be from this node's, in seconds.
pub const MAX_SKEW: u64 = 60;
/// The most nonces a node remembers (default of [`PeerGuard::new`]).
///
/// A nonce is remembered until its request's time is more than
/// [`MAX_SKEW`] in the past (then the time check refuses a replay), so
/// about 60 s: the bound allows about 17 000 signed peer requests a
/// second, sustained, at between 20 and 40 bytes a nonce (about 40 MiB
/// at the bound). Only requests whose MAC verified are remembered, so
/// only a holder of the secret can fill it; when it is full, new peer
/// requests are refused 503 (the callers retry or fall back) until
/// nonces expire, rather than forgetting nonces and letting replays in.
pub const NONCE_CAPACITY: usize = 1 << 20;

/// Nonce shards: requests take one shard's lock, not a global one.
const NONCE_SHARDS: usize = 16;

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size")
}

/// The hex SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn request_mac(
    secret: &[u8],
    method: &str,
    path: &str,
    ts: u64,
    nonce: &str,
    to: &str,
    body_sha256: &str,
) -> Hmac<Sha256> {
    let mut m = keyed(secret);
    for part in [
        "shoal-peer-request",
        method,
        path,
        &ts.to_string(),
        nonce,
        to,
    ] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m.update(body_sha256.as_bytes());
    m
}

fn response_mac(secret: &[u8], nonce: &str, status: u16, body: &[u8]) -> Hmac<Sha256> {
    let mut m = keyed(secret);
    for part in ["shoal-peer-response", nonce, &status.to_string()] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m.update(body_sha256(body).as_bytes());
    m
}

/// The signature headers of one peer request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuth {
    /// Signing time, Unix seconds.
    pub ts: u64,
    /// The random nonce, 32 hex digits.
    pub nonce: String,
    /// The ID of the node the request is meant for.
    pub to: String,
    /// The hex SHA-256 of the body.
    pub body_sha256: String,
    /// The hex MAC.
    pub mac: String,
}

impl RequestAuth {
    /// Signs a request to node `to` at time `ts` with a fresh nonce.
    pub fn sign(
        secret: &[u8],
        method: &str,
        path: &str,
        to: &NodeId,
        body: &[u8],
        ts: u64,
    ) -> Self {
        let nonce = format!("{:032x}", rand::random::<u128>());
        let body_sha256 = body_sha256(body);
        let mac = request_mac(secret, method, path, ts, &nonce, &to.0, &body_sha256);
        RequestAuth {
            ts,
            nonce,
            to: to.0.clone(),
            body_sha256,
            mac: hex::encode(mac.finalize().into_bytes()),
        }
    }

    /// The headers to send, name and value.
    pub fn headers(&self) -> [(&'static str, String); 5] {
        [
            (TS_HEADER, self.ts.to_string()),
            (NONCE_HEADER, self.nonce.clone()),
            (TO_HEADER, self.to.clone()),
            (BODY_HEADER, self.body_sha256.clone()),
            (AUTH_HEADER, self.mac.clone()),
        ]
    }

    /// Reads the headers through `header` (name to value).
    pub fn from_headers<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, &'static str> {
        let ts = header(TS_HEADER)
            .and_then(|t| t.parse().ok())
            .ok_or("missing or bad x-shoal-ts")?;
        let nonce = header(NONCE_HEADER)
            .filter(|n| is_hex(n, 32))
            .ok_or("missing or bad x-shoal-nonce: 32 hex digits")?;
        let to = header(TO_HEADER).ok_or("missing x-shoal-to")?;
        let body_sha256 = header(BODY_HEADER)
            .filter(|h| is_hex(h, 64))
            .ok_or("missing or bad x-shoal-body: 64 hex digits")?;
        let mac = header(AUTH_HEADER)
            .filter(|m| is_hex(m, 64))
            .ok_or("missing or bad x-shoal-auth")?;
        Ok(RequestAuth {
            ts,
            nonce: nonce.to_ascii_lowercase(),
            to: to.to_owned(),
            body_sha256: body_sha256.to_ascii_lowercase(),
            mac: mac.to_owned(),
        })
    }

    /// Checks, from the headers alone, the time, the destination and
    /// the MAC (in constant time).
    pub fn check(
        &self,
        secret: &[u8],
        me: &NodeId,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<(), &'static str> {
        if self.ts.abs_diff(now) > MAX_SKEW {
            return Err("x-shoal-ts is too far from this node's clock");
        }
        let given = hex::decode(&self.mac).map_err(|_| "bad x-shoal-auth")?;
        request_mac(
            secret,
            method,
            path,
            self.ts,
            &self.nonce,
            &self.to,
            &self.body_sha256,
        )
        .verify_slice(&given)
        .map_err(|_| "x-shoal-auth does not match: is --cluster-secret the same on every node?")?;
        if self.to != me.0 {
            return Err("the request is meant for another node");
        }
        Ok(())
    }

    /// Whether `body` is the body the request was signed with.
    pub fn body_matches(&self, body: &[u8]) -> bool {
        body_sha256(body) == self.body_sha256
    }

    fn nonce_bits(&self) -> u128 {
        // Checked to be 32 hex digits when read.
        u128::from_str_radix(&self.nonce, 16).unwrap_or_default()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The MAC of an answer to the request with `nonce`, hex.
pub fn sign_response(secret: &[u8], nonce: &str, status: u16, body: &[u8]) -> String {
    hex::encode(
        response_mac(secret, nonce, status, body)
            .finalize()
            .into_bytes(),
    )
}

/// Checks the MAC of an answer to the request with `nonce`.
pub fn verify_response(
    secret: &[u8],
    nonce: &str,
    status: u16,
    body: &[u8],
    mac: Option<&str>,
) -> Result<(), &'static str> {
    let given = mac
        .and_then(|m| hex::decode(m).ok())
        .ok_or("the answer is not signed")?;
    response_mac(secret, nonce, status, body)
        .verify_slice(&given)
        .map_err(|_| "the answer's signature does not match this node's cluster secret")
}

/// Why a request's nonce is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceRefusal {
    /// Seen already: a replay.
    Replayed,
    /// [`NONCE_CAPACITY`] nonces are remembered already.
    Full,
}

/// The nonces of signed requests, remembered while their time is
/// accepted, up to a capacity. Kept per signing second, so a second's
/// nonces go at once when it leaves the window; a replay carries the
/// signed time of the original, so only that second is searched.
pub struct NonceCache {
    shards: Vec<Mutex<BTreeMap<u64, HashSet<u128>>>>,
    len: AtomicUsize,
    capacity: usize,
}

impl NonceCache {
    /// Remembers up to `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        NonceCache {
            shards: (0..NONCE_SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Nonces counted now: a quiet shard's may have expired already
    /// (they count against the bound until it is touched or the cache
    /// fills).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, BTreeMap<u64, HashSet<u128>>> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the seconds whose requests the time check refuses by now.
    fn expire(&self, seconds: &mut BTreeMap<u64, HashSet<u128>>, now: u64) {
        let kept = seconds.split_off(&now.saturating_sub(MAX_SKEW));
        let gone: usize = std::mem::replace(seconds, kept)
            .values()
            .map(HashSet::len)
            .sum();
        self.len.fetch_sub(gone, Ordering::Relaxed);
    }

    /// Remembers `nonce` of a request signed at `ts` (already checked to
    /// be within [`MAX_SKEW`] of `now`), unless it was seen or the cache
    /// is full.
    pub fn remember(&self, nonce: u128, ts: u64, now: u64) -> Result<(), NonceRefusal> {
        let i = (nonce % NONCE_SHARDS as u128) as usize;
        let mut seconds = self.shard(i);
        self.expire(&mut seconds, now);
        if seconds.get(&ts).is_some_and(|s| s.contains(&nonce)) {
            return Err(NonceRefusal::Replayed);
        }
        if self.len() >= self.capacity {
            drop(seconds);
            // Quiet shards may hold seconds that are gone by now.
            for j in 0..self.shards.len() {
                self.expire(&mut self.shard(j), now);
            }
            if self.len() >= self.capacity {
                return Err(NonceRefusal::Full);
            }
            seconds = self.shard(i);
        }
        if !seconds.entry(ts).or_default().insert(nonce) {
            return Err(NonceRefusal::Replayed);
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Why a peer request is refused before its body is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: not signed, badly signed, for another node, too old, or a
    /// replay.
    Unauthorized(&'static str),
    /// 503: the nonce cache is full.
    Busy,
}

/// The check of a node with a secret on its peer requests.
pub struct PeerGuard {
    secret: Vec<u8>,
    me: NodeId,
    nonces: NonceCache,
    refused: AtomicU64,
}

impl PeerGuard {
    /// The guard of node `me` with `secret`.
    pub fn new(secret: &str, me: NodeId) -> Self {
        Self::with_capacity(secret, me, NONCE_CAPACITY)
    }

    /// The same with room for `capacity` nonces.
    pub fn with_capacity(secret: &str, me: NodeId, capacity: usize) -> Self {
        PeerGuard {
            secret: secret.as_bytes().to_vec(),
            me,
            nonces: NonceCache::new(capacity),
            refused: AtomicU64::new(0),
        }
    }

    /// Admits a request from its method, path (with query) and headers,
    /// at `now` (Unix seconds); the body is checked later with
    /// [`RequestAuth::body_matches`].
    pub fn admit<'a>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        now: u64,
    ) -> Result<RequestAuth, Refusal> {
        let result = RequestAuth::from_headers(header)
            .and_then(|auth| {
                auth.check(&self.secret, &self.me, method, path, now)?;
                Ok(auth)
            })
            .map_err(Refusal::Unauthorized)
            .and_then(
                |auth| match self.nonces.remember(auth.nonce_bits(), auth.ts, now) {
                    Ok(()) => Ok(auth),
                    Err(NonceRefusal::Replayed) => Err(Refusal::Unauthorized(
                        "this request was seen already: a replay",
                    )),
                    Err(NonceRefusal::Full) => Err(Refusal::Busy),
                },
            );
        if result.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Counts a request refused after admission (its body did not match).
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Peer requests refused so far.
    pub fn refused(&self) -> &AtomicU64 {
        &self.refused
    }

    /// Signs the answer to the request with `nonce`.
    pub fn sign_response(&self, nonce: &str, status: u16, body: &[u8]) -> String {
        sign_response(&self.secret, nonce, status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-long-enough-secret";
    const PUBLISH: &str = "/_shoal/v1/publish";

    /// A request's headers, as the router would read them.
    fn lookup<'a>(h: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    fn signed(to: &str, body: &[u8], ts: u64) -> RequestAuth {
        RequestAuth::sign(SECRET.as_bytes(), "POST", PUBLISH, &to.into(), body, ts)
    }

    #[test]
    fn a_signed_request_is_admitted_and_its_body_checked() {
        let guard = PeerGuard::new(SECRET, "n1".into());
        let auth = signed("n1", b"body", 100);
        let admitted = guard
            .admit("POST", PUBLISH, lookup(&auth.headers()), 110)
            .unwrap();
        assert!(admitted.body_matches(b"body"));
        assert!(!admitted.body_matches(b"bodY"));
        assert_eq!(guard.refused().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_replayed_request_is_refused() {
        let guard = PeerGuard::new(SECRET, "n1".into());
        let auth = signed("n1", b"body", 100);
        assert!(
            guard
                .admit("POST", PUBLISH, lookup(&auth.headers()), 100)
                .is_ok()
        );
        assert_eq!(
            guard.admit("POST", PUBLISH, lookup(&auth.headers()), 130),
            Err(Refusal::Unauthorized(
                "this request was seen already: a replay"
            ))
        );
        // Once its time is out of the window, the time check refuses it.
        assert_eq!(
            guard.admit("POST", PUBLISH, lookup(&auth.headers()), 100 + MAX_SKEW + 1),
            Err(Refusal::Unauthorized(
                "x-shoal-ts is too far from this node's clock"
            ))
        );
        assert_eq!(guard.refused().load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_request_meant_for_another_node_is_refused() {
        let owner_b = PeerGuard::new(SECRET, "n2".into());
        let for_owner_a = signed("n1", b"body", 100);
        assert_eq!(
            owner_b.admit("POST", PUBLISH, lookup(&for_owner_a.headers()), 100),
            Err(Refusal::Unauthorized(
                "the request is meant for another node"
            ))
        );
        // Rewriting the destination breaks the MAC.
        let rewritten = RequestAuth {
            to: "n2".into(),
            ..for_owner_a
        };
        assert!(matches!(
            owner_b.admit("POST", PUBLISH, lookup(&rewritten.headers()), 100),
            Err(Refusal::Unauthorized(m)) if m.contains("does not match")
        ));
    }

    #[test]
    fn a_changed_or_foreign_request_is_refused() {
        let guard = PeerGuard::new(SECRET, "n1".into());
        let auth = signed("n1", b"body", 100);
        for (method, path) in [("POST", "/_shoal/v1/digest"), ("GET", PUBLISH)] {
            assert!(
                guard
                    .admit(method, path, lookup(&auth.headers()), 100)
                    .is_err()
            );
        }
        let other = RequestAuth::sign(b"another-secret!!", "POST", PUBLISH, &"n1".into(), b"", 100);
        assert!(
            guard
                .admit("POST", PUBLISH, lookup(&other.headers()), 100)
                .is_err()
        );
        let later = RequestAuth {
            ts: 101,
            ..signed("n1", b"body", 100)
        };
        assert!(
            guard
                .admit("POST", PUBLISH, lookup(&later.headers()), 100)
                .is_err()
        );
        assert!(guard.admit("POST", PUBLISH, |_| None, 100).is_err());
        // Nothing refused was remembered: the genuine request still goes.
        assert!(
            guard
                .admit("POST", PUBLISH, lookup(&auth.headers()), 100)
                .is_ok()
        );
        assert_eq!(guard.nonces.len(), 1);
    }

    #[test]
    fn a_full_nonce_cache_refuses_until_its_seconds_expire() {
        let guard = PeerGuard::with_capacity(SECRET, "n1".into(), 3);
        for _ in 0..3 {
            let auth = signed("n1", b"", 100);
            assert!(
                guard
                    .admit("POST", PUBLISH, lookup(&auth.headers()), 100)
                    .is_ok()
            );
        }
        let late = signed("n1", b"", 150);
        assert_eq!(
            guard.admit("POST", PUBLISH, lookup(&late.headers()), 150),
            Err(Refusal::Busy)
        );
        // At 161, second 100 is out of the window: its nonces go and make
        // room for as many new ones, no more.
        for _ in 0..3 {
            let later = signed("n1", b"", 161);
            assert!(
                guard
                    .admit("POST", PUBLISH, lookup(&later.headers()), 161)
                    .is_ok()
            );
        }
        let full = signed("n1", b"", 161);
        assert_eq!(
            guard.admit("POST", PUBLISH, lookup(&full.headers()), 161),
            Err(Refusal::Busy)
        );
        // Refusing, it forgot every second out of the window.
        assert_eq!(guard.nonces.len(), 3);
    }

    #[test]
    fn an_answer_verifies_only_with_its_nonce_status_and_body() {
        let mac = sign_response(SECRET.as_bytes(), "ab", 200, b"reply");
        let ok = |nonce, status, body: &[u8], secret: &str| {
            verify_response(secret.as_bytes(), nonce, status, body, Some(&mac)).is_ok()
        };
        assert!(ok("ab", 200, b"reply", SECRET));
        assert!(!ok("ac", 200, b"reply", SECRET));
        assert!(!ok("ab", 404, b"reply", SECRET));
        assert!(!ok("ab", 200, b"replY", SECRET));
        assert!(!ok("ab", 200, b"reply", "another-secret!!"));
        assert!(verify_response(SECRET.as_bytes(), "ab", 200, b"reply", None).is_err());
    }
}
