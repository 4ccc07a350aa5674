//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use shoal::Config;
use shoal::config::MembershipKind;

pub mod capture;
pub mod dnsmasq;
pub mod java;
pub mod netns;
pub mod tribes;

/// Upper bound for any wait on the cluster; tests retry until it, never sleep a fixed time.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A port free on 127.0.0.1 right now (TCP; the same number serves for
/// UDP), outside the ephemeral range, so no outgoing connection takes it
/// before the node binds it.
pub fn free_port() -> u16 {
    shoal::transport::ports::reserve_loopback(1).expect("a free loopback port")[0]
}

/// A loopback node config: receiver on `port`, API off.
pub fn base_config(name: &str, port: u16) -> Config {
    let mut c = Config::default();
    c.node.name = name.into();
    c.node.domain = "test".into();
    c.receiver.address = shoal::config::ReceiverAddress::Ip(std::net::Ipv4Addr::LOCALHOST.into());
    c.receiver.port = port;
    c.receiver.auto_bind = 1;
    c.api.listen = shoal::config::ApiListen::Off;
    // Channel tests count messages: no session engine traffic (the session
    // tests start nodes of their own).
    c.session.enabled = false;
    c
}

/// Configs for `n` nodes that find each other by multicast on lo, on a group
/// port of their own (so tests run in parallel).
pub fn multicast_configs(n: usize) -> Vec<Config> {
    let group_port = free_port();
    (0..n)
        .map(|i| {
            let mut c = base_config(&format!("n{i}"), free_port());
            // Found by multicast, so the port need not be exact: if another
            // test took it meanwhile, the next free one will do.
            c.receiver.auto_bind = 50;
            c.membership.kind = MembershipKind::Multicast;
            c.membership.port = group_port;
            c.membership.bind = Some("127.0.0.1".parse().expect("ip"));
            c
        })
        .collect()
}

/// Configs for `n` nodes with a static member list.
pub fn static_configs(n: usize) -> Vec<Config> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let members: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = base_config(&format!("s{i}"), *p);
            c.membership.kind = MembershipKind::Static;
            c.membership.members = members.clone();
            c
        })
        .collect()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking variant of [`wait_for`] for tests that drive processes.
pub fn wait_blocking<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails loudly when multicast on lo does not work here.
pub fn require_loopback_multicast() {
    assert!(
        shoal::membership::loopback_multicast_works("228.0.0.4".parse().expect("ip"), free_port()),
        "multicast on the loopback interface does not work on this machine; \
         try `ip link set lo multicast on` (scripts/test.sh does)"
    );
}

/// A node-wide counter a plug-in registered (0 if absent).
pub fn plugin_counter(node: &shoal::Node, plugin: &str, counter: &str) -> u64 {
    let chain = node.channel().chain();
    chain
        .interceptors()
        .iter()
        .find(|ic| ic.name() == plugin)
        .and_then(|ic| {
            ic.shared()
                .counters
                .read()
                .expect("lock")
                .iter()
                .find(|c| c.name == counter)
                .map(|c| c.value.load(std::sync::atomic::Ordering::Relaxed))
        })
        .unwrap_or(0)
}

/// Path of a guest component built with this binary (testkit and the built-ins).
pub fn guest(name: &str) -> std::path::PathBuf {
    std::path::Path::new(shoal::plugins::GUEST_DIR).join(format!("{name}.wasm"))
}

/// An interceptor config entry.
pub fn interceptor(
    name: &str,
    wasm: Option<&std::path::Path>,
    fail_closed: bool,
    settings: &[(&str, &str)],
) -> shoal::config::InterceptorConfig {
    let mut t = toml::Table::new();
    for (k, v) in settings {
        t.insert((*k).into(), toml::Value::String((*v).into()));
    }
    shoal::config::InterceptorConfig {
        name: name.into(),
        wasm: wasm.map(|p| p.display().to_string()),
        failure_mode: if fail_closed {
            shoal::plugins::FailureMode::FailClosed
        } else {
            shoal::plugins::FailureMode::FailOpen
        },
        settings: t,
    }
}

/// Collects every message a node's channel delivers.
pub fn collector(
    node: &shoal::Node,
) -> std::sync::Arc<std::sync::Mutex<Vec<shoal::ReceivedMessage>>> {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    node.channel()
        .add_listener(std::sync::Arc::new(move |m: &shoal::ReceivedMessage| {
            g.lock().expect("lock").push(m.clone());
            Ok::<(), shoal::ListenerError>(())
        }));
    got
}

/// Starts `shoal run --config CFG` with stdout and stderr going to `log`.
/// `CARGO_BIN_EXE_shoal` is set for this package's integration tests.
pub fn spawn_shoal(cfg: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let out = std::fs::File::create(log).expect("log file");
    std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "--config"])
        .arg(cfg)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn shoal")
}

/// `GET http://{api}{path}` as JSON, or `None` (not up, not JSON, 2 s timeout).
pub fn get_json(api: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    let mut r = ureq::get(format!("http://{api}{path}"))
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .ok()?;
    r.body_mut().read_json().ok()
}

/// Two static-list nodes, each with its chain (an empty list means no chain
/// at all, not the default chain), compile cache in the target dir, `tweak`
/// applied last; returns once each sees the other.
pub async fn pair(
    chains: [Vec<shoal::config::InterceptorConfig>; 2],
    tweak: impl Fn(&mut Config),
) -> Vec<shoal::Node> {
    let mut nodes = Vec::new();
    for (mut c, chain) in static_configs(2).into_iter().zip(chains) {
        c.plugins.default_chain = false;
        c.interceptors = chain;
        c.plugins.cache_dir = shoal::config::CacheDir::from(format!(
            "{}/component-cache",
            env!("CARGO_TARGET_TMPDIR")
        ));
        tweak(&mut c);
        nodes.push(shoal::Node::start(c).await.expect("node starts"));
    }
    for n in &nodes {
        wait_for("the pair to converge", || async {
            (n.members().len() == 1).then_some(())
        })
        .await;
    }
    nodes
}
