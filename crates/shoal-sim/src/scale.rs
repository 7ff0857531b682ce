//! `shoal-sim scale`: a fleet of many nodes holding many containers.
//!
//! Pure parts first (no I/O): how many keys a join or a leave moves on the
//! ring, and the bytes one record copy takes in an owner's directory and in
//! a node's own inventory (counted by the global allocator). Then a live
//! fleet in this process: time to converge, all-in memory, engine calls per
//! lookup, publish traffic per event, freshness of synthetic events one by
//! one and in a burst, convergence after a node dies and after one joins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shoal_core::directory::OwnerDirectory;
use shoal_core::placement::{owners_of, owns_any};
use shoal_core::ring::Ring;
use shoal_core::wire::{self, Publish, PublishBody, SourceClock};
use shoal_core::{ContainerRecord, EngineId, Inventory, LookupKey, NodeId, record_keys};
use shoal_engine::{SyntheticEngine, SyntheticSpec, synthetic_id, synthetic_record};
use shoal_node::NodeConfig;
use shoal_node::peer::HttpPeers;
use tokio::task::JoinSet;

use crate::fleet::{Client, Latency, SimNode, addresses, listeners, say};

/// Flags of `shoal-sim scale`.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Nodes in the fleet.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Containers in the whole fleet, spread evenly.
    #[arg(long, default_value_t = 100_000)]
    containers: usize,
    /// Owners per key.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Virtual nodes per node.
    #[arg(long, default_value_t = 64)]
    vnodes: usize,
    /// Nodes started at once; the next wave starts when the fleet has
    /// converged.
    #[arg(long, default_value_t = 10)]
    wave: usize,
    /// Events timed one at a time (each a start and a removal).
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Events per second in the burst.
    #[arg(long, default_value_t = 2000)]
    burst_rate: u32,
    /// Events in the burst (at `--burst-rate`, 4000 last 2 s).
    #[arg(long, default_value_t = 4000)]
    burst_events: usize,
    /// How long each burst poller rests between two polls of its event.
    #[arg(long, value_parser = crate::duration, default_value = "5ms")]
    burst_poll: Duration,
    /// Every how many events of the burst one is timed by a poller. A
    /// poller per event (1) makes the measurement most of the load it
    /// measures: thousands of no-cache lookups every few ms, each a
    /// forward, on the same two cores as the fifty nodes, and the slower
    /// the fleet, the more polls. Every event is still checked afterwards
    /// for the "none lost" count.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    burst_sample: u64,
    /// Lookups made to count engine calls.
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// The nodes' --dead-after. Fifty nodes in one process share this
    /// machine's cores, so each has a sliver of one: the defaults allow for
    /// that (a node on its own host runs with 3 s; with 10 s, fifty nodes
    /// on two cores still took live members for dead now and then).
    #[arg(long, value_parser = crate::duration, default_value = "20s")]
    dead_after: Duration,
    /// The nodes' --peer-timeout (a node on its own host runs with 250 ms).
    #[arg(long, value_parser = crate::duration, default_value = "2s")]
    peer_timeout: Duration,
    /// Only the ring and memory figures; start no fleet.
    #[arg(long)]
    no_fleet: bool,
}

/// Keys a membership change moves.
#[derive(Debug, Serialize)]
pub struct Moves {
    /// Members before the change.
    pub members_before: usize,
    /// Keys (of every kind) of the fleet's containers.
    pub keys: usize,
    /// Of every (key, owner) copy, the share now owned by another node.
    pub key_copies_moved: f64,
    /// Of every key, the share whose owner set changed at all.
    pub keys_changed: f64,
    /// The target's bound, 1.3 / N (N members after a join, before a leave).
    pub bound: f64,
}

/// Memory per record.
#[derive(Debug, Serialize)]
pub struct Memory {
    /// Records measured.
    pub records: usize,
    /// Keys per record, on average (ID, names, addresses, project).
    pub keys_per_record: f64,
    /// Bytes per record copy in an owner's directory (record + indexes).
    pub directory_bytes_per_copy: f64,
    /// Bytes per record in a node's own inventory (record + indexes).
    pub inventory_bytes_per_record: f64,
    /// Bytes of one record in a publish (bincode).
    pub wire_bytes_per_record: f64,
}

/// What the live fleet showed.
#[derive(Debug, Default, Serialize)]
pub struct Live {
    /// From the first node starting (in waves of `--wave`) to every node
    /// seeing every member and answering a container of every node.
    pub converge_ms: u64,
    /// Record copies in all directories at rest.
    pub directory_copies: u64,
    /// Directory copies per container.
    pub copies_per_container: f64,
    /// Bytes the fleet holds beyond its engines' own state, per record
    /// copy (directory copies + each node's inventory): all-in, with
    /// gossip, HTTP pools and caches.
    pub all_in_bytes_per_copy: f64,
    /// Lookups made while counting engine calls.
    pub lookups: usize,
    /// Of those, answered 200.
    pub lookups_found: usize,
    /// Engine calls (list, inspect, identity, subscribe) those lookups
    /// caused, fleet-wide.
    pub engine_calls_during_lookups: u64,
    /// Label changes published.
    pub publish_events: usize,
    /// Publish bytes (HTTP bodies) per event, fleet-wide.
    pub publish_bytes_per_event: f64,
    /// Publish requests per event, fleet-wide.
    pub publishes_per_event: f64,
    /// A start on one node to its name answering at another, one at a time.
    pub fresh_start: Latency,
    /// A removal on one node to its name gone at another.
    pub fresh_remove: Latency,
    /// Mean time from a node's watcher reading a change to every owner
    /// having applied it, over the one-at-a-time events (the publisher's
    /// own histogram, fleet-wide): the part of freshness that is shoal's
    /// publishing, without the engine and the reader's polling.
    pub publish_lag_mean_us: u64,
    /// Starts in a burst, every `--burst-sample`th one timed the same way
    /// but polled every `--burst-poll` (so within 5 ms of when it showed).
    pub fresh_burst: Latency,
    /// Events per second the burst asked for.
    pub burst_rate: u32,
    /// Events the burst made.
    pub burst_events: usize,
    /// Every how many events one was timed (`--burst-sample`).
    pub burst_sample: u64,
    /// How long a burst poller rested between polls (`--burst-poll`), ms.
    pub burst_poll_ms: u64,
    /// Mean publish lag over the burst (as `publish_lag_mean_us`): the
    /// part of the burst's freshness that is publishing.
    pub burst_publish_lag_mean_us: u64,
    /// Publish requests per event in the burst, fleet-wide.
    pub burst_publishes_per_event: f64,
    /// What went wrong during the burst, fleet-wide: publish failures
    /// (timeouts, refusals), Stale answers to a live incarnation, messages
    /// dropped on a full owner queue, and the snapshots that repaired
    /// them. Each snapshot is a whole inventory: the load that makes a
    /// saturated burst worse.
    pub burst_failures: u64,
    /// See `burst_failures`.
    pub burst_stale: u64,
    /// See `burst_failures`.
    pub burst_overflows: u64,
    /// See `burst_failures`.
    pub burst_snapshots: u64,
    /// CPU the whole fleet (this process) used at rest, in cores, measured
    /// over 3 s just before the burst: gossip, digests, timers.
    pub idle_cores: f64,
    /// CPU per event of the burst, fleet-wide, in µs: the process's CPU
    /// from the burst's start until the fleet is quiet again, less the
    /// rest rate over that time, divided by the events. The pollers'
    /// lookups are in it. A real fleet spreads this over its hosts.
    pub burst_cpu_us_per_event: f64,
    /// Events the burst made that never showed: a timed one not seen
    /// within 10 s, or any one still missing once the fleet is quiet.
    pub burst_lost: usize,
    /// From a node stopping to its containers gone from every reader.
    pub death_ms: u64,
    /// From a node stopping to every reader calling it not alive.
    pub death_noticed_ms: u64,
    /// From a new node starting to its containers answering everywhere.
    pub join_ms: u64,
    /// Publish bytes the join caused, fleet-wide.
    pub join_publish_bytes: u64,
    /// CPU the process used from the join's start until its containers
    /// answered at every reader, in core-seconds, and the cores that is
    /// over that time (2 is all of this machine): a join that takes as
    /// long as its CPU on two cores is waiting for CPU, not for the
    /// protocol.
    pub join_cpu_s: f64,
    /// See `join_cpu_s`.
    pub join_cores: f64,
    /// The joiner's gains: the bytes (bincode, as a publish carries them)
    /// of the other nodes' records with a key the joiner owns on the new
    /// ring, once each. What it must be sent.
    pub join_gains_bytes: u64,
    /// The joiner's own records, once per owner other than itself: what it
    /// must send. The publish bytes of a join cannot be less than this plus
    /// its gains.
    pub join_own_bytes: u64,
}

/// The report of `shoal-sim scale`.
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// Nodes.
    pub nodes: usize,
    /// Containers.
    pub containers: usize,
    /// Owners per key.
    pub replicas: usize,
    /// Virtual nodes per node.
    pub vnodes: usize,
    /// Nodes started at once.
    pub wave: usize,
    /// The nodes' --dead-after, in ms.
    pub dead_after_ms: u64,
    /// The nodes' --peer-timeout, in ms.
    pub peer_timeout_ms: u64,
    /// A node joins.
    pub join: Moves,
    /// A node leaves.
    pub leave: Moves,
    /// Memory per record.
    pub memory: Memory,
    /// The live fleet, unless --no-fleet.
    pub live: Option<Live>,
}

fn node_name(k: usize) -> String {
    format!("s{k}")
}

fn prefix(k: usize) -> String {
    format!("s{k}-")
}

fn engine_id(k: usize) -> EngineId {
    EngineId(format!("engine-s{k}"))
}

/// Every key of every container: `per_node` containers on each of `nodes`.
fn fleet_keys(nodes: usize, per_node: usize) -> Vec<LookupKey> {
    let mut keys = Vec::new();
    for k in 0..nodes {
        for i in 0..per_node {
            keys.extend(record_keys(&synthetic_record(&prefix(k), i, &engine_id(k))));
        }
    }
    keys
}

/// How many keys move from the ring of `before` to the ring of `after`.
pub fn moves(
    keys: &[LookupKey],
    before: &[NodeId],
    after: &[NodeId],
    vnodes: usize,
    replicas: usize,
) -> Moves {
    let a = Ring::new(before.iter().cloned(), vnodes, replicas);
    let b = Ring::new(after.iter().cloned(), vnodes, replicas);
    let (mut copies, mut moved, mut changed) = (0usize, 0usize, 0usize);
    for key in keys {
        let was = a.owners(key);
        let now = b.owners(key);
        copies += now.len();
        let gained = now.iter().filter(|n| !was.contains(n)).count();
        moved += gained;
        if gained > 0 || was.len() != now.len() {
            changed += 1;
        }
    }
    let n = before.len().max(after.len());
    Moves {
        members_before: before.len(),
        keys: keys.len(),
        key_copies_moved: moved as f64 / copies.max(1) as f64,
        keys_changed: changed as f64 / keys.len().max(1) as f64,
        bound: 1.3 / n as f64,
    }
}

/// What a join must move at least: the bytes of the records of the other
/// `live` nodes that `joiner` owns a key of on the ring of `live` (its
/// gains), and the bytes of the joiner's own records once per owner other
/// than itself.
fn join_floor(args: &ScaleArgs, per_node: usize, live: &[usize], joiner: usize) -> (u64, u64) {
    let ring = Ring::new(
        live.iter().map(|&k| NodeId(node_name(k))),
        args.vnodes,
        args.replicas,
    );
    let me = NodeId(node_name(joiner));
    let (mut gains, mut own) = (0u64, 0u64);
    let mut owners = Vec::new();
    for &k in live {
        for i in 0..per_node {
            let mut r = synthetic_record(&prefix(k), i, &engine_id(k));
            r.node = NodeId(node_name(k));
            let bytes = (wire::encode(&r).len() - wire::encode(&()).len()) as u64;
            if k == joiner {
                owners.clear();
                owners_of(&ring, &r, &mut owners);
                own += bytes * owners.iter().filter(|o| ***o != me).count() as u64;
            } else if owns_any(&ring, &me, &r) {
                gains += bytes;
            }
        }
    }
    (gains, own)
}

/// Bytes per record copy, counted by the global allocator.
fn memory(records: usize) -> Memory {
    let node = NodeId::from("m0");
    let all: Vec<ContainerRecord> = (0..records)
        .map(|i| {
            let mut r = synthetic_record("m0-", i, &EngineId("engine-m0".into()));
            r.node = node.clone();
            r.updated_at = 1;
            r
        })
        .collect();
    let keys: usize = all.iter().map(|r| record_keys(r).len()).sum();
    let wire_bytes = wire::encode(&all).len();
    let publish = Publish {
        source: SourceClock {
            node: node.clone(),
            incarnation: 1,
            seq: 1,
            prev: 0,
            ring: 0,
        },
        body: PublishBody::Snapshot {
            records: all.clone(),
        },
    };
    let before = crate::allocated();
    let mut directory = OwnerDirectory::new();
    directory.apply(
        &publish,
        shoal_core::directory::Here {
            ring: 0,
            live: Some(1),
        },
    );
    let directory_bytes = crate::allocated().saturating_sub(before);
    assert_eq!(directory.copies(), records, "the snapshot was applied");

    let before = crate::allocated();
    let inventory = Inventory::from_records(all);
    let inventory_bytes = crate::allocated().saturating_sub(before);
    assert_eq!(inventory.len(), records);
    drop((directory, inventory, publish));

    Memory {
        records,
        keys_per_record: keys as f64 / records as f64,
        directory_bytes_per_copy: directory_bytes as f64 / records as f64,
        inventory_bytes_per_record: inventory_bytes as f64 / records as f64,
        wire_bytes_per_record: wire_bytes as f64 / records as f64,
    }
}

/// Runs the scenario.
pub async fn run(args: ScaleArgs) -> Result<ScaleReport> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (one dies, one joins, one reads)");
    }
    if args.containers < args.nodes {
        bail!("--containers must be at least --nodes");
    }
    let per_node = args.containers / args.nodes;
    say(format!(
        "ring moves over {} nodes x {per_node} containers",
        args.nodes
    ));
    let keys = fleet_keys(args.nodes, per_node);
    let members: Vec<NodeId> = (0..args.nodes).map(|k| NodeId(node_name(k))).collect();
    let mut joined = members.clone();
    joined.push(NodeId(node_name(args.nodes)));
    let join = moves(&keys, &members, &joined, args.vnodes, args.replicas);
    let left = &members[..args.nodes - 1];
    let leave = moves(&keys, &members, left, args.vnodes, args.replicas);
    drop(keys);
    say("memory per record copy");
    let memory = memory(20_000);

    let live = if args.no_fleet {
        None
    } else {
        Some(live(&args, per_node).await?)
    };
    Ok(ScaleReport {
        nodes: args.nodes,
        containers: per_node * args.nodes,
        replicas: args.replicas,
        vnodes: args.vnodes,
        wave: args.wave,
        dead_after_ms: args.dead_after.as_millis() as u64,
        peer_timeout_ms: args.peer_timeout.as_millis() as u64,
        join,
        leave,
        memory,
        live,
    })
}

struct Fleet {
    nodes: Vec<SimNode>,
    engines: Vec<SyntheticEngine>,
    seeds: Vec<String>,
    client: Client,
}

impl Fleet {
    fn config(&self, args: &ScaleArgs, k: usize) -> NodeConfig {
        NodeConfig {
            node_id: NodeId(node_name(k)),
            peers: self.seeds.clone(),
            replicas: args.replicas,
            vnodes: args.vnodes,
            dead_after: args.dead_after,
            peer_timeout: args.peer_timeout,
            // The periodic full resync would land in the window where
            // engine calls per lookup are counted.
            resync_interval: Duration::from_secs(3600),
            ..NodeConfig::default()
        }
    }

    fn live_nodes(&self) -> Vec<&SimNode> {
        self.nodes.iter().filter(|n| n.running()).collect()
    }

    /// Up to `n` running nodes, not `except`, picked at random.
    fn readers(&self, rng: &mut impl Rng, n: usize, except: Option<usize>) -> Vec<String> {
        let candidates: Vec<&SimNode> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(k, node)| node.running() && Some(*k) != except)
            .map(|(_, node)| node)
            .collect();
        candidates
            .choose_multiple(rng, n)
            .map(|node| node.addr.clone())
            .collect()
    }

    /// Waits until every running node sees `members` alive and answers the
    /// last container of every node with containers.
    async fn converge(&self, members: usize, limit: Duration) -> Result<()> {
        let started = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let per_node = self.engines[0].ids().len().max(1);
        let mut waiting_for = String::from("nothing asked yet");
        let mut last_said = Instant::now();
        'wait: loop {
            if started.elapsed() > limit {
                bail!(
                    "the fleet did not converge on {members} members within {limit:?}: \
                     still waiting for {waiting_for}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if last_said.elapsed() >= Duration::from_secs(15) {
                last_said = Instant::now();
                let mut work = Vec::new();
                for name in [
                    "shoal_publish_snapshots_total",
                    "shoal_publish_resyncs_total",
                    "shoal_publish_failures_total",
                    "shoal_publishes_total",
                ] {
                    let total = self.metric(name).await.unwrap_or(f64::NAN);
                    work.push(format!("{}={total}", name.trim_start_matches("shoal_")));
                }
                say(format!(
                    "{} s: still waiting for {waiting_for}; fleet so far: {}",
                    started.elapsed().as_secs(),
                    work.join(" ")
                ));
            }
            for node in self.live_nodes() {
                let alive = self.client.alive(&node.addr).await;
                if alive != members {
                    waiting_for = format!(
                        "{} to see {members} members alive (it sees {alive})",
                        node.addr
                    );
                    continue 'wait;
                }
            }
            for reader in self.readers(&mut rng, 3, None) {
                for (k, node) in self.nodes.iter().enumerate() {
                    if !node.running() {
                        continue;
                    }
                    let name = format!("{}{}", prefix(k), per_node - 1);
                    let asked = Instant::now();
                    let answer = self
                        .client
                        .answer(&reader, &format!("/v1/containers/{name}"))
                        .await;
                    // A lookup that times out while the fleet is busy
                    // settling is waited out like any other wrong answer.
                    let (status, body) = match answer {
                        Ok(a) => a,
                        Err(e) => (0, format!("{e:#} after {:?}", asked.elapsed())),
                    };
                    if status != 200 {
                        waiting_for =
                            format!("{reader} to answer {name} (it said {status}: {body})");
                        continue 'wait;
                    }
                }
            }
            return Ok(());
        }
    }

    /// Waits until every reader answers every name (`found`) or none
    /// (`!found`).
    async fn all_see(
        &self,
        readers: &[String],
        names: &[String],
        found: bool,
        limit: Duration,
    ) -> Result<()> {
        let mut polls = JoinSet::new();
        for reader in readers {
            for name in names {
                let (c, r, n) = (self.client.clone(), reader.clone(), name.clone());
                polls.spawn(async move { c.wait_for(&r, &n, found, limit).await });
            }
        }
        while let Some(r) = polls.join_next().await {
            r??;
        }
        Ok(())
    }

    /// A metric summed over the running nodes.
    async fn metric(&self, name: &str) -> Result<f64> {
        self.client.fleet_metric(&self.live_nodes(), name).await
    }

    /// Metrics summed over the running nodes, from one scrape of each.
    async fn metrics(&self, names: &[&str]) -> Result<Vec<f64>> {
        self.client.fleet_metrics(&self.live_nodes(), names).await
    }

    /// Waits until the fleet's directory copies stop changing for two
    /// seconds (the owners' prunes are done), at most a minute.
    async fn settle_copies(&self) -> Result<f64> {
        self.steady("shoal_directory_record_copies", Duration::from_secs(2), 30)
            .await
    }

    /// Waits until the fleet's publish counters stop moving for a second.
    async fn quiesce(&self) -> Result<f64> {
        self.steady("shoal_publish_bytes_total", Duration::from_secs(1), 60)
            .await
    }

    /// Reads a fleet-wide metric every `every` until two readings in a
    /// row agree, at most `tries` times; answers the last reading.
    async fn steady(&self, name: &str, every: Duration, tries: usize) -> Result<f64> {
        let mut last = -1.0;
        for _ in 0..tries {
            let now = self.metric(name).await?;
            if now == last {
                return Ok(now);
            }
            last = now;
            tokio::time::sleep(every).await;
        }
        Ok(last)
    }
}

async fn live(args: &ScaleArgs, per_node: usize) -> Result<Live> {
    let mut report = Live {
        burst_rate: args.burst_rate,
        burst_events: args.burst_events,
        burst_sample: args.burst_sample,
        burst_poll_ms: args.burst_poll.as_millis() as u64,
        ..Live::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let engines: Vec<SyntheticEngine> = (0..=args.nodes)
        .map(|k| {
            SyntheticEngine::new(SyntheticSpec {
                count: per_node,
                prefix: prefix(k),
                engine_id: engine_id(k),
            })
        })
        .collect();
    let base = crate::allocated();
    let ls = listeners(args.nodes).await?;
    let seeds = addresses(&ls[..3])?;
    let mut fleet = Fleet {
        nodes: Vec::new(),
        engines,
        seeds,
        client: Client::new(),
    };
    say(format!(
        "starting {} nodes, {per_node} containers each",
        args.nodes
    ));
    let started = Instant::now();
    let mut ls = ls.into_iter().enumerate().peekable();
    while ls.peek().is_some() {
        // A rollout in waves, as a fleet is deployed: each wave joins a
        // settled fleet instead of every node joining every other at once.
        for (k, listener) in ls.by_ref().take(args.wave.max(1)) {
            let config = fleet.config(args, k);
            let engine = Arc::new(fleet.engines[k].clone());
            fleet.nodes.push(SimNode::start(
                listener,
                config,
                engine,
                Arc::new(HttpPeers::new()),
            )?);
        }
        fleet
            .converge(fleet.nodes.len(), Duration::from_secs(300))
            .await?;
        say(format!(
            "{} nodes converged after {} ms",
            fleet.nodes.len(),
            started.elapsed().as_millis()
        ));
    }
    report.converge_ms = started.elapsed().as_millis() as u64;
    say(format!("converged in {} ms", report.converge_ms));
    fleet.quiesce().await?;
    // At rest: each owner drops what it no longer owns once the ring has
    // been stable for the ownership grace. Measured before that, the copies
    // include what the rollout left behind, and the prunes of fifty nodes
    // on two cores land in the middle of the timings that follow.
    let grace = NodeConfig::default().ownership_grace;
    say(format!("waiting {grace:?} for the owners' prune"));
    tokio::time::sleep(grace).await;
    fleet.settle_copies().await?;
    let copies = fleet.metric("shoal_directory_record_copies").await? as u64;
    report.directory_copies = copies;
    report.copies_per_container = copies as f64 / (per_node * args.nodes) as f64;
    let held = crate::allocated().saturating_sub(base);
    report.all_in_bytes_per_copy = held as f64 / (copies + (per_node * args.nodes) as u64) as f64;

    // Lookups cost no engine calls.
    say(format!("{} lookups, counting engine calls", args.lookups));
    let calls = |f: &Fleet| f.nodes.iter().map(|n| n.engine.calls()).sum::<u64>();
    let before = calls(&fleet);
    for _ in 0..args.lookups {
        let k = rng.random_range(0..args.nodes);
        let reader = fleet.readers(&mut rng, 1, None).remove(0);
        let name = format!("{}{}", prefix(k), rng.random_range(0..per_node));
        if fleet
            .client
            .status(&reader, &format!("/v1/containers/{name}"))
            .await?
            == 200
        {
            report.lookups_found += 1;
        }
    }
    report.lookups = args.lookups;
    report.engine_calls_during_lookups = calls(&fleet) - before;

    // Publish traffic per event: label changes, a few milliseconds apart.
    say("publish traffic per event");
    let bytes_before = fleet.quiesce().await?;
    let pubs_before = fleet.metric("shoal_publishes_total").await?;
    let events = 200;
    for e in 0..events {
        let k = rng.random_range(0..args.nodes);
        let id = synthetic_id(&prefix(k), rng.random_range(0..per_node));
        fleet.engines[k].modify(&id, "update", |r| {
            r.labels.insert("shoal.sim.seq".into(), e.to_string());
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bytes_after = fleet.quiesce().await?;
    let pubs_after = fleet.metric("shoal_publishes_total").await?;
    report.publish_events = events;
    report.publish_bytes_per_event = (bytes_after - bytes_before) / events as f64;
    report.publishes_per_event = (pubs_after - pubs_before) / events as f64;

    // Freshness, one event at a time.
    say(format!("freshness: {} starts and removals", args.events));
    let lag_before = (
        fleet.metric("shoal_publish_lag_seconds_sum").await?,
        fleet.metric("shoal_publish_lag_seconds_count").await?,
    );
    let (mut starts, mut removes) = (Vec::new(), Vec::new());
    for i in 0..args.events {
        let k = rng.random_range(0..args.nodes);
        let reader = fleet.readers(&mut rng, 1, Some(k)).remove(0);
        let fresh = format!("{}fresh-", prefix(k));
        let record = synthetic_record(&fresh, i, &engine_id(k));
        let (name, id) = (record.names[0].clone(), record.id.clone());
        let t0 = Instant::now();
        fleet.engines[k].run(record);
        fleet
            .client
            .wait_for(&reader, &name, true, Duration::from_secs(10))
            .await?;
        starts.push(t0.elapsed());
        let t0 = Instant::now();
        fleet.engines[k].remove(&id);
        fleet
            .client
            .wait_for(&reader, &name, false, Duration::from_secs(10))
            .await?;
        removes.push(t0.elapsed());
    }
    let lag_after = (
        fleet.metric("shoal_publish_lag_seconds_sum").await?,
        fleet.metric("shoal_publish_lag_seconds_count").await?,
    );
    report.publish_lag_mean_us =
        ((lag_after.0 - lag_before.0) * 1e6 / (lag_after.1 - lag_before.1).max(1.0)) as u64;
    report.fresh_start = Latency::of(&starts);
    report.fresh_remove = Latency::of(&removes);

    // Freshness in a burst: every event polled by its own task.
    let total = args.burst_events;
    say(format!(
        "freshness: a burst of {total} starts at {}/s",
        args.burst_rate
    ));
    let lag_before = (
        fleet.metric("shoal_publish_lag_seconds_sum").await?,
        fleet.metric("shoal_publish_lag_seconds_count").await?,
        fleet.metric("shoal_publishes_total").await?,
    );
    fleet.quiesce().await?;
    let trouble = [
        "shoal_publish_failures_total",
        "shoal_publish_stale_total",
        "shoal_publish_overflows_total",
        "shoal_publish_snapshots_total",
    ];
    let trouble_before = fleet.metrics(&trouble).await?;
    let rest = Duration::from_secs(3);
    let cpu_before = crate::cpu_time();
    tokio::time::sleep(rest).await;
    let idle = crate::cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| (after - before).as_secs_f64() / rest.as_secs_f64());
    report.idle_cores = idle.unwrap_or(f64::NAN);
    let cpu_before = crate::cpu_time();
    let timed = |i: usize| (i as u64).is_multiple_of(args.burst_sample);
    let mut pollers = JoinSet::new();
    let mut made = Vec::with_capacity(total);
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.burst_rate.max(1)));
    let burst_started = Instant::now();
    for i in 0..total {
        let due = gap * i as u32;
        if let Some(wait) = due.checked_sub(burst_started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let k = rng.random_range(0..args.nodes);
        let reader = fleet.readers(&mut rng, 1, Some(k)).remove(0);
        let record = synthetic_record(&format!("{}burst-", prefix(k)), i, &engine_id(k));
        let name = record.names[0].clone();
        let t0 = Instant::now();
        fleet.engines[k].run(record);
        if timed(i) {
            let (client, poll) = (fleet.client.clone(), args.burst_poll);
            let (reader, name) = (reader.clone(), name.clone());
            pollers.spawn(async move {
                client
                    .poll(&reader, &name, true, Duration::from_secs(10), poll)
                    .await
                    .map(|_| t0.elapsed())
            });
        }
        made.push((reader, name));
    }
    let mut burst = Vec::new();
    while let Some(r) = pollers.join_next().await {
        match r {
            Ok(Ok(d)) => burst.push(d),
            _ => report.burst_lost += 1,
        }
    }
    // None lost: every event of the burst, timed or not, answers at its
    // reader once the fleet is quiet.
    fleet.quiesce().await?;
    report.burst_cpu_us_per_event = match (crate::cpu_time(), cpu_before, idle) {
        (Some(after), Some(before), Some(idle)) => {
            let busy =
                (after - before).as_secs_f64() - idle * burst_started.elapsed().as_secs_f64();
            busy * 1e6 / total.max(1) as f64
        }
        _ => f64::NAN,
    };
    let counts: Vec<u64> = fleet
        .metrics(&trouble)
        .await?
        .iter()
        .zip(&trouble_before)
        .map(|(after, before)| (after - before).max(0.0) as u64)
        .collect();
    if let [failures, stale, overflows, snapshots] = counts[..] {
        report.burst_failures = failures;
        report.burst_stale = stale;
        report.burst_overflows = overflows;
        report.burst_snapshots = snapshots;
    }
    let timed_lost = report.burst_lost;
    for (i, (reader, name)) in made.iter().enumerate() {
        if timed(i) {
            continue; // its poller already counted it
        }
        if fleet
            .client
            .poll(
                reader,
                name,
                true,
                Duration::from_secs(2),
                Duration::from_millis(50),
            )
            .await
            .is_err()
        {
            report.burst_lost += 1;
        }
    }
    if report.burst_lost > timed_lost {
        say(format!(
            "{} events of the burst never showed",
            report.burst_lost
        ));
    }
    report.fresh_burst = Latency::of(&burst);
    let lag_after = (
        fleet.metric("shoal_publish_lag_seconds_sum").await?,
        fleet.metric("shoal_publish_lag_seconds_count").await?,
        fleet.metric("shoal_publishes_total").await?,
    );
    report.burst_publish_lag_mean_us =
        ((lag_after.0 - lag_before.0) * 1e6 / (lag_after.1 - lag_before.1).max(1.0)) as u64;
    report.burst_publishes_per_event = (lag_after.2 - lag_before.2) / total.max(1) as f64;

    // A node dies: its containers leave every reader.
    let victim = args.nodes - 1;
    say(format!("stopping {}", node_name(victim)));
    let names: Vec<String> = (0..20)
        .map(|_| format!("{}{}", prefix(victim), rng.random_range(0..per_node)))
        .collect();
    let readers = fleet.readers(&mut rng, 5, Some(victim));
    let t0 = Instant::now();
    let stopping = fleet.nodes[victim].halt();
    fleet
        .all_see(&readers, &names, false, Duration::from_secs(60))
        .await?;
    report.death_ms = t0.elapsed().as_millis() as u64;
    loop {
        let mut all = true;
        for r in &readers {
            all &= fleet.client.alive(r).await == args.nodes - 1;
        }
        if all || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.death_noticed_ms = t0.elapsed().as_millis() as u64;
    if let Some(task) = stopping {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }

    // A node joins: its containers reach every reader.
    let newcomer = args.nodes;
    say(format!("starting {}", node_name(newcomer)));
    let bytes_before = fleet.quiesce().await?;
    let listener = listeners(1).await?.remove(0);
    let config = fleet.config(args, newcomer);
    let t0 = Instant::now();
    let cpu_before = crate::cpu_time();
    let node = SimNode::start(
        listener,
        config,
        Arc::new(fleet.engines[newcomer].clone()),
        Arc::new(HttpPeers::new()),
    )?;
    fleet.nodes.push(node);
    let names: Vec<String> = (0..20)
        .map(|_| format!("{}{}", prefix(newcomer), rng.random_range(0..per_node)))
        .collect();
    let readers = fleet.readers(&mut rng, 5, Some(newcomer));
    fleet
        .all_see(&readers, &names, true, Duration::from_secs(120))
        .await?;
    report.join_ms = t0.elapsed().as_millis() as u64;
    if let (Some(after), Some(before)) = (crate::cpu_time(), cpu_before) {
        report.join_cpu_s = (after - before).as_secs_f64();
        report.join_cores = report.join_cpu_s / t0.elapsed().as_secs_f64();
    }
    let bytes_after = fleet.quiesce().await?;
    report.join_publish_bytes = (bytes_after - bytes_before).max(0.0) as u64;
    let live: Vec<usize> = (0..=args.nodes).filter(|&k| k != victim).collect();
    (report.join_gains_bytes, report.join_own_bytes) = join_floor(args, per_node, &live, newcomer);

    say("stopping the fleet");
    let mut stops = JoinSet::new();
    for mut node in fleet.nodes.drain(..) {
        stops.spawn(async move { node.stop().await });
    }
    while stops.join_next().await.is_some() {}
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|k| NodeId(node_name(k))).collect()
    }

    /// The allocator's count is process-wide: a test that allocates or
    /// frees while `memory` measures skews it (a concurrent free made the
    /// inventory's bytes come out as 0). The tests here take turns.
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_join_moves_about_one_share_and_a_no_op_moves_none() {
        let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
        let keys = fleet_keys(10, 200);
        let same = moves(&keys, &ids(10), &ids(10), 64, 2);
        assert_eq!((same.key_copies_moved, same.keys_changed), (0.0, 0.0));
        let join = moves(&keys, &ids(10), &ids(11), 64, 2);
        assert!(join.key_copies_moved > 0.0, "{join:?}");
        assert!(join.key_copies_moved < 3.0 / 11.0, "{join:?}");
        assert!(join.keys_changed >= join.key_copies_moved, "{join:?}");
    }

    #[test]
    fn memory_is_counted() {
        let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
        let m = memory(500);
        assert!(m.directory_bytes_per_copy > 100.0, "{m:?}");
        assert!(m.inventory_bytes_per_record > 100.0, "{m:?}");
        assert!(m.wire_bytes_per_record > 50.0, "{m:?}");
        assert!(m.keys_per_record >= 3.0, "{m:?}");
    }
}
