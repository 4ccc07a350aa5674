//! The httpd launcher (`common/httpd.rs`) on its own, in front of tiny
//! std-only members that behave like a session-replicating node as far as
//! the balancer can tell: a new session gets `JSESSIONID=HEX.ROUTE`, and a
//! session of another route is rebound to this member's route with a new
//! cookie (Tomcat's JvmRouteBinderValve). Fast (no JVM): stickiness,
//! failover of a POST with its body, a busy port, clean-up on drop.

#[path = "common/httpd.rs"]
mod httpd;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use httpd::Httpd;

/// A member: answers `ROUTE BODY` with `X-Node: ROUTE`; stops (listener
/// and connections closed) on [`Member::kill`] or drop.
struct Member {
    route: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Member {
    fn start(route: &'static str) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let seq = Arc::new(AtomicU64::new(0));
        let flag = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (flag, seq) = (flag.clone(), seq.clone());
                        conns.push(std::thread::spawn(move || {
                            let _ = serve(s, route, &flag, &seq);
                        }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        Member {
            route,
            addr,
            stop,
            accept: Some(accept),
        }
    }

    /// Closes the listener and every connection (a dead node).
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One keep-alive connection: requests until EOF or stop.
fn serve(s: TcpStream, route: &str, stop: &AtomicBool, seq: &AtomicU64) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    loop {
        let mut head = Vec::new();
        // Header lines; a read timeout only checks the stop flag (what
        // was read stays in `line`).
        let mut line = String::new();
        loop {
            match r.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    if line == "\r\n" {
                        break;
                    }
                    head.push(std::mem::take(&mut line));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap_or(0));
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let session = header("cookie").and_then(|c| {
            c.split(';')
                .find_map(|p| p.trim().strip_prefix("JSESSIONID=").map(str::to_owned))
        });
        let set_cookie = match session.as_deref().and_then(|s| s.split_once('.')) {
            Some((_, r)) if r == route => None,
            // Another route: rebind the id to this one.
            Some((id, _)) => Some(format!("{id}.{route}")),
            None => Some(format!(
                "{:032X}.{route}",
                seq.fetch_add(1, Ordering::Relaxed) + 1
            )),
        };
        let text = format!("{route} {}", String::from_utf8_lossy(&body));
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nX-Node: {route}\r\nContent-Length: {}\r\n",
            text.len()
        );
        if let Some(c) = set_cookie {
            resp.push_str(&format!("Set-Cookie: JSESSIONID={c}; Path=/; HttpOnly\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&text);
        w.write_all(resp.as_bytes())?;
    }
}

/// A client keeping `JSESSIONID` by hand.
struct Client {
    agent: ureq::Agent,
    base: String,
    session: Option<String>,
}

impl Client {
    fn new(front: &Httpd) -> Client {
        Client {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .new_agent(),
            base: front.url(""),
            session: None,
        }
    }

    /// (status, X-Node, body); takes a new `JSESSIONID`.
    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        let url = format!("{}{path}", self.base);
        let cookie = self.session.as_ref().map(|s| format!("JSESSIONID={s}"));
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
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(c) = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("JSESSIONID="))
        {
            self.session = Some(c.split(';').next().unwrap_or_default().to_owned());
        }
        let node = resp
            .headers()
            .get("x-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (resp.status().as_u16(), node, text)
    }

    fn route(&self) -> Option<&str> {
        self.session.as_deref()?.split_once('.').map(|(_, r)| r)
    }
}

#[test]
fn sticks_to_the_route_and_fails_over_with_the_body() {
    let mut members: Vec<Member> = ["nodeA", "nodeB", "nodeC"]
        .into_iter()
        .map(Member::start)
        .collect();
    let list: Vec<(&str, SocketAddr)> = members.iter().map(|m| (m.route, m.addr)).collect();
    let front = Httpd::start(0, &list).expect("starting httpd");

    let mut c = Client::new(&front);
    let (status, home, _) = c.call("GET", "/visit", "");
    assert_eq!(status, 200);
    assert_eq!(c.route(), Some(home.as_str()));
    for i in 0..10 {
        let (status, node, body) = c.call("POST", "/cart/add?item=x", &format!("n{i}"));
        assert_eq!((status, node.as_str()), (200, home.as_str()));
        assert_eq!(body, format!("{home} n{i}"));
    }
    // New users are spread over the members (byrequests evens out request
    // counts, so they go to the others first).
    let mut seen: Vec<String> = (0..6)
        .map(|_| Client::new(&front).call("GET", "/", "").1)
        .collect();
    seen.sort();
    seen.dedup();
    assert!(seen.len() >= 2, "new sessions all on {seen:?}");

    members
        .iter_mut()
        .find(|m| m.route == home)
        .expect("home")
        .kill();
    let id = c.session.clone().expect("session");
    let (status, node, body) = c.call("POST", "/cart/add?item=y", "a note");
    assert_eq!(status, 200, "{}", front.error_log());
    assert_ne!(node, home);
    assert_eq!(body, format!("{node} a note"), "the POST body was lost");
    assert_eq!(
        c.route(),
        Some(node.as_str()),
        "not rebound: {:?}",
        c.session
    );
    assert_eq!(
        c.session
            .as_deref()
            .and_then(|s| s.split_once('.'))
            .map(|(i, _)| i),
        id.split_once('.').map(|(i, _)| i)
    );
    for _ in 0..5 {
        assert_eq!(c.call("GET", "/cart", "").1, node);
    }
    for _ in 0..6 {
        let (status, n, _) = Client::new(&front).call("GET", "/", "");
        assert_eq!(status, 200);
        assert_ne!(n, home);
    }
    assert!(
        front.error_log().contains("AH00957"),
        "{}",
        front.error_log()
    );
}

#[test]
fn a_busy_port_is_an_error_and_drop_cleans_up() {
    let m = Member::start("nodeA");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let err = Httpd::start(port, &[("nodeA", m.addr)]).expect_err("port in use");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    let err = Httpd::start(0, &[("node.A", m.addr)]).expect_err("a dot in a route");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");

    let front = Httpd::start(0, &[("nodeA", m.addr)]).expect("starting httpd");
    let dir = front.dir().to_owned();
    let conf = dir.join("httpd.conf");
    assert!(front.balancer_status().expect("manager").contains("nodeA"));
    let running = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&*conf.to_string_lossy()))
            .count()
    };
    assert!(running() >= 2, "httpd's parent and children");
    drop(front);
    assert_eq!(running(), 0, "httpd processes left after drop");
    assert!(!dir.exists(), "{} left after drop", dir.display());
}
