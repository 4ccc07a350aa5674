//! The example web app as users deploy it: three `webapp` processes (each an
//! embedded shoal node, `delta` policy, `sync-ack`) behind a real Apache
//! httpd with mod_proxy_balancer, `stickysession=JSESSIONID` and one
//! `route=` per member (common/httpd.rs, the same settings as
//! examples/webapp/httpd.conf).
//!
//! A client that keeps its `JSESSIONID` fills a cart through httpd; every
//! request sticks to one node. That node is SIGKILLed. The next request is
//! failed over by httpd to another node, which serves the cart intact and
//! rewrites the cookie to its own route; the following requests stick to
//! it, also after httpd's `retry` period. No request may fail.

#[path = "common/httpd.rs"]
mod httpd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use httpd::Httpd;
use serde_json::Value;

const ROUTES: [&str; 3] = ["nodeA", "nodeB", "nodeC"];
const DEADLINE: Duration = Duration::from_secs(30);
/// httpd's `retry` for a member in error state (common/httpd.rs), and a
/// margin.
const HTTPD_RETRY: Duration = Duration::from_millis(5_500);

/// Outside the ephemeral range: no outgoing connection takes it before
/// the node binds it.
fn free_port() -> u16 {
    shoal::transport::ports::reserve_loopback(1).expect("a free loopback port")[0]
}

struct App {
    route: &'static str,
    web: SocketAddr,
    api: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

struct Apps {
    apps: Vec<App>,
    dir: PathBuf,
}

impl Drop for Apps {
    fn drop(&mut self) {
        for a in &mut self.apps {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for a in &self.apps {
                eprintln!(
                    "--- log of {} ---\n{}",
                    a.route,
                    std::fs::read_to_string(&a.log).unwrap_or_default()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_apps() -> Apps {
    let dir = std::env::temp_dir().join(format!("shoal-webapp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let group = free_port();
    let mut apps = Apps {
        apps: Vec::new(),
        dir: dir.clone(),
    };
    for route in ROUTES {
        let web: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let api: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = dir.join(format!("{route}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[node]
name = "{route}"
jvm_route = "{route}"
domain = "webapp-test"
[membership]
kind = "multicast"
port = {group}
bind = "127.0.0.1"
[receiver]
address = "127.0.0.1"
port = {port}
auto_bind = 50
[api]
listen = "{api}"
[session]
send_options = "sync-ack"
"#,
                port = free_port()
            ),
        )
        .expect("config");
        let log = dir.join(format!("{route}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_webapp"))
            .args(["--config".as_ref(), config.as_os_str()])
            .args(["--listen", &web.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("webapp starts");
        apps.apps.push(App {
            route,
            web,
            api,
            child: Some(child),
            log,
        });
    }
    // Ready (state transfer done) and every node sees the other two.
    let deadline = Instant::now() + DEADLINE;
    for a in &apps.apps {
        loop {
            let ready = get(a.web, "/ready").is_ok_and(|(s, _)| s == 200);
            let members = get(a.api, "/api/members")
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<Vec<Value>>(&b).ok())
                .map_or(0, |m| m.len());
            if ready && members == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{} did not get ready", a.route);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    apps
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    let mut r = agent().get(format!("http://{addr}{path}")).call()?;
    Ok((r.status().as_u16(), r.body_mut().read_to_string()?))
}

/// A browser's view: one cookie, kept across requests.
struct Client {
    agent: ureq::Agent,
    base: String,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    node: String,
    set_cookie: Option<String>,
    body: Value,
}

impl Client {
    fn request(&mut self, method: &str, path: &str, body: &str) -> Answer {
        let url = format!("{}{path}", self.base);
        let cookie = self
            .cookie
            .as_ref()
            .map(|c| format!("JSESSIONID={c}"))
            .unwrap_or_default();
        let result = match method {
            "GET" => self.agent.get(&url).header("Cookie", &cookie).call(),
            _ => self
                .agent
                .post(&url)
                .header("Cookie", &cookie)
                .send(body.as_bytes()),
        };
        let mut r = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let node = r
            .headers()
            .get("x-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let set_cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("JSESSIONID="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned());
        if let Some(c) = &set_cookie {
            self.cookie = Some(c.clone()).filter(|c| !c.is_empty());
        }
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            node,
            set_cookie,
            body,
        }
    }
}

fn route_of(id: &str) -> &str {
    id.split_once('.').map_or("", |(_, r)| r)
}

#[test]
fn a_cart_survives_the_sigkill_of_its_node_behind_httpd() {
    let mut apps = start_apps();
    let members: Vec<(&str, SocketAddr)> = apps.apps.iter().map(|a| (a.route, a.web)).collect();
    let front = Httpd::start(0, &members).expect("httpd starts (scripts/setup.sh installs it)");
    let mut client = Client {
        agent: agent(),
        base: format!("http://{}", front.addr()),
        cookie: None,
    };
    // Fill a cart: ten lines of about 1 KiB, all on one node.
    let note = "n".repeat(1000);
    let mut first = None;
    for i in 0..10 {
        let a = client.request(
            "POST",
            &format!("/cart/add?item=item{i}&qty={}", i + 1),
            &note,
        );
        assert_eq!(a.status, 200, "{:?}", a.body);
        let node = first.get_or_insert_with(|| a.node.clone());
        assert_eq!(&a.node, node, "request {i} did not stick");
        let id = client.cookie.clone().expect("a session cookie");
        assert_eq!(route_of(&id), node, "the cookie names the serving node");
    }
    let served_by = first.expect("a node");
    let before = client.request("GET", "/cart", "");
    assert_eq!(before.node, served_by);
    let old_id = client.cookie.clone().expect("cookie");

    // SIGKILL the node serving the user.
    let victim = apps
        .apps
        .iter_mut()
        .find(|a| a.route == served_by)
        .expect("the serving node");
    let mut child = victim.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    // The next request is failed over by httpd, the cart intact, the id
    // rebound to the new node.
    let t = Instant::now();
    let a = client.request("POST", "/cart/add?item=after&qty=1", "");
    let failover = t.elapsed();
    assert_eq!(
        a.status, 200,
        "the failed-over request failed: {:?}",
        a.body
    );
    assert_ne!(a.node, served_by, "served by the dead node?");
    let new_id = a.set_cookie.clone().expect("a rewritten cookie");
    assert_eq!(
        route_of(&new_id),
        a.node,
        "the new cookie names the new node"
    );
    assert_eq!(
        new_id.split('.').next(),
        old_id.split('.').next(),
        "the session keeps its id"
    );
    let mut want = before.body["items"].clone();
    want["after"] = serde_json::json!({ "qty": 1, "note": "" });
    assert_eq!(a.body["items"], want, "the cart after the failover");
    eprintln!("failover: {} -> {} in {failover:?}", served_by, a.node);

    // Sticks to the new node, also once httpd retries the dead member.
    let new_node = a.node.clone();
    for round in 0..2 {
        for _ in 0..5 {
            let a = client.request("GET", "/cart", "");
            assert_eq!(a.status, 200);
            assert_eq!(
                a.node, new_node,
                "round {round}: not sticky after the failover"
            );
            assert_eq!(
                a.set_cookie, None,
                "round {round}: the cookie changed again"
            );
            assert_eq!(a.body["items"], want);
        }
        if round == 0 {
            std::thread::sleep(HTTPD_RETRY);
        }
    }
    // Checkout ends the session everywhere.
    let a = client.request("POST", "/cart/checkout", "");
    assert_eq!(a.status, 200);
    assert_eq!(a.body["checked_out"], true);
    assert_eq!(client.cookie, None, "checkout removes the cookie");
    let a = client.request("GET", "/cart", "");
    assert_eq!(a.body["items"], serde_json::json!({}));
    drop(front);
}
