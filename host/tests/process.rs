//! Nodes as separate `shoal run` processes: SIGKILL is detected at once by
//! its broken connection (or by expiry without the watch), SIGTERM by the
//! shutdown announcement; a paused member is kept while it answers TCP, by
//! both failure detectors; bad config files are refused; both `shoal
//! demo`s run to the end.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FREQUENCY_MS: u64 = 500;
const DROP_TIME_MS: u64 = 3000;

/// Child processes, killed when the test ends however it ends.
struct Procs(Vec<Option<Child>>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn get(api: SocketAddr, path: &str) -> Option<Value> {
    get_json(api, path)
}

fn member_ids(api: SocketAddr) -> Option<Vec<String>> {
    let v = get(api, "/api/members")?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

fn start(dir: &std::path::Path, name: &str, group_port: u16, api: SocketAddr) -> Child {
    start_with(dir, name, group_port, api, "")
}

/// [`start`] with more `[membership]` lines (after the defaults, which they
/// may not repeat).
fn start_with(
    dir: &std::path::Path,
    name: &str,
    group_port: u16,
    api: SocketAddr,
    membership: &str,
) -> Child {
    start_at(dir, name, group_port, api, membership, free_port())
}

/// [`start_with`] with the receiver on `port`.
fn start_at(
    dir: &std::path::Path,
    name: &str,
    group_port: u16,
    api: SocketAddr,
    membership: &str,
    port: u16,
) -> Child {
    let cfg = dir.join(format!("{name}.toml"));
    let drop_time = if membership.contains("drop_time_ms") {
        String::new()
    } else {
        format!("drop_time_ms = {DROP_TIME_MS}\n")
    };
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"{name}\"\ndomain = \"proc\"\n[membership]\nport = {group_port}\nbind = \"127.0.0.1\"\n\
             frequency_ms = {FREQUENCY_MS}\n{drop_time}{membership}\n[receiver]\naddress = \"127.0.0.1\"\nport = {}\n\
             auto_bind = 1\n[api]\nlisten = \"{api}\"\n",
            port
        ),
    )
    .expect("write config");
    spawn_shoal(&cfg, &dir.join(format!("{name}.log")))
}

fn metric(api: SocketAddr, name: &str) -> Option<f64> {
    let text = ureq::get(format!("http://{api}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Nodes a, b and c as `shoal run` processes on one multicast group, with
/// `membership` lines; returns once each sees the other two.
fn three_nodes(dir: &std::path::Path, membership: &str) -> (Procs, Vec<SocketAddr>) {
    require_loopback_multicast();
    let group_port = free_port();
    let apis: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let procs = Procs(
        ["a", "b", "c"]
            .iter()
            .zip(&apis)
            .map(|(n, api)| Some(start_with(dir, n, group_port, *api, membership)))
            .collect(),
    );
    for api in &apis {
        wait_blocking("each node to see two members", || {
            member_ids(*api).filter(|m| m.len() == 2)
        });
    }
    (procs, apis)
}

fn disappearance(api: SocketAddr, id: &str) -> Option<Value> {
    get(api, "/api/events")?
        .as_array()?
        .iter()
        .find(|e| e["kind"] == "disappeared" && e["id"] == id)
        .cloned()
}

/// Tomcat's rule, with the watch connections off: a SIGKILLed member is
/// dropped once it has been silent for dropTime.
#[test]
fn without_the_watch_sigkill_is_detected_by_expiry_and_sigterm_by_announcement() {
    let dir = tmpdir("kill");
    let (mut procs, apis) = three_nodes(&dir, "watch = false");
    let id_of =
        |api: SocketAddr| get(api, "/api/node").and_then(|n| n["id"].as_str().map(str::to_owned));
    let c_id = id_of(apis[2]).expect("c's id");
    let b_id = id_of(apis[1]).expect("b's id");

    // SIGKILL c: no announcement, so a and b must expire it.
    let mut c = procs.0[2].take().expect("c running");
    c.kill().expect("SIGKILL");
    c.wait().expect("reaped");
    let killed = Instant::now();
    for api in &apis[..2] {
        let ev = wait_blocking("c to disappear", || disappearance(*api, &c_id));
        assert_eq!(
            ev["reason"], "expired",
            "a SIGKILLed node is dropped by expiry"
        );
        assert!(
            member_ids(*api)
                .expect("members")
                .iter()
                .all(|m| *m != c_id)
        );
    }
    // Expiry cannot happen before dropTime minus one heartbeat after the kill:
    // c's last heartbeat was at most one period before it. (Only a lower bound:
    // a slow machine makes this longer, never shorter.)
    let detected = killed.elapsed();
    assert!(
        detected >= Duration::from_millis(DROP_TIME_MS - FREQUENCY_MS),
        "dropped after {detected:?}, earlier than dropTime allows"
    );
    eprintln!(
        "SIGKILL detected after {detected:?} (dropTime {DROP_TIME_MS} ms + up to one heartbeat)"
    );

    // SIGTERM b: it announces its departure; a drops it by the shutdown command.
    let mut b = procs.0[1].take().expect("b running");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(b.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = b.wait().expect("b exits");
    assert!(status.success(), "graceful stop exits 0, got {status}");
    let ev = wait_blocking("b to disappear", || disappearance(apis[0], &b_id));
    assert_eq!(
        ev["reason"], "shutdown",
        "a graceful stop is seen at once, by announcement"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_file_is_refused_naming_file_and_key() {
    let dir = tmpdir("badcfg");
    let cases = [
        (
            "[membership]\ndrop_time_ms = 10\n",
            "membership.drop_time_ms",
        ),
        ("[receiver]\nprot = 4000\n", "prot"),
        ("[membership]\nkind = \"static\"\n", "membership.members"),
        ("[membership]\nkind = \"dns\"\n", "membership.dns_name"),
        (
            "[membership]\nkind = \"dns\"\ndns_name = \"a.b\"\ndns_server = \"nowhere\"\n",
            "membership.dns_server",
        ),
        ("[api]\nlisten = \"nowhere\"\n", "api.listen"),
        ("this is not toml", "expected"),
        ("[[interceptor]]\nname = \"nope\"\n", "interceptor[0].wasm"),
        (
            "[[interceptor]]\nname = \"x\"\nwasm = \"/nonexistent/x.wasm\"\n",
            "/nonexistent/x.wasm",
        ),
        (
            "[[interceptor]]\nname = \"throughput\"\nsettings = { interval = \"zero\" }\n",
            "interval",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("run shoal");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} must be refused");
        assert!(
            stderr.contains(&path.display().to_string()),
            "error names the file: {stderr}"
        );
        assert!(stderr.contains(key), "error names {key}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "--config", "/nonexistent/shoal.toml"])
        .output()
        .expect("run shoal");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/shoal.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `shoal demo ARGS…` to its end (each wait in it is bounded);
/// returns whether it exited 0 and its stdout, stderr appended.
fn demo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run shoal demo");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `shoal demo` (and `shoal demo sessions`) walks the nine steps of
/// session replication, each one checked: every step line says ok.
#[test]
fn demo_walks_the_nine_session_steps_each_ok() {
    let (ok, out) = demo(&[]);
    assert!(ok, "shoal demo failed:\n{out}");
    for k in 1..=9 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("[{k}/9] ")))
            .unwrap_or_else(|| panic!("no line for step {k}:\n{out}"));
        assert!(line.contains(" ... ok ("), "step {k} not ok: {line}");
    }
    assert!(out.contains("all 9 steps ok in "), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

/// `shoal demo transport`: discovery, ACKed messages, a SIGKILLed member
/// dropped after dropTime, a SIGTERMed one at once.
#[test]
fn demo_transport_runs_discovery_acks_and_both_departures() {
    let (ok, out) = demo(&["transport"]);
    assert!(ok, "shoal demo transport failed:\n{out}");
    for want in [
        "converged in",
        "c received \"hello from a\"",
        "a dropped c after",
        "b dropped c after",
        "(shutdown announcement)",
        "Demo complete; all nodes stopped.",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
}

/// A SIGKILLed member's kernel closes its connections at once: the watch
/// connection every node keeps to every member breaks, the failure detector
/// probes, the probe is refused, and the member is dropped, on a cluster
/// with no traffic at all. dropTime is a minute here, longer than the test
/// waits, so nothing else can have dropped it.
#[test]
fn a_sigkilled_member_is_dropped_at_once_through_its_broken_watch_connection() {
    let dir = tmpdir("watch");
    let (mut procs, apis) = three_nodes(&dir, "drop_time_ms = 60000");
    for api in &apis {
        wait_blocking("each node to watch both members", || {
            metric(*api, "shoal_watch_connections").filter(|n| *n == 2.0)
        });
    }
    let c_id = get(apis[2], "/api/node")
        .and_then(|n| n["id"].as_str().map(str::to_owned))
        .expect("c's id");
    let mut c = procs.0[2].take().expect("c running");
    c.kill().expect("SIGKILL");
    c.wait().expect("reaped");
    let killed = Instant::now();
    for api in &apis[..2] {
        let ev = wait_blocking("c to be dropped", || disappearance(*api, &c_id));
        assert_eq!(ev["reason"], "expired");
        assert!(metric(*api, "shoal_watch_connections_lost_total").expect("metric") >= 1.0);
        assert_eq!(
            metric(
                *api,
                "shoal_plugin_members_dropped_on_connection_loss{plugin=\"tcp-failure-detector\"}"
            ),
            Some(1.0),
            "dropped by the detector after the broken connection"
        );
    }
    eprintln!(
        "SIGKILL → dropped by both peers after {:?} (dropTime 60 s)",
        killed.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tribes' TcpFailureDetector semantics, with the built-in guest: a member
/// that stops heartbeating but still accepts TCP (here: a SIGSTOPped process,
/// as in a long GC pause) is kept; one that is gone (SIGKILL) is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_failure_detector_keeps_a_paused_member_and_drops_a_dead_one() {
    require_loopback_multicast();
    let dir = tmpdir("tcpfd");
    let group_port = free_port();
    let mut cfg = base_config("a", free_port());
    cfg.membership.port = group_port;
    cfg.membership.bind = Some("127.0.0.1".parse().expect("ip"));
    cfg.plugins.cache_dir =
        shoal::config::CacheDir::from(format!("{}/component-cache", env!("CARGO_TARGET_TMPDIR")));
    let a = shoal::Node::start(cfg).await.expect("a starts"); // default chain
    let apis: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut procs = Procs(vec![
        Some(start(&dir, "b", group_port, apis[0])),
        Some(start(&dir, "c", group_port, apis[1])),
    ]);
    wait_for("a to see b and c", || async {
        (a.members().len() == 2).then_some(())
    })
    .await;
    let id_of =
        |api: SocketAddr| get(api, "/api/node").and_then(|n| n["id"].as_str().map(str::to_owned));
    let b_id = id_of(apis[0]).expect("b's id");
    let c_id = id_of(apis[1]).expect("c's id");

    let pid = |c: &Child| nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
    let b_pid = pid(procs.0[0].as_ref().expect("b"));
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP b");
    let mut c = procs.0[1].take().expect("c");
    c.kill().expect("SIGKILL c");
    c.wait().expect("reaped");

    wait_for("the detector to confirm c dead", || async {
        (plugin_counter(&a, "tcp-failure-detector", "members_confirmed_dead") == 1).then_some(())
    })
    .await;
    wait_for("the detector to keep b as a suspect", || async {
        (plugin_counter(&a, "tcp-failure-detector", "suspects_kept_alive") == 1).then_some(())
    })
    .await;
    let ids: Vec<String> = a.members().iter().map(|m| m.id.unique_hex()).collect();
    assert!(ids.contains(&b_id), "paused b is kept: {ids:?}");
    assert!(!ids.contains(&c_id), "dead c is dropped: {ids:?}");
    let ev = a
        .channel()
        .recent_events()
        .into_iter()
        .find(|e| e.kind == "disappeared" && e.id == c_id)
        .expect("c's disappearance");
    assert_eq!(ev.reason.as_deref(), Some("expired"));

    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT b");
    drop(procs);
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Node `a` (in this process) with the phi-accrual detector as its whole
/// chain and `settings`, and two `shoal run` members b and c.
async fn phi_cluster(
    tag: &str,
    drop_time_ms: u64,
    settings: &[(&str, &str)],
) -> (shoal::Node, Procs, [String; 2], PathBuf) {
    require_loopback_multicast();
    let dir = tmpdir(tag);
    let group_port = free_port();
    let mut cfg = base_config("a", free_port());
    cfg.membership.port = group_port;
    cfg.membership.bind = Some("127.0.0.1".parse().expect("ip"));
    cfg.membership.drop_time_ms = drop_time_ms;
    cfg.plugins.cache_dir =
        shoal::config::CacheDir::from(format!("{}/component-cache", env!("CARGO_TARGET_TMPDIR")));
    cfg.interceptors = vec![interceptor("phi-accrual-detector", None, false, settings)];
    let a = shoal::Node::start(cfg).await.expect("a starts");
    let apis: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let procs = Procs(vec![
        Some(start(&dir, "b", group_port, apis[0])),
        Some(start(&dir, "c", group_port, apis[1])),
    ]);
    wait_for("a to see b and c", || async {
        (a.members().len() == 2).then_some(())
    })
    .await;
    let id_of =
        |api: SocketAddr| get(api, "/api/node").and_then(|n| n["id"].as_str().map(str::to_owned));
    let ids = [
        id_of(apis[0]).expect("b's id"),
        id_of(apis[1]).expect("c's id"),
    ];
    (a, procs, ids, dir)
}

fn pid_of(c: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"))
}

fn member_hexes(node: &shoal::Node) -> Vec<String> {
    node.members().iter().map(|m| m.id.unique_hex()).collect()
}

/// The phi-accrual detector with its defaults (verify on): a paused member
/// (SIGSTOP, silent for three times dropTime) is suspected but kept because
/// it answers TCP, and the membership table's own expiry is held; a
/// SIGKILLed one is dropped through its broken connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_accrual_keeps_a_paused_member_that_answers_and_drops_a_dead_one() {
    let (a, mut procs, [b_id, c_id], dir) = phi_cluster("phi-verify", 1000, &[]).await;
    let b_pid = pid_of(procs.0[0].as_ref().expect("b"));
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP b");
    let mut c = procs.0[1].take().expect("c");
    c.kill().expect("SIGKILL c");
    c.wait().expect("reaped");
    wait_for("phi to drop c", || async {
        (!member_hexes(&a).contains(&c_id)).then_some(())
    })
    .await;
    wait_for("phi to suspect b and keep it", || async {
        (plugin_counter(&a, "phi-accrual-detector", "phi_suspects_kept_alive") >= 1).then_some(())
    })
    .await;
    // b stays silent well past the table's dropTime (1 s): still a member.
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(3) {
        assert!(member_hexes(&a).contains(&b_id), "paused b is kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        plugin_counter(&a, "phi-accrual-detector", "phi_members_dropped"),
        1,
        "only c was dropped"
    );
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT b");
    drop(procs);
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `verify = false` phi alone decides: a paused member is dropped as
/// soon as its phi passes the threshold, long before the table's dropTime
/// (a minute here, longer than the test waits), and re-added when its
/// heartbeats come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_accrual_without_verify_drops_a_silent_member_before_drop_time_and_readds_it() {
    let (a, procs, [b_id, _], dir) =
        phi_cluster("phi-noverify", 60_000, &[("verify", "false")]).await;
    let b_pid = pid_of(procs.0[0].as_ref().expect("b"));
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP b");
    wait_for("phi to drop paused b", || async {
        (!member_hexes(&a).contains(&b_id)).then_some(())
    })
    .await;
    assert_eq!(
        plugin_counter(&a, "phi-accrual-detector", "phi_members_dropped"),
        1
    );
    nix::sys::signal::kill(b_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT b");
    wait_for("b to be re-added once it heartbeats", || async {
        member_hexes(&a).contains(&b_id).then_some(())
    })
    .await;
    drop(procs);
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Configs of two static members, the first with the API on `api` and a
/// testkit interceptor named `spin` in `mode`, the second bare.
fn spin_pair(dir: &std::path::Path, api: SocketAddr, mode: &str) -> [std::path::PathBuf; 2] {
    let ports = [free_port(), free_port()];
    let members = format!("[\"127.0.0.1:{}\", \"127.0.0.1:{}\"]", ports[0], ports[1]);
    std::array::from_fn(|i| {
        let chain = if i == 0 {
            format!(
                "[api]\nlisten = \"{api}\"\n[plugins]\ncache_dir = \"{}/component-cache\"\n\
                 [[interceptor]]\nname = \"spin\"\nwasm = \"{}\"\nsettings = {{ mode = \"{mode}\" }}\n",
                env!("CARGO_TARGET_TMPDIR"),
                guest("testkit").display()
            )
        } else {
            "[api]\nlisten = \"off\"\n[plugins]\ndefault_chain = false\n".to_owned()
        };
        let cfg = dir.join(format!("n{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[node]\nname = \"n{i}\"\n[membership]\nkind = \"static\"\nmembers = {members}\n\
                 [receiver]\naddress = \"127.0.0.1\"\nport = {}\nauto_bind = 1\n{chain}",
                ports[i]
            ),
        )
        .expect("config");
        cfg
    })
}

/// `shoal_plugin_failures_total` of plug-in `spin` for `kind`, if the
/// node answers within `wait`.
fn spin_failures(api: SocketAddr, kind: &str, wait: Duration) -> Option<u64> {
    let mut m = ureq::get(format!("http://{api}/metrics"))
        .config()
        .timeout_global(Some(wait))
        .build()
        .call()
        .ok()?;
    let text = m.body_mut().read_to_string().ok()?;
    let key = format!("shoal_plugin_failures_total{{plugin=\"spin\",kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// The epoch ticker sleeps while no guest call runs (an idle node does not
/// wake every millisecond); a runaway guest call after a long idle spell
/// still wakes it and is interrupted at its deadline. Separate processes, so
/// no other test keeps the ticker awake.
#[test]
fn a_runaway_guest_after_an_idle_spell_is_still_interrupted() {
    let dir = tmpdir("idle-loop");
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfgs = spin_pair(&dir, api, "loop");
    let procs = Procs(
        cfgs.iter()
            .enumerate()
            .map(|(i, c)| Some(spawn_shoal(c, &dir.join(format!("n{i}.log")))))
            .collect(),
    );
    wait_blocking("the nodes to meet", || {
        member_ids(api).filter(|m| m.len() == 1)
    });
    // Idle well past the ticker's linger (100 ms).
    std::thread::sleep(Duration::from_millis(1500));
    // The send goes through the looping plug-in (fail-open): it must be
    // interrupted for the send to happen and the answer to come back.
    let mut r = ureq::post(format!("http://{api}/api/send?options=2&to=all"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .send("x")
        .expect("the node answers");
    let answer: Value = r.body_mut().read_json().expect("JSON");
    assert_eq!(answer["ok"], true, "{answer}");
    let timeouts = spin_failures(api, "timeout", Duration::from_secs(5));
    assert!(timeouts.is_some_and(|n| n >= 1), "{timeouts:?}");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A control call (here a membership event) does not wake the parked epoch
/// ticker, which looks for one still running only every
/// `engine::BRIEF_WATCH`: a runaway one after an idle spell is still found
/// and interrupted (within that look plus twice the 1 s control deadline),
/// and the node goes on.
#[test]
fn a_runaway_control_call_after_an_idle_spell_is_still_interrupted() {
    let dir = tmpdir("idle-control-loop");
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfgs = spin_pair(&dir, api, "loop-members");
    let mut procs = Procs(vec![Some(spawn_shoal(&cfgs[0], &dir.join("n0.log")))]);
    let alone = wait_blocking("the first node's API", || member_ids(api));
    assert!(alone.is_empty(), "{alone:?}");
    // Idle well past the ticker's linger (100 ms), then a member appears:
    // member-added loops.
    std::thread::sleep(Duration::from_millis(1500));
    procs
        .0
        .push(Some(spawn_shoal(&cfgs[1], &dir.join("n1.log"))));
    wait_blocking("the looping member-added call to be stopped", || {
        spin_failures(api, "timeout", Duration::from_secs(10)).filter(|n| *n >= 1)
    });
    // The node still serves.
    assert!(member_ids(api).is_some(), "the node answers after the stop");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member SIGKILLed and restarted at once on the same address (a crash
/// loop under a fast supervisor): its new incarnation answers the probes
/// meant for the old one, so a detector that only probes would keep the
/// old one in view for good (Tribes' TcpFailureDetector keeps it as a
/// suspect for `removeSuspectsTimeout`, then in view). Both detectors drop
/// the old one when the new one appears. The watch connections are off, so
/// the kill itself is not seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_its_address_replaces_its_earlier_incarnation() {
    require_loopback_multicast();
    for detector in ["tcp-failure-detector", "phi-accrual-detector"] {
        let dir = tmpdir(&format!("incarnation-{detector}"));
        let group_port = free_port();
        let mut cfg = base_config("a", free_port());
        cfg.membership.port = group_port;
        cfg.membership.bind = Some("127.0.0.1".parse().expect("ip"));
        cfg.membership.watch = false;
        cfg.plugins.cache_dir = shoal::config::CacheDir::from(format!(
            "{}/component-cache",
            env!("CARGO_TARGET_TMPDIR")
        ));
        cfg.plugins.default_chain = false;
        cfg.interceptors = vec![interceptor(detector, None, false, &[])];
        let a = shoal::Node::start(cfg).await.expect("a starts");
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let port = free_port();
        let id_of = move || get(api, "/api/node").and_then(|n| n["id"].as_str().map(str::to_owned));
        let lists = |id: &str| a.members().iter().any(|m| m.id.unique_hex() == id);

        let mut procs = Procs(vec![Some(start_at(
            &dir,
            "b",
            group_port,
            api,
            "watch = false",
            port,
        ))]);
        let old = wait_blocking("b's id", id_of);
        wait_for("a to list b", || async { lists(&old).then_some(()) }).await;
        let mut b = procs.0[0].take().expect("b");
        b.kill().expect("SIGKILL");
        b.wait().expect("reaped");
        procs.0[0] = Some(start_at(&dir, "b", group_port, api, "watch = false", port));
        let new = wait_blocking("the new b's id", || id_of().filter(|id| *id != old));
        wait_for("a to list the new b", || async {
            lists(&new).then_some(())
        })
        .await;
        // The old one's expiry (dropTime after its last heartbeat) and its
        // verification are over by now, whichever came first.
        wait_for(&format!("{detector}: a to list only the new b"), || async {
            (!lists(&old) && a.members().len() == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(DROP_TIME_MS + FREQUENCY_MS)).await;
        assert!(
            !lists(&old),
            "{detector}: the earlier incarnation came back"
        );
        assert!(lists(&new), "{detector}: the new b stays");
        drop(procs);
        a.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
