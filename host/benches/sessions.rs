//! Session replication side by side (issue 10, item 9): shoal's HTTP session
//! API, real Tomcat 10.1 clusters and Redis, in one run on this machine,
//! with the machine's floor.
//!
//! ```sh
//! cargo build --release --bin shoal          # the shoal parts run target/release/shoal
//! cargo bench -p shoal --bench sessions      # everything, ~10 minutes
//! cargo bench -p shoal --bench sessions -- --only tomcat,redis --rounds 3 --seconds 4
//! cargo bench -p shoal --bench sessions -- --help
//! ```
//!
//! **Throughput** (parts `floor`, `tomcat`, `redis`, `shoal`): 8 concurrent
//! keep-alive clients (threads of this process), each writing a 1 KiB value
//! (different at every write, so it replicates) to its own session per
//! request; client *i* sticks to node *i* mod 3, as behind a sticky balancer.
//! Every system runs for the whole measurement and every configuration is
//! measured once per round, the order reversed every other round; medians
//! over the rounds are reported with the spread (slowest–fastest round).
//! * Tomcat: three JVMs per configuration running
//!   `tests/interop/TomcatSessions.java` (embedded Tomcat from Debian's
//!   `libtomcat10-java`, the documented `SimpleTcpCluster`, ReplicationValve +
//!   JvmRouteBinderValve, `maxKeepAliveRequests -1`, JVM defaults plus
//!   `-Djava.net.preferIPv4Stack=true`; `SESSIONS_JAVA_OPTS` adds flags).
//!   DeltaManager and BackupManager, each with `channelSendOptions` 8 (async)
//!   and 6 (USE_ACK | SYNC_ACK; BackupManager's `mapSendOptions` the same).
//!   A write is `POST /write` with the 1 KiB body and the session cookie.
//!   DeltaManager nodes start one after the other (two starting at once wait
//!   out the 60 s state-transfer timeout). Each JVM configuration is warmed
//!   up under the same load first: at least `--warmup` s (60), then in 5 s
//!   windows until two in a row gain less than 10 % on the best before them,
//!   at most `--warmup-max` s (120); with 12 JVMs on 2 cores C2 compiles for
//!   30–120 s (a DeltaManager stopped at 30 s once and went on climbing,
//!   2.2 → 4.1 → 6.1 k writes/s, over the rounds).
//!
//! The report ends with the issue's ratios (shoal sync-ack over Tomcat
//! options 6 and over Redis + WAIT; async over options 8), taken per round
//! and flagged when the Tomcat configuration's last round was more than
//! 10 % faster than its first (still warming up: the verdict does not
//! count).
//! * shoal: three `shoal run --config FILE` processes per configuration
//!   (`[session] policy` delta | backup, `send_options` async | sync-ack). A
//!   client creates its session with `POST /api/sessions` on its node and
//!   writes with `PATCH /api/sessions/{id}` `{"set":{"a":"<1 KiB>"}}` there.
//! * Redis (`redis-server`): a primary and one replica (no persistence);
//!   every client writes `HSET s:<run>:<client> a <1 KiB>` to the primary;
//!   in the sync configuration `WAIT 1 1000` follows each HSET in the same
//!   TCP write (pipelined: one round trip, the reply after the replica's
//!   ACK). A `WAIT` that returns 0 counts as an error.
//! * Floors, in the same rounds: a trivial keep-alive HTTP/1.1 server
//!   (`--floor-peer http`, a thread per connection) that answers a 1 KiB POST
//!   with 200 and a 35-byte id and does nothing else, driven by the same
//!   client code as Tomcat; and a trivial RESP server (`--floor-peer resp`)
//!   that answers `:1` to every command, driven by the Redis client code.
//!   And two replicated floors (`--floor-peer repl`): three such HTTP
//!   processes in a ring, each sending every body (4-byte length + body)
//!   to the replica listener of the next node (one replica, as `backup`) or
//!   of both others (as `delta`), written to all before waiting for their
//!   1-byte ACKs, then answering: two loopback exchanges and three
//!   processes per write with no work, the ceiling here of any design that
//!   replicates each write in an exchange of its own. The report's ratios
//!   end with what these floors allow against Tomcat and Redis, and shoal's
//!   share of them.
//!
//! The HTTP clients are a minimal keep-alive HTTP/1.1 client ([`Http1`]: one
//! `write` per request) rather than ureq, whose per-request syscalls took the
//! CPU the servers needed (the floor was 10 k instead of 100 k requests/s);
//! ureq serves the control calls.
//!
//! **State transfer** (`transfer`): 100 000 sessions of 1 KiB on one node,
//! then a second node starts; the time from its spawn until it holds them
//! all. Tomcat (DeltaManager, options 8): `POST /fill`, then the new node's
//! `GET /count` (its connector starts only after the transfer, so its first
//! answer is final) and its log's "received in [T] ms" (which Tomcat logs
//! even when nothing arrived), twice: with every default, and with Tribes'
//! sender timeout raised from 3 s to 60 s on both nodes (with the default,
//! the one ~110 MB ALL_SESSION_DATA message times out on this machine).
//! shoal (policy delta): `POST /api/sessions` × N, then the new node's
//! `GET /api/ready` = 200 and its `GET /api/sessions` count. Each is
//! preceded by the same join into an empty cluster, so the start-up cost of
//! the process is visible.
//!
//! **Wire bytes** (`wire`): shoal clusters of 2, 4 and 8 nodes, policies
//! delta and backup (async): the sum of every node's `shoal_bytes_sent_total`
//! (`GET /metrics`) before and after K writes of 1 KiB, less the idle traffic
//! of the same length of time, divided by K.
//!
//! CPU used by other processes during each round is measured from /proc and
//! printed (the machine may be shared). Every process is stopped at the end
//! and killed when dropped (also on a panic), JVMs also exit at the end of
//! their stdin, and a watchdog kills everything when the run overstays.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/measure.rs"]
mod measure;
use measure::{CpuWindow, Stat, cpu_model, java_version};
#[path = "../tests/common/java.rs"]
#[allow(dead_code)]
mod java;
use java::jdk_tool;
#[path = "common/nodes.rs"]
#[allow(dead_code)]
mod nodes;
use nodes::{
    PIDS, Proc, StopBy, agent, compile_tomcat_sessions, free_port, get_json, http_get, load_avg,
    stop_all, tomcat_classpath, wait_for,
};

/// Concurrent clients (default of `--clients`).
const CLIENTS: usize = 8;
/// Size of the attribute value written per request.
const VALUE_BYTES: usize = 1024;
/// Nodes per cluster in the throughput part.
const NODES: usize = 3;
/// Untimed load before each measured round of a configuration.
const ROUND_WARMUP: Duration = Duration::from_secs(1);
/// Warm-up of the configurations that are not JVMs (connections, caches).
const NATIVE_WARMUP: Duration = Duration::from_secs(2);
/// A JVM's warm-up is measured in windows of this length...
const WARM_WINDOW: Duration = Duration::from_secs(5);
/// ... and ends once two windows in a row gain less than this on the best
/// before them (with 12 JVMs sharing 2 cores, C2 keeps compiling for
/// 30–60 s).
const WARM_GAIN: f64 = 0.10;
/// Redis `WAIT` timeout in the sync configuration (ms).
const WAIT_MS: u64 = 1000;
/// Sessions a client may fail to write before its loop gives up.
const MAX_ERRORS: u64 = 1000;
/// Share of a core used by others above which a round is flagged.
const BUSY_ROUND: f64 = 0.10;

/// The allocator `shoal run` uses (for the floor peers and the clients).
#[cfg(feature = "cli")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The processes this run started (for the CPU accounting).
fn own_pids() -> Vec<u32> {
    PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--floor-peer") {
        let kind = args.get(1).map_or("", String::as_str);
        let port = |i: usize| args.get(i).and_then(|p| p.parse().ok()).unwrap_or(0);
        if kind == "repl" {
            let next: Vec<u16> = (4..args.len()).map(port).collect();
            floor::serve_replicated(port(2), port(3), next);
        } else {
            floor::serve(kind, port(2));
        }
        return;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sessions: {e}\n\n{}", Opts::USAGE);
            std::process::exit(2);
        }
    };
    orchestrate(&opts);
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// What to run and for how long.
#[derive(Debug, Clone)]
struct Opts {
    parts: HashSet<&'static str>,
    rounds: usize,
    seconds: u64,
    warmup: u64,
    warmup_max: u64,
    clients: usize,
    sessions: usize,
    writes: usize,
    wire_nodes: Vec<usize>,
    shoal_bin: PathBuf,
}

impl Opts {
    const PARTS: [&'static str; 7] = [
        "floor",
        "tomcat",
        "redis",
        "shoal",
        "transfer-tomcat",
        "transfer-shoal",
        "wire",
    ];

    const USAGE: &'static str = "\
usage: cargo bench -p shoal --bench sessions -- [options]
  --only LIST        parts, comma-separated (default: all): floor, tomcat, redis, shoal,
                     transfer (= transfer-tomcat,transfer-shoal), wire; the floor runs
                     with any throughput part
  --rounds N         measured rounds per configuration (3)
  --seconds S        measured seconds per round (4)
  --warmup S         least warm-up under load per Tomcat configuration (60)
  --warmup-max S     most: the warm-up goes on in 5 s windows until two in a row
                     gain < 10 % on the best before them (120)
  --clients N        concurrent clients (8)
  --sessions N       sessions for the state transfer (100000)
  --writes K         writes for the wire-bytes part (1000)
  --wire-nodes LIST  cluster sizes for the wire-bytes part (2,4,8)
  --shoal-bin PATH   the shoal binary (default: $SHOAL_BIN, else target/release/shoal)
environment: SESSIONS_JAVA_OPTS adds JVM flags to every Tomcat node";

    fn parse(args: &[String]) -> Result<Self, String> {
        let default_bin = std::env::var_os("SHOAL_BIN").map_or_else(
            || {
                Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .parent()
                    .unwrap_or(Path::new("target"))
                    .join("release/shoal")
            },
            PathBuf::from,
        );
        let mut o = Self {
            parts: Self::PARTS.into_iter().collect(),
            rounds: 3,
            seconds: 4,
            warmup: 60,
            warmup_max: 120,
            clients: CLIENTS,
            sessions: 100_000,
            writes: 1000,
            wire_nodes: vec![2, 4, 8],
            shoal_bin: default_bin,
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
                    o.parts.clear();
                    for p in value()?.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        let names: &[&str] = match p {
                            "transfer" => &["transfer-tomcat", "transfer-shoal"],
                            _ => &[p],
                        };
                        for n in names {
                            let known = Self::PARTS
                                .iter()
                                .find(|k| *k == n)
                                .ok_or_else(|| format!("--only: unknown part {n:?}"))?;
                            o.parts.insert(known);
                        }
                    }
                }
                "--rounds" => o.rounds = num(value()?)?.max(1),
                "--seconds" => o.seconds = num(value()?)?.max(1) as u64,
                "--warmup" => o.warmup = num(value()?)? as u64,
                "--warmup-max" => o.warmup_max = num(value()?)? as u64,
                "--clients" => o.clients = num(value()?)?.clamp(1, 256),
                "--sessions" => o.sessions = num(value()?)?,
                "--writes" => o.writes = num(value()?)?.max(1),
                "--wire-nodes" => {
                    o.wire_nodes = value()?
                        .split(',')
                        .map(|n| num(n.trim().to_owned()).map(|n| n.clamp(2, 16)))
                        .collect::<Result<_, _>>()?;
                }
                "--shoal-bin" => o.shoal_bin = PathBuf::from(value()?),
                "-h" | "--help" => {
                    println!("{}", Self::USAGE);
                    std::process::exit(0);
                }
                _ => return Err(format!("unknown argument {a:?}")),
            }
        }
        if ["tomcat", "redis", "shoal"]
            .iter()
            .any(|p| o.parts.contains(p))
        {
            o.parts.insert("floor");
        }
        Ok(o)
    }

    fn has(&self, part: &str) -> bool {
        self.parts.contains(part)
    }

    /// Number of throughput configurations selected.
    fn configs(&self) -> usize {
        [("floor", 4), ("tomcat", 4), ("redis", 2), ("shoal", 4)]
            .iter()
            .filter(|(p, _)| self.has(p))
            .map(|(_, n)| n)
            .sum()
    }

    /// The watchdog's limit: generous for the selected work.
    fn time_limit(&self) -> Duration {
        let cfgs = self.configs() as u64;
        let rounds = self.rounds as u64 * cfgs * (self.seconds + 4);
        let warm = cfgs * (self.warmup_max + 6);
        Duration::from_secs(600 + rounds + warm)
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// HTTP helpers (ureq, keep-alive)
// ---------------------------------------------------------------------------

/// A 1 KiB ASCII value that differs per client and per write.
fn value(client: usize, seq: u64) -> String {
    let mut v = format!("{client:04}-{seq:016}-");
    v.extend(std::iter::repeat_n('x', VALUE_BYTES - v.len()));
    v
}

// ---------------------------------------------------------------------------
// The machine's floor: trivial servers, no framework
// ---------------------------------------------------------------------------

mod floor {
    use super::*;

    /// What the HTTP floor answers: an id as long as Tomcat's session id.
    pub const ID: &str = "0123456789ABCDEF0123456789ABCDEF.f1";
    /// Connections a floor server serves at once.
    const MAX_CONNECTIONS: usize = 256;

    /// Child mode `--floor-peer http|resp PORT`: serves until killed.
    pub fn serve(kind: &str, port: u16) {
        let handler: fn(TcpStream) -> std::io::Result<()> = match kind {
            "http" => |s| http_conn(s, &[]),
            "resp" => resp_conn,
            _ => panic!("--floor-peer http|resp|repl PORT"),
        };
        accept_loop(port, handler);
    }

    /// Child mode `--floor-peer repl HTTP REPLICA NEXT...`: one node of
    /// the replicated floor. The HTTP floor, except that each request's
    /// body first goes to the replica listeners `next` (one connection to
    /// each per client connection, a 4-byte length and the body, written to
    /// all before any wait) and the answer waits for their 1-byte ACKs; this
    /// node's own replica listener (port `replica`) ACKs every body it
    /// reads. With one replica: two loopback exchanges and three processes
    /// per write, no work — what a design that replicates each write in its
    /// own exchange cannot beat here.
    pub fn serve_replicated(http: u16, replica: u16, next: Vec<u16>) {
        assert!(
            http != 0 && replica != 0 && !next.is_empty() && !next.contains(&0),
            "--floor-peer repl HTTP REPLICA NEXT..."
        );
        let next: &'static [u16] = next.leak();
        std::thread::spawn(move || accept_loop(replica, replica_conn));
        accept_loop(http, move |s| http_conn(s, next));
    }

    /// Accepts on `port` and serves each connection on its own thread.
    fn accept_loop(
        port: u16,
        handler: impl Fn(TcpStream) -> std::io::Result<()> + Copy + Send + 'static,
    ) {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("floor peer: bind");
        let live = Arc::new(AtomicUsize::new(0));
        loop {
            let Ok((s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                continue;
            }
            let _ = s.set_nodelay(true);
            live.fetch_add(1, Ordering::Relaxed);
            let live = live.clone();
            std::thread::spawn(move || {
                let _ = handler(s);
                live.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// HTTP/1.1 keep-alive: reads a request (headers, Content-Length body),
    /// answers 200 with [`ID`], again until the client closes. With
    /// `replicas`, the body goes to each first and the answer waits for
    /// their ACKs.
    fn http_conn(s: TcpStream, replicas: &[u16]) -> std::io::Result<()> {
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        let mut to_replicas: Vec<TcpStream> = Vec::new();
        let mut frame = Vec::with_capacity(4 + VALUE_BYTES + 64);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{ID}",
            ID.len()
        );
        let mut line = String::new();
        let mut body = vec![0u8; 1 << 16];
        loop {
            let mut len = 0usize;
            let mut first = true;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let l = line.trim_end();
                if l.is_empty() {
                    if first {
                        continue;
                    }
                    break;
                }
                first = false;
                if let Some((k, v)) = l.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            if len > body.len() {
                return Ok(());
            }
            r.read_exact(&mut body[..len])?;
            if !replicas.is_empty() {
                if to_replicas.is_empty() {
                    for port in replicas {
                        let c = TcpStream::connect(("127.0.0.1", *port))?;
                        c.set_nodelay(true)?;
                        to_replicas.push(c);
                    }
                }
                frame.clear();
                frame.extend_from_slice(&(len as u32).to_be_bytes());
                frame.extend_from_slice(&body[..len]);
                for c in &mut to_replicas {
                    c.write_all(&frame)?;
                }
                let mut ack = [0u8; 1];
                for c in &mut to_replicas {
                    c.read_exact(&mut ack)?;
                }
            }
            w.write_all(resp.as_bytes())?;
        }
    }

    /// The replicated floor's replica side: reads length-prefixed bodies,
    /// ACKs each with one byte.
    fn replica_conn(s: TcpStream) -> std::io::Result<()> {
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        let mut body = vec![0u8; 1 << 16];
        loop {
            let mut len = [0u8; 4];
            match r.read_exact(&mut len) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                other => other?,
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > body.len() {
                return Ok(());
            }
            r.read_exact(&mut body[..len])?;
            w.write_all(b"A")?;
        }
    }

    /// RESP: reads one command (an array of bulk strings), answers `:1`.
    fn resp_conn(s: TcpStream) -> std::io::Result<()> {
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut buf = vec![0u8; 1 << 16];
        let bad = || std::io::Error::other("bad RESP");
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let n: usize = line
                .trim_end()
                .strip_prefix('*')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?;
            for _ in 0..n {
                line.clear();
                r.read_line(&mut line)?;
                let len: usize = line
                    .trim_end()
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?;
                if len + 2 > buf.len() {
                    return Err(bad());
                }
                r.read_exact(&mut buf[..len + 2])?;
            }
            w.write_all(b":1\r\n")?;
        }
    }
}

// ---------------------------------------------------------------------------
// RESP client (Redis and the RESP floor)
// ---------------------------------------------------------------------------

/// One reply of a Redis server.
#[derive(Debug)]
enum Reply {
    Int(i64),
    Simple(String),
    Bulk(Option<Vec<u8>>),
}

fn resp_cmd(buf: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(buf, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(buf, "${}\r\n", a.len());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

fn resp_reply(r: &mut BufReader<TcpStream>, line: &mut String) -> Result<Reply, String> {
    line.clear();
    match r.read_line(line) {
        Ok(0) => return Err("connection closed".into()),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    let l = line.trim_end();
    let (kind, rest) = l.split_at(l.len().min(1));
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Err(rest.to_owned()),
        ":" => rest
            .parse()
            .map(Reply::Int)
            .map_err(|_| format!("bad integer reply {l:?}")),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| format!("bad bulk reply {l:?}"))?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut b = vec![0u8; n as usize + 2];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            b.truncate(n as usize);
            Ok(Reply::Bulk(Some(b)))
        }
        _ => Err(format!("unexpected reply {l:?}")),
    }
}

/// A short-lived control connection: one command, one reply.
fn redis_call(port: u16, args: &[&[u8]]) -> Result<Reply, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    resp_cmd(&mut buf, args);
    w.write_all(&buf).map_err(|e| e.to_string())?;
    resp_reply(&mut BufReader::new(s), &mut String::new())
}

// ---------------------------------------------------------------------------
// The systems under test
// ---------------------------------------------------------------------------

/// Where a configuration's clients write, and how.
#[derive(Debug, Clone)]
enum Target {
    /// `POST /write` with the session cookie, client i → port i mod n
    /// (Tomcat, and the HTTP floor).
    Servlet(Vec<u16>),
    /// shoal's session API on these admin ports, client i → port i mod n.
    Shoal(Vec<u16>),
    /// Redis (or the RESP floor) on this port; `wait`: `WAIT 1` after each
    /// HSET.
    Resp { port: u16, wait: bool },
}

struct Ctx {
    logs: PathBuf,
    work: PathBuf,
    classes: Option<PathBuf>,
    /// A tag that keeps keys and files of this run apart.
    tag: String,
}

/// Compiles TomcatSessions.java into the work dir (every run: ~1–3 s).
fn compile_java(work: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/TomcatSessions.java");
    compile_tomcat_sessions(work, &src, true)
}

/// One Tomcat node: spawned, not yet waited for.
fn spawn_tomcat(
    ctx: &Ctx,
    name: &str,
    manager: &str,
    options: u8,
    mcast: u16,
    extra: &[String],
) -> Result<(Proc, u16), String> {
    let classes = ctx
        .classes
        .as_ref()
        .ok_or("TomcatSessions.java was not compiled")?;
    let http = free_port();
    let mut cmd = Command::new(jdk_tool("java"));
    if let Ok(opts) = std::env::var("SESSIONS_JAVA_OPTS") {
        cmd.args(opts.split_whitespace());
    }
    cmd.arg("-Djava.net.preferIPv4Stack=true")
        .arg("-cp")
        .arg(tomcat_classpath(classes))
        .arg("TomcatSessions")
        .arg(format!("http={http}"))
        .arg(format!("tribes={}", free_port()))
        .arg(format!("mcastPort={mcast}"))
        .arg(format!("route={name}"))
        .arg(format!("manager={manager}"))
        .arg(format!("options={options}"))
        .arg(format!("base={}", ctx.work.join(name).display()))
        .args(extra);
    Ok((Proc::spawn(cmd, name, &ctx.logs, StopBy::Stdin)?, http))
}

/// Waits until a Tomcat node answers `GET /count` with at least `members`
/// members; returns the answer.
fn wait_tomcat(p: &mut Proc, http: u16, members: u64, timeout: Duration) -> Result<Value, String> {
    let a = agent(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{http}/count");
    wait_for(
        p,
        &format!("GET /count with {members} members"),
        timeout,
        Duration::from_millis(200),
        |_| get_json(&a, &url).filter(|v| v["members"].as_u64().unwrap_or(0) >= members),
    )
}

/// A three-node Tomcat cluster.
struct TomcatCluster {
    nodes: Vec<Proc>,
    http: Vec<u16>,
}

/// Starts the Tomcat clusters, node k of every cluster together and node
/// k+1 only once node k of the same cluster serves (DeltaManager nodes must
/// not start at the same moment).
fn start_tomcats(ctx: &Ctx, specs: &[(&str, u8, u16)]) -> Vec<Result<TomcatCluster, String>> {
    let mut out: Vec<Result<TomcatCluster, String>> = specs
        .iter()
        .map(|_| {
            Ok(TomcatCluster {
                nodes: Vec::new(),
                http: Vec::new(),
            })
        })
        .collect();
    for k in 0..NODES {
        for (i, (manager, options, mcast)) in specs.iter().enumerate() {
            let Ok(c) = &mut out[i] else { continue };
            let name = format!("tomcat-{manager}{options}-{}", k + 1);
            match spawn_tomcat(ctx, &name, manager, *options, *mcast, &[]) {
                Ok((p, http)) => {
                    c.nodes.push(p);
                    c.http.push(http);
                }
                Err(e) => out[i] = Err(e),
            }
        }
        for slot in out.iter_mut() {
            let Ok(c) = slot else { continue };
            let (p, http) = (c.nodes.last_mut(), c.http.last());
            if let (Some(p), Some(http)) = (p, http) {
                let t = Instant::now();
                match wait_tomcat(p, *http, k as u64, Duration::from_secs(180)) {
                    Ok(_) => eprintln!(
                        "   {} up after {:.1} s ({:.1} s since spawn)",
                        p.name,
                        t.elapsed().as_secs_f64(),
                        p.spawned.elapsed().as_secs_f64()
                    ),
                    Err(e) => *slot = Err(e),
                }
            }
        }
    }
    for slot in out.iter_mut() {
        let Ok(c) = slot else { continue };
        for (p, http) in c.nodes.iter_mut().zip(&c.http) {
            if let Err(e) = wait_tomcat(p, *http, (NODES - 1) as u64, Duration::from_secs(60)) {
                *slot = Err(e);
                break;
            }
        }
    }
    out
}

/// Redis: a primary and one replica, no persistence.
struct RedisPair {
    primary: Proc,
    replica: Proc,
    port: u16,
}

fn start_redis(ctx: &Ctx) -> Result<RedisPair, String> {
    let dir = ctx.work.join("redis");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let spawn = |name: &str, port: u16, primary: Option<u16>| -> Result<Proc, String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // The replica's full sync starts at once (default: 5 s later).
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dbfilename")
            .arg(format!("{name}.rdb"))
            .arg("--dir")
            .arg(&dir);
        if let Some(p) = primary {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        Proc::spawn(cmd, name, &ctx.logs, StopBy::Sigterm)
            .map_err(|e| format!("{e} (apt-get install redis-server: scripts/setup.sh)"))
    };
    let ping =
        |port: u16| matches!(redis_call(port, &[b"PING"]), Ok(Reply::Simple(s)) if s == "PONG");
    let port = free_port();
    let mut primary = spawn("redis-primary", port, None)?;
    wait_for(
        &mut primary,
        "PONG",
        Duration::from_secs(20),
        Duration::from_millis(50),
        |_| ping(port).then_some(()),
    )?;
    let rport = free_port();
    let mut replica = spawn("redis-replica", rport, Some(port))?;
    wait_for(
        &mut replica,
        "PONG",
        Duration::from_secs(20),
        Duration::from_millis(50),
        |_| ping(rport).then_some(()),
    )?;
    wait_for(
        &mut primary,
        "an online replica",
        Duration::from_secs(30),
        Duration::from_millis(100),
        |_| match redis_call(port, &[b"INFO", b"replication"]) {
            Ok(Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b)
                .contains("state=online")
                .then_some(()),
            _ => None,
        },
    )?;
    Ok(RedisPair {
        primary,
        replica,
        port,
    })
}

/// A shoal cluster of `shoal run` processes.
struct ShoalCluster {
    nodes: Vec<Proc>,
    api: Vec<u16>,
}

impl ShoalCluster {
    fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.nodes.iter_mut()
    }
}

/// The node config, with the `[session]` keys of issue 10.
/// `SESSIONS_SHOAL_POLL_US=S,R` (experiments only) sets the sender's and
/// the receiver's `busy_poll_us`; `SESSIONS_SHOAL_TOML` is appended to
/// the file (`$'\n[runtime]\ncpu_pressure_gate = false'`, say).
fn shoal_toml(name: &str, mcast: u16, api: u16, policy: &str, mode: &str) -> String {
    let (sender_poll, receiver_poll) = match std::env::var("SESSIONS_SHOAL_POLL_US") {
        Ok(v) => {
            let (s, r) = v.split_once(',').unwrap_or((&v, &v));
            (
                format!("[sender]\nbusy_poll_us = {s}\n\n"),
                format!("busy_poll_us = {r}\n"),
            )
        }
        Err(_) => (String::new(), String::new()),
    };
    format!(
        "# written by host/benches/sessions.rs\n\
         [node]\nname = \"{name}\"\njvm_route = \"{name}\"\n\n\
         [membership]\nkind = \"multicast\"\naddress = \"228.0.0.4\"\nport = {mcast}\n\
         bind = \"127.0.0.1\"\nfrequency_ms = 500\ndrop_time_ms = 3000\n\n\
         [receiver]\naddress = \"127.0.0.1\"\nport = {port}\nauto_bind = 100\n{receiver_poll}\n\
         {sender_poll}\
         [api]\nlisten = \"127.0.0.1:{api}\"\n\n\
         [session]\npolicy = \"{policy}\"\nsend_options = \"{mode}\"\n{extra}",
        port = free_port(),
        extra = std::env::var("SESSIONS_SHOAL_TOML").unwrap_or_default()
    )
}

/// Spawns one shoal node and waits for `GET /api/ready` = 200.
fn spawn_shoal(
    ctx: &Ctx,
    bin: &Path,
    name: &str,
    mcast: u16,
    policy: &str,
    mode: &str,
) -> Result<(Proc, u16), String> {
    if !bin.is_file() {
        return Err(format!(
            "{} missing: cargo build --release --bin shoal (or --shoal-bin PATH)",
            bin.display()
        ));
    }
    let api = free_port();
    let file = ctx.work.join(format!("{name}.toml"));
    std::fs::write(&file, shoal_toml(name, mcast, api, policy, mode))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(&file);
    let p = Proc::spawn(cmd, name, &ctx.logs, StopBy::Sigterm)?;
    Ok((p, api))
}

fn wait_shoal_ready(p: &mut Proc, api: u16, timeout: Duration) -> Result<(), String> {
    let a = agent(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{api}/api/ready");
    wait_for(
        p,
        "GET /api/ready = 200",
        timeout,
        Duration::from_millis(20),
        |_| matches!(http_get(&a, &url), Ok((200, _))).then_some(()),
    )
}

fn wait_shoal_members(p: &mut Proc, api: u16, n: usize, timeout: Duration) -> Result<(), String> {
    let a = agent(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{api}/api/members");
    wait_for(
        p,
        &format!("{n} members in GET /api/members"),
        timeout,
        Duration::from_millis(100),
        |_| {
            get_json(&a, &url)
                .and_then(|v| v.as_array().map(Vec::len))
                .filter(|m| *m >= n)
                .map(|_| ())
        },
    )
}

/// Starts `n` shoal nodes one after the other (each ready before the next),
/// then waits until every one sees the others.
fn start_shoal(
    ctx: &Ctx,
    bin: &Path,
    label: &str,
    n: usize,
    mcast: u16,
    policy: &str,
    mode: &str,
) -> Result<ShoalCluster, String> {
    let mut c = ShoalCluster {
        nodes: Vec::new(),
        api: Vec::new(),
    };
    for k in 0..n {
        let (mut p, api) =
            spawn_shoal(ctx, bin, &format!("{label}-{}", k + 1), mcast, policy, mode)?;
        wait_shoal_ready(&mut p, api, Duration::from_secs(60))?;
        c.nodes.push(p);
        c.api.push(api);
    }
    for (p, api) in c.nodes.iter_mut().zip(&c.api) {
        wait_shoal_members(p, *api, n - 1, Duration::from_secs(30))?;
    }
    Ok(c)
}

// ---------------------------------------------------------------------------
// Load: one client per thread, keep-alive
// ---------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 client for the load: one `write` per request
/// (head and body together) and buffered reads, nothing per request besides.
/// (ureq costs 9 syscalls and two segments per request: a liveness peek,
/// non-blocking toggles, a socket timeout per I/O call, head and body sent
/// apart; on 2 cores that client took the CPU the servers needed.) Reads
/// `Content-Length` and chunked bodies; reconnects when the server closed.
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
            out: Vec::with_capacity(2 * VALUE_BYTES),
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
        self.conn = Some((BufReader::with_capacity(16 * 1024, s), w));
        Ok(())
    }

    /// Sends a request and reads the whole answer: (status, body). A request
    /// on a reused connection that the server had closed is sent once more
    /// on a new one.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, &[u8]), String> {
        self.out.clear();
        let _ = write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            let _ = write!(self.out, "{k}: {v}\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let reused = self.conn.is_some();
        if !reused {
            self.connect()?;
        }
        let status = match self.exchange() {
            Ok(s) => s,
            Err(_) if reused => {
                self.connect()?;
                self.exchange()
                    .map_err(|e| format!("{method} {path}: {e}"))?
            }
            Err(e) => return Err(format!("{method} {path}: {e}")),
        };
        Ok((status, &self.body))
    }

    fn exchange(&mut self) -> Result<u16, String> {
        let r = self.exchange_inner();
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange_inner(&mut self) -> Result<u16, String> {
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
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {:?}", line.trim_end()))?;
        let (mut len, mut chunked, mut close) = (0usize, false, false);
        loop {
            read_line(r, line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                }
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
            if len > 64 << 20 {
                return Err(format!("answer of {len} bytes"));
            }
            self.body.resize(len, 0);
            r.read_exact(&mut self.body).map_err(|e| e.to_string())?;
        }
        if close {
            self.conn = None;
        }
        Ok(status)
    }
}

/// One client's connection and session.
enum Writer {
    Servlet {
        http: Http1,
        cookie: Option<String>,
    },
    Shoal {
        http: Http1,
        session: Option<String>,
    },
    Resp {
        r: BufReader<TcpStream>,
        w: TcpStream,
        key: Vec<u8>,
        wait: bool,
        buf: Vec<u8>,
        line: String,
    },
}

impl Writer {
    fn new(target: &Target, client: usize, tag: &str) -> Result<Self, String> {
        let pick = |ports: &[u16]| ports[client % ports.len()];
        Ok(match target {
            Target::Servlet(ports) => Writer::Servlet {
                http: Http1::new(pick(ports)),
                cookie: None,
            },
            Target::Shoal(ports) => Writer::Shoal {
                http: Http1::new(pick(ports)),
                session: None,
            },
            Target::Resp { port, wait } => {
                let s = TcpStream::connect(("127.0.0.1", *port))
                    .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                Writer::Resp {
                    w: s.try_clone().map_err(|e| e.to_string())?,
                    r: BufReader::new(s),
                    key: format!("s:{tag}:{client}").into_bytes(),
                    wait: *wait,
                    buf: Vec::with_capacity(2 * VALUE_BYTES),
                    line: String::new(),
                }
            }
        })
    }

    /// Creates the session (the first write, for the HTTP systems).
    fn open(&mut self, client: usize) -> Result<(), String> {
        match self {
            Writer::Servlet { http, cookie } => {
                let v = value(client, 0);
                let (status, id) = http.request(
                    "POST",
                    "/write",
                    &[("Content-Type", "application/octet-stream")],
                    v.as_bytes(),
                )?;
                let id = String::from_utf8_lossy(id).trim().to_owned();
                if status != 200 || id.is_empty() {
                    return Err(format!("POST /write: {status} {id:?}"));
                }
                *cookie = Some(format!("JSESSIONID={id}"));
                Ok(())
            }
            Writer::Shoal { http, session } => {
                *session = Some(shoal_create(http, &value(client, 0))?);
                Ok(())
            }
            Writer::Resp { .. } => Ok(()),
        }
    }

    /// One write of a new 1 KiB value.
    fn write(&mut self, client: usize, seq: u64) -> Result<(), String> {
        let v = value(client, seq);
        match self {
            Writer::Servlet { http, cookie } => {
                let mut headers = vec![("Content-Type", "application/octet-stream")];
                if let Some(c) = cookie {
                    headers.push(("Cookie", c.as_str()));
                }
                let (status, body) = http.request("POST", "/write", &headers, v.as_bytes())?;
                if status != 200 {
                    return Err(format!(
                        "POST /write: {status} {}",
                        String::from_utf8_lossy(body).trim()
                    ));
                }
                Ok(())
            }
            Writer::Shoal { http, session } => {
                let path = session.as_deref().ok_or("no session")?;
                let body = format!("{{\"set\":{{\"a\":\"{v}\"}}}}");
                let (status, text) = http.request(
                    "PATCH",
                    path,
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )?;
                if status != 200 {
                    return Err(format!(
                        "PATCH {path}: {status} {}",
                        String::from_utf8_lossy(text).trim()
                    ));
                }
                Ok(())
            }
            Writer::Resp {
                r,
                w,
                key,
                wait,
                buf,
                line,
            } => {
                buf.clear();
                resp_cmd(buf, &[b"HSET", key, b"a", v.as_bytes()]);
                if *wait {
                    resp_cmd(buf, &[b"WAIT", b"1", WAIT_MS.to_string().as_bytes()]);
                }
                w.write_all(buf).map_err(|e| e.to_string())?;
                match resp_reply(r, line)? {
                    Reply::Int(_) => {}
                    other => return Err(format!("HSET: {other:?}")),
                }
                if *wait {
                    match resp_reply(r, line)? {
                        Reply::Int(n) if n >= 1 => {}
                        other => return Err(format!("WAIT 1 {WAIT_MS}: {other:?}")),
                    }
                }
                Ok(())
            }
        }
    }
}

/// `POST /api/sessions` with attribute `a` = `value`: the new session's
/// path (`/api/sessions/{id}`).
fn shoal_create(http: &mut Http1, value: &str) -> Result<String, String> {
    let body = format!("{{\"attributes\":{{\"a\":\"{value}\"}}}}");
    let (status, text) = http.request(
        "POST",
        "/api/sessions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )?;
    let text = String::from_utf8_lossy(text);
    if status != 201 {
        return Err(format!("POST /api/sessions: {status} {}", text.trim()));
    }
    let id = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("POST /api/sessions: no \"id\" in {text:?}"))?;
    Ok(format!("/api/sessions/{id}"))
}

/// One round of one configuration.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    ok: u64,
    errors: u64,
}

/// `clients` threads write for `warm` (untimed) then `measure`: writes
/// completed in the measured window per second, and the latency of the
/// writes started in it.
fn run_load(
    target: &Target,
    clients: usize,
    warm: Duration,
    measure: Duration,
    tag: &str,
) -> Result<(Sample, Option<String>), String> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let seq = Arc::new(AtomicU64::new(1));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (target, barrier, seq, tag) =
                (target.clone(), barrier.clone(), seq.clone(), tag.to_owned());
            std::thread::spawn(move || {
                let opened = Writer::new(&target, i, &tag).and_then(|mut w| w.open(i).map(|()| w));
                barrier.wait();
                let mut w = opened?;
                let start = Instant::now();
                let (warm_end, end) = (start + warm, start + warm + measure);
                let mut lat: Vec<u64> = Vec::with_capacity(1 << 14);
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let t = Instant::now();
                    if t >= end || errors >= MAX_ERRORS {
                        break;
                    }
                    match w.write(i, seq.fetch_add(1, Ordering::Relaxed)) {
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
                            errors += 1;
                            first_error.get_or_insert(e);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                Ok::<_, String>((lat, ok, errors, first_error))
            })
        })
        .collect();
    barrier.wait();
    let mut all: Vec<u64> = Vec::new();
    let (mut ok, mut errors, mut first_error, mut failed) = (0, 0, None, None);
    for t in threads {
        match t.join() {
            Ok(Ok((lat, o, e, fe))) => {
                all.extend(lat);
                ok += o;
                errors += e;
                if first_error.is_none() {
                    first_error = fe;
                }
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert("a client thread panicked".to_owned());
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    all.sort_unstable();
    let at = |q: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * q) as usize).min(all.len() - 1);
        all[i] as f64 / 1e3
    };
    let sample = Sample {
        rate: ok as f64 / measure.as_secs_f64().max(1e-3),
        p50_us: at(0.5),
        p99_us: at(0.99),
        ok,
        errors,
    };
    if ok == 0 {
        return Err(first_error.unwrap_or_else(|| "no write completed".into()));
    }
    Ok((sample, first_error))
}

// ---------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------

/// One measured configuration.
struct Config {
    label: String,
    /// Which floor it is compared with: "http" or "resp" (none for floors).
    floor: Option<&'static str>,
    target: Option<Target>,
    /// Warm-up under load before the rounds: at least `.0`, then until the
    /// rate stops climbing, at most `.1`.
    warmup: (Duration, Duration),
    /// How the warm-up ended: (seconds, writes/s of its last window).
    warmed: Option<(f64, f64)>,
    samples: Vec<Sample>,
    first_error: Option<String>,
    /// Why it could not be measured.
    failed: Option<String>,
}

impl Config {
    fn new(
        label: impl Into<String>,
        floor: Option<&'static str>,
        warmup: (Duration, Duration),
    ) -> Self {
        Self {
            label: label.into(),
            floor,
            target: None,
            warmup,
            warmed: None,
            samples: Vec::new(),
            first_error: None,
            failed: None,
        }
    }

    fn set(&mut self, r: Result<Target, String>) {
        match r {
            Ok(t) => self.target = Some(t),
            Err(e) => {
                eprintln!("   ✗ {}: {e}", self.label);
                self.failed = Some(e);
            }
        }
    }

    /// Warm-up: load in windows of [`WARM_WINDOW`] (or the whole minimum if
    /// shorter) until the minimum has passed and two windows in a row gained
    /// less than [`WARM_GAIN`] on the best before them, or the maximum has.
    fn warm(&mut self, clients: usize, tag: &str) {
        let Some(target) = self.target.clone() else {
            return;
        };
        let (min, max) = self.warmup;
        let window = WARM_WINDOW.min(min).max(Duration::from_secs(1));
        let start = Instant::now();
        // The best window so far, and how many windows in a row beat it by
        // less than WARM_GAIN (one dip, a GC or a busy moment, is not enough).
        let (mut best, mut flat) = (0.0f64, 0u32);
        loop {
            match run_load(&target, clients, Duration::ZERO, window, tag) {
                Ok((s, _)) => {
                    let t = start.elapsed();
                    eprintln!(
                        "   {:44} warm-up {:3.0} s: {:8.0} writes/s  p50 {:7.0} µs",
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
                    eprintln!("   ✗ {}: {e}", self.label);
                    self.failed = Some(e);
                    self.target = None;
                    return;
                }
            }
        }
    }

    /// One load run; records the sample if `keep`.
    fn run(&mut self, clients: usize, warm: Duration, measure: Duration, tag: &str, keep: bool) {
        let Some(target) = self.target.clone() else {
            return;
        };
        match run_load(&target, clients, warm, measure, tag) {
            Ok((s, e)) => {
                eprintln!(
                    "   {:44} {:8.0} writes/s  p50 {:7.0} µs  p99 {:7.0} µs{}",
                    self.label,
                    s.rate,
                    s.p50_us,
                    s.p99_us,
                    if s.errors > 0 {
                        format!("  ⚠ {} errors", s.errors)
                    } else {
                        String::new()
                    }
                );
                if keep {
                    self.samples.push(s);
                }
                if self.first_error.is_none() {
                    self.first_error = e;
                }
            }
            Err(e) => {
                eprintln!("   ✗ {}: {e}", self.label);
                self.failed = Some(e);
                self.target = None;
            }
        }
    }
}

/// Everything the throughput part started, stopped together.
#[derive(Default)]
struct Systems {
    procs: Vec<Proc>,
}

/// Starts every selected system and returns the configurations.
/// The replicated floors' labels: one replica per write (as `backup`), and
/// every other node (as `delta`).
const REPL_FLOOR: &str = "floor: HTTP + 1 KiB to a replica and its ACK, 3 nodes, no work";
const REPL_FLOOR_ALL: &str = "floor: HTTP + 1 KiB to 2 replicas and their ACKs, 3 nodes, no work";

/// Three `--floor-peer repl` nodes in a ring: node i's bodies go to the
/// replica listeners of the `replicas` nodes after it.
fn start_replicated_floor(ctx: &Ctx, sys: &mut Systems, replicas: usize) -> Result<Target, String> {
    let http: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let replica: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    for i in 0..NODES {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.arg("--floor-peer").arg("repl");
        cmd.arg(http[i].to_string()).arg(replica[i].to_string());
        for k in 1..=replicas {
            cmd.arg(replica[(i + k) % NODES].to_string());
        }
        let tag = format!("floor-repl{replicas}-{}", i + 1);
        let mut p = Proc::spawn(cmd, &tag, &ctx.logs, StopBy::Sigterm)?;
        let up = wait_for(
            &mut p,
            "the replicated floor's listeners",
            Duration::from_secs(10),
            Duration::from_millis(20),
            |_| {
                let ok = TcpStream::connect(("127.0.0.1", http[i])).is_ok()
                    && TcpStream::connect(("127.0.0.1", replica[i])).is_ok();
                ok.then_some(())
            },
        );
        sys.procs.push(p);
        up?;
    }
    Ok(Target::Servlet(http))
}

fn start_systems(opts: &Opts, ctx: &Ctx, mcast: &mut u16, sys: &mut Systems) -> Vec<Config> {
    let mut cfgs = Vec::new();
    let mut next_mcast = || {
        *mcast += 1;
        *mcast
    };
    let native = (NATIVE_WARMUP, NATIVE_WARMUP);
    if opts.has("floor") {
        eprintln!("== floor: trivial HTTP and RESP servers, and HTTP replicating to a peer");
        for (kind, label) in [
            ("http", "floor: HTTP, 1 KiB POST → 200, no work"),
            ("resp", "floor: RESP, 1 KiB HSET → :1, no work"),
        ] {
            let mut c = Config::new(label, None, native);
            let port = free_port();
            let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
            cmd.args(["--floor-peer", kind, &port.to_string()]);
            let r = Proc::spawn(cmd, &format!("floor-{kind}"), &ctx.logs, StopBy::Sigterm)
                .and_then(|mut p| {
                    let up = wait_for(
                        &mut p,
                        "the floor listener",
                        Duration::from_secs(10),
                        Duration::from_millis(20),
                        |_| TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()),
                    );
                    sys.procs.push(p);
                    up.map(|()| match kind {
                        "http" => Target::Servlet(vec![port]),
                        _ => Target::Resp { port, wait: false },
                    })
                });
            c.set(r);
            cfgs.push(c);
        }
        for (label, replicas) in [(REPL_FLOOR, 1), (REPL_FLOOR_ALL, NODES - 1)] {
            let mut c = Config::new(label, None, native);
            c.set(start_replicated_floor(ctx, sys, replicas));
            cfgs.push(c);
        }
    }
    if opts.has("redis") {
        eprintln!("== Redis: primary + replica");
        let r = start_redis(ctx);
        let mut async_c = Config::new("Redis HSET (async replication)", Some("resp"), native);
        let mut wait_c = Config::new(
            format!("Redis HSET + WAIT 1 {WAIT_MS} (sync)"),
            Some("resp"),
            native,
        );
        match r {
            Ok(pair) => {
                async_c.set(Ok(Target::Resp {
                    port: pair.port,
                    wait: false,
                }));
                wait_c.set(Ok(Target::Resp {
                    port: pair.port,
                    wait: true,
                }));
                sys.procs.push(pair.primary);
                sys.procs.push(pair.replica);
            }
            Err(e) => {
                async_c.set(Err(e.clone()));
                wait_c.set(Err(e));
            }
        }
        cfgs.push(async_c);
        cfgs.push(wait_c);
    }
    if opts.has("tomcat") {
        let specs: Vec<(&str, u8, u16)> =
            [("delta", 8), ("delta", 6), ("backup", 8), ("backup", 6)]
                .into_iter()
                .map(|(m, o)| (m, o, next_mcast()))
                .collect();
        eprintln!(
            "== Tomcat: {} clusters of {NODES} JVMs (multicast ports {}–{})",
            specs.len(),
            specs[0].2,
            specs[specs.len() - 1].2
        );
        let warm = (
            Duration::from_secs(opts.warmup),
            Duration::from_secs(opts.warmup.max(opts.warmup_max)),
        );
        let started = if ctx.classes.is_some() {
            start_tomcats(ctx, &specs)
        } else {
            specs
                .iter()
                .map(|_| Err("TomcatSessions.java did not compile".to_owned()))
                .collect()
        };
        for ((manager, options, _), r) in specs.iter().zip(started) {
            let name = if *manager == "delta" {
                "DeltaManager"
            } else {
                "BackupManager"
            };
            let mode = if *options == 8 { "async" } else { "sync+ACK" };
            let mut c = Config::new(
                format!("Tomcat {name}, options {options} ({mode})"),
                Some("http"),
                warm,
            );
            match r {
                Ok(tc) => {
                    c.set(Ok(Target::Servlet(tc.http.clone())));
                    sys.procs.extend(tc.nodes);
                }
                Err(e) => c.set(Err(e)),
            }
            cfgs.push(c);
        }
    }
    if opts.has("shoal") {
        eprintln!(
            "== shoal: 4 clusters of {NODES} nodes ({}; SESSIONS_SHOAL_CONFIGS picks)",
            opts.shoal_bin.display()
        );
        for (policy, mode) in [
            ("delta", "async"),
            ("delta", "sync-ack"),
            ("backup", "async"),
            ("backup", "sync-ack"),
        ] {
            let label = format!("shoal-{policy}-{mode}");
            // Experiments: `SESSIONS_SHOAL_CONFIGS=delta-sync-ack,...`
            // runs only those.
            if std::env::var("SESSIONS_SHOAL_CONFIGS")
                .is_ok_and(|v| !v.split(',').any(|c| c == &label["shoal-".len()..]))
            {
                continue;
            }
            let mut c = Config::new(format!("shoal {policy}, {mode}"), Some("http"), native);
            match start_shoal(
                ctx,
                &opts.shoal_bin,
                &label,
                NODES,
                next_mcast(),
                policy,
                mode,
            ) {
                Ok(sc) => {
                    c.set(Ok(Target::Shoal(sc.api.clone())));
                    sys.procs.extend(sc.nodes);
                }
                Err(e) => c.set(Err(e)),
            }
            cfgs.push(c);
        }
    }
    cfgs
}

/// Warm-up, then the alternating rounds; per-round foreign CPU.
fn measure(opts: &Opts, ctx: &Ctx, cfgs: &mut [Config]) -> Vec<f64> {
    let measure = Duration::from_secs(opts.seconds);
    eprintln!(
        "== warm-up under load (JVMs {}–{} s each, until the rate stops climbing)",
        opts.warmup, opts.warmup_max
    );
    for c in cfgs.iter_mut() {
        c.warm(opts.clients, &ctx.tag);
    }
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
            cfgs[i].run(opts.clients, ROUND_WARMUP, measure, &ctx.tag, true);
        }
        let b = w.foreign(&own_pids());
        if b > BUSY_ROUND {
            eprintln!(
                "   ⚠ round {} was disturbed: {:.0}% of a core went to other processes",
                round + 1,
                b * 100.0
            );
        }
        busy.push(b);
    }
    busy
}

// ---------------------------------------------------------------------------
// State transfer
// ---------------------------------------------------------------------------

/// The state-transfer figures of one system.
#[derive(Debug, Default)]
struct Transfer {
    system: String,
    fill_s: Option<f64>,
    /// A node joining the empty cluster: spawn until it serves.
    empty_join_s: Option<f64>,
    /// Spawn until the new node holds every session.
    join_s: Option<f64>,
    detail: String,
    failed: Option<String>,
}

/// The number in Tomcat's "received in [T] ms" log line of a joining node.
fn tomcat_received_ms(log: &str) -> Option<f64> {
    let at = log.rfind("received in [")?;
    let rest = &log[at + "received in [".len()..];
    let num: String = rest
        .chars()
        .take_while(|c| *c != ']')
        .filter(|c| c.is_ascii_digit())
        .collect();
    num.parse().ok()
}

/// Tribes' sender timeout raised for the second Tomcat variant: the
/// one-message transfer of 100 000 sessions (~110 MB, sent with
/// USE_ACK | SYNC_ACK, so the ACK comes after the joining node has
/// deserialized everything) does not fit in the default 3000 ms here.
const TOMCAT_TRANSFER_TIMEOUT_MS: u64 = 60_000;

/// Tomcat's state transfer twice: with every default, and with the
/// sender timeout raised (both ends) to [`TOMCAT_TRANSFER_TIMEOUT_MS`].
fn transfer_tomcat(opts: &Opts, ctx: &Ctx, mcast: &mut u16) -> Vec<Transfer> {
    let mut out = Vec::new();
    for timeout in [None, Some(TOMCAT_TRANSFER_TIMEOUT_MS)] {
        *mcast += 1;
        let mut t = Transfer {
            system: match timeout {
                None => "Tomcat DeltaManager (options 8), defaults".into(),
                Some(ms) => format!("Tomcat DeltaManager (options 8), sender timeout {ms} ms"),
            },
            ..Transfer::default()
        };
        if ctx.classes.is_none() {
            t.failed = Some("TomcatSessions.java did not compile".into());
        } else if let Err(e) = transfer_tomcat_steps(opts, ctx, *mcast, timeout, &mut t) {
            eprintln!("   ✗ Tomcat state transfer: {e}");
            t.failed = Some(e);
        }
        out.push(t);
    }
    out
}

fn transfer_tomcat_steps(
    opts: &Opts,
    ctx: &Ctx,
    mcast: u16,
    timeout: Option<u64>,
    t: &mut Transfer,
) -> Result<(), String> {
    let n = opts.sessions;
    let tag = timeout.map_or("", |_| "-t");
    let extra: Vec<String> = timeout
        .map(|ms| format!("senderTimeout={ms}"))
        .into_iter()
        .collect();
    let spawn = |name: &str| spawn_tomcat(ctx, &format!("{name}{tag}"), "delta", 8, mcast, &extra);
    let (mut a, a_http) = spawn("transfer-tomcat-1")?;
    wait_tomcat(&mut a, a_http, 0, Duration::from_secs(180))?;
    // The same join into an empty cluster: the JVM's and Tomcat's start-up.
    let (mut b0, b0_http) = spawn("transfer-tomcat-2-empty")?;
    wait_tomcat(&mut b0, b0_http, 1, Duration::from_secs(180))?;
    t.empty_join_s = Some(b0.spawned.elapsed().as_secs_f64());
    eprintln!(
        "   Tomcat: a node joining the empty cluster served after {:.1} s",
        b0.spawned.elapsed().as_secs_f64()
    );
    stop_all([&mut b0]);
    let fill = agent(Duration::from_secs(600));
    let t0 = Instant::now();
    let url = format!("http://127.0.0.1:{a_http}/fill?n={n}&bytes={VALUE_BYTES}");
    let mut r = fill
        .post(url.as_str())
        .send_empty()
        .map_err(|e| format!("POST {url}: {e}"))?;
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("POST {url}: {} {body}", r.status()));
    }
    t.fill_s = Some(t0.elapsed().as_secs_f64());
    let held = get_json(&fill, &format!("http://127.0.0.1:{a_http}/count"))
        .and_then(|v| v["sessions"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "   Tomcat: {held} sessions on the first node after {:.1} s; RSS {} MiB; starting the second",
        t0.elapsed().as_secs_f64(),
        a.rss_kb() / 1024
    );
    // The first node sees the empty-cluster node leave before the next joins.
    std::thread::sleep(Duration::from_secs(1));
    let (mut b, b_http) = spawn("transfer-tomcat-2")?;
    let probe = agent(Duration::from_secs(10));
    let count_url = format!("http://127.0.0.1:{b_http}/count");
    // The connector starts after the manager, so the first answer comes
    // after the state transfer has ended (done, failed or timed out): what
    // the node holds then is what it got.
    let mut serving: Option<(Instant, f64)> = None;
    let got = wait_for(
        &mut b,
        &format!("{n} sessions in GET /count"),
        Duration::from_secs(300),
        Duration::from_millis(50),
        |p| {
            let v = get_json(&probe, &count_url)?;
            let s = v["sessions"].as_u64().unwrap_or(0);
            if s >= n as u64 {
                return Some(Ok(p.spawned.elapsed().as_secs_f64()));
            }
            let (since, at) =
                *serving.get_or_insert_with(|| (Instant::now(), p.spawned.elapsed().as_secs_f64()));
            (since.elapsed() > Duration::from_secs(5)).then(|| {
                Err(format!(
                    "the joining node served after {at:.1} s holding {s} of {n} sessions"
                ))
            })
        },
    )?;
    let logged = tomcat_received_ms(&b.log_text());
    let sender_error = a
        .log_text()
        .lines()
        .find(|l| l.contains("ChannelException"))
        .map(|l| l.trim().chars().take(120).collect::<String>());
    let log = format!(
        "joining node's log: \"received in [{}] ms\"{}",
        logged.map_or("?".into(), |m| format!("{m:.0}")),
        sender_error.map_or(String::new(), |e| format!("; sender's log: {e}"))
    );
    let result = match got {
        Ok(s) => {
            t.join_s = Some(s);
            t.detail = format!("{log}; joining node RSS {} MiB", b.rss_kb() / 1024);
            eprintln!("   Tomcat: second node holds {n} sessions {s:.1} s after spawn ({log})");
            Ok(())
        }
        Err(e) => Err(format!("{e}; {log}")),
    };
    stop_all([&mut b, &mut a]);
    result
}

fn transfer_shoal(opts: &Opts, ctx: &Ctx, mcast: u16) -> Transfer {
    let mut t = Transfer {
        system: "shoal delta (async)".into(),
        ..Transfer::default()
    };
    if let Err(e) = transfer_shoal_steps(opts, ctx, mcast, &mut t) {
        eprintln!("   ✗ shoal state transfer: {e}");
        t.failed = Some(e);
    }
    t
}

/// Creates `n` sessions with a 1 KiB attribute through the API, with the
/// bench's clients in parallel; bounded by `deadline`.
fn shoal_fill(api: u16, n: usize, clients: usize, deadline: Duration) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + deadline;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let next = next.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut http = Http1::new(api);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    if Instant::now() > end {
                        return Err(format!(
                            "fill: only {i} of {n} sessions within {deadline:?}"
                        ));
                    }
                    shoal_create(&mut http, &value(c, i as u64))?;
                }
            })
        })
        .collect();
    let mut first = Ok(());
    for t in threads {
        let r = t
            .join()
            .unwrap_or_else(|_| Err("fill thread panicked".into()));
        if first.is_ok() {
            first = r;
        }
    }
    first
}

fn shoal_count(a: &ureq::Agent, api: u16) -> Option<u64> {
    get_json(a, &format!("http://127.0.0.1:{api}/api/sessions")).and_then(|v| v["count"].as_u64())
}

fn transfer_shoal_steps(
    opts: &Opts,
    ctx: &Ctx,
    mcast: u16,
    t: &mut Transfer,
) -> Result<(), String> {
    let n = opts.sessions;
    let bin = &opts.shoal_bin;
    let (mut a, a_api) = spawn_shoal(ctx, bin, "transfer-shoal-1", mcast, "delta", "async")?;
    wait_shoal_ready(&mut a, a_api, Duration::from_secs(60))?;
    let (mut b0, b0_api) =
        spawn_shoal(ctx, bin, "transfer-shoal-2-empty", mcast, "delta", "async")?;
    wait_shoal_ready(&mut b0, b0_api, Duration::from_secs(60))?;
    t.empty_join_s = Some(b0.spawned.elapsed().as_secs_f64());
    eprintln!(
        "   shoal: a node joining the empty cluster was ready after {:.2} s",
        b0.spawned.elapsed().as_secs_f64()
    );
    stop_all([&mut b0]);
    let t0 = Instant::now();
    shoal_fill(a_api, n, opts.clients, Duration::from_secs(600))?;
    t.fill_s = Some(t0.elapsed().as_secs_f64());
    let probe = agent(Duration::from_secs(10));
    let held = shoal_count(&probe, a_api).unwrap_or(0);
    eprintln!(
        "   shoal: {held} sessions on the first node after {:.1} s; RSS {} MiB; starting the second",
        t0.elapsed().as_secs_f64(),
        a.rss_kb() / 1024
    );
    std::thread::sleep(Duration::from_secs(1));
    let (mut b, b_api) = spawn_shoal(ctx, bin, "transfer-shoal-2", mcast, "delta", "async")?;
    wait_shoal_ready(&mut b, b_api, Duration::from_secs(300))?;
    let ready = b.spawned.elapsed().as_secs_f64();
    let full = wait_for(
        &mut b,
        &format!("{n} sessions in GET /api/sessions"),
        Duration::from_secs(120),
        Duration::from_millis(50),
        |p| {
            shoal_count(&probe, b_api)
                .filter(|c| *c >= n as u64)
                .map(|_| p.spawned.elapsed().as_secs_f64())
        },
    )?;
    t.join_s = Some(ready);
    t.detail = format!(
        "GET /api/ready 200 after {ready:.2} s, count {n} after {full:.2} s; joining node RSS {} MiB",
        b.rss_kb() / 1024
    );
    eprintln!("   shoal: {}", t.detail);
    stop_all([&mut b, &mut a]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Wire bytes per session change
// ---------------------------------------------------------------------------

/// Bytes per write of one shoal cluster size and policy.
#[derive(Debug)]
struct Wire {
    nodes: usize,
    policy: &'static str,
    result: Result<(f64, f64), String>,
}

/// Sum of `shoal_bytes_sent_total` over the nodes.
fn bytes_sent(a: &ureq::Agent, apis: &[u16]) -> Result<u64, String> {
    let mut sum = 0;
    for api in apis {
        let url = format!("http://127.0.0.1:{api}/metrics");
        let (status, text) = http_get(a, &url)?;
        if status != 200 {
            return Err(format!("GET {url}: {status}"));
        }
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix("shoal_bytes_sent_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("GET {url}: no shoal_bytes_sent_total"))?;
    }
    Ok(sum)
}

/// Waits until the byte counters stop moving (async sends drained): two
/// equal sums 300 ms apart, at most `max`.
fn settled_bytes(a: &ureq::Agent, apis: &[u16], max: Duration) -> Result<(u64, Instant), String> {
    let end = Instant::now() + max;
    let mut last = bytes_sent(a, apis)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = bytes_sent(a, apis)?;
        if now == last || Instant::now() > end {
            return Ok((now, Instant::now()));
        }
        last = now;
    }
}

fn wire_one(opts: &Opts, ctx: &Ctx, n: usize, policy: &'static str, mcast: u16) -> Wire {
    let label = format!("wire-{policy}-{n}");
    let result = (|| -> Result<(f64, f64), String> {
        let mut c = start_shoal(ctx, &opts.shoal_bin, &label, n, mcast, policy, "async")?;
        let r = (|| {
            let a = agent(Duration::from_secs(30));
            // One session per client, on node i mod n, as in the load test.
            let target = Target::Shoal(c.api.clone());
            let mut writers = (0..CLIENTS)
                .map(|i| {
                    let mut w = Writer::new(&target, i, &ctx.tag)?;
                    w.open(i)?;
                    Ok(w)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let (i0, ti0) = settled_bytes(&a, &c.api, Duration::from_secs(10))?;
            std::thread::sleep(Duration::from_secs(2));
            let i1 = bytes_sent(&a, &c.api)?;
            let idle_rate = i1.saturating_sub(i0) as f64 / ti0.elapsed().as_secs_f64();
            let (b0, t0) = (i1, Instant::now());
            for k in 0..opts.writes {
                let i = k % writers.len();
                writers[i].write(i, 1 + k as u64)?;
            }
            let (b1, t1) = settled_bytes(&a, &c.api, Duration::from_secs(20))?;
            let idle = idle_rate * (t1 - t0).as_secs_f64();
            let per = (b1.saturating_sub(b0) as f64 - idle).max(0.0) / opts.writes as f64;
            Ok((per, idle_rate))
        })();
        stop_all(c.procs());
        r
    })();
    match &result {
        Ok((per, idle)) => {
            eprintln!("   {n} nodes, {policy}: {per:.0} bytes sent per write ({idle:.0} B/s idle)")
        }
        Err(e) => eprintln!("   ✗ {n} nodes, {policy}: {e}"),
    }
    Wire {
        nodes: n,
        policy,
        result,
    }
}

// ---------------------------------------------------------------------------
// Orchestrator and report
// ---------------------------------------------------------------------------

fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("sessions: watchdog: {limit:?} exceeded, killing every process");
        for pid in PIDS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Ok(p) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::process::exit(2);
    });
}

fn orchestrate(opts: &Opts) {
    let started = Instant::now();
    watchdog(opts.time_limit());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sessions");
    let _ = std::fs::remove_dir_all(&dir);
    let logs = dir.join("logs");
    let work = dir.join("work");
    for d in [&logs, &work] {
        std::fs::create_dir_all(d).expect("bench dirs");
    }
    let needs_java = opts.has("tomcat") || opts.has("transfer-tomcat");
    let classes = if needs_java {
        match compile_java(&work) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("   ✗ {e}");
                None
            }
        }
    } else {
        None
    };
    let ctx = Ctx {
        logs,
        work,
        classes,
        tag: format!("{}", std::process::id()),
    };
    let load_before = load_avg();
    // Own multicast ports, away from the default 45564, from the tests'
    // ephemeral ones and from side_by_side's 46000–46999.
    let mut mcast = 47000 + (std::process::id() % 150) as u16 * 20;
    eprintln!(
        "sessions: parts {:?}; {} rounds of {} s; watchdog {:?}; logs {}",
        {
            let mut p: Vec<&str> = opts.parts.iter().copied().collect();
            p.sort_unstable();
            p
        },
        opts.rounds,
        opts.seconds,
        opts.time_limit(),
        ctx.logs.display()
    );

    let mut sys = Systems::default();
    let mut cfgs = start_systems(opts, &ctx, &mut mcast, &mut sys);
    let busy = if cfgs.is_empty() {
        Vec::new()
    } else {
        measure(opts, &ctx, &mut cfgs)
    };
    let rss: Vec<(String, u64)> = sys
        .procs
        .iter()
        .map(|p| (p.name.clone(), p.rss_kb()))
        .collect();
    if !sys.procs.is_empty() {
        eprintln!("== stopping the throughput systems");
        stop_all(sys.procs.iter_mut());
    }

    let mut transfers = Vec::new();
    if opts.has("transfer-tomcat") {
        eprintln!(
            "== state transfer: Tomcat, {} sessions of 1 KiB",
            opts.sessions
        );
        transfers.extend(transfer_tomcat(opts, &ctx, &mut mcast));
    }
    if opts.has("transfer-shoal") {
        eprintln!(
            "== state transfer: shoal, {} sessions of 1 KiB",
            opts.sessions
        );
        mcast += 1;
        transfers.push(transfer_shoal(opts, &ctx, mcast));
    }
    let mut wires = Vec::new();
    if opts.has("wire") {
        eprintln!("== wire bytes per write: {} writes of 1 KiB", opts.writes);
        'sizes: for &n in &opts.wire_nodes {
            for policy in ["delta", "backup"] {
                mcast += 1;
                let w = wire_one(opts, &ctx, n, policy, mcast);
                // Without the session API every size fails the same way.
                let stop = w.result.as_ref().is_err_and(|e| e.contains("POST"));
                wires.push(w);
                if stop {
                    break 'sizes;
                }
            }
        }
    }
    report(
        opts,
        &ctx,
        &cfgs,
        &busy,
        &rss,
        &transfers,
        &wires,
        &load_before,
        started,
    );
}

/// Tomcat's last round faster than its first by more than this: it was
/// still warming up, and a verdict against it does not count.
const STILL_WARMING: f64 = 1.10;

/// The issue's targets, per round (the two configurations of a ratio are
/// measured in the same round), with medians and spreads; a verdict against
/// a Tomcat that was still getting faster over the rounds is flagged.
fn ratios(cfgs: &[Config]) {
    let find = |prefix: &str| {
        cfgs.iter()
            .find(|c| c.label.starts_with(prefix) && !c.samples.is_empty())
    };
    // (who, ours, theirs, target): the issue's ratios, then what the
    // replicated floor allows (no system with one replication exchange per
    // write gets past it on this machine).
    let rows = [
        (
            "delta",
            "shoal delta, sync-ack",
            "Tomcat DeltaManager, options 6",
            3.0,
        ),
        (
            "backup",
            "shoal backup, sync-ack",
            "Tomcat BackupManager, options 6",
            3.0,
        ),
        ("delta", "shoal delta, sync-ack", "Redis HSET + WAIT", 1.5),
        ("backup", "shoal backup, sync-ack", "Redis HSET + WAIT", 1.5),
        (
            "delta",
            "shoal delta, async",
            "Tomcat DeltaManager, options 8",
            0.0,
        ),
        (
            "backup",
            "shoal backup, async",
            "Tomcat BackupManager, options 8",
            0.0,
        ),
        (
            "floor",
            REPL_FLOOR_ALL,
            "Tomcat DeltaManager, options 6",
            0.0,
        ),
        ("floor", REPL_FLOOR, "Tomcat BackupManager, options 6", 0.0),
        ("floor", REPL_FLOOR_ALL, "Redis HSET + WAIT", 0.0),
        ("floor", REPL_FLOOR, "Redis HSET + WAIT", 0.0),
        ("delta", "shoal delta, sync-ack", REPL_FLOOR_ALL, 0.0),
        ("backup", "shoal backup, sync-ack", REPL_FLOOR, 0.0),
    ];
    let mut lines = Vec::new();
    for (policy, ours, theirs, target) in rows {
        let (Some(a), Some(b)) = (find(ours), find(theirs)) else {
            continue;
        };
        let per_round: Vec<f64> = a
            .samples
            .iter()
            .zip(&b.samples)
            .map(|(x, y)| x.rate / y.rate.max(1e-9))
            .collect();
        let r = Stat::of(&per_round);
        let warming = theirs.starts_with("Tomcat")
            && b.samples.len() > 1
            && b.samples[b.samples.len() - 1].rate > STILL_WARMING * b.samples[0].rate;
        let verdict = if target == 0.0 {
            "—".to_owned()
        } else {
            let v = if r.median >= target { "met" } else { "not met" };
            if warming {
                format!("{v} (⚠ Tomcat still warming up: does not count)")
            } else {
                v.to_owned()
            }
        };
        let goal = if target == 0.0 {
            "—".to_owned()
        } else {
            format!("≥ {target}×")
        };
        let short = |l: &str| match l {
            REPL_FLOOR => "replicated floor (1 replica)".to_owned(),
            REPL_FLOOR_ALL => "replicated floor (2 replicas)".to_owned(),
            l => l.split(" (").next().unwrap_or(l).to_owned(),
        };
        let ours = match policy {
            "floor" => short(&a.label),
            _ => format!(
                "{policy}: {}",
                a.label.trim_start_matches(&format!("shoal {policy}, "))
            ),
        };
        lines.push(format!(
            "| {ours} / {} | {} | {goal} | {verdict} |",
            short(&b.label),
            r.show(2)
        ));
        if warming {
            let rates: Vec<String> = b.samples.iter().map(|s| format!("{:.0}", s.rate)).collect();
            eprintln!(
                "warning: {} was still warming up: {} writes/s in rounds 1..{}; a verdict \
                 against it does not count (--warmup, --warmup-max)",
                b.label,
                rates.join(" → "),
                rates.len()
            );
        }
    }
    if lines.is_empty() {
        return;
    }
    println!(
        "\n| shoal writes/s over the other's, per round | × median (slowest–fastest round) | target | verdict |"
    );
    println!("|---|---:|---|---|");
    for l in lines {
        println!("{l}");
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    opts: &Opts,
    ctx: &Ctx,
    cfgs: &[Config],
    busy: &[f64],
    rss: &[(String, u64)],
    transfers: &[Transfer],
    wires: &[Wire],
    load_before: &str,
    started: Instant,
) {
    let cpu = cpu_model();
    let java = java_version(&jdk_tool("java"));
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|w| w.starts_with("v="))
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    println!("\n## Session replication: shoal, Tomcat 10.1, Redis\n");
    println!(
        "machine: {} cores, {cpu}; {java}; Redis {redis}; load average before {load_before}, \
         after {}; run took {:.0} s\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg(),
        started.elapsed().as_secs_f64()
    );
    if !cfgs.is_empty() {
        let rounds: Vec<String> = busy.iter().map(|b| format!("{:.0}%", b * 100.0)).collect();
        println!(
            "CPU used by other processes (or stolen) per round, share of one core: {}{}\n",
            rounds.join(", "),
            if busy.iter().any(|b| *b > BUSY_ROUND) {
                " — **⚠ the machine was busy: the figures may not hold**"
            } else {
                ""
            }
        );
        println!(
            "{} clients, each writing a 1 KiB value to its own session per request (keep-alive, \
             client i on node i mod {NODES}); {} rounds of {} s (after 1 s untimed), the order \
             reversed every other round; medians with the spread (slowest–fastest round) in \
             brackets. vs floor: writes/s as a share of the floor's (HTTP, or RESP for Redis).\n",
            opts.clients, opts.rounds, opts.seconds
        );
        println!(
            "| configuration | writes/s | p50 latency (µs) | p99 latency (µs) | vs floor | errors / writes |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let floor_rate = |kind: &str| -> Option<f64> {
            let label = if kind == "http" {
                "floor: HTTP"
            } else {
                "floor: RESP"
            };
            cfgs.iter()
                .find(|c| c.label.starts_with(label) && !c.samples.is_empty())
                .map(|c| Stat::of(&c.samples.iter().map(|s| s.rate).collect::<Vec<_>>()).median)
        };
        for c in cfgs {
            if c.samples.is_empty() {
                let why = c.failed.as_deref().unwrap_or("not measured");
                let why: String = why.chars().take(160).collect();
                println!(
                    "| {} | n/a | n/a | n/a | — | {} |",
                    c.label,
                    why.replace('|', "/")
                );
                continue;
            }
            let get =
                |f: fn(&Sample) -> f64| Stat::of(&c.samples.iter().map(f).collect::<Vec<_>>());
            let rate = get(|s| s.rate);
            let vs = c
                .floor
                .and_then(floor_rate)
                .map_or("—".to_owned(), |f| format!("{:.2}", rate.median / f));
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
            println!(
                "| {}{partial} | {} | {} | {} | {vs} | {err} |",
                c.label,
                rate.show(0),
                get(|s| s.p50_us).show(0),
                get(|s| s.p99_us).show(0),
            );
        }
        let warmed: Vec<String> = cfgs
            .iter()
            .filter(|c| c.warmup.0 > NATIVE_WARMUP)
            .filter_map(|c| {
                c.warmed
                    .map(|(s, r)| format!("{} {s:.0} s (last window {r:.0} writes/s)", c.label))
            })
            .collect();
        if !warmed.is_empty() {
            println!(
                "\nJVM warm-up before the rounds (≥ {} s, then until two 5 s windows in a row \
                 gained < {:.0} % on the best, ≤ {} s): {}",
                opts.warmup,
                WARM_GAIN * 100.0,
                opts.warmup.max(opts.warmup_max),
                warmed.join("; ")
            );
        }
        ratios(cfgs);
        let mut by_system: Vec<(String, u64, usize)> = Vec::new();
        for (name, kb) in rss {
            let system = name.rsplit_once('-').map_or(name.as_str(), |(s, _)| s);
            match by_system.iter_mut().find(|(s, _, _)| s == system) {
                Some(e) => {
                    e.1 = e.1.max(*kb);
                    e.2 += 1;
                }
                None => by_system.push((system.to_owned(), *kb, 1)),
            }
        }
        let rss_line: Vec<String> = by_system
            .iter()
            .map(|(s, kb, _)| format!("{s} {:.0}", *kb as f64 / 1024.0))
            .collect();
        println!(
            "\nRSS after the rounds, largest node of each system (MiB): {}",
            rss_line.join(", ")
        );
    }
    if !transfers.is_empty() {
        println!(
            "\n### State transfer: {} sessions of 1 KiB to a joining node\n",
            opts.sessions
        );
        println!(
            "| system | fill the first node (s) | join, empty cluster (s) | join until it holds all (s) | detail |"
        );
        println!("|---|---:|---:|---:|---|");
        let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
        for t in transfers {
            let detail = match &t.failed {
                Some(e) => format!("✗ {}", e.chars().take(200).collect::<String>()),
                None => t.detail.clone(),
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                t.system,
                f(t.fill_s),
                f(t.empty_join_s),
                f(t.join_s),
                detail.replace('|', "/")
            );
        }
    }
    if !wires.is_empty() {
        println!(
            "\n### Wire bytes per session change (shoal, async, {} writes of 1 KiB)\n",
            opts.writes
        );
        println!(
            "| nodes | policy | bytes sent per write (all nodes) | per write / 1 KiB | idle B/s |"
        );
        println!("|---:|---|---:|---:|---:|");
        for w in wires {
            match &w.result {
                Ok((per, idle)) => println!(
                    "| {} | {} | {per:.0} | {:.2} | {idle:.0} |",
                    w.nodes,
                    w.policy,
                    per / VALUE_BYTES as f64
                ),
                Err(e) => println!(
                    "| {} | {} | n/a: {} | — | — |",
                    w.nodes,
                    w.policy,
                    e.chars().take(160).collect::<String>().replace('|', "/")
                ),
            }
        }
    }
    println!("\nlogs: {}", ctx.logs.display());
}
