//! A node on a real loopback port under abuse: a slow-loris (connections
//! that send their headers a byte at a time) and a flood of fleet-wide
//! listings, while another client's lookups keep succeeding. The node
//! sheds what is beyond its limits with 503 and `Retry-After`, closes slow
//! connections after its header timeout, and keeps answering. Every loop
//! is bounded in count and time; all traffic stays on loopback. The test
//! prints its figures and asserts behaviour, not speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_core::EngineId;
use shoal_engine::{SyntheticEngine, SyntheticSpec};
use shoal_node::gossip::MemoryNet;
use shoal_node::peer::{CallKind, Fault, FaultyPeers, HttpPeers};
use shoal_node::{NodeConfig, run, run_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const PER_NODE: usize = 50;
/// How long the abuse lasts.
const ABUSE: Duration = Duration::from_secs(6);
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Slow-loris connections open at once.
const SLOW_CONNECTIONS: usize = 200;
/// Flooding clients, each sending listings back to back.
const FLOODERS: usize = 32;
/// The most requests the flood sends in all.
const FLOOD_CAP: usize = 20_000;
/// The most lookups the well-behaved client makes.
const LOOKUP_CAP: usize = 5_000;
/// The well-behaved client's timeout per lookup, retries included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// A scatter to node b takes this long, so that listings hold their
/// scatter slot and the flood runs into the limit.
const SLOW_SCATTER: Duration = Duration::from_millis(400);
const MAX_SCATTERS: usize = 4;

fn engine(name: &str) -> SyntheticEngine {
    SyntheticEngine::new(SyntheticSpec {
        count: PER_NODE,
        prefix: format!("{name}-"),
        engine_id: EngineId(format!("engine-{name}")),
    })
}

struct Node {
    addr: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(
    name: &str,
    listener: TcpListener,
    seeds: Vec<String>,
    peers: Arc<FaultyPeers>,
    config: NodeConfig,
    gossip: &MemoryNet,
) -> Node {
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let config = NodeConfig {
        node_id: name.into(),
        peers: seeds,
        ..config
    };
    let task = {
        let (stop, gossip, engine) = (stop.clone(), gossip.clone(), engine(name));
        tokio::spawn(async move {
            run_with(
                config,
                vec![Arc::new(engine)],
                listener,
                peers,
                Arc::new(gossip),
                stop,
            )
            .await
            .unwrap();
        })
    };
    Node { addr, stop, task }
}

/// Waits (bounded) until `addr` finds `name`.
async fn wait_found(http: &reqwest::Client, addr: &str, name: &str) {
    for _ in 0..300 {
        if let Ok(r) = http
            .get(format!("http://{addr}/v1/containers/{name}"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} never found {name}");
}

/// One slow-loris connection after another until `until`: each sends a
/// request line and then a header one byte every 100 ms, never ending it.
/// Answers how long the node held each connection open before closing it.
async fn slow_loris(addr: String, until: Instant) -> Vec<Duration> {
    let mut held = Vec::new();
    while Instant::now() + HEADER_TIMEOUT < until {
        let Ok(stream) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let opened = Instant::now();
        let (mut read, mut write) = stream.into_split();
        let dribble = async {
            let _ = write.write_all(b"GET /v1/nodes HTTP/1.1\r\nx-slow: ").await;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if write.write_all(b"a").await.is_err() {
                    return;
                }
            }
        };
        let closed = async {
            let mut buf = [0u8; 512];
            // A 408 or nothing, then the end of the stream.
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = closed => held.push(opened.elapsed()),
            _ = dribble => held.push(opened.elapsed()),
            _ = tokio::time::sleep_until(until.into()) => return held,
        }
    }
    held
}

#[derive(Default)]
struct FloodCount {
    sent: AtomicUsize,
    ok: AtomicUsize,
    shed: AtomicUsize,
    /// Answers other than 200 or a 503 `overloaded` with `Retry-After`.
    other: AtomicUsize,
    /// Requests without an answer within the client's timeout.
    hung: AtomicUsize,
}

async fn flood(http: reqwest::Client, url: String, until: Instant, count: Arc<FloodCount>) {
    while Instant::now() < until && count.sent.fetch_add(1, Ordering::Relaxed) < FLOOD_CAP {
        match http.get(&url).send().await {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                count.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status() == 503 && r.headers().get("retry-after").is_some() => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                if body["error"]["code"] == "overloaded" {
                    count.shed.fetch_add(1, Ordering::Relaxed);
                } else {
                    count.other.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => {
                eprintln!("flood: unexpected HTTP {}", r.status());
                count.other.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_timeout() => {
                count.hung.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("flood: {e}");
                count.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct LookupCount {
    latencies: Vec<Duration>,
    failed: Vec<String>,
    retried: usize,
}

/// A well-behaved client: one lookup at a time, each allowed
/// `LOOKUP_TIMEOUT`, retried after a shed (503 with `Retry-After`) within
/// that time.
async fn lookups(addr: String, until: Instant) -> LookupCount {
    let http = reqwest::Client::builder()
        .timeout(LOOKUP_TIMEOUT)
        .build()
        .unwrap();
    let mut count = LookupCount {
        latencies: Vec::new(),
        failed: Vec::new(),
        retried: 0,
    };
    for i in 0..LOOKUP_CAP {
        if Instant::now() >= until {
            break;
        }
        let name = format!("{}-{}", ["a", "b"][i % 2], i % PER_NODE);
        let url = format!("http://{addr}/v1/containers/{name}");
        let started = Instant::now();
        let outcome = loop {
            match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => break Ok(()),
                Ok(r) if r.status() == 503 && started.elapsed() < LOOKUP_TIMEOUT => {
                    count.retried += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(r) => break Err(format!("{name}: HTTP {}", r.status())),
                Err(e) => break Err(format!("{name}: {e}")),
            }
        };
        let took = started.elapsed();
        match outcome {
            Ok(()) if took <= LOOKUP_TIMEOUT => count.latencies.push(took),
            Ok(()) => count.failed.push(format!("{name}: took {took:?}")),
            Err(e) => count.failed.push(e),
        }
    }
    count
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_under_a_slow_loris_and_a_flood_keeps_answering_lookups() {
    let (la, lb) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let seeds = vec![
        la.local_addr().unwrap().to_string(),
        lb.local_addr().unwrap().to_string(),
    ];
    let config = NodeConfig {
        header_read_timeout: HEADER_TIMEOUT,
        max_concurrent_requests: 16,
        max_scatters: MAX_SCATTERS,
        sync_interval: Duration::from_millis(500),
        ..Default::default()
    };
    let gossip = MemoryNet::default();
    let a_peers = Arc::new(FaultyPeers::new(Arc::new(HttpPeers::new())));
    a_peers.set(&seeds[1], Some(CallKind::Local), Fault::Delay(SLOW_SCATTER));
    let a = start("a", la, seeds.clone(), a_peers, config.clone(), &gossip).await;
    let b_peers = Arc::new(FaultyPeers::new(Arc::new(HttpPeers::new())));
    let b = start("b", lb, seeds, b_peers, config, &gossip).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        // Below the node's header timeout, which closes idle keep-alive
        // connections: on a loaded machine a flooder can sit longer than
        // that between two requests, and a request sent on a connection
        // the node is closing fails without reaching it.
        .pool_idle_timeout(HEADER_TIMEOUT / 2)
        .build()
        .unwrap();
    for name in ["a-1", "b-1"] {
        wait_found(&http, &a.addr, name).await;
    }

    let until = Instant::now() + ABUSE;
    let mut slow = JoinSet::new();
    for _ in 0..SLOW_CONNECTIONS {
        slow.spawn(slow_loris(a.addr.clone(), until));
    }
    let flood_count = Arc::new(FloodCount::default());
    let mut flooders = JoinSet::new();
    for _ in 0..FLOODERS {
        flooders.spawn(flood(
            http.clone(),
            format!("http://{}/v1/containers", a.addr),
            until,
            flood_count.clone(),
        ));
    }
    // Let the abuse take hold before the well-behaved client starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lookups = tokio::spawn(lookups(a.addr.clone(), until));

    let mut held: Vec<Duration> = Vec::new();
    while let Some(r) = slow.join_next().await {
        held.extend(r.unwrap());
    }
    while flooders.join_next().await.is_some() {}
    let mut count = lookups.await.unwrap();

    count.latencies.sort();
    held.sort();
    let f = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    let ok = count.latencies.len();
    println!(
        "slow-loris: {SLOW_CONNECTIONS} connections at a time for {ABUSE:?}, {} closed by the node \
         after {:?} to {:?} (header timeout {HEADER_TIMEOUT:?})",
        held.len(),
        held.first().copied().unwrap_or_default(),
        held.last().copied().unwrap_or_default(),
    );
    println!(
        "flood: {FLOODERS} clients, {} listings: {} answered, {} shed with 503 and Retry-After, \
         {} other, {} hung (limit {MAX_SCATTERS} scatters, each held {SLOW_SCATTER:?})",
        f(&flood_count.ok) + f(&flood_count.shed) + f(&flood_count.other) + f(&flood_count.hung),
        f(&flood_count.ok),
        f(&flood_count.shed),
        f(&flood_count.other),
        f(&flood_count.hung),
    );
    if ok > 0 {
        println!(
            "lookups: {} of {} failed, {} retries after a 503, p50 {:?}, p99 {:?}, max {:?} \
             (timeout {LOOKUP_TIMEOUT:?})",
            count.failed.len(),
            ok + count.failed.len(),
            count.retried,
            percentile(&count.latencies, 0.5),
            percentile(&count.latencies, 0.99),
            count.latencies.last().unwrap(),
        );
    }

    assert!(
        count.failed.is_empty(),
        "failed lookups: {:?}",
        count.failed
    );
    assert!(ok > 0, "the client made lookups during the abuse");
    assert!(
        held.len() >= SLOW_CONNECTIONS,
        "every slow connection is closed by the node, not held until the client gives up: {} \
         closed",
        held.len()
    );
    assert!(
        held.iter()
            .all(|h| *h >= HEADER_TIMEOUT - Duration::from_millis(100)),
        "no slow connection is closed before the header timeout: {:?}",
        held.first()
    );
    assert!(f(&flood_count.shed) > 0, "the flood's excess is shed");
    assert!(
        f(&flood_count.ok) > 0,
        "listings within the limit are answered"
    );
    assert_eq!(f(&flood_count.hung), 0, "no flood request hangs");
    assert_eq!(
        f(&flood_count.other),
        0,
        "every flood answer is 200 or a shed"
    );

    for node in [a, b] {
        node.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), node.task)
            .await
            .expect("the node stops")
            .unwrap();
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    const LIMIT: usize = 4;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let config = NodeConfig {
        node_id: "solo".into(),
        max_connections: LIMIT,
        ..Default::default()
    };
    let node = tokio::spawn(run(
        config,
        vec![Arc::new(engine("solo"))],
        listener,
        stop.clone(),
    ));
    let http = reqwest::Client::new();
    wait_found(&http, &addr, "solo-1").await;
    drop(http);
    // The client's pooled connection may still count for a moment.
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut closed_at_once = false;
    for _ in 0..50 {
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at_once = true;
                break;
            }
            // The pooled connection had not closed yet: try again.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(closed_at_once, "a connection over the limit is closed");
    drop(idle);
    let http = reqwest::Client::new();
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await
            && r.status() == 200
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "once connections close, new ones are served");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .expect("the node stops")
        .unwrap()
        .unwrap();
}
