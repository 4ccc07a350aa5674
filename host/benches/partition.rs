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
//! alone); `SHOAL_BENCH_CHAINS=default-chain,phi-accrual` picks some. For
//! each:
//! * silent failure: `CUTS` times (env `SHOAL_BENCH_CUTS`, default 5), node
//!   c's link is taken down on the bridge side; measured from the moment
//!   the link is down to each node's `disappeared` event (the events' own
//!   wall-clock stamps, one clock for all): a and b dropping c ("every peer
//!   dropped it" = the later of the two), and c dropping both. Then the
//!   link comes back and the cluster converges before the next cut.
//! * loss: `SHOAL_BENCH_LOSS_SECS` (default 60) s of 20 % random loss of
//!   what every node receives from the bridge (nftables; netem is used for
//!   a 20 ms delay where the kernel has it): members dropped from a view
//!   (false drops) and heartbeat expiries the TCP failure detector
//!   overruled.
//!
//! Every wait is bounded; every process and namespace is removed at the
//! end, also on a panic.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
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
    println!("{chain}: silent failure (link down), {cuts} cuts");
    println!("  each peer drops it:      {}", stats(&peers));
    println!("  every peer dropped it:   {}", stats(&every));
    println!("  it dropped both peers:   {}", stats(&isolated));

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
    // SHOAL_BENCH_CHAINS: a comma-separated subset of the three.
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
}
