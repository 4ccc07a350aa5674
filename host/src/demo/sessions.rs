//! `shoal demo` (`shoal demo sessions`): Tomcat session replication in the
//! nine steps of the seed article, on two node processes A and B, each
//! step checked through the session HTTP API, `/api/ready` and `/metrics`.
//! Policy `delta` (a copy on every node, DeltaManager) with
//! `send_options = "sync-ack"`, so a write has reached the other node when
//! its answer arrives and every check right after it is deterministic.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use super::{Cluster, DROP_TIME_MS, FREQUENCY_MS, member_ids, node_id, wait_until};

const STEPS: u32 = 9;
const A: usize = 0;
const B: usize = 1;
/// Sessions created on A before B starts (step 2).
const EARLY: u64 = 3;
/// The idle time of the session that times out in step 9, s: short for
/// the demo (Tomcat's default is 30 min).
const SHORT_S: u64 = 2;
/// Config of both nodes beyond name, membership and ports.
const EXTRA: &str = "jvm_route = \"node{NAME}\"\n\n[session]\npolicy = \"delta\"\nsend_options = \"sync-ack\"\nstate_transfer_timeout_ms = 10000";

/// An answer of the session API.
struct Reply {
    status: u16,
    /// `X-Session-Id`.
    session_id: Option<String>,
    /// `X-Replication: incomplete` was set.
    incomplete: bool,
    body: Value,
}

/// HTTP client of the demo: errors are statuses, never `Err`, and no
/// connection is kept (a node is killed and restarted on the same port).
struct Http(ureq::Agent);

impl Http {
    fn new() -> Self {
        let cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Self(ureq::Agent::new_with_config(cfg))
    }

    fn call(
        &self,
        method: &str,
        api: SocketAddr,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let url = format!("http://{api}{path}");
        let text = body.map(Value::to_string).unwrap_or_default();
        let mut resp = match method {
            "GET" => self.0.get(&url).call(),
            "DELETE" => self.0.delete(&url).call(),
            "POST" => self.0.post(&url).send(&text),
            "PATCH" => self.0.patch(&url).send(&text),
            _ => bail!("unsupported method {method}"),
        }
        .with_context(|| format!("{method} {url}"))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let session_id = header("x-session-id");
        let incomplete = header("x-replication").as_deref() == Some("incomplete");
        let text = resp.body_mut().read_to_string()?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply {
            status: resp.status().as_u16(),
            session_id,
            incomplete,
            body,
        })
    }

    /// `GET /api/sessions` of `api`: what it holds, read-only (no access).
    fn held(&self, api: SocketAddr) -> anyhow::Result<Held> {
        let r = self.call("GET", api, "/api/sessions", None)?;
        ensure!(
            r.status == 200,
            "GET /api/sessions answered {}: {}",
            r.status,
            r.body
        );
        let n = |k: &str| {
            r.body[k]
                .as_u64()
                .with_context(|| format!("no {k} in {}", r.body))
        };
        Ok(Held {
            primary: n("primary")?,
            backup: n("backup")?,
        })
    }

    /// The value of `name` (a whole line key: `shoal_x` or `shoal_x{..}`) in `/metrics`.
    fn metric(&self, api: SocketAddr, name: &str) -> anyhow::Result<u64> {
        let r = self.call("GET", api, "/metrics", None)?;
        let text = r.body.as_str().context("/metrics is not text")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }

    /// Creates a session on `api`; its id. A 201 whose change reached the
    /// other node (no `X-Replication: incomplete`) is required.
    fn create(&self, api: SocketAddr, body: &Value) -> anyhow::Result<String> {
        let r = self.call("POST", api, "/api/sessions", Some(body))?;
        ensure!(
            r.status == 201,
            "POST /api/sessions: expected 201, saw {} {}",
            r.status,
            r.body
        );
        ensure!(
            !r.incomplete,
            "POST /api/sessions: the copy was not acknowledged (X-Replication: incomplete)"
        );
        r.body["id"]
            .as_str()
            .map(str::to_owned)
            .context("the new session has no id")
    }
}

/// What a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    primary: u64,
    backup: u64,
}

impl Held {
    fn count(self) -> u64 {
        self.primary + self.backup
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} primary, {} copies", self.primary, self.backup)
    }
}

/// Prints `[n/9] title ... ` then `ok (detail)` or `FAILED: why`.
struct Steps {
    n: u32,
    logs: String,
}

impl Steps {
    fn run(
        &mut self,
        title: &str,
        f: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        self.n += 1;
        print!("[{}/{STEPS}] {title} ... ", self.n);
        let _ = std::io::stdout().flush();
        match f() {
            Ok(detail) => {
                println!("ok ({detail})");
                Ok(())
            }
            Err(e) => {
                println!("FAILED: {e:#}");
                bail!("step {}/{STEPS} failed (node logs: {})", self.n, self.logs)
            }
        }
    }
}

/// Seconds with one decimal.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The part of a session id before its route, shortened for display.
fn short(id: &str) -> String {
    let (base, route) = id.split_once('.').unwrap_or((id, ""));
    format!("{}….{route}", &base[..base.len().min(8)])
}

/// Waits until `api` answers `/api/ready` with 200; returns how many 503
/// answers came before (a refused connection, the process starting, is
/// not counted).
fn wait_ready(http: &Http, api: SocketAddr) -> anyhow::Result<u32> {
    let mut not_ready = 0;
    wait_until("/api/ready to answer 200", || {
        match http.call("GET", api, "/api/ready", None) {
            Ok(r) if r.status == 200 => Some(()),
            Ok(r) => {
                not_ready += u32::from(r.status == 503);
                None
            }
            Err(_) => None,
        }
    })?;
    Ok(not_ready)
}

/// Runs the nine steps. Returns an error (after stopping both nodes) at
/// the first check that fails.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::new("sessions", &["a", "b"], |name| {
        EXTRA.replace("{NAME}", &name.to_uppercase())
    })?;
    let (a, b) = (cluster.nodes[A].api, cluster.nodes[B].api);
    println!(
        "Tomcat session replication in 9 steps: nodes A (jvm_route nodeA) and B (nodeB), policy delta, send_options sync-ack"
    );
    for line in &cluster.note {
        println!("{line}");
    }
    println!("node logs: {}", cluster.dir.display());
    let http = Http::new();
    let mut steps = Steps {
        n: 0,
        logs: cluster.dir.display().to_string(),
    };

    steps.run("node A starts", || {
        let t = Instant::now();
        let pid = cluster.start(A)?;
        wait_ready(&http, a)?;
        Ok(format!(
            "pid {pid}, admin http://{a}, ready after {} ms",
            t.elapsed().as_millis()
        ))
    })?;

    steps.run("node B starts and copies A's sessions before it serves", || {
        for i in 1..=EARLY {
            http.create(a, &json!({ "attributes": { "user": format!("user{i}") } }))?;
        }
        let t = Instant::now();
        let pid = cluster.start(B)?;
        let not_ready = wait_ready(&http, b)?;
        // Read at B's first ready answer: what it holds then is what the
        // state transfer copied (nothing was written since).
        let held = http.held(b)?;
        let ready_ms = t.elapsed().as_millis();
        ensure!(not_ready > 0, "expected B to answer 503 on /api/ready before it is ready, saw 200 at once");
        ensure!(
            held.backup == EARLY,
            "expected B to hold A's {EARLY} sessions as copies at its first ready answer, saw {held}"
        );
        let timeouts = http.metric(b, "shoal_session_state_transfer_timeouts_total")?;
        ensure!(timeouts == 0, "expected B's state transfer to complete, saw it time out");
        let transfer_ms = http.metric(b, "shoal_session_state_transfer_ms")?;
        Ok(format!(
            "pid {pid}; ready after {ready_ms} ms, /api/ready answering 503 until then (×{not_ready}: the discovery \
             window of {} ms, then the state transfer: {transfer_ms} ms, no timeout); at its first 200 B already held \
             all {EARLY} of A's sessions",
            2 * FREQUENCY_MS
        ))
    })?;

    let mut first = String::new();
    steps.run("a session created on A is replicated to B", || {
        let before = http.held(b)?;
        first = http.create(
            a,
            &json!({ "attributes": { "user": "ann", "cart": [{ "sku": "tea", "qty": 1 }] } }),
        )?;
        ensure!(first.ends_with(".nodeA"), "expected an id ending in .nodeA, saw {first}");
        let r = http.call(
            "PATCH",
            a,
            &format!("/api/sessions/{first}"),
            Some(&json!({ "set": { "cart": [{ "sku": "tea", "qty": 1 }, { "sku": "cups", "qty": 2 }] } })),
        )?;
        ensure!(r.status == 200, "PATCH on A: expected 200, saw {} {}", r.status, r.body);
        ensure!(!r.incomplete, "PATCH on A: B did not acknowledge the change (X-Replication: incomplete)");
        // Read-only on B: a GET there would take the session over.
        let held = http.held(b)?;
        ensure!(
            held.backup == before.backup + 1 && held.primary == 0,
            "expected B to hold one more copy ({} copies, 0 primary), saw {held}",
            before.backup + 1
        );
        Ok(format!(
            "{} created with a cart, cart changed once, each acknowledged by B; B holds {held} (read-only: GET /api/sessions)",
            short(&first)
        ))
    })?;

    steps.run("node A is killed with SIGKILL", || {
        let a_id = node_id(a)?;
        cluster.kill(A)?;
        let t = Instant::now();
        wait_until("B to drop A from its members", || {
            member_ids(b).filter(|m| !m.contains(&a_id))
        })?;
        let dropped = t.elapsed();
        let held = wait_until("B to become primary of A's sessions", || {
            http.held(b).ok().filter(|h| h.primary == EARLY + 1)
        })?;
        Ok(format!(
            "B dropped A after {} (dropTime {DROP_TIME_MS} ms) and holds {held}",
            secs(dropped)
        ))
    })?;

    let mut rebound = String::new();
    steps.run(
        "B serves A's user: session intact, id rebound to B's route",
        || {
            let r = http.call("GET", b, &format!("/api/sessions/{first}"), None)?;
            ensure!(
                r.status == 200,
                "GET {first} on B: expected 200, saw {} {}",
                r.status,
                r.body
            );
            let base = first.split_once('.').map_or(first.as_str(), |(k, _)| k);
            let want = format!("{base}.nodeB");
            let body_id = r.body["id"].as_str().unwrap_or_default();
            ensure!(
                body_id == want,
                "expected id {want} in the body, saw {body_id:?}"
            );
            ensure!(
                r.session_id.as_deref() == Some(want.as_str()),
                "expected X-Session-Id {want}, saw {:?}",
                r.session_id
            );
            let attrs = &r.body["attributes"];
            let cart = json!([{ "sku": "tea", "qty": 1 }, { "sku": "cups", "qty": 2 }]);
            ensure!(
                attrs["user"] == "ann" && attrs["cart"] == cart,
                "expected user ann and the changed cart, saw {attrs}"
            );
            rebound = want;
            Ok(format!(
                "{} → {} in body and X-Session-Id; user and 2-line cart intact",
                short(&first),
                short(&rebound)
            ))
        },
    )?;

    steps.run("node A restarts and copies B's sessions", || {
        let t = Instant::now();
        let pid = cluster.start(A)?;
        wait_ready(&http, a)?;
        let ready = t.elapsed();
        let on_b = http.held(b)?;
        let on_a = http.held(a)?;
        ensure!(
            on_a.backup == on_b.primary && on_a.primary == 0,
            "expected A to hold B's {} sessions as copies at its first ready answer, saw {on_a}",
            on_b.primary
        );
        let timeouts = http.metric(a, "shoal_session_state_transfer_timeouts_total")?;
        ensure!(
            timeouts == 0,
            "expected A's state transfer to complete, saw it time out"
        );
        Ok(format!(
            "pid {pid}, same config; ready after {} holding all {} of B's sessions",
            secs(ready),
            on_a.backup
        ))
    })?;

    steps.run("the session is invalidated on A and B drops it", || {
        let before = http.held(b)?;
        let r = http.call("DELETE", a, &format!("/api/sessions/{rebound}"), None)?;
        ensure!(
            r.status == 204,
            "DELETE on A: expected 204, saw {} {}",
            r.status,
            r.body
        );
        let held = http.held(b)?;
        ensure!(
            held.count() + 1 == before.count(),
            "expected B to hold one session fewer than {before}, saw {held}"
        );
        let r = http.call("GET", b, &format!("/api/sessions/{rebound}"), None)?;
        ensure!(
            r.status == 404,
            "GET on B after the DELETE: expected 404, saw {} {}",
            r.status,
            r.body
        );
        Ok(format!("DELETE on A 204; GET on B 404; B holds {held}"))
    })?;

    let mut second = String::new();
    let mut created = Instant::now();
    steps.run("a second session created on B reaches A", || {
        let before = http.held(a)?;
        second = http.create(
            b,
            &json!({ "max_inactive_s": SHORT_S, "attributes": { "user": "bob" } }),
        )?;
        created = Instant::now();
        ensure!(
            second.ends_with(".nodeB"),
            "expected an id ending in .nodeB, saw {second}"
        );
        let held = http.held(a)?;
        ensure!(
            held.backup == before.backup + 1,
            "expected A to hold one more copy than {before}, saw {held}"
        );
        Ok(format!(
            "{} (max_inactive_s {SHORT_S}) acknowledged by A; A holds {held}",
            short(&second)
        ))
    })?;

    steps.run("the second session times out on both nodes with no message", || {
        let sent = |api| http.metric(api, "shoal_session_messages_sent_total");
        let (sent_a, sent_b) = (sent(a)?, sent(b)?);
        let (held_a, held_b) = (http.held(a)?, http.held(b)?);
        let expired_b = http.metric(b, "shoal_sessions_expired_total")?;
        // The primary (B) drops it after max_inactive_s, the copy (A)
        // after twice that: watched read-only, a GET would be an access.
        let mut gone_b = None;
        let mut gone_a = None;
        wait_until("both nodes to drop the expired session", || {
            if gone_b.is_none() && http.held(b).ok()?.primary + 1 == held_b.primary {
                gone_b = Some(created.elapsed());
            }
            if gone_a.is_none() && http.held(a).ok()?.backup + 1 == held_a.backup {
                gone_a = Some(created.elapsed());
            }
            gone_a.and(gone_b)
        })?;
        let (after_a, after_b) = (sent(a)?, sent(b)?);
        ensure!(
            after_a == sent_a && after_b == sent_b,
            "expected no session message while it expired, saw A send {} and B {}",
            after_a - sent_a,
            after_b - sent_b
        );
        let expired = http.metric(b, "shoal_sessions_expired_total")? - expired_b;
        ensure!(expired == 1, "expected B to count 1 expired session, saw {expired}");
        for (name, api) in [("A", a), ("B", b)] {
            let r = http.call("GET", api, &format!("/api/sessions/{second}"), None)?;
            ensure!(r.status == 404, "GET on {name} after expiry: expected 404, saw {} {}", r.status, r.body);
        }
        Ok(format!(
            "B (primary) dropped it {} after its creation, A (copy, twice the idle time) after {}; \
             session messages sent meanwhile: A 0, B 0; GET now 404 on both",
            secs(gone_b.unwrap_or_default()),
            secs(gone_a.unwrap_or_default())
        ))
    })?;

    cluster.terminate(A)?;
    cluster.terminate(B)?;
    println!(
        "all {STEPS} steps ok in {}; both nodes stopped",
        secs(started.elapsed())
    );
    Ok(())
}
