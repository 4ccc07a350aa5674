//! The `shoal` binary: parses the command line, sets up logging and runs the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A cluster node speaking Apache Tribes' wire format"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGINT or SIGTERM, then leave the cluster gracefully.
    Run {
        /// TOML configuration file; without it, every default applies.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Start 3 nodes on loopback as separate processes and walk through
    /// discovery, acknowledged messages and failure detection.
    Demo,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, without a backtrace: these are user errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .init();
    match cli.command {
        Command::Run { config } => {
            let cfg = match &config {
                Some(path) => shoal::Config::load(path)?,
                None => shoal::Config::default(),
            };
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let what = match &config {
                Some(p) => format!("starting the node configured in {}", p.display()),
                None => "starting the node (default configuration)".into(),
            };
            rt.block_on(run(cfg)).context(what)
        }
        Command::Demo => shoal::demo::run(),
    }
}

/// Colour codes only for a person at a terminal: not when stderr goes to a
/// file or a pipe (`shoal run 2> node.log`, the demo's and tests' logs), and
/// never when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

async fn run(cfg: shoal::Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let node = shoal::Node::start(cfg).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    node.shutdown().await;
    Ok(())
}
