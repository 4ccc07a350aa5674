//! The session API: HTTP/JSON routes on the admin listener (or on
//! `[session] listen`). Exactly these routes:
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/sessions` (body optional: `{"max_inactive_s": n, "attributes": {...}}`) | 201, the session |
//! | `GET /api/sessions/{id}` (an access) | 200, the session; 404 unknown, expired, invalidated |
//! | `PATCH /api/sessions/{id}` `{"set": {...}, "remove": [...]}` | 200, the session after the change |
//! | `DELETE /api/sessions/{id}` | 204; the invalidation reaches every node |
//! | `GET /api/sessions` | `{"count": n, "primary": p, "backup": b, "proxy": x}` |
//!
//! Every answer that carries a session has its current id in the
//! `X-Session-Id` header too (after a failover it is the rebound id).
//! Errors are JSON `{"error": "..."}`: 400 for bad JSON or types, 413 for a
//! body or value over a limit, 404, 503 while the state transfer runs or
//! when the node holds `max_sessions`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::store::LimitError;
use super::{Served, SessionEngine, SessionError};

/// Header carrying a session's current id.
pub const SESSION_ID_HEADER: &str = "x-session-id";
/// Header set to `incomplete` when a change did not reach (with sync-ack:
/// was not acknowledged by) every member that must hold a copy; the change
/// is applied here and is copied again when membership settles.
pub const REPLICATION_HEADER: &str = "x-replication";

/// The session routes, for the admin API or a listener of their own.
pub fn router(engine: SessionEngine, max_body: usize) -> Router {
    Router::new()
        .route("/api/sessions", get(counts).post(create))
        .route(
            "/api/sessions/{id}",
            get(read).patch(change).delete(invalidate),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            crate::api::drain_oversized,
        ))
        .with_state(engine)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    max_inactive_s: Option<u32>,
    #[serde(default)]
    attributes: HashMap<String, Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default)]
    set: HashMap<String, Box<RawValue>>,
    #[serde(default)]
    remove: Vec<String>,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

fn failed(e: SessionError) -> Response {
    let status = match e {
        SessionError::NotReady | SessionError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
        SessionError::NotFound => StatusCode::NOT_FOUND,
        SessionError::Limit(
            LimitError::Name { .. } | LimitError::Twice { .. } | LimitError::NotJson { .. },
        ) => StatusCode::BAD_REQUEST,
        SessionError::Limit(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    error(status, e)
}

fn served(status: StatusCode, s: Served) -> Response {
    let mut r = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        s.json,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&s.id) {
        r.headers_mut().insert(SESSION_ID_HEADER, v);
    }
    if !s.replicated {
        r.headers_mut()
            .insert(REPLICATION_HEADER, HeaderValue::from_static("incomplete"));
    }
    r
}

/// Why a request body was refused (an HTTP 400).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Not JSON, or not the body's shape (an unknown field, a wrong type).
    #[error("invalid JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// `max_inactive_s` is 0 or more than a year.
    #[error("max_inactive_s must be between 1 and 31536000")]
    MaxInactive,
    /// A PATCH names one attribute in `set` and in `remove`.
    #[error("attribute {0:?} is both set and removed")]
    SetAndRemoved(String),
}

/// A POST body: the idle time asked for and the attributes. An empty (or
/// all-whitespace) body is a session with neither.
pub(crate) type CreateRequest = (Option<u32>, Vec<(String, Box<RawValue>)>);

/// A PATCH body: attributes to set (`Some`) or remove (`None`).
pub(crate) type PatchRequest = Vec<(String, Option<Box<RawValue>>)>;

/// Reads a POST body.
pub(crate) fn create_request(body: &[u8]) -> Result<CreateRequest, BodyError> {
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody {
            max_inactive_s: None,
            attributes: HashMap::new(),
        }
    } else {
        serde_json::from_slice(body)?
    };
    if matches!(body.max_inactive_s, Some(n) if n == 0 || n > 365 * 86_400) {
        return Err(BodyError::MaxInactive);
    }
    Ok((body.max_inactive_s, body.attributes.into_iter().collect()))
}

/// Reads a PATCH body.
pub(crate) fn patch_request(body: &[u8]) -> Result<PatchRequest, BodyError> {
    let body: PatchBody = serde_json::from_slice(body)?;
    if let Some(n) = body.remove.iter().find(|n| body.set.contains_key(*n)) {
        return Err(BodyError::SetAndRemoved(n.clone()));
    }
    Ok(body
        .set
        .into_iter()
        .map(|(n, v)| (n, Some(v)))
        .chain(body.remove.into_iter().map(|n| (n, None)))
        .collect())
}

async fn counts(State(e): State<SessionEngine>) -> Response {
    let c = e.counts();
    axum::Json(serde_json::json!({
        "count": c.primary + c.backup,
        "primary": c.primary,
        "backup": c.backup,
        "proxy": c.proxy,
    }))
    .into_response()
}

/// The body, or the JSON error for one that could not be read (over the
/// limit: 413, naming it).
fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Box<Response>> {
    body.map_err(|r| Box::new(error(r.status(), r.body_text())))
}

async fn create(State(e): State<SessionEngine>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let (max_inactive_s, attributes) = match create_request(&body) {
        Ok(b) => b,
        Err(err) => return error(StatusCode::BAD_REQUEST, err),
    };
    match e.create(max_inactive_s, attributes).await {
        Ok(s) => served(StatusCode::CREATED, s),
        Err(err) => failed(err),
    }
}

async fn read(State(e): State<SessionEngine>, Path(id): Path<String>) -> Response {
    match e.access(&id, Vec::new()).await {
        Ok(s) => served(StatusCode::OK, s),
        Err(err) => failed(err),
    }
}

async fn change(
    State(e): State<SessionEngine>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let ops = match patch_request(&body) {
        Ok(ops) => ops,
        Err(err) => return error(StatusCode::BAD_REQUEST, err),
    };
    match e.access(&id, ops).await {
        Ok(s) => served(StatusCode::OK, s),
        Err(err) => failed(err),
    }
}

async fn invalidate(State(e): State<SessionEngine>, Path(id): Path<String>) -> Response {
    match e.invalidate(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => failed(err),
    }
}
