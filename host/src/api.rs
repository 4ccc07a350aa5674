//! The HTTP admin API (axum):
//!
//! | route | what |
//! |---|---|
//! | `GET /api/members` | members in the channel's view: `id`, `host`, `port`, `domain`, `alive_ms` |
//! | `GET /api/node` | this node: name, id, address, domain, readiness, member count |
//! | `GET /api/ready` | 200 when ready, 503 otherwise |
//! | `GET /api/events` | the last membership events (added / disappeared with reason) |
//! | `GET /api/messages` | the last received messages (sender, options, length, preview) |
//! | `POST /api/send?options=7&to=all` | sends the request body; `to` = `all` or comma-separated member ids |
//! | `GET /api/plugins` | the interceptor chain: source, hash, generation, failures, counters, stats; then the session policy |
//! | `PUT /api/plugins/{name}` | replaces that interceptor with the component in the body (live swap) |
//! | `POST /api/deploy/{name}` | deploys the component in the body to every member (headers `x-shoal-manifest`, `x-shoal-signature`: `shoal plugin deploy`) |
//! | `GET /metrics` | Prometheus text, plug-in and session metrics included |
//!
//! The session routes (`/api/sessions…`, [`crate::session::api`]) are
//! merged in unless `[session] listen` gives them a listener of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chain::{ChainHandle, SwapError};
use crate::channel::Channel;
use crate::member::{Member, MemberId};
use crate::metrics::Metrics;
use crate::wire::SendOptions;

/// Largest body `POST /api/send` accepts.
const MAX_SEND_BODY: usize = 4 * 1024 * 1024;

/// Largest component `PUT /api/plugins/{name}` accepts.
const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

/// Who may use the admin API.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    /// The bearer token every request must carry; none: no check (the API
    /// then listens on loopback only, `[api]` validation).
    pub token: Option<String>,
    /// `/metrics` and `/api/ready` answer without the token.
    pub open_health: bool,
}

/// Compares in time independent of where the two differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(auth): State<Arc<ApiAuth>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if auth.open_health && (path == "/metrics" || path == "/api/ready") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (&auth.token, given) {
        (Some(t), Some(g)) => same_secret(t.as_bytes(), g.as_bytes()),
        _ => false,
    };
    if ok {
        return next.run(req).await;
    }
    static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 3 || n.is_multiple_of(100) {
        tracing::warn!(path = %path, count = n, "admin API request refused: no valid bearer token");
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": "this admin API needs `Authorization: Bearer TOKEN` (api.token_file)" })),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

#[derive(Clone)]
struct AppState {
    name: Arc<str>,
    channel: Channel,
    plugins: Arc<ChainHandle>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    sessions: Option<crate::session::SessionEngine>,
    deployer: Option<crate::deploy::Deployer>,
}

/// One member in `GET /api/members`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct MemberJson {
    /// Unique id, 32 hex digits.
    pub id: String,
    /// Receiver host.
    pub host: String,
    /// Receiver port.
    pub port: u16,
    /// Domain (ISO-8859-1 text).
    pub domain: String,
    /// Uptime the member reported in its latest heartbeat, in ms.
    pub alive_ms: i64,
    /// The member's interceptor chain, top first, as its heartbeats
    /// advertise it (absent for a node that advertises none, e.g. Tomcat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Vec<ChainEntryJson>>,
}

/// One interceptor of a member's advertised chain.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct ChainEntryJson {
    /// Interceptor name.
    pub name: String,
    /// Version it declares (may be empty).
    pub version: String,
    /// First 16 hex digits of its component's SHA-256.
    pub sha256: String,
    /// Whether it changes the bytes on the wire.
    pub changes_wire: bool,
}

impl From<&Member> for MemberJson {
    fn from(m: &Member) -> Self {
        Self {
            id: m.id.unique_hex(),
            host: m.id.host.to_string(),
            port: m.id.port,
            domain: m.domain_str(),
            alive_ms: m.alive_ms,
            chain: crate::wire::fingerprint::decode(&m.payload).ok().map(|c| {
                c.iter()
                    .map(|e| ChainEntryJson {
                        name: e.name.clone(),
                        version: e.version.clone(),
                        sha256: e.sha256_hex(),
                        changes_wire: e.changes_wire,
                    })
                    .collect()
            }),
        }
    }
}

/// The running API server.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds and serves the admin routes, with `extra` routes merged in
    /// (the session API); `sessions` adds its metrics to `/metrics`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        addr: SocketAddr,
        name: String,
        channel: Channel,
        plugins: Arc<ChainHandle>,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        sessions: Option<crate::session::SessionEngine>,
        deployer: Option<crate::deploy::Deployer>,
        extra: Option<Router>,
        auth: ApiAuth,
    ) -> std::io::Result<Self> {
        let state = AppState {
            name: name.into(),
            channel,
            plugins,
            metrics,
            ready,
            sessions,
            deployer,
        };
        let app = Router::new()
            .route("/api/members", get(members))
            .route("/api/node", get(node))
            .route("/api/ready", get(readiness))
            .route("/api/events", get(events))
            .route("/api/messages", get(messages))
            .route(
                "/api/send",
                post(send).layer(axum::middleware::from_fn_with_state(
                    MAX_SEND_BODY,
                    drain_oversized,
                )),
            )
            .route("/api/plugins", get(plugin_list))
            .route(
                "/api/plugins/{name}",
                put(swap_plugin).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
            )
            .route(
                "/api/deploy/{name}",
                post(deploy_plugin).layer(DefaultBodyLimit::max(
                    crate::deploy::MAX_COMPONENT_BYTES as usize,
                )),
            )
            .route("/metrics", get(metrics_text))
            .layer(DefaultBodyLimit::max(MAX_SEND_BODY))
            .with_state(state);
        let app = match extra {
            Some(r) => app.merge(r),
            None => app,
        };
        let app = match auth.token {
            Some(_) => app.layer(axum::middleware::from_fn_with_state(
                Arc::new(auth),
                require_token,
            )),
            None => app,
        };
        Self::serve(addr, app).await
    }

    /// Binds `addr` and serves `app` until stopped.
    pub async fn serve(addr: SocketAddr, app: Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (in-flight requests finish, bounded to one second).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn members(State(s): State<AppState>) -> Json<Vec<MemberJson>> {
    Json(s.channel.members().iter().map(MemberJson::from).collect())
}

async fn node(State(s): State<AppState>) -> Json<serde_json::Value> {
    let id = s.channel.local_id();
    let p = s.channel.local_packet();
    Json(serde_json::json!({
        "name": &*s.name,
        "id": id.unique_hex(),
        "host": id.host.to_string(),
        "port": id.port,
        "domain": p.domain.iter().map(|&b| b as char).collect::<String>(),
        "ready": s.ready.load(Ordering::Relaxed),
        "members": s.channel.members().len(),
    }))
}

async fn readiness(State(s): State<AppState>) -> Response {
    let ready = s.ready.load(Ordering::Relaxed);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn events(State(s): State<AppState>) -> Response {
    Json(s.channel.recent_events()).into_response()
}

async fn messages(State(s): State<AppState>) -> Response {
    Json(s.channel.recent_messages()).into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let mut text = s.metrics.render();
    crate::transport::park_spin::render_metrics(&mut text);
    crate::transport::cpu_pressure::render_metrics(&mut text);
    // Guest stats calls are synchronous (bounded by the call deadline).
    s.channel.chain().render_metrics(&mut text).await;
    if let Some(e) = &s.sessions {
        e.render_metrics(&mut text);
    }
    if let Some(d) = &s.deployer {
        d.render_metrics(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn plugin_list(State(s): State<AppState>) -> Response {
    let chain = s.channel.chain();
    let mut list = Vec::new();
    for ic in chain.interceptors() {
        let sh = ic.shared();
        let stats: serde_json::Map<String, serde_json::Value> = ic
            .guest_stats()
            .await
            .into_iter()
            .map(|(n, v, _, _)| (n, serde_json::json!(v)))
            .collect();
        let counters = counters_json(sh);
        list.push(serde_json::json!({
            "name": ic.name(),
            "world": "interceptor",
            "source": ic.spec().source.to_string(),
            "sha256": ic.hash(),
            "version": ic.version(),
            "changes_wire": ic.changes_wire(),
            "generation": ic.generation(),
            "failure_mode": ic.spec().failure_mode,
            "failures": failures_json(sh),
            "dropped": sh.drops.load(Ordering::Relaxed),
            "deferred": sh.defers.load(Ordering::Relaxed),
            "counters": counters,
            "stats": stats,
        }));
    }
    if let Some(e) = &s.sessions {
        let p = e.policy();
        let sh = p.shared();
        let counters = counters_json(sh);
        list.push(serde_json::json!({
            "name": crate::session::policy::POLICY_NAME,
            "world": "session-policy",
            "source": p.source,
            "sha256": p.hash,
            "version": p.version,
            "proxies": p.proxies,
            "generation": sh.generation,
            "failure_mode": p.failure_mode,
            "failures": failures_json(sh),
            "counters": counters,
        }));
    }
    Json(list).into_response()
}

/// A plug-in's registered counters, by name.
fn counters_json(sh: &crate::plugins::PluginShared) -> serde_json::Value {
    let all = sh.counters.read().unwrap_or_else(|p| p.into_inner());
    all.iter()
        .map(|c| {
            (
                c.name.clone(),
                serde_json::json!(c.value.load(Ordering::Relaxed)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A plug-in's failures by kind.
fn failures_json(sh: &crate::plugins::PluginShared) -> serde_json::Value {
    use crate::plugins::FailureKind;
    serde_json::json!({
        "trap": sh.failures_of(FailureKind::Trap),
        "timeout": sh.failures_of(FailureKind::Timeout),
        "memory": sh.failures_of(FailureKind::Memory),
    })
}

/// `PUT /api/plugins/{name}`: the body is the new component. 200 with the
/// change report; 404 for an unknown name; 422 when the component cannot
/// be loaded or refuses to take over (the old one keeps running).
async fn swap_plugin(State(s): State<AppState>, Path(name): Path<String>, body: Bytes) -> Response {
    let swapped = match &s.sessions {
        Some(e) if name == crate::session::policy::POLICY_NAME => {
            e.swap_policy(body.to_vec()).await
        }
        _ => s.plugins.swap(&name, body.to_vec()).await,
    };
    match swapped {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            let status = match e {
                SwapError::UnknownPlugin { .. } => StatusCode::NOT_FOUND,
                SwapError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            tracing::warn!(plugin = %name, "live swap refused: {e}");
            (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}

/// `POST /api/deploy/{name}`: deploys the component in the body, described
/// by the signed manifest in `x-shoal-manifest` (JSON) and
/// `x-shoal-signature` (hex), to this node and every member. 200 with one
/// result per node (`ok` false for those that refused or failed); 401 for
/// a signature this node does not accept; 422 for a manifest that does not
/// fit the request, the body or this node.
async fn deploy_plugin(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let err = |status: StatusCode, msg: String| {
        (status, Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let Some(d) = &s.deployer else {
        return err(
            StatusCode::NOT_FOUND,
            "this node has no deploy service".into(),
        );
    };
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(manifest), Some(signature)) =
        (header("x-shoal-manifest"), header("x-shoal-signature"))
    else {
        return err(
            StatusCode::BAD_REQUEST,
            "a deploy needs the headers x-shoal-manifest and x-shoal-signature (use `shoal plugin deploy`)".into(),
        );
    };
    match serde_json::from_str::<crate::deploy::sign::Manifest>(&manifest) {
        Ok(m) if m.name == name => {}
        Ok(m) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the manifest names {:?}, the URL {name:?}", m.name),
            );
        }
        Err(_) => {}
    }
    match d.deploy(manifest, signature, body.to_vec()).await {
        Ok(results) => Json(results).into_response(),
        Err(crate::deploy::DeployError::Auth(e)) => {
            tracing::warn!(plugin = %name, "deploy refused: {e}");
            err(StatusCode::UNAUTHORIZED, e.to_string())
        }
        Err(e) => {
            tracing::warn!(plugin = %name, "deploy refused: {e}");
            err(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct SendQuery {
    /// Tribes option string: an integer or names (`byte,use_ack,sync`). Default 2 (USE_ACK).
    options: Option<String>,
    /// `all` (default) or comma-separated member ids (hex).
    to: Option<String>,
}

/// Result of `POST /api/send`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendResult {
    /// Whether every destination was reached.
    pub ok: bool,
    /// How many members the message was sent to.
    pub sent_to: usize,
    /// Each member not reached, with the error.
    pub faulty: Vec<FaultyJson>,
    /// A request-level error (bad options, unknown member, queue full).
    pub error: Option<String>,
}

/// A member a send did not reach.
#[derive(Debug, Serialize, Deserialize)]
pub struct FaultyJson {
    /// Member id (hex).
    pub id: String,
    /// The error.
    pub error: String,
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(SendResult {
            ok: false,
            sent_to: 0,
            faulty: vec![],
            error: Some(msg),
        }),
    )
        .into_response()
}

async fn send(State(s): State<AppState>, Query(q): Query<SendQuery>, body: Bytes) -> Response {
    let options = match q.options.as_deref().unwrap_or("2").parse::<SendOptions>() {
        Ok(o) => o,
        Err(e) => return bad_request(e.to_string()),
    };
    let members = s.channel.member_ids();
    let dests: Vec<MemberId> = match q.to.as_deref().unwrap_or("all") {
        "all" => members,
        list => {
            let mut out = Vec::new();
            for want in list.split(',').map(str::trim) {
                match members
                    .iter()
                    .find(|m| m.unique_hex() == want.to_ascii_lowercase())
                {
                    Some(m) => out.push(*m),
                    None => return bad_request(format!("unknown member id {want:?}")),
                }
            }
            out
        }
    };
    if dests.is_empty() {
        return bad_request("no members to send to".into());
    }
    let n = dests.len();
    match s.channel.send(&dests, &body, options).await {
        Ok(()) => Json(SendResult {
            ok: true,
            sent_to: n,
            faulty: vec![],
            error: None,
        })
        .into_response(),
        Err(crate::channel::ChannelSendError::Failed(e)) => (
            StatusCode::BAD_GATEWAY,
            Json(SendResult {
                ok: false,
                sent_to: n,
                faulty: e
                    .faulty
                    .iter()
                    .map(|f| FaultyJson {
                        id: f.member.unique_hex(),
                        error: f.error.to_string(),
                    })
                    .collect(),
                error: Some(e.to_string()),
            }),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(SendResult {
                ok: false,
                sent_to: 0,
                faulty: vec![],
                error: Some(e.to_string()),
            }),
        )
            .into_response(),
    }
}

/// Most bytes of an over-limit body read (and dropped) before its 413.
const DRAIN_MAX: u64 = 8 << 20;
/// Longest time spent reading them.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers 413 to a body whose `Content-Length` is over `max` without
/// running the route (layer it with `from_fn_with_state(max, …)` beside the
/// route's `DefaultBodyLimit::max(max)`). It reads the body first (up to
/// [`DRAIN_MAX`] bytes for [`DRAIN_TIME`]): a client still sending when the answer is ready
/// would otherwise get a connection reset (the server closing with unread
/// data) and never read the 413 — the lingering close of Apache httpd.
/// A larger or slower body gets the answer and the close.
pub(crate) async fn drain_oversized(
    State(max): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(len) = len.filter(|n| *n > max as u64) else {
        return next.run(req).await;
    };
    if len <= DRAIN_MAX {
        use futures_util::StreamExt;
        let mut body = req.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(_)) = body.next().await {}
        })
        .await;
    }
    let msg = format!("request body of {len} bytes is over the limit of {max} bytes");
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}
