//! Transport benchmark: two in-process nodes on loopback, A sending to B.
//!
//! Run with `cargo bench --bench transport`. It measures
//!
//! * asynchronous throughput (`ASYNCHRONOUS`): messages of 100 B, 1 KiB and
//!   64 KiB sent for a fixed time budget, counted by a listener on B; the rate
//!   is messages sent / (first send → last arrival at B);
//! * ACK round-trip latency (`USE_ACK | SYNCHRONIZED_ACK`, 1 KiB): the duration
//!   of each `send().await`, with 1 and with 8 concurrent senders;
//!
//! each with a bare channel (`plugins.default_chain = false`: the transport
//! alone) and with the default interceptor chain, on a fresh pair of nodes.
//!
//! Membership is a static list, so no multicast is needed; the admin API is off.
//! Everything is bounded by count and by time; the whole run takes well under a
//! minute. The CPU columns show the cores this process kept busy and the cores
//! the whole machine kept busy: when the second is much larger, something else
//! was running and the figures are not trustworthy.
//!
//! Environment: `SHOAL_BENCH_CHAIN` = `off` | `on` | `both` (default) picks the
//! setups, `key` compares no chain with and without a cluster key; `SHOAL_BENCH_SENDERS` (default 2) sets the throughput senders;
//! `SHOAL_BENCH_ORDERED=off` sends queued messages in parallel
//! (`dispatch.ordered = false`); `RUST_LOG` (default `warn`) shows the
//! library's log on stderr.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal::config::MembershipKind;
use shoal::{Config, ListenerError, MemberId, Node, ReceivedMessage, SendOptions};

/// Payload sizes of the throughput runs.
const ASYNC_SIZES: [usize; 3] = [100, 1024, 64 * 1024];
/// Concurrent sending tasks in the throughput runs (`SHOAL_BENCH_SENDERS` overrides).
const ASYNC_SENDERS: usize = 2;
/// How long the throughput runs keep sending, per size.
const ASYNC_BUDGET: Duration = Duration::from_millis(2500);
/// Upper bound on messages per throughput run (all senders together).
const ASYNC_MAX_MESSAGES: u64 = 10_000_000;
/// Upper bound on payload bytes per throughput run.
const ASYNC_MAX_BYTES: u64 = 64 << 30;
/// A queued send completes without yielding to the runtime; each sender yields
/// after this many so that the dispatch workers and the receiver (on the same
/// two-thread runtime) are not starved.
const YIELD_EVERY: u64 = 64;
/// How long to wait for the last queued messages to arrive.
const ARRIVAL_WAIT: Duration = Duration::from_secs(10);
/// Stop waiting for arrivals when none has come for this long (messages lost).
const ARRIVAL_IDLE: Duration = Duration::from_secs(2);

/// Payload of the ACK latency runs.
const ACK_PAYLOAD: usize = 1024;
/// Concurrency levels of the ACK latency runs.
const ACK_CONCURRENCY: [usize; 2] = [1, 8];
/// Warm-up before each latency run (connections opened, caches warm).
const ACK_WARMUP: Duration = Duration::from_millis(300);
/// Measured time of each latency run.
const ACK_BUDGET: Duration = Duration::from_secs(3);
/// Upper bound on measured sends per sender in a latency run.
const ACK_MAX_PER_SENDER: usize = 1_000_000;

/// How long to wait for the two nodes to see each other.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

const ASYNC: SendOptions = SendOptions::ASYNCHRONOUS;
const SYNC_ACK: SendOptions = SendOptions(SendOptions::USE_ACK.0 | SendOptions::SYNCHRONIZED_ACK.0);

/// What runs between the application and the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// `plugins.default_chain = false`: no interceptors, the transport alone.
    Bare,
    /// The interceptor chain a default configuration runs.
    DefaultChain,
    /// No interceptors, with a cluster key (`security.key_file`): frames
    /// and ACKs sealed with AES-256-GCM.
    Keyed,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Self::Bare => "none",
            Self::DefaultChain => "default chain",
            Self::Keyed => "none, cluster key",
        }
    }

    fn from_env() -> Vec<Self> {
        match std::env::var("SHOAL_BENCH_CHAIN").as_deref() {
            Ok("off") => vec![Self::Bare],
            Ok("on") => vec![Self::DefaultChain],
            Ok("key") => vec![Self::Bare, Self::Keyed],
            _ => vec![Self::Bare, Self::DefaultChain],
        }
    }
}

/// Counts what B's listener receives of the current throughput run, and when
/// the latest message arrived. Each run tags its bodies with its number (the
/// first 8 bytes), so stragglers of an earlier run are not counted.
#[derive(Debug)]
struct Arrivals {
    base: Instant,
    run: AtomicU64,
    count: AtomicU64,
    bytes: AtomicU64,
    /// Nanoseconds since `base` of the latest arrival.
    last_ns: AtomicU64,
}

impl Arrivals {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            run: AtomicU64::new(0),
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Starts counting a new run; returns its tag (never 0).
    fn begin_run(&self) -> u64 {
        self.count.store(0, Ordering::Release);
        self.bytes.store(0, Ordering::Release);
        self.last_ns.store(0, Ordering::Release);
        self.run.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn record(&self, msg: &ReceivedMessage) {
        if tag_of(&msg.body) != Some(self.run.load(Ordering::Acquire)) {
            return;
        }
        self.bytes
            .fetch_add(msg.body.len() as u64, Ordering::Relaxed);
        let ns = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    fn last_arrival(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    /// Waits until `target` messages of this run have arrived; false when `limit`
    /// passes first, or when nothing arrives for [`ARRIVAL_IDLE`].
    async fn wait_for(&self, target: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (mut seen, mut progress) = (self.count(), Instant::now());
        while self.count() < target {
            let now = Instant::now();
            if now >= deadline || now.duration_since(progress) >= ARRIVAL_IDLE {
                return false;
            }
            if self.count() != seen {
                (seen, progress) = (self.count(), now);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

/// A body of `size` bytes (at least 8) starting with `tag`.
fn tagged_payload(size: usize, tag: u64) -> Arc<[u8]> {
    let mut body: Vec<u8> = (0..size.max(8)).map(|i| (i % 251) as u8).collect();
    body[..8].copy_from_slice(&tag.to_le_bytes());
    body.into()
}

fn tag_of(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

/// Reserves two free loopback ports (both listeners are open at once, so the
/// ports differ), then releases them for the nodes.
fn free_ports() -> [u16; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a probe listener on 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a probe listener on 127.0.0.1:0");
    let port = |l: &TcpListener| l.local_addr().expect("probe listener address").port();
    [port(&a), port(&b)]
}

fn node_config(name: &str, port: u16, members: &[String], setup: Setup) -> Config {
    let mut cfg = Config::default();
    cfg.node.name = name.into();
    cfg.membership.kind = MembershipKind::Static;
    cfg.membership.members = members.to_vec();
    cfg.receiver.address = shoal::config::ReceiverAddress::Ip(std::net::Ipv4Addr::LOCALHOST.into());
    cfg.receiver.port = port;
    cfg.receiver.auto_bind = 1;
    cfg.api.listen = shoal::config::ApiListen::Off;
    cfg.plugins.default_chain = setup == Setup::DefaultChain;
    if setup == Setup::Keyed {
        // One key file for the run (mode 600, as `shoal keygen` writes it).
        static KEY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("shoal-bench-key-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join("cluster.key");
            let _ = std::fs::remove_file(&path);
            shoal::security::write_new_key_file(&path).expect("writing the bench's cluster key");
            path
        });
        cfg.security.key_file = key.display().to_string();
    }
    // `SHOAL_BENCH_ORDERED=off`: queued sends in parallel (dispatch.ordered = false).
    cfg.dispatch.ordered = std::env::var("SHOAL_BENCH_ORDERED").as_deref() != Ok("off");
    cfg
}

/// Two running nodes that see each other, and the counter on B.
#[derive(Debug)]
struct Pair {
    a: Node,
    b: Node,
    arrivals: Arc<Arrivals>,
    /// How long `Node::start` took for A (includes loading the interceptors).
    start_time: Duration,
}

impl Pair {
    async fn start(setup: Setup) -> Self {
        let [port_a, port_b] = free_ports();
        let members = [format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}")];
        let t = Instant::now();
        let a = Node::start(node_config("bench-a", port_a, &members, setup))
            .await
            .expect("start node A");
        let start_time = t.elapsed();
        let b = Node::start(node_config("bench-b", port_b, &members, setup))
            .await
            .expect("start node B");
        let arrivals = Arc::new(Arrivals::new());
        let counter = arrivals.clone();
        b.channel().add_listener(Arc::new(
            move |m: &ReceivedMessage| -> Result<(), ListenerError> {
                counter.record(m);
                Ok(())
            },
        ));
        let deadline = Instant::now() + MEMBERSHIP_WAIT;
        let sees = |n: &Node, other: MemberId| n.members().iter().any(|m| m.id == other);
        while !(sees(&a, b.id()) && sees(&b, a.id())) {
            assert!(
                Instant::now() < deadline,
                "nodes did not see each other within {MEMBERSHIP_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            a,
            b,
            arrivals,
            start_time,
        }
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// A's send failures so far (asynchronous and synchronous).
fn send_failures(n: &Node) -> u64 {
    let m = n.metrics();
    m.async_send_failures_total.load(Ordering::Relaxed)
        + m.send_failures_total.load(Ordering::Relaxed)
}

/// One asynchronous throughput run.
#[derive(Debug)]
struct ThroughputRow {
    setup: Setup,
    size: usize,
    senders: usize,
    sent: u64,
    arrived: u64,
    send_secs: f64,
    total_secs: f64,
    payload_bytes: u64,
    wire_bytes: u64,
    overflow_sync: u64,
    failures: u64,
    cpu: CpuUse,
}

impl ThroughputRow {
    /// `amount` per second over the run, formatted; "n/a" when nothing arrived.
    fn rate(&self, amount: f64, decimals: usize) -> String {
        if self.arrived == 0 || self.total_secs <= 0.0 {
            return "n/a".into();
        }
        format!("{:.decimals$}", amount / self.total_secs)
    }
}

async fn throughput(p: &Pair, setup: Setup, size: usize, senders: usize) -> ThroughputRow {
    let payload = tagged_payload(size, p.arrivals.begin_run());
    let dests: Arc<[MemberId]> = Arc::from([p.b.id()]);
    let quota = ASYNC_MAX_MESSAGES.min(ASYNC_MAX_BYTES / size as u64) / senders as u64;
    let frame_len =
        shoal::wire::message_frame_len(16, p.a.channel().local_packet().to_bytes().len(), size);
    let overflow = || {
        p.a.metrics()
            .async_queue_overflow_sync_total
            .load(Ordering::Relaxed)
    };
    let overflow_before = overflow();
    let failures_before = send_failures(&p.a);

    let cpu = CpuMeter::start();
    let start = Instant::now();
    let deadline = start + ASYNC_BUDGET;
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let channel = p.a.channel().clone();
            let payload = payload.clone();
            let dests = dests.clone();
            tokio::spawn(async move {
                let mut sent = 0u64;
                while sent < quota && Instant::now() < deadline {
                    channel
                        .send(&dests, &payload, ASYNC)
                        .await
                        .expect("asynchronous send refused");
                    sent += 1;
                    if sent.is_multiple_of(YIELD_EVERY) {
                        tokio::task::yield_now().await;
                    }
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("sending task panicked");
    }
    let send_secs = start.elapsed().as_secs_f64();
    let complete = p.arrivals.wait_for(sent, ARRIVAL_WAIT).await;
    let cpu = cpu.finish();
    let arrived = p.arrivals.count();
    if !complete {
        eprintln!(
            "warning: {} {size} B run: only {arrived} of {sent} messages arrived (gave up after {ARRIVAL_WAIT:?}, or {ARRIVAL_IDLE:?} without an arrival)",
            setup.label()
        );
    }
    let total_secs = p
        .arrivals
        .last_arrival()
        .saturating_duration_since(start)
        .as_secs_f64();
    ThroughputRow {
        setup,
        size,
        senders,
        sent,
        arrived,
        send_secs,
        total_secs,
        payload_bytes: p.arrivals.bytes(),
        wire_bytes: arrived * frame_len as u64,
        overflow_sync: overflow() - overflow_before,
        failures: send_failures(&p.a) - failures_before,
        cpu,
    }
}

/// One ACK latency run.
#[derive(Debug)]
struct LatencyRow {
    setup: Setup,
    concurrency: usize,
    /// Every send's duration, sorted.
    samples: Vec<Duration>,
    secs: f64,
    failures: u64,
    cpu: CpuUse,
}

impl LatencyRow {
    /// Nearest-rank percentile of the sorted samples.
    fn percentile(&self, p: f64) -> Duration {
        let n = self.samples.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.samples[rank.clamp(1, n) - 1]
    }

    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>()
            / u32::try_from(self.samples.len()).unwrap_or(u32::MAX)
    }
}

/// Runs `concurrency` tasks sending with SYNC_ACK until `budget` passes or
/// `max_each` sends; returns every send's duration and the failure count.
async fn ack_senders(
    a: &Node,
    dest: MemberId,
    concurrency: usize,
    budget: Duration,
    max_each: usize,
) -> (Vec<Duration>, u64) {
    // Tag 0: not counted as a throughput arrival.
    let payload = tagged_payload(ACK_PAYLOAD, 0);
    let deadline = Instant::now() + budget;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let channel = a.channel().clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(max_each.min(64 * 1024));
                let mut failures = 0u64;
                while samples.len() < max_each && Instant::now() < deadline {
                    let t = Instant::now();
                    let r = channel.send(&[dest], &payload, SYNC_ACK).await;
                    samples.push(t.elapsed());
                    if let Err(e) = r {
                        failures += 1;
                        if failures == 1 {
                            eprintln!("warning: ACK send failed: {e}");
                        }
                    }
                }
                (samples, failures)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (s, f) = t.await.expect("sending task panicked");
        all.extend(s);
        failures += f;
    }
    (all, failures)
}

async fn ack_latency(p: &Pair, setup: Setup, concurrency: usize) -> LatencyRow {
    let dest = p.b.id();
    ack_senders(&p.a, dest, concurrency, ACK_WARMUP, usize::MAX).await;
    let cpu = CpuMeter::start();
    let start = Instant::now();
    let (mut samples, failures) =
        ack_senders(&p.a, dest, concurrency, ACK_BUDGET, ACK_MAX_PER_SENDER).await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    samples.sort_unstable();
    assert!(!samples.is_empty(), "no ACK sends completed");
    LatencyRow {
        setup,
        concurrency,
        samples,
        secs,
        failures,
        cpu,
    }
}

/// CPU cores kept busy during a run: by this process, and by the whole
/// machine (so that interference from other processes shows).
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    process: f64,
    machine: f64,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} / {:.2}", self.process, self.machine)
    }
}

/// Measures [`CpuUse`] from `/proc` (Linux; zeros elsewhere).
#[derive(Debug)]
struct CpuMeter {
    wall: Instant,
    process: u64,
    machine: u64,
}

impl CpuMeter {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            process: process_ticks(),
            machine: machine_busy_ticks(),
        }
    }

    fn finish(&self) -> CpuUse {
        let wall = self.wall.elapsed().as_secs_f64();
        let cores = |ticks: u64| ticks as f64 / USER_HZ / wall;
        CpuUse {
            process: cores(process_ticks().saturating_sub(self.process)),
            machine: cores(machine_busy_ticks().saturating_sub(self.machine)),
        }
    }
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ; 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU ticks used by this process (`/proc/self/stat` fields 14 and 15).
fn process_ticks() -> u64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name start at field 3 (state).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    ticks.unwrap_or(0)
}

/// Busy CPU ticks of the whole machine, all CPUs together (`/proc/stat`:
/// user + nice + system + irq + softirq).
fn machine_busy_ticks() -> u64 {
    let ticks = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        Some([0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum())
    });
    ticks.unwrap_or(0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn print_header(threads: usize) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let profile = if cfg!(debug_assertions) {
        "debug (debug assertions on: figures are not representative)"
    } else {
        "optimized (debug assertions off; `cargo bench` uses the bench profile)"
    };
    println!("# shoal transport benchmark\n");
    println!("- machine: {cpus} CPUs, {}", cpu_model());
    println!("- build: {profile}");
    println!("- runtime: tokio multi-thread, {threads} worker threads, shared by both nodes");
    println!("- nodes: A → B on 127.0.0.1, TCP over loopback, static membership, API off");
}

fn print_throughput(rows: &[ThroughputRow]) {
    println!("## Asynchronous throughput (ASYNCHRONOUS | BYTE_MESSAGE, A → B)\n");
    println!(
        "| interceptors | payload | senders | messages | send phase s | first send → last arrival s | msgs/s | payload MB/s | wire MB/s | sent in caller (queue full) | failures | CPU cores busy (bench / machine) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let lost = if r.arrived == r.sent {
            String::new()
        } else {
            format!(" ({} lost)", r.sent.saturating_sub(r.arrived))
        };
        println!(
            "| {} | {} | {} | {}{} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            r.setup.label(),
            size_label(r.size),
            r.senders,
            r.sent,
            lost,
            r.send_secs,
            r.total_secs,
            r.rate(r.arrived as f64, 0),
            r.rate(r.payload_bytes as f64 / 1e6, 1),
            r.rate(r.wire_bytes as f64 / 1e6, 1),
            r.overflow_sync,
            r.failures,
            r.cpu,
        );
    }
    println!();
}

fn print_latency(rows: &[LatencyRow]) {
    println!(
        "## ACK round trip (USE_ACK | SYNCHRONIZED_ACK | BYTE_MESSAGE, {ACK_PAYLOAD} B, A → B)\n"
    );
    println!(
        "| interceptors | concurrent senders | sends | p50 µs | p99 µs | mean µs | max µs | msgs/s | failures | CPU cores busy (bench / machine) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.setup.label(),
            r.concurrency,
            r.samples.len(),
            micros(r.percentile(50.0)),
            micros(r.percentile(99.0)),
            micros(r.mean()),
            micros(r.percentile(100.0)),
            r.samples.len() as f64 / r.secs,
            r.failures,
            r.cpu,
        );
    }
    println!();
}

async fn run(threads: usize) {
    print_header(threads);
    let senders = std::env::var("SHOAL_BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(ASYNC_SENDERS);
    let mut tput = Vec::new();
    let mut lat = Vec::new();
    for setup in Setup::from_env() {
        let pair = Pair::start(setup).await;
        println!(
            "- interceptors {:?}: node start {:.0} ms",
            setup.label(),
            pair.start_time.as_secs_f64() * 1e3
        );
        for size in ASYNC_SIZES {
            tput.push(throughput(&pair, setup, size, senders).await);
        }
        for c in ACK_CONCURRENCY {
            lat.push(ack_latency(&pair, setup, c).await);
        }
        pair.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("shoal-bench-key-{}", std::process::id())),
    );
    println!();
    print_throughput(&tput);
    print_latency(&lat);
}

/// The allocator `shoal run` uses.
#[cfg(feature = "cli")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let started = Instant::now();
    rt.block_on(run(threads));
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
