//! Live swap: how long a swap takes, and what it does to message latency.
//!
//! `cargo bench --bench swap` starts two nodes on loopback (default chain)
//! and prints:
//! 1. the time from the swap request to the new instance serving
//!    (`ChainHandle::swap` of throughput, ~100 KB), with a warm compile cache
//!    (the component was compiled before) and a cold one (no cache: compiled
//!    on every swap): median, min and max of `ROUNDS` swaps each;
//! 2. sync-ACK 1 KiB round trips sent back to back for 3 s with one swap of
//!    tcp-failure-detector at 1.5 s: p50 / p99 of the second around the swap
//!    against the first second (steady state), over 5 rounds (medians).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::config::MembershipKind;
use shoal::{Config, Node, SendOptions};

const ROUNDS: usize = 15;

/// (steady p50, p99, max), (around the swap p50, p99, max), µs.
type Round = ((f64, f64, f64), (f64, f64, f64));

fn configs(cache: &str) -> Vec<Config> {
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port()
        })
        .collect();
    let members: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = Config::default();
            c.node.name = format!("b{i}");
            c.receiver.address =
                shoal::config::ReceiverAddress::Ip(std::net::Ipv4Addr::LOCALHOST.into());
            c.receiver.port = *p;
            c.receiver.auto_bind = 1;
            c.api.listen = shoal::config::ApiListen::Off;
            c.membership.kind = MembershipKind::Static;
            c.membership.members = members.clone();
            c.plugins.cache_dir = shoal::config::CacheDir::from(cache.to_owned());
            c
        })
        .collect()
}

async fn pair(cache: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for c in configs(cache) {
        nodes.push(Node::start(c).await.expect("node"));
    }
    // Bounded: 1000 looks, 20 ms apart.
    for _ in 0..1000 {
        if nodes.iter().all(|n| n.members().len() == 1) {
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the two nodes did not see each other");
}

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", shoal::plugins::GUEST_DIR)).expect("guest")
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn swap_times(cache: &str, label: &str) {
    let nodes = pair(cache).await;
    let bytes = guest("throughput");
    // One swap first, so a warm cache holds the component.
    nodes[0]
        .plugins()
        .swap("throughput", bytes.clone())
        .await
        .expect("swap");
    let mut total = Vec::new();
    let mut load = Vec::new();
    for _ in 0..ROUNDS {
        let r = nodes[0]
            .plugins()
            .swap("throughput", bytes.clone())
            .await
            .expect("swap");
        total.push(r.total_ms);
        load.push(r.load_ms);
    }
    let (m, lo, hi) = stats(total);
    let (lm, _, _) = stats(load);
    println!(
        "swap, {label:<10} {} B component: request to serving median {m:.2} ms (min {lo:.2}, max {hi:.2}); loading median {lm:.2} ms; {ROUNDS} swaps",
        bytes.len()
    );
    for n in nodes {
        n.shutdown().await;
    }
}

async fn latency_round() -> Round {
    let nodes = pair("").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let to = [b.id()];
    let sync = SendOptions(SendOptions::USE_ACK.0 | SendOptions::SYNCHRONIZED_ACK.0);
    let body = vec![7u8; 1024];
    let handle = Arc::new(guest("tcp_failure_detector"));
    let ch = a.channel().clone();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut samples = Vec::new();
        while start.elapsed() < Duration::from_secs(3) {
            let t = Instant::now();
            ch.send(&to, &body, sync).await.expect("send");
            samples.push((
                t.duration_since(start).as_secs_f64(),
                t.elapsed().as_secs_f64() * 1e6,
            ));
        }
        samples
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at = start.elapsed().as_secs_f64();
    a.plugins()
        .swap("tcp-failure-detector", handle.to_vec())
        .await
        .expect("swap");
    let samples = sender.await.expect("sender");
    let mut steady: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t < 1.0)
        .map(|s| s.1)
        .collect();
    let mut around: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| (t - at).abs() <= 0.5)
        .map(|s| s.1)
        .collect();
    let r = (
        (
            pct(&mut steady, 0.5),
            pct(&mut steady, 0.99),
            pct(&mut steady, 1.0),
        ),
        (
            pct(&mut around, 0.5),
            pct(&mut around, 0.99),
            pct(&mut around, 1.0),
        ),
    );
    for n in nodes {
        n.shutdown().await;
    }
    r
}

/// The allocator `shoal run` uses.
#[cfg(feature = "cli")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cache = std::env::temp_dir().join(format!("shoal-swap-bench-{}", std::process::id()));
        swap_times(&cache.display().to_string(), "warm cache").await;
        swap_times("off", "cold (no cache)").await;
        let _ = std::fs::remove_dir_all(&cache);
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let r = latency_round().await;
            eprintln!("round: steady {:?}, around the swap {:?}", r.0, r.1);
            rounds.push(r);
        }
        let med = |f: fn(&Round) -> f64| stats(rounds.iter().map(f).collect()).0;
        let spread = |f: fn(&Round) -> f64| {
            let (_, lo, hi) = stats(rounds.iter().map(f).collect());
            format!("{lo:.0}–{hi:.0}")
        };
        println!(
            "sync-ACK 1 KiB, steady second: p50 {:.0} µs, p99 {:.0} µs (rounds {}), max {:.0} µs; second around a swap: p50 {:.0} µs, p99 {:.0} µs (rounds {}), max {:.0} µs (rounds {}); 5 rounds, medians",
            med(|r| r.0.0),
            med(|r| r.0.1),
            spread(|r| r.0.1),
            med(|r| r.0.2),
            med(|r| r.1.0),
            med(|r| r.1.1),
            spread(|r| r.1.1),
            med(|r| r.1.2),
            spread(|r| r.1.2),
        );
    });
}
