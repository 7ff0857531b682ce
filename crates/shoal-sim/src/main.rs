//! `shoal-sim`: the benchmark scenarios that need a fleet more than a load
//! generator. Every scenario runs real nodes (`shoal_node::run_with`) in
//! this process, talking real HTTP and real UDP gossip on loopback, and
//! prints one JSON report on stdout (progress on stderr):
//!
//! - `scale`: 50 nodes holding 100,000 synthetic containers: keys moved by
//!   a join and a leave, bytes per record copy, publish traffic per event,
//!   engine calls per lookup, freshness of synthetic events, convergence
//!   after a death and after a join;
//! - `fallback`: the cost of a lookup whose owners cannot be reached,
//!   against the no-op endpoint of the same node;
//! - `docker`: freshness of `docker run` / `docker rm` on a real engine as
//!   seen through another node (with `no-cache`, and with plain GETs at a
//!   node that does not own the name), and the same name lookups answered
//!   by asking the engine (list + inspect);
//! - `history`: history writes sustained on SQLite and PostgreSQL, `?at=`
//!   on a million changes, and the watcher's freshness with history on
//!   against off (`make bench-history`).
//!
//! `make bench` runs all three and writes BENCHMARKS.md.

mod docker;
mod fallback;
mod fleet;
mod history;
mod scale;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Counts the bytes the process holds, for bytes per record copy.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Bytes allocated and not yet freed, process-wide.
pub fn allocated() -> usize {
    ALLOCATOR.allocated()
}

/// CPU time this process has used (user and system, every thread), from
/// `/proc/self/stat`; `None` where that cannot be read.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: fields are
    // counted after its closing one. utime and stime are fields 14 and 15,
    // in clock ticks, which Linux reports at 100 per second.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

#[derive(Parser, Debug)]
#[command(name = "shoal-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Many nodes, many containers: ring moves, memory, publish traffic,
    /// freshness, convergence.
    Scale(scale::ScaleArgs),
    /// Lookups whose owners are unreachable (scatter to every node).
    Fallback(fallback::FallbackArgs),
    /// Freshness and the ask-the-engine baseline on a real Docker engine.
    Docker(docker::DockerArgs),
    /// History: writes sustained, `?at=` on a million changes, and the
    /// watcher's freshness with history on against off.
    History(history::HistoryArgs),
}

/// Parses `10s`, `250ms`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn json<T: serde::Serialize>(report: anyhow::Result<T>) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(report?)?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The nodes' own logs, on stderr: warnings unless RUST_LOG says more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-sim: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::Scale(a) => json(scale::run(a).await),
            Scenario::Fallback(a) => json(fallback::run(a).await),
            Scenario::Docker(a) => json(docker::run(a).await),
            Scenario::History(a) => json(history::run(a).await),
        }
    });
    // Nodes' tasks may still be winding down; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
