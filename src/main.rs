//! The `switchyard` binary: flags → `Config` → logging → `app::run` until SIGTERM/SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use switchyard::config::{Cli, Config};
use switchyard::{app, shutdown};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::from_cli(Cli::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("switchyard: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(app::run(config, async {
        shutdown::signal().await;
        // A second signal while shutting down exits at once.
        tokio::spawn(async {
            shutdown::signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        });
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "switchyard failed");
            ExitCode::from(1)
        }
    }
}
