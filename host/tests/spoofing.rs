//! Membership without a cluster key still resists forged heartbeats: a
//! shutdown or refresh counts only from the address the member advertises,
//! and a flood of fake members is capped without stopping the node's own
//! heartbeats (issue 13, item 3).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use shoal::wire::{MemberPacket, SHUTDOWN_COMMAND};

/// Two static-list nodes on loopback, each seeing the other.
async fn pair_of_static_nodes() -> (shoal::Node, shoal::Node) {
    let mut cfgs = static_configs(2);
    for c in &mut cfgs {
        c.plugins.cache_dir = shoal::config::CacheDir::from(format!(
            "{}/component-cache",
            env!("CARGO_TARGET_TMPDIR")
        ));
    }
    let b = shoal::Node::start(cfgs.pop().expect("b")).await.expect("b");
    let a = shoal::Node::start(cfgs.pop().expect("a")).await.expect("a");
    wait_for("a and b to see each other", || async {
        (a.members().len() == 1 && b.members().len() == 1).then_some(())
    })
    .await;
    (a, b)
}

/// `node`'s member packet as its heartbeats carry it, with `command`.
fn packet_of(node: &shoal::Node, command: &'static [u8]) -> Vec<u8> {
    let id = node.id();
    let p = MemberPacket {
        alive_ms: 1_000,
        port: i32::from(id.port),
        secure_port: -1,
        udp_port: -1,
        host: MemberPacket::host_bytes(id.host),
        command: Bytes::from_static(command),
        domain: Bytes::from_static(b"test"),
        unique_id: id.unique_id,
        payload: Bytes::new(),
    };
    let mut buf = BytesMut::new();
    p.encode(&mut buf);
    buf.to_vec()
}

fn send_from(source: &str, to: SocketAddr, bytes: &[u8]) {
    let s = UdpSocket::bind(source).expect("bind the sender");
    s.send_to(bytes, to).expect("send");
}

fn shut_down_by(node: &shoal::Node, id: &shoal::MemberId) -> bool {
    node.channel()
        .recent_events()
        .iter()
        .any(|e| e.kind == "disappeared" && e.id == id.unique_hex())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_forged_from_another_address_does_not_evict_a_live_member() {
    let (a, b) = pair_of_static_nodes().await;
    // Static membership: a hears heartbeats on UDP at its receiver address.
    let a_udp = a.receiver_addr();
    let bye = packet_of(&b, SHUTDOWN_COMMAND);
    let refused = || a.metrics().heartbeats_refused_total.load(Ordering::Relaxed);

    send_from("127.0.0.2:0", a_udp, &bye);
    wait_for("a to refuse the forged shutdown", || async {
        (refused() >= 1).then_some(())
    })
    .await;
    assert!(!shut_down_by(&a, &b.id()), "b was not evicted");
    assert_eq!(a.members().len(), 1, "b is still a member");

    // The same bytes from the address b advertises are b's own shutdown:
    // that is what the check above kept out.
    send_from("127.0.0.1:0", a_udp, &bye);
    wait_for("a to honour b's shutdown from b's address", || async {
        shut_down_by(&a, &b.id()).then_some(())
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Where the fake members of the flood say they are.
const FAKE_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 99);

/// 10 000 fake members a second for two seconds: the table admits at most
/// `max_new_members_per_s` of them, and the node's own heartbeats go on (its
/// peer keeps hearing them and never drops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fake_members_does_not_stop_the_nodes_own_heartbeats() {
    let (a, b) = pair_of_static_nodes().await;
    let a_udp = a.receiver_addr();
    let heard_by_b = || {
        b.metrics()
            .heartbeats_received_total
            .load(Ordering::Relaxed)
    };
    let before = heard_by_b();
    let flood = tokio::task::spawn_blocking(move || {
        // From, and advertising, a loopback address nothing listens on: the
        // fakes' ports (20 000–39 999) overlap those the tests' nodes listen
        // on at 127.0.0.1, and a fake naming a live receiver there answers
        // the failure detector's probe (it flaked so, about once in 30).
        let s = UdpSocket::bind((FAKE_HOST, 0)).expect("bind");
        let start = Instant::now();
        let mut sent = 0u32;
        while sent < 20_000 {
            // 100 packets every 10 ms: 10 000 a second.
            for _ in 0..100 {
                let p = MemberPacket {
                    alive_ms: 1,
                    port: 20_000 + i32::try_from(sent % 40_000).expect("port"),
                    secure_port: -1,
                    udp_port: -1,
                    host: MemberPacket::host_bytes(FAKE_HOST.into()),
                    command: Bytes::new(),
                    domain: Bytes::from_static(b"test"),
                    unique_id: rand::random(),
                    payload: Bytes::new(),
                };
                let mut buf = BytesMut::new();
                p.encode(&mut buf);
                let _ = s.send_to(&buf, a_udp);
                sent += 1;
            }
            let due = Duration::from_millis(u64::from(sent / 10));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        start.elapsed()
    });
    let took = flood.await.expect("flood");
    eprintln!("sent 20 000 fake member packets in {took:?}");
    let refused = a.metrics().heartbeats_refused_total.load(Ordering::Relaxed);
    assert!(refused > 0, "the caps refused some of the flood");
    // a's heartbeats kept reaching b during the flood (one every 500 ms).
    let after = heard_by_b();
    assert!(
        after >= before + 2,
        "b heard {} heartbeats of a during a {took:?} flood",
        after - before
    );
    assert!(!shut_down_by(&b, &a.id()), "b never dropped a");
    assert!(
        a.members().iter().all(|m| m.id == b.id()),
        "no fake member passed the failure detector into a's view"
    );
    a.shutdown().await;
    b.shutdown().await;
}
