//! The session layer over real nodes: two shoal nodes in this process find
//! each other by multicast on lo and replicate over TCP with the built-in
//! `delta` policy (a WebAssembly component) in `sync-ack` mode; requests go
//! through the layer as axum serves them (the router as a tower service).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use shoal::Node;
use shoal::session::SessionEngine;
use shoal_web::{Session, SessionLayer};
use tower::ServiceExt as _;

/// Outside the ephemeral range: no outgoing connection takes it before
/// the node binds it.
fn free_port() -> u16 {
    shoal::transport::ports::reserve_loopback(1).expect("a free loopback port")[0]
}

fn config(name: &str, group: u16, policy: &str) -> shoal::Config {
    let text = format!(
        r#"
[node]
name = "{name}"
jvm_route = "{name}"
domain = "web-test"
[membership]
kind = "multicast"
port = {group}
bind = "127.0.0.1"
frequency_ms = 100
drop_time_ms = 1000
[receiver]
address = "127.0.0.1"
port = {port}
auto_bind = 50
[api]
listen = "off"
[session]
policy = "{policy}"
send_options = "sync-ack"
"#,
        port = free_port()
    );
    shoal::Config::parse(&text, "test.toml".as_ref()).expect("config")
}

struct Cluster {
    nodes: Vec<Node>,
    apps: Vec<Router>,
    late: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    async fn start(n: usize, policy: &str) -> Self {
        let group = free_port();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = ["nodeA", "nodeB", "nodeC"][i];
            nodes.push(
                Node::start(config(name, group, policy))
                    .await
                    .expect("node starts"),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|x| x.members().len() == n - 1 && x.is_ready())
        {
            assert!(Instant::now() < deadline, "nodes did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Each engine's view of the members refreshes on membership events.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let late = Arc::new(Mutex::new(Vec::new()));
        let apps = nodes
            .iter()
            .map(|node| app(SessionLayer::for_node(node).expect("engine"), late.clone()))
            .collect();
        Self { nodes, apps, late }
    }

    fn engine(&self, i: usize) -> &SessionEngine {
        self.nodes[i].sessions().expect("engine")
    }

    async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

#[derive(Deserialize)]
struct Q {
    name: Option<String>,
    value: Option<String>,
}

fn app(layer: SessionLayer, late: Arc<Mutex<Vec<String>>>) -> Router {
    Router::new()
        .route(
            "/get",
            get(|s: Session, Query(q): Query<Q>| async move {
                let v: Option<serde_json::Value> = s.get(q.name.as_deref().unwrap_or("a"))?;
                Ok::<_, shoal_web::Error>(serde_json::to_string(&v).unwrap_or_default())
            }),
        )
        .route("/set", post(set))
        .route("/style.css", post(set))
        .route(
            "/bump",
            post(|s: Session, Query(q): Query<Q>| async move {
                let mut n = s.get_mut_or_default::<u64>(q.name.as_deref().unwrap_or("n"))?;
                *n += 1;
                Ok::<_, shoal_web::Error>(n.to_string())
            }),
        )
        .route(
            "/push",
            post(|s: Session, Query(q): Query<Q>| async move {
                // An in-place change of a collection read from the session.
                if let Some(mut list) = s.get_mut::<Vec<String>>("list")? {
                    list.push(q.value.unwrap_or_default());
                }
                Ok::<_, shoal_web::Error>("ok")
            }),
        )
        .route(
            "/touch-mut",
            post(|s: Session| async move {
                // A guard taken and dropped without a change.
                let _ = s.get_mut::<Vec<String>>("list")?;
                Ok::<_, shoal_web::Error>("ok")
            }),
        )
        .route(
            "/remove",
            post(|s: Session, Query(q): Query<Q>| async move {
                s.remove(q.name.as_deref().unwrap_or("a"))?;
                Ok::<_, shoal_web::Error>("ok")
            }),
        )
        .route(
            "/invalidate",
            post(|s: Session| async move {
                s.invalidate()?;
                Ok::<_, shoal_web::Error>("ok")
            }),
        )
        .route(
            "/relogin",
            post(|s: Session| async move {
                s.invalidate()?;
                s.set("user", "again")?;
                Ok::<_, shoal_web::Error>("ok")
            }),
        )
        .route(
            "/late",
            post(move |s: Session| async move {
                let late = late.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let r = s.set("late", &1);
                    late.lock().expect("lock").push(format!("{r:?}"));
                });
                "ok"
            }),
        )
        .route("/nothing", get(|| async { "no session used" }))
        .layer(layer)
}

async fn set(s: Session, Query(q): Query<Q>) -> Result<&'static str, shoal_web::Error> {
    let name = q.name.unwrap_or_else(|| "a".into());
    let value: serde_json::Value =
        serde_json::from_str(q.value.as_deref().unwrap_or("null")).unwrap_or_default();
    s.set(&name, &value)?;
    Ok("ok")
}

struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    body: String,
}

impl Answer {
    /// The session id the answer set (none: no cookie; "" removed).
    fn cookie_id(&self) -> Option<String> {
        let c = self.set_cookie.as_deref()?;
        let v = c.strip_prefix("JSESSIONID=")?;
        Some(v.split(';').next().unwrap_or("").to_owned())
    }
}

async fn call(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp: Response = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    Answer {
        status,
        set_cookie,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn jar(id: &str) -> String {
    format!("JSESSIONID={id}")
}

fn attr(e: &SessionEngine, id: &str, name: &str) -> Option<String> {
    let snap = e.peek(id)?;
    snap.attributes
        .iter()
        .find(|(n, _)| &**n == name)
        .map(|(_, v)| v.get().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_start_on_first_write_and_reach_the_other_node_before_the_answer() {
    let c = Cluster::start(2, "delta").await;
    // Reading creates nothing.
    let r = call(&c.apps[0], "GET", "/get?name=a", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.set_cookie, None, "a read must not create a session");
    assert_eq!(c.engine(0).counts().primary, 0);
    let r = call(&c.apps[0], "GET", "/nothing", None).await;
    assert_eq!(r.set_cookie, None);
    // The first write does, and (sync-ack) node B holds it when A answers.
    let r = call(&c.apps[0], "POST", "/set?name=a&value=%22x%22", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = r.cookie_id().expect("a new session's cookie");
    assert!(id.ends_with(".nodeA"), "{id}");
    assert!(r.set_cookie.as_deref().unwrap_or("").contains("HttpOnly"));
    assert_eq!(attr(c.engine(1), &id, "a").as_deref(), Some("\"x\""));
    // With the cookie: no new cookie, the change replicated.
    let r = call(&c.apps[0], "POST", "/set?name=b&value=2", Some(&jar(&id))).await;
    assert_eq!(r.set_cookie, None);
    assert_eq!(attr(c.engine(1), &id, "b").as_deref(), Some("2"));
    let r = call(&c.apps[0], "POST", "/remove?name=a", Some(&jar(&id))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(attr(c.engine(1), &id, "a"), None, "a removal replicates");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_changed_in_place_is_replicated() {
    let c = Cluster::start(2, "delta").await;
    let r = call(&c.apps[0], "POST", "/bump", None).await;
    let id = r.cookie_id().expect("cookie");
    for want in 2..=3 {
        let r = call(&c.apps[0], "POST", "/bump", Some(&jar(&id))).await;
        assert_eq!(r.body, want.to_string());
        assert_eq!(
            attr(c.engine(1), &id, "n"),
            Some(want.to_string()),
            "an in-place change did not reach node B"
        );
    }
    // A collection changed in place (the case Tomcat's DeltaSession and
    // Spring Session lose).
    call(
        &c.apps[0],
        "POST",
        "/set?name=list&value=%5B%5D",
        Some(&jar(&id)),
    )
    .await;
    call(&c.apps[0], "POST", "/push?value=apple", Some(&jar(&id))).await;
    call(&c.apps[0], "POST", "/push?value=pear", Some(&jar(&id))).await;
    assert_eq!(
        attr(c.engine(1), &id, "list").as_deref(),
        Some(r#"["apple","pear"]"#)
    );
    // A guard dropped unchanged sends nothing.
    let before = c.engine(0).peek(&id).expect("held").version;
    call(&c.apps[0], "POST", "/touch-mut", Some(&jar(&id))).await;
    assert_eq!(c.engine(0).peek(&id).expect("held").version, before);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_request_is_not_replicated_until_the_next_one() {
    let c = Cluster::start(2, "delta").await;
    let r = call(&c.apps[0], "POST", "/set?name=a&value=1", None).await;
    let id = r.cookie_id().expect("cookie");
    let r = call(
        &c.apps[0],
        "POST",
        "/style.css?name=b&value=2",
        Some(&jar(&id)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Applied on A, not sent.
    assert_eq!(attr(c.engine(0), &id, "b").as_deref(), Some("2"));
    assert_eq!(
        attr(c.engine(1), &id, "b"),
        None,
        "a filtered request replicated"
    );
    // The next replicated request carries it.
    call(&c.apps[0], "POST", "/set?name=c&value=3", Some(&jar(&id))).await;
    assert_eq!(attr(c.engine(1), &id, "b").as_deref(), Some("2"));
    assert_eq!(attr(c.engine(1), &id, "c").as_deref(), Some("3"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_rebinds_the_session_and_sets_a_new_cookie() {
    let c = Cluster::start(2, "delta").await;
    let r = call(&c.apps[0], "POST", "/set?name=cart&value=%5B1%2C2%5D", None).await;
    let id = r.cookie_id().expect("cookie");
    let base = id.split('.').next().expect("base").to_owned();
    // The balancer sends A's user to B (A is down, say): B rebinds it,
    // even for a request whose handler does not use the session.
    let r = call(&c.apps[1], "GET", "/nothing", Some(&jar(&id))).await;
    let new = r.cookie_id().expect("a rebound session gets a new cookie");
    assert_eq!(new, format!("{base}.nodeB"));
    // Sticks now: the cart is there, no further cookie.
    let r = call(&c.apps[1], "GET", "/get?name=cart", Some(&jar(&new))).await;
    assert_eq!(r.body, "[1,2]");
    assert_eq!(r.set_cookie, None);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_unknown_and_invalidated_ids_start_fresh_sessions() {
    let c = Cluster::start(2, "delta").await;
    for cookie in [
        "JSESSIONID=garbage",
        "JSESSIONID=",
        "JSESSIONID=\u{e9}t\u{e9}",
        "JSESSIONID=0123456789ABCDEF0123456789ABCDEZ.nodeA",
        "a=b; JSESSIONID; c",
    ] {
        let r = call(&c.apps[0], "GET", "/get?name=a", Some(cookie)).await;
        assert_eq!(r.status, StatusCode::OK, "{cookie:?}: {}", r.body);
        assert_eq!(r.set_cookie, None, "{cookie:?}");
    }
    let unknown = "0123456789ABCDEF0123456789ABCDEF.nodeA";
    let r = call(
        &c.apps[0],
        "POST",
        "/set?name=a&value=1",
        Some(&jar(unknown)),
    )
    .await;
    let id = r.cookie_id().expect("a fresh session");
    assert_ne!(id, unknown);
    // Invalidate: the cookie is removed and B drops it.
    assert!(c.engine(1).peek(&id).is_some());
    let r = call(&c.apps[0], "POST", "/invalidate", Some(&jar(&id))).await;
    assert_eq!(r.cookie_id().as_deref(), Some(""), "{:?}", r.set_cookie);
    assert!(r.set_cookie.as_deref().unwrap_or("").contains("Max-Age=0"));
    assert!(c.engine(1).peek(&id).is_none(), "B still holds it");
    assert!(c.engine(0).peek(&id).is_none());
    let r = call(&c.apps[1], "GET", "/get?name=a", Some(&jar(&id))).await;
    assert_eq!(r.body, "null");
    // Invalidate then write: a new session.
    let r = call(&c.apps[0], "POST", "/set?name=a&value=1", None).await;
    let id = r.cookie_id().expect("cookie");
    let r = call(&c.apps[0], "POST", "/relogin", Some(&jar(&id))).await;
    let fresh = r.cookie_id().expect("cookie");
    assert_ne!(fresh, id);
    assert!(c.engine(0).peek(&id).is_none());
    assert_eq!(
        attr(c.engine(1), &fresh, "user").as_deref(),
        Some("\"again\"")
    );
    assert_eq!(attr(c.engine(1), &fresh, "a"), None);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_the_request_is_refused_not_lost() {
    let c = Cluster::start(2, "delta").await;
    let r = call(&c.apps[0], "POST", "/set?name=a&value=1", None).await;
    let id = r.cookie_id().expect("cookie");
    call(&c.apps[0], "POST", "/late", Some(&jar(&id))).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.late.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = c.late.lock().expect("lock").clone();
    assert_eq!(got, vec!["Err(Committed)".to_owned()]);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_changing_different_attributes_both_survive() {
    let c = Cluster::start(2, "delta").await;
    let r = call(&c.apps[0], "POST", "/set?name=x&value=0", None).await;
    let id = r.cookie_id().expect("cookie");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app = c.apps[0].clone();
        let cookie = jar(&id);
        tasks.push(tokio::spawn(async move {
            call(
                &app,
                "POST",
                &format!("/set?name=k{i}&value={i}"),
                Some(&cookie),
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").status, StatusCode::OK);
    }
    for e in [c.engine(0), c.engine(1)] {
        let snap = e.peek(&id).expect("held");
        for i in 0..16 {
            let name = format!("k{i}");
            assert!(
                snap.attributes.iter().any(|(n, _)| **n == *name),
                "{name} lost"
            );
        }
    }
    c.stop().await;
}

fn metric(e: &SessionEngine, name: &str) -> u64 {
    let mut text = String::new();
    e.render_metrics(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cookie_asks_the_cluster_once_not_on_every_request() {
    let c = Cluster::start(2, "delta").await;
    let stale = jar("0123456789ABCDEF0123456789ABCDEF.nodeA");
    let before = metric(c.engine(0), "shoal_session_fetches_total");
    for _ in 0..5 {
        let r = call(&c.apps[0], "GET", "/get?name=a", Some(&stale)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "null");
    }
    assert_eq!(
        metric(c.engine(0), "shoal_session_fetches_total") - before,
        1,
        "every request with the stale cookie asked the other members"
    );
    c.stop().await;
}
