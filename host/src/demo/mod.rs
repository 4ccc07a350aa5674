//! `shoal demo`: nodes on 127.0.0.1 as separate `shoal run` processes of
//! this same binary, each with its own generated config in a temp dir.
//!
//! # Layout
//!
//! - [`sessions`] (`shoal demo`, `shoal demo sessions`): session replication
//!   in the nine steps of the Tomcat article, each step checked.
//! - [`transport`] (`shoal demo transport`): discovery, acknowledged
//!   messages, failure detection of a SIGKILLed member, a graceful leave.
//! - This file: what both share — the [`Cluster`] guard that stops every
//!   process it started when dropped (also on error), the membership section
//!   (multicast on loopback when it works here, else a static list), waits.

mod sessions;
mod transport;

pub use sessions::run as sessions;
pub use transport::run as transport;

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Tomcat's default multicast group (`McastService` address).
const GROUP: Ipv4Addr = Ipv4Addr::new(228, 0, 0, 4);
/// Heartbeat period: Tomcat's default (`McastService` frequency, 500 ms).
const FREQUENCY_MS: u64 = 500;
/// A member silent this long is dropped: Tomcat's default `dropTime`.
const DROP_TIME_MS: u64 = 3000;
/// Upper bound on any wait of a demo.
const WAIT: Duration = Duration::from_secs(20);

/// One node process: its ports, config and log (kept for a restart).
struct DemoNode {
    name: &'static str,
    api: SocketAddr,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The demo's nodes; kills whatever is still running when dropped.
struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    membership: String,
    /// Which membership the nodes use, and why (lines to print).
    note: Vec<String>,
    nodes: Vec<DemoNode>,
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

impl Cluster {
    /// A temp dir `shoal-demo-TAG-PID`, ports and a config for each of
    /// `names` (`extra(name)` appended to its `[node]` section: more keys,
    /// then more sections); picks the membership but starts nothing.
    fn new(
        tag: &str,
        names: &[&'static str],
        extra: impl Fn(&str) -> String,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the shoal binary")?;
        let dir = std::env::temp_dir().join(format!("shoal-demo-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The config names a node's ports before its process starts (and a
        // restart reuses them): numbers outside the ephemeral range, so no
        // outgoing connection takes one meanwhile.
        let mut ports = shoal::transport::ports::reserve_loopback(2 * names.len() + 1)
            .context("choosing free loopback ports")?
            .into_iter();
        let mut port = || ports.next().context("a reserved port");
        let mut nodes = Vec::new();
        for &name in names {
            nodes.push(DemoNode {
                name,
                api: SocketAddr::from(([127, 0, 0, 1], port()?)),
                port: port()?,
                config: dir.join(format!("{name}.toml")),
                log: dir.join(format!("{name}.log")),
                child: None,
            });
        }
        // A port number unlikely to be in use by a real cluster.
        let mcast_port = port()?;
        let mut note = Vec::new();
        let membership = if shoal::membership::loopback_multicast_works(GROUP, mcast_port) {
            note.push(format!(
                "membership: UDP multicast {GROUP}:{mcast_port} on lo (heartbeat {FREQUENCY_MS} ms, dropTime {DROP_TIME_MS} ms)"
            ));
            format!(
                "[membership]\nkind = \"multicast\"\naddress = \"{GROUP}\"\nport = {mcast_port}\nbind = \"127.0.0.1\"\nfrequency_ms = {FREQUENCY_MS}\ndrop_time_ms = {DROP_TIME_MS}"
            )
        } else {
            note.push(
                "membership: multicast does not loop back on lo here; using the static member list instead".into(),
            );
            note.push(
                "   (to use multicast: ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo)".into(),
            );
            let list: Vec<String> = nodes
                .iter()
                .map(|n| format!("\"127.0.0.1:{}\"", n.port))
                .collect();
            format!(
                "[membership]\nkind = \"static\"\nmembers = [{}]\nfrequency_ms = {FREQUENCY_MS}\ndrop_time_ms = {DROP_TIME_MS}",
                list.join(", ")
            )
        };
        let cluster = Self {
            exe,
            dir,
            membership,
            note,
            nodes,
        };
        for i in 0..cluster.nodes.len() {
            cluster.write_config(i, &extra(cluster.nodes[i].name))?;
        }
        Ok(cluster)
    }

    /// Writes node `i`'s config: `[node]` with `extra`, membership,
    /// receiver, admin API.
    fn write_config(&self, i: usize, extra: &str) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        let text = format!(
            "[node]\nname = \"{name}\"\ndomain = \"demo\"\n{extra}\n\n{membership}\n\n[receiver]\naddress = \"127.0.0.1\"\nport = {port}\nauto_bind = 1\n\n[api]\nlisten = \"{api}\"\n",
            name = n.name,
            membership = self.membership,
            port = n.port,
            api = n.api,
        );
        std::fs::write(&n.config, text).with_context(|| format!("writing {}", n.config.display()))
    }

    /// Starts node `i` (again, after a kill: same config, log appended).
    fn start(&mut self, i: usize) -> anyhow::Result<u32> {
        let n = &mut self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("opening {}", n.log.display()))?;
        let child = Command::new(&self.exe)
            .arg("run")
            .arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {}", n.name))?;
        let pid = child.id();
        n.child = Some(child);
        Ok(pid)
    }

    /// SIGKILLs node `i` and reaps it.
    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        if let Some(mut child) = n.child.take() {
            child
                .kill()
                .with_context(|| format!("killing node {}", n.name))?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGTERMs node `i` and waits (up to 10 s) for it to exit 0.
    fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let n = &mut self.nodes[i];
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
}

/// `GET http://{api}{path}` as JSON (2 s timeout).
fn get_json<T: serde::de::DeserializeOwned>(api: SocketAddr, path: &str) -> anyhow::Result<T> {
    let mut resp = ureq::get(format!("http://{api}{path}"))
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()?;
    Ok(resp.body_mut().read_json()?)
}

/// Polls `f` every 10 ms until it gives a value, for at most [`WAIT`].
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Some(v) = f() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("timed out after {WAIT:?} waiting for {what}")
}

/// The member ids node `api` lists, if it answers.
fn member_ids(api: SocketAddr) -> Option<Vec<String>> {
    let v: Vec<shoal::api::MemberJson> = get_json(api, "/api/members").ok()?;
    Some(v.into_iter().map(|m| m.id).collect())
}

/// Node `api`'s member id.
fn node_id(api: SocketAddr) -> anyhow::Result<String> {
    let v: serde_json::Value = get_json(api, "/api/node")?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .context("GET /api/node has no id")
}
