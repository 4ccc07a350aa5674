//! Cost of asking a placement policy where sessions go: one `place` call
//! with a batch of sessions (the engine asks in batches of up to 4096 on a
//! membership change or a join, and with one session on a create or a
//! take-over), for the built-in `delta` and `backup` policies and the
//! two-zone example, on 4 and 16 nodes.
//!
//! `cargo bench --bench policy` prints, per policy, nodes and batch size,
//! the median time per call and per session over 15 rounds, with the
//! spread (min–max of the rounds), and what placing 100 000 sessions costs.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shoal::config::FailureMode;
use shoal::plugins::{NodeCtx, PluginOptions};
use shoal::session::policy::{PlaceIn, Policy, ViewNode};
use shoal::{Member, MemberId};

const ROUNDS: usize = 15;

fn node(i: u8) -> ViewNode {
    ViewNode {
        uid: [i; 16],
        id: MemberId {
            host: "127.0.0.1".parse().expect("ip"),
            port: 4000 + u16::from(i),
            unique_id: [i; 16],
        },
        zone: format!("z{}", i % 3),
        route: format!("n{i}"),
        alive_ms: i64::from(i) * 1000,
    }
}

fn load(source: &str, settings: &[(&str, &str)]) -> Policy {
    let local = Member {
        id: node(0).id,
        domain: Bytes::new(),
        alive_ms: 0,
        payload: Bytes::new(),
        command: Bytes::new(),
        secure_port: -1,
        udp_port: -1,
    };
    let ctx = Arc::new(NodeCtx::new(
        local,
        Bytes::new(),
        Arc::new(shoal::Metrics::default()),
        shoal::plugins::Reporter::new(|_| {}),
    ));
    let opts = PluginOptions {
        cache_dir: None,
        ..Default::default()
    };
    Policy::load_blocking(
        source,
        None,
        settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        FailureMode::FailOpen,
        &opts,
        ctx,
    )
    .expect("policy loads")
}

/// A batch as after a member left: every session has its primary (this
/// node) and one current backup, some of which are gone (index past the
/// list) so the policy must pick again.
fn batch(n: usize, nodes: usize) -> PlaceIn {
    let mut b = PlaceIn::new();
    for i in 0..n {
        let key = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let backup = 1 + i % (nodes - 1);
        b.push(key, Some(0), &[backup], 1024);
    }
    b
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let zone_policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/guests/wasm32-wasip2/release/zone_policy.wasm"
    );
    let policies: Vec<(&str, Policy)> = vec![
        ("delta", load("delta", &[])),
        ("backup", load("backup", &[])),
        ("zone (2 backups)", load(zone_policy, &[])),
    ];
    println!(
        "policy             nodes  batch   per call (median, min-max)        per session   100 000 sessions"
    );
    for (name, p) in &policies {
        for nodes in [4usize, 16] {
            let view: Vec<ViewNode> = (0..nodes as u8).map(node).collect();
            for size in [1usize, 4096] {
                let input = batch(size, nodes);
                // Warm-up.
                for _ in 0..3 {
                    std::hint::black_box(p.place(&view, 0, &input));
                }
                let calls = if size == 1 { 2000 } else { 5 };
                let mut per_call: Vec<f64> = (0..ROUNDS)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..calls {
                            std::hint::black_box(p.place(&view, 0, &input));
                        }
                        t.elapsed().as_secs_f64() * 1e6 / calls as f64
                    })
                    .collect();
                let (med, lo, hi) = median(&mut per_call);
                let per_session = med / size as f64;
                println!(
                    "{name:<18} {nodes:>5} {size:>6}   {med:>10.1} µs ({lo:.1}-{hi:.1})   {per_session:>9.3} µs   {:>8.1} ms",
                    per_session * 100_000.0 / 1000.0
                );
            }
        }
    }
    let failures: u64 = policies
        .iter()
        .map(|(_, p)| {
            p.shared()
                .failures
                .iter()
                .map(|f| f.load(std::sync::atomic::Ordering::Relaxed))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(failures, 0, "a policy call failed during the bench");
}
