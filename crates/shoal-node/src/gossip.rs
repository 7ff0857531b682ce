//! Gossip's datagrams. A node gossips over a [`GossipNet`]: UDP
//! ([`UdpNet`]) or, in tests, memory ([`MemoryNet`], whose links can be
//! cut). [`GossipTransport`] is the chitchat transport on a net; with a
//! cluster secret it seals every packet and drops every packet whose seal
//! does not verify, so a process without the secret can neither join nor
//! change what the fleet believes.
//!
//! A sealed packet is chitchat's bytes, then the sending time (Unix
//! milliseconds, 8 bytes big-endian), then the HMAC-SHA256 under the
//! secret of `shoal-gossip \n` + both (32 bytes). A packet older or newer
//! than [`crate::auth::MAX_SKEW`] is dropped too. Dropped packets are
//! counted ([`GossipRefusals`], the `shoal_gossip_refused` metric) and
//! logged at warn at most once per [`WARN_EVERY`].
//!
//! A replay within the window is taken: chitchat's state is versioned
//! (heartbeats and key versions only grow), so an old packet carries
//! nothing newer than what its receiver has and changes nothing; a
//! replayed request makes the receiver answer the sender's address with
//! state that anyone on the path could read anyway (gossip is signed, not
//! encrypted).
//!
//! chitchat keeps its wire codec to itself: its own UDP socket is the only
//! public way to turn a message into bytes and back. So each gossip socket
//! keeps a [`Codec`]: a chitchat socket and a relay socket on loopback
//! that talk only to each other. On plain UDP without a secret there is
//! nothing to seal, and chitchat's UDP socket is used as it is.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::warn;

use crate::clock::now_ms;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// Bytes a seal adds to a packet: time and tag.
pub const SEAL_LEN: usize = 8 + 32;
/// The most often a node warns about dropped packets.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Packets a memory socket holds before it drops more, as a full UDP
/// buffer does.
const MEMORY_QUEUE: usize = 128;
/// How long the codec waits for its own loopback packet; only a packet
/// chitchat cannot read takes this long.
const CODEC_WAIT: Duration = Duration::from_millis(200);

/// A network of datagrams: what gossip runs on.
#[async_trait]
pub trait GossipNet: Send + Sync + 'static {
    /// Binds `addr` (port 0: any free port).
    async fn bind(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn Datagrams>>;

    /// True for plain UDP: with no secret to seal with, chitchat's own UDP
    /// socket is used as it is, without the codec's loopback relay.
    fn is_udp(&self) -> bool {
        false
    }
}

/// One bound datagram socket.
#[async_trait]
pub trait Datagrams: Send + Sync + 'static {
    /// The address it is bound to.
    fn local_addr(&self) -> anyhow::Result<SocketAddr>;
    /// Sends one packet; a lost packet is no error.
    async fn send_to(&self, to: SocketAddr, packet: &[u8]) -> anyhow::Result<()>;
    /// The next packet and its sender. Cancel-safe.
    async fn recv_from(&mut self) -> anyhow::Result<(Vec<u8>, SocketAddr)>;
}

/// UDP.
pub struct UdpNet;

struct UdpDatagrams {
    socket: tokio::net::UdpSocket,
    buf: Box<[u8]>,
}

#[async_trait]
impl GossipNet for UdpNet {
    fn is_udp(&self) -> bool {
        true
    }

    async fn bind(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn Datagrams>> {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}/UDP for gossip"))?;
        Ok(Box::new(UdpDatagrams {
            socket,
            buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

#[async_trait]
impl Datagrams for UdpDatagrams {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send_to(&self, to: SocketAddr, packet: &[u8]) -> anyhow::Result<()> {
        self.socket
            .send_to(packet, to)
            .await
            .with_context(|| format!("cannot send gossip to {to}"))?;
        Ok(())
    }

    async fn recv_from(&mut self) -> anyhow::Result<(Vec<u8>, SocketAddr)> {
        loop {
            match self.socket.recv_from(&mut self.buf).await {
                Ok((n, from)) => return Ok((self.buf[..n].to_vec(), from)),
                // An earlier send to a closed port, reported here.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => return Err(e).context("gossip socket failed"),
            }
        }
    }
}

/// Datagrams in memory, for a fleet in one process: links between two
/// addresses can be cut and healed.
#[derive(Clone, Default)]
pub struct MemoryNet {
    inner: Arc<Mutex<MemoryInner>>,
}

type Packet = (Vec<u8>, SocketAddr);

#[derive(Default)]
struct MemoryInner {
    sockets: HashMap<SocketAddr, mpsc::Sender<Packet>>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
}

impl MemoryNet {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.lock().cut.insert((a.min(b), a.max(b)));
    }

    /// Delivers packets between `a` and `b` again.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.lock().cut.remove(&(a.min(b), a.max(b)));
    }
}

struct MemoryDatagrams {
    addr: SocketAddr,
    net: MemoryNet,
    rx: mpsc::Receiver<Packet>,
}

#[async_trait]
impl GossipNet for MemoryNet {
    async fn bind(&self, mut addr: SocketAddr) -> anyhow::Result<Box<dyn Datagrams>> {
        let mut inner = self.lock();
        if addr.port() == 0 {
            let free = (1..=u16::MAX)
                .find(|&p| !inner.sockets.contains_key(&SocketAddr::new(addr.ip(), p)))
                .context("no free port")?;
            addr.set_port(free);
        }
        anyhow::ensure!(!inner.sockets.contains_key(&addr), "{addr} is in use");
        let (tx, rx) = mpsc::channel(MEMORY_QUEUE);
        inner.sockets.insert(addr, tx);
        Ok(Box::new(MemoryDatagrams {
            addr,
            net: self.clone(),
            rx,
        }))
    }
}

#[async_trait]
impl Datagrams for MemoryDatagrams {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send_to(&self, to: SocketAddr, packet: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(packet.len() <= MAX_DATAGRAM, "packet too long");
        let inner = self.net.lock();
        if inner.cut.contains(&(self.addr.min(to), self.addr.max(to))) {
            return Ok(());
        }
        if let Some(tx) = inner.sockets.get(&to) {
            let _ = tx.try_send((packet.to_vec(), self.addr));
        }
        Ok(())
    }

    async fn recv_from(&mut self) -> anyhow::Result<(Vec<u8>, SocketAddr)> {
        self.rx.recv().await.context("memory net closed")
    }
}

impl Drop for MemoryDatagrams {
    fn drop(&mut self) {
        self.net.lock().sockets.remove(&self.addr);
    }
}

/// Seals `packet` at `now_ms` under `secret`.
pub fn seal(secret: &[u8], packet: &mut Vec<u8>, now_ms: u64) {
    packet.extend_from_slice(&now_ms.to_be_bytes());
    let tag = tag(secret, packet).finalize().into_bytes();
    packet.extend_from_slice(&tag);
}

fn tag(secret: &[u8], sealed_part: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    m.update(b"shoal-gossip\n");
    m.update(sealed_part);
    m
}

/// The chitchat bytes of a sealed packet, if its tag verifies (in
/// constant time) and it was sent within the skew of `now_ms`.
pub fn open<'a>(secret: &[u8], packet: &'a [u8], now_ms: u64) -> Result<&'a [u8], &'static str> {
    let body_len = packet
        .len()
        .checked_sub(SEAL_LEN)
        .ok_or("too short to be sealed")?;
    let (sealed, given) = packet.split_at(body_len + 8);
    tag(secret, sealed)
        .verify_slice(given)
        .map_err(|_| "its seal does not verify: is --cluster-secret the same on every node?")?;
    let mut sent = [0; 8];
    sent.copy_from_slice(&sealed[body_len..]);
    if u64::from_be_bytes(sent).abs_diff(now_ms) > crate::auth::MAX_SKEW * 1000 {
        return Err("it was sealed too long ago (or its sender's clock is off)");
    }
    Ok(&sealed[..body_len])
}

/// Gossip packets dropped because they were not sealed with this node's
/// secret, and when the node last said so.
#[derive(Default)]
pub struct GossipRefusals {
    count: AtomicU64,
    warned_ms: AtomicU64,
    since_warned: AtomicU64,
}

impl GossipRefusals {
    /// Packets dropped so far.
    pub fn count(&self) -> &AtomicU64 {
        &self.count
    }

    fn refuse(&self, from: SocketAddr, why: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let unsaid = self.since_warned.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_warned.fetch_sub(unsaid, Ordering::Relaxed);
            warn!(%from, dropped = unsaid, reason = why, "dropped gossip packets not sealed with this node's cluster secret");
        }
    }
}

/// The chitchat transport on a [`GossipNet`], sealing with a secret if
/// there is one.
pub struct GossipTransport {
    net: Arc<dyn GossipNet>,
    secret: Option<Arc<[u8]>>,
    refusals: Arc<GossipRefusals>,
}

impl GossipTransport {
    /// Gossip on `net`, sealed with `secret` if any.
    pub fn new(net: Arc<dyn GossipNet>, secret: Option<&str>) -> Self {
        GossipTransport {
            net,
            secret: secret.map(|s| Arc::from(s.as_bytes())),
            refusals: Arc::default(),
        }
    }

    /// Its dropped packets.
    pub fn refusals(&self) -> Arc<GossipRefusals> {
        self.refusals.clone()
    }
}

#[async_trait]
impl Transport for GossipTransport {
    async fn open(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        if self.secret.is_none() && self.net.is_udp() {
            // Nothing to seal: the relay would only add two loopback
            // packets to every gossip packet (with 50 nodes in one process,
            // shoal-sim scale no longer converged through it).
            let socket = chitchat::transport::UdpSocket::open(addr)
                .await
                .with_context(|| format!("cannot bind {addr}/UDP for gossip"))?;
            return Ok(Box::new(socket));
        }
        Ok(Box::new(GossipSocket {
            datagrams: self.net.bind(addr).await?,
            codec: Codec::open().await?,
            secret: self.secret.clone(),
            refusals: self.refusals.clone(),
            pending: None,
        }))
    }
}

/// chitchat's codec, reached through its own socket: an envelope sent to
/// the relay arrives as bytes; bytes the relay sends arrive as an
/// envelope.
struct Codec {
    chitchat: chitchat::transport::UdpSocket,
    chitchat_addr: SocketAddr,
    relay: tokio::net::UdpSocket,
    relay_addr: SocketAddr,
    buf: Box<[u8]>,
}

impl Codec {
    async fn open() -> anyhow::Result<Codec> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let chitchat = chitchat::transport::UdpSocket::open(loopback).await?;
        let relay = tokio::net::UdpSocket::bind(loopback).await?;
        Ok(Codec {
            chitchat_addr: chitchat.local_addr()?,
            relay_addr: relay.local_addr()?,
            chitchat,
            relay,
            buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        })
    }

    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        // What a cancelled call left behind is not this envelope.
        while self.relay.try_recv_from(&mut self.buf).is_ok() {}
        self.chitchat.send(self.relay_addr, envelope).await?;
        loop {
            let (n, from) = self.relay.recv_from(&mut self.buf).await?;
            // Anything else on loopback that found this port is not ours.
            if from == self.chitchat_addr {
                return Ok(self.buf[..n].to_vec());
            }
        }
    }
}

struct GossipSocket {
    datagrams: Box<dyn Datagrams>,
    codec: Codec,
    secret: Option<Arc<[u8]>>,
    refusals: Arc<GossipRefusals>,
    /// A packet handed to the codec and not read back yet: its sender,
    /// size and the time to give up on it. Kept here because chitchat
    /// may cancel `recv` at any await.
    pending: Option<(SocketAddr, usize, tokio::time::Instant)>,
}

#[async_trait]
impl Socket for GossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.datagrams.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let mut packet = self.codec.encode(envelope).await?;
        if let Some(secret) = &self.secret {
            seal(secret, &mut packet, now_ms());
        }
        anyhow::ensure!(
            packet.len() <= MAX_DATAGRAM,
            "a gossip packet of {} bytes is over the UDP limit",
            packet.len()
        );
        self.datagrams.send_to(to, &packet).await?;
        Ok(SendOutcome {
            num_bytes_sent: packet.len(),
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, size, give_up)) = self.pending {
                match tokio::time::timeout_at(give_up, self.codec.chitchat.recv()).await {
                    Ok(outcome) => {
                        let outcome = outcome?;
                        if outcome.from_addr != self.codec.relay_addr {
                            continue;
                        }
                        self.pending = None;
                        return Ok(RecvOutcome {
                            from_addr: from,
                            envelope: outcome.envelope,
                            num_bytes_received: size,
                        });
                    }
                    // chitchat could not read it (and said so).
                    Err(_) => self.pending = None,
                }
            }
            let (packet, from) = self.datagrams.recv_from().await?;
            let body = match &self.secret {
                Some(secret) => match open(secret, &packet, now_ms()) {
                    Ok(body) => body,
                    Err(why) => {
                        self.refusals.refuse(from, why);
                        continue;
                    }
                },
                None => &packet[..],
            };
            self.codec
                .relay
                .send_to(body, self.codec.chitchat_addr)
                .await?;
            self.pending = Some((from, packet.len(), tokio::time::Instant::now() + CODEC_WAIT));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-long-enough-secret";

    #[test]
    fn a_sealed_packet_opens_only_with_its_secret_unchanged_and_in_time() {
        let mut packet = b"chitchat bytes".to_vec();
        seal(SECRET, &mut packet, 1_000_000);
        assert_eq!(packet.len(), 14 + SEAL_LEN);
        assert_eq!(open(SECRET, &packet, 1_030_000), Ok(&b"chitchat bytes"[..]));
        assert!(open(b"another-secret!!", &packet, 1_000_000).is_err());
        assert!(open(SECRET, &packet, 1_000_000 + 61_000).is_err());
        let mut changed = packet.clone();
        changed[0] ^= 1;
        assert!(open(SECRET, &changed, 1_000_000).is_err());
        // The time is sealed too: moving it forward breaks the tag.
        let mut later = packet.clone();
        later[14 + 7] ^= 1;
        assert!(open(SECRET, &later, 1_000_000).is_err());
        assert!(open(SECRET, b"short", 1_000_000).is_err());
        assert!(open(SECRET, b"chitchat bytes", 1_000_000).is_err());
    }

    #[test]
    fn refusals_are_counted_each_and_warned_of_at_most_once_per_period() {
        let r = GossipRefusals::default();
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        for _ in 0..5 {
            r.refuse(from, "test");
        }
        assert_eq!(r.count().load(Ordering::Relaxed), 5);
        // The first was said at once; the other four wait for the period.
        assert_eq!(r.since_warned.load(Ordering::Relaxed), 4);
    }

    async fn fleet_of_two(
        net: &MemoryNet,
        a_secret: Option<&str>,
        b_secret: Option<&str>,
    ) -> (Box<dyn Socket>, Box<dyn Socket>, Arc<GossipRefusals>) {
        let a = GossipTransport::new(Arc::new(net.clone()), a_secret);
        let b = GossipTransport::new(Arc::new(net.clone()), b_secret);
        let addr = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        (
            a.open(addr(1)).await.unwrap(),
            b.open(addr(2)).await.unwrap(),
            b.refusals(),
        )
    }

    /// A real chitchat message: the bad-cluster answer, which needs no
    /// private type to build.
    fn envelope() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: chitchat::ChitchatMessage::BadCluster,
        }
    }

    #[tokio::test]
    async fn a_message_goes_through_with_the_same_secret_or_none() {
        for secret in [Some("a-long-enough-secret"), None] {
            let net = MemoryNet::default();
            let (mut a, mut b, _) = fleet_of_two(&net, secret, secret).await;
            let to = b.local_addr().unwrap();
            a.send(to, envelope()).await.unwrap();
            let got = b.recv().await.unwrap();
            assert_eq!(got.envelope, envelope());
            assert_eq!(got.from_addr, a.local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn a_message_under_another_secret_or_none_is_dropped_and_counted() {
        for sender in [Some("another-long-secret"), None] {
            let net = MemoryNet::default();
            let (mut a, mut b, refusals) =
                fleet_of_two(&net, sender, Some("a-long-enough-secret")).await;
            let to = b.local_addr().unwrap();
            a.send(to, envelope()).await.unwrap();
            let waited = tokio::time::timeout(Duration::from_millis(300), b.recv()).await;
            assert!(waited.is_err(), "{sender:?}: the message was taken");
            assert_eq!(refusals.count().load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test]
    async fn a_cut_link_drops_packets_until_healed() {
        let net = MemoryNet::default();
        let (mut a, mut b, _) = fleet_of_two(&net, None, None).await;
        let (from, to) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        net.cut(to, from);
        a.send(to, envelope()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), b.recv())
                .await
                .is_err()
        );
        net.heal(from, to);
        a.send(to, envelope()).await.unwrap();
        assert_eq!(b.recv().await.unwrap().envelope, envelope());
    }
}
