//! `shoal-sim docker`: a real Docker engine under one node of three.
//!
//! Node `d0` watches the engine; `d1` and `d2` run synthetic engines. Each
//! `docker run` and `docker rm -f` (through the engine API) is timed from
//! the moment the engine's event reaches a subscriber of our own to the
//! name answering (or no longer answering) at `d1`, over HTTP with
//! `Cache-Control: no-cache`. Then the same name and address lookups are
//! answered both ways: through `d1`, and by asking the engine directly the
//! way a script would (list with a name filter + inspect; for an address,
//! list + inspect every container, since the API cannot filter by address).
//! The engine calls shoal made during its lookups are counted (goal: none).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, EventMessage};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use clap::Args;
use futures::StreamExt;
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use serde::Serialize;
use shoal_core::{EngineId, NodeId};
use shoal_engine::{DockerEngine, Engine, SyntheticEngine, SyntheticSpec};
use shoal_node::NodeConfig;
use shoal_node::peer::HttpPeers;

use crate::fleet::{Client, Latency, SimNode, addresses, listeners, say};

/// Flags of `shoal-sim docker`.
#[derive(Args, Debug)]
pub struct DockerArgs {
    /// The engine (default: DOCKER_HOST, else the local socket).
    #[arg(long)]
    docker_host: Option<String>,
    /// The image to run (`scripts/test-image.sh` builds it).
    #[arg(long, default_value = "shoal-test/busybox:latest")]
    image: String,
    /// Containers started and removed, each timed.
    #[arg(long, default_value_t = 20)]
    containers: usize,
    /// Lookups of each kind, each way.
    #[arg(long, default_value_t = 200)]
    lookups: usize,
}

/// The report of `shoal-sim docker`.
#[derive(Debug, Serialize)]
pub struct DockerReport {
    /// The engine's version.
    pub engine: String,
    /// `docker run`: the engine's start event to the name answering at
    /// another node.
    pub fresh_start: Latency,
    /// `docker run`: the start call returning to the name answering there.
    pub fresh_start_from_call: Latency,
    /// `docker rm -f`: the engine's destroy event to the name being gone at
    /// another node.
    pub fresh_remove: Latency,
    /// A name, asked of the engine: list with a name filter + inspect.
    pub engine_name: Latency,
    /// An address, asked of the engine: list + inspect every container.
    pub engine_ip: Latency,
    /// Containers the engine held during the address lookups.
    pub engine_containers: usize,
    /// A name, through another node (no-cache).
    pub shoal_name: Latency,
    /// An address, through another node (no-cache).
    pub shoal_ip: Latency,
    /// Engine calls shoal made during its lookups.
    pub engine_calls_during_lookups: u64,
    /// Lookups made through shoal.
    pub shoal_lookups: usize,
}

type Seen = Arc<Mutex<HashMap<(String, String), Instant>>>;

fn event_name(ev: &EventMessage) -> Option<(String, String)> {
    let actor = ev.actor.as_ref()?;
    let name = actor.attributes.as_ref()?.get("name")?.clone();
    Some((name, ev.action.clone()?))
}

/// Waits (up to 5 s) for our own subscriber to have seen `action` on `name`.
async fn seen_at(seen: &Seen, name: &str, action: &str) -> Result<Instant> {
    let key = (name.to_owned(), action.to_owned());
    for _ in 0..500 {
        if let Some(t) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*t);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the engine sent no {action} event for {name} within 5 s")
}

/// Runs the scenario; the containers it made are removed whatever happens.
pub async fn run(args: DockerArgs) -> Result<DockerReport> {
    let host = args
        .docker_host
        .clone()
        .unwrap_or_else(DockerEngine::default_host);
    if let Some(why) = DockerEngine::missing_socket(&host) {
        bail!(why);
    }
    let docker = Docker::connect_with_host(&host)
        .with_context(|| format!("connecting to {host}"))?
        .negotiate_version()
        .await
        .with_context(|| format!("asking {host} for its API version"))?;
    docker.inspect_image(&args.image).await.with_context(|| {
        format!(
            "the image {} is missing: build it with scripts/test-image.sh",
            args.image
        )
    })?;
    let run_label = format!("shoal.sim.run={}", std::process::id());
    let result = scenario(&args, &host, &docker, &run_label).await;
    say("removing the containers made");
    let mut filters = HashMap::new();
    filters.insert("label", vec![run_label.as_str()]);
    if let Ok(left) = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    {
        for c in left {
            if let Some(id) = c.id {
                let _ = docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            }
        }
    }
    result
}

async fn scenario(
    args: &DockerArgs,
    host: &str,
    docker: &Docker,
    run_label: &str,
) -> Result<DockerReport> {
    let version = docker.version().await?.version.unwrap_or_default();
    // Our own subscriber: when the engine delivers each event.
    let seen: Seen = Arc::default();
    let mut filters = HashMap::new();
    filters.insert("type", vec!["container"]);
    filters.insert("label", vec![run_label]);
    let mut events = docker.events(Some(
        EventsOptionsBuilder::default().filters(&filters).build(),
    ));
    let listener = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(ev)) = events.next().await {
                if let Some(key) = event_name(&ev) {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(key)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };

    let ls = listeners(3).await?;
    let seeds = addresses(&ls)?;
    let mut nodes = Vec::new();
    for (k, listener) in ls.into_iter().enumerate() {
        let engine: Arc<dyn Engine> = if k == 0 {
            Arc::new(DockerEngine::connect(host)?)
        } else {
            Arc::new(SyntheticEngine::new(SyntheticSpec {
                count: 1000,
                prefix: format!("d{k}-"),
                engine_id: EngineId(format!("engine-d{k}")),
            }))
        };
        let config = NodeConfig {
            node_id: NodeId(format!("d{k}")),
            peers: seeds.clone(),
            ..NodeConfig::default()
        };
        nodes.push(SimNode::start(
            listener,
            config,
            engine,
            Arc::new(HttpPeers::new()),
        )?);
    }
    let client = Client::new();
    let reader = nodes[1].addr.clone();
    let mut waited = 0;
    loop {
        let mut all = true;
        for n in &nodes {
            all &= client.alive(&n.addr).await == 3;
        }
        if all && client.status(&nodes[0].addr, "/readyz").await? == 200 {
            break;
        }
        waited += 1;
        if waited > 300 {
            bail!("the three nodes did not see each other within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the ring settle before timing anything.
    client
        .wait_for(&reader, "d2-999", true, Duration::from_secs(30))
        .await?;

    say(format!("freshness: {} docker runs", args.containers));
    let (label_key, label_value) = run_label.split_once('=').unwrap_or((run_label, ""));
    let mut names = Vec::new();
    let (mut from_event, mut from_call) = (Vec::new(), Vec::new());
    for i in 0..args.containers {
        let name = format!("shoal-fresh-{}-{i}", std::process::id());
        let body = ContainerCreateBody {
            image: Some(args.image.clone()),
            cmd: Some(vec!["sleep".into(), "600".into()]),
            labels: Some(HashMap::from([(
                label_key.to_owned(),
                label_value.to_owned(),
            )])),
            ..Default::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .with_context(|| format!("creating {name}"))?;
        docker
            .start_container(&name, None)
            .await
            .with_context(|| format!("starting {name}"))?;
        let returned = Instant::now();
        client
            .wait_for(&reader, &name, true, Duration::from_secs(10))
            .await?;
        let visible = Instant::now();
        let event = seen_at(&seen, &name, "start").await?;
        from_event.push(visible.saturating_duration_since(event));
        from_call.push(visible.saturating_duration_since(returned));
        names.push(name);
    }

    // The same lookups, both ways.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut ips = Vec::new();
    for name in &names {
        let c = docker.inspect_container(name, None).await?;
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.values().find_map(|e| e.ip_address.clone()))
            .filter(|ip| !ip.is_empty());
        if let Some(ip) = ip {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        bail!("none of the containers got an address on the default bridge");
    }
    say(format!("{} lookups each way", args.lookups));
    let calls_before = nodes[0].engine.calls();
    let (mut shoal_name, mut shoal_ip) = (Vec::new(), Vec::new());
    for _ in 0..args.lookups {
        let name = names.choose(&mut rng).cloned().unwrap_or_default();
        let t = Instant::now();
        if client
            .status(&reader, &format!("/v1/containers/{name}"))
            .await?
            != 200
        {
            bail!("{name} did not answer at {reader}");
        }
        shoal_name.push(t.elapsed());
        let ip = ips.choose(&mut rng).cloned().unwrap_or_default();
        let t = Instant::now();
        if client
            .status(&reader, &format!("/v1/containers/{ip}"))
            .await?
            != 200
        {
            bail!("{ip} did not answer at {reader}");
        }
        shoal_ip.push(t.elapsed());
    }
    let engine_calls = nodes[0].engine.calls() - calls_before;

    let (mut engine_name, mut engine_ip) = (Vec::new(), Vec::new());
    let mut engine_containers = 0;
    for _ in 0..args.lookups {
        let name = names.choose(&mut rng).cloned().unwrap_or_default();
        let t = Instant::now();
        let filter = format!("^/{name}$");
        let mut filters = HashMap::new();
        filters.insert("name", vec![filter.as_str()]);
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for c in &list {
            if let Some(id) = &c.id {
                docker.inspect_container(id, None).await?;
            }
        }
        if list.is_empty() {
            bail!("the engine did not find {name}");
        }
        engine_name.push(t.elapsed());

        let ip = ips.choose(&mut rng).cloned().unwrap_or_default();
        let t = Instant::now();
        let list = docker
            .list_containers(Some(ListContainersOptionsBuilder::default().build()))
            .await?;
        engine_containers = list.len();
        let mut found = false;
        for c in &list {
            if let Some(id) = &c.id {
                let inspected = docker.inspect_container(id, None).await?;
                found |= inspected
                    .network_settings
                    .and_then(|n| n.networks)
                    .is_some_and(|n| n.values().any(|e| e.ip_address.as_deref() == Some(&ip)));
            }
        }
        if !found {
            bail!("the engine did not find {ip}");
        }
        engine_ip.push(t.elapsed());
    }

    say(format!("freshness: {} docker rm -f", names.len()));
    let mut removes = Vec::new();
    for name in &names {
        docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
            .with_context(|| format!("removing {name}"))?;
        client
            .wait_for(&reader, name, false, Duration::from_secs(10))
            .await?;
        let gone = Instant::now();
        let event = seen_at(&seen, name, "destroy").await?;
        removes.push(gone.saturating_duration_since(event));
    }
    listener.abort();
    for mut node in nodes {
        node.stop().await;
    }
    Ok(DockerReport {
        engine: version,
        fresh_start: Latency::of(&from_event),
        fresh_start_from_call: Latency::of(&from_call),
        fresh_remove: Latency::of(&removes),
        engine_name: Latency::of(&engine_name),
        engine_ip: Latency::of(&engine_ip),
        engine_containers,
        shoal_name: Latency::of(&shoal_name),
        shoal_ip: Latency::of(&shoal_ip),
        engine_calls_during_lookups: engine_calls,
        shoal_lookups: 2 * args.lookups,
    })
}
