//! shoal's HTTP load generator, on hyper: a fixed number of connections
//! (one request in flight on each), for a duration or a request count,
//! after a warm-up, over keys chosen uniformly or by a Zipf law from a list.
//! It reports throughput, latency percentiles from an HDR histogram,
//! errors, and which node answered how (`x-shoal-node`, `x-shoal-path`).
//!
//! Every run is bounded: by its duration or count, and always by
//! [`LoadSpec::max_duration`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// How keys are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyChoice {
    /// Every key equally often.
    Uniform,
    /// Key of rank k with weight 1/k^s.
    Zipf(f64),
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Base URLs (`http://host:port`); connections are spread over them.
    pub servers: Vec<String>,
    /// Path template; `{key}` is replaced by a key.
    pub path: String,
    /// The keys.
    pub keys: Vec<String>,
    /// How keys are chosen.
    pub choice: KeyChoice,
    /// Connections, each with one request in flight.
    pub concurrency: usize,
    /// Stop after this long (measured part)...
    pub duration: Option<Duration>,
    /// ...or after this many measured requests.
    pub requests: Option<u64>,
    /// Requests before this are not measured.
    pub warmup: Duration,
    /// A hard bound on the whole run, warm-up included.
    pub max_duration: Duration,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The spec is unusable.
    #[error("{0}")]
    Spec(String),
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Measured requests that got an answer (any status).
    pub requests: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with another status, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connect, timeout, reset).
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Answers per second.
    pub throughput: f64,
    /// Latency percentiles, microseconds.
    pub latency_us: Percentiles,
    /// Answers per `x-shoal-node`.
    pub nodes: BTreeMap<String, u64>,
    /// Answers per `x-shoal-path`.
    pub paths: BTreeMap<String, u64>,
    /// Connections.
    pub concurrency: usize,
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Report {
    /// A few lines for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} requests in {:.2} s over {} connections: {:.0} req/s\n\
             latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}\n\
             ok {}  other statuses {:?}  errors {}\n",
            self.requests,
            self.seconds,
            self.concurrency,
            self.throughput,
            self.latency_us.p50,
            self.latency_us.p90,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            self.latency_us.mean,
            self.ok,
            self.statuses,
            self.errors,
        );
        if !self.nodes.is_empty() {
            out.push_str(&format!("nodes: {:?}\n", self.nodes));
        }
        if !self.paths.is_empty() {
            out.push_str(&format!("paths: {:?}\n", self.paths));
        }
        out
    }
}

/// Draws key indexes by a Zipf law over `n` ranks (an exact inverse CDF).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, u: f64) -> usize {
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    nodes: BTreeMap<String, u64>,
    paths: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        if let Some(h) = other.hist {
            match &mut self.hist {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => self.hist = Some(h),
            }
        }
        self.ok += other.ok;
        self.errors += other.errors;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.nodes {
            *self.nodes.entry(k).or_default() += v;
        }
        for (k, v) in other.paths {
            *self.paths.entry(k).or_default() += v;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, three significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs a load and reports on it.
pub async fn run(spec: LoadSpec) -> Result<Report, BenchError> {
    if spec.servers.is_empty() {
        return Err(BenchError::Spec("no server to load".into()));
    }
    if spec.keys.is_empty() && spec.path.contains("{key}") {
        return Err(BenchError::Spec(
            "no keys: give a key file or a synthetic prefix".into(),
        ));
    }
    if spec.concurrency == 0 {
        return Err(BenchError::Spec("concurrency must be at least 1".into()));
    }
    if spec.duration.is_none() && spec.requests.is_none() {
        return Err(BenchError::Spec(
            "give a duration or a request count".into(),
        ));
    }
    for s in &spec.servers {
        if !s.starts_with("http://") {
            return Err(BenchError::Spec(format!(
                "{s:?}: only http:// servers are loaded"
            )));
        }
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(spec.concurrency)
        .build(connector);
    let zipf = match spec.choice {
        KeyChoice::Zipf(s) => Some(Arc::new(Zipf::new(spec.keys.len().max(1), s))),
        KeyChoice::Uniform => None,
    };
    let spec = Arc::new(spec);
    let started = Instant::now();
    let measuring_from = started + spec.warmup;
    let hard_stop = started + spec.max_duration;
    let measured = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let progress = spec.progress.then(|| {
        let (measured, stop) = (measured.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = measured.load(Ordering::Relaxed);
                eprintln!(
                    "bench: {:>5.1} s  {} requests  {} req/s",
                    started.elapsed().as_secs_f64(),
                    now,
                    now - last
                );
                last = now;
            }
        })
    });

    let mut workers = Vec::with_capacity(spec.concurrency);
    for w in 0..spec.concurrency {
        let (client, spec, zipf) = (client.clone(), spec.clone(), zipf.clone());
        let (measured, stop) = (measured.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let server = &spec.servers[w % spec.servers.len()];
            let mut tally = Tally {
                hist: Some(new_histogram()),
                ..Tally::default()
            };
            // Sendable across awaits, unlike the thread-local generator.
            let mut rng = rand::rngs::StdRng::from_os_rng();
            loop {
                let now = Instant::now();
                if stop.load(Ordering::Relaxed) || now >= hard_stop {
                    break;
                }
                if spec.duration.is_some_and(|d| now >= measuring_from + d) {
                    break;
                }
                let key = if spec.keys.is_empty() {
                    ""
                } else {
                    let i = match &zipf {
                        Some(z) => z.sample(rng.random::<f64>()),
                        None => rng.random_range(0..spec.keys.len()),
                    };
                    spec.keys[i].as_str()
                };
                let uri = format!("{server}{}", spec.path.replace("{key}", key));
                let mut request = hyper::Request::get(uri);
                for (k, v) in &spec.headers {
                    request = request.header(k, v);
                }
                let Ok(request) = request.body(Empty::<Bytes>::new()) else {
                    tally.errors += 1;
                    continue;
                };
                let sent = Instant::now();
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    let response = client.request(request).await?;
                    let (parts, body) = response.into_parts();
                    // Read the whole body: a lookup is not done before it.
                    body.collect().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(parts)
                })
                .await;
                let took = sent.elapsed();
                if sent < measuring_from {
                    continue;
                }
                match answer {
                    Ok(Ok(parts)) => {
                        if let Some(h) = &mut tally.hist {
                            let _ = h.record((took.as_micros() as u64).max(1));
                        }
                        if parts.status.is_success() {
                            tally.ok += 1;
                        } else {
                            *tally.statuses.entry(parts.status.as_u16()).or_default() += 1;
                        }
                        for (header, counts) in [
                            ("x-shoal-node", &mut tally.nodes),
                            ("x-shoal-path", &mut tally.paths),
                        ] {
                            if let Some(v) = parts.headers.get(header).and_then(|v| v.to_str().ok())
                            {
                                *counts.entry(v.to_owned()).or_default() += 1;
                            }
                        }
                    }
                    _ => tally.errors += 1,
                }
                let n = measured.fetch_add(1, Ordering::Relaxed) + 1;
                if spec.requests.is_some_and(|limit| n >= limit) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.merge(t);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    let seconds = started
        .elapsed()
        .saturating_sub(spec.warmup)
        .as_secs_f64()
        .max(1e-9);
    let hist = total.hist.unwrap_or_else(new_histogram);
    let answered = hist.len();
    Ok(Report {
        requests: answered,
        ok: total.ok,
        statuses: total.statuses,
        errors: total.errors,
        seconds,
        throughput: answered as f64 / seconds,
        latency_us: Percentiles {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            mean: hist.mean(),
        },
        nodes: total.nodes,
        paths: total.paths,
        concurrency: spec.concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_ranks_and_covers_the_range() {
        let z = Zipf::new(100, 1.1);
        assert_eq!(z.sample(0.0), 0);
        assert_eq!(z.sample(1.0), 99);
        let mut counts = [0u32; 100];
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            counts[z.sample(rng.random::<f64>())] += 1;
        }
        assert!(counts[0] > counts[9] && counts[9] > counts[99]);
    }

    async fn server() -> String {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/v1/containers/{key}",
            get(
                |axum::extract::Path(k): axum::extract::Path<String>| async move {
                    let status = if k == "missing" { 404 } else { 200 };
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("x-shoal-node", "n1"), ("x-shoal-path", "owner")],
                        "{}",
                    )
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn spec(servers: Vec<String>, keys: Vec<String>) -> LoadSpec {
        LoadSpec {
            servers,
            path: "/v1/containers/{key}".into(),
            keys,
            choice: KeyChoice::Uniform,
            concurrency: 4,
            duration: None,
            requests: Some(200),
            warmup: Duration::ZERO,
            max_duration: Duration::from_secs(30),
            headers: vec![],
            progress: false,
        }
    }

    #[tokio::test]
    async fn a_counted_run_makes_that_many_requests_and_tallies_the_headers() {
        let s = server().await;
        let r = run(spec(vec![s], vec!["a".into(), "missing".into()]))
            .await
            .unwrap();
        // Workers may each finish the request in flight when the count is
        // reached: at most concurrency - 1 more.
        assert!((200..=203).contains(&r.requests), "{}", r.requests);
        assert_eq!(
            r.ok + r.statuses.get(&404).copied().unwrap_or(0),
            r.requests
        );
        assert!(r.ok > 0 && r.statuses[&404] > 0);
        assert_eq!(r.nodes["n1"], r.requests);
        assert_eq!(r.paths["owner"], r.requests);
        assert_eq!(r.errors, 0);
        assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    }

    #[tokio::test]
    async fn an_unreachable_server_counts_errors_and_still_ends() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = spec(vec![format!("http://127.0.0.1:{port}")], vec!["a".into()]);
        s.requests = Some(20);
        let r = run(s).await.unwrap();
        assert_eq!(r.requests, 0);
        assert!(r.errors >= 20);
    }

    #[tokio::test]
    async fn a_spec_without_bounds_or_keys_is_refused() {
        let mut s = spec(vec!["http://127.0.0.1:1".into()], vec![]);
        assert!(run(s.clone()).await.is_err());
        s.keys = vec!["a".into()];
        s.requests = None;
        assert!(run(s).await.is_err());
    }
}
