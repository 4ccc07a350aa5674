//! The rolls: a cluster on filter version 1 under user traffic; a window
//! before, the roll, a window after; then every cart checked and the
//! figures of each phase. And the deploy timings.
//!
//! * `restart`: node after node, SIGTERM, its config rewritten to filter
//!   version 2, started again, waited for until ready (state transfer done)
//!   and seen by every node, before the next.
//! * `deploy`: one `shoal plugin deploy filter v2.wasm` to the whole cluster
//!   through the first node, then (unless told not to) a rolling restart
//!   with the configs left on version 1: each node must come back on the
//!   deployed version 2 (it is stored beside the config).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::cluster::{Binaries, Cluster, ClusterSpec, FILTER, NODES, warm_cache};
use crate::cpu::{CpuSampler, NO_PHASE, PHASES, PhaseCpu};
use crate::load::{Load, LoadResult, LoadSpec, Sample};
use crate::measure::Stat;

/// What the driver does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The rolling restart onto a new filter.
    Restart,
    /// The cluster-wide deploy (then restarts, unless disabled).
    Deploy,
    /// Deploy times to 3 nodes, warm and cold compile cache; no traffic.
    DeployTiming,
}

impl Mode {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Restart => "restart",
            Mode::Deploy => "deploy",
            Mode::DeployTiming => "deploy-timing",
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which roll.
    pub mode: Mode,
    /// The programs and components.
    pub bins: Binaries,
    /// The traffic.
    pub load: LoadSpec,
    /// Traffic before the roll starts.
    pub pre: Duration,
    /// Traffic after the roll ended.
    pub post: Duration,
    /// `deploy`: restart every node after the deploy (the deployed version
    /// must survive).
    pub deploy_restarts: bool,
    /// `deploy-timing`: deploys per kind.
    pub repeat: usize,
    /// `deploy-timing`: deploy under user traffic (httpd and the load
    /// generator), not to an idle cluster.
    pub timing_traffic: bool,
    /// The nodes' compiled-component cache (`None`: `<target>/tmp/component-cache`,
    /// the one the host's tests use too).
    pub cache_dir: Option<PathBuf>,
    /// Keep the run's directory.
    pub keep: bool,
    /// Take each node out of httpd's balancer before stopping it and put
    /// it back once it is ready (balancer-manager), as an operator rolls a
    /// Tomcat cluster; `false`: leave httpd to notice by itself.
    pub drain: bool,
}

impl Options {
    /// The compile cache: [`Options::cache_dir`] or `<target>/tmp/component-cache`
    /// (shared with the host's tests; keyed by content and engine, so debug
    /// and release builds share it).
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            let profile = self.bins.shoal.parent().unwrap_or(Path::new("."));
            profile
                .parent()
                .unwrap_or(profile)
                .join("tmp")
                .join("component-cache")
        })
    }
}

/// One phase of traffic.
#[derive(Debug, Clone, Default)]
pub struct PhaseStats {
    /// `before`, `during`, `after`.
    pub name: &'static str,
    /// Its length.
    pub secs: f64,
    /// Requests started in it.
    pub requests: u64,
    /// Of which failed after their retry.
    pub failed: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency (a retry included), ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// CPU in the phase.
    pub cpu: PhaseCpu,
}

/// One step of a roll.
#[derive(Debug, Clone)]
pub struct Step {
    /// The node (or `all` for a deploy).
    pub node: String,
    /// Sessions it held once ready (`None`: not asked, or no answer).
    pub sessions: Option<u64>,
    /// What was done.
    pub action: String,
    /// How long it took.
    pub secs: f64,
    /// The node's filter hash afterwards (12 digits).
    pub hash: String,
}

/// What a roll did and what the users saw.
#[derive(Debug, Clone)]
pub struct RollReport {
    /// `restart` or `deploy`.
    pub mode: &'static str,
    /// Users.
    pub users: usize,
    /// Load threads.
    pub workers: usize,
    /// SHA-256 of filter version 1 and 2.
    pub v1: String,
    /// See `v1`.
    pub v2: String,
    /// Node names.
    pub names: Vec<String>,
    /// Each node's filter hash before the roll.
    pub before: Vec<String>,
    /// Each node's filter hash at the end.
    pub after: Vec<String>,
    /// The roll's steps.
    pub steps: Vec<Step>,
    /// `shoal plugin deploy`'s output and whether it succeeded.
    pub deploy: Option<(bool, String)>,
    /// The roll's length.
    pub roll_secs: f64,
    /// Requests sent (after set-up, before the final check).
    pub sent: u64,
    /// Requests retried once.
    pub retried: u64,
    /// Requests failed after their retry.
    pub failed: u64,
    /// Users whose cart was not what they put in, or who got a new session.
    pub lost: usize,
    /// Answers whose cart differed from what the user had put in.
    pub stale: u64,
    /// Sessions rebound to another node (failovers).
    pub rebinds: u64,
    /// Before, during, after.
    pub phases: Vec<PhaseStats>,
    /// Lost users and failed requests, described (at most a few dozen).
    pub problems: Vec<String>,
    /// Why requests needed their retry (at most a few dozen).
    pub retry_reasons: Vec<String>,
    /// WARN and ERROR lines of the nodes' logs.
    pub warnings: Vec<String>,
    /// Nodes that did not exit within the grace time of a SIGTERM.
    pub unclean: Vec<String>,
}

impl RollReport {
    /// Every node ran version 1 before and version 2 at the end.
    pub fn filter_changed(&self) -> bool {
        self.before.iter().all(|h| *h == self.v1) && self.after.iter().all(|h| *h == self.v2)
    }

    /// Restarted nodes that were ready holding fewer sessions than there
    /// are users (with `delta` every node holds every session): their state
    /// transfer did not copy everything.
    pub fn short_transfers(&self) -> Vec<&Step> {
        self.steps
            .iter()
            .filter(|s| s.sessions.is_some_and(|n| n < self.users as u64))
            .collect()
    }

    /// No session lost, no request failed, no stale answer, every restarted
    /// node held every session, the filter changed everywhere, the deploy
    /// (if any) succeeded, every node stopped cleanly.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.failed == 0
            && self.stale == 0
            && self.short_transfers().is_empty()
            && self.filter_changed()
            && self.deploy.as_ref().is_none_or(|(ok, _)| *ok)
            && self.unclean.is_empty()
    }

    /// The summary table.
    pub fn print(&self) {
        let short = |h: &str| h.chars().take(12).collect::<String>();
        println!();
        println!(
            "== {} roll: {NODES} nodes behind httpd, {} users, {} load threads ==",
            self.mode, self.users, self.workers
        );
        println!(
            "requests sent        {:>8}   (retried once: {}, failed after the retry: {})",
            self.sent, self.retried, self.failed
        );
        println!(
            "sessions lost        {:>8}   of {} (stale answers under traffic: {}, failovers: {})",
            self.lost, self.users, self.stale, self.rebinds
        );
        println!("roll time            {:>8.2} s", self.roll_secs);
        println!(
            "{:<8} {:>6} {:>9} {:>7} {:>8} {:>8} {:>8}   CPU cores: run / kernel / other",
            "phase", "secs", "requests", "rps", "p50 ms", "p99 ms", "max ms"
        );
        for p in &self.phases {
            println!(
                "{:<8} {:>6.1} {:>9} {:>7.0} {:>8.2} {:>8.2} {:>8.1}   {:.2} / {:.2} / {:.2}",
                p.name,
                p.secs,
                p.requests,
                p.rps,
                p.p50_ms,
                p.p99_ms,
                p.max_ms,
                p.cpu.own,
                p.cpu.kernel,
                p.cpu.other
            );
        }
        println!(
            "filter ({}): v1 = {} (domain_filter.wasm), v2 = {} (size_filter.wasm)",
            FILTER,
            short(&self.v1),
            short(&self.v2)
        );
        for ((n, b), a) in self.names.iter().zip(&self.before).zip(&self.after) {
            let tag = |h: &str| {
                if h == self.v1 {
                    "v1"
                } else if h == self.v2 {
                    "v2"
                } else {
                    "??"
                }
            };
            println!(
                "  {n:<4} {} ({}) -> {} ({})",
                short(b),
                tag(b),
                short(a),
                tag(a)
            );
        }
        if !self.unclean.is_empty() {
            println!(
                "nodes SIGKILLed after {:?}: {:?}",
                crate::cluster::STOP_GRACE,
                self.unclean
            );
        }
        if !self.retry_reasons.is_empty() {
            println!("retried (first attempt's error), up to 5:");
            for r in self.retry_reasons.iter().take(5) {
                println!("  {r}");
            }
        }
        if !self.warnings.is_empty() {
            println!(
                "node log warnings and errors: {} lines; by message:",
                self.warnings.len()
            );
            for (n, w) in summarize(&self.warnings) {
                println!("  {n:>4} x {w}");
            }
        }
        for p in self.problems.iter().take(20) {
            println!("  problem: {p}");
        }
        println!(
            "result: {}",
            if self.ok() {
                "OK (0 sessions lost, 0 failed requests, every restarted node held every session, the filter changed on every node)"
            } else {
                "FAILED"
            }
        );
    }

    /// The report as JSON (`--json`).
    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode,
            "users": self.users,
            "workers": self.workers,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "lost": self.lost,
            "stale": self.stale,
            "rebinds": self.rebinds,
            "roll_secs": self.roll_secs,
            "filter_v1": self.v1,
            "filter_v2": self.v2,
            "filter_before": self.before,
            "filter_after": self.after,
            "filter_changed": self.filter_changed(),
            "deploy_ok": self.deploy.as_ref().map(|d| d.0),
            "deploy_output": self.deploy.as_ref().map(|d| d.1.clone()),
            "steps": self.steps.iter().map(|s| json!({
                "node": s.node, "action": s.action, "secs": s.secs, "hash": s.hash,
                "sessions": s.sessions,
            })).collect::<Vec<_>>(),
            "phases": self.phases.iter().map(|p| json!({
                "name": p.name, "secs": p.secs, "requests": p.requests, "failed": p.failed,
                "rps": p.rps, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "max_ms": p.max_ms,
                "cpu_own": p.cpu.own, "cpu_kernel": p.cpu.kernel, "cpu_other": p.cpu.other,
            })).collect::<Vec<_>>(),
            "problems": self.problems,
            "retry_reasons": self.retry_reasons,
            "warnings": self.warnings,
            "unclean": self.unclean,
            "ok": self.ok(),
        })
    }
}

/// Log lines (`NODE: TIME  LEVEL target: message key=value…`) counted by
/// level, target and message (up to its first `;` and without the
/// key=value fields), most frequent first.
fn summarize(lines: &[String]) -> Vec<(usize, String)> {
    let mut counts: Vec<(usize, String)> = Vec::new();
    for l in lines {
        let rest = l
            .split_once(" WARN ")
            .map(|(_, r)| format!("WARN {r}"))
            .or_else(|| l.split_once(" ERROR ").map(|(_, r)| format!("ERROR {r}")))
            .unwrap_or_else(|| l.clone());
        let msg: String = rest
            .split(';')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect::<Vec<_>>()
            .join(" ");
        let msg: String = msg.chars().take(140).collect();
        match counts.iter_mut().find(|(_, m)| *m == msg) {
            Some((n, _)) => *n += 1,
            None => counts.push((1, msg)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.0));
    counts
}

/// Prints a progress line at once.
fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// SHA-256 of a file, hex.
fn sha256_file(p: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex_of(&sha2::Sha256::digest(&bytes)))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a `restart` or `deploy` roll.
pub fn roll(opts: &Options) -> anyhow::Result<RollReport> {
    if opts.mode == Mode::DeployTiming {
        bail!("deploy-timing is not a roll");
    }
    opts.bins.check()?;
    let (v1_file, v2_file) = (opts.bins.filter_v1(), opts.bins.filter_v2());
    let (v1, v2) = (sha256_file(&v1_file)?, sha256_file(&v2_file)?);
    let cache_dir = opts.cache_dir();
    let warm = warm_cache(&opts.bins, &cache_dir, &[v1_file.clone(), v2_file.clone()])?;
    say(&format!(
        "compile cache {} warm ({:.1} s)",
        cache_dir.display(),
        warm.as_secs_f64()
    ));
    say(&format!(
        "starting {NODES} webapp nodes on filter v1 ({}) and httpd…",
        &v1[..12]
    ));
    let mut spec = ClusterSpec::new(&opts.bins, &v1_file, true);
    spec.cache_dir = Some(cache_dir);
    spec.keep = opts.keep;
    let mut cluster = Cluster::start(&spec)?;
    let front = cluster.front_url().context("no front end")?;
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let before = cluster.filter_hashes();
    say(&format!(
        "cluster ready: {} behind httpd {front}; {} users start",
        names.join(", "),
        opts.load.users
    ));
    let load = Load::start(&front, &opts.load)?;
    let cpu = CpuSampler::start(cluster.pids(), cluster.httpd.as_ref().and_then(|h| h.pid()));
    cpu.phase(0);
    say(&format!(
        "traffic: {:.0} s before the roll…",
        opts.pre.as_secs_f64()
    ));
    std::thread::sleep(opts.pre);
    cpu.phase(1);
    let roll_start = Instant::now();
    say(&format!("roll ({}) starts", opts.mode.name()));
    let steps = match opts.mode {
        Mode::Restart => restart_roll(&mut cluster, Some(&v2_file), opts.drain, &load),
        _ => deploy_roll(
            &mut cluster,
            &v2_file,
            opts.deploy_restarts,
            opts.drain,
            &load,
        ),
    };
    let roll_end = Instant::now();
    let (steps, deploy) = match steps {
        Ok(s) => s,
        Err(e) => {
            // Stop the traffic without the final reads: the cluster is not
            // in a state worth checking.
            cpu.finish();
            load.abandon();
            return Err(e);
        }
    };
    cpu.phase(2);
    say(&format!(
        "roll done in {:.2} s; traffic: {:.0} s after the roll…",
        (roll_end - roll_start).as_secs_f64(),
        opts.post.as_secs_f64()
    ));
    std::thread::sleep(opts.post);
    cpu.phase(NO_PHASE);
    let stop_at = Instant::now();
    let t0 = load.t0;
    say("stopping the traffic; every user reads its cart…");
    let result = load.finish();
    let cpu = cpu.finish();
    let after = cluster.filter_hashes();
    let unclean = cluster.shutdown();
    let warnings = cluster.warnings();
    let bounds = [t0, roll_start.max(t0), roll_end.max(t0), stop_at.max(t0)];
    let phases = phase_stats(&result, t0, &bounds, &cpu);
    let mut problems: Vec<String> = result
        .users
        .iter()
        .filter(|u| !u.intact)
        .filter_map(|u| u.why.clone())
        .collect();
    problems.extend(result.failures.iter().cloned());
    // A node that came back holding fewer sessions than there are users
    // did not copy them all (with none: it saw no member when its discovery
    // window ended, so it did no state transfer): a hazard even when no user
    // happened to reach it.
    let users = opts.load.users as u64;
    problems.extend(
        steps
            .iter()
            .filter(|s| s.sessions.is_some_and(|n| n < users))
            .map(|s| {
                format!(
                    "{} was ready holding {} of {users} sessions",
                    s.node,
                    s.sessions.unwrap_or(0)
                )
            }),
    );
    let report = RollReport {
        mode: opts.mode.name(),
        users: opts.load.users,
        workers: opts.load.workers.min(opts.load.users),
        v1,
        v2,
        names,
        before,
        after,
        steps,
        deploy,
        roll_secs: (roll_end - roll_start).as_secs_f64(),
        sent: result.sent,
        retried: result.retried,
        failed: result.failed,
        lost: result.users.iter().filter(|u| !u.intact).count(),
        stale: result.users.iter().map(|u| u.stale).sum(),
        rebinds: result.users.iter().map(|u| u.rebinds).sum(),
        phases,
        problems,
        retry_reasons: result.retry_reasons,
        warnings,
        unclean,
    };
    if !report.ok() {
        // The node logs and httpd's error log are the evidence: keep them.
        cluster.keep();
    }
    Ok(report)
}

/// Splits the samples at `bounds` (t0, roll start, roll end, stop).
fn phase_stats(
    result: &LoadResult,
    t0: Instant,
    bounds: &[Instant; 4],
    cpu: &[PhaseCpu; PHASES],
) -> Vec<PhaseStats> {
    let us = |t: Instant| t.duration_since(t0).as_micros() as u64;
    let names = ["before", "during", "after"];
    (0..PHASES)
        .map(|i| {
            let (from, to) = (us(bounds[i]), us(bounds[i + 1]));
            let inside: Vec<&Sample> = result
                .samples
                .iter()
                .filter(|s| s.at_us >= from && s.at_us < to)
                .collect();
            let mut lat: Vec<f64> = inside.iter().map(|s| s.lat_us as f64 / 1000.0).collect();
            lat.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                if lat.is_empty() {
                    0.0
                } else {
                    let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
                    lat[rank.clamp(1, lat.len()) - 1]
                }
            };
            let secs = (to - from) as f64 / 1e6;
            PhaseStats {
                name: names[i],
                secs,
                requests: inside.len() as u64,
                failed: inside.iter().filter(|s| s.failed).count() as u64,
                rps: inside.len() as f64 / secs.max(1e-3),
                p50_ms: pct(50.0),
                p99_ms: pct(99.0),
                max_ms: lat.last().copied().unwrap_or(0.0),
                cpu: cpu[i],
            }
        })
        .collect()
}

/// A roll's steps and, for a deploy, whether it succeeded and its output.
type Steps = (Vec<Step>, Option<(bool, String)>);

/// Restarts every node in turn onto `filter` (`None`: config unchanged).
fn restart_roll(
    cluster: &mut Cluster,
    filter: Option<&Path>,
    drain: bool,
    load: &Load,
) -> anyhow::Result<Steps> {
    let mut steps = Vec::new();
    for i in 0..cluster.nodes.len() {
        let t = Instant::now();
        let old = cluster.filter_hash(i).unwrap_or_else(|_| "?".into());
        if drain {
            cluster.set_disabled(i, true)?;
        }
        let r = cluster.restart(i, filter)?;
        let hash = cluster.filter_hash(i)?;
        let held = cluster.sessions_held(i);
        if drain {
            cluster.set_disabled(i, false)?;
        }
        let secs = t.elapsed().as_secs_f64();
        let name = cluster.nodes[i].name.clone();
        say(&format!(
            "  {name}: {}SIGTERM -> exited in {:.2} s{}, started{}, ready in {:.2} s \
             (state transfer done: holds {} sessions; every node sees {NODES}){}; \
             filter {} -> {}; {} requests so far",
            if drain {
                "out of httpd's balancer, "
            } else {
                ""
            },
            r.stop.as_secs_f64(),
            if r.clean { "" } else { " (SIGKILLed)" },
            if filter.is_some() {
                " with filter v2 in its config"
            } else {
                " (config unchanged: filter v1)"
            },
            r.ready.as_secs_f64(),
            held.map_or("?".into(), |n| n.to_string()),
            if drain { ", back in the balancer" } else { "" },
            &old[..old.len().min(12)],
            &hash[..12],
            load.sent()
        ));
        steps.push(Step {
            node: name,
            sessions: held,
            action: if r.clean {
                "restart"
            } else {
                "restart (SIGKILLed)"
            }
            .into(),
            secs,
            hash,
        });
    }
    Ok((steps, None))
}

/// `shoal plugin deploy filter v2` through node 1, then optionally a
/// rolling restart with the configs unchanged.
fn deploy_roll(
    cluster: &mut Cluster,
    v2: &Path,
    restarts: bool,
    drain: bool,
    load: &Load,
) -> anyhow::Result<Steps> {
    say(&format!(
        "  shoal plugin deploy {FILTER} {} --key … --api {}",
        v2.display(),
        cluster.nodes[0].api
    ));
    let t = Instant::now();
    let (ok, text) = cluster.deploy(0, FILTER, v2)?;
    let secs = t.elapsed().as_secs_f64();
    for l in text.lines() {
        say(&format!("  | {l}"));
    }
    say(&format!(
        "  deploy {} in {secs:.2} s (the command's process included); {} requests so far",
        if ok { "succeeded" } else { "FAILED" },
        load.sent()
    ));
    let mut steps = vec![Step {
        node: "all".into(),
        sessions: None,
        action: "shoal plugin deploy".into(),
        secs,
        hash: sha256_file(v2)?,
    }];
    if restarts {
        say(
            "  restarting every node with its config unchanged (filter v1): each must come back on the deployed v2",
        );
        let (more, _) = restart_roll(cluster, None, drain, load)?;
        steps.extend(more);
    }
    Ok((steps, Some((ok, text))))
}

/// Deploy times to the cluster: median and spread.
#[derive(Debug, Clone)]
pub struct TimingReport {
    /// Component size, bytes.
    pub bytes: usize,
    /// Deploys per kind.
    pub repeat: usize,
    /// The command's own figure (request to answer, every member done), ms,
    /// with a warm compile cache.
    pub warm_ms: Vec<f64>,
    /// The same with a cold cache (bytes never seen).
    pub cold_ms: Vec<f64>,
    /// Slowest member's own time per deploy, warm.
    pub warm_member_ms: Vec<f64>,
    /// Slowest member's own time per deploy, cold.
    pub cold_member_ms: Vec<f64>,
    /// CPU over the measured deploys, warm and cold.
    pub cpu: PhaseCpu,
    /// Under traffic: requests sent, failed after a retry, users whose
    /// cart was not what they put in, stale answers.
    pub traffic: Option<(u64, u64, usize, u64)>,
    /// Deploys that did not reach every node.
    pub failures: Vec<String>,
}

impl TimingReport {
    /// Every deploy reached every node.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
            && self
                .traffic
                .is_none_or(|(_, failed, lost, stale)| failed == 0 && lost == 0 && stale == 0)
    }

    /// The summary.
    pub fn print(&self) {
        println!();
        println!(
            "== deploy to {NODES} nodes: a {:.0} KB component (throughput.wasm + a unique custom section), {} deploys each ==",
            self.bytes as f64 / 1000.0,
            self.repeat
        );
        println!("cache    command ms, median (min-max)   slowest member ms, median (min-max)");
        for (name, all, member) in [
            ("warm", &self.warm_ms, &self.warm_member_ms),
            ("cold", &self.cold_ms, &self.cold_member_ms),
        ] {
            println!(
                "{name:<8} {:<32} {}",
                Stat::of(all).show(1),
                Stat::of(member).show(1)
            );
        }
        println!(
            "CPU cores over the measured deploys: run {:.2} / kernel {:.2} / other {:.2}",
            self.cpu.own, self.cpu.kernel, self.cpu.other
        );
        match self.traffic {
            Some((sent, failed, lost, stale)) => println!(
                "under traffic: {sent} requests, {failed} failed after a retry, {lost} sessions lost, {stale} stale answers"
            ),
            None => println!("no traffic (an idle cluster)"),
        }
        for f in &self.failures {
            println!("  problem: {f}");
        }
        println!("result: {}", if self.ok() { "OK" } else { "FAILED" });
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "mode": "deploy-timing",
            "bytes": self.bytes,
            "repeat": self.repeat,
            "warm_ms": self.warm_ms,
            "cold_ms": self.cold_ms,
            "warm_member_ms": self.warm_member_ms,
            "cold_member_ms": self.cold_member_ms,
            "failures": self.failures,
            "cpu_own": self.cpu.own,
            "cpu_kernel": self.cpu.kernel,
            "cpu_other": self.cpu.other,
            "traffic": self.traffic.map(|(sent, failed, lost, stale)| json!({
                "sent": sent, "failed": failed, "lost": lost, "stale": stale,
            })),
            "ok": self.ok(),
        })
    }
}

/// The component with a custom section appended (name
/// `rolling-restart-nonce`, 16 random bytes): other bytes, another SHA-256,
/// so no compile cache has it; the code is the same.
fn unique_variant(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    let name = b"rolling-restart-nonce";
    let mut content = leb128(name.len());
    content.extend_from_slice(name);
    content.extend_from_slice(&nonce);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.extend(leb128(content.len()));
    out.extend(content);
    Ok(out)
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Parses the command's output: its total ms (`… deployed to 3 of 3 nodes
/// in 41.2 ms`) and the slowest member's ms.
fn deploy_figures(text: &str) -> Option<(f64, f64)> {
    let total = text
        .lines()
        .find(|l| l.contains(" deployed to "))?
        .rsplit_once(" in ")?
        .1
        .trim()
        .strip_suffix(" ms")?
        .parse()
        .ok()?;
    let slowest = text
        .lines()
        .filter(|l| !l.contains(" deployed to "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "ms")?;
            w.get(at.checked_sub(1)?)?.parse::<f64>().ok()
        })
        .fold(0.0, f64::max);
    Some((total, slowest))
}

/// `deploy-timing`: deploys of a ~100 KB component to the cluster (idle,
/// or under traffic with [`Options::timing_traffic`]), `repeat` with every
/// member's compile cache warm (two variants, each deployed once before,
/// alternated) and `repeat` cold (a fresh variant each time).
pub fn deploy_timing(opts: &Options) -> anyhow::Result<TimingReport> {
    opts.bins.check()?;
    say(&format!(
        "starting {NODES} nodes (no traffic) for deploy timings…"
    ));
    // The chain's components from the shared cache; the deployed variants
    // are unique, so cold wherever the cache is.
    let cache_dir = opts.cache_dir();
    warm_cache(&opts.bins, &cache_dir, &[opts.bins.filter_v1()])?;
    let mut spec = ClusterSpec::new(&opts.bins, &opts.bins.filter_v1(), opts.timing_traffic);
    spec.cache_dir = Some(cache_dir);
    spec.keep = opts.keep;
    let mut cluster = Cluster::start(&spec)?;
    let load = match cluster.front_url() {
        Some(front) => {
            say(&format!("{} users start", opts.load.users));
            Some(Load::start(&front, &opts.load)?)
        }
        None => None,
    };
    let base = std::fs::read(opts.bins.timing_component())?;
    let write = |n: &str| -> anyhow::Result<PathBuf> {
        let p = cluster.dir.join(format!("{n}.wasm"));
        std::fs::write(&p, unique_variant(&base)?)?;
        Ok(p)
    };
    let warm = [write("warm-a")?, write("warm-b")?];
    let bytes = std::fs::metadata(&warm[0])?.len() as usize;
    let mut failures = Vec::new();
    let mut deploy = |file: &Path, what: &str| -> Option<(f64, f64)> {
        match cluster.deploy(0, FILTER, file) {
            Ok((true, text)) => {
                let f = deploy_figures(&text);
                if f.is_none() {
                    failures.push(format!("{what}: no figures in {text}"));
                }
                f
            }
            Ok((false, text)) => {
                failures.push(format!("{what}: {text}"));
                None
            }
            Err(e) => {
                failures.push(format!("{what}: {e:#}"));
                None
            }
        }
    };
    // Warm-up: each warm variant compiled (and cached) by every member once.
    for f in &warm {
        deploy(f, "warm-up");
    }
    let cpu = CpuSampler::start(cluster.pids(), cluster.httpd.as_ref().and_then(|h| h.pid()));
    let (mut warm_ms, mut warm_member_ms) = (Vec::new(), Vec::new());
    cpu.phase(0);
    for i in 0..opts.repeat {
        if let Some((t, m)) = deploy(&warm[i % 2], "warm") {
            warm_ms.push(t);
            warm_member_ms.push(m);
        }
    }
    let (mut cold_ms, mut cold_member_ms) = (Vec::new(), Vec::new());
    for i in 0..opts.repeat {
        let Ok(f) = write(&format!("cold-{i}")) else {
            continue;
        };
        if let Some((t, m)) = deploy(&f, "cold") {
            cold_ms.push(t);
            cold_member_ms.push(m);
        }
    }
    cpu.phase(NO_PHASE);
    let c = cpu.finish();
    let traffic = load.map(|l| {
        let r = l.finish();
        failures.extend(r.failures.iter().take(10).cloned());
        (
            r.sent,
            r.failed,
            r.users.iter().filter(|u| !u.intact).count(),
            r.users.iter().map(|u| u.stale).sum(),
        )
    });
    let unclean = cluster.shutdown();
    if !unclean.is_empty() {
        failures.push(format!("SIGKILLed after the grace time: {unclean:?}"));
    }
    Ok(TimingReport {
        bytes,
        repeat: opts.repeat,
        warm_ms,
        cold_ms,
        warm_member_ms,
        cold_member_ms,
        cpu: c[0],
        traffic,
        failures,
    })
}
