//! The interceptor chain as WebAssembly components: order, verdicts,
//! settings, isolation (traps, runaway loops, unbounded allocation), the
//! built-in throughput, domain-filter and tcp-failure-detector, and load
//! errors.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use shoal::config::InterceptorConfig;
use shoal::plugins::FailureKind;
use shoal::{ChannelSendError, Node, ReceivedMessage, SendOptions, StartError};

const SYNC: SendOptions = SendOptions(SendOptions::USE_ACK.0 | SendOptions::SYNCHRONIZED_ACK.0);

fn bodies(got: &Arc<Mutex<Vec<ReceivedMessage>>>) -> Vec<Vec<u8>> {
    got.lock()
        .expect("lock")
        .iter()
        .map(|m| m.body.to_vec())
        .collect()
}

async fn shutdown(nodes: Vec<Node>) {
    for n in nodes {
        n.shutdown().await;
    }
}

fn failures(node: &Node, plugin: &str, kind: FailureKind) -> u64 {
    let chain = node.channel().chain();
    let ic = chain
        .interceptors()
        .iter()
        .find(|i| i.name() == plugin)
        .expect("plugin in chain")
        .clone();
    ic.shared().failures_of(kind)
}

fn testkit(name: &str, fail_closed: bool, settings: &[(&str, &str)]) -> InterceptorConfig {
    interceptor(name, Some(&guest("testkit")), fail_closed, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_order_is_an_onion() {
    let chain = || {
        vec![
            testkit("top", false, &[("mode", "tag"), ("tag", "T")]),
            testkit("bottom", false, &[("mode", "tag"), ("tag", "B")]),
        ]
    };
    let nodes = pair([chain(), chain()], |_| {}).await;
    let got = collector(&nodes[1]);
    nodes[0]
        .channel()
        .send(&[nodes[1].id()], b"x", SYNC)
        .await
        .expect("sent");
    // send: top then bottom ("xTB"); receive: bottom then top ("xTBBT")
    assert_eq!(bodies(&got), vec![b"xTBBT".to_vec()]);
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verdict() {
    let verdict = |v: &str| vec![testkit("v", false, &[("mode", "verdict"), ("verdict", v)])];
    // drop on send: the caller is told which plug-in and why
    let nodes = pair([verdict("drop"), vec![]], |_| {}).await;
    let got = collector(&nodes[1]);
    let err = nodes[0]
        .channel()
        .send(&[nodes[1].id()], b"a", SYNC)
        .await
        .expect_err("dropped");
    assert!(
        matches!(&err, ChannelSendError::Dropped { plugin, reason } if plugin == "v" && reason.contains("testkit")),
        "{err:?}"
    );
    // drop on receive: never delivered; a sender that asked for a
    // synchronized ACK gets a FAIL-ACK (it learns the message was refused),
    // one that asked for a plain ACK gets the ACK (Tribes acknowledges
    // receipt before delivery)
    let got_a = collector(&nodes[0]);
    let err = nodes[1]
        .channel()
        .send(&[nodes[0].id()], b"b", SYNC)
        .await
        .expect_err("refused on receive");
    assert!(format!("{err:?}").contains("FailAck"), "{err:?}");
    nodes[1]
        .channel()
        .send(&[nodes[0].id()], b"c", SendOptions::USE_ACK)
        .await
        .expect("acked");
    assert!(bodies(&got_a).is_empty());
    assert!(bodies(&got).is_empty());
    shutdown(nodes).await;

    // modify on both sides
    let nodes = pair([verdict("modify"), verdict("pass")], |_| {}).await;
    let got = collector(&nodes[1]);
    nodes[0]
        .channel()
        .send(&[nodes[1].id()], b"original", SYNC)
        .await
        .expect("sent");
    assert_eq!(bodies(&got), vec![b"modified".to_vec()]);
    shutdown(nodes).await;

    // defer on send and on receive: queued, delivered later
    let nodes = pair([verdict("defer"), verdict("defer")], |_| {}).await;
    let got = collector(&nodes[1]);
    for i in 0..20u8 {
        nodes[0]
            .channel()
            .send(&[nodes[1].id()], &[i], SYNC)
            .await
            .expect("queued");
    }
    wait_for("deferred messages", || async {
        (got.lock().expect("lock").len() == 20).then_some(())
    })
    .await;
    let mut b = bodies(&got);
    b.sort();
    assert_eq!(b, (0..20u8).map(|i| vec![i]).collect::<Vec<_>>());
    let chain = nodes[0].channel().chain();
    assert_eq!(
        chain.interceptors()[0]
            .shared()
            .defers
            .load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    shutdown(nodes).await;
}

/// Deliveries a plug-in deferred on receive are waited for when the node
/// shuts down (bounded by the drain deadline), not cut off: a slow listener
/// still gets every message it was handed.
// Enough workers that the listener's blocked ones never hold up the
// receiving connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn shutdown_waits_for_deferred_deliveries() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let verdict = |v: &str| vec![testkit("v", false, &[("mode", "verdict"), ("verdict", v)])];
    let nodes = pair([verdict("pass"), verdict("defer")], |_| {}).await;
    let done = Arc::new(AtomicUsize::new(0));
    let one_at_a_time = Arc::new(Mutex::new(()));
    let d = done.clone();
    nodes[1]
        .channel()
        .add_listener(Arc::new(move |_: &ReceivedMessage| {
            // A slow listener (a database write, say), one at a time.
            let _turn = one_at_a_time.lock().expect("lock");
            std::thread::sleep(std::time::Duration::from_millis(300));
            d.fetch_add(1, Ordering::SeqCst);
            Ok::<(), shoal::ListenerError>(())
        }));
    const N: usize = 3;
    for i in 0..N {
        nodes[0]
            .channel()
            .send(&[nodes[1].id()], &[i as u8], SYNC)
            .await
            .expect("acknowledged once deferred");
    }
    // The sends returned once the deliveries were deferred; b shuts down
    // while its listener is still busy with them.
    let mut nodes = nodes;
    let b = nodes.pop().expect("b");
    // Usually some deliveries are still running here (1 of 3 done at
    // most); on a loaded machine they may all have finished, and then
    // this checks nothing more than that shutdown loses none.
    b.shutdown().await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        N,
        "every deferred delivery finished before shutdown returned"
    );
    shutdown(nodes).await;
}

/// A plug-in's message filter (options bits, size bound) decides which
/// messages reach its hooks, one by one and in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_filter_picks_what_a_guest_sees() {
    let async_only = testkit(
        "async-only",
        false,
        &[("mode", "tag"), ("tag", "A"), ("only_options", "8")],
    );
    let small_only = testkit(
        "small-only",
        false,
        &[("mode", "tag"), ("tag", "S"), ("max_size", "4")],
    );
    let nodes = pair([vec![async_only], vec![small_only]], |_| {}).await;
    let got = collector(&nodes[1]);
    let to = [nodes[1].id()];
    let ch = nodes[0].channel();
    // one at a time (the flat hooks)
    ch.send(&to, b"x", SYNC).await.expect("sent");
    ch.send(&to, b"y", SYNC | SendOptions::ASYNCHRONOUS)
        .await
        .expect("sent");
    ch.send(&to, b"long", SYNC | SendOptions::ASYNCHRONOUS)
        .await
        .expect("sent");
    wait_for("three messages", || async {
        (got.lock().expect("lock").len() == 3).then_some(())
    })
    .await;
    let mut b = bodies(&got);
    b.sort();
    assert_eq!(b, vec![b"longA".to_vec(), b"xS".to_vec(), b"yAS".to_vec()]);

    // a batch: only the admitted messages are passed, the rest untouched
    use shoal::chain::{Flow, InMsg, OutMsg};
    let dests: Arc<[shoal::MemberId]> = vec![nodes[1].id()].into();
    let out = |body: &'static [u8], o: SendOptions| OutMsg {
        options: o | SendOptions::BYTE_MESSAGE,
        timestamp: 0,
        body: bytes::Bytes::from_static(body),
        dests: dests.clone(),
    };
    let mut msgs = vec![
        out(b"a", SYNC),
        out(b"b", SendOptions::ASYNCHRONOUS),
        out(b"c", SYNC),
        out(b"d", SendOptions::ASYNCHRONOUS),
    ];
    let mut flows = vec![Flow::Continue; msgs.len()];
    ch.chain().send_batch(0, &mut msgs, &mut flows).await;
    let sent: Vec<&[u8]> = msgs.iter().map(|m| &m.body[..]).collect();
    assert_eq!(sent, vec![&b"a"[..], b"bA", b"c", b"dA"]);

    let sender = nodes[1]
        .members()
        .into_iter()
        .next()
        .expect("node 0 in view");
    let inc = |body: &'static [u8]| InMsg {
        options: SYNC | SendOptions::BYTE_MESSAGE,
        timestamp: 0,
        sender: sender.clone(),
        unique_id: bytes::Bytes::from_static(&[0; 16]),
        body: bytes::Bytes::from_static(body),
    };
    let mut msgs = vec![inc(b"tiny"), inc(b"large"), inc(b"ok")];
    let mut flows = vec![Flow::Continue; msgs.len()];
    let chain = nodes[1].channel().chain();
    chain
        .receive_batch(chain.len(), &mut msgs, &mut flows)
        .await;
    let got: Vec<&[u8]> = msgs.iter().map(|m| &m.body[..]).collect();
    assert_eq!(got, vec![&b"tinyS"[..], b"large", b"okS"]);
    assert!(flows.iter().all(|f| *f == Flow::Continue));
    shutdown(nodes).await;
}

/// Message-dispatch: asynchronous sends are queued (by its defer rule,
/// without a call) while the queue is under `maxQueueSize`; past it, its
/// `on_send` decides: send in the caller (`alwaysSend`) or refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_dispatch_queues_until_its_bound_then_decides() {
    let defers = |n: &Node| {
        n.channel().chain().interceptors()[0]
            .shared()
            .defers
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let async_ack = SendOptions::ASYNCHRONOUS | SendOptions::USE_ACK;
    for (max, always, queued, refused) in [
        ("67108864", "false", true, false),
        ("0", "true", false, false),
        ("0", "false", false, true),
    ] {
        let d = interceptor(
            "message-dispatch",
            None,
            false,
            &[("maxQueueSize", max), ("alwaysSend", always)],
        );
        let nodes = pair([vec![d], vec![]], |_| {}).await;
        let got = collector(&nodes[1]);
        let to = [nodes[1].id()];
        let r = nodes[0].channel().send(&to, b"m", async_ack).await;
        if refused {
            let err = r.expect_err("refused");
            assert!(
                matches!(&err, ChannelSendError::Dropped { plugin, reason }
                    if plugin == "message-dispatch" && reason.contains("queue full")),
                "{err:?}"
            );
        } else {
            r.expect("sent or queued");
            wait_for("the message", || async {
                (got.lock().expect("lock").len() == 1).then_some(())
            })
            .await;
        }
        // a synchronous send is never the plug-in's business
        nodes[0]
            .channel()
            .send(&to, b"s", SYNC)
            .await
            .expect("sent");
        assert_eq!(
            defers(&nodes[0]),
            u64::from(queued),
            "max {max} always {always}"
        );
        shutdown(nodes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reach_the_guest() {
    let nodes = pair(
        [
            vec![testkit(
                "echo",
                false,
                &[("mode", "echo-settings"), ("a", "1"), ("b", "2.5")],
            )],
            vec![],
        ],
        |_| {},
    )
    .await;
    let chain = nodes[0].channel().chain();
    let stats = chain.interceptors()[0].guest_stats().await;
    let get = |k: &str| stats.iter().find(|s| s.0 == k).map(|s| s.1);
    assert_eq!(get("a"), Some(1.0));
    assert_eq!(get("b"), Some(2.5));
    assert_eq!(get("c"), None);
    shutdown(nodes).await;
}

/// A misbehaving guest follows its failure mode and the node keeps serving.
async fn misbehaving(mode: &str, kind: FailureKind) {
    for fail_closed in [false, true] {
        let chain = vec![testkit("bad", fail_closed, &[("mode", mode)])];
        // Only the looping guest needs a short deadline; the others get a
        // long one, so that a loaded machine (CI) cannot turn a trap or an
        // allocation failure into a timeout.
        let deadline_ms = if kind == FailureKind::Timeout {
            20
        } else {
            2000
        };
        let nodes = pair([chain, vec![]], |c| {
            c.plugins.memory_limit_mb = 8;
            c.plugins.call_deadline_ms = deadline_ms;
        })
        .await;
        let got = collector(&nodes[1]);
        for i in 0..3u8 {
            let r = nodes[0].channel().send(&[nodes[1].id()], &[i], SYNC).await;
            if fail_closed {
                assert!(
                    matches!(&r, Err(ChannelSendError::Dropped { plugin, .. }) if plugin == "bad"),
                    "{mode}: {r:?}"
                );
            } else {
                r.unwrap_or_else(|e| panic!("{mode} fail-open must pass: {e}"));
            }
        }
        let expected: Vec<Vec<u8>> = if fail_closed {
            vec![]
        } else {
            (0..3u8).map(|i| vec![i]).collect()
        };
        assert_eq!(bodies(&got), expected, "{mode}, fail_closed={fail_closed}");
        assert_eq!(
            failures(&nodes[0], "bad", kind),
            3,
            "{mode}: each call failed as {kind:?}"
        );
        // The node still serves: B → A goes through A's receive path (the
        // guest fails there too, and the failure mode applies). Fail-closed
        // drops the message, and B, which asked for a synchronized ACK,
        // learns it: a FAIL-ACK, not a false success.
        let got_a = collector(&nodes[0]);
        let r = nodes[1]
            .channel()
            .send(&[nodes[0].id()], b"back", SYNC)
            .await;
        if fail_closed {
            let e = r.expect_err("refused on receive: FAIL-ACK");
            assert!(format!("{e:?}").contains("FailAck"), "{mode}: {e:?}");
        } else {
            r.expect("A's receiver answers");
        }
        assert_eq!(bodies(&got_a).len(), usize::from(!fail_closed));
        shutdown(nodes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_guest_follows_failure_mode() {
    misbehaving("trap", FailureKind::Trap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_guest_is_interrupted() {
    misbehaving("loop", FailureKind::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_guest_hits_its_memory_cap() {
    misbehaving("alloc", FailureKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_stats_are_exact() {
    let chain = || {
        vec![interceptor(
            "throughput",
            None,
            false,
            &[("interval", "100")],
        )]
    };
    let nodes = pair([chain(), chain()], |_| {}).await;
    let got = collector(&nodes[1]);
    const N: u64 = 250;
    for i in 0..N {
        let opts = if i % 2 == 0 {
            SYNC
        } else {
            SendOptions::ASYNCHRONOUS
        };
        nodes[0]
            .channel()
            .send(&[nodes[1].id()], &[7u8; 100], opts)
            .await
            .expect("sent");
    }
    wait_for("all messages", || async {
        (got.lock().expect("lock").len() as u64 == N).then_some(())
    })
    .await;
    assert_eq!(plugin_counter(&nodes[0], "throughput", "tx_messages"), N);
    assert_eq!(plugin_counter(&nodes[0], "throughput", "tx_bytes"), N * 100);
    assert_eq!(plugin_counter(&nodes[1], "throughput", "rx_messages"), N);
    assert_eq!(plugin_counter(&nodes[1], "throughput", "rx_bytes"), N * 100);
    assert_eq!(plugin_counter(&nodes[0], "throughput", "rx_messages"), 0);
    // The host counts (`tally`) and calls the hooks only at each complete
    // interval of 100, where the plug-in reports: twice in 250 messages.
    // A call per message would report 250 times; none, never.
    assert_eq!(plugin_counter(&nodes[0], "throughput", "reports"), 2);
    assert_eq!(plugin_counter(&nodes[1], "throughput", "reports"), 2);
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_filter_drops_foreign_members_and_messages() {
    let mut cfgs = static_configs(3);
    for c in &mut cfgs {
        c.plugins.default_chain = false; // no failure-detector probes in the counts
    }
    cfgs[0].interceptors = vec![interceptor(
        "domain-filter",
        None,
        false,
        &[("domain", "blue")],
    )];
    cfgs[0].node.domain = "blue".into();
    cfgs[1].node.domain = "blue".into();
    cfgs[2].node.domain = "green".into();
    let mut nodes = Vec::new();
    for c in cfgs {
        nodes.push(Node::start(c).await.expect("start"));
    }
    // B and C see everyone; A sees B only.
    for n in &nodes[1..] {
        wait_for("B and C to see two members", || async {
            (n.members().len() == 2).then_some(())
        })
        .await;
    }
    wait_for("A to see B", || async {
        (nodes[0].members().len() == 1).then_some(())
    })
    .await;
    assert_eq!(nodes[0].members()[0].id, nodes[1].id());
    let got = collector(&nodes[0]);
    // Refused by A's filter: green asked for a synchronized ACK and learns it.
    let refused = nodes[2]
        .channel()
        .send(&[nodes[0].id()], b"from green", SYNC)
        .await
        .expect_err("refused");
    assert!(format!("{refused:?}").contains("FailAck"), "{refused:?}");
    nodes[1]
        .channel()
        .send(&[nodes[0].id()], b"from blue", SYNC)
        .await
        .expect("acknowledged");
    assert_eq!(bodies(&got), vec![b"from blue".to_vec()]);
    assert_eq!(
        plugin_counter(&nodes[0], "domain-filter", "foreign_messages_dropped"),
        1
    );
    assert_eq!(
        nodes[0].members().len(),
        1,
        "the green member never entered A's view"
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_are_refused_at_start_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("shoal-badwasm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").expect("write");
    // A valid, empty component: exports nothing, so not the interceptor world.
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\x00\x01\x00").expect("write");
    let missing = dir.join("missing.wasm");
    let cases: Vec<(InterceptorConfig, &str)> = vec![
        (interceptor("m", Some(&missing), false, &[]), "cannot read"),
        (
            interceptor("g", Some(&garbage), false, &[]),
            "not a valid WebAssembly component",
        ),
        (
            interceptor("e", Some(&empty), false, &[]),
            "does not implement the shoal:cluster@0.2.0 interceptor world",
        ),
        (
            testkit("f", false, &[("mode", "fail-create")]),
            "refuses to start",
        ),
    ];
    for (ic, want) in cases {
        let mut c = base_config("bad", 0);
        c.membership.kind = shoal::config::MembershipKind::Static;
        c.membership.members = vec!["127.0.0.1:1".into()];
        c.plugins.cache_dir = shoal::config::CacheDir::Off;
        c.interceptors = vec![ic.clone()];
        let err = Node::start(c).await.expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, StartError::Plugin(_)), "{msg}");
        assert!(msg.contains(want), "{msg}");
        assert!(
            msg.contains(&format!("`{}`", ic.name)),
            "names the interceptor: {msg}"
        );
        if let Some(w) = &ic.wasm {
            assert!(msg.contains(w.as_str()), "names the file: {msg}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chain_is_built_in() {
    let mut c = base_config("d", 0);
    c.membership.kind = shoal::config::MembershipKind::Static;
    c.membership.members = vec!["127.0.0.1:1".into()];
    let node = Node::start(c).await.expect("start");
    let chain = node.channel().chain();
    let names: Vec<&str> = chain.interceptors().iter().map(|i| i.name()).collect();
    assert_eq!(
        names,
        ["tcp-failure-detector", "message-dispatch", "throughput"]
    );
    node.shutdown().await;
}

/// The SDK example in examples/custom-interceptor, loaded from its `.wasm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_rate_limit_interceptor() {
    let limit = vec![interceptor(
        "rate-limit",
        Some(&guest("custom_interceptor")),
        false,
        &[("messages_per_second", "0.001"), ("burst", "10")],
    )];
    let nodes = pair([vec![], limit], |_| {}).await;
    let got = collector(&nodes[1]);
    for i in 0..30u8 {
        // the limit filters on receipt: the first 10 pass, the others are
        // refused, and the sender (synchronized ACK) is told so
        let r = nodes[0].channel().send(&[nodes[1].id()], &[i], SYNC).await;
        if i < 10 {
            r.expect("acked");
        } else {
            let e = r.expect_err("refused");
            assert!(format!("{e:?}").contains("FailAck"), "{e:?}");
        }
    }
    assert_eq!(bodies(&got), (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
    assert_eq!(plugin_counter(&nodes[1], "rate-limit", "rate_limited"), 20);
    assert_eq!(plugin_counter(&nodes[1], "rate-limit", "rate_passed"), 10);
    shutdown(nodes).await;
}

/// Compiled components are cached on disk by content hash, and a damaged
/// cache entry is ignored (recompiled), never fatal.
/// A lone node whose chain is throughput, compiled through the cache `dir`.
async fn cache_node(dir: &std::path::Path) -> Result<Node, shoal::StartError> {
    let mut c = base_config("cache", 0);
    c.membership.kind = shoal::config::MembershipKind::Static;
    c.membership.members = vec!["127.0.0.1:1".into()];
    c.interceptors = vec![interceptor("throughput", None, false, &[])];
    c.plugins.cache_dir = shoal::config::CacheDir::Dir(dir.to_path_buf());
    Node::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached_on_disk() {
    let dir = std::env::temp_dir().join(format!("shoal-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = cache_node;
    let node = start(&dir).await.expect("start");
    let hash = node.channel().chain().interceptors()[0].hash().to_owned();
    node.shutdown().await;
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let file = entries[0].clone();
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        name.starts_with(&hash) && name.ends_with(".cwasm"),
        "{name}"
    );
    let modified = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    // A restart loads the cached code: the file is not rewritten.
    let node = start(&dir).await.expect("restart");
    node.shutdown().await;
    assert_eq!(
        std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified
    );
    // A damaged entry is replaced, and the node still starts.
    std::fs::write(&file, b"garbage").expect("damage");
    let node = start(&dir).await.expect("start despite a damaged cache");
    node.shutdown().await;
    assert!(std::fs::read(&file).expect("rewritten").len() > 1000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cache holds native code the node runs: a directory someone else
/// could write to (another owner, or writable by group or others) is
/// neither read nor written, and the node still starts (compiling in
/// memory). So is a cached file planted by another user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("shoal-cache-perm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let start = cache_node;
    let count = |dir: &std::path::Path| std::fs::read_dir(dir).expect("dir").count();

    let open = base.join("world-writable");
    std::fs::create_dir_all(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    start(&open)
        .await
        .expect("starts without the cache")
        .shutdown()
        .await;
    assert_eq!(
        count(&open),
        0,
        "nothing cached in a world-writable directory"
    );

    let foreign = base.join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534))
        .expect("chown (tests run as root)");
    start(&foreign)
        .await
        .expect("starts without the cache")
        .shutdown()
        .await;
    assert_eq!(
        count(&foreign),
        0,
        "nothing cached in another user's directory"
    );

    // A good directory, whose cached file then changes owner: not loaded,
    // not replaced.
    let good = base.join("good");
    start(&good).await.expect("start").shutdown().await;
    let file = std::fs::read_dir(&good)
        .expect("dir")
        .flatten()
        .next()
        .expect("cached")
        .path();
    std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
    std::fs::write(&file, b"planted").expect("plant");
    start(&good)
        .await
        .expect("starts without loading it")
        .shutdown()
        .await;
    assert_eq!(
        std::fs::read(&file).expect("still there"),
        b"planted",
        "not loaded nor rewritten"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// Host imports that can fail say so: a timer longer than an hour is
/// refused with an error the plug-in sees (testkit then passes the event it
/// would have held), so the pair converges at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_timer_is_an_error_the_plugin_sees() {
    let hold = |ms: &str| vec![testkit("hold", false, &[("mode", "hold"), ("hold_ms", ms)])];
    // pair() waits until each node sees the other: with an accepted 2-hour
    // timer A would hold B's arrival and this would time out.
    let nodes = pair([hold("7200000"), Vec::new()], |_| {}).await;
    assert_eq!(nodes[0].members().len(), 1);
    shutdown(nodes).await;
}

/// `host.probe` reaches only members' receivers: a plug-in cannot make the
/// node connect to an address of its choosing (issue 13, item 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_may_probe_members_but_no_other_address() {
    // Something listens there, so only the host's rule can refuse it.
    let bystander = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = bystander.local_addr().expect("addr").port().to_string();
    let chain = vec![testkit(
        "prober",
        false,
        &[
            ("mode", "probe"),
            ("probe_host", "127.0.0.1"),
            ("probe_port", &port),
        ],
    )];
    let nodes = pair([chain.clone(), chain], |_| {}).await;
    wait_for("the prober to probe its peer", || async {
        (plugin_counter(&nodes[0], "prober", "member_probes_started") == 1).then_some(())
    })
    .await;
    assert_eq!(
        plugin_counter(&nodes[0], "prober", "probes_refused"),
        1,
        "the bystander's address is refused"
    );
    assert_eq!(
        plugin_counter(&nodes[0], "prober", "other_probes_started"),
        0
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_refuses_bad_settings_at_start_without_showing_the_key() {
    let key = "00112233445566778899aabbccddeeff";
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[], "setting `encryptionKey` is required"),
        (
            &[("encryptionKey", "00112233445566778899aabbccddeef")],
            "odd number of hex digits",
        ),
        (
            &[("encryptionKey", "00112233445566778899aabbccddeegg")],
            "not a hex digit at position 30",
        ),
        (
            &[("encryptionKey", "0011223344556677889900112233445566778899")],
            "20 bytes; AES takes 16, 24 or 32",
        ),
        (
            &[
                ("encryptionKey", key),
                ("encryptionAlgorithm", "AES/ECB/PKCS5Padding"),
            ],
            "\"AES/ECB/PKCS5Padding\" is not supported",
        ),
        (
            &[("encryptionKey", key), ("encryptionKy", key)],
            "unknown setting `encryptionKy`",
        ),
    ];
    for (settings, want) in cases {
        let mut c = base_config("bad", 0);
        c.membership.kind = shoal::config::MembershipKind::Static;
        c.membership.members = vec!["127.0.0.1:1".into()];
        c.plugins.default_chain = false;
        c.interceptors = vec![interceptor("encrypt", None, true, settings)];
        let err = Node::start(c).await.expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, StartError::Plugin(_)), "{msg}");
        assert!(msg.contains(want), "{want:?} in {msg}");
        assert!(!msg.contains("33445566"), "the key is not shown: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_between_two_shoal_nodes_and_a_wrong_key_is_a_counted_drop() {
    let key = |k: &str| {
        vec![interceptor(
            "encrypt",
            None,
            true,
            &[
                ("encryptionKey", k),
                ("encryptionAlgorithm", "AES/GCM/NoPadding"),
            ],
        )]
    };
    let k1 = "000102030405060708090a0b0c0d0e0f1011121314151617"; // AES-192
    let nodes = pair([key(k1), key(k1)], |_| {}).await;
    let got = collector(&nodes[1]);
    for body in [&b""[..], b"x", &[9u8; 100_000]] {
        nodes[0]
            .channel()
            .send(&[nodes[1].id()], body, SYNC)
            .await
            .expect("sent");
    }
    assert_eq!(
        bodies(&got),
        vec![Vec::new(), b"x".to_vec(), vec![9u8; 100_000]],
        "decrypted intact"
    );
    shutdown(nodes).await;

    let k2 = "ff0102030405060708090a0b0c0d0e0f1011121314151617";
    let nodes = pair([key(k1), key(k2)], |_| {}).await;
    let got = collector(&nodes[1]);
    let refused = nodes[0]
        .channel()
        .send(&[nodes[1].id()], b"secret", SYNC)
        .await
        .expect_err("the receiver cannot decrypt it");
    assert!(format!("{refused:?}").contains("FailAck"), "{refused:?}");
    assert!(bodies(&got).is_empty(), "nothing delivered");
    assert_eq!(
        plugin_counter(&nodes[1], "encrypt", "undecryptable_messages_dropped"),
        1
    );
    shutdown(nodes).await;
}
