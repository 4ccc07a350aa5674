//! A lab of network namespaces for partition and fault tests (and the
//! partition bench): a Linux bridge in a namespace of its own and one
//! namespace per node, joined to the bridge by a veth pair, on a private
//! subnet that exists only inside the lab. Nothing touches the host's
//! network. Faults: a node's link cut on the bridge side, nftables rules
//! in a node's namespace (UDP from a peer dropped, random loss), netem delay
//! where the kernel has it.
//!
//! Every process started in the lab is killed and every namespace deleted
//! (and with them every veth, the bridge and every firewall rule) when the
//! [`Lab`] is dropped, also when a test panics. Needs root, `ip` (iproute2)
//! and `nft` (nftables); [`unavailable`] says what is missing.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The lab's subnet, 10.77.0.0/24: node `i` is 10.77.0.(i+1). It exists
/// only inside the lab's namespaces, so one value serves every lab.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The bridge, in the bridge namespace.
const BRIDGE: &str = "br0";
/// A node's end of its veth pair, in the node's namespace.
const NODE_IF: &str = "eth0";
/// The nftables table holding a node's faults (in its namespace).
const FAULT_TABLE: &str = "shoal_fault";
/// Where each node's admin API listens: the loopback of its own namespace,
/// so every node can use the same port.
pub const API: &str = "127.0.0.1:8080";
/// Timeout of one API request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Node names, in order.
pub const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Why lab tests cannot run here (not root, `ip` or `nft` missing), or
/// `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces need CAP_NET_ADMIN)".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "-v", "nftables")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` not found (package {package})"));
        }
    }
    None
}

/// Runs a command; panics with its output when it fails.
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `nft -f -` in namespace `ns` with `script` on stdin; panics when
/// it fails.
fn nft(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft in {ns} refused:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node's namespace.
#[derive(Debug)]
pub struct Host {
    /// Node name (`a`, `b`, …).
    pub name: &'static str,
    /// Namespace name.
    pub ns: String,
    /// Its address on the lab's bridge.
    pub ip: Ipv4Addr,
    /// Its veth's bridge end (in the bridge namespace).
    bridge_port: String,
    /// The `shoal` process running in it, if any.
    child: Option<Child>,
}

/// A bridge namespace and `n` node namespaces; see the module doc.
#[derive(Debug)]
pub struct Lab {
    bridge_ns: String,
    /// The nodes' namespaces, in order.
    pub hosts: Vec<Host>,
    /// Configs and logs of the processes.
    pub dir: PathBuf,
    /// Namespaces created so far (deleted on drop).
    created: Vec<String>,
}

impl Lab {
    /// Builds the lab: namespaces named `shoal-PID-TAG-…` (unique per run),
    /// the bridge with multicast snooping off (every port gets every group),
    /// one veth pair per node, addresses, and a multicast route on each
    /// node's link. Panics (after cleaning up what it made) on failure.
    pub fn new(tag: &str, n: usize) -> Self {
        assert!((1..=NAMES.len()).contains(&n), "1 to 5 nodes");
        let prefix = format!("shoal-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab dir");
        let mut lab = Self {
            bridge_ns: format!("{prefix}-br"),
            hosts: Vec::new(),
            dir,
            created: Vec::new(),
        };
        let br = lab.bridge_ns.clone();
        lab.add_ns(&br);
        run(
            "ip",
            &[
                "-n",
                &br,
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        run("ip", &["-n", &br, "link", "set", BRIDGE, "up"]);
        for (i, name) in NAMES.iter().take(n).enumerate() {
            let ns = format!("{prefix}-{name}");
            lab.add_ns(&ns);
            let port = format!("v{name}");
            let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1);
            let cidr = format!("{ip}/24");
            run(
                "ip",
                &[
                    "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", NODE_IF,
                    "netns", &ns,
                ],
            );
            run(
                "ip",
                &["-n", &br, "link", "set", &port, "master", BRIDGE, "up"],
            );
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", NODE_IF]);
            run("ip", &["-n", &ns, "link", "set", NODE_IF, "up"]);
            run(
                "ip",
                &["-n", &ns, "route", "add", "224.0.0.0/4", "dev", NODE_IF],
            );
            lab.hosts.push(Host {
                name,
                ns,
                ip,
                bridge_port: port,
                child: None,
            });
        }
        lab
    }

    fn add_ns(&mut self, ns: &str) {
        run("ip", &["netns", "add", ns]);
        self.created.push(ns.to_owned());
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Starts `shoal run --config` in node `i`'s namespace with `config`
    /// (written to the lab dir); its output goes to `NAME.log` there.
    pub fn start_shoal(&mut self, i: usize, config: &str) {
        let name = self.hosts[i].name;
        let cfg = self.dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).expect("write config");
        let log = File::create(self.log_path(i)).expect("log file");
        // `ip netns exec` enters the namespace and execs shoal: the child's
        // pid is shoal's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns])
            .arg(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn shoal in its namespace");
        self.hosts[i].child = Some(child);
    }

    /// A command that runs `program` in node `i`'s namespace (`ip netns
    /// exec NS program`: the child's pid is the program's own). The caller
    /// owns the child and must kill it: [`Lab`]'s drop only kills what
    /// [`Lab::start_shoal`] started.
    pub fn command_in(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        cmd
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.hosts[i].name))
    }

    /// Whether node `i`'s process is still running (false once it exited).
    pub fn alive(&mut self, i: usize) -> bool {
        match self.hosts[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM to node `i` and waits (at most `within`) for it to
    /// exit; its exit status, or `None` if it had to be killed.
    pub fn stop(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.hosts[i].child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Takes node `i`'s link down on the bridge side: the node is cut off
    /// (its own interface loses carrier, as with a pulled cable).
    pub fn cut(&self, i: usize) {
        let h = &self.hosts[i];
        run(
            "ip",
            &["-n", &self.bridge_ns, "link", "set", &h.bridge_port, "down"],
        );
    }

    /// Brings node `i`'s link back up.
    pub fn heal(&self, i: usize) {
        let h = &self.hosts[i];
        run(
            "ip",
            &["-n", &self.bridge_ns, "link", "set", &h.bridge_port, "up"],
        );
    }

    /// Adds `rule` to the input chain of node `i`'s fault table (created on
    /// first use). Loopback traffic (the admin API) is never touched: each
    /// rule given here must only match the bridge link.
    fn add_input_rule(&self, i: usize, rule: &str) {
        nft(
            &self.hosts[i].ns,
            &format!(
                "add table inet {FAULT_TABLE}\n\
                 add chain inet {FAULT_TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
                 add rule inet {FAULT_TABLE} input iifname \"{NODE_IF}\" {rule}\n"
            ),
        );
    }

    /// Node `i` drops every UDP datagram from node `j` (its heartbeats);
    /// TCP between them still works.
    pub fn drop_udp_from(&self, i: usize, j: usize) {
        let from = self.hosts[j].ip;
        self.add_input_rule(i, &format!("ip saddr {from} meta l4proto udp counter drop"));
    }

    /// Node `i` loses `percent` % of the packets it receives from the
    /// bridge, at random (UDP and TCP alike), like `netem loss` on the
    /// bridge's end of its link.
    pub fn lose(&self, i: usize, percent: u8) {
        self.add_input_rule(
            i,
            &format!("numgen random mod 100 < {percent} counter drop"),
        );
    }

    /// Packets node `i`'s fault rules have dropped so far.
    pub fn dropped(&self, i: usize) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i].ns,
                "nft",
                "list",
                "table",
                "inet",
                FAULT_TABLE,
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Delays every packet node `i` sends on its link by `ms` with netem;
    /// `false` when this kernel has no netem (sch_netem), then nothing is
    /// changed.
    pub fn delay(&self, i: usize, ms: u32) -> bool {
        Command::new("tc")
            .args([
                "-n",
                &self.hosts[i].ns,
                "qdisc",
                "add",
                "dev",
                NODE_IF,
                "root",
            ])
            .args(["netem", "delay", &format!("{ms}ms")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Removes node `i`'s faults: its fault table and any netem qdisc.
    pub fn clear_faults(&self, i: usize) {
        let ns = &self.hosts[i].ns;
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "inet",
                FAULT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("tc")
            .args(["-n", ns, "qdisc", "del", "dev", NODE_IF, "root"])
            .stderr(Stdio::null())
            .status();
    }

    /// Runs `f` on a thread that has entered node `i`'s network namespace
    /// (setns affects only the calling thread; the test's own threads stay
    /// where they are).
    pub fn within<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.hosts[i].ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }

    /// An HTTP request to node `i`'s admin API (inside its namespace):
    /// status and body as JSON (`Null` when none), or `None` when the API
    /// does not answer.
    pub fn http(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, Value)> {
        let url = format!("http://{API}{path}");
        self.within(i, move || {
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(HTTP_TIMEOUT))
                .build()
                .new_agent();
            let r = match method {
                "GET" => agent.get(&url).call(),
                "POST" => agent
                    .post(&url)
                    .content_type("application/json")
                    .send(body.unwrap_or("")),
                "PATCH" => agent
                    .patch(&url)
                    .content_type("application/json")
                    .send(body.unwrap_or("")),
                _ => panic!("method {method}"),
            };
            let mut r = r.ok()?;
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().ok()?;
            Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
        })
    }

    /// `GET path` on node `i` as JSON, when it answers 200.
    pub fn get(&self, i: usize, path: &str) -> Option<Value> {
        match self.http(i, "GET", path, None)? {
            (200, v) => Some(v),
            _ => None,
        }
    }

    /// The unique ids of the members node `i` lists (`/api/members`),
    /// sorted; `None` when its API does not answer.
    pub fn members(&self, i: usize) -> Option<Vec<String>> {
        let v = self.get(i, "/api/members")?;
        let mut ids: Vec<String> = v
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        Some(ids)
    }

    /// One sample of node `i`'s `/metrics` (`name` with its labels, as
    /// written there), or `None`.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let url = format!("http://{API}/metrics");
        let text = self.within(i, move || {
            let agent = ureq::Agent::config_builder()
                .timeout_global(Some(HTTP_TIMEOUT))
                .build()
                .new_agent();
            agent
                .get(&url)
                .call()
                .ok()?
                .body_mut()
                .read_to_string()
                .ok()
        })?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// A config for node `i`: Tomcat's default membership (228.0.0.4:45564,
    /// 500 ms / 3000 ms) on the lab's bridge, receiver on the node's
    /// address, admin API on [`API`], the default chain and session engine,
    /// and `extra` appended (more TOML sections).
    pub fn config(&self, i: usize, extra: &str) -> String {
        let h = &self.hosts[i];
        format!(
            "[node]\nname = \"{name}\"\ndomain = \"netns\"\n\
             [membership]\nbind = \"{ip}\"\nfrequency_ms = 500\ndrop_time_ms = 3000\n\
             [receiver]\naddress = \"{ip}\"\nport = 4000\nauto_bind = 1\n\
             [api]\nlisten = \"{API}\"\n\
             [plugins]\ncache_dir = \"{cache}/component-cache\"\n{extra}",
            name = h.name,
            ip = h.ip,
            cache = env!("CARGO_TARGET_TMPDIR"),
        )
    }

    /// The prefix of this lab's namespace names.
    pub fn prefix(&self) -> String {
        self.bridge_ns.trim_end_matches("-br").to_owned()
    }
}

/// Namespaces whose name starts with `prefix` (to check a lab is gone).
pub fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Deleting a namespace destroys its interfaces (a veth pair goes
        // with either end), its routes and its nftables tables.
        for ns in self.created.iter().rev() {
            let ok = Command::new("ip")
                .args(["netns", "del", ns])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "lab: could not delete namespace {ns}; remove it with `ip netns del {ns}`"
                );
            }
        }
        if std::thread::panicking() {
            eprintln!("lab: configs and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
