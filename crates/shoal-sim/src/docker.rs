//! `shoal-sim docker`: a real Docker engine under one node of three.
//!
//! Node `d0` watches the engine; `d1` and `d2` run synthetic engines. Each
//! `docker run` and `docker rm -f` (through the engine API) is timed from
//! the moment the engine's event reaches a subscriber of our own to the
//! name answering (or no longer answering) at `d1`, over HTTP with
//! `Cache-Control: no-cache`. Then the same again as a script polls: plain
//! GETs (hot cache on) at `d1`, for names `d1` does not own, each asked
//! once before its container exists; the removal is timed right after the
//! name was found, so `d1` holds it in its hot cache. Then the same name
//! and address lookups are
//! answered both ways: through `d1`, and by asking the engine directly the
//! way a script would (list with a name filter + inspect; for an address,
//! list + inspect every container, since the API cannot filter by address).
//! The engine calls shoal made during its lookups are counted (goal: none).

use std::collections::{BTreeMap, HashMap};
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
use shoal_core::ring::Ring;
use shoal_core::{EngineId, LookupKey, NodeId};
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
    /// `docker run`, polled as a script polls: the engine's start event to
    /// the name answering a plain GET (hot cache on) at a node that does
    /// not own it and was asked for it before it existed.
    pub fresh_start_plain: Latency,
    /// `docker rm -f` right after that: the engine's destroy event to the
    /// same node answering a plain GET 404 (the name was in its hot cache).
    pub fresh_remove_plain: Latency,
    /// Every answer the plain GETs got, by step, status and `x-shoal-path`
    /// (`before 404`, `start 200 forwarded`, `remove 200 hot`, ...).
    pub plain_answers: BTreeMap<String, u64>,
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

/// How long, and how many times, a plain-GET poll may ask before giving up.
const PLAIN_POLL_LIMIT: Duration = Duration::from_secs(10);
const PLAIN_POLL_MAX: u32 = 200_000;

/// Creates and starts `name` (sleeping, labelled `label`); the time the
/// start call returned.
async fn start_container(
    docker: &Docker,
    image: &str,
    name: &str,
    (label_key, label_value): (&str, &str),
) -> Result<Instant> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        labels: Some(HashMap::from([(
            label_key.to_owned(),
            label_value.to_owned(),
        )])),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await
        .with_context(|| format!("creating {name}"))?;
    docker
        .start_container(name, None)
        .await
        .with_context(|| format!("starting {name}"))?;
    Ok(Instant::now())
}

/// `docker rm -f name`.
async fn remove_container(docker: &Docker, name: &str) -> Result<()> {
    docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .with_context(|| format!("removing {name}"))
}

/// Polls `name` at `addr` with plain GETs, back to back, until it answers
/// `want`; at most [`PLAIN_POLL_MAX`] polls and [`PLAIN_POLL_LIMIT`]. Each
/// answer is tallied under `step`; the last one's `x-shoal-path`.
async fn poll_plain(
    client: &Client,
    addr: &str,
    name: &str,
    want: u16,
    step: &str,
    tally: &mut BTreeMap<String, u64>,
) -> Result<Option<String>> {
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..PLAIN_POLL_MAX {
        // A failed answer is not an answer: ask again until the limit.
        let (answer, path) = match client.plain(addr, name).await {
            Ok((status, path)) if status == want => {
                *tally.entry(plain_answer(step, status, &path)).or_default() += 1;
                return Ok(path);
            }
            Ok((status, path)) => (plain_answer(step, status, &path), path),
            Err(e) => (format!("{step} error"), Some(e.to_string())),
        };
        *tally.entry(answer.clone()).or_default() += 1;
        last = path.map_or(answer.clone(), |p| format!("{answer} ({p})"));
        if started.elapsed() > PLAIN_POLL_LIMIT {
            break;
        }
    }
    bail!(
        "{name} did not answer {want} to plain GETs at {addr} within {PLAIN_POLL_LIMIT:?} \
         or {PLAIN_POLL_MAX} polls (last answer: {last})"
    )
}

fn plain_answer(step: &str, status: u16, path: &Option<String>) -> String {
    match path {
        Some(p) => format!("{step} {status} {p}"),
        None => format!("{step} {status}"),
    }
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
    let label = (label_key, label_value);
    let mut names = Vec::new();
    let (mut from_event, mut from_call) = (Vec::new(), Vec::new());
    for i in 0..args.containers {
        let name = format!("shoal-fresh-{}-{i}", std::process::id());
        let returned = start_container(docker, &args.image, &name, label).await?;
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
        remove_container(docker, name).await?;
        client
            .wait_for(&reader, name, false, Duration::from_secs(10))
            .await?;
        let gone = Instant::now();
        let event = seen_at(&seen, name, "destroy").await?;
        removes.push(gone.saturating_duration_since(event));
    }

    // As a script polls: plain GETs at d1, for names d1 does not own (the
    // nodes' ring, computed here: every node runs the default placement).
    let placement = NodeConfig::default();
    let ring = Ring::new(
        (0..nodes.len()).map(|k| NodeId(format!("d{k}"))),
        placement.vnodes,
        placement.replicas,
    );
    let reader_id = NodeId::from("d1");
    let plain_names: Vec<String> = (0..args.containers * 100)
        .map(|j| format!("shoal-plain-{}-{j}", std::process::id()))
        .filter(|n| !ring.is_owner(&reader_id, &LookupKey::Name(n.clone())))
        .take(args.containers)
        .collect();
    if plain_names.len() < args.containers {
        bail!("too few names that d1 does not own");
    }
    say(format!(
        "freshness with plain GETs at a non-owner: {} docker runs and rm -f",
        plain_names.len()
    ));
    let mut plain_answers = BTreeMap::new();
    let (mut plain_starts, mut plain_removes) = (Vec::new(), Vec::new());
    for name in &plain_names {
        // Asked once before it exists: a miss the hot cache kept would
        // hold the start back below.
        let (status, path) = client.plain(&reader, name).await?;
        *plain_answers
            .entry(plain_answer("before", status, &path))
            .or_default() += 1;
        if status != 404 {
            bail!("{name} answered {status} at {reader} before it existed");
        }
        start_container(docker, &args.image, name, label).await?;
        let path = poll_plain(&client, &reader, name, 200, "start", &mut plain_answers).await?;
        let visible = Instant::now();
        if path.as_deref() == Some("owner") {
            bail!(
                "{reader} answered {name} as its owner: the ring computed here is not the nodes'"
            );
        }
        let event = seen_at(&seen, name, "start").await?;
        plain_starts.push(visible.saturating_duration_since(event));
        // Found, so in d1's hot cache: asked again, the answer says `hot`.
        let (status, path) = client.plain(&reader, name).await?;
        *plain_answers
            .entry(plain_answer("found", status, &path))
            .or_default() += 1;
        remove_container(docker, name).await?;
        poll_plain(&client, &reader, name, 404, "remove", &mut plain_answers).await?;
        let gone = Instant::now();
        let event = seen_at(&seen, name, "destroy").await?;
        plain_removes.push(gone.saturating_duration_since(event));
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
        fresh_start_plain: Latency::of(&plain_starts),
        fresh_remove_plain: Latency::of(&plain_removes),
        plain_answers,
        engine_name: Latency::of(&engine_name),
        engine_ip: Latency::of(&engine_ip),
        engine_containers,
        shoal_name: Latency::of(&shoal_name),
        shoal_ip: Latency::of(&shoal_ip),
        engine_calls_during_lookups: engine_calls,
        shoal_lookups: 2 * args.lookups,
    })
}
