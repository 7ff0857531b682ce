//! `shoal bench`: the load generator of `shoal-bench`, from the command
//! line. Keys come from a file (one per line) or are synthetic
//! (`PREFIX0`…`PREFIX{N-1}`, the names of `--engine synthetic`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shoal_bench::{KeyChoice, LoadSpec};

use crate::client::{ClientArgs, Output};

/// Flags of `shoal bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Servers to load (repeat, or comma-separated) [default: --server].
    #[arg(long = "target", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Path template; {key} is replaced by a key.
    #[arg(long, default_value = "/v1/containers/{key}")]
    pub path: String,
    /// Connections, one request in flight on each.
    #[arg(short, long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to measure (after the warm-up).
    #[arg(short, long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// How many requests to measure.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Unmeasured requests first, for this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// A hard bound on the whole run.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// A file of keys, one per line.
    #[arg(long, conflicts_with = "synthetic_prefix")]
    pub keys: Option<PathBuf>,
    /// Synthetic keys PREFIX0 … PREFIX{N-1}, with --synthetic-count.
    #[arg(long)]
    pub synthetic_prefix: Option<String>,
    /// How many synthetic keys.
    #[arg(long, default_value_t = 1000)]
    pub synthetic_count: usize,
    /// Choose keys by a Zipf law with this exponent instead of uniformly.
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Send Cache-Control: no-cache (skip the nodes' hot cache).
    #[arg(long)]
    pub no_cache: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `shoal bench`.
pub async fn run(client: &ClientArgs, args: BenchArgs) -> anyhow::Result<()> {
    let keys: Vec<String> = match (&args.keys, &args.synthetic_prefix) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the key file {}", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        (None, Some(prefix)) => (0..args.synthetic_count)
            .map(|i| format!("{prefix}{i}"))
            .collect(),
        (None, None) if !args.path.contains("{key}") => Vec::new(),
        (None, None) => {
            bail!("give keys: --keys FILE or --synthetic-prefix P (with --synthetic-count N)")
        }
    };
    if args.duration.is_none() && args.requests.is_none() {
        bail!("give --duration or --requests: every run is bounded");
    }
    if args.zipf.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        bail!("--zipf takes a positive exponent (1.1 is common)");
    }
    let servers = if args.targets.is_empty() {
        vec![client.server.trim_end_matches('/').to_owned()]
    } else {
        args.targets
            .iter()
            .map(|t| t.trim_end_matches('/').to_owned())
            .collect()
    };
    let long_run = args.duration.is_some_and(|d| d >= Duration::from_secs(3));
    let spec = LoadSpec {
        servers,
        path: args.path,
        keys,
        choice: args.zipf.map(KeyChoice::Zipf).unwrap_or(KeyChoice::Uniform),
        concurrency: args.concurrency,
        duration: args.duration,
        requests: args.requests,
        warmup: args.warmup,
        max_duration: args.max_duration,
        headers: if args.no_cache {
            vec![("cache-control".into(), "no-cache".into())]
        } else {
            vec![]
        },
        progress: long_run && !args.quiet,
    };
    let report = shoal_bench::run(spec).await?;
    match client.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", report.text()),
    }
    Ok(())
}
