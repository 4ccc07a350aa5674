//! Session replication across `shoal run` processes: failover after a real
//! SIGKILL under both built-in policies, sync-ack durability, the custom
//! two-zone policy, state transfer on join, concurrent changes, bad input.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Child processes, killed when the test ends however it ends.
struct Cluster {
    dir: PathBuf,
    group_port: u16,
    /// Lines added to every node's `[plugins]` section.
    plugins: String,
    nodes: Vec<(String, Option<Child>, SocketAddr)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.nodes {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Cluster {
    fn new(tag: &str) -> Self {
        require_loopback_multicast();
        let dir = std::env::temp_dir().join(format!("shoal-sessions-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            dir,
            group_port: free_port(),
            plugins: String::new(),
            nodes: Vec::new(),
        }
    }

    /// Starts node `name` with `session` lines added to its `[session]`
    /// section and `node` lines to `[node]`; returns its index.
    fn start(&mut self, name: &str, session: &str, node: &str) -> usize {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let cfg = self.dir.join(format!("{name}.toml"));
        let cache = format!("{}/component-cache", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(
            &cfg,
            format!(
                "[node]\nname = \"{name}\"\ndomain = \"sessions\"\n{node}\n\
                 [membership]\nport = {}\nbind = \"127.0.0.1\"\nfrequency_ms = 500\ndrop_time_ms = 3000\n\
                 [receiver]\naddress = \"127.0.0.1\"\nport = {}\nauto_bind = 50\n\
                 [api]\nlisten = \"{api}\"\n[plugins]\ncache_dir = \"{cache}\"\n{}\n[session]\n{session}\n",
                self.group_port,
                free_port(),
                self.plugins
            ),
        )
        .expect("write config");
        let child = spawn_shoal(&cfg, &self.dir.join(format!("{name}.log")));
        self.nodes.push((name.into(), Some(child), api));
        self.nodes.len() - 1
    }

    fn api(&self, i: usize) -> SocketAddr {
        self.nodes[i].2
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].1.take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.nodes[i].0)))
            .unwrap_or_default()
    }

    /// Waits until every live node is ready and sees `members` others.
    fn converge(&self, members: usize) {
        for (i, (name, c, api)) in self.nodes.iter().enumerate() {
            if c.is_none() {
                continue;
            }
            wait_blocking(&format!("{name} ready with {members} members"), || {
                let n = get_json(*api, "/api/members")?.as_array()?.len();
                let ready = http(*api, "GET", "/api/ready", None).0 == 200;
                (n == members && ready).then_some(())
            });
            let _ = i;
        }
    }

    fn counts(&self, i: usize) -> (u64, u64, u64) {
        let v = get_json(self.api(i), "/api/sessions").expect("counts");
        (
            v["primary"].as_u64().expect("primary"),
            v["backup"].as_u64().expect("backup"),
            v["proxy"].as_u64().expect("proxy"),
        )
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].1.is_some())
    }

    /// Copies (primary + backup) over every live node.
    fn copies(&self) -> u64 {
        self.live()
            .map(|i| {
                let (p, b, _) = self.counts(i);
                p + b
            })
            .sum()
    }
}

/// An HTTP request: status, JSON body (Null if none), `X-Session-Id`.
fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value, Option<String>) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let url = format!("http://{api}{path}");
    let r = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        ("POST", Some(b)) => agent.post(&url).content_type("application/json").send(b),
        ("POST", None) => agent.post(&url).send_empty(),
        ("PATCH", b) => agent
            .patch(&url)
            .content_type("application/json")
            .send(b.unwrap_or("")),
        ("PUT", b) => agent.put(&url).send(b.unwrap_or("")),
        _ => panic!("method {method}"),
    };
    match r {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let id = r
                .headers()
                .get("x-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::Null),
                id,
            )
        }
        Err(_) => (0, Value::Null, None),
    }
}

fn create(api: SocketAddr, body: Value) -> String {
    let (s, v, _) = http(api, "POST", "/api/sessions", Some(&body.to_string()));
    assert_eq!(s, 201, "create: {v}");
    v["id"].as_str().expect("id").to_owned()
}

fn read(api: SocketAddr, id: &str) -> (u16, Value) {
    let (s, v, _) = http(api, "GET", &format!("/api/sessions/{id}"), None);
    (s, v)
}

fn patch(api: SocketAddr, id: &str, body: Value) -> (u16, Value) {
    let (s, v, _) = http(
        api,
        "PATCH",
        &format!("/api/sessions/{id}"),
        Some(&body.to_string()),
    );
    (s, v)
}

fn route(id: &str) -> &str {
    id.split_once('.').map_or("", |(_, r)| r)
}

fn policy_file(name: &str) -> String {
    guest(name).display().to_string()
}

#[test]
fn delta_three_nodes_survive_a_sigkill_and_a_joiner_serves_only_after_its_copy() {
    let mut c = Cluster::new("delta");
    for n in ["a", "b", "c"] {
        c.start(n, "policy = \"delta\"", "");
    }
    c.converge(2);
    let (a, b) = (c.api(0), c.api(1));
    let id = create(a, json!({"attributes": {"user": "ann", "cart": [1, 2]}}));
    assert_eq!(route(&id), "a");
    let (s, v) = patch(
        a,
        &id,
        json!({"set": {"cart": [1, 2, 3]}, "remove": ["user"]}),
    );
    assert_eq!(s, 200, "{v}");
    // Read on C: every node holds a copy (delta), so it is there as soon as
    // the asynchronous replication lands.
    let on_c = wait_blocking("the change to reach c", || {
        let copies = c.counts(2);
        (copies.1 >= 1 || copies.0 >= 1).then_some(())?;
        let (s, v) = read(c.api(2), &id);
        (s == 200 && v["attributes"]["cart"] == json!([1, 2, 3])).then_some(v)
    });
    assert!(on_c["attributes"].get("user").is_none(), "{on_c}");
    assert_eq!(
        route(on_c["id"].as_str().expect("id")),
        "c",
        "served by c: rebound to c"
    );

    c.kill(0);
    // Read on B with the old id: intact, rebound to B's route.
    let (s, v) = wait_blocking("b to serve the session after a's death", || {
        let r = read(b, &id);
        (r.0 == 200 && r.1["attributes"]["cart"] == json!([1, 2, 3])).then_some(r)
    });
    assert_eq!(s, 200);
    let new_id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(route(&new_id), "b", "{v}");
    assert_eq!(new_id.split('.').next(), id.split('.').next());
    // The old id keeps working, and so does the new one.
    assert_eq!(read(b, &new_id).0, 200);

    // A fourth node: not ready until it holds the session, then serves it.
    let d = c.start("d", "policy = \"delta\"", "");
    let api_d = c.api(d);
    let mut saw_unready = false;
    wait_blocking("d to become ready", || {
        let (s, _, _) = http(api_d, "GET", "/api/ready", None);
        if s == 503 {
            saw_unready = true;
            // The session API refuses meanwhile (unless d turned ready
            // between the two requests).
            let (s2, _, _) = http(api_d, "GET", &format!("/api/sessions/{id}"), None);
            assert!(
                s2 == 503 || s2 == 0 || http(api_d, "GET", "/api/ready", None).0 == 200,
                "session API while not ready: {s2}"
            );
        }
        (s == 200).then_some(())
    });
    assert!(saw_unready, "d was never seen not ready");
    let (p, bk, _) = c.counts(d);
    assert_eq!(p + bk, 1, "d holds the session when it turns ready");
    let (s, v) = read(api_d, &id);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attributes"]["cart"], json!([1, 2, 3]));
    assert!(
        c.log(d).contains("session state transfer complete"),
        "{}",
        c.log(d)
    );
}

#[test]
fn backup_four_nodes_keep_two_copies_of_each_session_and_heal_after_a_sigkill() {
    let mut c = Cluster::new("backup");
    for n in ["a", "b", "c", "d"] {
        c.start(n, "policy = \"backup\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(3);
    let a = c.api(0);
    let ids: Vec<String> = (0..100)
        .map(|i| create(a, json!({"attributes": {"n": i}})))
        .collect();
    // With sync-ack the backups hold their copy before create returns.
    assert_eq!(c.copies(), 200, "one primary and one backup each");
    assert_eq!(c.counts(0), (100, 0, 0));
    wait_blocking("every other node to know where each session lives", || {
        (1..4)
            .all(|i| {
                let (_, b, p) = c.counts(i);
                b + p == 100
            })
            .then_some(())
    });

    c.kill(0);
    // Every session is readable from every survivor (each read moves the
    // session to the reader, as Tomcat's BackupManager does).
    for i in 1..4 {
        for (n, id) in ids.iter().enumerate() {
            let (s, v) = wait_blocking("a session to be readable after the kill", || {
                let r = read(c.api(i), id);
                (r.0 == 200).then_some(r)
            });
            assert_eq!(s, 200);
            assert_eq!(v["attributes"]["n"], json!(n), "{v}");
        }
    }
    // Two copies again once the member is dropped, and settled: the moves
    // the reads started (new primary, then its backup placed, then the old
    // copy dropped) pass through 200 copies on their way.
    let mut last = None;
    wait_blocking("200 copies again, settled", || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now: Vec<_> = c.live().map(|i| c.counts(i)).collect();
        let settled = c.copies() == 200 && last.as_ref() == Some(&now);
        last = Some(now);
        settled.then_some(())
    });

    // Lose a session's primary and backup together: the documented loss,
    // 404 and not 500, and the last node keeps serving.
    let survivor = 1;
    let (p, bk, _) = c.counts(survivor);
    let held_by_survivor = p + bk;
    c.kill(2);
    c.kill(3);
    let mut found = 0;
    for id in &ids {
        let (s, _) = wait_blocking("an answer", || {
            let r = read(c.api(survivor), id);
            (r.0 == 200 || r.0 == 404).then_some(r)
        });
        if s == 200 {
            found += 1;
        }
    }
    assert_eq!(
        found, held_by_survivor,
        "exactly the sessions the survivor held"
    );
    assert!(
        found < 100,
        "some sessions were lost with both their holders"
    );
    assert_eq!(http(c.api(survivor), "GET", "/api/ready", None).0, 200);
}

#[test]
fn a_sync_ack_write_survives_an_immediate_sigkill_of_the_node_that_took_it() {
    let mut c = Cluster::new("syncack");
    for n in ["a", "b", "c"] {
        c.start(n, "policy = \"backup\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(2);
    let a = c.api(0);
    let id = create(a, json!({}));
    let (s, _) = patch(a, &id, json!({"set": {"paid": true}}));
    assert_eq!(s, 200);
    c.kill(0);
    for i in [1, 2] {
        let (s, v) = wait_blocking("the write on a survivor", || {
            let r = read(c.api(i), &id);
            (r.0 == 200).then_some(r)
        });
        assert_eq!(s, 200);
        assert_eq!(v["attributes"]["paid"], json!(true), "{v}");
    }
}

#[test]
fn the_custom_zone_policy_puts_the_two_backups_in_two_other_zones() {
    let mut c = Cluster::new("zones");
    let policy = format!(
        "policy = \"{}\"\nsend_options = \"sync-ack\"\n[session.settings]\nbackups = \"2\"",
        policy_file("zone_policy")
    );
    for (n, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z3")] {
        c.start(n, &policy, &format!("zone = \"{zone}\""));
    }
    c.converge(3);
    for _ in 0..20 {
        create(c.api(0), json!({"attributes": {"k": 1}}));
    }
    // The primary is in z1; the two backups go to z2 and z3, never to b (z1).
    assert_eq!(c.counts(0).0, 20);
    assert_eq!(c.counts(1).1, 0, "no backup in the primary's zone");
    assert_eq!(c.counts(2).1, 20);
    assert_eq!(c.counts(3).1, 20);
    assert_eq!(c.copies(), 60);
}

#[test]
fn state_transfer_of_ten_thousand_sessions() {
    let mut c = Cluster::new("transfer");
    c.start("a", "policy = \"delta\"", "");
    c.converge(0);
    let a = c.api(0);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let body = json!({"attributes": {"v": "x".repeat(100)}}).to_string();
    for _ in 0..10_000 {
        let r = agent
            .post(format!("http://{a}/api/sessions"))
            .content_type("application/json")
            .send(&body)
            .expect("create");
        assert_eq!(r.status().as_u16(), 201);
    }
    let b = c.start("b", "policy = \"delta\"", "");
    c.converge(1);
    assert_eq!(
        c.counts(b),
        (0, 10_000, 0),
        "b is ready only with every session"
    );
    let log = c.log(b);
    assert!(log.contains("session state transfer complete"), "{log}");
}

#[test]
fn concurrent_changes_of_different_attributes_of_one_session_both_survive() {
    let mut c = Cluster::new("concurrent");
    for n in ["a", "b"] {
        c.start(n, "policy = \"delta\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(1);
    let (a, b) = (c.api(0), c.api(1));
    let id = create(a, json!({}));
    // Two writers on one node, each on its own attribute.
    std::thread::scope(|s| {
        for name in ["left", "right"] {
            let id = &id;
            s.spawn(move || {
                for i in 0..100 {
                    let (st, v) = patch(a, id, json!({"set": {name: i}}));
                    assert_eq!(st, 200, "{v}");
                }
            });
        }
    });
    let (_, v) = read(a, &id);
    assert_eq!(v["attributes"]["left"], json!(99), "{v}");
    assert_eq!(v["attributes"]["right"], json!(99), "{v}");
    // The same on two nodes at once (after a failover, say): different
    // attributes both survive everywhere; one attribute written on both ends
    // the same everywhere (the later version wins; at equal versions the
    // node with the larger id).
    std::thread::scope(|s| {
        for (api, name) in [(a, "from_a"), (b, "from_b")] {
            let id = &id;
            s.spawn(move || {
                for i in 0..50 {
                    let (st, v) = patch(api, id, json!({"set": {name: i, "both": name}}));
                    assert_eq!(st, 200, "{v}");
                }
            });
        }
    });
    let final_a = wait_blocking("both nodes to agree", || {
        let x = get_attrs(&c, 0, &id)?;
        let y = get_attrs(&c, 1, &id)?;
        (x == y).then_some(x)
    });
    assert_eq!(final_a["from_a"], json!(49), "{final_a}");
    assert_eq!(final_a["from_b"], json!(49), "{final_a}");
    assert!(final_a["both"] == json!("from_a") || final_a["both"] == json!("from_b"));
}

/// A session's attributes as node `i` holds them, read without taking it
/// over: from the node's own copy via a read, then compared.
fn get_attrs(c: &Cluster, i: usize, id: &str) -> Option<Value> {
    let (s, v) = read(c.api(i), id);
    (s == 200).then(|| v["attributes"].clone())
}

#[test]
fn bad_input_on_every_route_is_a_4xx_and_the_node_is_unaffected() {
    let mut c = Cluster::new("bad");
    c.start(
        "a",
        "max_attribute_bytes = 1000\nmax_session_bytes = 4000\nmax_attributes = 4",
        "",
    );
    c.converge(0);
    let a = c.api(0);
    let id = create(a, json!({"attributes": {"k": 1}}));
    let big = "x".repeat(2000);
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        (
            "POST",
            "/api/sessions".into(),
            Some("{not json".into()),
            400,
        ),
        ("POST", "/api/sessions".into(), Some("[1,2]".into()), 400),
        (
            "POST",
            "/api/sessions".into(),
            Some(r#"{"max_inactive_s": "ten"}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/sessions".into(),
            Some(r#"{"max_inactive_s": 0}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/sessions".into(),
            Some(r#"{"attributes": 5}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/sessions".into(),
            Some(r#"{"other": 1}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/sessions".into(),
            Some(json!({"attributes": {"v": big}}).to_string()),
            413,
        ),
        (
            "POST",
            "/api/sessions".into(),
            Some("x".repeat(200_000)),
            413,
        ),
        // Larger than the socket buffers: the client is still writing
        // when the answer is ready, and must read it, not a reset.
        (
            "POST",
            "/api/sessions".into(),
            Some("x".repeat(3_000_000)),
            413,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some("x".repeat(3_000_000)),
            413,
        ),
        // The admin API's send route (4 MiB) on the same listener.
        ("POST", "/api/send".into(), Some("x".repeat(6_000_000)), 413),
        ("GET", "/api/sessions/nope".into(), None, 404),
        ("GET", "/api/sessions/..".into(), None, 404),
        (
            "GET",
            format!("/api/sessions/{}", "Z".repeat(32)),
            None,
            404,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some("{".into()),
            400,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some(r#"{"set": []}"#.into()),
            400,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some(r#"{"remove": "k"}"#.into()),
            400,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some(r#"{"set": {"k": 1}, "remove": ["k"]}"#.into()),
            400,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some(r#"{"set": {"": 1}}"#.into()),
            400,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some(r#"{"remove": ["k", "k"]}"#.into()),
            400,
        ),
        (
            "PATCH",
            format!("/api/sessions/{id}"),
            Some(r#"{"set": {"a":1,"b":2,"c":3,"d":4}}"#.into()),
            413,
        ),
        (
            "PATCH",
            "/api/sessions/nope".into(),
            Some(r#"{"set": {"k": 2}}"#.into()),
            404,
        ),
        ("DELETE", "/api/sessions/nope".into(), None, 404),
        ("PUT", format!("/api/sessions/{id}"), Some("{}".into()), 405),
    ];
    for (method, path, body, want) in cases {
        let (s, v, _) = http(a, method, &path, body.as_deref());
        assert_eq!(s, want, "{method} {path} {body:?}: {v}");
        if s != 405 {
            assert!(
                v["error"].is_string(),
                "{method} {path}: a JSON error message: {v}"
            );
        }
    }
    // Unaffected: the session is intact, the node ready.
    let (s, v) = read(a, &id);
    assert_eq!(s, 200);
    assert_eq!(v["attributes"], json!({"k": 1}));
    assert_eq!(
        http(a, "DELETE", &format!("/api/sessions/{id}"), None).0,
        204
    );
    assert_eq!(read(a, &id).0, 404, "invalidated");
    assert_eq!(http(a, "GET", "/api/ready", None).0, 200);
    let _ = Path::new("");
}

fn metric(api: SocketAddr, line_start: &str) -> f64 {
    let text = ureq::get(format!("http://{api}/metrics"))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

#[test]
fn a_failing_policy_is_counted_and_its_failure_mode_decides_where_copies_go() {
    let mut c = Cluster::new("trap");
    let testkit = policy_file("policy_testkit");
    // a: the policy traps on every call, fail-open (copies everywhere);
    // b: it answers with the wrong shape, fail-closed (no copy).
    c.start(
        "a",
        &format!("policy = \"{testkit}\"\nsend_options = \"sync-ack\"\n[session.settings]\nfail = \"trap\""),
        "",
    );
    c.start(
        "b",
        &format!(
            "policy = \"{testkit}\"\nsend_options = \"sync-ack\"\nfailure_mode = \"fail-closed\"\n\
             [session.settings]\nfail = \"shape\""
        ),
        "",
    );
    c.converge(1);
    let (a, b) = (c.api(0), c.api(1));
    let on_a = create(a, json!({"attributes": {"k": "a"}}));
    assert_eq!(c.counts(1), (0, 1, 0), "fail-open: b got a copy");
    let on_b = create(b, json!({"attributes": {"k": "b"}}));
    assert_eq!(c.counts(0), (1, 0, 0), "fail-closed: a got none");
    assert_eq!(c.counts(1), (1, 1, 0));
    // Both keep serving, and the failures are counted by kind.
    assert_eq!(read(a, &on_a).0, 200);
    assert_eq!(read(b, &on_b).0, 200);
    assert!(metric(a, "shoal_session_policy_failures_total{kind=\"trap\"}") >= 1.0);
    assert!(metric(b, "shoal_session_policy_failures_total{kind=\"trap\"}") >= 1.0);
    assert!(c.log(0).contains("plug-in call failed"), "{}", c.log(0));
}

#[test]
fn invalidation_reaches_every_node_and_expiry_needs_no_message() {
    let mut c = Cluster::new("expiry");
    for n in ["a", "b"] {
        c.start(n, "policy = \"delta\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(1);
    let (a, b) = (c.api(0), c.api(1));
    let gone = create(a, json!({}));
    let short = create(a, json!({"max_inactive_s": 1}));
    assert_eq!(c.counts(1), (0, 2, 0));
    assert_eq!(
        http(a, "DELETE", &format!("/api/sessions/{gone}"), None).0,
        204
    );
    // sync-ack: b has dropped it before the answer.
    assert_eq!(c.counts(1), (0, 1, 0));
    assert_eq!(read(b, &gone).0, 404);
    // The short one times out on both without a message: a after 1 s, b (a
    // copy) after 2 s, from the replicated last access.
    wait_blocking("the short session to expire everywhere", || {
        (c.counts(0) == (0, 0, 0) && c.counts(1) == (0, 0, 0)).then_some(())
    });
    assert_eq!(read(a, &short).0, 404);
    assert_eq!(metric(a, "shoal_sessions_expired_total"), 1.0);
    assert_eq!(
        metric(b, "shoal_sessions_invalidated_total"),
        1.0,
        "only the DELETE reached b as a message"
    );
}

#[test]
fn the_placement_policy_is_swapped_live_and_sessions_stay() {
    let mut c = Cluster::new("swap");
    for n in ["a", "b", "c"] {
        c.start(n, "policy = \"delta\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(2);
    let a = c.api(0);
    let ids: Vec<String> = (0..10)
        .map(|i| create(a, json!({"attributes": {"i": i}})))
        .collect();
    assert_eq!(c.copies(), 30, "delta: a copy everywhere");
    // A broken component is refused; the old policy keeps placing.
    let (s, v, _) = http(a, "PUT", "/api/plugins/session-policy", Some("not wasm"));
    assert_eq!(s, 422, "{v}");
    create(a, json!({}));
    assert_eq!(c.copies(), 33);
    // Swap a's policy to backup: its sessions keep one backup only.
    let wasm = std::fs::read(guest("backup_policy")).expect("backup_policy.wasm");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut r = agent
        .put(format!("http://{a}/api/plugins/session-policy"))
        .send(&wasm[..])
        .expect("swap");
    let report: Value = r.body_mut().read_json().expect("report");
    assert_eq!(report["plugins"][0]["change"], "replaced", "{report}");
    let listed = get_json(a, "/api/plugins").expect("plugins");
    let policy = listed
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "session-policy"))
        .cloned()
        .expect("the policy is listed");
    assert_eq!(
        policy["sha256"], report["plugins"][0]["new_sha256"],
        "{policy}"
    );
    assert_eq!(policy["proxies"], json!(true), "{policy}");
    wait_blocking("copies to follow the new policy", || {
        (c.copies() == 22).then_some(())
    });
    for id in &ids {
        for i in 0..3 {
            assert_eq!(read(c.api(i), id).0, 200, "{id} on node {i}");
        }
    }
}

#[test]
fn the_session_routes_can_have_a_listener_of_their_own() {
    let mut c = Cluster::new("listen");
    let own: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    c.start("a", &format!("listen = \"{own}\""), "");
    c.converge(0);
    let id = create(own, json!({"attributes": {"k": 1}}));
    assert_eq!(read(own, &id).0, 200);
    let admin = c.api(0);
    assert_eq!(
        http(admin, "GET", &format!("/api/sessions/{id}"), None).0,
        404,
        "not on the admin listener"
    );
    assert_eq!(
        metric(admin, "shoal_sessions_created_total"),
        1.0,
        "metrics stay on the admin listener"
    );
}

/// The seed's walk-through (DESIGN.md), through the session API: A starts;
/// B starts and copies A's sessions; A creates session 1 and replicates
/// it; A crashes and B serves A's users with nothing lost; A restarts and
/// copies B's sessions; session 1 is invalidated on A and B is told; B
/// creates session 2 and A gets it; session 2 times out on both without a
/// message.
#[test]
fn the_nine_steps_of_the_seed() {
    let mut c = Cluster::new("nine");
    let cfg = "policy = \"delta\"\nsend_options = \"sync-ack\"";
    // 1. A starts.
    let a = c.start("a", cfg, "");
    c.converge(0);
    let early = create(c.api(a), json!({"attributes": {"early": true}}));
    // 2. B starts and copies A's sessions.
    let b = c.start("b", cfg, "");
    c.converge(1);
    assert_eq!(c.counts(b), (0, 1, 0), "b copied a's session");
    // 3. A creates session 1 and replicates it.
    let s1 = create(c.api(a), json!({"attributes": {"user": "ann"}}));
    assert_eq!(c.counts(b), (0, 2, 0));
    // 4. A crashes; B serves A's users, nothing lost.
    c.kill(a);
    for id in [&early, &s1] {
        let (s, v) = read(c.api(b), id);
        assert_eq!(s, 200, "{v}");
        assert_eq!(route(v["id"].as_str().expect("id")), "b", "rebound to b");
    }
    // 5. A restarts (a new process, a new member) and copies B's sessions.
    let a2 = c.start("a", cfg, "");
    c.converge(1);
    assert_eq!(
        c.counts(a2),
        (0, 2, 0),
        "the restarted a copied b's sessions"
    );
    // 6. Session 1 is invalidated on A; B is told.
    assert_eq!(
        http(c.api(a2), "DELETE", &format!("/api/sessions/{s1}"), None).0,
        204
    );
    assert_eq!(read(c.api(b), &s1).0, 404);
    // 7. B creates session 2; A gets it.
    let s2 = create(
        c.api(b),
        json!({"max_inactive_s": 1, "attributes": {"n": 2}}),
    );
    assert_eq!(
        c.counts(a2).1,
        2,
        "a holds a copy of session 2 (and of the early one)"
    );
    // 8. Session 2 times out on both, without a message.
    wait_blocking("session 2 to time out on both nodes", || {
        (c.counts(a2).1 == 1 && c.counts(b).0 == 1).then_some(())
    });
    assert_eq!(read(c.api(b), &s2).0, 404);
    assert_eq!(metric(c.api(b), "shoal_sessions_expired_total"), 1.0);
    assert_eq!(
        metric(c.api(a2), "shoal_sessions_invalidated_total"),
        1.0,
        "only session 1 by message"
    );
}

/// A node paused (SIGSTOP) past the drop time is dropped by the others,
/// which re-place its sessions and take writes without it; when it resumes
/// (the same member) everyone reconciles: one primary, a copy on every
/// node, and the write made during the pause everywhere.
#[test]
fn a_node_back_from_a_long_pause_is_reconciled() {
    let mut c = Cluster::new("pause");
    // No failure detector: a paused member is dropped at the drop time (with
    // it, its receiver still accepting connections would keep it).
    c.plugins = "default_chain = false".into();
    for n in ["a", "b", "c"] {
        c.start(n, "policy = \"delta\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(2);
    let (a, b) = (c.api(0), c.api(1));
    let id = create(a, json!({"attributes": {"x": 0}}));
    let pid = nix::unistd::Pid::from_raw(c.nodes[1].1.as_ref().expect("b").id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP b");
    // a drops b (drop time 3 s), then takes a write without it.
    wait_blocking("a to drop the paused b", || {
        (get_json(a, "/api/members")?.as_array()?.len() == 1).then_some(())
    });
    let (s, v) = patch(a, &id, json!({"set": {"x": 1}}));
    assert_eq!(s, 200, "{v}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT b");
    c.converge(2);
    wait_blocking(
        "one primary and a copy of the latest write on every node",
        || {
            let counts: Vec<(u64, u64, u64)> = (0..3).map(|i| c.counts(i)).collect();
            let primaries: u64 = counts.iter().map(|x| x.0).sum();
            let copies: u64 = counts.iter().map(|x| x.0 + x.1).sum();
            (primaries == 1 && copies == 3).then_some(())?;
            // Read where the copy is a backup too: b, which missed the write.
            let (s, v) = read(b, &id);
            (s == 200 && v["attributes"]["x"] == json!(1)).then_some(())
        },
    );
}

/// The same pause with the default chain's TCP failure detector, its read
/// test on (a paused node's kernel still accepts connections; only the ACK
/// is missing): the member is dropped, and comes back through the detector
/// (whose raised event carries no payload) rather than straight from a
/// heartbeat; it is still sent its share: a session created during the
/// pause reaches it without any read.
#[test]
fn a_member_back_through_the_tcp_failure_detector_is_sent_its_share() {
    let mut c = Cluster::new("pause-fd");
    c.plugins = "[[interceptor]]\nname = \"tcp-failure-detector\"\n\
                 settings = { performReadTest = \"true\", readTestTimeout = \"1000\" }\n\
                 [[interceptor]]\nname = \"message-dispatch\"\n\
                 [[interceptor]]\nname = \"throughput\""
        .into();
    for n in ["a", "b", "c"] {
        c.start(n, "policy = \"delta\"\nsend_options = \"sync-ack\"", "");
    }
    c.converge(2);
    let a = c.api(0);
    create(a, json!({"attributes": {"n": 1}}));
    wait_blocking("b to hold the first session", || {
        (c.counts(1).1 == 1).then_some(())
    });
    let pid = nix::unistd::Pid::from_raw(c.nodes[1].1.as_ref().expect("b").id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP b");
    wait_blocking("a to drop the paused b", || {
        (get_json(a, "/api/members")?.as_array()?.len() == 1).then_some(())
    });
    create(a, json!({"attributes": {"n": 2}}));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT b");
    c.converge(2);
    wait_blocking("b to be sent the session created while it was away", || {
        let (p, bk, _) = c.counts(1);
        (p + bk == 2).then_some(())
    });
    let primaries: u64 = (0..3).map(|i| c.counts(i).0).sum();
    assert_eq!(primaries, 2, "one primary per session");
}
