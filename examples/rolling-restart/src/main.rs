//! `rolling-restart`: the driver of examples/rolling-restart (see its
//! README). Parses the command line and runs one roll or the deploy
//! timings; exits 1 if a session was lost, a request failed after its
//! retry, or the filter did not change on every node; 2 on a set-up error.
//!
//! ```text
//! rolling-restart --mode restart|deploy|deploy-timing [--users 200] [--workers 8]
//!     [--pre 5] [--post 5] [--timeout 5] [--no-restarts] [--no-drain] [--repeat 7] [--traffic]
//!     [--bin-dir DIR] [--guest-dir DIR] [--cache-dir DIR] [--json FILE] [--keep]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shoal_rolling_restart::{Binaries, LoadSpec, Mode, Options, deploy_timing, roll};

const USAGE: &str = "\
usage: rolling-restart --mode restart|deploy|deploy-timing [options]

  --mode M          restart: restart the nodes one at a time onto filter v2;
                    deploy: one `shoal plugin deploy` of filter v2, then a
                    rolling restart with the configs unchanged;
                    deploy-timing: deploy times of a ~100 KB component to
                    3 nodes, warm and cold compile cache (no traffic)
  --users N         users, each with a session and a cart (200)
  --workers N       load threads = requests in flight (8)
  --pre S           seconds of traffic before the roll (5)
  --post S          seconds of traffic after the roll (5)
  --timeout S       per-request timeout in seconds (5)
  --no-restarts     deploy: do not restart the nodes after the deploy
  --no-drain        do not take a node out of httpd's balancer before its
                    restart (and put it back once ready): httpd finds out
                    by itself (refused connects, retry=5 s)
  --repeat N        deploy-timing: deploys per kind (7)
  --traffic         deploy-timing: with httpd and the users' traffic
  --bin-dir DIR     where shoal and webapp are (default: beside this program)
  --guest-dir DIR   the guest components (default: <target>/guests/wasm32-wasip2/release)
  --cache-dir DIR   the nodes' compiled-component cache (default:
                    <target>/tmp/component-cache, as the host's tests; the
                    driver compiles every component into it first)
  --json FILE       also write the report as JSON
  --keep            keep the run's directory (configs, node logs)";

fn parse() -> Result<(Options, Option<PathBuf>), String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let mut opts = Options {
        mode: Mode::Restart,
        bins: Binaries::beside(&exe_dir),
        load: LoadSpec {
            users: 200,
            workers: 8,
            items: 4,
            check_every: 5,
            timeout: Duration::from_secs(5),
        },
        pre: Duration::from_secs(5),
        post: Duration::from_secs(5),
        deploy_restarts: true,
        repeat: 7,
        timing_traffic: false,
        cache_dir: None,
        keep: false,
        drain: true,
    };
    let mut mode = None;
    let mut json = None;
    let mut guest_dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let secs = |name: &str, v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!("{name}: 0 to 3600 seconds, not {v:?}"))
        };
        let count = |name: &str, v: String, max: usize| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or(format!("{name}: 1 to {max}, not {v:?}"))
        };
        match a.as_str() {
            "--mode" => {
                mode = Some(match value("--mode")?.as_str() {
                    "restart" => Mode::Restart,
                    "deploy" => Mode::Deploy,
                    "deploy-timing" => Mode::DeployTiming,
                    m => {
                        return Err(format!(
                            "--mode: restart, deploy or deploy-timing, not {m:?}"
                        ));
                    }
                })
            }
            "--users" => opts.load.users = count("--users", value("--users")?, 100_000)?,
            "--workers" => opts.load.workers = count("--workers", value("--workers")?, 256)?,
            "--pre" => opts.pre = secs("--pre", value("--pre")?)?,
            "--post" => opts.post = secs("--post", value("--post")?)?,
            "--timeout" => {
                opts.load.timeout =
                    secs("--timeout", value("--timeout")?)?.max(Duration::from_millis(100))
            }
            "--no-restarts" => opts.deploy_restarts = false,
            "--no-drain" => opts.drain = false,
            "--traffic" => opts.timing_traffic = true,
            "--repeat" => opts.repeat = count("--repeat", value("--repeat")?, 1000)?,
            "--bin-dir" => {
                let dir = PathBuf::from(value("--bin-dir")?);
                let guests = opts.bins.guests.clone();
                opts.bins = Binaries::beside(&dir);
                opts.bins.guests = guests;
            }
            "--guest-dir" => guest_dir = Some(PathBuf::from(value("--guest-dir")?)),
            "--cache-dir" => opts.cache_dir = Some(PathBuf::from(value("--cache-dir")?)),
            "--json" => json = Some(PathBuf::from(value("--json")?)),
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    opts.mode = mode.ok_or(USAGE)?;
    if let Some(g) = guest_dir {
        opts.bins.guests = g;
    }
    Ok((opts, json))
}

fn main() -> ExitCode {
    let (opts, json) = match parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match opts.mode {
        Mode::DeployTiming => deploy_timing(&opts).map(|r| {
            r.print();
            (r.ok(), r.to_json())
        }),
        _ => roll(&opts).map(|r| {
            r.print();
            (r.ok(), r.to_json())
        }),
    };
    match outcome {
        Ok((ok, report)) => {
            if let Some(path) = json
                && let Err(e) = std::fs::write(&path, report.to_string())
            {
                eprintln!("error: writing {}: {e}", path.display());
                return ExitCode::from(2);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
