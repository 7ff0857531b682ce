//! The `shoal` command: run a node (`shoal node`), ask the fleet
//! (`shoal get`, `ls`, `nodes`, `projects`) or run jobs on it (`shoal run`,
//! `job`, `jobs`). `main` only parses flags and hands over; the logic lives
//! in the library crates.

mod bench_cmd;
mod client;
mod migrate_cmd;
mod node_cmd;
mod table;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc rather than glibc's malloc: allocation and free were about a
/// quarter of a lookup's instructions on a node (callgrind).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// shoal: a fleet-wide container inventory.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: client::ClientArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: watch this host's engine and serve the API.
    Node(Box<node_cmd::NodeArgs>),
    /// Find containers by ID prefix, name or IP address.
    Get(client::GetArgs),
    /// List the fleet's containers, optionally filtered.
    Ls(client::LsArgs),
    /// Show the members of the fleet.
    Nodes,
    /// Follow the fleet's changes, one line each (like kubectl get -w).
    Watch(client::LsArgs),
    /// Show compose projects, or one project's containers.
    Projects(client::ProjectsArgs),
    /// Show what happened to containers: a timeline from the history.
    History(client::HistoryArgs),
    /// Show the scheduler's tasks: spec, last run, outcome, next run.
    Tasks,
    /// Run a container on a node of the fleet, as a job; prints its ID.
    ///
    /// shoal's own flags go before IMAGE: what follows IMAGE is the
    /// container's command, as with `docker run`.
    Run(client::RunArgs),
    /// Show one job: where it runs, its container, how it ended.
    Job(client::JobArgs),
    /// List the fleet's jobs, the oldest first.
    Jobs(client::JobsArgs),
    /// Bring a history store's schema up to date.
    Migrate(migrate_cmd::MigrateArgs),
    /// Load a node or nginx with lookups and report throughput and latency.
    Bench(Box<bench_cmd::BenchArgs>),
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    // `shoal run --wait` waits 60 s unless --timeout was given.
    let timeout_given = matches.value_source("timeout") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => node_cmd::run(*args).await,
            Command::Get(args) => client::get(&cli.client, args).await,
            Command::Ls(args) => client::ls(&cli.client, args).await,
            Command::Nodes => client::nodes(&cli.client).await,
            Command::Watch(args) => client::watch(&cli.client, args).await,
            Command::Projects(args) => client::projects(&cli.client, args).await,
            Command::Bench(args) => bench_cmd::run(&cli.client, *args).await,
            Command::Migrate(args) => migrate_cmd::run(args).await,
            Command::History(args) => client::history(&cli.client, args).await,
            Command::Tasks => client::tasks(&cli.client).await,
            Command::Run(args) => {
                let wait_for = if timeout_given {
                    cli.client.timeout
                } else {
                    client::RUN_WAIT_DEFAULT
                };
                client::run(&cli.client, args, wait_for).await
            }
            Command::Job(args) => client::job(&cli.client, args).await,
            Command::Jobs(args) => client::jobs(&cli.client, args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
