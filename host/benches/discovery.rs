//! Discovery by DNS: how long until a new node and the cluster see each other.
//!
//! ```sh
//! cargo bench -p shoal --bench discovery                       # refresh 1000 and 5000 ms, 10 rounds each
//! cargo bench -p shoal --bench discovery -- --refresh-ms 250,1000 --rounds 20
//! ```
//!
//! A real dnsmasq on 127.0.0.1 serves `peers.shoal.test`; nodes A and B
//! (127.0.0.2, .3, in this process, `kind = "dns"`, heartbeats every 500 ms,
//! no chain, no sessions) run throughout. Each round, after a random pause
//! in `[0, refresh)` (so the round starts at a random point of A's and B's
//! refresh cycle): C's record (127.0.0.4) is added, and C starts, as a pod
//! and its record appear together. Measured from the record's write:
//!
//! * **seen**: A and B both list C. C resolves A and B at start and
//!   heartbeats to them, so this is C's start-up plus one lookup and one
//!   heartbeat; it does not wait for a refresh.
//! * **each peer**: C lists A (and, separately, B), which needs that node
//!   to resolve the name again and heartbeat to C: up to one refresh
//!   period, half of one on average (two figures per round).
//! * **mutual**: C lists both: the later of the two.
//!
//! Then C's record is removed, C shuts down, and the next round waits until
//! A and B dropped C and no longer resolve it.

#[allow(dead_code)]
#[path = "common/measure.rs"]
mod measure;

#[path = "../tests/common/dnsmasq.rs"]
mod dnsmasq;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use measure::Stat;
use shoal::{Config, Node};

const NAME: &str = "peers.shoal.test";
/// Longest wait for one step of a round.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// Poll period of the waits (the figures' resolution).
const POLL: Duration = Duration::from_millis(5);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn node_config(name: &str, addr: IpAddr, port: u16, dns: SocketAddr, refresh_ms: u64) -> Config {
    let text = format!(
        "[node]\nname = \"{name}\"\ndomain = \"bench\"\n\
         [membership]\nkind = \"dns\"\ndns_name = \"{NAME}\"\ndns_server = \"{dns}\"\n\
         dns_refresh_ms = {refresh_ms}\n\
         [receiver]\naddress = \"{addr}\"\nport = {port}\nauto_bind = 1\n\
         [api]\nlisten = \"off\"\n[session]\nenabled = false\n[plugins]\ndefault_chain = false\n"
    );
    Config::parse(&text, Path::new("discovery-bench.toml")).expect("valid config")
}

fn sees(n: &Node, hosts: &[IpAddr]) -> bool {
    let m = n.members();
    hosts.iter().all(|h| m.iter().any(|x| x.id.host == *h))
}

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < STEP_DEADLINE,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// (seen, [C sees A, C sees B], mutual) in ms for each round.
async fn rounds(bin: &Path, refresh_ms: u64, n: usize) -> Vec<(f64, [f64; 2], f64)> {
    let (a_ip, b_ip, c_ip) = (ip(2), ip(3), ip(4));
    let mut dns = dnsmasq::Dnsmasq::start(bin, "bench", NAME, &[a_ip, b_ip]);
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let server = dns.addr();
    let cfg = |name: &str, addr| node_config(name, addr, port, server, refresh_ms);
    let a = Node::start(cfg("a", a_ip)).await.expect("a");
    let b = Node::start(cfg("b", b_ip)).await.expect("b");
    wait("a and b to meet", || sees(&a, &[b_ip]) && sees(&b, &[a_ip])).await;
    let mut out = Vec::with_capacity(n);
    for round in 0..n {
        let pause = rand::random_range(0..refresh_ms);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let t0 = Instant::now();
        dns.set(&[a_ip, b_ip, c_ip]);
        let c = Node::start(cfg("c", c_ip)).await.expect("c");
        wait("a and b to see c", || {
            sees(&a, &[c_ip]) && sees(&b, &[c_ip])
        })
        .await;
        let seen = t0.elapsed();
        let mut each: [Option<f64>; 2] = [None, None];
        wait("c to see a and b", || {
            for (slot, peer) in each.iter_mut().zip([a_ip, b_ip]) {
                if slot.is_none() && sees(&c, &[peer]) {
                    *slot = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            each.iter().all(Option::is_some)
        })
        .await;
        let each = each.map(|t| t.unwrap_or_default());
        let mutual = each[0].max(each[1]);
        let seen = seen.as_secs_f64() * 1e3;
        eprintln!(
            "refresh {refresh_ms} ms, round {round}: seen {seen:.0} ms, c sees a {:.0} ms, b {:.0} ms",
            each[0], each[1]
        );
        out.push((seen, each, mutual));
        dns.set(&[a_ip, b_ip]);
        let c_id = c.id();
        c.shutdown().await;
        wait("a and b to drop c and its record", || {
            [&a, &b].iter().all(|n| {
                n.members().iter().all(|m| m.id != c_id)
                    && n.metrics().dns_targets.load(Ordering::Relaxed) == 1
            })
        })
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
    out
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("discovery bench: --refresh-ms 1000,5000 --rounds 10");
        return;
    }
    let refreshes: Vec<u64> = arg(&args, "--refresh-ms")
        .unwrap_or_else(|| "1000,5000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--refresh-ms: numbers"))
        .collect();
    let n: usize = arg(&args, "--rounds").map_or(10, |s| s.parse().expect("--rounds: a number"));
    let Some(bin) = dnsmasq::binary() else {
        eprintln!("dnsmasq is not installed (scripts/setup.sh installs dnsmasq-base)");
        std::process::exit(1);
    };
    println!(
        "machine: {} ({} CPUs); heartbeats every 500 ms; {n} rounds per setting",
        measure::cpu_model(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for refresh in refreshes {
        let r = rt.block_on(rounds(&bin, refresh, n));
        let seen = Stat::of(&r.iter().map(|x| x.0).collect::<Vec<_>>());
        let each = Stat::of(&r.iter().flat_map(|x| x.1).collect::<Vec<_>>());
        let mutual = Stat::of(&r.iter().map(|x| x.2).collect::<Vec<_>>());
        println!(
            "dns_refresh_ms {refresh}: new node seen by the cluster {} ms; new node sees a peer {} ms; sees both {} ms (median (min–max))",
            seen.show(0),
            each.show(0),
            mutual.show(0)
        );
    }
}
