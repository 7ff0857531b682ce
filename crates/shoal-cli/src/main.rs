//! The `shoal` command: run a node (`shoal node`) or ask the fleet
//! (`shoal get`, `ls`, `nodes`, `projects`). `main` only parses flags and
//! hands over; the logic lives in the library crates.

mod bench_cmd;
mod client;
mod migrate_cmd;
mod node_cmd;
mod table;

use clap::{Parser, Subcommand};

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
    /// Bring a history store's schema up to date.
    Migrate(migrate_cmd::MigrateArgs),
    /// Load a node or nginx with lookups and report throughput and latency.
    Bench(Box<bench_cmd::BenchArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
