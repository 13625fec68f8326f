//! `dledger-kv serve --config kv.toml`: one node of the replicated
//! key-value store (see the crate docs and `examples/kv/README.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dledger-kv", about = "A replicated key-value store on dledger")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node until SIGTERM.
    Serve {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Create the data directory if it is missing or empty: the first start
        /// of a new cluster's node only (a restart without it refuses lost data).
        #[arg(long)]
        bootstrap: bool,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let Cmd::Serve { config, bootstrap } = Cli::parse().command;
    let config = match dledger_kv::KvConfig::from_file(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dledger-kv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dledger-kv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dledger_kv::serve(config, bootstrap)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ dledger_kv::ServeError::Fatal(_)) => {
            eprintln!("dledger-kv: stopped: {e}");
            ExitCode::from(70)
        }
        Err(e) => {
            eprintln!("dledger-kv: {e}");
            ExitCode::FAILURE
        }
    }
}
