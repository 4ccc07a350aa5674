//! The front end of the web tier (`common/httpd.rs`: Apache httpd's
//! mod_proxy_balancer, sticky on the route in `JSESSIONID`) proved with the
//! cluster it was made for: three real Tomcat 10.1 nodes
//! (`tests/interop/TomcatSessions.java`: routes t1, t2, t3, DeltaManager,
//! send options 6 = sync + ACK, ReplicationValve + JvmRouteBinderValve).
//!
//! A client that keeps its `JSESSIONID` by hand fills a cart through httpd;
//! every request sticks to one node. That node is SIGKILLed; the next
//! request (a POST) is served by another node with the cart intact and the
//! session id's route rewritten to the new node (JvmRouteBinderValve), and
//! later requests stick to that node, also after httpd's `retry` period,
//! when it probes the dead member again. No request may fail.
//!
//! Needs Debian's `apache2`, `libtomcat10-java` and a JDK
//! (scripts/setup.sh) and multicast on `lo`; about 20-30 s (JVM start-up
//! and DeltaManager state transfer, one node after the other).

#[path = "common/httpd.rs"]
mod httpd;
#[allow(dead_code)]
#[path = "../../../host/tests/common/java.rs"]
mod java;
#[allow(dead_code)]
#[path = "../../../host/benches/common/nodes.rs"]
mod nodes;

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use httpd::Httpd;
use java::jdk_tool;
use nodes::{compile_tomcat_sessions, tomcat_classpath};
use serde_json::{Value, json};

/// The routes (Engine jvmRoute) of the three Tomcat nodes.
const ROUTES: [&str; 3] = ["t1", "t2", "t3"];
/// A JVM's start, or a cluster's convergence, takes at most this long.
const DEADLINE: Duration = Duration::from_secs(90);
/// httpd's `retry` for a member in error state (common/httpd.rs
/// MEMBER_PARAMS), and a margin.
const HTTPD_RETRY: Duration = Duration::from_millis(5_500);

/// A throwaway directory for the compiled classes and Tomcat's files.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> WorkDir {
        let dir = std::env::temp_dir().join(format!(
            "shoal-httpd-tomcat-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("creating the work directory");
        WorkDir(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles TomcatSessions.java into `work/classes`.
fn compile(work: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/TomcatSessions.java");
    compile_tomcat_sessions(work, &src, false).unwrap_or_else(|e| panic!("{e}"))
}

/// One embedded Tomcat node (TomcatSessions), stopped by closing its stdin.
struct Tomcat {
    route: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    http: SocketAddr,
    log: PathBuf,
}

impl Tomcat {
    /// Starts a node and waits for its `started` line.
    fn start(classes: &Path, work: &Path, route: &'static str, mcast: u16) -> Tomcat {
        let log = work.join(format!("{route}.log"));
        let mut child = Command::new(jdk_tool("java"))
            .arg("-Djava.net.preferIPv4Stack=true")
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(tomcat_classpath(classes))
            .arg("TomcatSessions")
            .arg("http=0")
            // The first free port from here (Tribes' autoBind): the nodes
            // start one after the other.
            .arg("tribes=4700")
            .arg(format!("mcastPort={mcast}"))
            .arg(format!("route={route}"))
            .arg("manager=delta")
            .arg("options=6")
            .arg(format!("base={}", work.join(route).display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting java");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tomcat {
            route,
            child,
            stdin,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            let line = rx.recv_timeout(left).unwrap_or_else(|e| {
                panic!("Tomcat {route} did not start ({e}):\n{}", t.log_tail())
            });
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == "started"
            {
                let port = v["http"].as_u64().expect("http port") as u16;
                t.http = SocketAddr::from(([127, 0, 0, 1], port));
                eprintln!(
                    "Tomcat {route} on {} after {:.1} s",
                    t.http,
                    start.elapsed().as_secs_f64()
                );
                return t;
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the node sees `members` other members.
    fn wait_members(&self, agent: &ureq::Agent, members: u64) {
        let url = format!("http://{}/count", self.http);
        let start = Instant::now();
        loop {
            let seen = agent
                .get(&url)
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .and_then(|v| v["members"].as_u64());
            if seen.is_some_and(|m| m >= members) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "Tomcat {} sees {seen:?} members, not {members}:\n{}",
                self.route,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: no goodbye to the cluster, sockets closed by the kernel.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        self.stdin = None;
    }

    /// Asks the node to stop (end of stdin); [`Tomcat::wait`] reaps it.
    fn close(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
    }

    /// Waits up to 15 s for the node to exit after [`Tomcat::close`], then
    /// kills it.
    fn wait(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nodes, stopped together (each takes a few seconds to leave).
struct Cluster(Vec<Tomcat>);

impl Drop for Cluster {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(Tomcat::close);
        self.0.iter_mut().for_each(Tomcat::wait);
    }
}

/// One answer through httpd.
#[derive(Debug)]
struct Answer {
    status: u16,
    node: String,
    set_cookie: Option<String>,
    body: Value,
    took: Duration,
}

/// A browser with one cookie, `JSESSIONID`, kept by hand.
struct Client {
    agent: ureq::Agent,
    base: String,
    session: Option<String>,
    failed: Vec<String>,
}

impl Client {
    fn new(base: String) -> Client {
        Client {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
            base,
            session: None,
            failed: Vec::new(),
        }
    }

    /// `METHOD path` (a POST with `body`); records a failure (not 200) and
    /// takes the `JSESSIONID` of a `Set-Cookie`.
    fn call(&mut self, method: &str, path: &str, body: &str) -> Answer {
        let url = format!("{}{path}", self.base);
        let cookie = self.session.as_ref().map(|s| format!("JSESSIONID={s}"));
        let start = Instant::now();
        let result = if method == "POST" {
            let mut r = self.agent.post(&url);
            if let Some(c) = &cookie {
                r = r.header("Cookie", c);
            }
            r.send(body)
        } else {
            let mut r = self.agent.get(&url);
            if let Some(c) = &cookie {
                r = r.header("Cookie", c);
            }
            r.call()
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.failed.push(format!("{method} {path}: {e}"));
                return Answer {
                    status: 0,
                    node: String::new(),
                    set_cookie: None,
                    body: Value::Null,
                    took: start.elapsed(),
                };
            }
        };
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let took = start.elapsed();
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let node = header("x-node").unwrap_or_default();
        let set_cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("JSESSIONID="))
            .map(|c| c.split(';').next().unwrap_or_default().to_owned());
        if let Some(id) = &set_cookie {
            self.session = Some(id.clone());
        }
        if status != 200 {
            self.failed
                .push(format!("{method} {path}: {status} from {node:?}: {text}"));
        }
        Answer {
            status,
            node,
            set_cookie,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            took,
        }
    }

    /// The route of the session id (after the `.`).
    fn route(&self) -> Option<&str> {
        self.session.as_deref()?.split_once('.').map(|(_, r)| r)
    }

    /// The id without the route.
    fn id(&self) -> Option<&str> {
        self.session.as_deref()?.split_once('.').map(|(id, _)| id)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn a_dead_tomcat_member_fails_over_with_the_cart_and_the_route_moves() {
    let work = WorkDir::new();
    let classes = compile(&work.0);
    // One multicast port per test process, so parallel runs do not merge.
    let mcast = 46_000 + (std::process::id() % 2_000) as u16;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();

    // DeltaManager nodes one after the other (each asks the running ones
    // for all sessions when it joins).
    let mut cluster = Cluster(Vec::new());
    for (k, route) in ROUTES.iter().enumerate() {
        let t = Tomcat::start(&classes, &work.0, route, mcast);
        t.wait_members(&agent, k as u64);
        cluster.0.push(t);
    }
    for t in &cluster.0 {
        t.wait_members(&agent, (ROUTES.len() - 1) as u64);
    }
    let members: Vec<(&str, SocketAddr)> = cluster.0.iter().map(|t| (t.route, t.http)).collect();
    let front = Httpd::start(0, &members).expect("starting httpd");
    eprintln!("httpd on {} in front of {members:?}", front.addr());

    // A cart, all on one node.
    let mut c = Client::new(front.url(""));
    let first = c.call("GET", "/visit", "");
    let home = first.node.clone();
    assert!(ROUTES.contains(&home.as_str()), "X-Node {home:?}");
    assert_eq!(first.body, json!({"visits": 1, "node": home}));
    assert_eq!(c.route(), Some(home.as_str()), "session id {:?}", c.session);
    let id = c.id().expect("session id").to_owned();
    let steps: [(&str, &str); 5] = [
        ("/cart/add?item=apple&qty=2", "green, 2 kg"),
        ("/cart/add?item=pear&qty=1", "ripe \"soft\" é"),
        ("/cart/add?item=apple&qty=3", ""),
        ("/cart/add?item=plum&qty=1", ""),
        ("/cart/remove?item=pear", ""),
    ];
    let mut before = Vec::new();
    for (path, note) in steps {
        let a = c.call("POST", path, note);
        assert_eq!(a.node, home, "POST {path} left the home node: {a:?}");
        assert_eq!(a.set_cookie, None, "POST {path} changed the session id");
        before.push(a.took);
    }
    let a = c.call("GET", "/visit", "");
    assert_eq!(a.body, json!({"visits": 2, "node": home}));
    let cart = json!({
        "apple": {"qty": 5, "note": "green, 2 kg"},
        "plum": {"qty": 1, "note": ""},
    });
    let a = c.call("GET", "/cart", "");
    assert_eq!(a.body, json!({"items": cart, "node": home}));
    before.push(a.took);

    // The home node dies without a word.
    let dead = cluster
        .0
        .iter_mut()
        .find(|t| t.route == home)
        .expect("home node");
    dead.kill();
    let killed = Instant::now();

    // The next request (a POST) is served elsewhere, with the cart.
    let a = c.call("POST", "/cart/add?item=kiwi&qty=4", "after failover");
    let failover = a.took;
    let new_home = a.node.clone();
    assert_eq!(a.status, 200, "the failover request failed: {a:?}");
    assert_ne!(new_home, home, "served by the dead node?");
    let mut cart_after = cart.clone();
    cart_after["kiwi"] = json!({"qty": 4, "note": "after failover"});
    assert_eq!(a.body, json!({"items": cart_after, "node": new_home}));
    let rewritten = a.set_cookie.clone();
    assert_eq!(
        rewritten,
        Some(format!("{id}.{new_home}")),
        "JvmRouteBinderValve should rewrite the id to the new route"
    );
    let first_served = killed.elapsed();

    // It sticks to the new node.
    let a = c.call("GET", "/visit", "");
    assert_eq!(a.body, json!({"visits": 3, "node": new_home}));
    assert_eq!(a.set_cookie, None);
    let mut after = vec![a.took];
    for _ in 0..5 {
        let a = c.call("GET", "/cart", "");
        assert_eq!(a.node, new_home);
        after.push(a.took);
    }

    // New users meanwhile go to the live nodes.
    let mut fresh_nodes = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..6 {
        let mut f = Client::new(front.url(""));
        let a = f.call("GET", "/visit", "");
        fresh_nodes.push(a.node.clone());
        fresh.push(a.took);
        c.failed.append(&mut f.failed);
    }
    assert!(
        !fresh_nodes.contains(&home),
        "a new session on the dead node: {fresh_nodes:?}"
    );

    // Past httpd's retry period the dead member is tried again: the
    // request it is chosen for meets a refused connect and goes to another
    // member (the error log has one more AH00957).
    let refused = |h: &Httpd| h.error_log().matches("AH00957").count();
    let refused_before = refused(&front);
    std::thread::sleep(HTTPD_RETRY);
    let mut probe = Vec::new();
    let mut probe_nodes = Vec::new();
    while refused(&front) == refused_before {
        assert!(
            probe.len() < 30,
            "httpd did not try the dead member again in 30 requests after its retry period:\n{}",
            front.error_log()
        );
        let mut f = Client::new(front.url(""));
        let a = f.call("GET", "/visit", "");
        probe_nodes.push(a.node.clone());
        probe.push(a.took);
        c.failed.append(&mut f.failed);
    }
    assert!(
        !probe_nodes.contains(&home),
        "served by the dead node: {probe_nodes:?}"
    );
    let a = c.call("GET", "/cart", "");
    assert_eq!(a.node, new_home, "the session left its new home");
    let a = c.call("POST", "/cart/checkout", "");
    assert_eq!(a.node, new_home);
    assert_eq!(
        a.body,
        json!({"items": cart_after, "checked_out": true, "node": new_home})
    );
    let a = c.call("GET", "/cart", "");
    assert_eq!(a.body["items"], json!({}), "the cart outlived checkout");

    let max = |v: &[Duration]| v.iter().copied().max().map_or(0.0, ms);
    eprintln!(
        "home {home}, failover to {new_home}: failover request {:.1} ms \
         (kill → first answer {:.1} ms); requests before: max {:.1} ms; \
         after: max {:.1} ms; new users while {home} is skipped: {fresh_nodes:?} max {:.1} ms; \
         after retry ({:?}): {probe_nodes:?} until one probed {home}, that one {:.1} ms, \
         max {:.1} ms; failed: {}",
        ms(failover),
        ms(first_served),
        max(&before),
        max(&after),
        max(&fresh),
        HTTPD_RETRY,
        probe.last().copied().map_or(0.0, ms),
        max(&probe),
        c.failed.len()
    );
    let log = front.error_log();
    eprintln!("httpd error log:\n{log}");
    assert!(c.failed.is_empty(), "failed requests: {:#?}", c.failed);
    drop(front);
    drop(cluster);
}
