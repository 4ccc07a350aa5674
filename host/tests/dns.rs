//! DNS discovery (`membership.kind = "dns"`) against a real dnsmasq on
//! loopback whose records change while the nodes run: members follow the
//! records, and a failing DNS server leaves the last good list in place.
//!
//! Nodes listen on 127.0.0.2, .3 and .4 at one port (as pods behind a
//! headless Service do), so the name's A records are the whole member list.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;

use common::dnsmasq::{self, Dnsmasq};
use common::wait_for;
use shoal::{Config, Metrics, Node};

const NAME: &str = "peers.shoal.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A port free on 127.0.0.2 (nodes bind it on .2, .3 and .4: other tests
/// use 127.0.0.1, so nothing else races for it there).
fn shared_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.2")
        .port()
}

/// A node config as a user writes it, through the real parser.
fn dns_node(name: &str, addr: IpAddr, port: u16, dns: SocketAddr) -> Config {
    let text = format!(
        "[node]\nname = \"{name}\"\ndomain = \"test\"\n\
         [membership]\nkind = \"dns\"\ndns_name = \"{NAME}\"\ndns_server = \"{dns}\"\n\
         dns_refresh_ms = 250\nfrequency_ms = 250\ndrop_time_ms = 3000\n\
         [receiver]\naddress = \"{addr}\"\nport = {port}\nauto_bind = 1\n\
         [api]\nlisten = \"off\"\n[session]\nenabled = false\n[plugins]\ndefault_chain = false\n"
    );
    Config::parse(&text, Path::new("dns-test.toml")).expect("valid DNS config")
}

fn seen(node: &Node) -> HashSet<IpAddr> {
    node.members().iter().map(|m| m.id.host).collect()
}

async fn wait_sees(node: &Node, who: &str, want: &[IpAddr]) {
    let want: HashSet<IpAddr> = want.iter().copied().collect();
    wait_for(&format!("{who} to see exactly {want:?}"), || async {
        (seen(node) == want).then_some(())
    })
    .await;
}

async fn wait_gone(node: &Node, who: &str, gone: &Node, reason: &str) {
    let id = gone.id().unique_hex();
    let ev = wait_for(&format!("{who} to drop {}", gone.id().host), || async {
        node.channel()
            .recent_events()
            .into_iter()
            .find(|e| e.kind == "disappeared" && e.id == id)
    })
    .await;
    assert_eq!(ev.reason.as_deref(), Some(reason), "{who}: {ev:?}");
}

/// shoal's log in the test's captured output (shown when a test fails);
/// `SHOAL_LOG` sets the filter (default `info`).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

fn targets(node: &Node) -> i64 {
    node.metrics().dns_targets.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_follow_the_dns_records() {
    let Some(bin) = dnsmasq::binary_or_skip("members_follow_the_dns_records") else {
        return;
    };
    init_tracing();
    let (a_ip, b_ip, c_ip) = (ip(2), ip(3), ip(4));
    let mut dns = Dnsmasq::start(&bin, "follow", NAME, &[a_ip, b_ip]);
    let port = shared_port();
    let a = Node::start(dns_node("a", a_ip, port, dns.addr()))
        .await
        .expect("a starts");
    let b = Node::start(dns_node("b", b_ip, port, dns.addr()))
        .await
        .expect("b starts");
    let c = Node::start(dns_node("c", c_ip, port, dns.addr()))
        .await
        .expect("c starts");

    // C is not in DNS: it heartbeats to A and B (they resolve), so they see
    // it, but nobody heartbeats to C.
    wait_sees(&a, "a", &[b_ip, c_ip]).await;
    wait_sees(&b, "b", &[a_ip, c_ip]).await;
    assert!(
        seen(&c).is_empty(),
        "c is in no one's DNS answer, so no one sends it heartbeats: {:?}",
        seen(&c)
    );
    assert_eq!((targets(&a), targets(&c)), (1, 2), "own address skipped");

    // C's record appears: A and B pick it up at their next lookup.
    dns.set(&[a_ip, b_ip, c_ip]);
    wait_sees(&c, "c", &[a_ip, b_ip]).await;
    assert_eq!(seen(&a), HashSet::from([b_ip, c_ip]));
    assert_eq!(seen(&b), HashSet::from([a_ip, c_ip]));
    assert_eq!(targets(&a), 2);

    // C's record goes: A and B stop sending to it, so C expires them; C
    // still resolves A and B and keeps sending, so they keep seeing C.
    dns.set(&[a_ip, b_ip]);
    wait_gone(&c, "c", &a, "expired").await;
    wait_gone(&c, "c", &b, "expired").await;
    assert!(seen(&a).contains(&c_ip) && seen(&b).contains(&c_ip));
    assert_eq!(targets(&a), 1);

    // C stops: A and B drop it.
    let c_gone = c.id();
    c.shutdown().await;
    for (n, who) in [(&a, "a"), (&b, "b")] {
        wait_for(&format!("{who} to drop c"), || async {
            n.members().iter().all(|m| m.id != c_gone).then_some(())
        })
        .await;
    }
    assert_eq!(seen(&a), HashSet::from([b_ip]));
    assert_eq!(seen(&b), HashSet::from([a_ip]));
    assert!(
        Metrics::get(&a.metrics().dns_lookups_total) >= 3,
        "lookups are counted"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_outage_keeps_the_last_good_list() {
    let Some(bin) = dnsmasq::binary_or_skip("a_dns_outage_keeps_the_last_good_list") else {
        return;
    };
    init_tracing();
    // Own addresses (.5, .6), so this test runs beside the other one.
    let (a_ip, b_ip) = (ip(5), ip(6));
    let dns = Dnsmasq::start(&bin, "outage", NAME, &[a_ip, b_ip]);
    let server = dns.addr();
    let port = shared_port();
    let a = Node::start(dns_node("a", a_ip, port, server))
        .await
        .expect("a starts");
    let b = Node::start(dns_node("b", b_ip, port, server))
        .await
        .expect("b starts");
    wait_sees(&a, "a", &[b_ip]).await;
    wait_sees(&b, "b", &[a_ip]).await;
    let failures = |n: &Node| Metrics::get(&n.metrics().dns_lookup_failures_total);
    assert_eq!(failures(&a), 0);

    // The server goes away: lookups fail, are counted, and heartbeats go on
    // to the last good list.
    drop(dns);
    wait_for("a's lookups to fail", || async {
        (failures(&a) >= 1).then_some(())
    })
    .await;
    let sent = Metrics::get(&a.metrics().heartbeats_sent_total);
    wait_for(
        "three more failed lookups and heartbeats still sent",
        || async {
            (failures(&a) >= 4 && Metrics::get(&a.metrics().heartbeats_sent_total) >= sent + 4)
                .then_some(())
        },
    )
    .await;
    assert_eq!(targets(&a), 1, "the last good list is kept");
    assert_eq!(seen(&b), HashSet::from([a_ip]));
    assert_eq!(seen(&a), HashSet::from([b_ip]));
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn example_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dns");
    for n in ["a", "b", "c"] {
        let c = Config::load(&dir.join(format!("{n}.toml"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.membership.kind, shoal::config::MembershipKind::Dns);
        assert_eq!(c.membership.dns_name, NAME);
    }
}
