//! The cluster key (`[security] key_file`, issue 13 item 1): only nodes
//! with the key are heard; heartbeats cannot be replayed; frames are
//! sealed on the wire; keys roll without a restart.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use shoal::SendOptions;
use shoal::security::{KeyRing, Security};
use shoal::wire::{ChannelData, MemberPacket};

/// A directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "shoal-security-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// A new key file (as `shoal keygen` writes it): its path and key line.
    fn key(&self, name: &str) -> (PathBuf, String) {
        let path = self.0.join(name);
        let line = shoal::security::write_new_key_file(&path).expect("key file");
        (path, line)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rewrites a key file (mode 600 kept): the lines in order, first seals.
fn write_keys(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("rewrite key file");
}

fn keyed(mut c: shoal::Config, key: Option<&Path>) -> shoal::Config {
    c.plugins.default_chain = false;
    if let Some(k) = key {
        c.security.key_file = k.display().to_string();
        c.security.reload_ms = 100;
    }
    c
}

/// Starts a node from `c`, with the key file `key` (if any).
async fn start(c: Option<shoal::Config>, key: Option<&Path>) -> shoal::Node {
    shoal::Node::start(keyed(c.expect("a config"), key))
        .await
        .expect("the node starts")
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn sync_ack() -> SendOptions {
    SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_key_is_never_a_member_and_its_frames_are_dropped() {
    let dir = TempDir::new("nokey");
    let (key, _) = dir.key("cluster.key");
    let mut cfgs = static_configs(3).into_iter();
    let a = start(cfgs.next(), Some(&key)).await;
    let b = start(cfgs.next(), Some(&key)).await;
    let c = start(cfgs.next(), None).await;
    let got_a = collector(&a);
    let got_b = collector(&b);
    wait_for("a and b to see each other", || async {
        (a.members().iter().any(|m| m.id == b.id()) && b.members().iter().any(|m| m.id == a.id()))
            .then_some(())
    })
    .await;
    // c's heartbeats reach a and b and are refused, again and again.
    wait_for("a and b to refuse several of c's heartbeats", || async {
        (count(&a.metrics().auth_heartbeats_refused_total) >= 5
            && count(&b.metrics().auth_heartbeats_refused_total) >= 5)
            .then_some(())
    })
    .await;
    for n in [&a, &b] {
        assert!(
            n.members().iter().all(|m| m.id != c.id()),
            "a keyed node lists the node without the key"
        );
    }

    // Keyed traffic flows, acknowledged (sealed ACKs) after processing.
    a.channel()
        .send(&[b.id()], b"between keyed nodes", sync_ack())
        .await
        .expect("a keyed send with SYNC_ACK");
    assert_eq!(got_b.lock().expect("lock").len(), 1);

    // A plain Tribes frame (as c or a Tomcat would send it) with ACK
    // asked: refused and counted, the connection closed, no ACK,
    // nothing delivered.
    let mut sender = MemberPacket {
        alive_ms: 1,
        port: i32::from(c.id().port),
        secure_port: -1,
        udp_port: -1,
        host: MemberPacket::host_bytes(c.id().host),
        command: Bytes::new(),
        domain: Bytes::from_static(b"test"),
        unique_id: c.id().unique_id,
        payload: Bytes::new(),
    };
    sender.alive_ms = 2;
    let frame = ChannelData {
        options: SendOptions::USE_ACK | SendOptions::BYTE_MESSAGE,
        timestamp: 1,
        unique_id: Bytes::from_static(&[9; 16]),
        sender,
        message: Bytes::from_static(b"from a node without the key"),
    }
    .to_frame();
    let refused = count(&a.metrics().auth_frames_refused_total);
    let answer = tokio::task::spawn_blocking({
        let to = a.receiver_addr();
        move || {
            let mut s = TcpStream::connect(to).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(&frame).expect("write");
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back);
            back
        }
    })
    .await
    .expect("raw client");
    assert!(
        answer.is_empty(),
        "no ACK for an unauthenticated frame: {answer:?}"
    );
    assert_eq!(count(&a.metrics().auth_frames_refused_total), refused + 1);
    assert!(got_a.lock().expect("lock").is_empty(), "nothing delivered");

    // c's own channel cannot reach a either, if it lists a at all.
    if c.members().iter().any(|m| m.id == a.id()) {
        assert!(c.channel().send(&[a.id()], b"x", sync_ack()).await.is_err());
    }
    assert!(got_a.lock().expect("lock").is_empty(), "nothing delivered");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_heartbeat_replayed_later_is_refused() {
    let dir = TempDir::new("replay");
    let (key, _) = dir.key("cluster.key");
    // b also sends its heartbeats to a socket of the test's: the capture.
    let tap = UdpSocket::bind("127.0.0.1:0").expect("tap");
    tap.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut cfgs = static_configs(2);
    cfgs[1]
        .membership
        .members
        .push(tap.local_addr().expect("tap addr").to_string());
    let mut cfgs = cfgs.into_iter();
    let a = start(cfgs.next(), Some(&key)).await;
    let b = start(cfgs.next(), Some(&key)).await;
    wait_for("a to see b", || async {
        a.members().iter().any(|m| m.id == b.id()).then_some(())
    })
    .await;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tap.recv_from(&mut buf).expect("a heartbeat of b");
    let captured = buf[..n].to_vec();
    let replay = |to: SocketAddr| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.send_to(&captured, to).expect("replay");
    };

    // While b lives: a has heard later heartbeats, so this one is old.
    let replayed = || count(&a.metrics().auth_heartbeats_replayed_total);
    replay(a.receiver_addr());
    wait_for("a to refuse the replay", || async {
        (replayed() >= 1).then_some(())
    })
    .await;

    // b leaves; the replay must not bring it back.
    let b_id = b.id();
    b.shutdown().await;
    wait_for("a to drop b", || async {
        a.members().iter().all(|m| m.id != b_id).then_some(())
    })
    .await;
    let before = replayed();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        replay(a.receiver_addr());
        assert!(
            a.members().iter().all(|m| m.id != b_id),
            "a replayed heartbeat brought b back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replayed() >= before + 5, "each replay refused and counted");
    assert!(a.members().iter().all(|m| m.id != b_id));
    a.shutdown().await;
}

/// A member the test plays, holding the key: it announces a receiver of
/// its own, so the node sends it frames the test reads off the socket.
struct FakeMember {
    listener: TcpListener,
    id: shoal::MemberId,
    packet: MemberPacket,
    security: Security,
}

impl FakeMember {
    fn new(key: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let unique_id: [u8; 16] = rand::random();
        let packet = MemberPacket {
            alive_ms: 1_000,
            port: i32::from(port),
            secure_port: -1,
            udp_port: -1,
            host: MemberPacket::host_bytes("127.0.0.1".parse().expect("ip")),
            command: Bytes::new(),
            domain: Bytes::from_static(b"test"),
            unique_id,
            payload: Bytes::new(),
        };
        let id = shoal::MemberId {
            host: "127.0.0.1".parse().expect("ip"),
            port,
            unique_id,
        };
        let ring = KeyRing::load(key).expect("key");
        let security = Security::new(ring, Duration::from_secs(10), Arc::default());
        Self {
            listener,
            id,
            packet,
            security,
        }
    }

    /// One sealed heartbeat to `to`.
    fn heartbeat(&mut self, to: SocketAddr) {
        self.packet.alive_ms += 100;
        let mut buf = BytesMut::new();
        self.packet.encode(&mut buf);
        self.security.seal_heartbeat(&mut buf);
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.send_to(&buf, to).expect("heartbeat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_frames_carry_no_plaintext_on_the_wire() {
    let dir = TempDir::new("wire");
    let (key, _) = dir.key("cluster.key");
    let mut fake = FakeMember::new(&key);
    let mut cfg = keyed(static_configs(1).pop().expect("cfg"), Some(&key));
    cfg.membership
        .members
        .push(format!("127.0.0.1:{}", fake.id.port));
    let a = shoal::Node::start(cfg).await.expect("a");
    let fake_id = fake.id;
    // Bounded by attempts, not by a clock: 400 heartbeats, 50 ms apart.
    let mut heartbeats = 0;
    while !a.members().iter().any(|m| m.id == fake_id) {
        heartbeats += 1;
        if heartbeats > 400 {
            panic!("a never listed the fake member after {heartbeats} heartbeats");
        }
        fake.heartbeat(a.receiver_addr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const KNOWN: &[u8] = b"KNOWN-PLAINTEXT: the cart of user 42 holds 3 items";
    a.channel()
        .send(&[fake_id], KNOWN, SendOptions::BYTE_MESSAGE)
        .await
        .expect("send to the fake member");
    // Read what arrives on every connection a opened to the fake member
    // (its sender's, and perhaps a watch connection).
    fake.listener.set_nonblocking(true).expect("nonblocking");
    let mut wire = Vec::new();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut polls = 0;
    while !wire.windows(7).any(|w| w == b"TLF2003") {
        polls += 1;
        if polls > 2_000 {
            panic!("no frame arrived after {polls} polls 10 ms apart");
        }
        if let Ok((s, _)) = fake.listener.accept() {
            s.set_nonblocking(true).expect("nonblocking");
            conns.push(s);
        }
        for s in &mut conns {
            let mut chunk = [0u8; 4096];
            if let Ok(n) = s.read(&mut chunk) {
                wire.extend_from_slice(&chunk[..n]);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !wire.windows(15).any(|w| w == &KNOWN[..15]),
        "the plaintext is on the wire"
    );
    assert_eq!(&wire[..7], b"FLT2002");
    assert_eq!(&wire[11..15], b"SHF1", "the frame's data is sealed");
    // And it is the message: the key opens it.
    let len =
        usize::try_from(i32::from_be_bytes(wire[7..11].try_into().expect("len"))).expect("length");
    let data = Bytes::copy_from_slice(&wire[11..11 + len]);
    let plain = fake.security.open_frame(data).expect("the key opens it");
    let cd = ChannelData::decode(&plain).expect("a ChannelData inside");
    assert_eq!(cd.message.as_ref(), KNOWN);
    assert_eq!(cd.sender.unique_id, a.id().unique_id);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roll_without_a_restart() {
    let dir = TempDir::new("roll");
    let (key_a, old) = dir.key("a.key");
    let key_b = dir.0.join("b.key");
    std::fs::copy(&key_a, &key_b).expect("copy the key to b");
    let (spare, new) = dir.key("spare.key");
    let _ = std::fs::remove_file(spare);
    let mut cfgs = static_configs(3).into_iter();
    let a = start(cfgs.next(), Some(&key_a)).await;
    let b = start(cfgs.next(), Some(&key_b)).await;
    let got_b = collector(&b);
    wait_for("a and b to see each other", || async {
        (a.members().len() == 1 && b.members().len() == 1).then_some(())
    })
    .await;
    let mut sent = 0;
    let mut check = async |step: &str| {
        // Let both nodes read their files (reload_ms = 100), then send.
        tokio::time::sleep(Duration::from_millis(400)).await;
        a.channel()
            .send(&[b.id()], step.as_bytes(), sync_ack())
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        sent += 1;
        assert_eq!(got_b.lock().expect("lock").len(), sent, "{step}");
        assert_eq!(a.members().len(), 1, "{step}: a still sees b");
        assert_eq!(b.members().len(), 1, "{step}: b still sees a");
    };
    // 1. Every node accepts the new key; a seals with it at once.
    write_keys(&key_a, &[&new, &old]);
    write_keys(&key_b, &[&old, &new]);
    check("a seals with the new key, b with the old").await;
    // 2. b seals with the new key too.
    write_keys(&key_b, &[&new, &old]);
    check("both seal with the new key").await;
    // 3. The old key is removed.
    write_keys(&key_a, &[&new]);
    write_keys(&key_b, &[&new]);
    check("only the new key").await;
    let heard_from_a = count(&b.metrics().heartbeats_received_total);
    wait_for("b to hear a's heartbeats under the new key", || async {
        (count(&b.metrics().heartbeats_received_total) > heard_from_a + 2).then_some(())
    })
    .await;
    // A node still on the old key is no longer heard.
    let key_c = dir.0.join("c.key");
    write_keys(&key_c, &[&old]);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_c, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let refused = count(&a.metrics().auth_heartbeats_refused_total);
    let c = start(cfgs.next(), Some(&key_c)).await;
    wait_for("a to refuse c's heartbeats (old key)", || async {
        (count(&a.metrics().auth_heartbeats_refused_total) >= refused + 3).then_some(())
    })
    .await;
    assert!(a.members().iter().all(|m| m.id != c.id()));
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_key_file_others_can_read_stops_the_node_with_a_clear_error() {
    let dir = TempDir::new("mode");
    let (key, _) = dir.key("cluster.key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let cfg = keyed(static_configs(1).pop().expect("cfg"), Some(&key));
    let e = shoal::Node::start(cfg)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("security.key_file") && e.contains("chmod 600"),
        "{e}"
    );
}
