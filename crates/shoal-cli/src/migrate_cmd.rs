//! `shoal migrate`: brings a history store's schema up to date (the
//! embedded migrations), for a PostgreSQL before the nodes start, or the
//! embedded store of this host.

use std::path::PathBuf;

use clap::Args;

/// `shoal migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The history store: postgres://USER@HOST/DB, or sqlite://PATH
    /// [default: the embedded store, sqlite://<data-dir>/history.db].
    #[arg(long, env = "SHOAL_HISTORY")]
    pub history: Option<String>,
    /// Where the embedded store lives [default: /var/lib/shoal for root,
    /// else $XDG_DATA_HOME/shoal or ~/.local/share/shoal].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args
        .history
        .unwrap_or_else(|| shoal_history::default_url(args.data_dir.as_deref()));
    let shown = shoal_history::redacted(&url);
    let store = shoal_history::Store::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the history store {shown}: {e}"))?;
    let version = store
        .migrate()
        .await
        .map_err(|e| anyhow::anyhow!("cannot migrate the history store {shown}: {e}"))?;
    println!("history store {shown}: schema at version {version}");
    Ok(())
}
