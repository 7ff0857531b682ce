//! A deterministic simulator of the publishing and ownership protocol.
//!
//! Many nodes run the protocol core ([`Source`] and [`OwnerDirectory`])
//! with virtual time and an in-memory network that drops, delays,
//! duplicates and reorders messages, cuts and heals links, pauses a node,
//! restarts one with a new incarnation (sometimes a smaller one, as after
//! a clock step back), kills one for good, flaps the ring by declaring a
//! live node dead for a moment, and changes containers all along. Lookups
//! are answered the way shoal-node answers them: the owner's directory,
//! completed by asking the sources it is missing, else every live node.
//!
//! After every check step it asserts:
//! - a container that has run unchanged for [`SETTLE_MS`] on a node whose
//!   liveness has not changed for as long is never denied (404) by any
//!   node, by name or by full ID: an answer is found or unavailable;
//! - no answer lists a container removed [`SETTLE_MS`] ago.
//!
//! And once the faults stop and the fleet settles:
//! - every live container is found at every node, and no removed one;
//! - no record of a dead node or a dead incarnation is left;
//! - every directory holds exactly what its node owns.
//!
//! `cargo test` runs [`DEFAULT_SEEDS`] seeds. `SHOAL_SIM_SEEDS=N` runs N
//! (`make sim SEEDS=100000`), `SHOAL_SIM_SEED=S` replays one; a failure
//! names its seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use shoal_core::directory::{Here, OwnerDirectory};
use shoal_core::placement::{digests, owns_any};
use shoal_core::protocol::{Message, Out, Source, View};
use shoal_core::ring::Ring;
use shoal_core::wire::{DigestRequest, Publish};
use shoal_core::{
    ContainerRecord, ContainerState, EngineId, Health, Inventory, LookupKey, NetworkAttachment,
    NodeId, parse_ref,
};

const DEFAULT_SEEDS: u64 = 15;

/// Virtual milliseconds of one step.
const STEP_MS: u64 = 50;
/// How long faults are injected.
const FAULTY_MS: u64 = 20_000;
/// How long the fleet runs without faults at the end.
const QUIET_MS: u64 = 12_000;
/// The bound within which the fleet answers a change right.
const SETTLE_MS: u64 = 4_000;
/// How long a node's death takes to reach every view (the detector).
const DEATH_MS: u64 = 1_500;
/// The most any other view change lags behind the truth (gossip).
const GOSSIP_LAG_MS: u64 = 300;
/// A message's one-way delay.
const NET_MS: (u64, u64) = (1, 20);
/// When a sender gives up on an answer.
const TIMEOUT_MS: u64 = 250;
/// Anti-entropy period.
const SYNC_MS: u64 = 2_000;
/// First wait before repairing owners behind.
const REPAIR_MS: u64 = 500;
/// How long the publisher lets a view settle.
const VIEW_SETTLE_MS: u64 = 300;
/// Ring stable this long before unowned records go.
const PRUNE_GRACE_MS: u64 = 3_000;
/// The wait before the first resync request to one source, and the
/// longest between two.
const RESYNC_MS: (u64, u64) = (1_000, 5_000);
/// How often lookups are checked.
const CHECK_MS: u64 = 250;

/// splitmix64: the same sequence for a seed on every platform and version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId(format!("n{i}"))
}

/// A container on node `i`, serial `s`.
fn container(i: usize, s: u64, name: &str) -> ContainerRecord {
    let mut id = format!(
        "{:016x}",
        (i as u64 + 1).wrapping_mul(0x9e37_79b9) ^ s.wrapping_mul(0x85eb_ca6b)
    );
    id = id.repeat(4);
    let mut networks = shoal_core::Networks::new();
    networks.insert(
        "net".to_owned(),
        NetworkAttachment {
            ip: Some(
                std::net::Ipv4Addr::new(10, i as u8, (s / 250) as u8, (s % 250) as u8 + 1).into(),
            ),
            ..Default::default()
        },
    );
    ContainerRecord {
        id,
        names: vec![name.to_owned()],
        image: "busybox".into(),
        image_id: "sha256:0".into(),
        state: ContainerState::Running,
        pid: 1,
        labels: Default::default(),
        project: None,
        service: None,
        networks,
        ports: vec![],
        health: Health::None,
        created: "2026-01-01T00:00:00Z".into(),
        started_at: None,
        node: node_id(i),
        engine_id: EngineId(format!("engine-{i}")),
        updated_at: 0,
    }
}

/// What one node believes of one member.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    /// Newer news of the same incarnation has a higher version.
    version: u64,
    live: bool,
    incarnation: u64,
    ready: bool,
    behind: BTreeSet<NodeId>,
}

#[derive(Clone, Debug)]
enum Payload {
    Publish(Publish),
    Digest(DigestRequest),
    DigestReply {
        owner: usize,
        incarnation: u64,
        matches: bool,
    },
    Resync {
        owner: usize,
    },
    Failed {
        owner: usize,
        incarnation: u64,
    },
}

#[derive(Clone, Debug)]
struct Packet {
    at: u64,
    from: usize,
    to: usize,
    payload: Payload,
}

struct Node {
    up: bool,
    killed: bool,
    paused_until: u64,
    incarnation: u64,
    /// When its liveness last changed (death, restart, flap).
    changed_at: u64,
    engine: Inventory,
    /// When each container last changed, and removed ones.
    touched: BTreeMap<String, u64>,
    removed: BTreeMap<String, (ContainerRecord, u64)>,
    next_serial: u64,
    source: Option<Source>,
    /// When the source starts (the node joined).
    start_at: Option<u64>,
    dir: OwnerDirectory,
    view: BTreeMap<usize, Seen>,
    /// Every incarnation of every member it has heard of.
    heard: BTreeMap<usize, BTreeMap<u64, Seen>>,
    ring: Arc<Ring>,
    view_dirty_at: Option<u64>,
    ring_since: u64,
    pruned_at: Option<u64>,
    asked: BTreeMap<usize, (u64, u64)>,
    next_repair: u64,
    repair_wait: u64,
    next_sync: u64,
    inbox_held: Vec<Packet>,
}

struct World {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    flapped: BTreeMap<usize, u64>,
    cut: BTreeMap<(usize, usize), u64>,
    net: VecDeque<Packet>,
    /// Per link, the time of the last delivery: a link delivers in order.
    link_free: BTreeMap<(usize, usize), u64>,
    /// Scheduled view updates: (at, node, member, seen).
    gossip: Vec<(u64, usize, usize, Seen)>,
    faults: bool,
    /// The version of the latest news.
    versions: std::cell::Cell<u64>,
    /// Deaths to come back from: (at, node, with a smaller incarnation).
    pending_restarts: Vec<(u64, usize, bool)>,
    /// What happened, for a failure's message.
    log: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Found(Vec<String>),
    NotFound,
    Unavailable,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let n = rng.range((5, 8)) as usize;
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut engine = Inventory::new();
            let mut touched = BTreeMap::new();
            for s in 0..12 {
                let c = container(i, s, &format!("c{i}-{s}"));
                touched.insert(c.id.clone(), 0);
                engine.upsert(c);
            }
            nodes.push(Node {
                up: true,
                killed: false,
                paused_until: 0,
                incarnation: 1_000 + i as u64,
                changed_at: 0,
                engine,
                touched,
                removed: BTreeMap::new(),
                next_serial: 12,
                source: None,
                start_at: Some(rng.range((0, 200))),
                dir: OwnerDirectory::new(),
                view: BTreeMap::new(),
                heard: BTreeMap::new(),
                ring: Arc::new(Ring::new([node_id(i)], 16, 2)),
                view_dirty_at: None,
                ring_since: 0,
                pruned_at: None,
                asked: BTreeMap::new(),
                next_repair: 0,
                repair_wait: REPAIR_MS,
                next_sync: SYNC_MS,
                inbox_held: Vec::new(),
            });
        }
        let mut w = World {
            rng,
            now: 0,
            nodes,
            flapped: BTreeMap::new(),
            cut: BTreeMap::new(),
            net: VecDeque::new(),
            link_free: BTreeMap::new(),
            gossip: Vec::new(),
            faults: true,
            versions: std::cell::Cell::new(0),
            pending_restarts: Vec::new(),
            log: Vec::new(),
        };
        for i in 0..n {
            w.announce(i, 0);
        }
        w
    }

    fn truth(&self, i: usize) -> Seen {
        let n = &self.nodes[i];
        Seen {
            version: {
                self.versions.set(self.versions.get() + 1);
                self.versions.get()
            },
            live: n.up && !self.flapped.contains_key(&i),
            incarnation: n.incarnation,
            ready: n.source.is_some(),
            behind: n
                .source
                .as_ref()
                .map(|s| s.behind().clone())
                .unwrap_or_default(),
        }
    }

    /// Spreads member `i`'s state to every node, each after its own lag
    /// (plus the detector's delay for a death).
    fn announce(&mut self, i: usize, extra: u64) {
        let seen = self.truth(i);
        for j in 0..self.nodes.len() {
            let lag = if i == j {
                0
            } else {
                extra + self.rng.range((0, GOSSIP_LAG_MS))
            };
            self.gossip.push((self.now + lag, j, i, seen.clone()));
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a == b
            || (self.nodes[b].up
                && self.nodes[b].paused_until <= self.now
                && !self.cut.contains_key(&(a.min(b), a.max(b))))
    }

    fn protocol_view(&self, j: usize) -> View {
        let n = &self.nodes[j];
        View {
            ring: n.ring.clone(),
            live: n
                .view
                .iter()
                .filter(|(_, s)| s.live)
                .map(|(m, s)| (node_id(*m), s.incarnation))
                .collect(),
        }
    }

    fn here(&self, owner: usize, source: usize) -> Here {
        let n = &self.nodes[owner];
        Here {
            ring: n.ring.fingerprint(),
            live: n
                .view
                .get(&source)
                .filter(|s| s.live)
                .map(|s| s.incarnation),
        }
    }

    fn sources(&self, j: usize) -> Vec<(NodeId, u64)> {
        self.nodes[j]
            .view
            .iter()
            .filter(|(_, s)| s.live && s.ready)
            .map(|(m, s)| (node_id(*m), s.incarnation))
            .collect()
    }

    fn missing(&self, j: usize) -> Vec<usize> {
        let n = &self.nodes[j];
        let sources = self.sources(j);
        let mut missing: BTreeSet<usize> = n
            .dir
            .missing(sources.iter().map(|(s, i)| (s, *i)), n.ring.fingerprint())
            .iter()
            .map(index)
            .collect();
        for (m, s) in &n.view {
            if s.live && s.ready && s.behind.contains(&node_id(j)) {
                missing.insert(*m);
            }
        }
        missing.into_iter().collect()
    }

    fn send(&mut self, from: usize, outs: Vec<Out>) {
        for (owner, message) in outs {
            let to = index(&owner);
            let payload = match message {
                Message::Publish(p) => Payload::Publish(p),
                Message::Digest(d) => Payload::Digest(d),
            };
            self.post(from, to, payload);
        }
    }

    fn post(&mut self, from: usize, to: usize, payload: Payload) {
        let ordered = matches!(payload, Payload::Publish(_) | Payload::Digest(_));
        let mut at = self.now + self.rng.range(NET_MS);
        if from == to {
            at = self.now;
        } else if ordered {
            let free = self.link_free.entry((from, to)).or_insert(0);
            at = at.max(*free);
            *free = at;
        }
        let mut packet = Packet {
            at,
            from,
            to,
            payload,
        };
        if from != to && self.faults {
            let incarnation = self.nodes[from].incarnation;
            let failed = Payload::Failed {
                owner: to,
                incarnation,
            };
            if ordered && self.rng.chance(20) {
                // Lost: the sender's request fails.
                self.net.push_back(Packet {
                    at: self.now + TIMEOUT_MS,
                    from: to,
                    to: from,
                    payload: failed,
                });
                return;
            }
            if ordered && self.rng.chance(10) {
                // Late: the sender gives up, the message still lands, after
                // later ones.
                self.net.push_back(Packet {
                    at: self.now + TIMEOUT_MS,
                    from: to,
                    to: from,
                    payload: failed,
                });
                packet.at += self.rng.range((300, 1_000));
            }
            if self.rng.chance(10) {
                let mut twin = packet.clone();
                twin.at += self.rng.range((1, 500));
                self.net.push_back(twin);
            }
        }
        self.net.push_back(packet);
    }

    fn deliver(&mut self, p: Packet) {
        let (from, to) = (p.from, p.to);
        // A failure is the sender's own timeout: no link carries it.
        let local = matches!(p.payload, Payload::Failed { .. });
        let node = &self.nodes[to];
        if !node.up {
            if let Payload::Publish(_) | Payload::Digest(_) = p.payload {
                let incarnation = self.nodes[from].incarnation;
                self.post_back(
                    to,
                    from,
                    Payload::Failed {
                        owner: to,
                        incarnation,
                    },
                );
            }
            return;
        }
        if node.paused_until > self.now {
            self.nodes[to].inbox_held.push(p);
            return;
        }
        if !local && from != to && self.cut.contains_key(&(from.min(to), from.max(to))) {
            match p.payload {
                Payload::Publish(_) | Payload::Digest(_) => {
                    let incarnation = self.nodes[from].incarnation;
                    self.post_back(
                        to,
                        from,
                        Payload::Failed {
                            owner: to,
                            incarnation,
                        },
                    );
                }
                // The request landed and its answer is lost: the asker
                // times out.
                Payload::DigestReply {
                    owner, incarnation, ..
                } => {
                    self.post_back(owner, to, Payload::Failed { owner, incarnation });
                }
                _ => {}
            }
            return;
        }
        match p.payload {
            Payload::Publish(publish) => {
                let here = self.here(to, from);
                self.nodes[to].dir.apply(&publish, here);
            }
            Payload::Digest(d) => {
                let here = self.here(to, from);
                let ring = self.nodes[to].ring.clone();
                let me = node_id(to);
                let reply = self.nodes[to]
                    .dir
                    .check(&d, here, |r| owns_any(&ring, &me, r));
                let incarnation = d.source.incarnation;
                self.post_back(
                    to,
                    from,
                    Payload::DigestReply {
                        owner: to,
                        incarnation,
                        matches: reply.matches,
                    },
                );
            }
            Payload::DigestReply {
                owner,
                incarnation,
                matches,
            } => {
                if self.nodes[to].incarnation != incarnation {
                    return;
                }
                if let Some(s) = self.nodes[to].source.as_mut() {
                    let out = s.digests_replied(&[(node_id(owner), matches)]);
                    self.send(to, out);
                }
            }
            Payload::Resync { owner } => {
                if let Some(s) = self.nodes[to].source.as_mut() {
                    let out = s.digest_round(Some(&BTreeSet::from([node_id(owner)])));
                    self.send(to, out);
                }
            }
            Payload::Failed { owner, incarnation } => {
                if self.nodes[to].incarnation != incarnation {
                    return;
                }
                if let Some(s) = self.nodes[to].source.as_mut() {
                    s.failed(&node_id(owner));
                }
            }
        }
    }

    /// An answer travels back on the same link, unordered.
    fn post_back(&mut self, from: usize, to: usize, payload: Payload) {
        let at = self.now + self.rng.range(NET_MS);
        self.net.push_back(Packet {
            at,
            from,
            to,
            payload,
        });
    }

    fn engine_change(&mut self, i: usize) {
        let roll = self.rng.below(3);
        let now = self.now;
        let node = &mut self.nodes[i];
        let ids: Vec<String> = node.engine.records().map(|r| r.id.clone()).collect();
        let delta = match roll {
            0 => {
                let s = node.next_serial;
                node.next_serial += 1;
                let c = container(i, s, &format!("c{i}-{s}"));
                node.touched.insert(c.id.clone(), now);
                node.engine.upsert(c)
            }
            1 if !ids.is_empty() => {
                let id = ids[(self.rng.below(ids.len() as u64)) as usize].clone();
                let node = &mut self.nodes[i];
                let mut r = ContainerRecord::clone(node.engine.get(&id).unwrap());
                r.names = vec![format!(
                    "{}-r{now}",
                    r.names[0].split("-r").next().unwrap_or("x")
                )];
                node.touched.insert(id, now);
                node.engine.upsert(r)
            }
            _ if !ids.is_empty() => {
                let id = ids[(self.rng.below(ids.len() as u64)) as usize].clone();
                let node = &mut self.nodes[i];
                let last = ContainerRecord::clone(node.engine.get(&id).unwrap());
                node.touched.remove(&id);
                node.removed.insert(id.clone(), (last, now));
                node.engine.remove(&id)
            }
            _ => None,
        };
        if let (Some(d), Some(s)) = (delta, self.nodes[i].source.as_mut()) {
            let out = s.deltas(&[d]);
            self.send(i, out);
        }
    }

    fn restart(&mut self, i: usize, step_back: bool) {
        let n = &mut self.nodes[i];
        n.up = true;
        n.incarnation = if step_back {
            n.incarnation - 500
        } else {
            n.incarnation + 1_000
        };
        n.changed_at = self.now;
        n.source = None;
        n.dir = OwnerDirectory::new();
        n.view.clear();
        n.heard.clear();
        n.ring = Arc::new(Ring::new([node_id(i)], 16, 2));
        n.asked.clear();
        n.pruned_at = None;
        n.inbox_held.clear();
        n.start_at = Some(self.now + 100);
        self.log
            .push(format!("{} restart n{i} step_back={step_back}", self.now));
        self.announce(i, 0);
        // It learns the fleet from its seeds.
        for m in 0..self.nodes.len() {
            if m != i {
                let seen = self.truth(m);
                let lag = self.rng.range((20, GOSSIP_LAG_MS));
                self.gossip.push((self.now + lag, i, m, seen));
            }
        }
    }

    /// True once node `o` has joined: it has heard of another live member
    /// and no member it knows of is still pending (the seed's state names
    /// every member; each turns live or dead as its news arrives). Before
    /// that its ring is partial, and it refuses to answer for the fleet.
    fn joined(&self, o: usize) -> bool {
        let view = &self.nodes[o].view;
        view.iter().any(|(m, s)| *m != o && s.live) && view.len() == self.nodes.len()
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.below(n as u64) as usize;
        let up_count = self.nodes.iter().filter(|x| x.up).count();
        if self.rng.chance(6) && self.nodes[i].up && up_count > 3 {
            // Dies; most come back at once with a new incarnation.
            self.nodes[i].up = false;
            self.nodes[i].changed_at = self.now;
            let for_good = self.rng.chance(250) && !self.nodes.iter().any(|x| x.killed);
            self.log
                .push(format!("{} kill n{i} for_good={for_good}", self.now));
            self.announce(i, DEATH_MS);
            if for_good {
                self.nodes[i].killed = true;
            } else {
                let back = self.now + self.rng.range((0, 800));
                let step_back = self.rng.chance(300);
                self.pending_restarts.push((back, i, step_back));
            }
        } else if self.rng.chance(6) && self.nodes[i].up && !self.flapped.contains_key(&i) {
            let until = self.now + self.rng.range((300, 1_500));
            self.flapped.insert(i, until);
            self.nodes[i].changed_at = self.now;
            self.log.push(format!("{} flap n{i}", self.now));
            self.announce(i, DEATH_MS);
        } else if self.rng.chance(8) {
            let j = self.rng.below(n as u64) as usize;
            if i != j {
                let until = self.now + self.rng.range((300, 3_000));
                self.cut.insert((i.min(j), i.max(j)), until);
                self.log
                    .push(format!("{} cut n{i}-n{j} until {until}", self.now));
            }
        } else if self.rng.chance(6) && self.nodes[i].up {
            self.nodes[i].paused_until = self.now + self.rng.range((100, 1_200));
        }
    }

    fn lookup(&self, x: usize, key: &LookupKey) -> Answer {
        let node = &self.nodes[x];
        let mut owners: Vec<usize> = node.ring.owners(key).iter().map(|o| index(o)).collect();
        if let Some(pos) = owners.iter().position(|o| *o == x) {
            owners.remove(pos);
            owners.insert(0, x);
        }
        for o in owners {
            if !self.reachable(x, o) || !self.joined(o) {
                continue;
            }
            let n = &self.nodes[o];
            let records: Vec<Arc<ContainerRecord>> = n.dir.lookup(key);
            let complete_for = if n.ring.is_owner(&node_id(o), key) {
                n.dir.complete_for(n.ring.fingerprint())
            } else {
                Vec::new()
            };
            // Whoever asks decides what is missing, by its own view.
            let missing: Vec<usize> = self
                .sources(x)
                .into_iter()
                .filter(|s| {
                    !complete_for.contains(s)
                        || self.nodes[x].view[&index(&s.0)]
                            .behind
                            .contains(&node_id(o))
                })
                .map(|(s, _)| index(&s))
                .collect();
            return self.complete(x, key, records, missing);
        }
        // Every owner failed: every live node in x's view.
        let all: Vec<usize> = node
            .view
            .iter()
            .filter(|(_, s)| s.live)
            .map(|(m, _)| *m)
            .collect();
        self.complete(x, key, Vec::new(), all)
    }

    /// How `x` answered `key`, for a failure's message.
    fn explain(&self, x: usize, key: &LookupKey) -> String {
        let node = &self.nodes[x];
        let owners: Vec<String> = node.ring.owners(key).iter().map(|o| o.0.clone()).collect();
        let mut out = format!("ring of n{x} {:?}, owners {owners:?}", node.ring.members());
        for o in node.ring.owners(key) {
            let o = index(o);
            let n = &self.nodes[o];
            out += &format!(
                "; n{o}: reachable {} joined {} ring {:?} missing {:?} holds {} sources {:?} view {:?}",
                self.reachable(x, o),
                self.joined(o),
                n.ring.members(),
                self.missing(o),
                n.dir.lookup(key).len(),
                n.dir
                    .sources()
                    .iter()
                    .map(|s| (
                        s.0.clone(),
                        n.dir.summary(s).map(|m| (m.incarnation, m.count))
                    ))
                    .collect::<Vec<_>>(),
                n.view
                    .iter()
                    .map(|(m, s)| (*m, s.live, s.incarnation, s.ready))
                    .collect::<Vec<_>>(),
            );
        }
        out
    }

    fn complete(
        &self,
        x: usize,
        key: &LookupKey,
        records: Vec<Arc<ContainerRecord>>,
        ask: Vec<usize>,
    ) -> Answer {
        let mut failed = false;
        let mut answered = BTreeSet::new();
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        for m in ask {
            if self.reachable(x, m) && self.nodes[m].source.is_some() {
                answered.insert(node_id(m));
                for r in self.nodes[m].engine.lookup(key) {
                    found.insert(r.id.clone(), r.node.0.clone());
                }
            } else {
                failed = true;
            }
        }
        for r in records {
            if !answered.contains(&r.node) {
                found.insert(r.id.clone(), r.node.0.clone());
            }
        }
        if found.is_empty() {
            if failed {
                Answer::Unavailable
            } else {
                Answer::NotFound
            }
        } else {
            Answer::Found(found.into_keys().collect())
        }
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        let now = self.now;
        // Deliveries due.
        let mut due: Vec<Packet> = Vec::new();
        self.net.retain(|p| {
            if p.at <= now {
                due.push(p.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|p| p.at);
        for p in due {
            self.deliver(p);
        }
        // Faults end.
        self.cut.retain(|_, until| *until > now);
        let ended: Vec<usize> = self
            .flapped
            .iter()
            .filter(|(_, u)| **u <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in ended {
            self.flapped.remove(&i);
            self.nodes[i].changed_at = now;
            self.announce(i, 0);
        }
        let restarts: Vec<(u64, usize, bool)> = self
            .pending_restarts
            .iter()
            .filter(|r| r.0 <= now)
            .cloned()
            .collect();
        self.pending_restarts.retain(|r| r.0 > now);
        for (_, i, step_back) in restarts {
            self.restart(i, step_back);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].up
                && self.nodes[i].paused_until <= now
                && !self.nodes[i].inbox_held.is_empty()
            {
                let held = std::mem::take(&mut self.nodes[i].inbox_held);
                for p in held {
                    self.deliver(p);
                }
            }
        }
        // Gossip lands.
        let mut landed = Vec::new();
        self.gossip.retain(|g| {
            if g.0 <= now {
                landed.push(g.clone());
                false
            } else {
                true
            }
        });
        for (_, j, i, seen) in landed {
            let n = &mut self.nodes[j];
            if !n.up {
                continue;
            }
            // Gossip is versioned: older news of an incarnation never
            // overwrites newer. Every incarnation is kept, and the view
            // shows the one that speaks for the node: a live one over a
            // dead one, then the newest (as membership does).
            let held = n.heard.entry(i).or_default();
            if held
                .get(&seen.incarnation)
                .is_some_and(|h| h.version >= seen.version)
            {
                continue;
            }
            held.insert(seen.incarnation, seen);
            let speaks = held
                .values()
                .max_by_key(|s| (s.live, s.incarnation))
                .cloned()
                .unwrap();
            n.view.insert(i, speaks);
            let live: Vec<NodeId> = n
                .view
                .iter()
                .filter(|(_, s)| s.live)
                .map(|(m, _)| node_id(*m))
                .collect();
            if live.as_slice() != n.ring.members() {
                let ring = Arc::new(Ring::new(live, 16, 2));
                let grew_from = ring.grew_from(&n.ring).then(|| n.ring.fingerprint());
                n.ring = ring.clone();
                n.ring_since = now;
                n.pruned_at = None;
                // As the node's upkeep: digests that came ahead of the
                // ring change count now.
                let me = node_id(j);
                let view = n.view.clone();
                n.dir.ring_changed(
                    ring.fingerprint(),
                    grew_from,
                    |s| {
                        view.get(&index(s))
                            .filter(|m| m.live)
                            .map(|m| m.incarnation)
                    },
                    |r| owns_any(&ring, &me, r),
                );
            }
            if n.view_dirty_at.is_none() {
                n.view_dirty_at = Some(now + VIEW_SETTLE_MS);
            }
        }
        // Engines change, until the last stretch of the quiet period.
        let changing = now + SETTLE_MS < FAULTY_MS + QUIET_MS;
        for i in 0..self.nodes.len() {
            if changing && self.nodes[i].up && self.rng.chance(15) {
                self.engine_change(i);
            }
        }
        if self.faults {
            self.inject_faults();
        }
        for i in 0..self.nodes.len() {
            self.tick(i);
        }
        // Sources gossip who is behind.
        for i in 0..self.nodes.len() {
            if self.nodes[i].up && self.nodes[i].source.is_some() {
                let truth = self.truth(i);
                let stale = self.nodes.iter().any(|n| {
                    n.up && n
                        .view
                        .get(&i)
                        .is_some_and(|s| s.behind != truth.behind || s.ready != truth.ready)
                });
                if stale && self.gossip.iter().all(|g| g.2 != i) {
                    self.announce(i, 0);
                }
            }
        }
    }

    fn tick(&mut self, j: usize) {
        let now = self.now;
        if !self.nodes[j].up || self.nodes[j].paused_until > now {
            return;
        }
        // Start the source once joined.
        if self.nodes[j].source.is_none()
            && self.nodes[j].start_at.is_some_and(|t| t <= now)
            && self.joined(j)
        {
            let view = self.protocol_view(j);
            let n = &mut self.nodes[j];
            let mut s = Source::new(node_id(j), n.incarnation);
            let out = s.start(n.engine.clone(), &view);
            n.source = Some(s);
            n.view_dirty_at = None;
            self.send(j, out);
            self.announce(j, 0);
        }
        if self.nodes[j].source.is_none() {
            return;
        }
        // The publisher.
        if self.nodes[j].view_dirty_at.is_some_and(|t| t <= now) {
            self.nodes[j].view_dirty_at = None;
            let view = self.protocol_view(j);
            let out = self.nodes[j].source.as_mut().unwrap().view_changed(&view);
            self.send(j, out);
        }
        let behind = !self.nodes[j].source.as_ref().unwrap().behind().is_empty();
        if !behind {
            self.nodes[j].repair_wait = REPAIR_MS;
        } else if now >= self.nodes[j].next_repair {
            let out = self.nodes[j].source.as_mut().unwrap().repair();
            self.send(j, out);
            let n = &mut self.nodes[j];
            n.next_repair = now + n.repair_wait;
            n.repair_wait = (n.repair_wait * 2).min(SYNC_MS);
        }
        if now >= self.nodes[j].next_sync {
            self.nodes[j].next_sync = now + SYNC_MS;
            let out = self.nodes[j].source.as_mut().unwrap().digest_round(None);
            self.send(j, out);
        }
        // The directory's upkeep.
        let dead: Vec<NodeId> = self.nodes[j]
            .dir
            .sources()
            .into_iter()
            .filter(|s| self.nodes[j].view.get(&index(s)).is_some_and(|m| !m.live))
            .collect();
        for s in dead {
            self.nodes[j].dir.remove_source(&s);
        }
        let missing = self.missing(j);
        self.nodes[j].asked.retain(|m, _| missing.contains(m));
        for m in missing {
            // As the node: the first ask waits for the source's own round.
            let (at, wait) = self.nodes[j].asked.entry(m).or_insert((now, RESYNC_MS.0));
            if now < *at + *wait {
                continue;
            }
            *at = now;
            *wait = (*wait * 2).min(RESYNC_MS.1);
            self.post(j, m, Payload::Resync { owner: j });
        }
        let n = &mut self.nodes[j];
        if now >= n.ring_since + PRUNE_GRACE_MS && n.pruned_at.is_none_or(|at| now >= at + SYNC_MS)
        {
            let (ring, me) = (n.ring.clone(), node_id(j));
            n.dir.retain(|r| owns_any(&ring, &me, r));
            n.pruned_at = Some(now);
        }
    }

    /// Safety, at every check step.
    /// With `sample`, each asker checks a few containers of each node
    /// (picked by the checker's own generator, so checking never changes
    /// the run); without, every container.
    fn check(&self, mut sample: Option<&mut Rng>) -> Result<(), String> {
        for x in 0..self.nodes.len() {
            let asker = &self.nodes[x];
            if !asker.up || asker.paused_until > self.now || !self.joined(x) {
                continue;
            }
            for (n, node) in self.nodes.iter().enumerate() {
                let steady = node.up
                    && node.source.is_some()
                    && self.now >= node.changed_at + SETTLE_MS
                    && !self.flapped.contains_key(&n);
                let mut records: Vec<&Arc<ContainerRecord>> = node.engine.records().collect();
                let mut removed: Vec<(&String, &(ContainerRecord, u64))> =
                    node.removed.iter().collect();
                if let Some(rng) = sample.as_deref_mut() {
                    pick(rng, &mut records, SAMPLE);
                    pick(rng, &mut removed, SAMPLE);
                }
                for r in records {
                    let since = node.touched.get(&r.id).copied().unwrap_or(0);
                    if !steady || self.now < since + SETTLE_MS {
                        continue;
                    }
                    for key in [
                        parse_ref(&r.names[0], None).unwrap(),
                        parse_ref(&r.id, None).unwrap(),
                    ] {
                        if self.lookup(x, &key) == Answer::NotFound {
                            return Err(format!(
                                "n{x} denies {key} of n{n}, unchanged since {since}: {}",
                                self.explain(x, &key)
                            ));
                        }
                    }
                }
                for (id, (last, at)) in removed {
                    if self.now < at + SETTLE_MS || !node.up {
                        continue;
                    }
                    let key = parse_ref(id, None).unwrap();
                    if let Answer::Found(ids) = self.lookup(x, &key)
                        && ids.contains(id)
                        && node.engine.get(id).is_none()
                    {
                        return Err(format!(
                            "n{x} lists {} of n{n}, removed at {at}",
                            last.names[0]
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Liveness, once the faults stopped and the fleet settled.
    fn check_settled(&self) -> Result<(), String> {
        self.check(None)?;
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up)
            .collect();
        for &x in &live {
            for (n, node) in self.nodes.iter().enumerate() {
                for r in node.engine.records() {
                    let key = parse_ref(&r.names[0], None).unwrap();
                    let answer = self.lookup(x, &key);
                    let found = matches!(&answer, Answer::Found(ids) if ids.contains(&r.id));
                    if node.up && !found {
                        return Err(format!(
                            "settled: n{x} answers {answer:?} for {key} of n{n}: {}",
                            self.explain(x, &key)
                        ));
                    }
                }
            }
            // Exactly what it owns, from live sources only.
            let me = node_id(x);
            let dir = &self.nodes[x].dir;
            for s in dir.sources() {
                let i = index(&s);
                let summary = dir.summary(&s).unwrap();
                if summary.count > 0
                    && (!self.nodes[i].up || summary.incarnation != self.nodes[i].incarnation)
                {
                    return Err(format!(
                        "settled: n{x} still holds {} records of dead n{i}",
                        summary.count
                    ));
                }
            }
            let ring = &self.nodes[x].ring;
            let mut expected = 0;
            for &s in &live {
                let want = digests(ring, self.nodes[s].engine.records().map(|r| &**r));
                let (count, digest) = want.get(&me).copied().unwrap_or((0, 0));
                expected += count;
                let held = dir
                    .summary_where(&node_id(s), |r| owns_any(ring, &me, r))
                    .map(|h| (h.count, h.digest))
                    .unwrap_or((0, 0));
                if held != (count, digest) {
                    return Err(format!(
                        "settled: n{x} holds {held:?} of n{s}, owns {:?}",
                        (count, digest)
                    ));
                }
            }
            if dir.copies() as u64 != expected {
                return Err(format!(
                    "settled: n{x} holds {} copies, owns {expected}",
                    dir.copies()
                ));
            }
        }
        Ok(())
    }
}

/// Containers of each node each asker checks at a check step.
const SAMPLE: usize = 3;

/// Keeps `n` of `items`, picked at random.
fn pick<T>(rng: &mut Rng, items: &mut Vec<T>, n: usize) {
    while items.len() > n {
        let i = rng.below(items.len() as u64) as usize;
        items.swap_remove(i);
    }
}

fn index(n: &NodeId) -> usize {
    n.0[1..].parse().unwrap()
}

fn run(seed: u64) -> Result<(), String> {
    let mut w = World::new(seed);
    let r = run_world(&mut w);
    r.map_err(|e| {
        let recent: Vec<&String> = w.log.iter().rev().take(6).collect();
        format!("{e} at {} ms; last events: {recent:?}", w.now)
    })
}

fn run_world(w: &mut World) -> Result<(), String> {
    let mut checker = Rng(w.rng.0 ^ 0x5eed);
    while w.now < FAULTY_MS {
        w.step();
        if w.now.is_multiple_of(CHECK_MS) {
            w.check(Some(&mut checker))?;
        }
    }
    w.faults = false;
    while w.now < FAULTY_MS + QUIET_MS {
        w.step();
        if w.now.is_multiple_of(CHECK_MS) {
            w.check(Some(&mut checker))?;
        }
    }
    w.check_settled()
}

#[test]
fn the_protocol_keeps_its_invariants_under_faults() {
    if let Ok(seed) = std::env::var("SHOAL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SHOAL_SIM_SEED is a number");
        if let Err(e) = run(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SHOAL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let mut failed = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run(seed) {
            eprintln!(
                "seed {seed} failed: {e}  (replay: SHOAL_SIM_SEED={seed} cargo test -p shoal-core --test sim)"
            );
            failed.push(seed);
            if failed.len() >= 5 {
                break;
            }
        }
    }
    assert!(failed.is_empty(), "seeds failed: {failed:?}");
    println!("{seeds} seeds: every invariant held");
}
