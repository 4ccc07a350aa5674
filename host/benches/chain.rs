//! Cost of the WebAssembly interceptor chain.
//!
//! `cargo bench --bench chain` prints:
//! 1. per-message cost of the default 3-guest chain (tcp-failure-detector,
//!    message-dispatch, throughput) on the send path and on the receive path,
//!    against no chain, at 100 B, 1 KiB and 64 KiB;
//! 2. the same path with 2 tasks in parallel, with one instance per
//!    interceptor shared by both vs one instance per worker thread;
//! 3. end-to-end asynchronous throughput (100 B and 1 KiB) between two nodes on
//!    loopback with the default chain and with no chain.
//!
//! `SHOAL_BENCH_ONLY=e2e` (or `per-message`) runs one part alone, e.g. under
//! `perf record`; `SHOAL_BENCH_CHAIN=on|off` picks one side of the e2e part.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::chain::{Chain, InMsg, OutMsg};
use shoal::config::MembershipKind;
use shoal::plugins::{NodeCtx, PluginOptions};
use shoal::{Config, ListenerError, Member, MemberId, Node, ReceivedMessage, SendOptions};

fn member(port: u16) -> Member {
    Member {
        id: MemberId {
            host: "127.0.0.1".parse().expect("ip"),
            port,
            unique_id: [port as u8; 16],
        },
        domain: Bytes::new(),
        alive_ms: 1000,
        payload: Bytes::new(),
        command: Bytes::new(),
        secure_port: -1,
        udp_port: -1,
    }
}

async fn default_chain(instances: usize) -> Arc<Chain> {
    let ctx = Arc::new(NodeCtx::new(
        member(1),
        Bytes::new(),
        Arc::new(shoal::Metrics::default()),
        shoal::plugins::Reporter::new(|_| {}),
    ));
    let opts = PluginOptions {
        instances,
        cache_dir: None,
        ..Default::default()
    };
    let mut cfg = Config::default();
    cfg.plugins.default_chain = true;
    Arc::new(
        Chain::load(shoal::plugins::InterceptorSpec::list_from(&cfg), &opts, ctx)
            .await
            .expect("default chain loads"),
    )
}

/// ns per message through `chain` (send then receive), over `n` messages,
/// one message per call. A send deferred by an interceptor (message-dispatch
/// defers asynchronous ones) continues below it at once, as a queue worker
/// would (which passes batches instead).
async fn per_message(chain: &Chain, size: usize, n: u32, opts: SendOptions) -> (f64, f64) {
    use shoal::chain::Flow;
    let body = Bytes::from(vec![7u8; size]);
    let dests: Arc<[MemberId]> = vec![member(2).id].into();
    let opts = SendOptions::BYTE_MESSAGE | opts;
    let t = Instant::now();
    for _ in 0..n {
        let mut m = OutMsg {
            options: opts,
            timestamp: 0,
            body: body.clone(),
            dests: dests.clone(),
        };
        if let Flow::Deferred { resume } = chain.send_from(0, &mut m).await {
            std::hint::black_box(chain.send_from(resume, &mut m).await);
        }
    }
    let send = t.elapsed().as_nanos() as f64 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        let mut m = InMsg {
            options: opts,
            timestamp: 0,
            sender: member(2),
            unique_id: Bytes::new(),
            body: body.clone(),
        };
        std::hint::black_box(chain.receive_from(chain.len(), &mut m).await);
    }
    let recv = t.elapsed().as_nanos() as f64 / f64::from(n);
    (send, recv)
}

/// ns per message through `chain` in batches of 64, over `n` batches.
async fn per_message_batched(chain: &Chain, size: usize, n: u32) -> (f64, f64) {
    use shoal::chain::Flow;
    let body = Bytes::from(vec![7u8; size]);
    let dests: Arc<[MemberId]> = vec![member(2).id].into();
    let opts = SendOptions::BYTE_MESSAGE | SendOptions::USE_ACK;
    let t = Instant::now();
    for _ in 0..n {
        let mut msgs: Vec<OutMsg> = (0..64)
            .map(|_| OutMsg {
                options: opts,
                timestamp: 0,
                body: body.clone(),
                dests: dests.clone(),
            })
            .collect();
        let mut flows = vec![Flow::Continue; 64];
        chain.send_batch(0, &mut msgs, &mut flows).await;
        std::hint::black_box(&flows);
    }
    let send = t.elapsed().as_nanos() as f64 / f64::from(n * 64);
    let t = Instant::now();
    for _ in 0..n {
        let mut msgs: Vec<InMsg> = (0..64)
            .map(|_| InMsg {
                options: opts,
                timestamp: 0,
                sender: member(2),
                unique_id: Bytes::new(),
                body: body.clone(),
            })
            .collect();
        let mut flows = vec![Flow::Continue; 64];
        chain
            .receive_batch(chain.len(), &mut msgs, &mut flows)
            .await;
        std::hint::black_box(&flows);
    }
    let recv = t.elapsed().as_nanos() as f64 / f64::from(n * 64);
    (send, recv)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

async fn throughput(with_chain: bool, size: usize, budget: Duration) -> (f64, u64) {
    let ports = [free_port(), free_port()];
    let members: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for p in ports {
        let mut c = Config::default();
        c.membership.kind = MembershipKind::Static;
        c.membership.members = members.clone();
        c.receiver.address =
            shoal::config::ReceiverAddress::Ip(std::net::Ipv4Addr::LOCALHOST.into());
        c.receiver.port = p;
        c.receiver.auto_bind = 1;
        c.api.listen = shoal::config::ApiListen::Off;
        c.plugins.default_chain = with_chain;
        c.plugins.cache_dir = shoal::config::CacheDir::Off;
        nodes.push(Node::start(c).await.expect("node"));
    }
    let t = Instant::now();
    while nodes.iter().any(|n| n.members().len() != 1) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nodes did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    nodes[1]
        .channel()
        .add_listener(Arc::new(move |_m: &ReceivedMessage| {
            g.fetch_add(1, Ordering::Relaxed);
            Ok::<(), ListenerError>(())
        }));
    let dest = [nodes[1].id()];
    let body = vec![1u8; size];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            nodes[0]
                .channel()
                .send(&dest, &body, SendOptions::ASYNCHRONOUS)
                .await
                .expect("send");
            sent += 1;
        }
        tokio::task::yield_now().await;
    }
    let t = Instant::now();
    while got.load(Ordering::Relaxed) < sent && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let received = got.load(Ordering::Relaxed);
    for n in nodes {
        n.shutdown().await;
    }
    (received as f64 / elapsed, received)
}

/// The allocator `shoal run` uses.
#[cfg(feature = "cli")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        println!(
            "machine: {} cores, {cpu}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let only = std::env::var("SHOAL_BENCH_ONLY").unwrap_or_default();
        if only != "e2e" {
            per_message_sections().await;
        }
        if only != "per-message" {
            e2e_section().await;
        }
    });
}

async fn per_message_sections() {
    let chain = default_chain(2).await;
    let empty = Chain::default();
    const N: u32 = 200_000;
    // warm up (instantiation of the worker instances)
    per_message(&chain, 1024, 10_000, SendOptions::USE_ACK).await;
    println!("\n## Per-message cost of the default chain (ns/message, {N} messages, one task)\n");
    println!(
        "| options | body | send: no chain | send: chain | receive: no chain | receive: chain | added (send + receive) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, opts) in [
        ("ack (2)", SendOptions::USE_ACK),
        ("async (8)", SendOptions::ASYNCHRONOUS),
    ] {
        for size in [100usize, 1024, 65536] {
            let (s0, r0) = per_message(&empty, size, N, opts).await;
            let (s1, r1) = per_message(&chain, size, N, opts).await;
            println!(
                "| {name} | {size} B | {s0:.0} | {s1:.0} | {r0:.0} | {r1:.0} | {:.0} |",
                (s1 - s0) + (r1 - r0)
            );
        }
    }

    println!("\n## Batches of 64 (what the deferred queue and the receiver pass; ns/message)\n");
    println!(
        "| body | send: no chain | send: chain | receive: no chain | receive: chain | added (send + receive) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for size in [100usize, 1024, 65536] {
        let (s0, r0) = per_message_batched(&empty, size, N / 64).await;
        let (s1, r1) = per_message_batched(&chain, size, N / 64).await;
        println!(
            "| {size} B | {s0:.0} | {s1:.0} | {r0:.0} | {r1:.0} | {:.0} |",
            (s1 - s0) + (r1 - r0)
        );
    }

    println!("\n## Two tasks in parallel, 1 KiB, send+receive (M messages/s, total)\n");
    println!("| instances per interceptor | M msg/s |");
    println!("|---|---:|");
    for instances in [1usize, 2] {
        let chain = default_chain(instances).await;
        per_message(&chain, 1024, 5_000, SendOptions::USE_ACK).await;
        let t = Instant::now();
        let per_task = 100_000u32;
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let c = chain.clone();
                tokio::spawn(
                    async move { per_message(&c, 1024, per_task, SendOptions::USE_ACK).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let rate = 2.0 * f64::from(per_task) / t.elapsed().as_secs_f64() / 1e6;
        println!("| {instances} | {rate:.2} |");
    }
}

async fn e2e_section() {
    // At 100 B (where a fixed per-message cost weighs most) and at 1 KiB.
    for size in [100, 1024] {
        e2e_at(size).await;
    }
}

async fn e2e_at(size: usize) {
    // Runs alternate (none, chain, none, chain, ...) so that drift on a
    // shared machine hits both sides alike; the table gives each run and the
    // medians. SHOAL_BENCH_ROUNDS sets the number of pairs (default 5).
    let rounds: usize = std::env::var("SHOAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let sides: &[bool] = match std::env::var("SHOAL_BENCH_CHAIN").as_deref() {
        Ok("on") => &[true],
        Ok("off") => &[false],
        _ => &[false, true],
    };
    println!(
        "\n## End-to-end asynchronous throughput, {size} B, two nodes on loopback ({rounds} alternating runs of 3 s)\n"
    );
    println!("| chain | msg/s, each run | median msg/s | median MB/s |");
    println!("|---|---|---:|---:|");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for _ in 0..rounds {
        for (k, &with_chain) in sides.iter().enumerate() {
            let (rate, _) = throughput(with_chain, size, Duration::from_secs(3)).await;
            rates[k].push(rate);
        }
    }
    let mut medians = Vec::new();
    for (k, &with_chain) in sides.iter().enumerate() {
        let runs: Vec<String> = rates[k]
            .iter()
            .map(|r| format!("{:.0}k", r / 1e3))
            .collect();
        let mut sorted = rates[k].clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        medians.push(median);
        println!(
            "| {} | {} | {median:.0} | {:.1} |",
            if with_chain {
                "default (3 guests)"
            } else {
                "none"
            },
            runs.join(", "),
            median * size as f64 / 1e6
        );
    }
    if let [none, chain] = medians[..] {
        let mut pairs: Vec<f64> = rates[0]
            .iter()
            .zip(&rates[1])
            .map(|(n, c)| 100.0 * (1.0 - c / n))
            .collect();
        pairs.sort_by(f64::total_cmp);
        println!(
            "\nThe chain costs {:.1} % of end-to-end throughput (ratio of medians); per pair of runs: {} (median {:.1} %).",
            100.0 * (1.0 - chain / none),
            pairs
                .iter()
                .map(|p| format!("{p:.1} %"))
                .collect::<Vec<_>>()
                .join(", "),
            pairs[pairs.len() / 2]
        );
    }
}
