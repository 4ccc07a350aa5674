//! Tomcat Tribes <-> Tomcat Tribes next to shoal <-> shoal, in one run on this
//! machine, with shoal/Tomcat ratios.
//!
//! `cargo bench --bench side_by_side` (or `benches/side_by_side.sh`).
//!
//! Each side is two node processes on loopback, driven the same way over
//! stdin/stdout (JSON lines):
//! * Tomcat: two JVMs running `tests/interop/TribesBench.java` (Tribes 10.1
//!   defaults: McastService, NioReceiver, PooledParallelSender,
//!   TcpFailureDetector + MessageDispatchInterceptor + ThroughputInterceptor),
//!   compiled here with `javac` against Debian's `libtomcat10-java` jars and
//!   started with JVM defaults (only `-Djava.net.preferIPv4Stack=true`).
//! * shoal: two processes of this very binary in `--shoal-peer` mode, each a
//!   `shoal::Node` with the default configuration (default interceptor chain,
//!   multi-threaded Tokio runtime as `shoal run` uses, log to stderr at info);
//!   only the addresses and ports are set.
//!
//! Node A sends, node B receives and counts. Measured per side: join time
//! (process start until each sees the other), RSS of both nodes idle and the
//! peak while the async 1 KiB tests run, async throughput (100 B, 1 KiB,
//! 64 KiB; delivered messages / time from the start of sending until the
//! receiver has them all; median of 3 rounds of 3 s), sync-ACK (options 7) latency with one sender and
//! throughput with 8 concurrent senders, and the time until A reports B gone
//! after B is SIGKILLed (dropTime 3000 ms, frequency 500 ms on both).
//! Every loop is bounded; every process is killed when dropped, and a
//! watchdog kills everything after 6 minutes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/common/java.rs"]
mod java;
use java::{JULI_JAR, TRIBES_JAR, javac, jdk_tool};
const FREQUENCY_MS: u64 = 500;
const DROP_TIME_MS: u64 = 3000;
/// Sending time of each async throughput test.
const ASYNC_MS: u64 = 3000;
/// Rounds of each async test; the median is reported.
const ASYNC_ROUNDS: usize = 3;
/// Warm-up and measuring time of the sync-ACK tests.
const WARMUP_MS: u64 = 1000;
const MEASURE_MS: u64 = 3000;
const SYNC_SENDERS: usize = 8;
const SIZES: [usize; 3] = [100, 1024, 65536];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--shoal-peer") {
        peer::run(&args[i + 1..]);
        return;
    }
    orchestrate();
}

// ---------------------------------------------------------------------------
// shoal peer mode: the same commands and output as TribesBench.java
// ---------------------------------------------------------------------------

mod peer {
    use super::*;
    use shoal::config::MembershipKind;
    use shoal::membership::LeaveReason;
    use shoal::{ListenerError, Member, MembershipListener, Node, ReceivedMessage, SendOptions};

    static OUT: Mutex<()> = Mutex::new(());

    fn emit(v: &Value) {
        let _g = OUT.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    struct Events;
    impl MembershipListener for Events {
        fn member_added(&self, m: &Member) {
            emit(&serde_json::json!({"event": "member_added", "id": m.id.unique_hex()}));
        }
        fn member_disappeared(&self, m: &Member, _r: LeaveReason) {
            emit(&serde_json::json!({"event": "member_disappeared", "id": m.id.unique_hex()}));
        }
    }

    pub fn run(args: &[String]) {
        let kv: HashMap<&str, &str> = args.iter().filter_map(|a| a.split_once('=')).collect();
        let get = |k: &str| kv.get(k).copied().unwrap_or_else(|| panic!("missing {k}="));
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        let mut cfg = shoal::Config::default();
        cfg.node.name = get("name").to_owned();
        cfg.membership.kind = MembershipKind::Multicast;
        cfg.membership.port = get("mcastPort").parse().expect("mcastPort");
        cfg.membership.bind = Some("127.0.0.1".parse().expect("ip"));
        cfg.membership.frequency_ms = FREQUENCY_MS;
        cfg.membership.drop_time_ms = DROP_TIME_MS;
        cfg.receiver.address =
            shoal::config::ReceiverAddress::Ip(std::net::Ipv4Addr::LOCALHOST.into());
        cfg.receiver.port = get("port").parse().expect("port");
        cfg.api.listen = shoal::config::ApiListen::Off;
        // As `shoal run`: a default multi-threaded runtime.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let received = Arc::new(AtomicU64::new(0));
        let node = rt.block_on(async {
            let node = Node::start(cfg).await.expect("node start");
            let r = received.clone();
            node.channel()
                .add_listener(Arc::new(move |_m: &ReceivedMessage| {
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok::<(), ListenerError>(())
                }));
            node.channel().add_membership_listener(Arc::new(Events));
            // Members seen before the listener was registered.
            for m in node.members() {
                Events.member_added(&m);
            }
            node
        });
        emit(
            &serde_json::json!({"event": "started", "id": node.id().unique_hex(),
            "port": node.receiver_addr().port()}),
        );
        let node = Arc::new(node);
        let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let w: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> u64 { w.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
            match w.first().copied() {
                Some("count") => emit(&serde_json::json!({"event": "count",
                    "n": received.load(Ordering::Relaxed)})),
                Some("async") => {
                    let (size, ms) = (num(1) as usize, num(2));
                    let node = node.clone();
                    let (sent, errors, elapsed) = rt.block_on(async move {
                        let dests = node.channel().member_ids();
                        let body = vec![1u8; size];
                        let (mut sent, mut errors) = (0u64, 0u64);
                        let start = Instant::now();
                        let end = start + Duration::from_millis(ms);
                        while Instant::now() < end {
                            for _ in 0..256 {
                                match node
                                    .channel()
                                    .send(&dests, &body, SendOptions::ASYNCHRONOUS)
                                    .await
                                {
                                    Ok(()) => sent += 1,
                                    Err(_) => errors += 1,
                                }
                            }
                        }
                        (sent, errors, start.elapsed())
                    });
                    emit(
                        &serde_json::json!({"event": "result", "cmd": "async", "sent": sent,
                        "errors": errors, "elapsed_ms": elapsed.as_secs_f64() * 1e3}),
                    );
                }
                Some("latency") => {
                    let (size, warm, ms) = (num(1) as usize, num(2), num(3));
                    let node = node.clone();
                    let v = rt.block_on(async move {
                        let dests = node.channel().member_ids();
                        let body = vec![0u8; size];
                        let mut errors = 0u64;
                        let warm_end = Instant::now() + Duration::from_millis(warm);
                        while Instant::now() < warm_end {
                            if node.channel().send(&dests, &body, sync).await.is_err() {
                                errors += 1;
                            }
                        }
                        let mut samples: Vec<u64> = Vec::with_capacity(1 << 20);
                        let end = Instant::now() + Duration::from_millis(ms);
                        while samples.len() < 4_000_000 {
                            let t = Instant::now();
                            if t >= end {
                                break;
                            }
                            if node.channel().send(&dests, &body, sync).await.is_err() {
                                errors += 1;
                            }
                            samples.push(t.elapsed().as_nanos() as u64);
                        }
                        samples.sort_unstable();
                        let n = samples.len();
                        let at = |i: usize| samples.get(i).map_or(0.0, |&x| x as f64 / 1e3);
                        let mean = if n == 0 {
                            0.0
                        } else {
                            samples.iter().sum::<u64>() as f64 / n as f64 / 1e3
                        };
                        serde_json::json!({"event": "result", "cmd": "latency", "n": n,
                            "errors": errors, "p50_us": at(n / 2),
                            "p99_us": at(((n as f64 * 0.99) as usize).min(n.saturating_sub(1))),
                            "mean_us": mean})
                    });
                    emit(&v);
                }
                Some("syncpar") => {
                    let (threads, size, warm, ms) = (num(1), num(2) as usize, num(3), num(4));
                    let node = node.clone();
                    let (done, errors) = rt.block_on(async move {
                        let done = Arc::new(AtomicU64::new(0));
                        let errors = Arc::new(AtomicU64::new(0));
                        let warm_end = Instant::now() + Duration::from_millis(warm);
                        let end = warm_end + Duration::from_millis(ms);
                        let tasks: Vec<_> = (0..threads)
                            .map(|_| {
                                let (node, done, errors) =
                                    (node.clone(), done.clone(), errors.clone());
                                tokio::spawn(async move {
                                    let dests = node.channel().member_ids();
                                    let body = vec![0u8; size];
                                    while Instant::now() < end {
                                        if node.channel().send(&dests, &body, sync).await.is_ok() {
                                            let c = Instant::now();
                                            if c >= warm_end && c <= end {
                                                done.fetch_add(1, Ordering::Relaxed);
                                            }
                                        } else {
                                            errors.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            let _ = t.await;
                        }
                        (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
                    });
                    emit(
                        &serde_json::json!({"event": "result", "cmd": "syncpar", "n": done,
                        "errors": errors, "elapsed_ms": ms}),
                    );
                }
                Some("stop") => break,
                _ => emit(&serde_json::json!({"event": "error", "message": "unknown command"})),
            }
        }
        if let Ok(node) = Arc::try_unwrap(node) {
            rt.block_on(node.shutdown());
        }
    }
}

// ---------------------------------------------------------------------------
// Orchestrator
// ---------------------------------------------------------------------------

/// Child pids, for the watchdog.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Tomcat,
    Shoal,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Tomcat => "Tomcat",
            Side::Shoal => "shoal",
        }
    }
}

type Events = Arc<Mutex<Vec<(Instant, Value)>>>;

/// One node process; SIGKILLed when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    events: Events,
    spawned: Instant,
    log: PathBuf,
    pid: u32,
}

impl Proc {
    fn spawn(side: Side, name: &str, port: u16, mcast_port: u16, ctx: &Ctx) -> Self {
        let log = ctx.logs.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = match side {
            Side::Tomcat => {
                let mut c = Command::new(jdk_tool("java"));
                // JVM defaults; SIDE_BY_SIDE_JAVA_OPTS adds flags (e.g. -Xmx256m).
                if let Ok(opts) = std::env::var("SIDE_BY_SIDE_JAVA_OPTS") {
                    c.args(opts.split_whitespace());
                }
                c.arg("-Djava.net.preferIPv4Stack=true")
                    .arg("-cp")
                    .arg(format!("{}:{TRIBES_JAR}:{JULI_JAR}", ctx.classes.display()))
                    .arg("TribesBench");
                c
            }
            Side::Shoal => {
                let mut c = Command::new(std::env::current_exe().expect("current exe"));
                c.arg("--shoal-peer");
                c
            }
        };
        cmd.arg(format!("name={name}"))
            .arg(format!("port={port}"))
            .arg(format!("mcastPort={mcast_port}"))
            .arg(format!("frequency={FREQUENCY_MS}"))
            .arg(format!("dropTime={DROP_TIME_MS}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let spawned = Instant::now();
        let mut child = cmd.spawn().expect("spawning a node process");
        let pid = child.id();
        PIDS.lock().expect("pids").push(pid);
        let stdout = child.stdout.take().expect("stdout");
        let events: Events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let n = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => ev.lock().expect("events").push((now, v)),
                    Err(_) => eprintln!("[{n}] {line}"),
                }
            }
        });
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child: Some(child),
            events,
            spawned,
            log,
            pid,
        }
    }

    fn cmd(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        writeln!(s, "{line}")
            .and_then(|()| s.flush())
            .unwrap_or_else(|e| panic!("[{}] writing `{line}`: {e}", self.name));
    }

    /// Index of the next event, to wait for events after a command.
    fn mark(&self) -> usize {
        self.events.lock().expect("events").len()
    }

    /// The first event at or after `from` that matches; bounded by `timeout`.
    fn wait(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Instant, Value) {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events.lock().expect("events")[from..]
                .iter()
                .find(|(_, v)| pred(v))
            {
                return e.clone();
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "[{}] exited ({st}) waiting for {what}; log {}",
                    self.name,
                    self.log.display()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "[{}] timed out after {timeout:?} waiting for {what}; log {}",
                self.name,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn request(&mut self, line: &str, timeout: Duration, event: &str) -> (Instant, Value) {
        let m = self.mark();
        self.cmd(line);
        self.wait(m, timeout, line, |v| v["event"] == event)
    }

    fn count(&mut self) -> (Instant, u64) {
        let (t, v) = self.request("count", Duration::from_secs(10), "count");
        (t, v["n"].as_u64().expect("n"))
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop, bounded; SIGKILL after 10 s.
    fn stop(&mut self) {
        let _ = self
            .stdin
            .as_mut()
            .map(|s| writeln!(s, "stop").and_then(|()| s.flush()));
        self.stdin = None;
        let start = Instant::now();
        while let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                self.child = None;
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

struct Ctx {
    classes: PathBuf,
    logs: PathBuf,
}

/// Compiles TribesBench.java into the target dir (every run: it takes ~1 s).
fn compile_java(dir: &Path) -> PathBuf {
    for jar in [TRIBES_JAR, JULI_JAR] {
        assert!(
            Path::new(jar).is_file(),
            "{jar} missing: apt-get install libtomcat10-java (scripts/setup.sh)"
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/TribesBench.java");
    let classes = dir.join("classes");
    let _ = std::fs::remove_dir_all(&classes);
    std::fs::create_dir_all(&classes).expect("class dir");
    javac(&src, &classes);
    classes
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

#[derive(Debug, Default, Clone)]
struct Results {
    join_ms: f64,
    rss_idle_kb: [u64; 2],
    rss_load_kb: [u64; 2],
    /// (msg/s, sent, received, errors) per size.
    async_rate: Vec<(usize, f64, u64, u64, u64)>,
    /// (slowest, fastest) round per size.
    async_spread: Vec<(f64, f64)>,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_mean_us: f64,
    lat_n: u64,
    syncpar_rate: f64,
    sync_errors: u64,
    detect_ms: f64,
}

/// Runs one async test: A sends for ASYNC_MS, then waits (bounded) until B
/// has received everything A accepted; rate = received / (end − start).
fn async_test(
    a: &mut Proc,
    b: &mut Proc,
    size: usize,
    sample_rss: bool,
) -> (f64, u64, u64, u64, [u64; 2]) {
    let (_, base) = b.count();
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new([0u64; 2]));
    let sampler = sample_rss.then(|| {
        let (stop, peaks, pids) = (stop.clone(), peaks.clone(), [a.pid, b.pid]);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut p = peaks.lock().expect("peaks");
                for (i, pid) in pids.iter().enumerate() {
                    p[i] = p[i].max(rss_kb(*pid));
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    });
    let t0 = Instant::now();
    let (_, r) = a.request(
        &format!("async {size} {ASYNC_MS}"),
        Duration::from_millis(ASYNC_MS) + Duration::from_secs(60),
        "result",
    );
    let sent = r["sent"].as_u64().unwrap_or(0);
    let errors = r["errors"].as_u64().unwrap_or(0);
    let mut last = (Instant::now(), base);
    let mut progress_at = Instant::now();
    loop {
        let (t, n) = b.count();
        if n > last.1 {
            progress_at = t;
        }
        last = (t, n);
        if n >= base + sent
            || progress_at.elapsed() > Duration::from_secs(10)
            || t0.elapsed() > Duration::from_secs(90)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let received = last.1 - base;
    // The end is the last count that grew (not the time spent waiting in vain).
    let end = if last.1 >= base + sent {
        last.0
    } else {
        progress_at
    };
    let rate = received as f64 / (end - t0).as_secs_f64();
    let peaks = *peaks.lock().expect("peaks");
    (rate, sent, received, errors, peaks)
}

fn run_side(side: Side, ctx: &Ctx, mcast_port: u16) -> Results {
    let mut r = Results::default();
    let tag = side.name().to_lowercase();
    eprintln!(
        "== {}: starting two nodes (multicast port {mcast_port})",
        side.name()
    );
    let mut a = Proc::spawn(side, &format!("{tag}-a"), free_port(), mcast_port, ctx);
    let mut b = Proc::spawn(side, &format!("{tag}-b"), free_port(), mcast_port, ctx);
    let join_to = Duration::from_secs(60);
    let (ta, _) = a.wait(0, join_to, "member_added", |v| v["event"] == "member_added");
    let (tb, _) = b.wait(0, join_to, "member_added", |v| v["event"] == "member_added");
    a.wait(0, join_to, "started", |v| v["event"] == "started");
    b.wait(0, join_to, "started", |v| v["event"] == "started");
    r.join_ms = (ta - a.spawned).max(tb - b.spawned).as_secs_f64() * 1e3;
    eprintln!("   joined in {:.0} ms; idle 3 s", r.join_ms);
    std::thread::sleep(Duration::from_secs(3));
    r.rss_idle_kb = [a.rss_kb(), b.rss_kb()];

    eprintln!("   warm-up: async 1 KiB, 1 s");
    {
        let (_, base) = b.count();
        let (_, v) = a.request("async 1024 1000", Duration::from_secs(70), "result");
        let sent = v["sent"].as_u64().unwrap_or(0);
        let t = Instant::now();
        while b.count().1 < base + sent && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for size in SIZES {
        let mut rates = Vec::new();
        let (mut sent, mut received, mut errors) = (0, 0, 0);
        for _ in 0..ASYNC_ROUNDS {
            let (rate, s, rc, e, peaks) = async_test(&mut a, &mut b, size, size == 1024);
            eprintln!("   async {size} B: {rate:.0} msg/s (sent {s}, received {rc}, errors {e})");
            if size == 1024 {
                r.rss_load_kb = [
                    r.rss_load_kb[0].max(peaks[0]),
                    r.rss_load_kb[1].max(peaks[1]),
                ];
            }
            rates.push(rate);
            (sent, received, errors) = (sent + s, received + rc, errors + e);
        }
        rates.sort_by(f64::total_cmp);
        r.async_spread.push((rates[0], rates[rates.len() - 1]));
        r.async_rate
            .push((size, rates[rates.len() / 2], sent, received, errors));
    }
    let (_, v) = a.request(
        &format!("latency 1024 {WARMUP_MS} {MEASURE_MS}"),
        Duration::from_secs(60),
        "result",
    );
    r.lat_p50_us = v["p50_us"].as_f64().unwrap_or(0.0);
    r.lat_p99_us = v["p99_us"].as_f64().unwrap_or(0.0);
    r.lat_mean_us = v["mean_us"].as_f64().unwrap_or(0.0);
    r.lat_n = v["n"].as_u64().unwrap_or(0);
    r.sync_errors = v["errors"].as_u64().unwrap_or(0);
    eprintln!("   sync-ACK latency: {v}");
    let (_, v) = a.request(
        &format!("syncpar {SYNC_SENDERS} 1024 {WARMUP_MS} {MEASURE_MS}"),
        Duration::from_secs(60),
        "result",
    );
    r.syncpar_rate = v["n"].as_f64().unwrap_or(0.0) / (MEASURE_MS as f64 / 1e3);
    r.sync_errors += v["errors"].as_u64().unwrap_or(0);
    eprintln!("   sync-ACK x{SYNC_SENDERS}: {v}");

    eprintln!("   SIGKILL {}", b.name);
    let m = a.mark();
    let t0 = Instant::now();
    b.kill();
    let (t, _) = a.wait(m, Duration::from_secs(30), "member_disappeared", |v| {
        v["event"] == "member_disappeared"
    });
    r.detect_ms = (t - t0).as_secs_f64() * 1e3;
    eprintln!("   detected after {:.0} ms", r.detect_ms);
    a.stop();
    r
}

/// Busy clock ticks of the whole machine: everything in /proc/stat but idle
/// and iowait.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// Clock ticks used by this process and its waited-for children (every node
/// process is waited for when it ends).
fn own_tree_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" closing the command name start at field 3 (state);
    // utime, stime, cutime, cstime are fields 14..=17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11..15)
        .map_or(0, |x| x.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn orchestrate() {
    let started = Instant::now();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(360));
        eprintln!("side_by_side: watchdog: 6 minutes exceeded, killing every node");
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
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("side-by-side");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let classes = compile_java(&dir);
    let ctx = Ctx { classes, logs };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let java = Command::new(jdk_tool("java"))
        .arg("-version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .nth(1)
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let java_opts = std::env::var("SIDE_BY_SIDE_JAVA_OPTS").unwrap_or_default();
    let java = if java_opts.trim().is_empty() {
        format!("{java}, JVM defaults")
    } else {
        format!("{java}, JVM options `{}`", java_opts.trim())
    };
    let load_before = load_avg();
    let (busy0, own0) = (machine_busy_ticks(), own_tree_ticks());
    let measuring = Instant::now();
    // Own multicast ports, away from the default 45564 and from the tests'.
    let base = 46000 + (std::process::id() % 500) as u16 * 2;
    let tomcat = run_side(Side::Tomcat, &ctx, base);
    let shoal = run_side(Side::Shoal, &ctx, base + 1);
    let load_after = load_avg();
    let wall = measuring.elapsed().as_secs_f64();
    // Ticks are USER_HZ = 100 per second on Linux.
    let busy = machine_busy_ticks().saturating_sub(busy0) as f64 / 100.0;
    let own = own_tree_ticks().saturating_sub(own0) as f64 / 100.0;
    let foreign = (busy - own).max(0.0);

    println!("\n## Side by side: Tomcat Tribes <-> Tomcat Tribes vs shoal <-> shoal\n");
    println!(
        "machine: {} cores, {cpu}; {java}; load average before {load_before}, after {load_after}; run took {:.0} s\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!(
        "CPU during the measurements ({wall:.0} s): machine busy {busy:.1} CPU-s, of which the \
         benchmark's processes {own:.1} CPU-s; the rest, {foreign:.1} CPU-s ({:.0}% of one core), is \
         other processes, kernel threads and interrupts (loopback traffic included)\n",
        foreign / wall * 100.0
    );
    println!("| metric | Tomcat | shoal | shoal/Tomcat | target | met |");
    println!("|---|---:|---:|---:|---|---|");
    let row = |name: &str, t: String, s: String, ratio: f64, target: Option<(&str, bool)>| {
        let (tg, met) = match target {
            Some((tg, ok)) => (tg.to_owned(), if ok { "yes" } else { "**no**" }.to_owned()),
            None => ("—".to_owned(), "—".to_owned()),
        };
        println!("| {name} | {t} | {s} | {ratio:.2}× | {tg} | {met} |");
    };
    for (i, size) in SIZES.iter().enumerate() {
        let (_, tr, ..) = tomcat.async_rate[i];
        let (_, sr, ..) = shoal.async_rate[i];
        let label = match size {
            100 => "100 B",
            1024 => "1 KiB",
            _ => "64 KiB",
        };
        let ratio = sr / tr;
        let target = match size {
            1024 => Some((">= 3×", ratio >= 3.0)),
            65536 => Some((">= 2×", ratio >= 2.0)),
            _ => None,
        };
        let mb = |r: f64| r * *size as f64 / 1e6;
        // Messages accepted by the sender but never delivered are flagged.
        let lost = |res: &Results| {
            let (_, _, sent, recv, _) = res.async_rate[i];
            if recv < sent {
                format!(" ⚠ {} of {sent} lost", sent - recv)
            } else {
                String::new()
            }
        };
        row(
            &format!("async {label}: msg/s (MB/s), median of {ASYNC_ROUNDS}"),
            format!("{tr:.0} ({:.1}){}", mb(tr), lost(&tomcat)),
            format!("{sr:.0} ({:.1}){}", mb(sr), lost(&shoal)),
            ratio,
            target,
        );
    }
    let r = shoal.lat_p50_us / tomcat.lat_p50_us;
    row(
        "sync-ACK 1 KiB, 1 sender: p50 latency (µs)",
        format!("{:.0}", tomcat.lat_p50_us),
        format!("{:.0}", shoal.lat_p50_us),
        r,
        Some(("<= 0.5×", r <= 0.5)),
    );
    row(
        "sync-ACK 1 KiB, 1 sender: p99 latency (µs)",
        format!("{:.0}", tomcat.lat_p99_us),
        format!("{:.0}", shoal.lat_p99_us),
        shoal.lat_p99_us / tomcat.lat_p99_us,
        None,
    );
    row(
        &format!("sync-ACK 1 KiB, {SYNC_SENDERS} senders: msg/s"),
        format!("{:.0}", tomcat.syncpar_rate),
        format!("{:.0}", shoal.syncpar_rate),
        shoal.syncpar_rate / tomcat.syncpar_rate,
        None,
    );
    row(
        "SIGKILLed member detected after (ms)",
        format!("{:.0}", tomcat.detect_ms),
        format!("{:.0}", shoal.detect_ms),
        shoal.detect_ms / tomcat.detect_ms,
        None,
    );
    row(
        "join: process start until both see each other (ms)",
        format!("{:.0}", tomcat.join_ms),
        format!("{:.0}", shoal.join_ms),
        shoal.join_ms / tomcat.join_ms,
        None,
    );
    let mib = |kb: u64| kb as f64 / 1024.0;
    for (i, who) in ["sender", "receiver"].iter().enumerate() {
        let r = shoal.rss_idle_kb[i] as f64 / tomcat.rss_idle_kb[i] as f64;
        row(
            &format!("RSS idle, {who} node (MiB)"),
            format!("{:.1}", mib(tomcat.rss_idle_kb[i])),
            format!("{:.1}", mib(shoal.rss_idle_kb[i])),
            r,
            Some(("<= 0.5×", r <= 0.5)),
        );
    }
    for (i, who) in ["sender", "receiver"].iter().enumerate() {
        let r = shoal.rss_load_kb[i] as f64 / tomcat.rss_load_kb[i] as f64;
        row(
            &format!("RSS peak under async 1 KiB load, {who} node (MiB)"),
            format!("{:.1}", mib(tomcat.rss_load_kb[i])),
            format!("{:.1}", mib(shoal.rss_load_kb[i])),
            r,
            Some(("<= 0.25×", r <= 0.25)),
        );
    }
    println!();
    for (side, res) in [("Tomcat", &tomcat), ("shoal", &shoal)] {
        let detail: Vec<String> = res
            .async_rate
            .iter()
            .zip(&res.async_spread)
            .map(|((size, _, sent, recv, err), (lo, hi))| {
                format!(
                    "{size} B: rounds {lo:.0}–{hi:.0} msg/s, {sent} accepted, {recv} delivered, {err} refused"
                )
            })
            .collect();
        println!(
            "{side}: async {}; sync-ACK latency over {} sends; sync-ACK send errors {}",
            detail.join("; "),
            res.lat_n,
            res.sync_errors
        );
    }
    println!("\nnode logs: {}", ctx.logs.display());
}
