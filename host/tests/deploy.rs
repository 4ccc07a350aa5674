//! `shoal plugin deploy` across `shoal run` processes: signed, checked by
//! every member, corrupted bytes refused by the member that got them,
//! unauthenticated and replayed deploys refused, a deployed component kept
//! across a restart, a stale member warned about.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::*;
use serde_json::Value;

struct Cluster {
    dir: PathBuf,
    group_port: u16,
    nodes: Vec<Node>,
}

struct Node {
    name: String,
    cfg: PathBuf,
    log: PathBuf,
    api: SocketAddr,
    child: Option<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!(
                    "--- {} ---\n{}",
                    n.name,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("shoal runs")
}

/// Makes a key with `shoal plugin keygen`; answers its public key line.
fn keygen(path: &Path) -> String {
    let out = shoal(&["plugin", "keygen", "--out", path.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("keys = [\""))
        .and_then(|l| l.strip_suffix("\"]"))
        .unwrap_or_else(|| panic!("no public key in {text}"))
        .to_owned()
}

impl Cluster {
    fn new(tag: &str) -> Self {
        require_loopback_multicast();
        let dir = std::env::temp_dir().join(format!("shoal-deploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            dir,
            group_port: free_port(),
            nodes: Vec::new(),
        }
    }

    /// Node `name` with the interceptor `filter` (the testkit: passes),
    /// trusting `key`, plus `extra` config text.
    fn start(&mut self, name: &str, key: &str, extra: &str) -> usize {
        self.start_with(name, key, extra, "[session]\nenabled = false")
    }

    fn start_with(&mut self, name: &str, key: &str, extra: &str, session: &str) -> usize {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let cfg = self.dir.join(name).join("node.toml");
        std::fs::create_dir_all(cfg.parent().expect("dir")).expect("node dir");
        let cache = format!("{}/component-cache", env!("CARGO_TARGET_TMPDIR"));
        // A generous call deadline: on a loaded machine the testkit's first
        // call on a 100 KB body once took over the default 20 ms, and the
        // corrupting interceptor (fail-open) passed c's copy unharmed.
        std::fs::write(
            &cfg,
            format!(
                "[node]\nname = \"{name}\"\ndomain = \"deploy\"\n\
                 [membership]\nport = {}\nbind = \"127.0.0.1\"\n\
                 [receiver]\naddress = \"127.0.0.1\"\nport = {}\nauto_bind = 50\n\
                 [api]\nlisten = \"{api}\"\n[plugins]\ncache_dir = \"{cache}\"\ncall_deadline_ms = 2000\n\
                 {session}\n[deploy]\nkeys = [\"{key}\"]\n\
                 [[interceptor]]\nname = \"filter\"\nwasm = \"{}\"\n{extra}\n",
                self.group_port,
                free_port(),
                guest("testkit").display(),
            ),
        )
        .expect("config");
        self.nodes.push(Node {
            name: name.into(),
            log: self.dir.join(format!("{name}.log")),
            cfg,
            api,
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i);
        i
    }

    fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        // Appends, so a restart keeps the first run's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log");
        n.child = Some(
            Command::new(env!("CARGO_BIN_EXE_shoal"))
                .args(["run", "--config", n.cfg.to_str().expect("utf-8")])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("shoal run"),
        );
    }

    fn wait_converged(&self) {
        let want = self.nodes.len() - 1;
        // A node answers once started: on a fresh clone it first compiles
        // its plug-ins (a debug build, the cache cold, the other test
        // compiling too), which can take longer than any other wait.
        for n in &self.nodes {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
            while get_json(n.api, "/api/node").is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} did not start within 240 s",
                    n.name
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        for n in &self.nodes {
            wait_blocking(&format!("{} sees {want} members", n.name), || {
                let m = get_json(n.api, "/api/members")?;
                (m.as_array()?.len() == want).then_some(())
            });
        }
    }

    fn filter_hash(&self, i: usize) -> String {
        self.plugin_hash(i, "filter")
    }

    fn plugin_hash(&self, i: usize, name: &str) -> String {
        let p = get_json(self.nodes[i].api, "/api/plugins").expect("plugins");
        p.as_array()
            .into_iter()
            .flatten()
            .find(|x| x["name"] == name)
            .and_then(|x| x["sha256"].as_str())
            .expect("filter listed")
            .to_owned()
    }

    fn deploy(&self, via: usize, file: &Path, key: &Path) -> Output {
        self.deploy_as(via, "filter", file, key)
    }

    fn deploy_as(&self, via: usize, name: &str, file: &Path, key: &Path) -> Output {
        shoal(&[
            "plugin",
            "deploy",
            name,
            file.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
            "--api",
            &self.nodes[via].api.to_string(),
        ])
    }

    fn metric(&self, i: usize, line: &str) -> u64 {
        let text = ureq::get(format!("http://{}/metrics", self.nodes[i].api))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("component"),
    ))
}

#[test]
fn a_signed_deploy_reaches_every_member_and_bad_ones_change_nothing() {
    let mut c = Cluster::new("filter");
    let key = c.dir.join("operator.key");
    let public = keygen(&key);
    // A second key file is never overwritten.
    assert!(
        !shoal(&["plugin", "keygen", "--out", key.to_str().expect("utf-8")])
            .status
            .success()
    );
    let a = c.start("a", &public, "");
    let b = c.start("b", &public, "");
    // Node c's path corrupts every large message it receives (the last
    // byte of the body inverted): its copy of the component arrives damaged.
    let corrupt = format!(
        "[[interceptor]]\nname = \"corrupt\"\nwasm = \"{}\"\nsettings = {{ mode = \"flip\", min_size = 4096 }}\n",
        guest("testkit").display()
    );
    let cc = c.start("c", &public, &corrupt);
    c.wait_converged();
    let old = c.filter_hash(a);
    let new_file = guest("throughput");
    let new = sha256_hex(&new_file);
    assert_ne!(old, new);

    // 1. Deployed through a: a and b take it, c refuses its damaged copy;
    //    the command names c and fails.
    let out = c.deploy(a, &new_file, &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success(),
        "a member failed: the command must fail"
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}"))
            .to_owned()
    };
    assert!(line("a").contains(" ok "), "{}", line("a"));
    assert!(line("b").contains(" ok "), "{}", line("b"));
    assert!(
        line("c").contains("FAILED") && line("c").contains("SHA-256"),
        "{}",
        line("c")
    );
    assert!(
        line("b").contains(&new[..12]),
        "the new hash is shown: {}",
        line("b")
    );
    assert_eq!(c.filter_hash(a), new);
    assert_eq!(c.filter_hash(b), new);
    assert_eq!(c.filter_hash(cc), old, "c keeps its old version");
    assert_eq!(
        c.metric(cc, "shoal_deploys_total{outcome=\"refused_tampered\"}"),
        1
    );

    // 2. c runs another version than a and b: they warn about it.
    wait_blocking("a warns that c runs another version of filter", || {
        let log = std::fs::read_to_string(&c.nodes[a].log).ok()?;
        log.contains("peer runs other versions of plug-ins (filter")
            .then_some(())
    });

    // 3. An operator key the members do not trust: a node that trusts it
    //    relays the deploy, every other member refuses it.
    let rogue = c.dir.join("rogue.key");
    let rogue_public = keygen(&rogue);
    let out = c.deploy(a, &guest("throughput"), &rogue);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = c.start("d", &rogue_public, "");
    c.wait_converged();
    let out = c.deploy(d, &guest("throughput"), &rogue);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(!out.status.success());
    for name in ["a", "b", "c"] {
        let l = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {stdout}"));
        assert!(l.contains("FAILED") && l.contains("signature"), "{l}");
    }
    assert_eq!(c.filter_hash(a), new, "an unauthenticated deploy changed a");
    assert_eq!(c.filter_hash(b), new);
    assert_eq!(c.filter_hash(cc), old);
    assert!(
        c.metric(
            b,
            "shoal_deploys_total{outcome=\"refused_unauthenticated\"}"
        ) >= 1
    );

    // 4. The same signed request again (a replay) is refused.
    let stored = std::fs::read_to_string(
        c.nodes[b]
            .cfg
            .with_file_name("deployed")
            .join("filter.json"),
    )
    .expect("b stored the deploy");
    let stored: Value = serde_json::from_str(&stored).expect("json");
    let replay = ureq::post(format!("http://{}/api/deploy/filter", c.nodes[b].api))
        .header(
            "x-shoal-manifest",
            stored["manifest"].as_str().expect("manifest"),
        )
        .header(
            "x-shoal-signature",
            stored["signature"].as_str().expect("sig"),
        )
        .config()
        .http_status_as_error(false)
        .build()
        .send(&std::fs::read(&new_file).expect("bytes")[..])
        .expect("answer");
    assert_eq!(replay.status().as_u16(), 422);

    // 5. b restarts with its config unchanged: it runs the deployed version.
    if let Some(mut child) = c.nodes[b].child.take() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let _ = child.wait();
    }
    c.spawn(b);
    wait_blocking("b is back", || {
        get_json(c.nodes[b].api, "/api/ready").map(|_| ())
    });
    assert_eq!(
        c.filter_hash(b),
        new,
        "the restart fell back to the config's version"
    );
    let log = std::fs::read_to_string(&c.nodes[b].log).expect("log");
    assert!(log.contains("running the deployed version"), "{log}");
}

#[test]
fn a_session_policy_is_deployed_and_the_sessions_stay() {
    let mut c = Cluster::new("policy");
    let key = c.dir.join("operator.key");
    let public = keygen(&key);
    let session = "[session]\nsend_options = \"sync-ack\"";
    let a = c.start_with("a", &public, "", session);
    let b = c.start_with("b", &public, "", session);
    c.wait_converged();
    for i in [a, b] {
        wait_blocking("ready", || {
            get_json(c.nodes[i].api, "/api/ready").map(|_| ())
        });
    }
    // Sessions on a (the delta policy: a copy on b too).
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut r = ureq::post(format!("http://{}/api/sessions", c.nodes[a].api))
            .send_json(serde_json::json!({ "attributes": { "n": i } }))
            .expect("create");
        let v: Value = r.body_mut().read_json().expect("json");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    let old = c.plugin_hash(a, "session-policy");
    let new_file = guest("backup_policy");
    let out = c.deploy_as(b, "session-policy", &new_file, &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = sha256_hex(&new_file);
    assert_ne!(old, new);
    for i in [a, b] {
        assert_eq!(c.plugin_hash(i, "session-policy"), new);
    }
    // Every session is still there, on both nodes.
    for (n, id) in ids.iter().enumerate() {
        for i in [a, b] {
            let v = get_json(c.nodes[i].api, &format!("/api/sessions/{id}"))
                .unwrap_or_else(|| panic!("session {id} lost on node {i}"));
            assert_eq!(v["attributes"]["n"], n);
        }
    }
}
