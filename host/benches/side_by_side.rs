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
//! Node A sends, node B receives and counts. Both clusters run for the
//! whole measurement, and every figure is taken in rounds that alternate the
//! sides (and the machine's floor), so a slow spell hits both. Measured per
//! side: join time (process start until each sees the other), RSS of both
//! nodes idle and the peak while the async 1 KiB tests run, async throughput
//! (100 B, 1 KiB, 64 KiB; delivered messages / time from the start of
//! sending until the receiver has them all; 3 rounds of 3 s), sync-ACK
//! (options 7) latency with one sender and throughput with 8 concurrent
//! senders (5 rounds each), and the time until A reports B gone after B is
//! SIGKILLed (dropTime 3000 ms, frequency 500 ms on both).
//!
//! The floor, in the same rounds, from plain std TCP between two processes
//! (`--floor-peer`): a 1 KiB ping-pong with both sides blocking in `read`,
//! one side spinning and both spinning, and a write loop (one `write` per
//! message) at each size. shoal's counters of its busy-polls (hit, missed,
//! parked without polling) are printed for the sync-ACK rounds. CPU used by
//! other processes during the run is measured from /proc; a busy machine is
//! flagged in the output.
//!
//! Every loop is bounded; every process is killed when dropped, and a
//! watchdog kills everything after 8 minutes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/measure.rs"]
mod measure;
use measure::{CpuWindow, Stat, cpu_model, java_version};
#[path = "../tests/common/java.rs"]
mod java;
use java::{JULI_JAR, TRIBES_JAR, javac, jdk_tool};
const FREQUENCY_MS: u64 = 500;
const DROP_TIME_MS: u64 = 3000;
/// Sending time of each async throughput test.
const ASYNC_MS: u64 = 3000;
/// Rounds of each async test; the median is reported.
const ASYNC_ROUNDS: usize = 3;
/// Warm-up and measuring time of each sync-ACK round.
const WARMUP_MS: u64 = 500;
const MEASURE_MS: u64 = 1500;
const SYNC_SENDERS: usize = 8;
const SIZES: [usize; 3] = [100, 1024, 65536];

/// The allocator `shoal run` uses.
#[cfg(feature = "cli")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--shoal-peer") {
        peer::run(&args[i + 1..]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--floor-peer") {
        floor::serve(args.get(i + 1).map_or("", String::as_str));
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
        // Experiments only (the bench itself runs the defaults):
        // SIDE_BY_SIDE_SHOAL_POLL_US=SENDER,RECEIVER overrides busy_poll_us.
        if let Some((tx, rx)) = std::env::var("SIDE_BY_SIDE_SHOAL_POLL_US")
            .ok()
            .and_then(|v| v.split_once(',').map(|(a, b)| (a.parse(), b.parse())))
            && let (Ok(tx), Ok(rx)) = (tx, rx)
        {
            cfg.sender.busy_poll_us = tx;
            cfg.receiver.busy_poll_us = rx;
        }
        // SIDE_BY_SIDE_SHOAL_WORKERS=N sets `runtime.worker_threads`.
        if let Some(n) = std::env::var("SIDE_BY_SIDE_SHOAL_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.runtime.worker_threads = n;
        }
        // SIDE_BY_SIDE_SHOAL_CPU_PRESSURE_GATE=false sets
        // `runtime.cpu_pressure_gate`.
        if let Some(on) = std::env::var("SIDE_BY_SIDE_SHOAL_CPU_PRESSURE_GATE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.runtime.cpu_pressure_gate = on;
        }
        // As `shoal run`: the runtime of `[runtime]` (default: half the CPUs).
        let rt = cfg.runtime.build().expect("runtime");
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
                Some("polls") => {
                    // What the busy-pollers' waits did (see docs/benchmarks.md).
                    let m = node.metrics();
                    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
                    let spins = shoal::transport::park_spin::counts();
                    emit(&serde_json::json!({"event": "polls",
                        "sender": [g(&m.sender_polls_hit_total), g(&m.sender_polls_missed_total),
                                   g(&m.sender_polls_skipped_total)],
                        "receiver": [g(&m.receiver_polls_hit_total), g(&m.receiver_polls_missed_total),
                                     g(&m.receiver_polls_skipped_total)],
                        "park_spins": [g(&spins.hit), g(&spins.missed), g(&spins.skipped)],
                        "queue_overflow": g(&m.async_queue_overflow_sync_total),
                        "pipelined": g(&m.sync_sends_pipelined_total)}));
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

// ---------------------------------------------------------------------------
// The machine's floor: plain std TCP on loopback, no framework
// ---------------------------------------------------------------------------

mod floor {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A 1 KiB message on the wire: body plus Tribes' frame and ChannelData
    /// header (shoal's default node, measured).
    pub const OVERHEAD: usize = 135;
    /// An ACK frame.
    pub const ACK: usize = 21;

    /// Child mode `--floor-peer MODE`: prints its port, serves one
    /// connection and exits at its end.
    /// * `block` / `spin`: reads a 1 KiB message, answers an ACK, again
    ///   (blocking reads, or spinning on a non-blocking socket);
    /// * `sink`: reads everything, then writes the byte count (8 bytes LE).
    pub fn serve(mode: &str) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        println!("{}", l.local_addr().expect("addr").port());
        let _ = std::io::stdout().flush();
        let (mut s, _) = l.accept().expect("accept");
        let _ = s.set_nodelay(true);
        match mode {
            "block" | "spin" => {
                let spin = mode == "spin";
                s.set_nonblocking(spin).expect("nonblocking");
                let mut req = vec![0u8; 1024 + OVERHEAD];
                let ack = [6u8; ACK];
                while read_full(&mut s, &mut req, spin) {
                    if s.write_all(&ack).is_err() {
                        break;
                    }
                }
            }
            "sink" => {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = s.write_all(&total.to_le_bytes());
            }
            _ => panic!("--floor-peer block|spin|sink"),
        }
    }

    /// Reads exactly `buf.len()` bytes; false at the end of the stream.
    fn read_full(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> bool {
        let mut at = 0;
        while at < buf.len() {
            match s.read(&mut buf[at..]) {
                Ok(0) => return false,
                Ok(n) => at += n,
                Err(e) if spin && e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::hint::spin_loop();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// A floor peer process; killed when dropped.
    struct Peer {
        child: Child,
        port: u16,
    }

    impl Peer {
        fn spawn(mode: &str) -> Self {
            let mut child = Command::new(std::env::current_exe().expect("exe"))
                .args(["--floor-peer", mode])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("floor peer");
            PIDS.lock().expect("pids").push(child.id());
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("floor peer port");
            let port = line.trim().parse().expect("floor peer port");
            Self { child, port }
        }

        fn connect(&self) -> TcpStream {
            let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect floor peer");
            let _ = s.set_nodelay(true);
            s
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// 1 KiB request / 21 B answer, one at a time for `ms`: (p50, p99) in µs.
    /// `server_spins` / `client_spins`: that side spins on a non-blocking
    /// socket instead of blocking in `read`.
    pub fn ping_pong(server_spins: bool, client_spins: bool, ms: u64) -> (f64, f64) {
        let peer = Peer::spawn(if server_spins { "spin" } else { "block" });
        let mut s = peer.connect();
        s.set_nonblocking(client_spins).expect("nonblocking");
        let req = vec![1u8; 1024 + OVERHEAD];
        let mut ack = [0u8; ACK];
        let mut samples = Vec::with_capacity(1 << 16);
        let warm_end = Instant::now() + Duration::from_millis(100);
        let end = warm_end + Duration::from_millis(ms);
        while samples.len() < 2_000_000 {
            let t = Instant::now();
            if t >= end {
                break;
            }
            if s.write_all(&req).is_err() || !read_full(&mut s, &mut ack, client_spins) {
                break;
            }
            if t >= warm_end {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        percentiles(&mut samples)
    }

    /// One `write` per message of `size` B (plus the frame overhead) for
    /// `ms`, a reader draining the other end: messages per second until the
    /// reader has them all. `nodelay`: TCP_NODELAY on the writer (each write
    /// its own segment); off, the kernel coalesces small writes (the
    /// socket's default, and the higher bar).
    pub fn write_loop(size: usize, ms: u64, nodelay: bool) -> f64 {
        let peer = Peer::spawn("sink");
        let mut s = peer.connect();
        s.set_nodelay(nodelay).expect("nodelay");
        let msg = vec![1u8; size + OVERHEAD];
        let start = Instant::now();
        let end = start + Duration::from_millis(ms);
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..64 {
                if s.write_all(&msg).is_err() {
                    return 0.0;
                }
                n += 1;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut total = [0u8; 8];
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        if s.read_exact(&mut total).is_err() || u64::from_le_bytes(total) != n * msg.len() as u64 {
            return 0.0;
        }
        n as f64 / start.elapsed().as_secs_f64()
    }

    pub fn percentiles(samples: &mut [u64]) -> (f64, f64) {
        samples.sort_unstable();
        let n = samples.len();
        let at = |i: usize| samples.get(i).map_or(0.0, |&x| x as f64 / 1e3);
        (
            at(n / 2),
            at(((n as f64 * 0.99) as usize).min(n.saturating_sub(1))),
        )
    }
}

/// Share of a core used by others above which a round is flagged.
const BUSY_ROUND: f64 = 0.10;
/// ... and above which, over the whole run, the verdict gets a warning.
const BUSY_RUN: f64 = 0.05;

// ---------------------------------------------------------------------------
// The two clusters and their measurements
// ---------------------------------------------------------------------------

/// Two node processes of one side, A sending to B.
struct Cluster {
    side: Side,
    a: Proc,
    b: Proc,
    join_ms: f64,
    rss_idle_kb: [u64; 2],
    rss_load_kb: [u64; 2],
}

impl Cluster {
    fn start(side: Side, ctx: &Ctx, mcast_port: u16) -> Self {
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
        let join_ms = (ta - a.spawned).max(tb - b.spawned).as_secs_f64() * 1e3;
        eprintln!("   joined in {join_ms:.0} ms");
        Self {
            side,
            a,
            b,
            join_ms,
            rss_idle_kb: [0; 2],
            rss_load_kb: [0; 2],
        }
    }

    fn pids(&self) -> [u32; 2] {
        [self.a.pid, self.b.pid]
    }

    /// One async round (see [`async_test`]); tracks the peak RSS at 1 KiB.
    fn async_round(&mut self, size: usize) -> (f64, u64, u64, u64) {
        let (rate, sent, received, errors, peaks) =
            async_test(&mut self.a, &mut self.b, size, size == 1024);
        for (i, p) in peaks.iter().enumerate() {
            self.rss_load_kb[i] = self.rss_load_kb[i].max(*p);
        }
        eprintln!(
            "   {:6} async {size} B: {rate:.0} msg/s (sent {sent}, received {received}, errors {errors})",
            self.side.name()
        );
        (rate, sent, received, errors)
    }

    /// One sync-ACK latency round: (p50, p99, sends, errors).
    fn latency_round(&mut self) -> (f64, f64, u64, u64) {
        let (_, v) = self.a.request(
            &format!("latency 1024 {WARMUP_MS} {MEASURE_MS}"),
            Duration::from_secs(60),
            "result",
        );
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let n = v["n"].as_u64().unwrap_or(0);
        eprintln!(
            "   {:6} sync-ACK 1 KiB: p50 {:.1} µs, p99 {:.1} µs ({n} sends)",
            self.side.name(),
            f("p50_us"),
            f("p99_us")
        );
        (
            f("p50_us"),
            f("p99_us"),
            n,
            v["errors"].as_u64().unwrap_or(0),
        )
    }

    /// One round of SYNC_SENDERS concurrent sync-ACK senders: (msg/s, errors).
    fn syncpar_round(&mut self) -> (f64, u64) {
        let (_, v) = self.a.request(
            &format!("syncpar {SYNC_SENDERS} 1024 {WARMUP_MS} {MEASURE_MS}"),
            Duration::from_secs(60),
            "result",
        );
        let rate = v["n"].as_f64().unwrap_or(0.0) / (MEASURE_MS as f64 / 1e3);
        eprintln!(
            "   {:6} sync-ACK x{SYNC_SENDERS}: {rate:.0} msg/s",
            self.side.name()
        );
        (rate, v["errors"].as_u64().unwrap_or(0))
    }

    /// shoal only: the busy-poll counters of A's sender and B's receiver
    /// ([hit, missed, skipped] each).
    /// Busy-poll counts: A's sender, B's receiver, A's spins before park.
    fn polls(&mut self) -> [[u64; 3]; 3] {
        let get = |p: &mut Proc, key: &str| -> [u64; 3] {
            let (_, v) = p.request("polls", Duration::from_secs(10), "polls");
            let n = |i: usize| v[key][i].as_u64().unwrap_or(0);
            [n(0), n(1), n(2)]
        };
        [
            get(&mut self.a, "sender"),
            get(&mut self.b, "receiver"),
            get(&mut self.a, "park_spins"),
        ]
    }

    /// SIGKILLs B; ms until A reports it gone.
    fn kill_b(&mut self) -> f64 {
        eprintln!("   SIGKILL {}", self.b.name);
        let m = self.a.mark();
        let t0 = Instant::now();
        self.b.kill();
        let (t, _) = self
            .a
            .wait(m, Duration::from_secs(30), "member_disappeared", |v| {
                v["event"] == "member_disappeared"
            });
        let ms = (t - t0).as_secs_f64() * 1e3;
        eprintln!("   detected after {ms:.0} ms");
        self.a.stop();
        ms
    }
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

/// Every figure of one run, per side as [Tomcat, shoal].
#[derive(Debug, Default)]
struct Figures {
    /// msg/s per size and round.
    async_rate: Vec<[Vec<f64>; 2]>,
    /// (accepted, delivered, refused) per size, summed over rounds.
    async_counts: Vec<[(u64, u64, u64); 2]>,
    /// Plain write loop, msg/s per size and round (default socket, and
    /// with TCP_NODELAY).
    floor_write: Vec<Vec<f64>>,
    floor_write_nodelay: Vec<Vec<f64>>,
    lat_p50: [Vec<f64>; 2],
    lat_p99: [Vec<f64>; 2],
    lat_sends: [u64; 2],
    syncpar: [Vec<f64>; 2],
    sync_errors: [u64; 2],
    /// Ping-pong floors (p50, p99) per round: both blocking, client
    /// spinning, both spinning.
    floor_pp: [Vec<(f64, f64)>; 3],
    /// shoal's poll counters over the latency rounds and over the
    /// 8-sender rounds: [sender, receiver] × [hit, missed, skipped].
    polls_latency: [[u64; 3]; 3],
    polls_syncpar: [[u64; 3]; 3],
    /// Foreign CPU (share of a core) per latency round, and over the run.
    busy_rounds: Vec<f64>,
    busy_run: f64,
    detect_ms: [f64; 2],
}

fn add_polls(acc: &mut [[u64; 3]; 3], before: [[u64; 3]; 3], after: [[u64; 3]; 3]) {
    for s in 0..3 {
        for k in 0..3 {
            acc[s][k] += after[s][k].saturating_sub(before[s][k]);
        }
    }
}

/// The two sides in the order of round `i` (they alternate, so neither
/// always goes first).
fn order(i: usize) -> [usize; 2] {
    if i.is_multiple_of(2) { [0, 1] } else { [1, 0] }
}

fn measure(clusters: &mut [Cluster; 2]) -> Figures {
    let mut f = Figures::default();
    let pids: Vec<u32> = clusters.iter().flat_map(Cluster::pids).collect();
    let run = CpuWindow::open(&pids);

    eprintln!("== warm-up: async 1 KiB, 1 s each");
    for c in clusters.iter_mut() {
        let (_, base) = c.b.count();
        let (_, v) =
            c.a.request("async 1024 1000", Duration::from_secs(70), "result");
        let sent = v["sent"].as_u64().unwrap_or(0);
        let t = Instant::now();
        while c.b.count().1 < base + sent && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    for size in SIZES {
        eprintln!(
            "== async {size} B: {ASYNC_ROUNDS} alternating rounds, with the write-loop floor"
        );
        let mut rates = [Vec::new(), Vec::new()];
        let mut counts = [(0, 0, 0); 2];
        let (mut floor, mut floor_nodelay) = (Vec::new(), Vec::new());
        for round in 0..ASYNC_ROUNDS {
            let w = floor::write_loop(size, FLOOR_MS, false);
            let nd = floor::write_loop(size, FLOOR_MS / 2, true);
            eprintln!("   floor  write loop {size} B: {w:.0} msg/s ({nd:.0} with TCP_NODELAY)");
            floor.push(w);
            floor_nodelay.push(nd);
            for s in order(round) {
                let (rate, sent, received, errors) = clusters[s].async_round(size);
                rates[s].push(rate);
                counts[s].0 += sent;
                counts[s].1 += received;
                counts[s].2 += errors;
            }
        }
        f.async_rate.push(rates);
        f.async_counts.push(counts);
        f.floor_write.push(floor);
        f.floor_write_nodelay.push(floor_nodelay);
    }

    eprintln!("== sync-ACK: {LATENCY_ROUNDS} alternating rounds, with the ping-pong floors");
    for round in 0..LATENCY_ROUNDS {
        let w = CpuWindow::open(&pids);
        for (i, (server, client)) in [(false, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
        {
            let (p50, p99) = floor::ping_pong(server, client, FLOOR_MS / 2);
            f.floor_pp[i].push((p50, p99));
        }
        eprintln!(
            "   floor  ping-pong p50: blocking {:.1} µs, one side spinning {:.1} µs, both spinning {:.1} µs",
            f.floor_pp[0][round].0, f.floor_pp[1][round].0, f.floor_pp[2][round].0
        );
        for s in order(round) {
            let before = (s == 1).then(|| clusters[1].polls());
            let (p50, p99, n, errors) = clusters[s].latency_round();
            if let Some(before) = before {
                let after = clusters[1].polls();
                add_polls(&mut f.polls_latency, before, after);
            }
            f.lat_p50[s].push(p50);
            f.lat_p99[s].push(p99);
            f.lat_sends[s] += n;
            f.sync_errors[s] += errors;
        }
        for s in order(round + 1) {
            let before = (s == 1).then(|| clusters[1].polls());
            let (rate, errors) = clusters[s].syncpar_round();
            if let Some(before) = before {
                let after = clusters[1].polls();
                add_polls(&mut f.polls_syncpar, before, after);
            }
            f.syncpar[s].push(rate);
            f.sync_errors[s] += errors;
        }
        let busy = w.foreign(&pids);
        if busy > BUSY_ROUND {
            eprintln!(
                "   ⚠ round {} was disturbed: {:.0}% of a core went to other processes",
                round + 1,
                busy * 100.0
            );
        }
        f.busy_rounds.push(busy);
    }
    f.busy_run = run.foreign(&pids);
    f
}

/// Rounds of each sync-ACK test (latency and 8 senders), alternating sides.
const LATENCY_ROUNDS: usize = 5;
/// Time of each write-loop floor (the ping-pong floors take half of it).
const FLOOR_MS: u64 = 1000;

fn orchestrate() {
    let started = Instant::now();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(480));
        eprintln!("side_by_side: watchdog: 8 minutes exceeded, killing every process");
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
    let cpu = cpu_model();
    let java = java_version(&jdk_tool("java"));
    let java_opts = std::env::var("SIDE_BY_SIDE_JAVA_OPTS").unwrap_or_default();
    let java = if java_opts.trim().is_empty() {
        format!("{java}, JVM defaults")
    } else {
        format!("{java}, JVM options `{}`", java_opts.trim())
    };
    let load_before = load_avg();
    // Own multicast ports, away from the default 45564 and from the tests'.
    let base = 46000 + (std::process::id() % 500) as u16 * 2;
    // Both clusters run for the whole measurement, so every figure is taken
    // in alternating rounds under the same conditions.
    let mut clusters = [
        Cluster::start(Side::Tomcat, &ctx, base),
        Cluster::start(Side::Shoal, &ctx, base + 1),
    ];
    eprintln!("== idle 3 s");
    std::thread::sleep(Duration::from_secs(3));
    for c in clusters.iter_mut() {
        c.rss_idle_kb = [c.a.rss_kb(), c.b.rss_kb()];
    }
    let mut f = measure(&mut clusters);
    eprintln!("== crash detection");
    for (i, c) in clusters.iter_mut().enumerate() {
        f.detect_ms[i] = c.kill_b();
    }
    let load_after = load_avg();
    report(
        &clusters,
        &f,
        &ctx,
        &cpu,
        &java,
        &load_before,
        &load_after,
        started,
    );
}

#[allow(clippy::too_many_arguments)]
fn report(
    clusters: &[Cluster; 2],
    f: &Figures,
    ctx: &Ctx,
    cpu: &str,
    java: &str,
    load_before: &str,
    load_after: &str,
    started: Instant,
) {
    let [tomcat, shoal] = clusters;
    println!("\n## Side by side: Tomcat Tribes <-> Tomcat Tribes vs shoal <-> shoal\n");
    println!(
        "machine: {} cores, {cpu}; {java}; load average before {load_before}, after {load_after}; run took {:.0} s\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    let rounds: Vec<String> = f
        .busy_rounds
        .iter()
        .map(|b| format!("{:.0}%", b * 100.0))
        .collect();
    println!(
        "CPU used by other processes (or stolen by the hypervisor) while measuring: {:.1}% of \
         one core over the run; per sync-ACK round {}\n",
        f.busy_run * 100.0,
        rounds.join(", ")
    );
    let busy = f.busy_run > BUSY_RUN || f.busy_rounds.iter().any(|b| *b > BUSY_ROUND);
    if busy {
        println!(
            "**⚠ The machine was busy** (over {:.0}% of a core for the run, or {:.0}% in a round): \
             the figures below may not hold; run again on a quiet machine.\n",
            BUSY_RUN * 100.0,
            BUSY_ROUND * 100.0
        );
    }
    println!(
        "Medians of the rounds, with the spread (slowest–fastest) in brackets; {ASYNC_ROUNDS} \
         rounds per async size, {LATENCY_ROUNDS} per sync-ACK test; the two sides and the floor \
         alternate in each round. Floor: the same exchange with plain std TCP on loopback \
         (see docs/benchmarks.md).\n"
    );
    println!("| metric | Tomcat | shoal | shoal/Tomcat | floor | shoal/floor | target | met |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    let mut all_met = true;
    let mut row = |name: &str,
                   t: String,
                   s: String,
                   ratio: f64,
                   floor: Option<(String, f64)>,
                   targets: &[(&str, bool)]| {
        let (fl, fr) = floor.map_or(("—".to_owned(), "—".to_owned()), |(v, r)| {
            (v, format!("{r:.2}"))
        });
        let tg = if targets.is_empty() {
            "—".to_owned()
        } else {
            targets.iter().map(|t| t.0).collect::<Vec<_>>().join("; ")
        };
        let met = if targets.is_empty() {
            "—".to_owned()
        } else if targets.iter().all(|t| t.1) {
            "yes".to_owned()
        } else {
            all_met = false;
            "**no**".to_owned()
        };
        println!("| {name} | {t} | {s} | {ratio:.2}× | {fl} | {fr} | {tg} | {met} |");
    };
    for (i, size) in SIZES.iter().enumerate() {
        let [t, s] = [Stat::of(&f.async_rate[i][0]), Stat::of(&f.async_rate[i][1])];
        let fl = Stat::of(&f.floor_write[i]);
        let label = match size {
            100 => "100 B",
            1024 => "1 KiB",
            _ => "64 KiB",
        };
        let ratio = s.median / t.median;
        let targets: Vec<(&str, bool)> = match size {
            1024 => vec![
                (">= 6× Tomcat", ratio >= 6.0),
                (">= floor", s.median >= fl.median),
            ],
            65536 => vec![(">= 2× Tomcat", ratio >= 2.0)],
            _ => vec![],
        };
        let lost = |side: usize| {
            let (sent, recv, _) = f.async_counts[i][side];
            if recv < sent {
                format!(" ⚠ {} of {sent} lost", sent - recv)
            } else {
                String::new()
            }
        };
        row(
            &format!("async {label}: msg/s"),
            format!("{}{}", t.show(0), lost(0)),
            format!("{}{}", s.show(0), lost(1)),
            ratio,
            Some((fl.show(0), s.median / fl.median)),
            &targets,
        );
    }
    let pp = |i: usize, p99: bool| -> Stat {
        Stat::of(
            &f.floor_pp[i]
                .iter()
                .map(|x| if p99 { x.1 } else { x.0 })
                .collect::<Vec<_>>(),
        )
    };
    let [t50, s50] = [Stat::of(&f.lat_p50[0]), Stat::of(&f.lat_p50[1])];
    let spin50 = pp(2, false);
    let r = s50.median / t50.median;
    row(
        "sync-ACK 1 KiB, 1 sender: p50 latency (µs); floor: both spinning",
        t50.show(0),
        s50.show(1),
        r,
        Some((spin50.show(1), s50.median / spin50.median)),
        &[
            ("<= 0.2× Tomcat", r <= 0.2),
            ("<= 2× floor", s50.median <= 2.0 * spin50.median),
        ],
    );
    let [t99, s99] = [Stat::of(&f.lat_p99[0]), Stat::of(&f.lat_p99[1])];
    let spin99 = pp(2, true);
    let r = s99.median / t99.median;
    row(
        "sync-ACK 1 KiB, 1 sender: p99 latency (µs); floor: both spinning",
        t99.show(0),
        s99.show(1),
        r,
        Some((spin99.show(1), s99.median / spin99.median)),
        &[("<= 0.5× Tomcat", r <= 0.5)],
    );
    let [tp, sp] = [Stat::of(&f.syncpar[0]), Stat::of(&f.syncpar[1])];
    let r = sp.median / tp.median;
    row(
        &format!("sync-ACK 1 KiB, {SYNC_SENDERS} senders: msg/s"),
        tp.show(0),
        sp.show(0),
        r,
        None,
        &[(">= 3× Tomcat", r >= 3.0)],
    );
    row(
        "SIGKILLed member detected after (ms)",
        format!("{:.0}", f.detect_ms[0]),
        format!("{:.0}", f.detect_ms[1]),
        f.detect_ms[1] / f.detect_ms[0],
        None,
        &[],
    );
    row(
        "join: process start until both see each other (ms)",
        format!("{:.0}", tomcat.join_ms),
        format!("{:.0}", shoal.join_ms),
        shoal.join_ms / tomcat.join_ms,
        None,
        &[],
    );
    let mib = |kb: u64| kb as f64 / 1024.0;
    for (i, who) in ["sender", "receiver"].iter().enumerate() {
        let r = shoal.rss_idle_kb[i] as f64 / tomcat.rss_idle_kb[i] as f64;
        row(
            &format!("RSS idle, {who} node (MiB)"),
            format!("{:.1}", mib(tomcat.rss_idle_kb[i])),
            format!("{:.1}", mib(shoal.rss_idle_kb[i])),
            r,
            None,
            &[("<= 0.5×", r <= 0.5)],
        );
    }
    for (i, who) in ["sender", "receiver"].iter().enumerate() {
        let r = shoal.rss_load_kb[i] as f64 / tomcat.rss_load_kb[i] as f64;
        row(
            &format!("RSS peak under async 1 KiB load, {who} node (MiB)"),
            format!("{:.1}", mib(tomcat.rss_load_kb[i])),
            format!("{:.1}", mib(shoal.rss_load_kb[i])),
            r,
            None,
            &[("<= 0.25×", r <= 0.25)],
        );
    }
    println!();
    let (b, o, s) = (pp(0, false), pp(1, false), pp(2, false));
    println!(
        "floor ping-pong, 1 KiB + {} B out, {} B back, p50 (µs): both blocking {}, one side \
         spinning {}, both spinning {}; p99: {}, {}, {}",
        floor::OVERHEAD,
        floor::ACK,
        b.show(1),
        o.show(1),
        s.show(1),
        pp(0, true).show(0),
        pp(1, true).show(0),
        pp(2, true).show(0),
    );
    let nd: Vec<String> = SIZES
        .iter()
        .zip(&f.floor_write_nodelay)
        .map(|(size, v)| format!("{size} B {}", Stat::of(v).show(0)))
        .collect();
    println!(
        "floor write loop (async rows): one `write` per message on a default socket, the kernel \
         coalescing small writes; with TCP_NODELAY (each write its own segment, as shoal's \
         sockets): {} msg/s",
        nd.join(", ")
    );
    for (what, p) in [
        ("sync-ACK latency rounds", &f.polls_latency),
        (&format!("{SYNC_SENDERS}-sender rounds"), &f.polls_syncpar),
    ] {
        let pct = |x: [u64; 3], what: &str| {
            let n = x.iter().sum::<u64>().max(1) as f64;
            format!(
                "{} {what}: {:.0}% hit, {:.0}% missed, {:.0}% skipped",
                x.iter().sum::<u64>(),
                x[0] as f64 / n * 100.0,
                x[1] as f64 / n * 100.0,
                x[2] as f64 / n * 100.0
            )
        };
        println!(
            "shoal busy-polling in the {what}: sender (ACKs) {}; receiver (frames) {}; \
             sender's worker before parking (pipelined ACKs) {}",
            pct(p[0], "waits"),
            pct(p[1], "waits"),
            pct(p[2], "parks")
        );
    }
    for (i, side) in ["Tomcat", "shoal"].iter().enumerate() {
        let detail: Vec<String> = SIZES
            .iter()
            .zip(&f.async_counts)
            .map(|(size, c)| {
                let (sent, recv, err) = c[i];
                format!("{size} B: {sent} accepted, {recv} delivered, {err} refused")
            })
            .collect();
        println!(
            "{side}: async {}; sync-ACK latency over {} sends; sync-ACK send errors {}",
            detail.join("; "),
            f.lat_sends[i],
            f.sync_errors[i]
        );
    }
    println!(
        "\nverdict: {}{}",
        if all_met {
            "every target met"
        } else {
            "some targets **not met**"
        },
        if busy { " (on a busy machine)" } else { "" }
    );
    println!("\nnode logs: {}", ctx.logs.display());
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

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
