//! `shoal demo`: three nodes on loopback, as separate processes of this same
//! binary, walked through discovery, acknowledged messages, failure detection
//! of a SIGKILLed member and a graceful leave. Every process it starts is
//! stopped before it returns, also on error.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use shoal::api::{MemberJson, SendResult};

const GROUP: Ipv4Addr = Ipv4Addr::new(228, 0, 0, 4);
const FREQUENCY_MS: u64 = 500;
const DROP_TIME_MS: u64 = 3000;
/// Upper bound on any wait of the demo.
const WAIT: Duration = Duration::from_secs(20);

struct DemoNode {
    name: &'static str,
    api: SocketAddr,
    child: Option<Child>,
}

/// Kills whatever is still running when dropped.
struct Cluster {
    nodes: Vec<DemoNode>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn get_json<T: serde::de::DeserializeOwned>(api: SocketAddr, path: &str) -> anyhow::Result<T> {
    let mut resp = ureq::get(format!("http://{api}{path}"))
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()?;
    Ok(resp.body_mut().read_json()?)
}

fn post_send(api: SocketAddr, options: &str, body: &str) -> anyhow::Result<SendResult> {
    let mut resp = ureq::post(format!("http://{api}/api/send?options={options}"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .send(body)?;
    Ok(resp.body_mut().read_json()?)
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Some(v) = f() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {WAIT:?} waiting for {what}")
}

fn members_of(api: SocketAddr) -> Option<Vec<MemberJson>> {
    get_json(api, "/api/members").ok()
}

fn write_config(
    dir: &Path,
    name: &str,
    membership: &str,
    port: u16,
    api: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[node]\nname = \"{name}\"\ndomain = \"demo\"\n\n{membership}\n\n[receiver]\naddress = \"127.0.0.1\"\nport = {port}\nauto_bind = 1\n\n[api]\nlisten = \"{api}\"\n"
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn step(n: u32, text: &str) {
    println!("\n── {n}. {text}");
    let _ = std::io::stdout().flush();
}

/// Runs the demo. Returns an error (after stopping every node) if a step fails.
pub fn run() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the shoal binary")?;
    let dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = ["a", "b", "c"];
    let mut ports = Vec::new();
    let mut apis = Vec::new();
    for _ in names {
        ports.push(free_tcp_port()?);
        apis.push(SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)));
    }
    let mcast_port = free_tcp_port()?; // a port number unlikely to be in use by a real cluster

    step(1, "Starting 3 nodes on loopback, each its own process");
    let membership = if shoal::membership::loopback_multicast_works(GROUP, mcast_port) {
        println!(
            "   membership: UDP multicast {GROUP}:{mcast_port} on lo (heartbeat {FREQUENCY_MS} ms, dropTime {DROP_TIME_MS} ms)"
        );
        format!(
            "[membership]\nkind = \"multicast\"\naddress = \"{GROUP}\"\nport = {mcast_port}\nbind = \"127.0.0.1\"\nfrequency_ms = {FREQUENCY_MS}\ndrop_time_ms = {DROP_TIME_MS}"
        )
    } else {
        println!(
            "   multicast does not loop back on lo here; using the static member list instead."
        );
        println!(
            "   (to use multicast: ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo)"
        );
        let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        format!(
            "[membership]\nkind = \"static\"\nmembers = [{}]\nfrequency_ms = {FREQUENCY_MS}\ndrop_time_ms = {DROP_TIME_MS}",
            list.join(", ")
        )
    };
    let mut cluster = Cluster {
        nodes: Vec::new(),
        dir: dir.clone(),
    };
    for (i, name) in names.into_iter().enumerate() {
        let cfg = write_config(&dir, name, &membership, ports[i], apis[i])?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {name}"))?;
        println!(
            "   node {name}: pid {:>6}  receiver tcp://127.0.0.1:{}  admin http://{}",
            child.id(),
            ports[i],
            apis[i]
        );
        cluster.nodes.push(DemoNode {
            name,
            api: apis[i],
            child: Some(child),
        });
    }
    println!("   logs: {}", cluster.dir.display());

    step(2, "Waiting for every node to discover the other two");
    let t0 = Instant::now();
    for n in &cluster.nodes {
        wait_until(&format!("node {} to see 2 members", n.name), || {
            members_of(n.api).filter(|m| m.len() == 2)
        })?;
    }
    println!("   converged in {} ms", t0.elapsed().as_millis());
    for n in &cluster.nodes {
        let ms = members_of(n.api).unwrap_or_default();
        let list: Vec<String> = ms
            .iter()
            .map(|m| format!("{}:{} ({}…)", m.host, m.port, &m.id[..8]))
            .collect();
        println!("   {} sees {}", n.name, list.join(", "));
    }

    step(
        3,
        "Acknowledged messages (options 7 = byte|use_ack|sync: ACK after the receiver processed it)",
    );
    for (from, text) in [(0usize, "hello from a"), (1, "hello from b")] {
        let n = &cluster.nodes[from];
        let t = Instant::now();
        let r = post_send(n.api, "7", text)?;
        if !r.ok {
            bail!("send from {} failed: {:?}", n.name, r.error);
        }
        println!(
            "   {} → {} members: all ACKed in {:.2} ms",
            n.name,
            r.sent_to,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let c = &cluster.nodes[2];
    let got: Vec<shoal::MessageSummary> = wait_until("node c to receive both messages", || {
        get_json::<Vec<shoal::MessageSummary>>(c.api, "/api/messages")
            .ok()
            .filter(|v| v.len() >= 2)
    })?;
    for m in got {
        println!(
            "   c received {:?} from {} (options {})",
            m.preview, m.from_addr, m.options
        );
    }

    step(
        4,
        "SIGKILL node c: a and b detect it after dropTime (3000 ms) without a heartbeat",
    );
    let c_id = get_json::<serde_json::Value>(cluster.nodes[2].api, "/api/node")?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(mut child) = cluster.nodes[2].child.take() {
        child.kill().context("killing node c")?;
        let _ = child.wait();
    }
    let killed = Instant::now();
    for n in &cluster.nodes[..2] {
        wait_until(&format!("node {} to drop c", n.name), || {
            members_of(n.api).filter(|m| m.iter().all(|m| m.id != c_id))
        })?;
        println!(
            "   {} dropped c after {} ms",
            n.name,
            killed.elapsed().as_millis()
        );
    }

    step(
        5,
        "SIGTERM node b: it announces its departure, a drops it at once",
    );
    let b_id = get_json::<serde_json::Value>(cluster.nodes[1].api, "/api/node")?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stopped = Instant::now();
    terminate(&mut cluster.nodes[1])?;
    let a = cluster.nodes[0].api;
    wait_until("node a to drop b", || {
        members_of(a).filter(|m| m.iter().all(|m| m.id != b_id))
    })?;
    println!(
        "   a dropped b after {} ms (shutdown announcement)",
        stopped.elapsed().as_millis()
    );
    let events: Vec<shoal::EventSummary> = get_json(a, "/api/events")?;
    for e in events.iter().filter(|e| e.kind == "disappeared") {
        println!(
            "   a's event log: {} {} ({})",
            e.addr,
            e.kind,
            e.reason.as_deref().unwrap_or("")
        );
    }

    step(6, "Stopping node a");
    terminate(&mut cluster.nodes[0])?;
    println!(
        "\nDemo complete; all nodes stopped. Logs are in {}",
        dir.display()
    );
    Ok(())
}

fn terminate(n: &mut DemoNode) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(mut child) = n.child.take() else {
        return Ok(());
    };
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("sending SIGTERM")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("node {} exited with {status}", n.name);
            }
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("node {} did not stop within 10 s of SIGTERM", n.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
