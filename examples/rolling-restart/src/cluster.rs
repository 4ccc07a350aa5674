//! The processes of one run: three `webapp` nodes (each an embedded shoal
//! node) with generated configs, Apache httpd in front of them and a deploy
//! key. Nodes are stopped gracefully (SIGTERM), restarted with another
//! config and waited for; whatever is still running when the [`Cluster`]
//! drops — on every path, errors and panics included — is killed, and the
//! run's directory removed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::httpd::Httpd;

/// Nodes in the cluster: the issue's three.
pub const NODES: usize = 3;
/// How long a (re)started node may take to be ready: state transfer done,
/// every node seeing every other. The node's own state-transfer timeout is
/// 60 s (`session.state_transfer_timeout_ms`, Tomcat's); a healthy one on
/// loopback takes about a second.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cache warm-up's node may take: it compiles six components,
/// which takes a release build about a second and a debug build (the tests')
/// up to minutes on a busy 2-core machine — once per machine, the cache
/// keeps them.
pub const WARM_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a SIGTERMed node may take to drain and leave before it is
/// SIGKILLed (and the run reported as unclean). Draining waits for
/// in-flight requests (httpd's member `timeout` is 10 s) and replication.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// The plug-in name the rolls change.
pub const FILTER: &str = "filter";

/// Where the programs and guest components of a run are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `shoal` command line (keygen, deploy).
    pub shoal: PathBuf,
    /// The example web app (`examples/webapp`).
    pub webapp: PathBuf,
    /// `target/guests/wasm32-wasip2/release`, built by host/build.rs.
    pub guests: PathBuf,
}

impl Binaries {
    /// The layout cargo leaves: `shoal` and `webapp` in the profile
    /// directory `dir` (`target/release`, `target/debug`: where this driver
    /// is too), the guests in `target/guests/…`.
    pub fn beside(dir: &Path) -> Self {
        let target = dir.parent().unwrap_or(dir);
        Self {
            shoal: dir.join("shoal"),
            webapp: dir.join("webapp"),
            guests: target.join("guests").join("wasm32-wasip2").join("release"),
        }
    }

    /// Filter version 1: the built-in domain filter's component, no
    /// settings (passes the members and messages of the empty domain).
    pub fn filter_v1(&self) -> PathBuf {
        self.guests.join("domain_filter.wasm")
    }

    /// Filter version 2: `guests/size-filter` (drops messages over 4 MiB).
    pub fn filter_v2(&self) -> PathBuf {
        self.guests.join("size_filter.wasm")
    }

    /// A component of about 100 KB that takes no settings, for deploy
    /// timings: the built-in throughput counter.
    pub fn timing_component(&self) -> PathBuf {
        self.guests.join("throughput.wasm")
    }

    /// Fails, naming the build command, if a file is missing.
    pub fn check(&self) -> anyhow::Result<()> {
        for f in [
            &self.shoal,
            &self.webapp,
            &self.filter_v1(),
            &self.filter_v2(),
            &self.timing_component(),
        ] {
            if !f.is_file() {
                bail!(
                    "{} is missing: build it first (`cargo build --release -p shoal -p shoal-webapp \
                     -p shoal-rolling-restart`, or without --release for target/debug; \
                     examples/rolling-restart/run.sh does it), or pass --bin-dir / --guest-dir",
                    f.display()
                );
            }
        }
        Ok(())
    }
}

/// One `webapp` process and what it was started with.
#[derive(Debug)]
pub struct Node {
    /// Node name and jvm_route (`n1`…): its users' session ids end in it.
    pub name: String,
    /// Its config file (its own directory: `deployed/` goes beside it).
    pub config: PathBuf,
    /// The web app's address (a member of httpd's balancer).
    pub web: SocketAddr,
    /// The node's admin API.
    pub api: SocketAddr,
    /// The filter component its config names.
    pub filter: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Three nodes, httpd in front of them (unless started without), a deploy
/// key, one temporary directory.
#[derive(Debug)]
pub struct Cluster {
    /// The run's directory (configs, logs, key, compile cache).
    pub dir: PathBuf,
    /// The nodes, `n1`… in order.
    pub nodes: Vec<Node>,
    /// The front end.
    pub httpd: Option<Httpd>,
    /// The operator's signing key (`shoal plugin keygen`).
    pub key: PathBuf,
    bins: Binaries,
    public_key: String,
    group_port: u16,
    cache_dir: PathBuf,
    keep: bool,
    extra: Vec<(String, PathBuf)>,
    ready_timeout: Duration,
    /// Node process ids, for the CPU sampler (updated on every start).
    pids: Arc<Mutex<Vec<u32>>>,
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The programs.
    pub bins: Binaries,
    /// The filter component every node's config names at first.
    pub filter: PathBuf,
    /// Put httpd in front.
    pub httpd: bool,
    /// Compiled-component cache shared by the nodes (`None`: one in the
    /// run's directory, so cold).
    pub cache_dir: Option<PathBuf>,
    /// Keep the run's directory (configs, logs) at the end.
    pub keep: bool,
    /// Nodes: [`NODES`], or 1 for the cache warm-up.
    pub nodes: usize,
    /// Interceptors after `filter`, `(name, component)`: the warm-up loads
    /// every component the run will need.
    pub extra: Vec<(String, PathBuf)>,
    /// How long a node may take to get ready.
    pub ready_timeout: Duration,
}

impl ClusterSpec {
    /// [`NODES`] nodes on `filter`.
    pub fn new(bins: &Binaries, filter: &Path, httpd: bool) -> Self {
        Self {
            bins: bins.clone(),
            filter: filter.to_path_buf(),
            httpd,
            cache_dir: None,
            keep: false,
            nodes: NODES,
            extra: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }
}

impl Cluster {
    /// Starts the nodes on `spec.filter`, waits until each is ready and
    /// sees the others, then starts httpd in front of them.
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        let dir = fresh_dir()?;
        let cache_dir = spec
            .cache_dir
            .clone()
            .unwrap_or_else(|| dir.join("component-cache"));
        let mut c = Cluster {
            key: dir.join("deploy.key"),
            dir,
            nodes: Vec::new(),
            httpd: None,
            bins: spec.bins.clone(),
            public_key: String::new(),
            group_port: 0,
            cache_dir,
            keep: spec.keep,
            extra: spec.extra.clone(),
            ready_timeout: spec.ready_timeout,
            pids: Arc::new(Mutex::new(Vec::new())),
        };
        c.public_key = c.keygen()?;
        // The multicast group port, and the web and admin ports, which stay
        // the same across restarts (httpd's member list and the driver name
        // them): chosen once here, all distinct and outside the kernel's
        // ephemeral range, so no outgoing connection of a starting node
        // takes one before its node binds it (it did: a node failed to
        // start). A receiver port is the node's own choice (`port = 0`):
        // peers learn it by multicast.
        let ports = shoal::transport::ports::reserve_loopback(2 * spec.nodes + 1)
            .context("choosing free loopback ports")?;
        c.group_port = ports[2 * spec.nodes];
        for i in 0..spec.nodes {
            let name = format!("n{}", i + 1);
            let node_dir = c.dir.join(&name);
            std::fs::create_dir_all(&node_dir)?;
            c.nodes.push(Node {
                config: node_dir.join("node.toml"),
                log: node_dir.join("node.log"),
                web: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[2 * i])),
                api: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[2 * i + 1])),
                filter: spec.filter.clone(),
                name,
                child: None,
            });
            c.write_config(i)?;
            c.spawn(i)?;
        }
        for i in 0..spec.nodes {
            c.wait_ready(i)?;
        }
        if spec.httpd {
            let members: Vec<(&str, SocketAddr)> =
                c.nodes.iter().map(|n| (n.name.as_str(), n.web)).collect();
            c.httpd = Some(
                Httpd::start(0, &members)
                    .context("starting Apache httpd (apt-get install apache2; scripts/setup.sh)")?,
            );
        }
        Ok(c)
    }

    /// The front end's base URL (`http://127.0.0.1:PORT`).
    pub fn front_url(&self) -> Option<String> {
        self.httpd.as_ref().map(|h| h.url(""))
    }

    /// Process ids of the running nodes, shared with the CPU sampler.
    pub fn pids(&self) -> Arc<Mutex<Vec<u32>>> {
        self.pids.clone()
    }

    fn update_pids(&self) {
        let live: Vec<u32> = self.nodes.iter().filter_map(Node::pid).collect();
        *self.pids.lock().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// `shoal plugin keygen`: answers the public key for `[deploy] keys`.
    fn keygen(&self) -> anyhow::Result<String> {
        let out = Command::new(&self.bins.shoal)
            .args(["plugin", "keygen", "--out"])
            .arg(&self.key)
            .output()
            .with_context(|| format!("running {}", self.bins.shoal.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "shoal plugin keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        text.lines()
            .find_map(|l| l.trim().strip_prefix("keys = [\""))
            .and_then(|l| l.strip_suffix("\"]"))
            .map(str::to_owned)
            .with_context(|| format!("no public key in the output of shoal plugin keygen: {text}"))
    }

    /// Writes node `i`'s config, naming its current filter.
    fn write_config(&self, i: usize) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        let mut text = format!(
            r#"# Written by examples/rolling-restart (cluster.rs). An ordinary node config.
[node]
name = "{name}"
jvm_route = "{name}"     # session ids end in .{name}; httpd's route= for this member
# domain left empty: filter version 1 (the domain filter, no settings)
# passes members and messages of the empty domain.

[membership]
kind = "multicast"
port = {group}             # this run's own group port
bind = "127.0.0.1"

[receiver]
address = "127.0.0.1"
port = 0                  # any free port; peers learn it by multicast

[api]
listen = "{api}"

[plugins]
cache_dir = "{cache}"

[session]
policy = "delta"          # a copy on every node (DeltaManager)
send_options = "sync-ack" # a response leaves once the other nodes applied its change

[deploy]
keys = ["{key}"]

# The default chain, then the filter the rolls change.
[[interceptor]]
name = "tcp-failure-detector"

[[interceptor]]
name = "message-dispatch"

[[interceptor]]
name = "throughput"

[[interceptor]]
name = "{FILTER}"
wasm = "{wasm}"
"#,
            name = n.name,
            group = self.group_port,
            api = n.api,
            cache = toml_path(&self.cache_dir),
            key = self.public_key,
            wasm = toml_path(&n.filter),
        );
        for (name, wasm) in &self.extra {
            text.push_str(&format!(
                "\n[[interceptor]]\nname = \"{name}\"\nwasm = \"{}\"\n",
                toml_path(wasm)
            ));
        }
        std::fs::write(&n.config, text).with_context(|| format!("writing {}", n.config.display()))
    }

    /// Starts node `i`'s process (its log is appended to, so a restart
    /// keeps the earlier run's lines).
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(&self.bins.webapp)
            .arg("--config")
            .arg(&n.config)
            .arg("--listen")
            .arg(n.web.to_string())
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bins.webapp.display()))?;
        n.child = Some(child);
        self.update_pids();
        Ok(())
    }

    /// Waits until node `i` is ready (its state transfer done: `GET
    /// /ready` 200) and every node sees the other two. Fails early if the
    /// process exits.
    pub fn wait_ready(&mut self, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let want = self.nodes.len() - 1;
        loop {
            for j in 0..self.nodes.len() {
                if let Some(c) = self.nodes[j].child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    self.nodes[j].child = None;
                    self.update_pids();
                    bail!(
                        "{} exited ({status}) while {} was starting:\n{}",
                        self.nodes[j].name,
                        self.nodes[i].name,
                        self.log_tail(j, 30)
                    );
                }
            }
            let ready = get(self.nodes[i].web, "/ready").is_ok_and(|(s, _)| s == 200);
            let seen = ready
                && self
                    .nodes
                    .iter()
                    .all(|n| n.child.is_some() && member_count(n.api) == Some(want));
            if seen {
                return Ok(started.elapsed());
            }
            if started.elapsed() > self.ready_timeout {
                let mut text = String::new();
                for (j, n) in self.nodes.iter().enumerate() {
                    text.push_str(&format!(
                        "--- {} (members seen: {:?}, ready: {}) ---\n{}\n",
                        n.name,
                        member_count(n.api),
                        get(n.web, "/ready").is_ok_and(|(s, _)| s == 200),
                        self.log_tail(j, 20)
                    ));
                }
                bail!(
                    "{} was not ready (state transfer done, {want} members seen by every node) \
                     within {:?}:\n{text}",
                    self.nodes[i].name,
                    self.ready_timeout,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to node `i` (it stops accepting, finishes its requests,
    /// announces that it leaves), then waits for it to exit; SIGKILL after
    /// [`STOP_GRACE`]. Answers how long it took and whether it exited by
    /// itself.
    pub fn stop(&mut self, i: usize) -> anyhow::Result<(Duration, bool)> {
        let started = Instant::now();
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok((Duration::ZERO, true));
        };
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, Signal::SIGTERM).context("SIGTERM")?;
        let clean = loop {
            if child.try_wait()?.is_some() {
                break true;
            }
            if started.elapsed() > STOP_GRACE {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.update_pids();
        Ok((started.elapsed(), clean))
    }

    /// Restarts node `i`: SIGTERM, its config rewritten to name `filter`
    /// (`None`: unchanged), started again, waited for.
    pub fn restart(&mut self, i: usize, filter: Option<&Path>) -> anyhow::Result<Restart> {
        let (stop, clean) = self.stop(i)?;
        if let Some(f) = filter {
            self.nodes[i].filter = f.to_path_buf();
            self.write_config(i)?;
        }
        self.spawn(i)?;
        let ready = self.wait_ready(i)?;
        Ok(Restart { stop, clean, ready })
    }

    /// SIGTERMs every node, in order, then stops httpd (its error log is
    /// kept as `httpd-error.log` in the run's directory); answers the names
    /// of the nodes that had to be killed.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        for i in 0..self.nodes.len() {
            if !matches!(self.stop(i), Ok((_, true))) {
                unclean.push(self.nodes[i].name.clone());
            }
        }
        if let Some(h) = self.httpd.take() {
            let _ = std::fs::write(self.dir.join("httpd-error.log"), h.stop());
        }
        unclean
    }

    /// Keep the run's directory (node logs, configs, httpd's error log)
    /// when this drops.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Takes member `i` out of httpd's balancer (`disabled`: its sticky
    /// users fail over to the others, no request reaches it) or puts it
    /// back, through the balancer-manager page as an operator would
    /// (`w_status_D`; the page's nonce and a same-site Referer). Checks the
    /// page shows the new status.
    pub fn set_disabled(&self, i: usize, disabled: bool) -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        let h = self.httpd.as_ref().context("no httpd in front")?;
        let page = h.balancer_status()?;
        let nonce: String = page
            .split("nonce=")
            .nth(1)
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect()
            })
            .filter(|n: &String| !n.is_empty())
            .context("no nonce on the balancer-manager page")?;
        let worker = format!("http://{}", self.nodes[i].web);
        let body = format!(
            "b={}&w={}&w_status_D={}&nonce={nonce}",
            crate::httpd::BALANCER,
            worker.replace(':', "%3A").replace('/', "%2F"),
            u8::from(disabled)
        );
        let manager = h.url(crate::httpd::MANAGER_PATH);
        let t = Duration::from_secs(2);
        let mut s = std::net::TcpStream::connect_timeout(&h.addr(), t)?;
        s.set_read_timeout(Some(t))?;
        write!(
            s,
            "POST {} HTTP/1.0\r\nHost: 127.0.0.1\r\nReferer: {manager}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            crate::httpd::MANAGER_PATH,
            body.len()
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        if !answer.starts_with("HTTP/1.1 200") && !answer.starts_with("HTTP/1.0 200") {
            bail!(
                "balancer-manager refused the change of {worker}: {}",
                answer.lines().next().unwrap_or("")
            );
        }
        // The worker's row: …>http://127.0.0.1:PORT</a>…<td>Init Dis </td>…
        let row = h
            .balancer_status()?
            .split("<tr>")
            .find(|r| r.contains(&format!(">{worker}<")))
            .map(str::to_owned)
            .unwrap_or_default();
        if row.contains("Dis") != disabled {
            bail!("httpd's status of {worker} did not change: {row}");
        }
        Ok(())
    }

    /// Sessions node `i` holds (`shoal_sessions`, every role), if it
    /// answers.
    pub fn sessions_held(&self, i: usize) -> Option<u64> {
        let (status, body) = get(self.nodes[i].api, "/metrics").ok()?;
        (status == 200).then(|| {
            body.lines()
                .filter(|l| l.starts_with("shoal_sessions{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        })
    }

    /// The SHA-256 of node `i`'s filter (`GET /api/plugins`).
    pub fn filter_hash(&self, i: usize) -> anyhow::Result<String> {
        let (status, body) = get(self.nodes[i].api, "/api/plugins")?;
        if status != 200 {
            bail!("{}: GET /api/plugins answered {status}", self.nodes[i].name);
        }
        let v: Value = serde_json::from_str(&body)?;
        v.as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == FILTER)
            .and_then(|p| p["sha256"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("{}: no plug-in {FILTER:?} listed", self.nodes[i].name))
    }

    /// Filter hashes of every node (`?` where the node did not answer).
    pub fn filter_hashes(&self) -> Vec<String> {
        (0..self.nodes.len())
            .map(|i| self.filter_hash(i).unwrap_or_else(|_| "?".into()))
            .collect()
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of every node's log at WARN or ERROR (for the report).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .map(|l| format!("{}: {l}", n.name)),
            );
        }
        out
    }

    /// Runs `shoal plugin deploy NAME FILE --key KEY --api <node i>`:
    /// answers whether it succeeded and its output lines.
    pub fn deploy(&self, via: usize, name: &str, file: &Path) -> anyhow::Result<(bool, String)> {
        let out = Command::new(&self.bins.shoal)
            .args(["plugin", "deploy", name])
            .arg(file)
            .arg("--key")
            .arg(&self.key)
            .arg("--api")
            .arg(self.nodes[via].api.to_string())
            .output()
            .with_context(|| format!("running {}", self.bins.shoal.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.httpd = None;
        if failed {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "--- {} (last lines) ---\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 40)
                );
            }
        }
        if self.keep {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Compiles every component a run needs into `spec.cache_dir` once: one
/// node whose chain holds them all (`extra`), started and stopped. Then the
/// cluster's nodes load them from the cache instead of each compiling them
/// at the same time (in a debug build that takes minutes). Answers how long
/// it took.
pub fn warm_cache(
    bins: &Binaries,
    cache_dir: &Path,
    components: &[PathBuf],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (first, rest) = components.split_first().context("no components")?;
    let mut spec = ClusterSpec::new(bins, first, false);
    spec.nodes = 1;
    spec.cache_dir = Some(cache_dir.to_path_buf());
    spec.extra = rest
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("warm-{i}"), p.clone()))
        .collect();
    spec.ready_timeout = WARM_UP_TIMEOUT;
    let mut c = Cluster::start(&spec)?;
    c.shutdown();
    Ok(started.elapsed())
}

/// How one restart went.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// SIGTERM to exit.
    pub stop: Duration,
    /// Exited by itself within [`STOP_GRACE`].
    pub clean: bool,
    /// Start to ready (state transfer done, every node sees every other).
    pub ready: Duration,
}

/// A fresh directory under the system's temporary directory.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000 {
        let d = base.join(format!("shoal-rolling-restart-{}-{n}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
    bail!("no fresh directory under {}", base.display())
}

/// A path as a TOML basic string's content (absolute, so the config works
/// from anywhere).
fn toml_path(p: &Path) -> String {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// A one-shot `GET` with short timeouts: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(format!("http://{addr}{path}")).call()?;
    Ok((r.status().as_u16(), r.body_mut().read_to_string()?))
}

/// How many members the node at `api` sees.
fn member_count(api: SocketAddr) -> Option<usize> {
    let (status, body) = get(api, "/api/members").ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body)
        .ok()?
        .as_array()
        .map(Vec::len)
}
