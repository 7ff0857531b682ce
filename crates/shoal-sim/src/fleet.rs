//! A fleet in this process: nodes started with `shoal_node::run_with` on
//! loopback listeners (real HTTP between them, real UDP gossip), an engine
//! wrapper that counts calls, an HTTP client that polls like a user would,
//! and the percentiles of what was timed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use serde::Serialize;
use shoal_core::ContainerRecord;
use shoal_engine::{Engine, EngineError, EngineIdentity, EventStream};
use shoal_node::peer::PeerTransport;
use shoal_node::{NodeConfig, run_with};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An engine that counts the calls made to it.
pub struct CountingEngine {
    inner: Arc<dyn Engine>,
    calls: AtomicU64,
}

impl CountingEngine {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Engine>) -> Self {
        CountingEngine {
            inner,
            calls: AtomicU64::new(0),
        }
    }

    /// Calls so far (identity, subscribe, list, inspect).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Engine for CountingEngine {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn identity(&self) -> Result<EngineIdentity, EngineError> {
        self.count();
        self.inner.identity().await
    }
    async fn subscribe(&self) -> Result<EventStream, EngineError> {
        self.count();
        self.inner.subscribe().await
    }
    async fn list(&self) -> Result<Vec<String>, EngineError> {
        self.count();
        self.inner.list().await
    }
    async fn inspect(&self, id: &str) -> Result<Option<ContainerRecord>, EngineError> {
        self.count();
        self.inner.inspect(id).await
    }
}

/// One node of the simulated fleet.
pub struct SimNode {
    /// Its API address.
    pub addr: String,
    /// Its engine, counted.
    pub engine: Arc<CountingEngine>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimNode {
    /// Starts a node on `listener`.
    pub fn start(
        listener: tokio::net::TcpListener,
        config: NodeConfig,
        engine: Arc<dyn Engine>,
        peers: Arc<dyn PeerTransport>,
    ) -> Result<SimNode> {
        let addr = listener.local_addr()?.to_string();
        let name = config.node_id.0.clone();
        let engine = Arc::new(CountingEngine::new(engine));
        let stop = CancellationToken::new();
        let task = {
            let (engine, stop, name) = (engine.clone(), stop.clone(), name.clone());
            tokio::spawn(async move {
                if let Err(e) = run_with(
                    config,
                    vec![engine],
                    listener,
                    peers,
                    Arc::new(shoal_node::gossip::UdpNet),
                    stop,
                )
                .await
                {
                    eprintln!("shoal-sim: node {name} failed: {e}");
                }
            })
        };
        Ok(SimNode {
            addr,
            engine,
            stop,
            task: Some(task),
        })
    }

    /// Stops the node: its HTTP and gossip go silent at once, which its
    /// peers cannot tell from a crash.
    pub async fn stop(&mut self) {
        if let Some(task) = self.halt() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    /// Stops the node without waiting: answers its task, to await later.
    pub fn halt(&mut self) -> Option<JoinHandle<()>> {
        self.stop.cancel();
        self.task.take()
    }

    /// True until `stop` or `halt`.
    pub fn running(&self) -> bool {
        self.task.is_some()
    }
}

/// Binds `n` loopback listeners.
pub async fn listeners(n: usize) -> Result<Vec<tokio::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a loopback port")?,
        );
    }
    Ok(out)
}

/// The addresses of `listeners`, as seeds.
pub fn addresses(listeners: &[tokio::net::TcpListener]) -> Result<Vec<String>> {
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<std::io::Result<_>>()?)
}

/// Asks nodes over HTTP, as a user would: past the hot cache, except
/// [`Client::plain`].
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client with keep-alive connections.
    pub fn new() -> Self {
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The status of `GET http://{addr}{path}`, `Cache-Control: no-cache`.
    pub async fn status(&self, addr: &str, path: &str) -> Result<u16> {
        let r = self
            .http
            .get(format!("http://{addr}{path}"))
            .header("cache-control", "no-cache")
            .send()
            .await?;
        let status = r.status().as_u16();
        r.bytes().await?;
        Ok(status)
    }

    /// The status and body of a GET of `path` at `addr`, uncached.
    pub async fn answer(&self, addr: &str, path: &str) -> Result<(u16, String)> {
        let r = self
            .http
            .get(format!("http://{addr}{path}"))
            .header("cache-control", "no-cache")
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await?))
    }

    /// How the node at `addr` answered a lookup of `reference`
    /// (`x-shoal-path`), `None` when it did not find it.
    pub async fn path_of(&self, addr: &str, reference: &str) -> Result<Option<String>> {
        let (status, path) = self.lookup(addr, reference, true).await?;
        Ok(path.filter(|_| (200..300).contains(&status)))
    }

    /// A lookup of `reference` at `addr` as a script asks it: a plain GET,
    /// no `Cache-Control`, so the node may answer from its hot cache. The
    /// status and how the node answered (`x-shoal-path`, when it says).
    pub async fn plain(&self, addr: &str, reference: &str) -> Result<(u16, Option<String>)> {
        self.lookup(addr, reference, false).await
    }

    async fn lookup(
        &self,
        addr: &str,
        reference: &str,
        no_cache: bool,
    ) -> Result<(u16, Option<String>)> {
        let mut request = self
            .http
            .get(format!("http://{addr}/v1/containers/{reference}"));
        if no_cache {
            request = request.header("cache-control", "no-cache");
        }
        let r = request.send().await?;
        let path = r
            .headers()
            .get("x-shoal-path")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = r.status().as_u16();
        r.bytes().await?;
        Ok((status, path))
    }

    /// The JSON of `GET http://{addr}{path}`.
    pub async fn json(&self, addr: &str, path: &str) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("http://{addr}{path}"))
            .header("cache-control", "no-cache")
            .send()
            .await?
            .json()
            .await?)
    }

    /// How many members the node at `addr` sees alive.
    pub async fn alive(&self, addr: &str) -> usize {
        match self.json(addr, "/v1/nodes").await {
            Ok(v) => v["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|n| n["state"] == "alive").count())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// The node's metrics, each series summed over its labels.
    pub async fn metrics(&self, addr: &str) -> Result<HashMap<String, f64>> {
        let text = self
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let mut out = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.parse::<f64>() {
                *out.entry(name.to_owned()).or_default() += v;
            }
        }
        Ok(out)
    }

    /// A metric summed over nodes.
    pub async fn fleet_metric(&self, nodes: &[&SimNode], name: &str) -> Result<f64> {
        Ok(self.fleet_metrics(nodes, &[name]).await?[0])
    }

    /// Metrics summed over nodes, in the order of `names`, from one
    /// scrape of each node.
    pub async fn fleet_metrics(&self, nodes: &[&SimNode], names: &[&str]) -> Result<Vec<f64>> {
        let mut totals = vec![0.0; names.len()];
        for n in nodes {
            let scraped = self.metrics(&n.addr).await?;
            for (total, name) in totals.iter_mut().zip(names) {
                *total += scraped.get(*name).copied().unwrap_or(0.0);
            }
        }
        Ok(totals)
    }

    /// Polls `reference` at `addr` back to back until it is found (`true`)
    /// or gone (`false`); the time that took, or an error after `limit`.
    pub async fn wait_for(
        &self,
        addr: &str,
        reference: &str,
        found: bool,
        limit: Duration,
    ) -> Result<Duration> {
        self.poll(addr, reference, found, limit, Duration::ZERO)
            .await
    }

    /// As [`Client::wait_for`], resting `pause` between polls (many pollers
    /// at once would otherwise be most of the load they measure).
    pub async fn poll(
        &self,
        addr: &str,
        reference: &str,
        found: bool,
        limit: Duration,
        pause: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let path = format!("/v1/containers/{reference}");
        loop {
            // A slow or failed answer (a node forwarding to an owner that
            // just died) is not an answer: ask again until the limit.
            let status = match self.status(addr, &path).await {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            };
            if status == if found { "200" } else { "404" } {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!(
                    "{reference} was still {} at {addr} after {limit:?} (last answer: {status})",
                    if found { "missing" } else { "there" }
                );
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Percentiles of timed samples, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of `samples`.
    pub fn of(samples: &[Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut us: Vec<u64> = samples.iter().map(|d| d.as_micros() as u64).collect();
        us.sort_unstable();
        let at = |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1];
        Latency {
            n: us.len(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: us[us.len() - 1],
        }
    }
}

/// Progress on stderr.
pub fn say(msg: impl AsRef<str>) {
    eprintln!("shoal-sim: {}", msg.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = Latency::of(&samples);
        assert_eq!(
            (l.n, l.p50_us, l.p90_us, l.p99_us, l.max_us),
            (100, 50, 90, 99, 100)
        );
        assert_eq!(Latency::of(&[]).n, 0);
        let one = Latency::of(&[Duration::from_micros(7)]);
        assert_eq!((one.p50_us, one.p99_us), (7, 7));
    }
}
