//! `shoal-sim history`: what keeping history costs.
//!
//! - **Writes sustained**: `--changes` changes (default a million: 50,000
//!   containers, 20 changes each, over 30 days, addresses reused from a
//!   pool) recorded the way a node's writer records them, in batches of
//!   512, one transaction each: into the embedded SQLite store and, when
//!   Debian's PostgreSQL is installed, into a PostgreSQL this run starts.
//! - **`?at=` on that store**: who had a random address at a random time
//!   (`Store::as_of`), and a name's changes (`Store::query`), timed one at
//!   a time.
//! - **The watcher's freshness with history on against off**: a synthetic
//!   engine starts `--starts` containers at `--rate` a second; the time
//!   from each start to its delta leaving the watcher, once with no
//!   history and once with a writer on an embedded store, in the same run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shoal_core::{ContainerRecord, EngineId, LookupKey, NetworkAttachment, NodeId};
use shoal_engine::{Engines, EnginesConfig, SyntheticEngine, SyntheticSpec, WatcherConfig};
use shoal_history::{Change, Kind, Query, Store};
use tokio_util::sync::CancellationToken;

use crate::fleet::say;

/// Flags of `shoal-sim history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Changes to write.
    #[arg(long, default_value_t = 1_000_000)]
    changes: usize,
    /// Containers they are about (each gets changes / containers).
    #[arg(long, default_value_t = 50_000)]
    containers: usize,
    /// Distinct addresses, reused over time.
    #[arg(long, default_value_t = 60_000)]
    ips: usize,
    /// `?at=` queries to time.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Container starts for the freshness runs.
    #[arg(long, default_value_t = 2000)]
    starts: usize,
    /// Starts a second in the freshness runs.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Skip PostgreSQL even when it is installed.
    #[arg(long)]
    no_postgres: bool,
}

/// Latencies, in ms.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub n: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            n: h.len(),
        }
    }
}

/// One store's figures.
#[derive(Debug, Serialize)]
pub struct StoreReport {
    pub backend: &'static str,
    pub changes: usize,
    pub write_s: f64,
    pub writes_per_s: f64,
    /// Bytes on disk (SQLite's file and its WAL), when known.
    pub bytes: Option<u64>,
    pub as_of_ip: Latency,
    pub name_history: Latency,
}

/// The watcher's freshness, with and without history.
#[derive(Debug, Serialize)]
pub struct Freshness {
    pub off: Latency,
    pub on: Latency,
    /// Changes the writer recorded during the run with history.
    pub written: u64,
    pub dropped: u64,
}

/// The report of `shoal-sim history`.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub stores: Vec<StoreReport>,
    pub freshness: Freshness,
}

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_790_000_000_000;

fn ip_of(i: usize) -> std::net::IpAddr {
    let i = i as u32;
    std::net::Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).into()
}

fn record(c: usize, name: &str, ip: std::net::IpAddr) -> ContainerRecord {
    let mut r = shoal_engine::synthetic_record("bench-", c, &EngineId("engine-bench".into()));
    r.id = format!(
        "{:016x}{c:048x}",
        (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    r.names = vec![name.to_owned()];
    r.networks = [(
        "bridge".to_owned(),
        NetworkAttachment {
            ip: Some(ip),
            ..Default::default()
        },
    )]
    .into_iter()
    .collect();
    r.node = NodeId(format!("node{}", c % 8));
    r
}

/// How long each container lives.
const LIFE_MS: i64 = 2 * DAY_MS;

/// Container `c` of `n`: a life of two days that starts somewhere in the
/// span, its `per` changes spread evenly over it, on an address from the
/// pool (so an address had several containers over time).
fn life(c: usize, n: usize, per: usize, ips: usize, span_ms: i64) -> Vec<Change> {
    let start = T0 + (c as i64 * (span_ms - LIFE_MS)) / n as i64;
    let step = LIFE_MS / per as i64;
    let name = format!("svc{}-{c}", c % 5000);
    let ip = ip_of((c * 7919) % ips);
    let mut r = record(c, &name, ip);
    let kinds = [
        Kind::Health,
        Kind::Renamed,
        Kind::NetworkConnected,
        Kind::Paused,
        Kind::Unpaused,
        Kind::NetworkDisconnected,
    ];
    (0..per)
        .map(|i| {
            let kind = match i {
                0 => Kind::Started,
                _ if i == per - 2 => Kind::Stopped,
                _ if i == per - 1 => Kind::Removed,
                _ => kinds[i % kinds.len()],
            };
            if kind == Kind::Renamed {
                r.names = vec![format!("{name}-r{i}")];
            }
            Change {
                kind,
                event_key: format!("ev:{i}"),
                at_ms: start + i as i64 * step,
                node: r.node.clone(),
                exit_code: (kind == Kind::Stopped).then_some(0),
                detail: None,
                record: r.clone(),
            }
        })
        .collect()
}

async fn bench_store(
    backend: &'static str,
    url: &str,
    file: Option<&std::path::Path>,
    args: &HistoryArgs,
) -> Result<StoreReport> {
    let store = Store::connect(url).await?;
    store.migrate().await?;
    let per = (args.changes / args.containers).max(2);
    let span = 30 * DAY_MS;
    say(format!(
        "{backend}: writing {} changes ({} containers × {per}) in batches of 512",
        args.containers * per,
        args.containers
    ));
    let started = Instant::now();
    let mut batch: Vec<Change> = Vec::with_capacity(512);
    let mut written = 0;
    for c in 0..args.containers {
        for change in life(c, args.containers, per, args.ips, span) {
            batch.push(change);
            if batch.len() == 512 {
                written += store.record(&batch).await?;
                batch.clear();
            }
        }
        if c % 10_000 == 9_999 {
            say(format!(
                "{backend}: {} changes, {:.0} s",
                (c + 1) * per,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    written += store.record(&batch).await?;
    let write_s = started.elapsed().as_secs_f64();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut as_of = Histogram::<u64>::new(3)?;
    let mut found = 0;
    for _ in 0..args.queries {
        let ip = ip_of(rng.random_range(0..args.ips));
        let t = T0 + rng.random_range(0..span);
        let began = Instant::now();
        found += store.as_of(&LookupKey::Ip(ip), t).await?.len();
        as_of.record(began.elapsed().as_micros() as u64)?;
    }
    say(format!(
        "{backend}: {} ?at= queries by address, {found} containers found",
        args.queries
    ));
    let mut by_name = Histogram::<u64>::new(3)?;
    for _ in 0..args.queries {
        let c = rng.random_range(0..args.containers);
        let q = Query {
            name: Some(format!("svc{}-{c}", c % 5000)),
            limit: 100,
            ..Default::default()
        };
        let began = Instant::now();
        store.query(&q).await?;
        by_name.record(began.elapsed().as_micros() as u64)?;
    }
    let bytes = file.map(|f| {
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", f.display())).ok())
            .map(|m| m.len())
            .sum()
    });
    Ok(StoreReport {
        backend,
        changes: written as usize,
        write_s,
        writes_per_s: written as f64 / write_s,
        bytes,
        as_of_ip: Latency::of(&as_of),
        name_history: Latency::of(&by_name),
    })
}

/// Starts containers on a synthetic engine and times each one's delta out
/// of the watcher, with or without a history writer.
async fn freshness(
    args: &HistoryArgs,
    history: Option<&std::path::Path>,
) -> Result<(Histogram<u64>, u64, u64)> {
    let engine = SyntheticEngine::new(SyntheticSpec {
        count: 100,
        prefix: "fresh-".into(),
        engine_id: EngineId("engine-fresh".into()),
    });
    let stop = CancellationToken::new();
    let writer = match history {
        Some(dir) => {
            let url = format!("sqlite://{}", dir.join("fresh.db").display());
            let (h, rx) = shoal_node::history::History::new(&url, 100_000);
            tokio::spawn(shoal_node::history::run_writer(
                h.clone(),
                rx,
                NodeId("fresh".into()),
                true,
                Duration::from_secs(5),
                stop.clone(),
            ));
            Some(h)
        }
        None => None,
    };
    let (handle, _task) = Engines::spawn(
        vec![Arc::new(engine.clone())],
        EnginesConfig {
            watcher: WatcherConfig {
                node: NodeId("fresh".into()),
                history: writer.as_ref().map(|h| h.sink()),
                ..Default::default()
            },
            withdraw_after: Duration::from_secs(60),
        },
        stop.clone(),
    );
    handle.ready().await;
    let mut deltas = handle.subscribe();
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = args.starts;
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            while (h.len() as usize) < total {
                let Ok(batch) = deltas.recv().await else {
                    break;
                };
                let now = Instant::now();
                for d in batch.iter() {
                    if let Some(t) = sent.lock().unwrap().remove(&d.record().id) {
                        let _ = h.record(now.duration_since(t).as_micros() as u64);
                    }
                }
            }
            h
        })
    };
    let gap = Duration::from_micros(1_000_000 / args.rate.max(1));
    for i in 0..total {
        let r = shoal_engine::synthetic_record("run-", 1000 + i, &EngineId("engine-fresh".into()));
        sent.lock().unwrap().insert(r.id.clone(), Instant::now());
        engine.run(r);
        tokio::time::sleep(gap).await;
    }
    let h = tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .context("the deltas did not all arrive within a minute")??;
    // Let the writer finish what it holds before reading its counts.
    let (mut written, mut dropped) = (0, 0);
    if let Some(w) = &writer {
        for _ in 0..100 {
            let s = w.status();
            (written, dropped) = (s.written, s.dropped);
            if s.queued == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    Ok((h, written, dropped))
}

pub async fn run(args: HistoryArgs) -> Result<HistoryReport> {
    let dir = tempfile::tempdir()?;
    let mut stores = Vec::new();
    let file = dir.path().join("history.db");
    let url = format!("sqlite://{}", file.display());
    stores.push(bench_store("sqlite", &url, Some(&file), &args).await?);
    let has_postgres = std::fs::read_dir("/usr/lib/postgresql")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !args.no_postgres && has_postgres {
        let pg = shoal_history::testing::TestPostgres::start();
        stores.push(bench_store("postgres", &pg.url(), None, &args).await?);
    } else {
        say("postgres: skipped (not installed, or --no-postgres)");
    }
    say(format!(
        "freshness: {} starts at {}/s, without history, then with",
        args.starts, args.rate
    ));
    let (off, _, _) = freshness(&args, None).await?;
    let (on, written, dropped) = freshness(&args, Some(dir.path())).await?;
    Ok(HistoryReport {
        stores,
        freshness: Freshness {
            off: Latency::of(&off),
            on: Latency::of(&on),
            written,
            dropped,
        },
    })
}
