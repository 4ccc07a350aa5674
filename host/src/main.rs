//! The `shoal` binary: parses the command line, sets up logging and runs the library.

mod admin_client;
mod demo;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: under load the node allocates from
/// several threads at once, and glibc's arena locks then cost 5–20 % of the
/// CPU (docs/benchmarks.md, "Hot paths").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Nodes on loopback as separate processes: session replication in
    /// nine checked steps (the default), or the transport.
    Demo {
        #[command(subcommand)]
        which: Option<DemoCommand>,
    },
    /// Change the plug-ins of a running node (through its admin API).
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// Make a cluster key for `[security] key_file`: writes a new random
    /// key to --out (mode 0600; never overwrites). Copy the file to every
    /// node. To roll a key, see README "Security".
    Keygen {
        /// The key file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// List a running node's members (through its admin API).
    Members {
        /// The node's admin API address.
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
    },
}

const DEFAULT_API: &str = "127.0.0.1:8080";

#[derive(Subcommand)]
enum DemoCommand {
    /// Two nodes walked through Tomcat session replication in nine steps,
    /// each checked: state transfer on join, replication, failover with the
    /// id rebound after a SIGKILL, restart, invalidation, expiry. Exits
    /// non-zero if a check fails.
    Sessions,
    /// Three nodes: discovery, acknowledged messages, failure detection of
    /// a SIGKILLed member, a graceful leave.
    Transport,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Replace the interceptor NAME with the component FILE on the running
    /// node: loaded and initialised first, then swapped atomically; on any
    /// error the old version keeps running and the command fails.
    Swap {
        /// The interceptor's name in the node's chain.
        name: String,
        /// The new `.wasm` component.
        file: PathBuf,
        /// The node's admin API address.
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
    },
    /// Deploy the component FILE as plug-in NAME (an interceptor, or
    /// `session-policy`) to every member of the cluster: the node at --api
    /// sends it to each member, which checks the signature and the
    /// SHA-256, swaps it in, stores it (a restart keeps it) and reports.
    /// One line per member; exits non-zero if any member failed (it keeps
    /// its old version).
    Deploy {
        /// The plug-in's name in the nodes' chains, or `session-policy`.
        name: String,
        /// The new `.wasm` component.
        file: PathBuf,
        /// The operator's signing key (`shoal plugin keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The admin API address of any node of the cluster.
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
    },
    /// Make a deploy signing key: writes the secret key to --out (mode
    /// 0600; never overwrites) and prints the public key for every node's
    /// `[deploy] keys`.
    Keygen {
        /// The key file to write.
        #[arg(long)]
        out: PathBuf,
    },
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
            let rt = cfg.runtime.build().context("starting the async runtime")?;
            let what = match &config {
                Some(p) => format!("starting the node configured in {}", p.display()),
                None => "starting the node (default configuration)".into(),
            };
            rt.block_on(run(cfg, config.as_deref())).context(what)
        }
        Command::Demo { which } => match which.unwrap_or(DemoCommand::Sessions) {
            DemoCommand::Sessions => demo::sessions(),
            DemoCommand::Transport => demo::transport(),
        },
        Command::Plugin {
            action: PluginCommand::Swap { name, file, api },
        } => admin_client::swap(&api, &name, &file),
        Command::Plugin {
            action:
                PluginCommand::Deploy {
                    name,
                    file,
                    key,
                    api,
                },
        } => admin_client::deploy(&api, &name, &file, &key),
        Command::Plugin {
            action: PluginCommand::Keygen { out },
        } => admin_client::keygen(&out),
        Command::Keygen { out } => {
            shoal::security::write_new_key_file(&out)
                .with_context(|| format!("writing the cluster key to {}", out.display()))?;
            println!(
                "wrote a new cluster key to {} (mode 0600)\n\
                 copy it to every node and set [security] key_file; to roll keys, add the new \
                 key as a second line everywhere, then make it the first line, then remove the old one",
                out.display()
            );
            Ok(())
        }
        Command::Members { api } => admin_client::members(&api),
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

async fn run(cfg: shoal::Config, path: Option<&Path>) -> anyhow::Result<()> {
    use std::future::Future;
    use std::pin::Pin;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let node = shoal::Node::start(cfg.clone()).await?;
    // A reload runs beside the signals, so SIGTERM stops the node at once
    // even while a reload compiles (the reload is then abandoned).
    let mut cfg = Some(cfg);
    let mut reloading: Option<Pin<Box<dyn Future<Output = shoal::Config> + '_>>> = None;
    // A SIGHUP during a reload: read the file again once this one is done.
    let mut again = false;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break }
            _ = int.recv() => { tracing::info!("SIGINT received"); break }
            _ = hup.recv() => match cfg.take() {
                Some(c) => reloading = Some(Box::pin(reload(&node, c, path))),
                None => {
                    tracing::info!("SIGHUP: a reload is in progress; reading the file again after it");
                    again = true;
                }
            },
            c = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                reloading = None;
                if std::mem::take(&mut again) {
                    reloading = Some(Box::pin(reload(&node, c, path)));
                } else {
                    cfg = Some(c);
                }
            }
        }
    }
    drop(reloading);
    node.shutdown().await;
    Ok(())
}

/// SIGHUP: reads the config file again and applies its interceptor list
/// (only the difference). A bad file or a plug-in that fails to load leaves
/// everything as it was.
async fn reload(node: &shoal::Node, mut cfg: shoal::Config, path: Option<&Path>) -> shoal::Config {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: the node runs without a config file; nothing to reload");
        return cfg;
    };
    tracing::info!(file = %path.display(), "SIGHUP: reloading the interceptor list");
    let new = match shoal::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: config refused, nothing changed: {e}");
            return cfg;
        }
    };
    let restart = cfg.sections_needing_restart(&new);
    if !restart.is_empty() {
        tracing::warn!(
            "SIGHUP: changes to [{}] need a restart and are not applied; only [[interceptor]] is applied live",
            restart.join("], [")
        );
    }
    match node.reload_plugins(&new).await {
        Ok(report) if !report.changed() => tracing::info!("SIGHUP: interceptor list unchanged"),
        Ok(report) => {
            let summary: Vec<String> = report
                .plugins
                .iter()
                .map(|p| format!("{} {:?}", p.name, p.change).to_lowercase())
                .collect();
            tracing::info!(
                took_ms = format!("{:.1}", report.total_ms),
                reordered = report.reordered,
                "SIGHUP: interceptors applied: {}",
                summary.join(", ")
            );
            cfg.interceptors = new.interceptors;
            cfg.plugins.default_chain = new.plugins.default_chain;
            cfg.base_dir = new.base_dir;
        }
        Err(e) => {
            tracing::error!("SIGHUP: interceptor change refused, the chain is unchanged: {e}")
        }
    }
    cfg
}
