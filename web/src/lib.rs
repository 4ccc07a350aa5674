//! Replicated, failover-safe HTTP sessions for an axum (tower) web app,
//! from a shoal node embedded in the app.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use shoal_web::{Session, SessionLayer};
//!
//! async fn visit(session: Session) -> Result<String, shoal_web::Error> {
//!     let mut visits = session.get_mut_or_default::<u64>("visits")?;
//!     *visits += 1;
//!     Ok(format!("visit {}", *visits))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let node = shoal::Node::start(shoal::Config::load("node.toml".as_ref())?).await?;
//! let app = Router::new()
//!     .route("/visit", get(visit))
//!     .layer(SessionLayer::for_node(&node)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! What the layer does, per request (Tomcat's ReplicationValve and
//! JvmRouteBinderValve):
//!
//! * reads the session id from a cookie (`JSESSIONID` by default); a
//!   malformed one is ignored;
//! * hands handlers a [`Session`] with typed get / set / remove (serde) and
//!   invalidate; the session is loaded on first use and created only when a
//!   handler first writes to it;
//! * tracks every change, also one made in place through
//!   [`Session::get_mut`]'s guard, and replicates them at the end of the
//!   request in one change, only if there was one, with the node's send mode
//!   (with `sync-ack` the response waits for the acknowledgements);
//! * never replicates a request whose path fully matches the filter (by
//!   default static resources): its changes are kept on this node and go out
//!   with the session's next replicated request;
//! * after a failover (the cookie names another node's route) takes the
//!   session over, rebinds it to this node's route and sends the new id in
//!   a `Set-Cookie`, so a sticky balancer keeps the user here.

mod layer;
mod session;

pub use layer::{CookieConfig, SameSite, SessionLayer, SessionService, WebMetrics};
pub use session::{AttrMut, Session};

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Tomcat's documented cluster example filter (static resources); Tomcat's
/// own built-in default is no filter.
pub const DEFAULT_FILTER: &str =
    r".*\.gif|.*\.js|.*\.jpeg|.*\.jpg|.*\.png|.*\.htm|.*\.html|.*\.css|.*\.txt";

/// Why a session operation failed. As a response: 503 while the node is
/// not ready, 413 for a limit, 500 otherwise (with a JSON body naming the
/// reason).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node is still copying its sessions (state transfer).
    #[error("this node is not ready: session state transfer in progress")]
    NotReady,
    /// A session limit of the node (`[session] max_*`) was exceeded.
    #[error("session limit: {0}")]
    Limit(String),
    /// The node holds `session.max_sessions` sessions.
    #[error("{0}")]
    Full(String),
    /// A value could not be (de)serialized.
    #[error("session attribute `{name}`: {source}")]
    Json {
        /// The attribute.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A change after the request's changes were replicated (a task that
    /// outlived its request, say): refused, never silently lost.
    #[error("the request is over: its session changes were already replicated")]
    Committed,
    /// The handler's route has no [`SessionLayer`].
    #[error("no SessionLayer on this route")]
    NoLayer,
    /// The node runs no session engine (`[session] enabled = false`).
    #[error("the node runs no session engine ([session] enabled = false)")]
    NoEngine,
}

impl Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::NotReady | Error::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Limit(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Json { .. } | Error::Committed | Error::NoLayer | Error::NoEngine => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn from_engine(e: shoal::session::SessionError) -> Option<Self> {
        use shoal::session::SessionError as E;
        match e {
            E::NotReady => Some(Error::NotReady),
            E::NotFound => None,
            E::Limit(l) => Some(Error::Limit(l.to_string())),
            E::Full(_) => Some(Error::Full(e.to_string())),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut r = (self.status(), body).into_response();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if matches!(self, Error::NotReady) {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}
