//! In-process clusters on loopback: discovery, delivery, ACK rules, bad peers.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::{ListenerError, Node, PeerError, ReceivedMessage, SendOptions};
use tokio::io::AsyncWriteExt;

async fn start_all(cfgs: Vec<shoal::Config>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for c in cfgs {
        nodes.push(Node::start(c).await.expect("node starts"));
    }
    nodes
}

async fn wait_converged(nodes: &[Node]) {
    let n = nodes.len();
    for node in nodes {
        wait_for("every node to see the others", || async {
            (node.members().len() == n - 1).then_some(())
        })
        .await;
    }
}

fn assert_sees_others(nodes: &[Node]) {
    for (i, node) in nodes.iter().enumerate() {
        let seen: HashSet<_> = node.members().iter().map(|m| m.id).collect();
        let expected: HashSet<_> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.id())
            .collect();
        assert_eq!(seen, expected, "node {i}'s view");
        for m in node.members() {
            assert_eq!(m.domain.as_ref(), b"test");
            assert_eq!(m.id.host.to_string(), "127.0.0.1");
            let other = nodes.iter().find(|n| n.id() == m.id).expect("a known node");
            assert_eq!(
                m.id.port,
                other.receiver_addr().port(),
                "advertised port is the receiver's"
            );
        }
    }
}

async fn shutdown_all(nodes: Vec<Node>) {
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_by_multicast() {
    require_loopback_multicast();
    let nodes = start_all(multicast_configs(3)).await;
    wait_converged(&nodes).await;
    assert_sees_others(&nodes);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_by_static_list() {
    let nodes = start_all(static_configs(3)).await;
    wait_converged(&nodes).await;
    assert_sees_others(&nodes);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_delivery_from_a_to_b_and_c() {
    let nodes = start_all(static_configs(3)).await;
    wait_converged(&nodes).await;
    let got_b = collector(&nodes[1]);
    let got_c = collector(&nodes[2]);
    let dests = [nodes[1].id(), nodes[2].id()];
    let variants = [
        ("ack", SendOptions::USE_ACK),
        (
            "sync-ack",
            SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
        ),
        ("async", SendOptions::ASYNCHRONOUS),
        (
            "async-ack",
            SendOptions::ASYNCHRONOUS | SendOptions::USE_ACK,
        ),
        ("none", SendOptions(0)),
    ];
    let mut expected = Vec::new();
    for (name, opts) in variants {
        for i in 0..20 {
            // vary sizes, including a body larger than one TCP segment
            let body: Vec<u8> = format!("{name}-{i}-")
                .bytes()
                .chain((0..i * 700).map(|x| x as u8))
                .collect();
            nodes[0]
                .channel()
                .send(&dests, &body, opts)
                .await
                .expect("send succeeds");
            expected.push((body, (opts | SendOptions::BYTE_MESSAGE).0));
        }
    }
    for got in [&got_b, &got_c] {
        wait_for("all messages to arrive", || async {
            (got.lock().expect("lock").len() >= expected.len()).then_some(())
        })
        .await;
        let msgs = got.lock().expect("lock").clone();
        assert_eq!(msgs.len(), expected.len(), "no duplicates");
        let mut received: Vec<(Vec<u8>, i32)> = msgs
            .iter()
            .map(|m| (m.body.to_vec(), m.options.0))
            .collect();
        let mut want = expected.clone();
        received.sort();
        want.sort();
        assert_eq!(received, want, "every message intact, with its options");
        assert!(msgs.iter().all(|m| m.sender.id == nodes[0].id()));
    }
    assert_eq!(
        shoal::Metrics::get(&nodes[0].metrics().send_failures_total),
        0
    );
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_listener_gives_fail_ack_only_with_sync_ack() {
    let nodes = start_all(static_configs(3)).await;
    wait_converged(&nodes).await;
    nodes[1]
        .channel()
        .add_listener(Arc::new(|m: &ReceivedMessage| {
            if m.body.as_ref() == b"refuse" {
                Err(ListenerError("refused by test".into()))
            } else {
                Ok(())
            }
        }));
    let dests = [nodes[1].id(), nodes[2].id()];
    let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let err = nodes[0]
        .channel()
        .send(&dests, b"refuse", sync)
        .await
        .expect_err("B fails");
    let shoal::ChannelSendError::Failed(e) = err else {
        panic!("expected a per-member failure, got {err:?}")
    };
    assert_eq!(e.faulty.len(), 1, "only B failed: {e}");
    assert_eq!(e.faulty[0].member, nodes[1].id());
    assert_eq!(e.faulty[0].error, PeerError::FailAck);
    assert_eq!(
        shoal::Metrics::get(&nodes[0].metrics().fail_acks_received_total),
        1
    );
    assert_eq!(
        shoal::Metrics::get(&nodes[1].metrics().fail_acks_sent_total),
        1
    );
    // The connection survives a FAIL-ACK: the next message goes through.
    nodes[0]
        .channel()
        .send(&dests, b"fine", sync)
        .await
        .expect("accepted");
    // With USE_ACK alone the ACK precedes delivery: the failure is not reported.
    nodes[0]
        .channel()
        .send(&dests, b"refuse", SendOptions::USE_ACK)
        .await
        .expect("async ack");
    shutdown_all(nodes).await;
}

/// Concurrent sync-ACK sends to one member share its pipelined connection
/// (written together, ACKs read together), yet each message gets its own
/// ACK: a FAIL-ACK fails only the message it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_sends_are_pipelined_and_each_gets_its_own_ack() {
    let nodes = start_all(static_configs(2)).await;
    wait_converged(&nodes).await;
    let got = collector(&nodes[1]);
    nodes[1]
        .channel()
        .add_listener(Arc::new(|m: &ReceivedMessage| {
            if m.body.starts_with(b"refuse") {
                Err(ListenerError("refused by test".into()))
            } else {
                Ok(())
            }
        }));
    let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let combined = || shoal::Metrics::get(&nodes[0].metrics().sync_sends_pipelined_total);
    let (mut sent, mut refused) = (0usize, 0u64);
    // Rounds of 64 concurrent sends until some were pipelined (bounded).
    for round in 0..10 {
        let sends = (0..64).map(|i| {
            let body = if i % 4 == 0 {
                format!("refuse-{round}-{i}")
            } else {
                format!("ok-{round}-{i}")
            };
            let channel = nodes[0].channel().clone();
            let dest = [nodes[1].id()];
            async move {
                let r = channel.send(&dest, body.as_bytes(), sync).await;
                (body, r)
            }
        });
        for (body, r) in futures_util::future::join_all(sends).await {
            if body.starts_with("refuse") {
                let Err(shoal::ChannelSendError::Failed(e)) = r else {
                    panic!("{body}: expected a FAIL-ACK, got {r:?}")
                };
                assert_eq!(e.faulty[0].error, PeerError::FailAck, "{body}");
                refused += 1;
            } else {
                r.unwrap_or_else(|e| panic!("{body}: {e}"));
            }
            sent += 1;
        }
        if combined() > 0 {
            break;
        }
    }
    assert!(combined() > 0, "no send went on the pipelined connection");
    assert_eq!(
        shoal::Metrics::get(&nodes[0].metrics().fail_acks_received_total),
        refused
    );
    let bodies: HashSet<Vec<u8>> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|m| m.body.to_vec())
        .collect();
    assert_eq!(bodies.len(), sent, "every message delivered once");
    assert_eq!(got.lock().expect("lock").len(), sent, "no duplicates");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_member_is_reported_and_others_still_get_the_message() {
    let nodes = start_all(static_configs(2)).await;
    wait_converged(&nodes).await;
    let got = collector(&nodes[1]);
    let ghost = shoal::MemberId {
        host: "127.0.0.1".parse().expect("ip"),
        port: free_port(),
        unique_id: [7; 16],
    };
    let err = nodes[0]
        .channel()
        .send(&[nodes[1].id(), ghost], b"hello", SendOptions::USE_ACK)
        .await
        .expect_err("ghost fails");
    let shoal::ChannelSendError::Failed(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.faulty.len(), 1);
    assert_eq!(e.faulty[0].member, ghost);
    assert!(
        matches!(e.faulty[0].error, PeerError::Connect(_)),
        "{:?}",
        e.faulty[0].error
    );
    // one reconnect attempt (maxRetryAttempts = 1)
    assert_eq!(
        shoal::Metrics::get(&nodes[0].metrics().send_retries_total),
        1
    );
    wait_for("B to get it", || async {
        (got.lock().expect("lock").len() == 1).then_some(())
    })
    .await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalled_peers_do_not_disturb_good_peers() {
    let mut cfgs = static_configs(2);
    cfgs[1].receiver.stall_timeout_ms = 300;
    cfgs[1].receiver.max_frame_bytes = 64 * 1024;
    let nodes = start_all(cfgs).await;
    wait_converged(&nodes).await;
    let got = collector(&nodes[1]);
    let b_addr = nodes[1].receiver_addr();
    let dest = [nodes[1].id()];
    let ack = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;

    // A good message before, then three bad peers, then good messages again.
    nodes[0]
        .channel()
        .send(&dest, b"before", ack)
        .await
        .expect("delivered");
    let bad_peer = |bytes: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(b_addr)
            .await
            .expect("connect");
        s.write_all(bytes).await.expect("write");
        s
    };
    let garbage = bad_peer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let oversized = bad_peer(b"FLT2002\x7f\xff\xff\xff").await;
    let stalled = bad_peer(b"FLT2002\x00\x00\x01\x00partial").await;
    let bad_inner = bad_peer(b"FLT2002\x00\x00\x00\x04\xff\xff\xff\xffTLF2003").await;

    for i in 0..50 {
        nodes[0]
            .channel()
            .send(&dest, format!("after-{i}").as_bytes(), ack)
            .await
            .expect("delivered");
    }
    let m = nodes[1].metrics();
    wait_for("three malformed connections to be dropped", || async {
        (shoal::Metrics::get(&m.bad_frames_total) == 3).then_some(())
    })
    .await;
    wait_for("the stalled connection to be dropped", || async {
        (shoal::Metrics::get(&m.stalled_connections_total) == 1).then_some(())
    })
    .await;
    // The bad peers' connections are closed by B: reads see end of stream.
    for mut s in [garbage, oversized, stalled, bad_inner] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("closed by B")
        .unwrap_or(0);
        assert_eq!(n, 0, "no reply to a bad peer");
    }
    nodes[0]
        .channel()
        .send(&dest, b"last", ack)
        .await
        .expect("still delivered");
    let bodies: Vec<Bytes> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(bodies.len(), 52);
    assert_eq!(bodies[0].as_ref(), b"before");
    assert_eq!(bodies[51].as_ref(), b"last");
    // Besides the 52, B received the TcpFailureDetector probes A's default
    // chain sent it (swallowed by B's detector, never delivered).
    let probes = plugin_counter(
        &nodes[1],
        "tcp-failure-detector",
        "probe_messages_swallowed",
    );
    assert_eq!(shoal::Metrics::get(&m.messages_received_total), 52 + probes);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_is_seen_as_shutdown_not_expiry() {
    let nodes = start_all(static_configs(3)).await;
    wait_converged(&nodes).await;
    let mut nodes = nodes;
    let c = nodes.pop().expect("three nodes");
    stop_and_see_it_announced(c, &nodes).await;
    shutdown_all(nodes).await;
}

/// Stops `gone` gracefully; every one of `others` sees it leave by its
/// announcement (reason "shutdown"), not by expiry, and no longer lists it.
async fn stop_and_see_it_announced(gone: Node, others: &[Node]) {
    let id = gone.id();
    gone.shutdown().await;
    for n in others {
        let ev = wait_for("the departure", || async {
            n.channel()
                .recent_events()
                .into_iter()
                .find(|e| e.kind == "disappeared" && e.id == id.unique_hex())
        })
        .await;
        assert_eq!(
            ev.reason.as_deref(),
            Some("shutdown"),
            "announced, not expired"
        );
        assert!(n.members().iter().all(|m| m.id != id));
    }
}

/// A node that hears heartbeats faster than `receive_batch_ms` reads them
/// in batches (its socket out of the reactor in between) and still follows
/// the group: every member seen, a graceful stop seen as a shutdown, not an
/// expiry. A node with batching off never batches, nor one whose chain
/// reads heartbeat arrival times (phi accrual).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_heartbeats_are_read_in_batches_and_membership_still_follows() {
    require_loopback_multicast();
    let mut cfgs = multicast_configs(5);
    for (i, c) in cfgs.iter_mut().enumerate() {
        // 5 nodes at 10 heartbeats a second: 50 datagrams a second each
        // (its own included), 20 ms apart on average.
        c.membership.frequency_ms = 100;
        c.membership.drop_time_ms = 3000;
        c.membership.receive_batch_ms = Some(if i == 3 { 0 } else { 50 });
    }
    cfgs[4].plugins.default_chain = false;
    cfgs[4].interceptors = vec![interceptor("phi-accrual-detector", None, false, &[])];
    let nodes = start_all(cfgs).await;
    wait_converged(&nodes).await;
    assert_sees_others(&nodes);
    let batches = |n: &Node| shoal::Metrics::get(&n.metrics().membership_batches_total);
    for n in &nodes[..3] {
        wait_for("a node to read in batches", || async {
            (batches(n) >= 5).then_some(())
        })
        .await;
    }
    assert_eq!(batches(&nodes[3]), 0, "batching off: never batches");
    assert_eq!(batches(&nodes[4]), 0, "phi accrual: never batches");
    let mut nodes = nodes;
    let gone = nodes.remove(1);
    stop_and_see_it_announced(gone, &nodes).await;
    assert_sees_others(&nodes);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_queue_full_without_always_send_is_refused() {
    let mut cfgs = static_configs(2);
    cfgs[0].dispatch.max_queue_size = 1; // nothing fits
    cfgs[0].dispatch.always_send = false;
    cfgs[1].dispatch.max_queue_size = 1; // always_send on (default): sent in the caller
    let nodes = start_all(cfgs).await;
    wait_converged(&nodes).await;
    let got_a = collector(&nodes[0]);
    let err = nodes[0]
        .channel()
        .send(&[nodes[1].id()], b"x", SendOptions::ASYNCHRONOUS)
        .await
        .expect_err("full");
    assert!(
        matches!(
            err,
            shoal::ChannelSendError::Queue(shoal::EnqueueError::QueueFull { .. })
        ),
        "{err:?}"
    );
    nodes[1]
        .channel()
        .send(&[nodes[0].id()], b"y", SendOptions::ASYNCHRONOUS)
        .await
        .expect("sent in caller");
    assert_eq!(
        shoal::Metrics::get(&nodes[1].metrics().async_queue_overflow_sync_total),
        1
    );
    wait_for("A to get y", || async {
        (got_a.lock().expect("lock").len() == 1).then_some(())
    })
    .await;
    shutdown_all(nodes).await;
}

/// Regression (found by the side-by-side benchmark): many small frames in one
/// burst must all be delivered, not left in the buffer until the stall timer
/// drops the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pipelined_frames_is_delivered_whole() {
    let mut cfgs = static_configs(2);
    cfgs[1].receiver.stall_timeout_ms = 300;
    let nodes = start_all(cfgs).await;
    wait_converged(&nodes).await;
    let got = collector(&nodes[1]);
    // 1000 frames of ~150 bytes written at once, from A's identity.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let cd = shoal::wire::ChannelData {
            options: SendOptions::BYTE_MESSAGE,
            timestamp: 0,
            // Each message its own id, as every sender gives (one id sent
            // twice is a resend, delivered once).
            unique_id: Bytes::copy_from_slice(&u128::from(i).to_be_bytes()),
            sender: nodes[0].channel().local_packet().clone(),
            message: Bytes::from(i.to_be_bytes().to_vec()),
        };
        burst.extend_from_slice(&cd.to_frame());
    }
    let mut s = tokio::net::TcpStream::connect(nodes[1].receiver_addr())
        .await
        .expect("connect");
    s.write_all(&burst).await.expect("write");
    // The connection stays open and silent: everything must arrive anyway.
    wait_for("all 1000 messages", || async {
        (got.lock().expect("lock").len() == 1000).then_some(())
    })
    .await;
    let bodies: Vec<Bytes> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|m| m.body.clone())
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(b.as_ref(), &(i as u32).to_be_bytes(), "in order, intact");
    }
    assert_eq!(
        shoal::Metrics::get(&nodes[1].metrics().stalled_connections_total),
        0
    );
    drop(s);
    shutdown_all(nodes).await;
}

/// Receiver bounds (issue 13, item 5): a thousand idle connections from one
/// address, a peer that trickles a frame in one byte at a time (each byte
/// well within the stall timeout, the frame not), and headers claiming the
/// largest frame do not lock a real peer out or reserve what they claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_slow_loris_and_big_claims_do_not_lock_out_a_real_peer() {
    let mut cfgs = static_configs(2);
    cfgs[1].receiver.stall_timeout_ms = 1000;
    cfgs[1].receiver.max_connections_per_address = 100;
    let nodes = start_all(cfgs).await;
    wait_converged(&nodes).await;
    let b_addr = nodes[1].receiver_addr();
    let dest = [nodes[1].id()];
    let ack = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let m = nodes[1].metrics();
    let got = collector(&nodes[1]);

    // 1 000 idle connections from 127.0.0.2.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
        if let Ok(c) = s.connect(b_addr).await {
            idle.push(c);
        }
    }
    wait_for(
        "the connections beyond the per-address cap to be refused",
        || async {
            (shoal::Metrics::get(&m.refused_connections_per_address_total) >= 900).then_some(())
        },
    )
    .await;

    // Headers claiming 16 MiB frames, from 50 connections: nothing is
    // reserved for the claim.
    let mut claims = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(b_addr)
            .await
            .expect("connect");
        s.write_all(b"FLT2002\x00\xff\xff\xf0")
            .await
            .expect("write");
        claims.push(s);
    }
    // A slow loris: a frame header, then one byte every 200 ms.
    let mut loris = tokio::net::TcpStream::connect(b_addr)
        .await
        .expect("connect");
    loris
        .write_all(b"FLT2002\x00\x00\x01\x00")
        .await
        .expect("write");
    let loris_task = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if loris.write_all(b"x").await.is_err() {
                return true; // closed by B
            }
        }
        false
    });

    for i in 0..20 {
        nodes[0]
            .channel()
            .send(&dest, format!("real-{i}").as_bytes(), ack)
            .await
            .expect("the real peer is served");
    }
    let buffered = m
        .receiver_buffer_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        buffered < 16 << 20,
        "50 claims of 16 MiB reserved {buffered} bytes"
    );
    assert!(
        loris_task.await.expect("loris"),
        "the trickling peer is disconnected"
    );
    assert!(shoal::Metrics::get(&m.stalled_connections_total) >= 1);
    assert_eq!(got.lock().expect("lock").len(), 20);
    drop((idle, claims));
    shutdown_all(nodes).await;
}

/// A message sent again after its connection broke (the sender never saw
/// the ACK) is delivered once and acknowledged both times (issue 13, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_resent_on_a_new_connection_is_delivered_once() {
    use shoal::wire::{MemberPacket, encode_message_frame};
    use tokio::io::AsyncReadExt;
    let nodes = start_all(static_configs(2)).await;
    wait_converged(&nodes).await;
    let got = collector(&nodes[1]);
    let a = nodes[0].id();
    let packet = MemberPacket {
        alive_ms: 1,
        port: i32::from(a.port),
        secure_port: -1,
        udp_port: -1,
        host: MemberPacket::host_bytes(a.host),
        command: Bytes::new(),
        domain: Bytes::from_static(b"test"),
        unique_id: a.unique_id,
        payload: Bytes::new(),
    };
    let mut address = bytes::BytesMut::new();
    packet.encode(&mut address);
    let mut frame = bytes::BytesMut::new();
    let id: [u8; 16] = rand::random();
    let opts = SendOptions::BYTE_MESSAGE | SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    encode_message_frame(&mut frame, opts, 1, &id, &address, b"once");
    for attempt in 0..2 {
        let mut s = tokio::net::TcpStream::connect(nodes[1].receiver_addr())
            .await
            .expect("connect");
        s.write_all(&frame).await.expect("write");
        let mut ack = [0u8; 21];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack))
            .await
            .expect("an answer")
            .expect("read");
        assert_eq!(
            &ack,
            shoal::wire::AckKind::Ack.frame(),
            "attempt {attempt} is acknowledged"
        );
    }
    let bodies: Vec<Bytes> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(bodies, vec![Bytes::from_static(b"once")], "delivered once");
    assert_eq!(
        shoal::Metrics::get(&nodes[1].metrics().duplicates_dropped_total),
        1
    );
    shutdown_all(nodes).await;
}

/// A peer that sends acknowledged messages but never reads its ACKs fills
/// the receiver's send buffer: the ACK write blocks. Shutdown still ends,
/// at the receiver's stop deadline (issue 13, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_does_not_hang_shutdown() {
    use shoal::wire::encode_message_frame;
    let mut nodes = start_all(static_configs(2)).await;
    wait_converged(&nodes).await;
    let b = nodes.pop().expect("b");
    let address = nodes[0].channel().local_packet().clone();
    let mut addr_bytes = bytes::BytesMut::new();
    address.encode(&mut addr_bytes);
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut s = sock.connect(b.receiver_addr()).await.expect("connect");
    // Write acknowledged frames, never reading, until writing stalls: then
    // B is stuck writing ACKs nobody reads.
    let mut stalled = false;
    for i in 0..2_000_000u64 {
        let mut frame = bytes::BytesMut::new();
        let id = u128::from(i).to_be_bytes();
        encode_message_frame(&mut frame, SendOptions::USE_ACK, 1, &id, &addr_bytes, b"x");
        if tokio::time::timeout(Duration::from_secs(1), s.write_all(&frame))
            .await
            .is_err()
        {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the receiver never stopped reading");
    let done = tokio::spawn(b.shutdown());
    wait_for("B's shutdown to end despite the peer", || async {
        done.is_finished().then_some(())
    })
    .await;
    drop(s);
    shutdown_all(nodes).await;
}
