//! The web tier side by side (issue 11, item 5): the example app's cart-add
//! on three `webapp` processes (shoal-web over an embedded shoal node) next
//! to three embedded Tomcat 10.1 JVMs doing the same, each cluster measured
//! directly and through Apache httpd, in one run, with the machine's floor.
//!
//! ```sh
//! cargo bench -p shoal-webapp --bench web                  # everything, 6-8 minutes
//! cargo bench -p shoal-webapp --bench web -- --only shoal,direct --rounds 1
//! cargo bench -p shoal-webapp --bench web -- --help
//! ```
//!
//! **Load.** 8 users (threads of this process), each with its own session
//! and its own keep-alive connection, each sending `POST
//! /cart/add?item=iK&qty=1` with a 1 KiB note (different at every request)
//! as fast as its answers come; K cycles over 6 items, so a session holds 6
//! cart lines of ~1 KiB (~6.4 KiB) and every request rewrites one of them.
//! A user's first request creates its session; it keeps the `JSESSIONID`
//! cookie it is given. **Directly**, user *i* talks to node *i* mod 3 (as a
//! sticky balancer would place it); **through httpd**, every user talks to
//! one httpd (`tests/common/httpd.rs`: mod_proxy_balancer, one `route=` per
//! node, `stickysession=JSESSIONID`) in front of the three nodes.
//!
//! **Systems**, all running for the whole measurement:
//! * shoal: three `webapp --config N.toml --listen ADDR` per policy
//!   (`[session] policy` delta | backup, `send_options = "sync-ack"`: the
//!   answer waits for the other holders' acknowledgements).
//! * Tomcat: three JVMs per manager running `tests/interop/TomcatSessions.java`
//!   (embedded Tomcat from Debian's `libtomcat10-java`, the documented
//!   `SimpleTcpCluster`, ReplicationValve + JvmRouteBinderValve,
//!   DeltaManager or BackupManager, `channelSendOptions` 6 = USE_ACK |
//!   SYNC_ACK, BackupManager's `mapSendOptions` the same; JVM defaults plus
//!   `-Djava.net.preferIPv4Stack=true`, `WEB_JAVA_OPTS` adds flags). Its
//!   `/cart/add` servlet does what the Rust handler does. The cart answer
//!   (~6.4 KiB) fits Tomcat's 8 KiB response buffer, so Tomcat answers after
//!   the ReplicationValve's send, as shoal-web does (strace of a node: the
//!   request read, the delta written to both peers, both ACKs read, then
//!   the answer written).
//! * The floor: three trivial axum servers (this binary, `--floor-peer`;
//!   a `POST /cart/add` route that reads the body and answers a fixed body
//!   the size of the cart, with a cookie and `X-Node`, no session, no work),
//!   driven the same way, directly and through httpd. And two replicated
//!   floors (the same servers, `--floor-peer ROUTE ITEMS REPLICA PEER...`):
//!   `/cart/add` first sends the note, length-prefixed, to one other node
//!   (as `backup`) or both (as `delta`), written to all before it reads
//!   their 1-byte ACKs; each node ACKs what arrives on its replica port.
//!   The report says how many times Tomcat's rate these floors reach, and
//!   shoal's share of them: an axum app that replicates each request in an
//!   exchange of its own gets no further here.
//! * Diagnostics, directly: one `webapp` with no peers and one Tomcat node
//!   with no peers (DeltaManager, options 6: nothing to replicate to), the
//!   app, its session layer and HTTP without the replication; the report
//!   sets their CPU per request against the 3-node clusters'.
//!
//! **Rounds.** Tomcat is warmed up under this load first (JIT: at least
//! `--warmup` s, then in 5 s windows until two in a row gain less than 10 %
//! on the best, at most `--warmup-max` s; a stalled window is retried, three
//! in a row give the configuration up; 90 and 180 s by default: on a
//! 2.0 GHz Intel machine Tomcat was still 2× short of its speed after 36–57
//! s, and the bench flags a Tomcat whose rounds still climb > 10 %);
//! everything else 2 s; then the bench
//! waits (at most 30 s) until its processes are idle, so a JVM still
//! compiling does not take the first windows' CPU. Each round
//! measures every configuration once (1 s untimed with fresh users, then
//! `--seconds` s), shoal and Tomcat alternating, the order reversed every
//! other round. Medians over the rounds with the spread (slowest–fastest
//! round); the shoal/Tomcat ratios are taken per round (same round, back to
//! back) and also given as median and spread.
//!
//! **Accounting.** For every measured window: requests answered 200 in it,
//! errors (anything else), the latency of the requests started in it (p50,
//! p99), and the CPU used (from /proc, clock ticks) by the client (this
//! process), httpd (parent and children), the configuration's nodes, kernel
//! threads (loopback traffic is partly processed there) and the bench's
//! other processes (idle systems, a JVM compiling in the background), per
//! request; and the share of a core used by other processes (the machine
//! may be shared), per window and per round, with a warning when high
//! (with tick-based accounting, softirq time is charged to the process it
//! interrupted). A round that fails for one configuration loses that
//! window, not the configuration. After each window of a 3-node
//! configuration every user's cart is read from *another* node: its
//! quantities must add up to the adds the user got 200 for (the changes
//! were replicated).
//!
//! Every process started is stopped at the end and killed when dropped;
//! JVMs also exit at the end of their stdin; a watchdog kills everything
//! when the run overstays. Only 127.0.0.1.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/common/httpd.rs"]
mod httpd;
#[path = "../../../host/tests/common/java.rs"]
#[allow(dead_code)]
mod java;
#[path = "../../../host/benches/common/measure.rs"]
#[allow(dead_code)]
mod measure;
#[path = "../../../host/benches/common/nodes.rs"]
#[allow(dead_code)]
mod nodes;

use httpd::Httpd;
use java::jdk_tool;
use measure::{
    CpuWindow, Stat, children_of, cpu_model, java_version, kernel_thread_ticks, pid_ticks,
};
use nodes::{
    PIDS, Proc, StopBy, agent, compile_tomcat_sessions, free_port, get_json, http_get, load_avg,
    lock, rss_kb, signal, stop_all, tomcat_classpath, wait_for,
};

/// Concurrent users (default of `--users`).
const USERS: usize = 8;
/// Nodes per cluster.
const NODES: usize = 3;
/// Cart items a user cycles over (default of `--items`): the session
/// holds this many lines of ~[`NOTE_BYTES`].
const ITEMS: usize = 6;
/// The note sent with every add: what each request writes.
const NOTE_BYTES: usize = 1024;
/// Untimed load (fresh users: their sessions are created here) before each
/// measured window.
const ROUND_WARMUP: Duration = Duration::from_secs(1);
/// Warm-up of what is not a JVM (connections, caches, httpd's pools).
const NATIVE_WARMUP: Duration = Duration::from_secs(2);
/// A JVM's warm-up is measured in windows of this length...
const WARM_WINDOW: Duration = Duration::from_secs(5);
/// ... and ends once two windows in a row gain less than this on the best
/// before them (C2 keeps compiling for tens of seconds on 2 shared cores).
const WARM_GAIN: f64 = 0.10;
/// Warm-up windows in a row that may fail before a configuration is given up.
const WARM_FAILURES: u32 = 3;
/// Errors a user may see in one window before it gives up.
const MAX_ERRORS: u64 = 1000;
/// Share of a core used by others above which a round is flagged.
const BUSY_ROUND: f64 = 0.10;
/// Tomcat's last round faster than its first by more than this share: it
/// was still warming up, and the verdict is flagged.
const STILL_WARMING: f64 = 0.10;
/// The targets of issue 11: shoal's requests/s at least this many times
/// Tomcat's...
const TARGET_RPS: f64 = 3.0;
/// ... and Tomcat's p99 at least this many times shoal's.
const TARGET_P99: f64 = 2.0;
/// Clock ticks per second in /proc (USER_HZ).
const TICKS: f64 = 100.0;

/// The httpd parents among them (their children are ours too).
static HTTPD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The processes this run started, httpd's children included.
fn own_pids() -> Vec<u32> {
    let mut v = lock(&PIDS).clone();
    for h in lock(&HTTPD_PIDS).iter() {
        v.extend(children_of(*h));
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--floor-peer") {
        let route = args.get(1).cloned().unwrap_or_else(|| "f".into());
        let items = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(ITEMS);
        // The replicated floor: this node's replica port, then its peers'.
        let ports: Vec<u16> = args[3.min(args.len())..]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        floor::serve(&route, items, &ports);
        return;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("web: {e}\n\n{}", Opts::USAGE);
            std::process::exit(2);
        }
    };
    orchestrate(&opts, &args);
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// What to run and for how long.
#[derive(Debug, Clone)]
struct Opts {
    systems: HashSet<&'static str>,
    policies: HashSet<&'static str>,
    paths: HashSet<&'static str>,
    /// The 3-node clusters (false with `--only single`).
    clusters: bool,
    single: bool,
    rounds: usize,
    seconds: u64,
    warmup: u64,
    warmup_max: u64,
    users: usize,
    items: usize,
}

impl Opts {
    const SYSTEMS: [&'static str; 2] = ["shoal", "tomcat"];
    const POLICIES: [&'static str; 2] = ["delta", "backup"];
    const PATHS: [&'static str; 2] = ["direct", "httpd"];

    const USAGE: &'static str = "\
usage: cargo bench -p shoal-webapp --bench web -- [options]
  --only LIST        comma-separated, any of: shoal, tomcat (systems), delta, backup
                     (policies), direct, httpd (paths), single (the 1-node diagnostics,
                     directly); a category not named is not restricted; without --only
                     all run; `--only single` runs the diagnostics alone. The floor runs
                     on the selected paths.
  --rounds N         measured rounds (3)
  --seconds S        measured seconds per configuration and round (5)
  --warmup S         least warm-up under load per Tomcat cluster (90)
  --warmup-max S     most: it goes on in 5 s windows until two in a row gain < 10 %
                     on the best before them (180)
  --users N          concurrent users (8)
  --items K          cart items a user cycles over (6; the session holds K lines of 1 KiB)
environment: WEB_JAVA_OPTS adds JVM flags to every Tomcat node;
             WEB_SHOAL_POLL_US=S,R sets shoal's sender and receiver busy_poll_us,
             WEB_SHOAL_WORKERS=N each webapp's runtime worker threads,
             WEB_SHOAL_CPU_PRESSURE_GATE=false its runtime.cpu_pressure_gate
             (experiments; default: the nodes' default);
             WEB_FLOOR_WORKERS=N the floor servers' worker threads (Tokio's default)";

    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self {
            systems: Self::SYSTEMS.into_iter().collect(),
            policies: Self::POLICIES.into_iter().collect(),
            paths: Self::PATHS.into_iter().collect(),
            clusters: true,
            single: true,
            rounds: 3,
            seconds: 5,
            warmup: 90,
            warmup_max: 180,
            users: USERS,
            items: ITEMS,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            let num = |v: String| -> Result<usize, String> {
                v.parse().map_err(|_| format!("{a}: {v:?} is not a number"))
            };
            match a.as_str() {
                // `cargo bench` appends it to every bench binary's arguments.
                "--bench" => {}
                "--only" => {
                    let (mut s, mut p, mut w) = (HashSet::new(), HashSet::new(), HashSet::new());
                    o.single = false;
                    for t in value()?.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if let Some(k) = Self::SYSTEMS.iter().find(|k| **k == t) {
                            s.insert(*k);
                        } else if let Some(k) = Self::POLICIES.iter().find(|k| **k == t) {
                            p.insert(*k);
                        } else if let Some(k) = Self::PATHS.iter().find(|k| **k == t) {
                            w.insert(*k);
                        } else if t == "single" {
                            o.single = true;
                        } else {
                            return Err(format!("--only: unknown part {t:?}"));
                        }
                    }
                    // `--only single`: the diagnostics (and the floor) alone.
                    o.clusters = !(o.single && p.is_empty() && w.is_empty() && s.is_empty());
                    if !o.clusters {
                        w.insert("direct");
                    }
                    if !s.is_empty() {
                        o.systems = s;
                    }
                    if !p.is_empty() {
                        o.policies = p;
                    }
                    if !w.is_empty() {
                        o.paths = w;
                    }
                    if !o.paths.contains("direct") {
                        o.single = false;
                    }
                }
                "--rounds" => o.rounds = num(value()?)?.max(1),
                "--seconds" => o.seconds = num(value()?)?.max(1) as u64,
                "--warmup" => o.warmup = num(value()?)? as u64,
                "--warmup-max" => o.warmup_max = num(value()?)? as u64,
                "--users" => o.users = num(value()?)?.clamp(1, 256),
                "--items" => o.items = num(value()?)?.clamp(1, 64),
                "-h" | "--help" => {
                    println!("{}", Self::USAGE);
                    std::process::exit(0);
                }
                _ => return Err(format!("unknown argument {a:?}")),
            }
        }
        Ok(o)
    }

    /// Measured configurations per round.
    fn configs(&self) -> usize {
        let clusters = if self.clusters {
            self.systems.len() * self.policies.len()
        } else {
            0
        };
        // + the floor and the two replicated floors
        (clusters + 3) * self.paths.len() + usize::from(self.single) * self.systems.len()
    }

    /// JVM clusters (or nodes) that need a warm-up.
    fn jvms(&self) -> u64 {
        if !self.systems.contains("tomcat") {
            return 0;
        }
        let clusters = if self.clusters {
            self.policies.len()
        } else {
            0
        };
        (clusters + usize::from(self.single)) as u64
    }

    /// The watchdog's limit: generous for the selected work.
    fn time_limit(&self) -> Duration {
        let cfgs = self.configs() as u64;
        let rounds = self.rounds as u64 * cfgs * (self.seconds + 4);
        let warm = self.jvms() * (self.warmup.max(self.warmup_max) + 10) + cfgs * 4;
        Duration::from_secs(300 + rounds + warm)
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// The first line of `p`'s log that starts with `prefix`.
fn log_line(p: &Proc, prefix: &str) -> Option<String> {
    p.log_text()
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------
// The floor: a trivial axum server
// ---------------------------------------------------------------------------

mod floor {
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};

    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[derive(Clone)]
    struct Floor {
        body: Bytes,
        node: HeaderValue,
        cookie: HeaderValue,
        /// The replicated floor: the peers' replica ports, and idle
        /// connections to them (one set per request in flight).
        replicas: Arc<[u16]>,
        idle: Arc<Mutex<Vec<Vec<TcpStream>>>>,
    }

    /// A cart answer of `items` lines with notes of `NOTE_BYTES`: the size
    /// the app's `/cart/add` answers once the cart is full.
    pub fn cart_like(items: usize, node: &str) -> String {
        let note = "x".repeat(super::NOTE_BYTES);
        let lines: Vec<String> = (0..items)
            .map(|i| format!("\"i{i}\":{{\"qty\":100,\"note\":\"{note}\"}}"))
            .collect();
        format!("{{\"items\":{{{}}},\"node\":\"{node}\"}}", lines.join(","))
    }

    /// Child mode `--floor-peer ROUTE ITEMS [REPLICA PEER...]`: serves on
    /// 127.0.0.1 (a port of the OS's choice, printed as `listening PORT`)
    /// until its stdin says `stop` or ends (so it also exits when the bench
    /// dies). With ports after ITEMS, the replicated floor: it ACKs every
    /// length-prefixed body that arrives on port REPLICA with one byte, and
    /// `/cart/add` sends its body to every PEER's replica port (written to
    /// all, then the ACKs read) before it answers.
    pub fn serve(route: &str, items: usize, ports: &[u16]) {
        std::thread::spawn(|| {
            let mut line = String::new();
            let stdin = std::io::stdin();
            while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) && line.trim() != "stop" {
                line.clear();
            }
            std::process::exit(0);
        });
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        // WEB_FLOOR_WORKERS=N: the floor servers' worker threads (default:
        // Tokio's, one per core).
        if let Some(n) = std::env::var("WEB_FLOOR_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
        {
            rt.worker_threads(n);
        }
        let rt = rt.enable_all().build().expect("a tokio runtime");
        let floor = Floor {
            body: Bytes::from(cart_like(items, route)),
            node: HeaderValue::from_str(route).unwrap_or(HeaderValue::from_static("f")),
            cookie: HeaderValue::from_str(&format!(
                "JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}; Path=/; HttpOnly"
            ))
            .unwrap_or(HeaderValue::from_static("JSESSIONID=0.f")),
            replicas: ports.get(1..).unwrap_or_default().into(),
            idle: Arc::default(),
        };
        let replica = ports.first().copied();
        rt.block_on(async move {
            if let Some(port) = replica {
                let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("floor: bind the replica port");
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        tokio::spawn(ack_bodies(s));
                    }
                });
            }
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("floor: bind");
            let port = l.local_addr().expect("floor: local address").port();
            println!("listening {port}");
            let app = Router::new()
                .route("/cart/add", post(add))
                .route("/ready", get(|| async { StatusCode::OK }))
                .with_state(floor);
            axum::serve(l, app).await.expect("floor: serve");
        });
    }

    /// The replica side: reads length-prefixed bodies, ACKs each.
    async fn ack_bodies(mut s: TcpStream) -> std::io::Result<()> {
        s.set_nodelay(true)?;
        let mut body = vec![0u8; 1 << 16];
        loop {
            let len = s.read_u32().await? as usize;
            if len > body.len() {
                return Ok(());
            }
            s.read_exact(&mut body[..len]).await?;
            s.write_all(b"A").await?;
        }
    }

    /// Sends `body` to every replica and waits for their ACKs, on a set of
    /// connections of its own.
    async fn replicate(f: &Floor, body: &[u8]) -> std::io::Result<()> {
        let idle = f.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let mut conns = match idle {
            Some(c) => c,
            None => {
                let mut c = Vec::with_capacity(f.replicas.len());
                for port in f.replicas.iter() {
                    let s = TcpStream::connect(("127.0.0.1", *port)).await?;
                    s.set_nodelay(true)?;
                    c.push(s);
                }
                c
            }
        };
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        for c in &mut conns {
            c.write_all(&frame).await?;
        }
        let mut ack = [0u8; 1];
        for c in &mut conns {
            c.read_exact(&mut ack).await?;
        }
        if let Ok(mut v) = f.idle.lock() {
            v.push(conns);
        }
        Ok(())
    }

    /// Reads the body (and, in the replicated floor, sends it to the
    /// replicas), answers the fixed cart; the cookie when the request had
    /// none.
    async fn add(State(f): State<Floor>, headers: HeaderMap, note: Bytes) -> Response {
        if !f.replicas.is_empty() && replicate(&f, &note).await.is_err() {
            return StatusCode::BAD_GATEWAY.into_response();
        }
        let mut r = ([(header::CONTENT_TYPE, "application/json")], f.body).into_response();
        r.headers_mut().insert("x-node", f.node);
        if !headers.contains_key(header::COOKIE) {
            r.headers_mut().insert(header::SET_COOKIE, f.cookie);
        }
        r
    }
}

// ---------------------------------------------------------------------------
// The systems under test
// ---------------------------------------------------------------------------

/// What a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Floor,
    /// The floor, each request's body sent to this many other nodes and
    /// their ACKs awaited before the answer.
    FloorRepl(usize),
    /// One node of the system ("shoal" or "tomcat"), no peers.
    Single(&'static str),
    Shoal(&'static str),
    Tomcat(&'static str),
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Floor => "floor: axum, no session".into(),
            Kind::FloorRepl(1) => "floor: axum + the note to 1 replica, ACK, no session".into(),
            Kind::FloorRepl(n) => {
                format!("floor: axum + the note to {n} replicas, ACKs, no session")
            }
            Kind::Single("shoal") => "shoal webapp, 1 node (no peers)".into(),
            Kind::Single(_) => "Tomcat DeltaManager, 1 node (no peers)".into(),
            Kind::Shoal(p) => format!("shoal {p}, sync-ack"),
            Kind::Tomcat("delta") => "Tomcat DeltaManager, options 6".into(),
            Kind::Tomcat(_) => "Tomcat BackupManager, options 6".into(),
        }
    }

    /// Whether a cart written on one node must be readable on another.
    fn replicates(self) -> bool {
        matches!(self, Kind::Shoal(_) | Kind::Tomcat(_))
    }

    /// Whether it runs on JVMs (and needs their warm-up).
    fn jvm(self) -> bool {
        matches!(self, Kind::Tomcat(_) | Kind::Single("tomcat"))
    }
}

/// A running cluster: its nodes (route, HTTP address) and processes.
struct Cluster {
    kind: Kind,
    routes: Vec<String>,
    addrs: Vec<SocketAddr>,
    procs: Vec<Proc>,
    httpd: Option<Httpd>,
}

impl Cluster {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            routes: Vec::new(),
            addrs: Vec::new(),
            procs: Vec::new(),
            httpd: None,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid).collect()
    }

    /// httpd's parent and children.
    fn httpd_pids(&self) -> Vec<u32> {
        self.httpd
            .as_ref()
            .and_then(Httpd::pid)
            .map(|p| {
                let mut v = vec![p];
                v.extend(children_of(p));
                v
            })
            .unwrap_or_default()
    }

    /// Puts an httpd in front of the nodes.
    fn front(&mut self) -> Result<(), String> {
        let members: Vec<(&str, SocketAddr)> = self
            .routes
            .iter()
            .map(String::as_str)
            .zip(self.addrs.iter().copied())
            .collect();
        let h = Httpd::start(0, &members).map_err(|e| format!("httpd: {e}"))?;
        if let Some(pid) = h.pid() {
            lock(&HTTPD_PIDS).push(pid);
            lock(&PIDS).push(pid);
        }
        self.httpd = Some(h);
        Ok(())
    }
}

struct Ctx {
    logs: PathBuf,
    work: PathBuf,
    classes: Option<PathBuf>,
    items: usize,
}

/// What the replicated floors allow, per round: the floor with as many
/// replicas as the policy writes to (backup 1, delta 2) over Tomcat, and
/// shoal over that floor. A system that replicates each request in an
/// exchange of its own, on axum, gets no further than the floor.
fn floor_allows(opts: &Opts, cfgs: &[Config]) {
    let mut rows = Vec::new();
    for policy in Opts::POLICIES.iter().filter(|p| opts.policies.contains(*p)) {
        let replicas = if *policy == "backup" { 1 } else { NODES - 1 };
        for httpd in [false, true] {
            let find = |k: Kind| cfgs.iter().find(|c| c.kind == k && c.httpd == httpd);
            let (Some(f), Some(s), Some(t)) = (
                find(Kind::FloorRepl(replicas)),
                find(Kind::Shoal(policy)),
                find(Kind::Tomcat(policy)),
            ) else {
                continue;
            };
            let per_round = |a: &Config, b: &Config| -> Option<Stat> {
                let v: Vec<f64> = (0..opts.rounds)
                    .filter_map(|r| Some(a.in_round(r)?.rate / b.in_round(r)?.rate.max(1e-9)))
                    .collect();
                (!v.is_empty()).then(|| Stat::of(&v))
            };
            let show = |x: Option<Stat>| x.map_or("n/a".to_owned(), |x| x.show(2));
            rows.push(format!(
                "| {policy}, {} | {replicas} | {} | {} |",
                if httpd { "httpd" } else { "direct" },
                show(per_round(f, t)),
                show(per_round(s, f)),
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    println!(
        "
What the replicated floor allows (the floor with the policy's number of replicas; per \
         round, median and spread):\n"
    );
    println!("| policy, path | replicas | floor requests/s / Tomcat's | shoal's / the floor's |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}

/// Starts the three floor servers; with `replicas` > 0, the replicated
/// floor: node k sends each body to the `replicas` nodes after it.
fn start_floor(ctx: &Ctx, replicas: usize) -> Result<Cluster, String> {
    let kind = if replicas == 0 {
        Kind::Floor
    } else {
        Kind::FloorRepl(replicas)
    };
    let mut c = Cluster::new(kind);
    let replica_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    for k in 1..=NODES {
        let route = if replicas == 0 {
            format!("f{k}")
        } else {
            format!("r{replicas}f{k}")
        };
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.args(["--floor-peer", &route, &ctx.items.to_string()]);
        if replicas > 0 {
            cmd.arg(replica_ports[k - 1].to_string());
            for j in 1..=replicas {
                cmd.arg(replica_ports[(k - 1 + j) % NODES].to_string());
            }
        }
        let mut p = Proc::spawn(cmd, &format!("floor-{route}"), &ctx.logs, StopBy::Stdin)?;
        let port = wait_for(
            &mut p,
            "`listening PORT`",
            Duration::from_secs(10),
            Duration::from_millis(20),
            |p| {
                log_line(p, "listening ")?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u16>()
                    .ok()
            },
        );
        c.procs.push(p);
        c.routes.push(route);
        c.addrs.push(SocketAddr::from(([127, 0, 0, 1], port?)));
    }
    Ok(c)
}

/// The webapp's node config: `[session]` as in examples/webapp/node*.toml,
/// membership timing as TomcatSessions' (500 ms heartbeats, 3 s drop).
fn webapp_toml(route: &str, domain: &str, mcast: u16, api: u16, policy: &str) -> String {
    let (sender_poll, receiver_poll) = match std::env::var("WEB_SHOAL_POLL_US") {
        Ok(v) => {
            let (s, r) = v.split_once(',').unwrap_or((&v, &v));
            (
                format!("[sender]\nbusy_poll_us = {s}\n\n"),
                format!("busy_poll_us = {r}\n"),
            )
        }
        Err(_) => (String::new(), String::new()),
    };
    // WEB_SHOAL_WORKERS=N: `[runtime] worker_threads` (default: half the CPUs).
    // WEB_SHOAL_CPU_PRESSURE_GATE=false: `[runtime] cpu_pressure_gate`.
    let mut runtime = std::env::var("WEB_SHOAL_WORKERS")
        .map(|n| format!("worker_threads = {n}\n"))
        .unwrap_or_default();
    if let Ok(on) = std::env::var("WEB_SHOAL_CPU_PRESSURE_GATE") {
        runtime.push_str(&format!("cpu_pressure_gate = {on}\n"));
    }
    if !runtime.is_empty() {
        runtime = format!("[runtime]\n{runtime}\n");
    }
    format!(
        "# written by examples/webapp/benches/web.rs\n\
         [node]\nname = \"{route}\"\njvm_route = \"{route}\"\ndomain = \"{domain}\"\n\n\
         [membership]\nkind = \"multicast\"\naddress = \"228.0.0.4\"\nport = {mcast}\n\
         bind = \"127.0.0.1\"\nfrequency_ms = 500\ndrop_time_ms = 3000\n\n\
         [receiver]\naddress = \"127.0.0.1\"\nport = {port}\nauto_bind = 100\n{receiver_poll}\n\
         {sender_poll}\
         {runtime}\
         [api]\nlisten = \"127.0.0.1:{api}\"\n\n\
         [session]\npolicy = \"{policy}\"\nsend_options = \"sync-ack\"\n",
        port = free_port()
    )
}

/// Spawns one webapp and waits for its `GET /ready` = 200; (process, web
/// address, API port). Retried with other ports if one was taken.
fn spawn_webapp(
    ctx: &Ctx,
    route: &str,
    domain: &str,
    mcast: u16,
    policy: &str,
) -> Result<(Proc, SocketAddr, u16), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let api = free_port();
        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let file = ctx.work.join(format!("{route}.toml"));
        std::fs::write(&file, webapp_toml(route, domain, mcast, api, policy))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_webapp"));
        cmd.arg("--config")
            .arg(&file)
            .arg("--listen")
            .arg(web.to_string());
        let mut p = Proc::spawn(cmd, route, &ctx.logs, StopBy::Sigterm)?;
        let a = agent(Duration::from_secs(5));
        let url = format!("http://{web}/ready");
        match wait_for(
            &mut p,
            "GET /ready = 200",
            Duration::from_secs(60),
            Duration::from_millis(20),
            |_| matches!(http_get(&a, &url), Ok((200, _))).then_some(()),
        ) {
            Ok(()) => return Ok((p, web, api)),
            Err(e) if e.contains("in use") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Starts `n` webapps one after the other (each ready before the next),
/// then waits until every one sees the others.
fn start_webapps(ctx: &Ctx, kind: Kind, prefix: &str, mcast: u16) -> Result<Cluster, String> {
    let (policy, n) = match kind {
        Kind::Shoal(p) => (p, NODES),
        _ => ("delta", 1),
    };
    let mut c = Cluster::new(kind);
    let mut apis = Vec::new();
    let domain = format!("web-bench-{prefix}-{}", std::process::id());
    for k in 1..=n {
        let route = format!("{prefix}{k}");
        let (p, web, api) = spawn_webapp(ctx, &route, &domain, mcast, policy)?;
        c.procs.push(p);
        c.routes.push(route);
        c.addrs.push(web);
        apis.push(api);
    }
    let a = agent(Duration::from_secs(5));
    for (p, api) in c.procs.iter_mut().zip(&apis) {
        let url = format!("http://127.0.0.1:{api}/api/members");
        wait_for(
            p,
            &format!("{} members in GET /api/members", n - 1),
            Duration::from_secs(30),
            Duration::from_millis(100),
            |_| {
                get_json(&a, &url)
                    .and_then(|v| v.as_array().map(Vec::len))
                    .filter(|m| *m >= n - 1)
            },
        )?;
    }
    Ok(c)
}

/// Compiles TomcatSessions.java into the work dir (every run: ~2–5 s).
fn compile_java(work: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/TomcatSessions.java");
    compile_tomcat_sessions(work, &src, false)
}

/// One Tomcat node, spawned (`http=0`: its port is read from its
/// `{"event":"started",...}` line).
fn spawn_tomcat(ctx: &Ctx, route: &str, manager: &str, mcast: u16) -> Result<Proc, String> {
    let classes = ctx
        .classes
        .as_ref()
        .ok_or("TomcatSessions.java was not compiled")?;
    let mut cmd = Command::new(jdk_tool("java"));
    if let Ok(opts) = std::env::var("WEB_JAVA_OPTS") {
        cmd.args(opts.split_whitespace());
    }
    cmd.arg("-Djava.net.preferIPv4Stack=true")
        .arg("-cp")
        .arg(tomcat_classpath(classes))
        .arg("TomcatSessions")
        .arg("http=0")
        // Tribes' autoBind takes the next free port if this one is gone.
        .arg(format!("tribes={}", free_port()))
        .arg(format!("mcastPort={mcast}"))
        .arg(format!("route={route}"))
        .arg(format!("manager={manager}"))
        .arg("options=6")
        .arg(format!("base={}", ctx.work.join(route).display()));
    Proc::spawn(cmd, route, &ctx.logs, StopBy::Stdin)
}

/// Waits for a Tomcat node's started line, then until `GET /count` shows
/// at least `members` members; its HTTP address.
fn wait_tomcat(p: &mut Proc, members: u64, timeout: Duration) -> Result<SocketAddr, String> {
    let port = wait_for(
        p,
        "the started line",
        timeout,
        Duration::from_millis(100),
        |p| {
            let l = log_line(p, "{\"event\":\"started\"")?;
            let v: Value = serde_json::from_str(&l).ok()?;
            u16::try_from(v["http"].as_u64()?).ok()
        },
    )?;
    let a = agent(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{port}/count");
    wait_for(
        p,
        &format!("GET /count with {members} members"),
        timeout,
        Duration::from_millis(200),
        |_| get_json(&a, &url).filter(|v| v["members"].as_u64().unwrap_or(0) >= members),
    )?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Starts the Tomcat clusters: node k of every cluster together, node k+1
/// only once node k of the same cluster serves (DeltaManager nodes must not
/// start at the same moment: both would wait out the state transfer).
fn start_tomcats(ctx: &Ctx, specs: &[(&'static str, u16)]) -> Vec<Result<Cluster, String>> {
    let mut out: Vec<Result<Cluster, String>> = specs
        .iter()
        .map(|(m, _)| Ok(Cluster::new(Kind::Tomcat(m))))
        .collect();
    for k in 1..=NODES {
        for (slot, (manager, mcast)) in out.iter_mut().zip(specs) {
            let Ok(c) = slot else { continue };
            let route = format!("t{}{k}", &manager[..1]);
            match spawn_tomcat(ctx, &route, manager, *mcast) {
                Ok(p) => {
                    c.procs.push(p);
                    c.routes.push(route);
                }
                Err(e) => *slot = Err(e),
            }
        }
        for slot in out.iter_mut() {
            let Ok(c) = slot else { continue };
            let Some(p) = c.procs.last_mut() else {
                continue;
            };
            let t = Instant::now();
            match wait_tomcat(p, (k - 1) as u64, Duration::from_secs(180)) {
                Ok(addr) => {
                    eprintln!("   {} up after {:.1} s", p.name, t.elapsed().as_secs_f64());
                    c.addrs.push(addr);
                }
                Err(e) => *slot = Err(e),
            }
        }
    }
    for slot in out.iter_mut() {
        let Ok(c) = slot else { continue };
        for p in c.procs.iter_mut() {
            if let Err(e) = wait_tomcat(p, (NODES - 1) as u64, Duration::from_secs(60)) {
                *slot = Err(e);
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Load: one user per thread, keep-alive
// ---------------------------------------------------------------------------

/// What the load needs of an answer.
#[derive(Debug, Default)]
struct Answer {
    status: u16,
    /// `JSESSIONID=VALUE` from a `Set-Cookie`.
    cookie: Option<String>,
    /// The `X-Node` header.
    node: Option<String>,
}

/// A keep-alive HTTP/1.1 client: one `write` per request (head and body
/// together) and buffered reads; `Content-Length` and chunked bodies;
/// reconnects when the server closed. (ureq costs several syscalls per
/// request besides: host/benches/sessions.rs measured a floor of 10 k
/// instead of 100 k requests/s with it.)
struct Http1 {
    port: u16,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
    out: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl Http1 {
    fn new(port: u16) -> Self {
        Self {
            port,
            conn: None,
            out: Vec::with_capacity(2 * NOTE_BYTES),
            line: String::new(),
            body: Vec::new(),
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        let s = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect 127.0.0.1:{}: {e}", self.port))?;
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
        let w = s.try_clone().map_err(|e| e.to_string())?;
        self.conn = Some((BufReader::with_capacity(32 * 1024, s), w));
        Ok(())
    }

    /// Sends a request and reads the whole answer (the body stays in
    /// `self.body`). A request on a reused connection that the server had
    /// closed is sent once more on a new one.
    fn request(
        &mut self,
        method: &str,
        target: &str,
        cookie: Option<&str>,
        body: &[u8],
    ) -> Result<Answer, String> {
        self.out.clear();
        let _ = write!(
            self.out,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        if !body.is_empty() || method == "POST" {
            let _ = write!(
                self.out,
                "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        if let Some(c) = cookie {
            let _ = write!(self.out, "Cookie: {c}\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let reused = self.conn.is_some();
        if !reused {
            self.connect()?;
        }
        match self.exchange() {
            Ok(a) => Ok(a),
            Err(_) if reused => {
                self.connect()?;
                self.exchange()
                    .map_err(|e| format!("{method} {target}: {e}"))
            }
            Err(e) => Err(format!("{method} {target}: {e}")),
        }
    }

    fn exchange(&mut self) -> Result<Answer, String> {
        let r = self.exchange_inner();
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange_inner(&mut self) -> Result<Answer, String> {
        let (r, w) = self.conn.as_mut().ok_or("not connected")?;
        w.write_all(&self.out).map_err(|e| e.to_string())?;
        let line = &mut self.line;
        let read_line = |r: &mut BufReader<TcpStream>, line: &mut String| {
            line.clear();
            match r.read_line(line) {
                Ok(0) => Err("connection closed".to_owned()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        };
        read_line(r, line)?;
        let mut a = Answer {
            status: line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad status line {:?}", line.trim_end()))?,
            ..Answer::default()
        };
        let (mut len, mut chunked, mut close) = (0usize, false, false);
        loop {
            read_line(r, line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            } else if k.eq_ignore_ascii_case("set-cookie") && v.starts_with("JSESSIONID=") {
                a.cookie = Some(v.split(';').next().unwrap_or(v).to_owned());
            } else if k.eq_ignore_ascii_case("x-node") {
                a.node = Some(v.to_owned());
            }
        }
        self.body.clear();
        if chunked {
            loop {
                read_line(r, line)?;
                let n = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {:?}", line.trim_end()))?;
                let at = self.body.len();
                self.body.resize(at + n, 0);
                r.read_exact(&mut self.body[at..])
                    .map_err(|e| e.to_string())?;
                read_line(r, line)?;
                if n == 0 {
                    break;
                }
            }
        } else if len > 0 {
            if len > 16 << 20 {
                return Err(format!("answer of {len} bytes"));
            }
            self.body.resize(len, 0);
            r.read_exact(&mut self.body).map_err(|e| e.to_string())?;
        }
        if close {
            self.conn = None;
        }
        Ok(a)
    }
}

/// One user: a connection, a session cookie, a cart.
struct User {
    id: usize,
    http: Http1,
    items: usize,
    cookie: Option<String>,
    node: Option<String>,
    /// Times `X-Node` changed within the session (failovers).
    switches: u64,
    /// Adds answered 200 since the session was created.
    adds_ok: u64,
    seq: u64,
    note: Vec<u8>,
}

impl User {
    fn new(id: usize, port: u16, items: usize) -> Self {
        Self {
            id,
            http: Http1::new(port),
            items,
            cookie: None,
            node: None,
            switches: 0,
            adds_ok: 0,
            seq: 0,
            note: vec![b'x'; NOTE_BYTES],
        }
    }

    /// `POST /cart/add?item=iK&qty=1` with a 1 KiB note that differs from
    /// every earlier one.
    fn add(&mut self) -> Result<(), String> {
        self.seq += 1;
        let stamp = format!("u{:03}-{:016}-", self.id, self.seq);
        self.note[..stamp.len()].copy_from_slice(stamp.as_bytes());
        let target = format!("/cart/add?item=i{}&qty=1", self.seq % self.items as u64);
        let a = self
            .http
            .request("POST", &target, self.cookie.as_deref(), &self.note)?;
        if let Some(c) = a.cookie {
            self.cookie = Some(c);
        }
        if let Some(n) = a.node {
            if self.node.as_ref().is_some_and(|o| *o != n) {
                self.switches += 1;
            }
            self.node = Some(n);
        }
        if a.status != 200 {
            return Err(format!(
                "POST {target}: {} {}",
                a.status,
                String::from_utf8_lossy(&self.http.body)
                    .chars()
                    .take(120)
                    .collect::<String>()
            ));
        }
        self.adds_ok += 1;
        Ok(())
    }
}

/// Where a configuration's users go.
#[derive(Debug, Clone)]
struct Target {
    /// User i → `ports[i % len]`.
    ports: Vec<u16>,
    /// The nodes (route, address), for reading carts on another node.
    nodes: Vec<(String, SocketAddr)>,
    /// Read every cart on another node after the window.
    verify: bool,
}

/// CPU ticks at one moment, by group.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    client: u64,
    front: u64,
    nodes: u64,
    /// The bench's other processes (the systems not measured now: idle
    /// nodes, a JVM's background compiler or collector).
    rest: u64,
    kernel: u64,
}

impl Ticks {
    fn now(nodes: &[u32], front: &[u32]) -> Self {
        Self {
            client: pid_ticks(std::process::id()),
            front: front.iter().map(|p| pid_ticks(*p)).sum(),
            nodes: nodes.iter().map(|p| pid_ticks(*p)).sum(),
            rest: own_pids()
                .iter()
                .filter(|p| !nodes.contains(p) && !front.contains(p))
                .map(|p| pid_ticks(*p))
                .sum(),
            kernel: kernel_thread_ticks(),
        }
    }

    fn since(self, before: Ticks) -> Ticks {
        Ticks {
            client: self.client.saturating_sub(before.client),
            front: self.front.saturating_sub(before.front),
            nodes: self.nodes.saturating_sub(before.nodes),
            rest: self.rest.saturating_sub(before.rest),
            kernel: self.kernel.saturating_sub(before.kernel),
        }
    }

    /// Everything the bench used: client, httpd, nodes, kernel threads and
    /// the bench's other processes.
    fn total(&self) -> u64 {
        self.client + self.front + self.nodes + self.kernel + self.rest
    }
}

/// One measured window of one configuration.
#[derive(Debug, Clone, Default)]
struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    ok: u64,
    errors: u64,
    switches: u64,
    /// CPU in the window, by group.
    cpu: Ticks,
    /// Share of a core used by other processes in the window.
    foreign: f64,
    /// Carts read on another node: (complete, read).
    carts: Option<(usize, usize)>,
}

impl Sample {
    /// µs of CPU per answered request from `ticks`.
    fn per_request(&self, ticks: u64) -> f64 {
        if self.ok == 0 {
            return 0.0;
        }
        ticks as f64 / TICKS * 1e6 / self.ok as f64
    }
}

/// What a user thread hands back.
struct UserRun {
    user: User,
    lat: Vec<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// `users` fresh users load the target for `warm` (untimed: sessions are
/// created there) and then `measure`: requests answered 200 in the
/// measured window per second, the latency of those started in it, the CPU
/// used in it; then (if asked) every cart is read on another node.
fn run_load(
    target: &Target,
    users: usize,
    items: usize,
    warm: Duration,
    measure: Duration,
    groups: (&[u32], &[u32]),
) -> Result<(Sample, Option<String>), String> {
    let start = Instant::now() + Duration::from_millis(50);
    let (warm_end, end) = (start + warm, start + warm + measure);
    let threads: Vec<_> = (0..users)
        .map(|i| {
            let port = target.ports[i % target.ports.len()];
            std::thread::spawn(move || {
                let mut user = User::new(i, port, items);
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                let mut lat: Vec<u64> = Vec::with_capacity(1 << 15);
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let t = Instant::now();
                    if t >= end || errors >= MAX_ERRORS {
                        break;
                    }
                    match user.add() {
                        Ok(()) => {
                            let done = Instant::now();
                            if t >= warm_end {
                                lat.push((done - t).as_nanos() as u64);
                            }
                            if done >= warm_end && done <= end {
                                ok += 1;
                            }
                        }
                        Err(e) => {
                            if t >= warm_end {
                                errors += 1;
                            }
                            first_error.get_or_insert(e);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                UserRun {
                    user,
                    lat,
                    ok,
                    errors,
                    first_error,
                }
            })
        })
        .collect();
    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
    let (nodes, front) = groups;
    let window = CpuWindow::open(&own_pids());
    let before = Ticks::now(nodes, front);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu = Ticks::now(nodes, front).since(before);
    let foreign = window.foreign(&own_pids());
    let mut all: Vec<u64> = Vec::new();
    let mut runs = Vec::new();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for t in threads {
        match t.join() {
            Ok(r) => {
                all.extend_from_slice(&r.lat);
                ok += r.ok;
                errors += r.errors;
                if first_error.is_none() {
                    first_error = r.first_error.clone();
                }
                runs.push(r);
            }
            Err(_) => return Err("a user thread panicked".into()),
        }
    }
    if ok == 0 {
        return Err(first_error.unwrap_or_else(|| {
            "no request answered in the window and none failed: they stalled".into()
        }));
    }
    all.sort_unstable();
    let at = |q: f64| -> f64 {
        let i = ((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1));
        all.get(i).map_or(0.0, |v| *v as f64 / 1e3)
    };
    let carts = target.verify.then(|| verify_carts(target, &runs));
    let sample = Sample {
        rate: ok as f64 / measure.as_secs_f64().max(1e-3),
        p50_us: at(0.5),
        p99_us: at(0.99),
        ok,
        errors,
        switches: runs.iter().map(|r| r.user.switches).sum(),
        cpu,
        foreign,
        carts,
    };
    Ok((sample, first_error))
}

/// Reads every user's cart on a node other than the one its cookie names:
/// (carts whose quantities add up to the adds answered 200, carts read).
fn verify_carts(target: &Target, runs: &[UserRun]) -> (usize, usize) {
    let (mut complete, mut read) = (0, 0);
    for r in runs {
        let Some(cookie) = r.user.cookie.as_deref() else {
            continue;
        };
        let route = cookie.rsplit_once('.').map_or("", |(_, r)| r);
        let Some(home) = target.nodes.iter().position(|(n, _)| n == route) else {
            continue;
        };
        let other = target.nodes[(home + 1) % target.nodes.len()].1;
        let mut http = Http1::new(other.port());
        read += 1;
        let Ok(a) = http.request("GET", "/cart", Some(cookie), &[]) else {
            continue;
        };
        let total: u64 = serde_json::from_slice::<Value>(&http.body)
            .ok()
            .and_then(|v| {
                v["items"]
                    .as_object()
                    .map(|m| m.values().filter_map(|l| l["qty"].as_u64()).sum())
            })
            .unwrap_or(0);
        if a.status == 200 && total == r.user.adds_ok {
            complete += 1;
        } else {
            eprintln!(
                "   ⚠ user {}: cart on {other}: status {}, quantities add up to {total}, \
                 {} adds answered 200",
                r.user.id, a.status, r.user.adds_ok
            );
        }
    }
    (complete, read)
}

// ---------------------------------------------------------------------------
// Configurations and rounds
// ---------------------------------------------------------------------------

/// One measured configuration: a cluster and a path.
struct Config {
    label: String,
    kind: Kind,
    httpd: bool,
    /// Index into the clusters.
    cluster: usize,
    target: Option<Target>,
    /// Warm-up under load before the rounds: at least `.0`, then until the
    /// rate stops climbing, at most `.1`.
    warmup: (Duration, Duration),
    /// How the warm-up ended: (seconds, requests/s of its last window).
    warmed: Option<(f64, f64)>,
    samples: Vec<Sample>,
    /// The round of each sample.
    rounds: Vec<usize>,
    first_error: Option<String>,
    /// Why it could not be measured (or the last round that failed).
    failed: Option<String>,
}

impl Config {
    /// The sample of round `r`, if that round was measured.
    fn in_round(&self, r: usize) -> Option<&Sample> {
        self.rounds
            .iter()
            .position(|x| *x == r)
            .map(|i| &self.samples[i])
    }

    fn groups<'a>(&self, clusters: &'a [Cluster]) -> (Vec<u32>, Vec<u32>) {
        let c: &'a Cluster = &clusters[self.cluster];
        let front = if self.httpd {
            c.httpd_pids()
        } else {
            Vec::new()
        };
        (c.pids(), front)
    }

    /// Warm-up: windows of [`WARM_WINDOW`] (or the whole minimum if shorter)
    /// until the minimum has passed and two windows in a row gained less than
    /// [`WARM_GAIN`] on the best before them, or the maximum has.
    fn warm(&mut self, opts: &Opts, clusters: &[Cluster]) {
        let Some(target) = self.target.clone() else {
            return;
        };
        let (min, max) = self.warmup;
        let window = WARM_WINDOW.min(min).max(Duration::from_secs(1));
        let (nodes, front) = self.groups(clusters);
        let start = Instant::now();
        let (mut best, mut flat, mut failures) = (0.0f64, 0u32, 0u32);
        loop {
            match run_load(
                &target,
                opts.users,
                opts.items,
                Duration::ZERO,
                window,
                (&nodes, &front),
            ) {
                Ok((s, _)) => {
                    let t = start.elapsed();
                    eprintln!(
                        "   {:48} warm-up {:3.0} s: {:7.0} req/s  p50 {:6.0} µs",
                        self.label,
                        t.as_secs_f64(),
                        s.rate,
                        s.p50_us
                    );
                    if best > 0.0 && s.rate < best * (1.0 + WARM_GAIN) {
                        flat += 1;
                    } else {
                        flat = 0;
                    }
                    best = best.max(s.rate);
                    if (t >= min && (flat >= 2 || min == max)) || t >= max {
                        self.warmed = Some((t.as_secs_f64(), s.rate));
                        return;
                    }
                }
                Err(e) => {
                    // A stalled window (a JVM's pause, a busy machine) is
                    // not the end: give up after a few in a row.
                    failures += 1;
                    eprintln!(
                        "   ✗ {} warm-up {:.0} s ({failures} in a row): {e}",
                        self.label,
                        start.elapsed().as_secs_f64()
                    );
                    if failures >= WARM_FAILURES {
                        self.failed = Some(e);
                        self.target = None;
                        return;
                    }
                    if start.elapsed() >= max {
                        self.warmed = Some((start.elapsed().as_secs_f64(), 0.0));
                        return;
                    }
                    continue;
                }
            }
            failures = 0;
        }
    }

    /// One measured window, of round `round`.
    fn run(&mut self, opts: &Opts, clusters: &[Cluster], round: usize) {
        let Some(target) = self.target.clone() else {
            return;
        };
        let (nodes, front) = self.groups(clusters);
        match run_load(
            &target,
            opts.users,
            opts.items,
            ROUND_WARMUP,
            Duration::from_secs(opts.seconds),
            (&nodes, &front),
        ) {
            Ok((s, e)) => {
                let per = |t| s.per_request(t);
                eprintln!(
                    "   {:48} {:7.0} req/s  p50 {:6.0} µs  p99 {:6.0} µs  CPU/req µs: \
                     client {:.0}, httpd {:.0}, nodes {:.0}, kernel {:.0}, rest of the bench \
                     {:.0}, total {:.0} ({:.2} cores); other processes {:.0}% of a core{}{}{}",
                    self.label,
                    s.rate,
                    s.p50_us,
                    s.p99_us,
                    per(s.cpu.client),
                    per(s.cpu.front),
                    per(s.cpu.nodes),
                    per(s.cpu.kernel),
                    per(s.cpu.rest),
                    per(s.cpu.total()),
                    s.cpu.total() as f64 / TICKS / opts.seconds as f64,
                    s.foreign * 100.0,
                    s.carts
                        .map(|(c, n)| format!("; carts {c}/{n} on another node"))
                        .unwrap_or_default(),
                    if s.errors > 0 {
                        format!("  ⚠ {} errors", s.errors)
                    } else {
                        String::new()
                    },
                    if s.switches > 0 {
                        format!("  ⚠ {} node switches", s.switches)
                    } else {
                        String::new()
                    },
                );
                if s.foreign > BUSY_ROUND {
                    eprintln!(
                        "   ⚠ {:.0}% of a core went to other processes in this window",
                        s.foreign * 100.0
                    );
                }
                self.samples.push(s);
                self.rounds.push(round);
                if self.first_error.is_none() {
                    self.first_error = e;
                }
            }
            Err(e) => {
                // The round is lost, not the configuration.
                eprintln!("   ✗ {} (round {}): {e}", self.label, round + 1);
                self.failed = Some(e);
            }
        }
    }

    fn stat(&self, f: impl Fn(&Sample) -> f64) -> Stat {
        Stat::of(&self.samples.iter().map(f).collect::<Vec<_>>())
    }
}

/// Own multicast ports, away from Tomcat's default 45564, examples/webapp's
/// 45610, the tests' ephemeral ones and the host benches' 46000–49999.
fn mcast_base() -> u16 {
    43000 + (std::process::id() % 90) as u16 * 10
}

/// Starts one Tomcat node with no peers (DeltaManager, options 6).
fn start_tomcat_single(ctx: &Ctx, mcast: u16) -> Result<Cluster, String> {
    if ctx.classes.is_none() {
        return Err("TomcatSessions.java did not compile".into());
    }
    let mut c = Cluster::new(Kind::Single("tomcat"));
    let route = "tn1".to_owned();
    let mut p = spawn_tomcat(ctx, &route, "delta", mcast)?;
    let addr = wait_tomcat(&mut p, 0, Duration::from_secs(180));
    c.procs.push(p);
    c.routes.push(route);
    c.addrs.push(addr?);
    Ok(c)
}

/// Starts every selected cluster and its httpd; the configurations in the
/// order of a round: the floor, then shoal and Tomcat alternating, directly
/// (with the 1-node diagnostics), then the same through httpd.
fn start_systems(opts: &Opts, ctx: &Ctx, clusters: &mut Vec<Cluster>) -> Vec<Config> {
    let mut mcast = mcast_base();
    let mut next_mcast = || {
        mcast += 1;
        mcast
    };
    let (has_shoal, has_tomcat) = (
        opts.systems.contains("shoal"),
        opts.systems.contains("tomcat"),
    );
    // (kind, result), in round order; a failed start is reported in the table.
    let mut started: Vec<(Kind, Result<Cluster, String>)> = Vec::new();
    eprintln!("== floor: {NODES} trivial axum servers, and two replicated floors");
    for replicas in [0, 1, NODES - 1] {
        let kind = if replicas == 0 {
            Kind::Floor
        } else {
            Kind::FloorRepl(replicas)
        };
        started.push((kind, start_floor(ctx, replicas)));
    }
    let policies: Vec<&'static str> = Opts::POLICIES
        .into_iter()
        .filter(|p| opts.policies.contains(p) && opts.clusters)
        .collect();
    let mut shoal: Vec<(Kind, Result<Cluster, String>)> = Vec::new();
    if has_shoal {
        for p in &policies {
            let kind = Kind::Shoal(p);
            eprintln!("== {}: {NODES} webapps", kind.label());
            let prefix = format!("s{}", &p[..1]);
            shoal.push((kind, start_webapps(ctx, kind, &prefix, next_mcast())));
        }
        if opts.single {
            let kind = Kind::Single("shoal");
            eprintln!("== {}", kind.label());
            shoal.push((kind, start_webapps(ctx, kind, "sn", next_mcast())));
        }
    }
    let mut tomcat: Vec<(Kind, Result<Cluster, String>)> = Vec::new();
    if has_tomcat && !policies.is_empty() {
        let specs: Vec<(&'static str, u16)> = policies.iter().map(|p| (*p, next_mcast())).collect();
        eprintln!(
            "== Tomcat: {} clusters of {NODES} JVMs (DeltaManager nodes one after the other)",
            specs.len()
        );
        let r = if ctx.classes.is_some() {
            start_tomcats(ctx, &specs)
        } else {
            specs
                .iter()
                .map(|_| Err("TomcatSessions.java did not compile".to_owned()))
                .collect()
        };
        tomcat = specs.iter().map(|(p, _)| Kind::Tomcat(p)).zip(r).collect();
    }
    if has_tomcat && opts.single {
        let kind = Kind::Single("tomcat");
        eprintln!("== {}", kind.label());
        tomcat.push((kind, start_tomcat_single(ctx, next_mcast())));
    }
    // shoal, Tomcat, shoal, Tomcat...
    let (mut s, mut t) = (shoal.into_iter(), tomcat.into_iter());
    loop {
        let (a, b) = (s.next(), t.next());
        if a.is_none() && b.is_none() {
            break;
        }
        started.extend(a);
        started.extend(b);
    }
    let native = (NATIVE_WARMUP, NATIVE_WARMUP);
    let jvm = (
        Duration::from_secs(opts.warmup),
        Duration::from_secs(opts.warmup.max(opts.warmup_max)),
    );
    let mut direct = Vec::new();
    let mut fronted = Vec::new();
    for (kind, r) in started {
        // The diagnostics run directly only.
        let single = matches!(kind, Kind::Single(_));
        let mk = |httpd: bool, cluster: usize| Config {
            label: format!(
                "{}, {}",
                kind.label(),
                if httpd { "httpd" } else { "direct" }
            ),
            kind,
            httpd,
            cluster,
            target: None,
            warmup: if kind.jvm() && !httpd { jvm } else { native },
            warmed: None,
            samples: Vec::new(),
            rounds: Vec::new(),
            first_error: None,
            failed: None,
        };
        let (mut d, mut h) = (mk(false, clusters.len()), mk(true, clusters.len()));
        let fronted_too = opts.paths.contains("httpd") && !single;
        match r {
            Ok(mut c) => {
                let nodes: Vec<(String, SocketAddr)> = c
                    .routes
                    .iter()
                    .cloned()
                    .zip(c.addrs.iter().copied())
                    .collect();
                d.target = Some(Target {
                    ports: c.addrs.iter().map(SocketAddr::port).collect(),
                    nodes: nodes.clone(),
                    verify: kind.replicates(),
                });
                if fronted_too {
                    match c.front() {
                        Ok(()) => {
                            h.target = Some(Target {
                                ports: c.httpd.as_ref().map(Httpd::port).into_iter().collect(),
                                nodes,
                                verify: kind.replicates(),
                            });
                        }
                        Err(e) => {
                            eprintln!("   ✗ {}: {e}", h.label);
                            h.failed = Some(e);
                        }
                    }
                }
                clusters.push(c);
            }
            Err(e) => {
                eprintln!("   ✗ {}: {e}", kind.label());
                d.failed = Some(e.clone());
                h.failed = Some(e);
                // A placeholder keeps the indices.
                clusters.push(Cluster::new(kind));
            }
        }
        if opts.paths.contains("direct") {
            direct.push(d);
        }
        if fronted_too {
            fronted.push(h);
        }
    }
    direct.extend(fronted);
    direct
}

/// The bench's processes may use this share of a core when idle...
const IDLE_CPU: f64 = 0.10;
/// ... and are given this long to get there after the warm-up.
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// Waits (1 s windows, at most [`SETTLE_MAX`]) until the bench's processes
/// are idle: a JVM keeps compiling after its load stops, and would take
/// CPU from the first configurations measured.
fn settle() {
    let start = Instant::now();
    loop {
        let pids = own_pids();
        let before: u64 = pids.iter().map(|p| pid_ticks(*p)).sum();
        std::thread::sleep(Duration::from_secs(1));
        let used = pids
            .iter()
            .map(|p| pid_ticks(*p))
            .sum::<u64>()
            .saturating_sub(before) as f64
            / TICKS;
        if used <= IDLE_CPU || start.elapsed() >= SETTLE_MAX {
            eprintln!(
                "== idle after {:.0} s ({:.0}% of a core in the last second)",
                start.elapsed().as_secs_f64(),
                used * 100.0
            );
            return;
        }
    }
}

/// Other processes' CPU in one round: over the whole round, and in its
/// busiest window (the round's figure can hide a burst: the processes'
/// ticks include softirq time that the machine's busy time leaves out).
#[derive(Debug, Clone, Copy)]
struct RoundCpu {
    whole: f64,
    busiest: f64,
}

/// Warm-up, then the alternating rounds; other processes' CPU per round.
fn measure(opts: &Opts, clusters: &[Cluster], cfgs: &mut [Config]) -> Vec<RoundCpu> {
    eprintln!(
        "== warm-up under load (Tomcat {}–{} s directly, until the rate stops climbing; \
         the rest {} s)",
        opts.warmup,
        opts.warmup.max(opts.warmup_max),
        NATIVE_WARMUP.as_secs()
    );
    for c in cfgs.iter_mut() {
        c.warm(opts, clusters);
    }
    settle();
    let mut busy = Vec::new();
    for round in 0..opts.rounds {
        eprintln!(
            "== round {}/{} ({} s measured per configuration)",
            round + 1,
            opts.rounds,
            opts.seconds
        );
        let w = CpuWindow::open(&own_pids());
        let mut order: Vec<usize> = (0..cfgs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            cfgs[i].run(opts, clusters, round);
        }
        let whole = w.foreign(&own_pids());
        let busiest = cfgs
            .iter()
            .filter_map(|c| c.in_round(round))
            .map(|s| s.foreign)
            .fold(0.0, f64::max);
        if whole.max(busiest) > BUSY_ROUND {
            eprintln!(
                "   ⚠ round {} was disturbed: {:.0}% of a core went to other processes \
                 ({:.0}% in its busiest window)",
                round + 1,
                whole * 100.0,
                busiest * 100.0
            );
        }
        busy.push(RoundCpu { whole, busiest });
    }
    busy
}

// ---------------------------------------------------------------------------
// Orchestrator and report
// ---------------------------------------------------------------------------

fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("web: watchdog: {limit:?} exceeded, killing every process");
        // httpd stops its children on SIGTERM; whatever is left is killed.
        for pid in lock(&HTTPD_PIDS).iter() {
            signal(*pid, nix::sys::signal::Signal::SIGTERM);
        }
        std::thread::sleep(Duration::from_secs(2));
        for pid in own_pids() {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::process::exit(2);
    });
}

fn orchestrate(opts: &Opts, args: &[String]) {
    let started = Instant::now();
    watchdog(opts.time_limit());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web");
    let _ = std::fs::remove_dir_all(&dir);
    let logs = dir.join("logs");
    let work = dir.join("work");
    for d in [&logs, &work] {
        std::fs::create_dir_all(d).expect("bench dirs");
    }
    let shown: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    let command = if shown.is_empty() {
        "cargo bench -p shoal-webapp --bench web".to_owned()
    } else {
        format!(
            "cargo bench -p shoal-webapp --bench web -- {}",
            shown.join(" ")
        )
    };
    let classes = if opts.systems.contains("tomcat") {
        compile_java(&work).map_err(|e| eprintln!("   ✗ {e}")).ok()
    } else {
        None
    };
    let ctx = Ctx {
        logs,
        work,
        classes,
        items: opts.items,
    };
    let load_before = load_avg();
    eprintln!(
        "web: {command}\n     {} configurations; {} rounds of {} s; watchdog {:?}; logs {}",
        opts.configs(),
        opts.rounds,
        opts.seconds,
        opts.time_limit(),
        ctx.logs.display()
    );
    let mut clusters = Vec::new();
    let mut cfgs = start_systems(opts, &ctx, &mut clusters);
    let busy = measure(opts, &clusters, &mut cfgs);
    let rss: Vec<(Kind, u64)> = clusters
        .iter()
        .map(|c| {
            (
                c.kind,
                c.pids().iter().map(|p| rss_kb(*p)).max().unwrap_or(0),
            )
        })
        .collect();
    eprintln!("== stopping");
    for c in clusters.iter_mut() {
        c.httpd = None;
    }
    stop_all(clusters.iter_mut().flat_map(|c| c.procs.iter_mut()));
    report(
        opts,
        &command,
        &cfgs,
        &busy,
        &rss,
        &load_before,
        started,
        &ctx,
    );
}

fn ratio_row(label: &str, values: &[Option<Stat>], target: f64) -> String {
    let cells: Vec<String> = values
        .iter()
        .map(|v| match v {
            Some(s) => format!(
                "{:.2}× ({:.2}–{:.2}){}",
                s.median,
                s.min,
                s.max,
                if s.median >= target { " ✓" } else { " ✗" }
            ),
            None => "n/a".into(),
        })
        .collect();
    format!("| {label} | {} |", cells.join(" | "))
}

/// The nodes' and the whole bench's CPU per request, directly: one node with
/// no peers (the app and its session layer) against the 3-node clusters
/// (the difference: replication).
fn where_cpu_goes(opts: &Opts, cfgs: &[Config]) {
    let cell = |k: Kind, f: fn(&Ticks) -> u64| -> Option<f64> {
        cfgs.iter()
            .find(|c| c.kind == k && !c.httpd && !c.samples.is_empty())
            .map(|c| c.stat(|s| s.per_request(f(&s.cpu))).median)
    };
    let mut rows = Vec::new();
    for (name, sys) in [("shoal", "shoal"), ("Tomcat", "tomcat")] {
        if !opts.systems.contains(sys) {
            continue;
        }
        let kinds = |p| {
            if sys == "shoal" {
                Kind::Shoal(p)
            } else {
                Kind::Tomcat(p)
            }
        };
        for (what, f) in [
            ("nodes", (|t: &Ticks| t.nodes) as fn(&Ticks) -> u64),
            ("bench in all", |t: &Ticks| t.total()),
        ] {
            let base = cell(Kind::Single(sys), f);
            let show = |v: Option<f64>| match (v, base) {
                (Some(v), Some(b)) => format!("{v:.0} ({:+.0})", v - b),
                (Some(v), None) => format!("{v:.0}"),
                _ => "n/a".into(),
            };
            rows.push(format!(
                "| {name}, {what} | {} | {} | {} |",
                base.map_or("n/a".into(), |b| format!("{b:.0}")),
                show(cell(kinds("delta"), f)),
                show(cell(kinds("backup"), f)),
            ));
        }
    }
    if rows.iter().all(|r| r.matches("n/a").count() >= 3) {
        return;
    }
    println!(
        "\nWhere the CPU goes, directly: µs of CPU per request (medians), one node with no peers \
         (the app, its session layer, HTTP) against 3 nodes (in brackets: the difference, the \
         replication's share):\n"
    );
    println!("| CPU per request | 1 node, no peers | 3 nodes, delta | 3 nodes, backup |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    opts: &Opts,
    command: &str,
    cfgs: &[Config],
    busy: &[RoundCpu],
    rss: &[(Kind, u64)],
    load_before: &str,
    started: Instant,
    ctx: &Ctx,
) {
    let java = if opts.systems.contains("tomcat") {
        format!("; {}", java_version(&jdk_tool("java")))
    } else {
        String::new()
    };
    let apache = Command::new(httpd::APACHE2)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    println!("\n## Web tier: the cart-add, shoal webapp and Tomcat 10.1, 3 nodes, sync-ack\n");
    println!("command: `{command}`\n");
    println!(
        "machine: {} cores, {}{java}; {apache}; load average before {load_before}, after {}; \
         run took {:.0} s\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        load_avg(),
        started.elapsed().as_secs_f64()
    );
    let rounds: Vec<String> = busy
        .iter()
        .map(|b| format!("{:.0}% ({:.0}%)", b.whole * 100.0, b.busiest * 100.0))
        .collect();
    println!(
        "CPU used by other processes (or stolen) per round, share of one core (in brackets: \
         the round's busiest window): {}{}\n",
        rounds.join(", "),
        if busy.iter().any(|b| b.whole.max(b.busiest) > BUSY_ROUND) {
            " — **⚠ the machine was busy: the figures may not hold**"
        } else {
            ""
        }
    );
    println!(
        "{} users, each with its own session and keep-alive connection, `POST \
         /cart/add?item=iK&qty=1` with a 1 KiB note, K cycling over {} items (a session of \
         ~{:.1} KiB); directly: user i on node i mod {NODES}; httpd: all through one httpd \
         (mod_proxy_balancer, sticky on JSESSIONID). {} rounds of {} s (after 1 s untimed with \
         fresh users), shoal and Tomcat alternating, the order reversed every other round; \
         medians with the spread (slowest–fastest round) in brackets. vs floor: requests/s as a \
         share of the floor's on the same path. CPU per request: µs of CPU in the window per \
         request answered, by the client (the bench's users), httpd, the nodes, kernel threads, \
         the rest of the bench (the systems not measured then, idle or a JVM compiling or \
         collecting in the background) and all of these; the share of a core used by other \
         processes in the same windows (medians).\n",
        opts.users,
        opts.items,
        opts.items as f64 * (NOTE_BYTES as f64 + 30.0) / 1024.0,
        opts.rounds,
        opts.seconds
    );
    println!(
        "| configuration | requests/s | p50 (µs) | p99 (µs) | vs floor | errors / requests | \
         CPU µs per request: client · httpd · nodes · kernel · rest = all | other processes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|");
    let floor_rate = |httpd: bool| -> Option<f64> {
        cfgs.iter()
            .find(|c| c.kind == Kind::Floor && c.httpd == httpd && !c.samples.is_empty())
            .map(|c| c.stat(|s| s.rate).median)
    };
    for c in cfgs {
        if c.samples.is_empty() {
            let why = c.failed.as_deref().unwrap_or("not measured");
            let why: String = why.chars().take(160).collect();
            println!(
                "| {} | n/a | n/a | n/a | — | {} | — | — |",
                c.label,
                why.replace('|', "/")
            );
            continue;
        }
        let rate = c.stat(|s| s.rate);
        let vs = if matches!(c.kind, Kind::Floor | Kind::FloorRepl(_)) {
            "—".to_owned()
        } else {
            floor_rate(c.httpd).map_or("—".to_owned(), |f| format!("{:.2}", rate.median / f))
        };
        let errors: u64 = c.samples.iter().map(|s| s.errors).sum();
        let ok: u64 = c.samples.iter().map(|s| s.ok).sum();
        let err = if errors == 0 {
            format!("0 of {ok}")
        } else {
            format!(
                "{errors} of {} (first: {})",
                ok + errors,
                c.first_error.as_deref().unwrap_or("?").replace('|', "/")
            )
        };
        let partial = if c.samples.len() < opts.rounds {
            format!(" ⚠ {} of {} rounds", c.samples.len(), opts.rounds)
        } else {
            String::new()
        };
        let err = match (&partial, &c.failed) {
            (p, Some(f)) if !p.is_empty() => format!(
                "{err}; a round failed: {}",
                f.chars().take(120).collect::<String>().replace('|', "/")
            ),
            _ => err,
        };
        let cpu = |f: fn(&Ticks) -> u64| c.stat(|s| s.per_request(f(&s.cpu))).median;
        println!(
            "| {}{partial} | {} | {} | {} | {vs} | {err} | {:.0} · {} · {:.0} · {:.0} · {:.0} = {:.0} | {:.0}% |",
            c.label,
            rate.show(0),
            c.stat(|s| s.p50_us).show(0),
            c.stat(|s| s.p99_us).show(0),
            cpu(|t| t.client),
            if c.httpd {
                format!("{:.0}", cpu(|t| t.front))
            } else {
                "—".into()
            },
            cpu(|t| t.nodes),
            cpu(|t| t.kernel),
            cpu(|t| t.rest),
            cpu(|t| t.total()),
            c.stat(|s| s.foreign * 100.0).median,
        );
    }
    // shoal / Tomcat per round, same policy and path.
    let mut heads = Vec::new();
    let (mut rps, mut p99) = (Vec::new(), Vec::new());
    let mut met = Vec::new();
    for policy in Opts::POLICIES.iter().filter(|p| opts.policies.contains(*p)) {
        for httpd in [false, true] {
            if !opts.paths.contains(if httpd { "httpd" } else { "direct" }) {
                continue;
            }
            let find = |k: Kind| cfgs.iter().find(|c| c.kind == k && c.httpd == httpd);
            let (Some(s), Some(t)) = (find(Kind::Shoal(policy)), find(Kind::Tomcat(policy))) else {
                continue;
            };
            heads.push(format!(
                "{policy}, {}",
                if httpd { "httpd" } else { "direct" }
            ));
            // Rounds both were measured in.
            let pairs: Vec<(&Sample, &Sample)> = (0..opts.rounds)
                .filter_map(|r| Some((s.in_round(r)?, t.in_round(r)?)))
                .collect();
            let per_round = |f: &dyn Fn(&Sample, &Sample) -> f64| -> Option<Stat> {
                (!pairs.is_empty())
                    .then(|| Stat::of(&pairs.iter().map(|(s, t)| f(s, t)).collect::<Vec<_>>()))
            };
            let r = per_round(&|s, t| s.rate / t.rate.max(1e-9));
            let p = per_round(&|s, t| t.p99_us / s.p99_us.max(1e-9));
            // A JVM still getting faster round after round was not warm: its
            // figures are low and a verdict against it does not count.
            let tomcat_rates: Vec<f64> = pairs.iter().map(|(_, t)| t.rate).collect();
            let warming = match (tomcat_rates.first(), tomcat_rates.last()) {
                (Some(&first), Some(&last)) => {
                    tomcat_rates.len() > 1 && last > first * (1.0 + STILL_WARMING)
                }
                _ => false,
            };
            if warming {
                let rates: Vec<String> = tomcat_rates.iter().map(|r| format!("{r:.0}")).collect();
                eprintln!(
                    "warning: Tomcat ({policy}, {}) was still warming up: {} req/s in rounds \
                     1..{}; its figures are low and the verdict does not count \
                     (rerun with a longer --warmup)",
                    if httpd { "httpd" } else { "direct" },
                    rates.join(" → "),
                    rates.len()
                );
            }
            met.push(match (r, p) {
                (Some(r), Some(p)) => {
                    let verdict = if r.median >= TARGET_RPS && p.median >= TARGET_P99 {
                        "**met**"
                    } else {
                        "**not met**"
                    };
                    if warming {
                        format!("{verdict} (⚠ Tomcat still warming up: does not count)")
                    } else {
                        verdict.to_owned()
                    }
                }
                _ => "n/a".to_owned(),
            });
            rps.push(r);
            p99.push(p);
        }
    }
    if !heads.is_empty() {
        println!(
            "\nshoal against Tomcat, per round (the two measured back to back), median and \
             spread:\n"
        );
        println!("| ratio | {} |", heads.join(" | "));
        println!("|---|{}", "---:|".repeat(heads.len()));
        println!(
            "{}",
            ratio_row(
                &format!("shoal requests/s / Tomcat's (target ≥ {TARGET_RPS}×)"),
                &rps,
                TARGET_RPS
            )
        );
        println!(
            "{}",
            ratio_row(
                &format!("Tomcat p99 / shoal p99 (target ≥ {TARGET_P99}×)"),
                &p99,
                TARGET_P99
            )
        );
        println!("| both targets | {} |", met.join(" | "));
    }
    floor_allows(opts, cfgs);
    where_cpu_goes(opts, cfgs);
    let carts: Vec<String> = cfgs
        .iter()
        .filter(|c| c.kind.replicates())
        .map(|c| {
            let (ok, n) = c
                .samples
                .iter()
                .filter_map(|s| s.carts)
                .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
            format!("{} {ok}/{n}", c.label)
        })
        .collect();
    if !carts.is_empty() {
        println!(
            "\nCarts read on another node after each window, complete / read: {}",
            carts.join("; ")
        );
    }
    let switches: u64 = cfgs
        .iter()
        .flat_map(|c| c.samples.iter())
        .map(|s| s.switches)
        .sum();
    if switches > 0 {
        println!("\n⚠ {switches} times a user's answers came from another node mid-session");
    }
    let warmed: Vec<String> = cfgs
        .iter()
        .filter(|c| c.warmup.0 > NATIVE_WARMUP)
        .filter_map(|c| {
            c.warmed
                .map(|(s, r)| format!("{} {s:.0} s (last window {r:.0} req/s)", c.label))
        })
        .collect();
    if !warmed.is_empty() {
        println!(
            "\nJVM warm-up before the rounds (≥ {} s, then until two 5 s windows in a row gained \
             < {:.0} % on the best, ≤ {} s): {}",
            opts.warmup,
            WARM_GAIN * 100.0,
            opts.warmup.max(opts.warmup_max),
            warmed.join("; ")
        );
    }
    let rss_line: Vec<String> = rss
        .iter()
        .filter(|(_, kb)| *kb > 0)
        .map(|(k, kb)| format!("{} {:.0}", k.label(), *kb as f64 / 1024.0))
        .collect();
    println!(
        "\nRSS after the rounds, largest node (MiB): {}",
        rss_line.join(", ")
    );
    println!("\nlogs: {}", ctx.logs.display());
}
