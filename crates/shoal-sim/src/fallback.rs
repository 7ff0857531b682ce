//! `shoal-sim fallback`: what a lookup costs when none of its key's owners
//! can be reached. Three nodes run in this process; the first one's peer
//! transport refuses every forwarded lookup at once (as when the owners
//! answer gossip but not HTTP), so its lookups of keys it does not own
//! fall back to asking every live node for its own matches. The same
//! node's no-op endpoint and owned lookups are the baselines, loaded by
//! `shoal-bench` from its own runtime in the same run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shoal_bench::{KeyChoice, LoadSpec, Report};
use shoal_core::{EngineId, NodeId};
use shoal_engine::{SyntheticEngine, SyntheticSpec};
use shoal_node::NodeConfig;
use shoal_node::peer::{CallKind, Fault, FaultyPeers, HttpPeers, PeerTransport};

use crate::fleet::{Client, SimNode, addresses, listeners, say};

/// Flags of `shoal-sim fallback`.
#[derive(Args, Debug)]
pub struct FallbackArgs {
    /// Synthetic containers per node.
    #[arg(long, default_value_t = 10_000)]
    containers: usize,
    /// Connections, each with one request in flight.
    #[arg(short, long, default_value_t = 8)]
    concurrency: usize,
    /// Each measured run.
    #[arg(short, long, value_parser = crate::duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured requests first.
    #[arg(long, value_parser = crate::duration, default_value = "1s")]
    warmup: Duration,
}

/// The report of `shoal-sim fallback`.
#[derive(Debug, Serialize)]
pub struct FallbackReport {
    /// Containers per node.
    pub containers: usize,
    /// The no-op endpoint of the same node.
    pub noop: Report,
    /// Keys the node owns.
    pub owner: Report,
    /// Keys whose owners refuse: answered by asking every node.
    pub fallback: Report,
}

/// Loads from a runtime of its own, as a separate client would.
async fn load(spec: LoadSpec) -> Result<Report> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime
            .block_on(shoal_bench::run(spec))
            .map_err(anyhow::Error::from)
    })
    .await?
}

/// Runs the scenario.
pub async fn run(args: FallbackArgs) -> Result<FallbackReport> {
    let ls = listeners(3).await?;
    let seeds = addresses(&ls)?;
    let mut nodes = Vec::new();
    for (k, listener) in ls.into_iter().enumerate() {
        let engine = SyntheticEngine::new(SyntheticSpec {
            count: args.containers,
            prefix: format!("n{k}-"),
            engine_id: EngineId(format!("engine-n{k}")),
        });
        // n0's forwarded lookups fail at once; every other call
        // (publish, digest, the scatter's `local`) goes through.
        let faulty = FaultyPeers::new(Arc::new(HttpPeers::new()));
        if k == 0 {
            for other in &seeds[1..] {
                faulty.set(other, Some(CallKind::Lookup), Fault::Cut);
            }
        }
        let peers: Arc<dyn PeerTransport> = Arc::new(faulty);
        let config = NodeConfig {
            node_id: NodeId(format!("n{k}")),
            peers: seeds.clone(),
            ..NodeConfig::default()
        };
        nodes.push(SimNode::start(listener, config, Arc::new(engine), peers)?);
    }
    let client = Client::new();
    let first = nodes[0].addr.clone();
    say("waiting for three members");
    let mut waited = 0;
    while client.alive(&first).await != 3 {
        waited += 1;
        if waited > 300 {
            bail!("the three nodes did not see each other within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sort a sample of keys by how the first node answers them.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut owned, mut fallen) = (Vec::new(), Vec::new());
    let mut tries = 0;
    while (owned.len() < 300 || fallen.len() < 300) && tries < 5000 {
        tries += 1;
        let key = format!(
            "n{}-{}",
            rng.random_range(0..3),
            rng.random_range(0..args.containers)
        );
        match client.path_of(&first, &key).await?.as_deref() {
            Some("owner") if owned.len() < 300 => owned.push(key),
            Some("fallback") if fallen.len() < 300 => fallen.push(key),
            _ => {}
        }
    }
    if owned.is_empty() || fallen.is_empty() {
        bail!(
            "found {} owned and {} fallback keys at the first node; cannot compare",
            owned.len(),
            fallen.len()
        );
    }
    let spec = |path: &str, keys: Vec<String>| LoadSpec {
        servers: vec![format!("http://{first}")],
        path: path.to_owned(),
        keys,
        choice: KeyChoice::Uniform,
        concurrency: args.concurrency,
        duration: Some(args.duration),
        requests: None,
        warmup: args.warmup,
        max_duration: args.duration + args.warmup + Duration::from_secs(30),
        headers: vec![("cache-control".into(), "no-cache".into())],
        progress: false,
    };
    say("run: no-op");
    let noop = load(spec("/v1/noop", Vec::new())).await?;
    say("run: owned lookups");
    let owner = load(spec("/v1/containers/{key}", owned)).await?;
    say("run: fallback lookups");
    let fallback = load(spec("/v1/containers/{key}", fallen))
        .await
        .context("the fallback run")?;
    for mut node in nodes {
        node.stop().await;
    }
    Ok(FallbackReport {
        containers: args.containers,
        noop,
        owner,
        fallback,
    })
}
