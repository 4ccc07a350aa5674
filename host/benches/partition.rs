//! Partitions and loss between `shoal run` processes in network
//! namespaces (the lab of `tests/common/netns.rs`: one namespace per node
//! on a bridge in a namespace of its own; needs root, `ip` and `nft`).
//!
//! `cargo bench --bench partition` (or `benches/partition.sh`).
//!
//! Three nodes with Tomcat's timings (frequency 500 ms, dropTime 3000 ms),
//! multicast on the bridge, session engine off, measured three times: with
//! the default chain (tcp-failure-detector first: connectTimeout 1000 ms),
//! with the phi-accrual detector instead, and with no chain (membership
//! alone), and then with stock Apache Tomcat Tribes nodes in place of
//! shoal (`tomcat`: `tests/interop/TribesPeer.java`, McastService +
//! NioReceiver + TcpFailureDetector, the same addresses, ports and timings,
//! each JVM started with `ip netns exec`; needs a JDK and Debian's
//! `libtomcat10-java`); `SHOAL_BENCH_CHAINS=default-chain,tomcat` picks
//! some. For each:
//! * silent failure: `CUTS` times (env `SHOAL_BENCH_CUTS`, default 5), node
//!   c's link is taken down on the bridge side; measured from the moment
//!   the link is down to each node's `disappeared` event (the events' own
//!   wall-clock stamps, one clock for all; for Tomcat the moment each
//!   JVM's `member_disappeared` line arrives on its stdout, stamped by a
//!   reader thread): a and b dropping c ("every peer
//!   dropped it" = the later of the two), and c dropping both. Then the
//!   link comes back and the cluster converges before the next cut.
//! * loss: `SHOAL_BENCH_LOSS_SECS` (default 60) s of 20 % random loss of
//!   what every node receives from the bridge (nftables; netem is used for
//!   a 20 ms delay where the kernel has it): members dropped from a view
//!   (false drops: `shoal_members_disappeared_total`, for Tomcat the
//!   `member_disappeared` lines) and heartbeat expiries the TCP failure
//!   detector overruled (shoal only).
//!
//! Every wait is bounded; every process and namespace is removed at the
//! end, also on a panic.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[path = "../tests/common/java.rs"]
#[allow(dead_code)]
mod java;
#[path = "../tests/common/netns.rs"]
mod netns;

use netns::Lab;

const NODES: usize = 3;
const C: usize = 2;
/// Longest wait for a drop or a convergence.
const DEADLINE: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The silent-failure lines of one case: each peer's drop, the later of
/// the two peers, and the cut node dropping both (ms after the cut).
fn print_cuts(case: &str, cuts: u64, each: &[f64], every: &[f64], isolated: &[f64]) {
    println!("{case}: silent failure (link down), {cuts} cuts");
    println!("  each peer drops it:      {}", stats(each));
    println!("  every peer dropped it:   {}", stats(every));
    println!("  it dropped both peers:   {}", stats(isolated));
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        // A bound on the wait, not a measurement: give up rather than hang.
        if start.elapsed() >= DEADLINE {
            panic!("gave up after {DEADLINE:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// When node `i` last reported member `id` disappeared, after `since_ms`.
fn dropped_at(lab: &Lab, i: usize, id: &str, since_ms: i64) -> Option<i64> {
    lab.get(i, "/api/events")?
        .as_array()?
        .iter()
        .filter(|e| e["id"] == id && e["kind"] == "disappeared")
        .filter_map(|e| e["at_ms"].as_i64())
        .find(|&t| t >= since_ms)
}

fn converge(lab: &Lab) {
    for i in 0..NODES {
        until("every node to list the others", || {
            (lab.members(i)?.len() == NODES - 1).then_some(())
        });
    }
}

fn stats(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return "-".into();
    }
    format!(
        "median {:.0} ms, min {:.0}, max {:.0} (n={})",
        s[s.len() / 2],
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

fn run(chain: &str, extra: &str, cuts: u64, loss_secs: u64) {
    let mut lab = Lab::new(&format!("bench-{chain}"), NODES);
    for i in 0..NODES {
        let cfg = lab.config(i, &format!("{extra}[session]\nenabled = false\n"));
        lab.start_shoal(i, &cfg);
    }
    let ids: Vec<String> = (0..NODES)
        .map(|i| {
            until("the API", || {
                lab.get(i, "/api/node")?["id"].as_str().map(str::to_owned)
            })
        })
        .collect();
    converge(&lab);

    let (mut peers, mut every, mut isolated) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cuts {
        lab.cut(C);
        let cut = now_ms();
        let a = until("a to drop c", || dropped_at(&lab, 0, &ids[C], cut));
        let b = until("b to drop c", || dropped_at(&lab, 1, &ids[C], cut));
        let c = until("c to drop a and b", || {
            Some(dropped_at(&lab, C, &ids[0], cut)?.max(dropped_at(&lab, C, &ids[1], cut)?))
        });
        peers.extend([(a - cut) as f64, (b - cut) as f64]);
        every.push((a.max(b) - cut) as f64);
        isolated.push((c - cut) as f64);
        lab.heal(C);
        converge(&lab);
    }
    print_cuts(chain, cuts, &peers, &every, &isolated);

    let metric = |name: &str| -> f64 {
        (0..NODES)
            .map(|i| until(name, || lab.metric(i, name)))
            .sum()
    };
    let kept_name = "shoal_plugin_suspects_kept_alive{plugin=\"tcp-failure-detector\"}";
    let with_detector = lab.metric(0, kept_name).is_some();
    let dropped0 = metric("shoal_members_disappeared_total");
    let kept0 = if with_detector {
        metric(kept_name)
    } else {
        0.0
    };
    let mut delayed = true;
    for i in 0..NODES {
        lab.lose(i, 20);
        delayed &= lab.delay(i, 20);
    }
    let start = Instant::now();
    let mut short_views = 0u64;
    let mut samples = 0u64;
    while start.elapsed() < Duration::from_secs(loss_secs) {
        for i in 0..NODES {
            samples += 1;
            if lab.members(i).is_none_or(|m| m.len() != NODES - 1) {
                short_views += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let lost: u64 = (0..NODES).map(|i| lab.dropped(i)).sum();
    let false_drops = metric("shoal_members_disappeared_total") - dropped0;
    let overruled = if with_detector {
        metric(kept_name) - kept0
    } else {
        0.0
    };
    println!(
        "{chain}: {loss_secs} s of 20 % loss{} on every link ({lost} packets dropped)",
        if delayed {
            " + 20 ms delay"
        } else {
            " (no netem here: no delay)"
        }
    );
    println!(
        "  false drops: {false_drops} (member-views short in {short_views} of {samples} samples); \
         heartbeat expiries overruled by the TCP detector: {}",
        if with_detector {
            overruled.to_string()
        } else {
            "- (no detector)".into()
        }
    );
    for i in 0..NODES {
        lab.stop(i, Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------
// Tomcat Tribes nodes (tests/interop/TribesPeer.java) in the lab
// ---------------------------------------------------------------------------

/// A TribesPeer JVM in a node's namespace: its JSON lines, each with the
/// wall-clock ms at which it arrived on the pipe; SIGKILLed when dropped
/// (before the lab, which deletes the namespaces, is dropped).
struct Tomcat {
    child: Option<Child>,
    /// Held open: the peer stops at the end of its stdin.
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<(i64, Value)>>>,
    log: std::path::PathBuf,
    id: String,
}

impl Tomcat {
    /// Starts TribesPeer in node `i`'s namespace with the lab's addresses:
    /// membership bound to the node's IP, multicast 228.0.0.4:45564 on the
    /// bridge, the receiver on IP:4000, frequency 500 ms, dropTime 3000 ms.
    fn spawn(lab: &Lab, i: usize, classes: &Path) -> Self {
        let h = &lab.hosts[i];
        let log = lab.dir.join(format!("{}-tomcat.log", h.name));
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = lab
            .command_in(i, java::jdk_tool("java"))
            .arg("-Djava.net.preferIPv4Stack=true")
            .arg("-cp")
            .arg(format!(
                "{}:{}:{}",
                classes.display(),
                java::TRIBES_JAR,
                java::JULI_JAR
            ))
            .arg("TribesPeer")
            .arg(format!("name={}", h.name))
            .arg(format!("address={}", h.ip))
            .arg("port=4000")
            .arg("mcastAddress=228.0.0.4")
            .arg("mcastPort=45564")
            .arg(format!("bind={}", h.ip))
            .arg("frequency=500")
            .arg("dropTime=3000")
            .arg("domain=netns")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn TribesPeer in its namespace");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = now_ms();
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((at, v));
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            log,
            id: String::new(),
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<(i64, Value)>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the `started` line (the JVM's start is slow on a busy
    /// machine: a longer bound than [`DEADLINE`]); keeps the id.
    fn ready(&mut self) {
        let start = Instant::now();
        loop {
            let id = self
                .lines()
                .iter()
                .find(|(_, v)| v["event"] == "started")
                .and_then(|(_, v)| v["id"].as_str().map(str::to_owned));
            if let Some(id) = id {
                self.id = id;
                return;
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            assert!(
                !exited && start.elapsed() < Duration::from_secs(120),
                "TribesPeer did not start; log {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Members in view, from the added and disappeared lines.
    fn members(&self) -> HashSet<String> {
        let mut m = HashSet::new();
        for (_, v) in self.lines().iter() {
            let id = v["id"].as_str().unwrap_or("").to_owned();
            if v["event"] == "member_added" {
                m.insert(id);
            } else if v["event"] == "member_disappeared" {
                m.remove(&id);
            }
        }
        m
    }

    /// When this peer first reported member `id` disappeared, at or after
    /// `since_ms` (the line's arrival).
    fn dropped_at(&self, id: &str, since_ms: i64) -> Option<i64> {
        self.lines()
            .iter()
            .filter(|(at, v)| {
                *at >= since_ms && v["event"] == "member_disappeared" && v["id"] == id
            })
            .map(|(at, _)| *at)
            .next()
    }

    /// `member_disappeared` lines so far (any member).
    fn drops(&self) -> usize {
        self.lines()
            .iter()
            .filter(|(_, v)| v["event"] == "member_disappeared")
            .count()
    }

    /// SIGKILL, then reap; stdin closes only after the kill (at the end
    /// of its stdin the peer would leave gracefully).
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

fn tomcat_converge(peers: &[Tomcat]) {
    for (i, p) in peers.iter().enumerate() {
        until("every Tomcat node to list the others", || {
            let m = p.members();
            peers
                .iter()
                .enumerate()
                .all(|(j, q)| i == j || m.contains(&q.id))
                .then_some(())
        });
    }
}

/// Why the Tomcat case cannot run here, or `None`.
fn tomcat_unavailable() -> Option<String> {
    for jar in [java::TRIBES_JAR, java::JULI_JAR] {
        if !Path::new(jar).is_file() {
            return Some(format!("{jar} missing (package libtomcat10-java)"));
        }
    }
    None
}

fn run_tomcat(cuts: u64, loss_secs: u64) {
    if let Some(why) = tomcat_unavailable() {
        println!("tomcat: skipped: {why}");
        return;
    }
    let classes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("partition-tomcat-classes");
    let _ = std::fs::remove_dir_all(&classes);
    std::fs::create_dir_all(&classes).expect("class dir");
    java::javac(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/TribesPeer.java"),
        &classes,
    );
    let lab = Lab::new("bench-tomcat", NODES);
    // Declared after the lab: the JVMs are killed before its namespaces go.
    let mut peers: Vec<Tomcat> = (0..NODES)
        .map(|i| Tomcat::spawn(&lab, i, &classes))
        .collect();
    for p in &mut peers {
        p.ready();
    }
    tomcat_converge(&peers);

    let (mut each, mut every, mut isolated) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cuts {
        lab.cut(C);
        let cut = now_ms();
        let c_id = peers[C].id.clone();
        let a = until("a to drop c", || peers[0].dropped_at(&c_id, cut));
        let b = until("b to drop c", || peers[1].dropped_at(&c_id, cut));
        let c = until("c to drop a and b", || {
            Some(
                peers[C]
                    .dropped_at(&peers[0].id, cut)?
                    .max(peers[C].dropped_at(&peers[1].id, cut)?),
            )
        });
        each.extend([(a - cut) as f64, (b - cut) as f64]);
        every.push((a.max(b) - cut) as f64);
        isolated.push((c - cut) as f64);
        lab.heal(C);
        tomcat_converge(&peers);
    }
    print_cuts("tomcat", cuts, &each, &every, &isolated);

    let drops0: usize = peers.iter().map(Tomcat::drops).sum();
    let mut delayed = true;
    for i in 0..NODES {
        lab.lose(i, 20);
        delayed &= lab.delay(i, 20);
    }
    let start = Instant::now();
    let (mut short_views, mut samples) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(loss_secs) {
        for p in &peers {
            samples += 1;
            if p.members().len() != NODES - 1 {
                short_views += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let lost: u64 = (0..NODES).map(|i| lab.dropped(i)).sum();
    let false_drops = peers.iter().map(Tomcat::drops).sum::<usize>() - drops0;
    println!(
        "tomcat: {loss_secs} s of 20 % loss{} on every link ({lost} packets dropped)",
        if delayed {
            " + 20 ms delay"
        } else {
            " (no netem here: no delay)"
        }
    );
    println!(
        "  false drops: {false_drops} (member-views short in {short_views} of {samples} samples); \
         heartbeat expiries overruled by the TCP detector: - (not reported by Tribes)"
    );
    for p in &mut peers {
        p.kill();
    }
}

fn main() {
    if let Some(why) = netns::unavailable() {
        eprintln!("partition bench: cannot run here: {why}");
        std::process::exit(2);
    }
    let cuts = env_or("SHOAL_BENCH_CUTS", 5);
    let loss_secs = env_or("SHOAL_BENCH_LOSS_SECS", 60);
    println!(
        "partition bench: 3 nodes, frequency 500 ms, dropTime 3000 ms, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // SHOAL_BENCH_CHAINS: a comma-separated subset of the four.
    let only = std::env::var("SHOAL_BENCH_CHAINS").unwrap_or_default();
    let chains = [
        ("default-chain", ""),
        (
            "phi-accrual",
            "[[interceptor]]\nname = \"phi-accrual-detector\"\n[[interceptor]]\nname = \"message-dispatch\"\n",
        ),
        ("no-chain", "default_chain = false\n"),
    ];
    for (name, extra) in chains {
        if only.is_empty() || only.split(',').any(|c| c == name) {
            run(name, extra, cuts, loss_secs);
        }
    }
    if only.is_empty() || only.split(',').any(|c| c == "tomcat") {
        run_tomcat(cuts, loss_secs);
    }
}
