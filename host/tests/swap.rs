//! Live swap: replacing plug-ins on a running node (by the admin API, by
//! `ChainHandle::apply_specs` as SIGHUP does, and by SIGHUP on a `shoal run`
//! process) loses, duplicates and reorders nothing, keeps the old version
//! when the new one is refused, hands state over, and keeps membership
//! events and failure detection working.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;
use shoal::chain::{ChangeKind, SwapError};
use shoal::config::InterceptorConfig;
use shoal::{Node, SendOptions};

const SYNC: SendOptions = SendOptions(SendOptions::USE_ACK.0 | SendOptions::SYNCHRONIZED_ACK.0);

/// Two static-list nodes with `chain` each (empty: the default chain), admin
/// API on an ephemeral port, converged.
async fn api_pair(chain: Vec<InterceptorConfig>) -> Vec<Node> {
    let default_chain = chain.is_empty();
    pair([chain.clone(), chain], |c| {
        c.plugins.default_chain = default_chain;
        c.api.listen = shoal::config::ApiListen::At(([127, 0, 0, 1], 0).into());
    })
    .await
}

async fn shutdown(nodes: Vec<Node>) {
    for n in nodes {
        n.shutdown().await;
    }
}

/// `PUT /api/plugins/{name}` with `file`'s bytes: (HTTP status, JSON answer).
async fn put_plugin(api: SocketAddr, name: &str, file: &Path) -> (u16, Value) {
    let bytes = std::fs::read(file).expect("component file");
    put_bytes(api, name, bytes).await
}

async fn put_bytes(api: SocketAddr, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let url = format!("http://{api}/api/plugins/{name}");
    tokio::task::spawn_blocking(move || {
        let mut r = ureq::put(&url)
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .send(&bytes[..])
            .expect("admin API answers");
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().expect("JSON answer"))
    })
    .await
    .expect("join")
}

fn generation(node: &Node, name: &str) -> u64 {
    node.plugins()
        .current()
        .interceptors()
        .iter()
        .find(|i| i.name() == name)
        .map(|i| i.generation())
        .expect("plug-in in the chain")
}

fn hash(node: &Node, name: &str) -> String {
    node.plugins()
        .current()
        .interceptors()
        .iter()
        .find(|i| i.name() == name)
        .map(|i| i.hash().to_owned())
        .expect("plug-in in the chain")
}

/// Messages of two streams (queued async, and synchronous ACKed) from A to
/// B while A's and B's plug-ins are swapped again and again through the
/// admin API: B receives every message of each stream exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_traffic_loses_duplicates_and_reorders_nothing() {
    let nodes = api_pair(Vec::new()).await; // the default chain
    let got = collector(&nodes[1]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let to = [b.id()];
    const N: u32 = 3000;
    let sending = Arc::new(AtomicBool::new(true));

    let a_ch = a.channel().clone();
    let async_stream = tokio::spawn(async move {
        for i in 0..N {
            let mut body = vec![b'A'];
            body.extend_from_slice(&i.to_be_bytes());
            a_ch.send(&to, &body, SendOptions::ASYNCHRONOUS)
                .await
                .expect("async send");
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let a_ch = a.channel().clone();
    let sync_stream = tokio::spawn(async move {
        for i in 0..N / 3 {
            let mut body = vec![b'S'];
            body.extend_from_slice(&i.to_be_bytes());
            a_ch.send(&to, &body, SYNC).await.expect("sync send");
        }
    });

    let (api_a, api_b) = (
        a.api_addr().expect("A's API"),
        b.api_addr().expect("B's API"),
    );
    let swaps = [
        (api_a, "message-dispatch", guest("message_dispatch")),
        (api_a, "throughput", guest("throughput")),
        (api_b, "throughput", guest("throughput")),
        (api_a, "tcp-failure-detector", guest("tcp_failure_detector")),
        (api_b, "tcp-failure-detector", guest("tcp_failure_detector")),
    ];
    let before = generation(a, "message-dispatch");
    let mut done = 0;
    // Keep swapping while the streams run (at least one full round).
    while done < swaps.len() || !(async_stream.is_finished() && sync_stream.is_finished()) {
        let (api, name, file) = &swaps[done % swaps.len()];
        let (status, answer) = put_plugin(*api, name, file).await;
        assert_eq!(status, 200, "swap of {name}: {answer}");
        let p = answer["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .find(|p| p["name"] == *name)
            .expect("report names the plug-in")
            .clone();
        assert_eq!(p["change"], "replaced", "{answer}");
        done += 1;
        assert!(done < 500, "the streams never finished");
    }
    sending.store(false, Ordering::Relaxed);
    async_stream.await.expect("async stream");
    sync_stream.await.expect("sync stream");
    assert!(generation(a, "message-dispatch") > before, "swapped");

    let want = (N + N / 3) as usize;
    wait_for("every message at B", || async {
        (got.lock().expect("lock").len() >= want).then_some(())
    })
    .await;
    // A moment for any duplicate to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().expect("lock").clone();
    let mut seq = std::collections::HashMap::<u8, Vec<u32>>::new();
    for m in &got {
        let b = &m.body[..];
        assert_eq!(b.len(), 5, "intact body");
        seq.entry(b[0])
            .or_default()
            .push(u32::from_be_bytes([b[1], b[2], b[3], b[4]]));
    }
    check_stream("async", &seq[&b'A'], N);
    check_stream("sync", &seq[&b'S'], N / 3);
    assert_eq!(got.len(), want, "nothing else, nothing twice");
    eprintln!("{done} swaps during {want} messages");
    shutdown(nodes).await;
}

/// `got` is 0..n, each once, in order; else says where it is not.
fn check_stream(what: &str, got: &[u32], n: u32) {
    let mut sorted = got.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        (sorted.len(), got.len()),
        (n as usize, n as usize),
        "{what} stream: {} distinct of {n}, {} received",
        sorted.len(),
        got.len()
    );
    if let Some(i) = got.windows(2).position(|w| w[1] != w[0] + 1) {
        panic!(
            "{what} stream out of order at position {i}: {:?}",
            &got[i.saturating_sub(3)..(i + 4).min(got.len())]
        );
    }
}

/// Components that cannot take over are refused with a clear error, the
/// old version (same hash and generation) keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_swaps_keep_the_old_version_serving() {
    let chain = vec![
        interceptor("throughput", None, false, &[]),
        interceptor("t", Some(&guest("testkit")), false, &[("mode", "pass")]),
    ];
    let nodes = api_pair(chain).await;
    let got = collector(&nodes[1]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let api = a.api_addr().expect("API");
    let gen_before = generation(a, "throughput");
    let hash_before = hash(a, "throughput");

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "throughput",
            b"not wasm at all".to_vec(),
            422,
            "not a valid WebAssembly component",
        ),
        (
            "throughput",
            b"\0asm\x0d\x00\x01\x00".to_vec(), // a valid, empty component
            422,
            "does not implement the shoal:cluster@0.2.0 interceptor world",
        ),
        (
            // throughput refuses testkit's `mode` setting in `create`
            "t",
            std::fs::read(guest("throughput")).expect("file"),
            422,
            "refused to start",
        ),
        ("nope", Vec::new(), 404, "no interceptor named `nope`"),
    ];
    for (name, bytes, want_status, want_text) in cases {
        let (status, answer) = put_bytes(api, name, bytes).await;
        assert_eq!(status, want_status, "{name}: {answer}");
        let err = answer["error"].as_str().expect("error text");
        assert!(err.contains(want_text), "{name}: {err}");
    }
    // Through apply_specs (the SIGHUP path): traps in create, refuses to
    // take over.
    for (mode, want) in [
        ("trap-create", "create() trapped"),
        ("refuse-take-over", "refuses to take over"),
    ] {
        let specs = vec![
            interceptor("throughput", None, false, &[]),
            interceptor("t", Some(&guest("testkit")), false, &[("mode", mode)]),
        ];
        let cfg = shoal::Config {
            interceptors: specs,
            ..Default::default()
        };
        let err = a.reload_plugins(&cfg).await.expect_err("refused");
        match mode {
            "refuse-take-over" => assert!(matches!(err, SwapError::TakeOver { .. }), "{err}"),
            _ => assert!(matches!(err, SwapError::Load(_)), "{err}"),
        }
        assert!(err.to_string().contains(want), "{err}");
    }
    assert_eq!(generation(a, "throughput"), gen_before);
    assert_eq!(hash(a, "throughput"), hash_before);
    // Still serving.
    a.channel()
        .send(&[b.id()], b"after", SYNC)
        .await
        .expect("sent");
    wait_for("the message", || async {
        (got.lock().expect("lock").len() == 1).then_some(())
    })
    .await;
    shutdown(nodes).await;
}

/// throughput hands its totals to its successor: the counters carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counters_survive_a_swap() {
    let chain = vec![interceptor("throughput", None, false, &[])];
    let nodes = api_pair(chain).await;
    let got = collector(&nodes[1]);
    let (a, b) = (&nodes[0], &nodes[1]);
    for _ in 0..40 {
        a.channel()
            .send(&[b.id()], &[1u8; 10], SYNC)
            .await
            .expect("sent");
    }
    let before = generation(a, "throughput");
    let (status, answer) = put_plugin(
        a.api_addr().expect("API"),
        "throughput",
        &guest("throughput"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["plugins"][0]["state_handed_over"], true, "{answer}");
    assert!(generation(a, "throughput") > before);
    assert_eq!(plugin_counter(a, "throughput", "tx_messages"), 40);
    assert_eq!(plugin_counter(a, "throughput", "tx_bytes"), 400);
    for _ in 0..5 {
        a.channel()
            .send(&[b.id()], &[1u8; 10], SYNC)
            .await
            .expect("sent");
    }
    assert_eq!(plugin_counter(a, "throughput", "tx_messages"), 45);
    wait_for("all messages", || async {
        (got.lock().expect("lock").len() == 45).then_some(())
    })
    .await;
    shutdown(nodes).await;
}

/// A plug-in holds B's arrival (for 10 minutes); a new version replaces it:
/// the held event is offered to the new version, which passes it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_member_event_is_not_lost_across_a_swap() {
    let hold = |ms: &str| {
        vec![interceptor(
            "hold",
            Some(&guest("testkit")),
            false,
            &[("mode", "hold"), ("hold_ms", ms)],
        )]
    };
    let cfgs = static_configs(2);
    let mut a_cfg = cfgs[0].clone();
    a_cfg.interceptors = hold("600000");
    let a = Node::start(a_cfg).await.expect("A starts");
    let mut b_cfg = cfgs[1].clone();
    b_cfg.plugins.default_chain = false;
    let b = Node::start(b_cfg).await.expect("B starts");
    wait_for("B to see A", || async {
        (b.members().len() == 1).then_some(())
    })
    .await;
    // A's plug-in holds B: give it time to have done so, then check.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.members().is_empty(), "the event is held");
    let cfg = shoal::Config {
        interceptors: hold("50"),
        ..Default::default()
    };
    let report = a.reload_plugins(&cfg).await.expect("swap");
    assert_eq!(report.plugins[0].change, ChangeKind::Replaced);
    wait_for("A to see B after the swap", || async {
        (a.members().len() == 1).then_some(())
    })
    .await;
    assert_eq!(a.members()[0].id, b.id());
    b.shutdown().await;
    a.shutdown().await;
}

/// After tcp-failure-detector is swapped (no state: the new version takes
/// the current members as its view), a SIGKILLed member is still dropped and
/// a live one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_failure_detector_drops_a_killed_member_and_keeps_a_live_one() {
    swap_detector_then_kill("tcp_failure_detector").await;
}

/// The phi-accrual detector swapped in for the TCP failure detector on a
/// running node (the same slot, other code): it takes the members over and
/// decides from then on: a SIGKILLed member is dropped, a live one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_accrual_swapped_in_at_run_time_drops_a_killed_member_and_keeps_a_live_one() {
    swap_detector_then_kill("phi_accrual_detector").await;
}

/// Three nodes (A in process, b and c as `shoal run`); A's
/// tcp-failure-detector slot is swapped to the `detector` guest, then b is
/// SIGKILLed: A drops b and keeps c.
async fn swap_detector_then_kill(detector: &str) {
    require_loopback_multicast();
    let dir = std::env::temp_dir().join(format!("shoal-swap-{detector}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut cfgs = multicast_configs(3);
    let group = cfgs[0].membership.port;
    for c in &mut cfgs {
        c.membership.frequency_ms = 200;
        c.membership.drop_time_ms = 1200;
    }
    let mut a_cfg = cfgs[0].clone();
    a_cfg.api.listen = shoal::config::ApiListen::At(([127, 0, 0, 1], 0).into());
    let a = Node::start(a_cfg).await.expect("A starts");
    let mut procs = Vec::new();
    for name in ["b", "c"] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[node]\nname = \"{name}\"\ndomain = \"test\"\n[membership]\nport = {group}\nbind = \"127.0.0.1\"\n\
                 frequency_ms = 200\ndrop_time_ms = 1200\n[receiver]\naddress = \"127.0.0.1\"\nport = {}\nauto_bind = 1\n\
                 [api]\nlisten = \"\"\n",
                free_port()
            ),
        )
        .expect("config");
        procs.push(Kill(spawn_shoal(&file, &dir.join(format!("{name}.log")))));
    }
    wait_for("A to see b and c", || async {
        (a.members().len() == 2).then_some(())
    })
    .await;
    let code = guest(detector);
    let (status, answer) =
        put_plugin(a.api_addr().expect("API"), "tcp-failure-detector", &code).await;
    assert_eq!(status, 200, "{answer}");
    let want = shoal::plugins::content_hash(&std::fs::read(&code).expect("guest"));
    assert_eq!(
        a.channel().chain().interceptors()[0].hash(),
        want,
        "the slot runs {detector} now"
    );
    let before: Vec<_> = a.members().iter().map(|m| m.id).collect();
    // SIGKILL b.
    let b_pid = procs[0].0.id();
    procs[0].0.kill().expect("SIGKILL");
    let _ = procs[0].0.wait();
    wait_for("A to drop the killed member", || async {
        (a.members().len() == 1).then_some(())
    })
    .await;
    // c stays: several drop times later it is still there.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after: Vec<_> = a.members().iter().map(|m| m.id).collect();
    assert_eq!(after.len(), 1, "the live member stays");
    assert!(before.contains(&after[0]));
    let gone: Vec<_> = a
        .channel()
        .recent_events()
        .into_iter()
        .filter(|e| e.kind == "disappeared")
        .collect();
    assert_eq!(
        gone.len(),
        1,
        "exactly one member dropped (b, pid {b_pid}): {gone:?}"
    );
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the child when the test ends, however it ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGHUP on a `shoal run` process with a changed config: only the
/// difference is applied (unchanged plug-ins keep their generation), a bad
/// file changes nothing, and the node keeps running.
#[test]
fn sighup_applies_only_the_difference() {
    let dir = std::env::temp_dir().join(format!("shoal-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let testkit = guest("testkit").display().to_string();
    let head = format!(
        "[node]\nname = \"h\"\n[membership]\nkind = \"static\"\nmembers = [\"127.0.0.1:1\"]\n\
         [receiver]\naddress = \"127.0.0.1\"\nport = 0\n[api]\nlisten = \"{api}\"\n\
         [plugins]\ncache_dir = \"{}/component-cache\"\n",
        env!("CARGO_TARGET_TMPDIR")
    );
    let file = dir.join("h.toml");
    let write = |chain: &str| std::fs::write(&file, format!("{head}{chain}")).expect("config");
    write(&format!(
        "[[interceptor]]\nname = \"throughput\"\n\
         [[interceptor]]\nname = \"t\"\nwasm = \"{testkit}\"\nsettings = {{ mode = \"pass\" }}\n"
    ));
    let mut child = Kill(spawn_shoal(&file, &dir.join("h.log")));
    let plugins = || -> Option<Vec<(String, u64)>> {
        let mut r = ureq::get(format!("http://{api}/api/plugins"))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call()
            .ok()?;
        let v: Value = r.body_mut().read_json().ok()?;
        Some(
            v.as_array()?
                .iter()
                .filter(|p| p["world"] == "interceptor")
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_owned(),
                        p["generation"].as_u64().unwrap_or(0),
                    )
                })
                .collect(),
        )
    };
    let before = wait_blocking("the node's API", plugins);
    assert_eq!(before.len(), 2, "{before:?}");
    let hup = |c: &Kill| {
        let pid = nix::unistd::Pid::from_raw(c.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    };

    // A broken file: refused, nothing changes.
    std::fs::write(&file, format!("{head}[[interceptor]]\nnme = \"x\"\n")).expect("config");
    hup(&child);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(plugins().expect("still serving"), before);

    // t's settings change, domain-filter is added on top, throughput stays.
    write(&format!(
        "[[interceptor]]\nname = \"domain-filter\"\nsettings = {{ domain = \"\" }}\n\
         [[interceptor]]\nname = \"throughput\"\n\
         [[interceptor]]\nname = \"t\"\nwasm = \"{testkit}\"\nsettings = {{ mode = \"tag\", tag = \"x\" }}\n"
    ));
    hup(&child);
    let after = wait_blocking("the change to apply", || plugins().filter(|p| p.len() == 3));
    let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["domain-filter", "throughput", "t"]);
    assert_eq!(after[1], before[0], "throughput kept its instance");
    assert!(after[2].1 > before[1].1, "t was reloaded");
    let log = std::fs::read_to_string(dir.join("h.log")).expect("log");
    assert!(log.contains("SIGHUP: config refused"), "{log}");
    assert!(log.contains("SIGHUP: interceptors applied"), "{log}");
    assert!(
        child.0.try_wait().expect("status").is_none(),
        "still running"
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

fn metric(api: SocketAddr, name: &str) -> Option<u64> {
    let mut r = ureq::get(format!("http://{api}/metrics"))
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .ok()?;
    let text = r.body_mut().read_to_string().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The chain a node's single peer advertises, as (name, sha256 prefix).
fn peer_chain(api: SocketAddr) -> Option<Vec<(String, String)>> {
    let v = get_json(api, "/api/members")?;
    let m = v.as_array()?.first()?;
    Some(
        m["chain"]
            .as_array()?
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_owned(),
                    e["sha256"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
    )
}

/// Two `shoal run` processes: each advertises its chain in its heartbeats;
/// a swap on one shows at the other within two heartbeats; a chain that
/// differs in a plug-in declaring `changes-wire` is warned about once, not
/// once per heartbeat.
#[test]
fn peers_see_the_chain_fingerprint_and_warn_once_about_a_wire_mismatch() {
    require_loopback_multicast();
    let dir = std::env::temp_dir().join(format!("shoal-fingerprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let group = free_port();
    let testkit = guest("testkit").display().to_string();
    let apis: Vec<SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().expect("addr"))
        .collect();
    let mut procs = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        // a has a wire-changing plug-in that b lacks.
        let extra = if i == 0 {
            format!(
                "[[interceptor]]\nname = \"wire\"\nwasm = \"{testkit}\"\n\
                 settings = {{ changes_wire = true, version = \"7\" }}\n"
            )
        } else {
            String::new()
        };
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[node]\nname = \"{name}\"\n[membership]\nport = {group}\nbind = \"127.0.0.1\"\n\
                 [receiver]\naddress = \"127.0.0.1\"\nport = {}\nauto_bind = 1\n[api]\nlisten = \"{}\"\n\
                 [plugins]\ncache_dir = \"{}/component-cache\"\n\
                 [[interceptor]]\nname = \"throughput\"\n{extra}",
                free_port(),
                apis[i],
                env!("CARGO_TARGET_TMPDIR")
            ),
        )
        .expect("config");
        procs.push(Kill(spawn_shoal(&file, &dir.join(format!("{name}.log")))));
    }
    let b_sees = wait_blocking("b to see a's chain", || {
        peer_chain(apis[1]).filter(|c| c.len() == 2)
    });
    assert_eq!(b_sees[0].0, "throughput");
    assert_eq!(b_sees[1].0, "wire");
    assert_eq!(b_sees[1].1.len(), 16, "16 hex digits");
    let a_sees = wait_blocking("a to see b's chain", || peer_chain(apis[0]));
    let tp_hash = &a_sees[0].1;

    // Several heartbeats later, each side has warned exactly once.
    let beats = || metric(apis[1], "shoal_heartbeats_sent_total");
    let start = beats().expect("b's metrics");
    wait_blocking("6 more heartbeats", || beats().filter(|n| *n >= start + 6));
    let warnings = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.log")))
            .expect("log")
            .matches("peer's interceptor chain differs")
            .count()
    };
    assert_eq!(warnings("a"), 1, "a warns once");
    assert_eq!(warnings("b"), 1, "b warns once");

    // b swaps its throughput for another component: a sees the new hash
    // within two of b's heartbeats.
    let (status, answer) = tokio::runtime::Runtime::new()
        .expect("rt")
        .block_on(put_plugin(apis[1], "throughput", &guest("testkit")));
    assert_eq!(status, 200, "{answer}");
    // The swap is in place when the answer comes: count from here.
    let before = beats().expect("metrics");
    let seen = wait_blocking("a to see b's new chain", || {
        peer_chain(apis[0]).filter(|c| c.first().is_some_and(|e| &e.1 != tp_hash))
    });
    let after = beats().expect("metrics");
    assert!(
        after - before <= 2,
        "seen after {} of b's heartbeats",
        after - before
    );
    assert_eq!(seen[0].0, "throughput");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example rate limiter hands its buckets over: a sender that used up
/// its burst stays limited after a swap, and the counters carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_rate_limiter_keeps_its_buckets_across_a_swap() {
    let chain = vec![interceptor(
        "rate-limit",
        Some(&guest("custom_interceptor")),
        false,
        &[("messages_per_second", "0.01"), ("burst", "5")],
    )];
    let nodes = api_pair(chain).await;
    let got = collector(&nodes[1]);
    let (a, b) = (&nodes[0], &nodes[1]);
    // Refused messages are answered with FAIL-ACK (the sender asked for a
    // synchronized ACK).
    for i in 0..10 {
        let r = a.channel().send(&[b.id()], b"x", SYNC).await;
        assert_eq!(r.is_ok(), i < 5, "message {i}: {r:?}");
    }
    assert_eq!(got.lock().expect("lock").len(), 5, "the burst passes");
    let (status, answer) = put_plugin(
        b.api_addr().expect("API"),
        "rate-limit",
        &guest("custom_interceptor"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["plugins"][0]["state_handed_over"], true, "{answer}");
    for _ in 0..3 {
        a.channel()
            .send(&[b.id()], b"y", SYNC)
            .await
            .expect_err("still limited after the swap");
    }
    assert_eq!(
        got.lock().expect("lock").len(),
        5,
        "the bucket is still empty after the swap"
    );
    assert_eq!(plugin_counter(b, "rate-limit", "rate_limited"), 8);
    assert_eq!(plugin_counter(b, "rate-limit", "rate_passed"), 5);
    shutdown(nodes).await;
}

/// Two swaps of different plug-ins at once: both take effect (neither is
/// built from a chain the other has already replaced, which would put the
/// other plug-in's old code back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_swaps_of_two_plugins_both_stick() {
    let nodes = api_pair(Vec::new()).await; // the default chain
    let a = &nodes[0];
    let api = a.api_addr().expect("API");
    let testkit = guest("testkit");
    let want = shoal::plugins::content_hash(&std::fs::read(&testkit).expect("testkit"));
    for round in 0..6 {
        // Each round swaps both to testkit or both back to their own code.
        let (tp, fd) = if round % 2 == 0 {
            (testkit.clone(), testkit.clone())
        } else {
            (guest("throughput"), guest("tcp_failure_detector"))
        };
        let (t, f) = tokio::join!(
            put_plugin(api, "throughput", &tp),
            put_plugin(api, "tcp-failure-detector", &fd),
        );
        assert_eq!((t.0, f.0), (200, 200), "{t:?} {f:?}");
        let is_testkit = |name: &str| hash(a, name) == want;
        assert_eq!(
            is_testkit("throughput"),
            round % 2 == 0,
            "throughput, round {round}"
        );
        assert_eq!(
            is_testkit("tcp-failure-detector"),
            round % 2 == 0,
            "tcp-failure-detector, round {round}"
        );
    }
    shutdown(nodes).await;
}
