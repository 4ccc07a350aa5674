//! Failure detection side by side (issue 14, item 6): how fast a crashed
//! member is dropped, whether a paused one is dropped by mistake, and what
//! the watch connections cost, for shoal and Tomcat Tribes, on loopback.
//!
//! ```sh
//! cargo bench -p shoal --bench detection                    # all three parts
//! cargo bench -p shoal --bench detection -- --only kill --runs 9
//! cargo bench -p shoal --bench detection -- --help
//! ```
//!
//! Every cluster is real processes: `shoal run --config FILE` (multicast
//! 228.0.0.4 on `bind = "127.0.0.1"`, frequency 500 ms, dropTime 3000 ms,
//! receiver port 0, the admin API on loopback) and, for Tomcat, JVMs running
//! `tests/interop/TribesPeer.java` (GroupChannel, McastService on 127.0.0.1
//! with the same frequency and dropTime, NioReceiver, TcpFailureDetector +
//! MessageDispatchInterceptor + ThroughputInterceptor; Debian's
//! `libtomcat10-java`, JVM defaults plus `-Djava.net.preferIPv4Stack=true`;
//! `DETECTION_JAVA_OPTS` adds flags). Each cluster gets its own multicast
//! port.
//!
//! * **kill**: 3 nodes, converged (every node sees 2 members and, with the
//!   watch on, watches both), 2 s of steady heartbeats, then SIGKILL one.
//!   The time from just before the `kill` call to each survivor's
//!   disappearance event: for shoal the event's own timestamp (`at_ms` in
//!   `/api/events`, the node's wall clock when it dropped the member, 1 ms
//!   resolution; the events are polled every 10 ms, the poll only collects
//!   them); for Tomcat the moment the JVM's `member_disappeared` line arrives
//!   on the pipe (a reader thread per JVM timestamps each line). "all" is
//!   the later of the two survivors. Cases: shoal default (watch on,
//!   tcp-failure-detector), shoal `watch = false` (Tomcat's rule: dropTime,
//!   then a TCP probe), shoal with phi-accrual-detector in place of
//!   tcp-failure-detector, Tomcat. The floor: SIGKILL until the victim is
//!   reaped (its kernel has closed its sockets by then).
//! * **pause**: 3 nodes, converged; SIGSTOP one for `--pause-secs` (5 s,
//!   longer than dropTime), SIGCONT, 5 s more; then every disappearance
//!   event of the paused node at the two others (false drops), and of the
//!   others at the paused node after it resumed. Cases: shoal default,
//!   shoal phi, Tomcat.
//! * **cost**: `--cost-nodes` (50) idle `shoal run` nodes on one multicast
//!   group, converged (each sees the 49 others, and with the watch on
//!   watches all 49), 5 s settle, then `--cost-secs` (20) without a single
//!   request: utime + stime of every node from /proc/PID/stat, RSS and open
//!   file descriptors per node at the end. Cases: watch on (default chain),
//!   watch off, phi-accrual (watch on). Disappearance events during the
//!   whole run are counted (a drop in an idle cluster is a false one).
//!
//! Cases alternate within a run and the order is reversed every other run;
//! medians with the spread (min–max) over the runs. Each window also
//! records how much of a core other processes used (the machine is shared).
//! Every process is SIGKILLed when its handle drops (also on a panic), and
//! a watchdog kills everything if the run overstays.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[path = "common/measure.rs"]
mod measure;
use measure::{CpuWindow, Stat, cpu_model, java_version, pid_ticks};
#[path = "../tests/common/java.rs"]
#[allow(dead_code)]
mod java;
use java::{JULI_JAR, TRIBES_JAR, javac, jdk_tool};
#[path = "common/nodes.rs"]
#[allow(dead_code)]
mod nodes;
use nodes::{PIDS, Proc, StopBy, agent, free_port, get_json, http_get, load_avg, lock, signal};

use nix::sys::signal::Signal;

/// McastService frequency (Tomcat's default), for every node.
const FREQUENCY_MS: u64 = 500;
/// McastService dropTime (Tomcat's default), for every node.
const DROP_TIME_MS: u64 = 3000;
/// Steady heartbeats after convergence, before the kill or the pause.
const STEADY: Duration = Duration::from_secs(2);
/// How long a survivor may take to drop a killed member before the run
/// counts it as not detected (Tomcat needs ~dropTime + a heartbeat).
const DETECT_LIMIT: Duration = Duration::from_secs(20);
/// Observation after SIGCONT in the pause part.
const AFTER_PAUSE: Duration = Duration::from_secs(5);
/// Settle time before the cost window.
const COST_SETTLE: Duration = Duration::from_secs(5);
/// Bound on one node's start (the first start compiles the plug-ins).
const START_LIMIT: Duration = Duration::from_secs(120);
/// Bound on a 3-node cluster's convergence.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
/// Bound on the big cluster's convergence.
const BIG_CONVERGE_LIMIT: Duration = Duration::from_secs(240);

fn usage() -> &'static str {
    "cargo bench -p shoal --bench detection -- [options]
  --only LIST        parts: kill,pause,cost (default all)
  --runs N           runs of the kill part (default 5; env DETECTION_RUNS)
  --pause-runs N     runs of the pause part (default 3)
  --pause-secs S     SIGSTOP length (default 5)
  --cost-runs N      runs of the cost part (default 2)
  --cost-nodes N     nodes in the cost part (default 50)
  --cost-secs S      the cost window (default 20)
  --shoal-bin PATH   the shoal binary (default: $SHOAL_BIN, else the bench profile's)
environment: DETECTION_JAVA_OPTS adds JVM flags to every Tomcat node,
  DETECTION_SHOAL_LOG sets the shoal nodes' SHOAL_LOG (default warn)"
}

#[derive(Debug, Clone)]
struct Opts {
    parts: HashSet<String>,
    runs: usize,
    pause_runs: usize,
    pause_secs: u64,
    cost_runs: usize,
    cost_nodes: usize,
    cost_secs: u64,
    shoal_bin: PathBuf,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let default_bin = std::env::var_os("SHOAL_BIN").map_or_else(
            || {
                option_env!("CARGO_BIN_EXE_shoal").map_or_else(
                    || Path::new(env!("CARGO_TARGET_TMPDIR")).join("../release/shoal"),
                    PathBuf::from,
                )
            },
            PathBuf::from,
        );
        let runs = std::env::var("DETECTION_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let mut o = Self {
            parts: ["kill", "pause", "cost"].map(str::to_owned).into(),
            runs,
            pause_runs: 3,
            pause_secs: 5,
            cost_runs: 2,
            cost_nodes: 50,
            cost_secs: 20,
            shoal_bin: default_bin,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
            let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
            match a.as_str() {
                "--only" => {
                    o.parts = value()?.split(',').map(str::to_owned).collect();
                    for p in &o.parts {
                        if !["kill", "pause", "cost"].contains(&p.as_str()) {
                            return Err(format!("--only: no part {p:?}"));
                        }
                    }
                }
                "--runs" => o.runs = num(value()?)? as usize,
                "--pause-runs" => o.pause_runs = num(value()?)? as usize,
                "--pause-secs" => o.pause_secs = num(value()?)?,
                "--cost-runs" => o.cost_runs = num(value()?)? as usize,
                "--cost-nodes" => o.cost_nodes = num(value()?)? as usize,
                "--cost-secs" => o.cost_secs = num(value()?)?,
                "--shoal-bin" => o.shoal_bin = PathBuf::from(value()?),
                "--help" | "-h" => return Err(String::new()),
                // What cargo's bench runner passes.
                "--bench" => {}
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.cost_nodes < 2 {
            return Err("--cost-nodes must be at least 2".into());
        }
        Ok(o)
    }

    /// The watchdog's limit: generous for the selected work.
    fn time_limit(&self) -> Duration {
        let mut s = 300;
        if self.parts.contains("kill") {
            s += self.runs as u64 * 4 * 60;
        }
        if self.parts.contains("pause") {
            s += self.pause_runs as u64 * 3 * (90 + self.pause_secs);
        }
        if self.parts.contains("cost") {
            s += self.cost_runs as u64 * 3 * (BIG_CONVERGE_LIMIT.as_secs() + 60 + self.cost_secs);
        }
        Duration::from_secs(s)
    }
}

/// Wall clock, ms since the Unix epoch (what shoal's `at_ms` counts).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Polls `probe` every `every` until it returns `Ok(Some)`, fails, or
/// `limit` passes.
fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(format!("no {what} after {limit:?}"));
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------
// shoal nodes
// ---------------------------------------------------------------------------

/// Which failure detection a shoal node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detector {
    /// The default chain, watch on.
    Default,
    /// The default chain, `watch = false`.
    NoWatch,
    /// phi-accrual-detector in place of tcp-failure-detector, watch on.
    Phi,
}

impl Detector {
    fn watch(self) -> bool {
        self != Self::NoWatch
    }

    fn label(self) -> &'static str {
        match self {
            Self::Default => "shoal default (watch, tcp-failure-detector)",
            Self::NoWatch => "shoal watch = false (dropTime, then probe)",
            Self::Phi => "shoal phi-accrual-detector (watch)",
        }
    }
}

struct Shoal {
    proc: Proc,
    api: SocketAddr,
    id: String,
}

struct Ctx {
    opts: Opts,
    logs: PathBuf,
    work: PathBuf,
    http: ureq::Agent,
    classes: Option<PathBuf>,
}

impl Ctx {
    fn shoal_config(&self, name: &str, group: u16, api: SocketAddr, det: Detector) -> PathBuf {
        let chain = if det == Detector::Phi {
            "[[interceptor]]\nname = \"phi-accrual-detector\"\n\
             [[interceptor]]\nname = \"message-dispatch\"\n\
             [[interceptor]]\nname = \"throughput\"\n"
        } else {
            ""
        };
        let text = format!(
            "[node]\nname = \"{name}\"\n\
             [membership]\nport = {group}\nbind = \"127.0.0.1\"\nfrequency_ms = {FREQUENCY_MS}\n\
             drop_time_ms = {DROP_TIME_MS}\nwatch = {}\n\
             [receiver]\naddress = \"127.0.0.1\"\nport = 0\n\
             [api]\nlisten = \"{api}\"\n\
             [plugins]\ncache_dir = \"{}\"\n{chain}",
            det.watch(),
            self.work.join("component-cache").display(),
        );
        let path = self.work.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("writing a config");
        path
    }

    /// Starts a `shoal run`; does not wait for it.
    fn spawn_shoal(
        &self,
        name: &str,
        group: u16,
        det: Detector,
    ) -> Result<(Proc, SocketAddr), String> {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = self.shoal_config(name, group, api, det);
        let mut cmd = Command::new(&self.opts.shoal_bin);
        cmd.arg("run").arg("--config").arg(&cfg);
        cmd.env(
            "SHOAL_LOG",
            std::env::var("DETECTION_SHOAL_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let p = Proc::spawn(cmd, name, &self.logs, StopBy::Sigterm)?;
        Ok((p, api))
    }

    /// Waits for a node's API and returns its unique id.
    fn shoal_ready(&self, p: &mut Proc, api: SocketAddr) -> Result<String, String> {
        let url = format!("http://{api}/api/node");
        nodes::wait_for(
            p,
            "the admin API",
            START_LIMIT,
            Duration::from_millis(50),
            |_| get_json(&self.http, &url).and_then(|n| n["id"].as_str().map(str::to_owned)),
        )
    }

    /// Waits for a node spawned by [`Ctx::spawn_shoal`]; if it could not
    /// listen on its API port (`free_port` is racy: another process on the
    /// machine may take the port first), starts it again on another, twice
    /// at most.
    fn shoal_ready_or_retry(
        &self,
        name: &str,
        group: u16,
        det: Detector,
        (mut proc, mut api): (Proc, SocketAddr),
    ) -> Result<Shoal, String> {
        let mut tries = 0;
        loop {
            match self.shoal_ready(&mut proc, api) {
                Ok(id) => return Ok(Shoal { proc, api, id }),
                Err(e) if tries < 2 && e.contains("Address already in use") => {
                    eprintln!("   {name}: {e}; starting it again");
                    tries += 1;
                    (proc, api) = self.spawn_shoal(name, group, det)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_shoal_cluster(
        &self,
        tag: &str,
        n: usize,
        det: Detector,
    ) -> Result<Vec<Shoal>, String> {
        let group = free_port();
        let mut nodes = Vec::new();
        for i in 0..n {
            let (proc, api) = self.spawn_shoal(&format!("{tag}-{i}"), group, det)?;
            nodes.push((proc, api));
        }
        let mut out = Vec::new();
        for (i, node) in nodes.into_iter().enumerate() {
            out.push(self.shoal_ready_or_retry(&format!("{tag}-{i}"), group, det, node)?);
        }
        Ok(out)
    }

    /// Waits until every node sees the others (and, with the watch, watches them).
    fn shoal_converge(
        &self,
        nodes: &mut [Shoal],
        watch: bool,
        limit: Duration,
    ) -> Result<(), String> {
        let want = nodes.len() - 1;
        let start = Instant::now();
        for s in nodes.iter_mut() {
            let rest = limit.saturating_sub(start.elapsed());
            let api = s.api;
            nodes::wait_for(
                &mut s.proc,
                "convergence",
                rest,
                Duration::from_millis(100),
                |_| {
                    let n = get_json(&self.http, &format!("http://{api}/api/members"))?
                        .as_array()?
                        .len();
                    if n != want {
                        return None;
                    }
                    if watch && metric(&self.http, api, "shoal_watch_connections")? != want as f64 {
                        return None;
                    }
                    Some(())
                },
            )?;
        }
        Ok(())
    }

    /// A node's disappearance events for member `id`: (at_ms, reason).
    fn shoal_drops(&self, api: SocketAddr, id: &str) -> Result<Vec<(f64, String)>, String> {
        let ev = get_json(&self.http, &format!("http://{api}/api/events"))
            .ok_or_else(|| format!("GET http://{api}/api/events failed"))?;
        Ok(ev
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["kind"] == "disappeared" && e["id"] == id)
                    .map(|e| {
                        (
                            e["at_ms"].as_f64().unwrap_or(0.0),
                            e["reason"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every disappearance event a node has recorded.
    fn shoal_all_drops(&self, api: SocketAddr) -> usize {
        get_json(&self.http, &format!("http://{api}/api/events"))
            .and_then(|v| {
                v.as_array()
                    .map(|a| a.iter().filter(|e| e["kind"] == "disappeared").count())
            })
            .unwrap_or(0)
    }
}

/// One sample of a Prometheus metric (exact name with labels), else `None`.
fn metric(http: &ureq::Agent, api: SocketAddr, name: &str) -> Option<f64> {
    let (status, text) = http_get(http, &format!("http://{api}/metrics")).ok()?;
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// Tomcat Tribes nodes (tests/interop/TribesPeer.java)
// ---------------------------------------------------------------------------

/// A TribesPeer JVM: its JSON lines, each with the wall-clock ms at which
/// it arrived; SIGKILLed when dropped.
struct Tomcat {
    name: String,
    child: Option<Child>,
    /// Held open: the peer stops at the end of its stdin.
    stdin: Option<ChildStdin>,
    pid: u32,
    lines: Arc<Mutex<Vec<(f64, Value)>>>,
    log: PathBuf,
    id: String,
}

impl Tomcat {
    fn spawn(ctx: &Ctx, name: &str, group: u16) -> Result<Self, String> {
        let classes = ctx
            .classes
            .as_ref()
            .ok_or("the Tomcat peer is not compiled")?;
        let log = ctx.logs.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(jdk_tool("java"));
        cmd.arg("-Djava.net.preferIPv4Stack=true");
        if let Ok(extra) = std::env::var("DETECTION_JAVA_OPTS") {
            cmd.args(extra.split_whitespace());
        }
        cmd.arg("-cp")
            .arg(format!("{}:{TRIBES_JAR}:{JULI_JAR}", classes.display()))
            .arg("TribesPeer")
            .arg(format!("name={name}"))
            .arg("address=127.0.0.1")
            .arg(format!("port={}", free_port()))
            .arg("mcastAddress=228.0.0.4")
            .arg(format!("mcastPort={group}"))
            .arg("bind=127.0.0.1")
            .arg(format!("frequency={FREQUENCY_MS}"))
            .arg(format!("dropTime={DROP_TIME_MS}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = cmd.spawn().map_err(|e| format!("starting java: {e}"))?;
        let pid = child.id();
        lock(&PIDS).push(pid);
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = now_ms();
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    lock(&sink).push((at, v));
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child: Some(child),
            pid,
            lines,
            log,
            id: String::new(),
        })
    }

    fn find(&self, pred: impl Fn(&Value) -> bool) -> Vec<(f64, Value)> {
        lock(&self.lines)
            .iter()
            .filter(|(_, v)| pred(v))
            .cloned()
            .collect()
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for the `started` line; keeps the id.
    fn ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some((_, v)) = self.find(|v| v["event"] == "started").pop() {
                self.id = v["id"].as_str().unwrap_or("").to_owned();
                return Ok(());
            }
            if self.exited() || start.elapsed() > START_LIMIT {
                return Err(format!(
                    "{} did not start; log {}",
                    self.name,
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Members in view, from the added and disappeared lines.
    fn members(&self) -> HashSet<String> {
        let mut m = HashSet::new();
        for (_, v) in lock(&self.lines).iter() {
            let id = v["id"].as_str().unwrap_or("").to_owned();
            if v["event"] == "member_added" {
                m.insert(id);
            } else if v["event"] == "member_disappeared" {
                m.remove(&id);
            }
        }
        m
    }

    /// Disappearance lines for member `id`: (arrival ms, shutdown flag).
    fn drops(&self, id: &str) -> Vec<(f64, String)> {
        self.find(|v| v["event"] == "member_disappeared" && v["id"] == id)
            .into_iter()
            .map(|(at, v)| {
                let why = if v["shutdown"] == true {
                    "shutdown"
                } else {
                    "expired"
                };
                (at, why.to_owned())
            })
            .collect()
    }

    /// SIGKILL, then reap. stdin closes only after the kill: at the end of
    /// its stdin the peer would leave gracefully (a shutdown announcement).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stdin = None;
    }
}

impl Drop for Tomcat {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_tomcat_cluster(ctx: &Ctx, tag: &str) -> Result<Vec<Tomcat>, String> {
    let group = free_port();
    let mut nodes = (0..3)
        .map(|i| Tomcat::spawn(ctx, &format!("{tag}-{i}"), group))
        .collect::<Result<Vec<_>, _>>()?;
    for t in &mut nodes {
        t.ready()?;
    }
    let ids: Vec<String> = nodes.iter().map(|t| t.id.clone()).collect();
    poll(
        "Tomcat convergence",
        CONVERGE_LIMIT,
        Duration::from_millis(50),
        || {
            Ok(nodes
                .iter()
                .enumerate()
                .all(|(i, t)| {
                    let m = t.members();
                    m.len() == 2
                        && ids
                            .iter()
                            .enumerate()
                            .all(|(j, id)| i == j || m.contains(id))
                })
                .then_some(()))
        },
    )?;
    Ok(nodes)
}

// ---------------------------------------------------------------------------
// A 3-node cluster of either kind
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Shoal(Detector),
    Tomcat,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Self::Shoal(d) => d.label(),
            Self::Tomcat => "Tomcat Tribes (McastService + TcpFailureDetector)",
        }
    }
}

enum Trio {
    Shoal(Vec<Shoal>),
    Tomcat(Vec<Tomcat>),
}

impl Trio {
    fn start(ctx: &Ctx, case: Case, tag: &str) -> Result<Self, String> {
        match case {
            Case::Shoal(d) => {
                let mut nodes = ctx.start_shoal_cluster(tag, 3, d)?;
                ctx.shoal_converge(&mut nodes, d.watch(), CONVERGE_LIMIT)?;
                Ok(Self::Shoal(nodes))
            }
            Case::Tomcat => Ok(Self::Tomcat(start_tomcat_cluster(ctx, tag)?)),
        }
    }

    fn pid(&self, i: usize) -> u32 {
        match self {
            Self::Shoal(n) => n[i].proc.pid,
            Self::Tomcat(n) => n[i].pid,
        }
    }

    fn id(&self, i: usize) -> String {
        match self {
            Self::Shoal(n) => n[i].id.clone(),
            Self::Tomcat(n) => n[i].id.clone(),
        }
    }

    /// SIGKILL node `i` and reap it.
    fn kill(&mut self, i: usize) {
        match self {
            Self::Shoal(n) => n[i].proc.kill(),
            Self::Tomcat(n) => n[i].kill(),
        }
    }

    /// Node `at`'s disappearance events of member `id`: (ms, reason).
    fn drops(&self, ctx: &Ctx, at: usize, id: &str) -> Result<Vec<(f64, String)>, String> {
        match self {
            Self::Shoal(n) => ctx.shoal_drops(n[at].api, id),
            Self::Tomcat(n) => Ok(n[at].drops(id)),
        }
    }
}

// ---------------------------------------------------------------------------
// Part 1: SIGKILL → dropped by all peers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct KillRun {
    /// ms from the kill to each survivor's drop.
    per_peer: Vec<f64>,
    /// ms from the kill to the reaping of the victim (the floor).
    reaped: f64,
    /// ms from the kill to the poll that saw both drops.
    polled: f64,
    reasons: Vec<String>,
    foreign: f64,
    /// shoal: drops on a broken connection, summed over the survivors.
    on_connection_loss: f64,
    /// shoal: watch breaks (and failed reconnects) each survivor counted.
    watch_lost: Vec<f64>,
}

fn kill_once(ctx: &Ctx, case: Case, tag: &str) -> Result<KillRun, String> {
    let mut trio = Trio::start(ctx, case, tag)?;
    std::thread::sleep(STEADY);
    let victim = trio.id(2);
    let survivors = [trio.pid(0), trio.pid(1)];
    let window = CpuWindow::open(&survivors);
    let killed = now_ms();
    let t0 = Instant::now();
    trio.kill(2);
    let reaped = now_ms() - killed;
    let mut seen: [Option<(f64, String)>; 2] = [None, None];
    poll(
        "both survivors to drop the victim",
        DETECT_LIMIT,
        Duration::from_millis(10),
        || {
            for (i, slot) in seen.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = trio.drops(ctx, i, &victim)?.into_iter().next();
                }
            }
            Ok(seen.iter().all(Option::is_some).then_some(()))
        },
    )?;
    let polled = t0.elapsed().as_secs_f64() * 1000.0;
    let foreign = window.foreign(&survivors);
    let mut run = KillRun {
        reaped,
        polled,
        foreign,
        ..KillRun::default()
    };
    for (at, why) in seen.into_iter().flatten() {
        run.per_peer.push(at - killed);
        run.reasons.push(why);
    }
    if let Trio::Shoal(n) = &trio {
        let name = match case {
            Case::Shoal(Detector::Phi) => {
                "shoal_plugin_phi_members_dropped{plugin=\"phi-accrual-detector\"}"
            }
            _ => "shoal_plugin_members_dropped_on_connection_loss{plugin=\"tcp-failure-detector\"}",
        };
        run.watch_lost = n[..2]
            .iter()
            .filter_map(|s| metric(&ctx.http, s.api, "shoal_watch_connections_lost_total"))
            .collect();
        run.on_connection_loss = n[..2]
            .iter()
            .filter_map(|s| metric(&ctx.http, s.api, name))
            .sum();
    }
    Ok(run)
}

fn part_kill(ctx: &Ctx, report: &mut Vec<String>) {
    let cases = [
        Case::Shoal(Detector::Default),
        Case::Shoal(Detector::NoWatch),
        Case::Shoal(Detector::Phi),
        Case::Tomcat,
    ];
    let mut results: Vec<Vec<KillRun>> = vec![Vec::new(); cases.len()];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); cases.len()];
    for r in 0..ctx.opts.runs {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for &c in &order {
            let case = cases[c];
            match kill_once(ctx, case, &format!("kill{r}-{c}")) {
                Ok(k) => {
                    eprintln!(
                        "kill run {r} {:<52} peers {:?} ms, reaped {:.1} ms, polled {:.0} ms, \
                         reasons {:?}, detector drops {}, watch breaks {:?}, others used {:.2} core",
                        case.label(),
                        k.per_peer.iter().map(|x| x.round()).collect::<Vec<_>>(),
                        k.reaped,
                        k.polled,
                        k.reasons,
                        k.on_connection_loss,
                        k.watch_lost,
                        k.foreign
                    );
                    results[c].push(k);
                }
                Err(e) => {
                    eprintln!("kill run {r} {}: FAILED: {e}", case.label());
                    failures[c].push(e);
                }
            }
        }
    }
    report.push(format!(
        "\n### SIGKILL → dropped by all peers ({} runs; ms from the kill)\n\n\
         | case | all peers | first peer | polled (all) | kill → reaped | others' CPU (cores) | failed runs |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        ctx.opts.runs
    ));
    for (c, case) in cases.iter().enumerate() {
        let rs = &results[c];
        let all: Vec<f64> = rs
            .iter()
            .map(|k| k.per_peer.iter().copied().fold(f64::MIN, f64::max))
            .collect();
        let first: Vec<f64> = rs
            .iter()
            .map(|k| k.per_peer.iter().copied().fold(f64::MAX, f64::min))
            .collect();
        let polled: Vec<f64> = rs.iter().map(|k| k.polled).collect();
        let reaped: Vec<f64> = rs.iter().map(|k| k.reaped).collect();
        let foreign: Vec<f64> = rs.iter().map(|k| k.foreign).collect();
        report.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            case.label(),
            Stat::of(&all).show(0),
            Stat::of(&first).show(0),
            Stat::of(&polled).show(0),
            Stat::of(&reaped).show(1),
            Stat::of(&foreign).show(2),
            failures[c].len()
        ));
    }
    for (c, f) in failures.iter().enumerate() {
        for e in f {
            report.push(format!("\nfailed: {}: {e}", cases[c].label()));
        }
    }
}

// ---------------------------------------------------------------------------
// Part 2: false drops under a SIGSTOP longer than dropTime
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct PauseRun {
    /// Disappearance events of the paused node at the two others.
    false_drops: usize,
    /// Disappearance events of the others at the paused node.
    drops_by_paused: usize,
    /// The paused node is in both others' view at the end.
    in_view: bool,
    /// shoal: probes that kept a suspect (detector counters, both others).
    kept: f64,
    paused_ms: f64,
}

fn pause_once(ctx: &Ctx, case: Case, tag: &str) -> Result<PauseRun, String> {
    let trio = Trio::start(ctx, case, tag)?;
    std::thread::sleep(STEADY);
    let victim = trio.id(2);
    let pid = trio.pid(2);
    let t0 = Instant::now();
    signal(pid, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(ctx.opts.pause_secs));
    signal(pid, Signal::SIGCONT);
    let paused_ms = t0.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(AFTER_PAUSE);
    let mut run = PauseRun {
        paused_ms,
        ..PauseRun::default()
    };
    for i in 0..2 {
        run.false_drops += trio.drops(ctx, i, &victim)?.len();
        run.drops_by_paused += trio.drops(ctx, 2, &trio.id(i))?.len();
    }
    run.in_view = match &trio {
        Trio::Shoal(n) => n[..2].iter().all(|s| {
            get_json(&ctx.http, &format!("http://{}/api/members", s.api))
                .and_then(|v| {
                    v.as_array()
                        .map(|a| a.iter().any(|m| m["id"] == victim.as_str()))
                })
                .unwrap_or(false)
        }),
        Trio::Tomcat(n) => n[..2].iter().all(|t| t.members().contains(&victim)),
    };
    if let Trio::Shoal(n) = &trio {
        let name = match case {
            Case::Shoal(Detector::Phi) => {
                "shoal_plugin_phi_suspects_kept_alive{plugin=\"phi-accrual-detector\"}"
            }
            _ => "shoal_plugin_suspects_kept_alive{plugin=\"tcp-failure-detector\"}",
        };
        run.kept = n[..2]
            .iter()
            .filter_map(|s| metric(&ctx.http, s.api, name))
            .sum();
    }
    Ok(run)
}

fn part_pause(ctx: &Ctx, report: &mut Vec<String>) {
    let cases = [
        Case::Shoal(Detector::Default),
        Case::Shoal(Detector::Phi),
        Case::Tomcat,
    ];
    let mut results: Vec<Vec<PauseRun>> = vec![Vec::new(); cases.len()];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); cases.len()];
    for r in 0..ctx.opts.pause_runs {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for &c in &order {
            let case = cases[c];
            match pause_once(ctx, case, &format!("pause{r}-{c}")) {
                Ok(p) => {
                    eprintln!(
                        "pause run {r} {:<52} paused {:.0} ms: false drops {}, drops by the paused \
                         node {}, in view {}, suspects kept {}",
                        case.label(),
                        p.paused_ms,
                        p.false_drops,
                        p.drops_by_paused,
                        p.in_view,
                        p.kept
                    );
                    results[c].push(p);
                }
                Err(e) => {
                    eprintln!("pause run {r} {}: FAILED: {e}", case.label());
                    failures[c].push(e);
                }
            }
        }
    }
    report.push(format!(
        "\n### SIGSTOP {} s (dropTime {} s), SIGCONT, {} s more ({} runs)\n\n\
         | case | false drops (runs with any) | drops by the paused node | in view at the end | suspects kept by a probe (median) | failed runs |\n\
         |---|---:|---:|---:|---:|---:|",
        ctx.opts.pause_secs,
        DROP_TIME_MS / 1000,
        AFTER_PAUSE.as_secs(),
        ctx.opts.pause_runs
    ));
    for (c, case) in cases.iter().enumerate() {
        let rs = &results[c];
        let kept: Vec<f64> = rs.iter().map(|p| p.kept).collect();
        report.push(format!(
            "| {} | {} ({}) | {} | {}/{} | {} | {} |",
            case.label(),
            rs.iter().map(|p| p.false_drops).sum::<usize>(),
            rs.iter().filter(|p| p.false_drops > 0).count(),
            rs.iter().map(|p| p.drops_by_paused).sum::<usize>(),
            rs.iter().filter(|p| p.in_view).count(),
            rs.len(),
            if matches!(case, Case::Tomcat) {
                "—".to_owned()
            } else {
                format!("{:.0}", Stat::of(&kept).median)
            },
            failures[c].len()
        ));
    }
    for (c, f) in failures.iter().enumerate() {
        for e in f {
            report.push(format!("\nfailed: {}: {e}", cases[c].label()));
        }
    }
}

// ---------------------------------------------------------------------------
// Part 3: the cost of the watch at N members
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct CostRun {
    /// All nodes together, % of one core.
    cpu_pct: f64,
    rss_mib: Vec<f64>,
    fds: Vec<f64>,
    sockets: Vec<f64>,
    converge_s: f64,
    drops: usize,
    foreign: f64,
}

fn fd_counts(pid: u32) -> (usize, usize) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut all = 0;
    let mut sockets = 0;
    for e in dir.filter_map(Result::ok) {
        all += 1;
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")) {
            sockets += 1;
        }
    }
    (all, sockets)
}

fn cost_once(ctx: &Ctx, det: Detector, tag: &str) -> Result<CostRun, String> {
    let n = ctx.opts.cost_nodes;
    let group = free_port();
    let started = Instant::now();
    let mut nodes: Vec<Shoal> = Vec::with_capacity(n);
    // The first node alone: it fills the component cache the others load.
    let name = format!("{tag}-0");
    let first = ctx.spawn_shoal(&name, group, det)?;
    nodes.push(ctx.shoal_ready_or_retry(&name, group, det, first)?);
    let mut pending = Vec::new();
    for i in 1..n {
        pending.push(ctx.spawn_shoal(&format!("{tag}-{i}"), group, det)?);
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, node) in pending.into_iter().enumerate() {
        let name = format!("{tag}-{}", i + 1);
        nodes.push(ctx.shoal_ready_or_retry(&name, group, det, node)?);
    }
    ctx.shoal_converge(&mut nodes, det.watch(), BIG_CONVERGE_LIMIT)?;
    let converge_s = started.elapsed().as_secs_f64();
    std::thread::sleep(COST_SETTLE);
    let pids: Vec<u32> = nodes.iter().map(|s| s.proc.pid).collect();
    let window = CpuWindow::open(&pids);
    let t0 = Instant::now();
    let before: u64 = pids.iter().map(|p| pid_ticks(*p)).sum();
    std::thread::sleep(Duration::from_secs(ctx.opts.cost_secs));
    let after: u64 = pids.iter().map(|p| pid_ticks(*p)).sum();
    let secs = t0.elapsed().as_secs_f64();
    let foreign = window.foreign(&pids);
    let mut run = CostRun {
        cpu_pct: (after.saturating_sub(before)) as f64 / secs,
        converge_s,
        foreign,
        ..CostRun::default()
    };
    for s in &mut nodes {
        if let Some(why) = s.proc.exited() {
            return Err(why);
        }
        run.rss_mib.push(s.proc.rss_kb() as f64 / 1024.0);
        let (all, sockets) = fd_counts(s.proc.pid);
        run.fds.push(all as f64);
        run.sockets.push(sockets as f64);
    }
    run.drops = nodes.iter().map(|s| ctx.shoal_all_drops(s.api)).sum();
    // Stop them all at once (SIGKILL: the next cluster needs the CPU).
    for s in &mut nodes {
        signal(s.proc.pid, Signal::SIGKILL);
    }
    drop(nodes);
    Ok(run)
}

fn part_cost(ctx: &Ctx, report: &mut Vec<String>) {
    let cases = [Detector::Default, Detector::NoWatch, Detector::Phi];
    let mut results: Vec<Vec<CostRun>> = vec![Vec::new(); cases.len()];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); cases.len()];
    for r in 0..ctx.opts.cost_runs {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for &c in &order {
            let det = cases[c];
            match cost_once(ctx, det, &format!("cost{r}-{c}")) {
                Ok(k) => {
                    eprintln!(
                        "cost run {r} {:<52} {} nodes: {:.2} % of a core in total, RSS {} MiB, \
                         fds {}, sockets {}, converged in {:.0} s, disappearances {}, others used {:.2} core",
                        det.label(),
                        ctx.opts.cost_nodes,
                        k.cpu_pct,
                        Stat::of(&k.rss_mib).show(1),
                        Stat::of(&k.fds).show(0),
                        Stat::of(&k.sockets).show(0),
                        k.converge_s,
                        k.drops,
                        k.foreign
                    );
                    results[c].push(k);
                }
                Err(e) => {
                    eprintln!("cost run {r} {}: FAILED: {e}", det.label());
                    failures[c].push(e);
                }
            }
        }
    }
    report.push(format!(
        "\n### {} idle nodes, {} s window ({} runs; per-node figures: median (min–max) over all nodes of all runs)\n\n\
         | case | CPU, all nodes (% of one core) | per node (% of a core) | RSS per node (MiB) | fds per node | sockets per node | disappearances | others' CPU (cores) | failed runs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ctx.opts.cost_nodes, ctx.opts.cost_secs, ctx.opts.cost_runs
    ));
    for (c, det) in cases.iter().enumerate() {
        let rs = &results[c];
        let cpu: Vec<f64> = rs.iter().map(|k| k.cpu_pct).collect();
        let per: Vec<f64> = cpu.iter().map(|x| x / ctx.opts.cost_nodes as f64).collect();
        let rss: Vec<f64> = rs.iter().flat_map(|k| k.rss_mib.clone()).collect();
        let fds: Vec<f64> = rs.iter().flat_map(|k| k.fds.clone()).collect();
        let socks: Vec<f64> = rs.iter().flat_map(|k| k.sockets.clone()).collect();
        let foreign: Vec<f64> = rs.iter().map(|k| k.foreign).collect();
        report.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            det.label(),
            Stat::of(&cpu).show(1),
            Stat::of(&per).show(3),
            Stat::of(&rss).show(1),
            Stat::of(&fds).show(0),
            Stat::of(&socks).show(0),
            rs.iter().map(|k| k.drops).sum::<usize>(),
            Stat::of(&foreign).show(2),
            failures[c].len()
        ));
    }
    for (c, f) in failures.iter().enumerate() {
        for e in f {
            report.push(format!("\nfailed: {}: {e}", cases[c].label()));
        }
    }
}

// ---------------------------------------------------------------------------

fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("detection: watchdog: {limit:?} exceeded, killing every process");
        // Only those still our children (a pid of a reaped one may be reused).
        let ours = measure::children_of(std::process::id());
        for pid in lock(&PIDS).iter().filter(|p| ours.contains(p)) {
            signal(*pid, Signal::SIGKILL);
        }
        std::process::exit(2);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{}", usage());
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    if !opts.shoal_bin.is_file() {
        eprintln!(
            "error: {} missing (cargo build --release --bin shoal, or --shoal-bin)",
            opts.shoal_bin.display()
        );
        std::process::exit(2);
    }
    watchdog(opts.time_limit());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("detection");
    let logs = dir.join("logs");
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&logs);
    for d in [&logs, &work] {
        std::fs::create_dir_all(d).expect("bench dirs");
    }
    let needs_tomcat = opts.parts.contains("kill") || opts.parts.contains("pause");
    let classes = needs_tomcat.then(|| {
        let classes = work.join("classes");
        let _ = std::fs::remove_dir_all(&classes);
        std::fs::create_dir_all(&classes).expect("class dir");
        javac(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/TribesPeer.java"),
            &classes,
        );
        classes
    });
    let ctx = Ctx {
        opts: opts.clone(),
        logs,
        work,
        http: agent(Duration::from_secs(3)),
        classes,
    };
    let started = Instant::now();
    let load_before = load_avg();
    let mut report = vec![format!(
        "detection: {} ({} cores), {}; shoal {}; load average before {load_before}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if needs_tomcat {
            java_version(&jdk_tool("java"))
        } else {
            String::new()
        },
        opts.shoal_bin.display()
    )];
    if opts.parts.contains("kill") {
        part_kill(&ctx, &mut report);
    }
    if opts.parts.contains("pause") {
        part_pause(&ctx, &mut report);
    }
    if opts.parts.contains("cost") {
        part_cost(&ctx, &mut report);
    }
    report.push(format!(
        "\nload average after {}; took {:.0} s; logs in {}",
        load_avg(),
        started.elapsed().as_secs_f64(),
        ctx.logs.display()
    ));
    println!("{}", report.join("\n"));
}
