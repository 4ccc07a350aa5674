//! An example web app with replicated sessions: a visit counter and a
//! shopping cart, on an embedded shoal node (see README.md here).
//!
//! ```text
//! webapp --config a.toml --listen 127.0.0.1:9001
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shoal_web::{Session, SessionLayer, WebMetrics};

/// mimalloc, as in `shoal run`: glibc malloc's arena locks were 8 % of this
/// app's CPU under load (docs/benchmarks.md, "Web tier").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest note on a cart line.
const MAX_NOTE: usize = 4096;

#[derive(Clone)]
struct App {
    node: HeaderValue,
    name: Arc<str>,
    metrics: Arc<WebMetrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// One cart line, stored as the session attribute `cart:ITEM`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Line {
    qty: u32,
    note: String,
}

#[derive(Debug, Deserialize)]
struct ItemQuery {
    item: String,
    qty: Option<u32>,
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

fn check_item(item: &str) -> Result<(), String> {
    if item.is_empty()
        || item.len() > 64
        || !item
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "item must be 1-64 of A-Z a-z 0-9 - _, not {:?}",
            item.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

fn cart_json(app: &App, session: &Session) -> Result<serde_json::Value, shoal_web::Error> {
    let mut items = serde_json::Map::new();
    for name in session.names() {
        if let Some(item) = name.strip_prefix("cart:")
            && let Some(line) = session.get::<Line>(&name)?
        {
            items.insert(
                item.to_owned(),
                serde_json::to_value(line).unwrap_or_default(),
            );
        }
    }
    Ok(serde_json::json!({ "items": items, "node": &*app.name }))
}

async fn visit(State(app): State<App>, session: Session) -> Result<Response, shoal_web::Error> {
    let visits = {
        // Changed in place: the guard records the change when it drops.
        let mut visits = session.get_mut_or_default::<u64>("visits")?;
        *visits += 1;
        *visits
    };
    Ok(Json(serde_json::json!({ "visits": visits, "node": &*app.name })).into_response())
}

async fn cart(State(app): State<App>, session: Session) -> Result<Response, shoal_web::Error> {
    Ok(Json(cart_json(&app, &session)?).into_response())
}

async fn add(
    State(app): State<App>,
    session: Session,
    Query(q): Query<ItemQuery>,
    note: String,
) -> Result<Response, shoal_web::Error> {
    if let Err(msg) = check_item(&q.item) {
        return Ok(bad_request(msg));
    }
    let qty = q.qty.unwrap_or(1);
    if !(1..=1000).contains(&qty) {
        return Ok(bad_request(format!("qty must be 1-1000, not {qty}")));
    }
    if note.len() > MAX_NOTE {
        return Ok(bad_request(format!("a note is at most {MAX_NOTE} bytes")));
    }
    {
        let mut line = session.get_mut_or_default::<Line>(&format!("cart:{}", q.item))?;
        line.qty = line.qty.saturating_add(qty);
        if !note.is_empty() {
            line.note = note;
        }
    }
    Ok(Json(cart_json(&app, &session)?).into_response())
}

#[derive(Debug, Deserialize)]
struct SetQuery {
    item: String,
    qty: u32,
}

/// Sets a line's quantity (0 removes it): unlike `add`, repeating it changes
/// nothing, so a client may retry it safely on another node.
async fn set_qty(
    State(app): State<App>,
    session: Session,
    Query(q): Query<SetQuery>,
) -> Result<Response, shoal_web::Error> {
    if let Err(msg) = check_item(&q.item) {
        return Ok(bad_request(msg));
    }
    if q.qty > 1000 {
        return Ok(bad_request(format!("qty must be 0-1000, not {}", q.qty)));
    }
    let name = format!("cart:{}", q.item);
    if q.qty == 0 {
        session.remove(&name)?;
    } else {
        let mut line = session.get_mut_or_default::<Line>(&name)?;
        line.qty = q.qty;
    }
    Ok(Json(cart_json(&app, &session)?).into_response())
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    item: String,
}

async fn remove(
    State(app): State<App>,
    session: Session,
    Query(q): Query<RemoveQuery>,
) -> Result<Response, shoal_web::Error> {
    if let Err(msg) = check_item(&q.item) {
        return Ok(bad_request(msg));
    }
    session.remove(&format!("cart:{}", q.item))?;
    Ok(Json(cart_json(&app, &session)?).into_response())
}

async fn checkout(State(app): State<App>, session: Session) -> Result<Response, shoal_web::Error> {
    let mut cart = cart_json(&app, &session)?;
    cart["checked_out"] = true.into();
    session.invalidate()?;
    Ok(Json(cart).into_response())
}

/// A static resource: the layer's filter keeps it from replicating.
async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css")],
        "body { font-family: sans-serif }\n",
    )
}

async fn ready(State(app): State<App>) -> StatusCode {
    if (app.ready)() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(app): State<App>) -> String {
    let mut out = String::new();
    app.metrics.render(&mut out);
    out
}

/// Every answer names the node that served it.
async fn name_node(State(app): State<App>, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    r.headers_mut().insert("x-node", app.node.clone());
    r
}

struct Args {
    config: PathBuf,
    listen: SocketAddr,
}

fn args() -> Result<Args, String> {
    let mut config = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 9001).into();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = it.next().map(PathBuf::from),
            "--listen" => {
                let v = it.next().ok_or("--listen needs an address")?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "-h" | "--help" => {
                return Err("usage: webapp --config NODE.toml [--listen 127.0.0.1:9001]".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args {
        config: config.ok_or("usage: webapp --config NODE.toml [--listen 127.0.0.1:9001]")?,
        listen,
    })
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let started = start();
    let result = match started {
        Ok((args, cfg, rt)) => rt.block_on(run(args, cfg)),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The arguments, the config, and the runtime its `[runtime]` asks for
/// (default: half the CPUs), which runs the whole app.
type Started = (Args, shoal::Config, tokio::runtime::Runtime);

fn start() -> Result<Started, Box<dyn std::error::Error>> {
    let args = args()?;
    let cfg = shoal::Config::load(&args.config)?;
    let rt = cfg
        .runtime
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    Ok((args, cfg, rt))
}

async fn run(args: Args, cfg: shoal::Config) -> Result<(), Box<dyn std::error::Error>> {
    let name: Arc<str> = cfg.node.name.as_str().into();
    // Bind first, so a busy port fails before the node joins the cluster.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let node = shoal::Node::start(cfg).await?;
    let layer = SessionLayer::for_node(&node)?;
    let engine = node.sessions().cloned();
    let app = App {
        node: HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("?")),
        name: name.clone(),
        metrics: layer.metrics(),
        ready: Arc::new(move || engine.as_ref().is_some_and(|e| e.is_ready())),
    };
    let router = Router::new()
        .route("/visit", get(visit))
        .route("/cart", get(cart))
        .route("/cart/add", post(add))
        .route("/cart/set", post(set_qty))
        .route("/cart/remove", post(remove))
        .route("/cart/checkout", post(checkout))
        .route("/static/app.css", get(stylesheet))
        .layer(layer)
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), name_node))
        .layer(DefaultBodyLimit::max(MAX_NOTE + 1))
        .with_state(app);
    tracing::info!(node = %name, listen = %args.listen, "webapp serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        })
        .await?;
    node.shutdown().await;
    Ok(())
}
