//! The tower layer: cookie in, session for the handlers, changes
//! replicated and cookie out when the request ends.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, header};
use regex::Regex;
use serde_json::value::RawValue;
use shoal::session::SessionEngine;

use crate::Error;
use crate::session::Session;

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None` (browsers require `Secure` with it).
    None,
}

/// The session cookie. The defaults are Tomcat's: `JSESSIONID`, path `/`
/// (a root context), `HttpOnly`, not `Secure`, no `SameSite`.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Name (the sticky balancer's `stickysession`).
    pub name: String,
    /// `Path`.
    pub path: String,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `Secure`.
    pub secure: bool,
    /// `SameSite`; none: not sent.
    pub same_site: Option<SameSite>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: "JSESSIONID".into(),
            path: "/".into(),
            http_only: true,
            secure: false,
            same_site: None,
        }
    }
}

/// Counters of the layer ([`WebMetrics::render`] writes them in the
/// Prometheus text format).
#[derive(Debug, Default)]
pub struct WebMetrics {
    requests: AtomicU64,
    filtered: AtomicU64,
    created: AtomicU64,
    replicated: AtomicU64,
    incomplete: AtomicU64,
    invalidated: AtomicU64,
    rebound: AtomicU64,
    malformed_cookies: AtomicU64,
    errors: AtomicU64,
    pub(crate) late_changes: AtomicU64,
}

impl WebMetrics {
    /// Appends the counters to `out`.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 10] = [
            (
                "requests_total",
                "Requests through the session layer.",
                &self.requests,
            ),
            (
                "filtered_requests_total",
                "Requests whose path matched the filter (not replicated).",
                &self.filtered,
            ),
            (
                "sessions_created_total",
                "Sessions created by a handler's first write.",
                &self.created,
            ),
            (
                "changes_replicated_total",
                "Requests whose session changes were handed to the engine.",
                &self.replicated,
            ),
            (
                "replication_incomplete_total",
                "Requests whose changes did not reach every member that must hold a copy.",
                &self.incomplete,
            ),
            (
                "invalidated_total",
                "Sessions invalidated by a handler.",
                &self.invalidated,
            ),
            (
                "rebound_total",
                "Sessions of another route rebound to this node (failover), with a new cookie.",
                &self.rebound,
            ),
            (
                "malformed_cookies_total",
                "Session cookies ignored as malformed.",
                &self.malformed_cookies,
            ),
            (
                "errors_total",
                "Requests answered with a session error (not ready, limit, serialization).",
                &self.errors,
            ),
            (
                "late_changes_total",
                "Session changes refused because their request had ended.",
                &self.late_changes,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP shoal_web_{name} {help}\n# TYPE shoal_web_{name} counter\nshoal_web_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

struct Config {
    engine: SessionEngine,
    cookie: CookieConfig,
    filter: Option<Regex>,
    metrics: Arc<WebMetrics>,
}

/// The session layer (see the crate documentation). Add it to a `Router`
/// with `.layer(...)`.
#[derive(Clone)]
pub struct SessionLayer {
    config: Arc<Config>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("cookie", &self.config.cookie)
            .field("filter", &self.config.filter.as_ref().map(Regex::as_str))
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A layer over `engine`, with Tomcat's cookie and the static-resource
    /// filter ([`DEFAULT_FILTER`](crate::DEFAULT_FILTER)).
    pub fn new(engine: SessionEngine) -> Self {
        let filter = Regex::new(&full_match(crate::DEFAULT_FILTER)).ok();
        Self {
            config: Arc::new(Config {
                engine,
                cookie: CookieConfig::default(),
                filter,
                metrics: Arc::new(WebMetrics::default()),
            }),
        }
    }

    /// A layer over the session engine of `node`.
    pub fn for_node(node: &shoal::Node) -> Result<Self, Error> {
        node.sessions()
            .map(|e| Self::new(e.clone()))
            .ok_or(Error::NoEngine)
    }

    /// The session cookie's name and attributes.
    pub fn cookie(self, cookie: CookieConfig) -> Self {
        self.with(|c| c.cookie = cookie)
    }

    /// Requests whose path fully matches `regex` never replicate (their
    /// changes wait for the session's next replicated request); `None`:
    /// every request replicates (Tomcat's built-in default).
    pub fn filter(self, regex: Option<&str>) -> Result<Self, regex::Error> {
        let filter = regex.map(|r| Regex::new(&full_match(r))).transpose()?;
        Ok(self.with(|c| c.filter = filter))
    }

    /// The layer's counters.
    pub fn metrics(&self) -> Arc<WebMetrics> {
        self.config.metrics.clone()
    }

    fn with(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            engine: self.config.engine.clone(),
            cookie: self.config.cookie.clone(),
            filter: self.config.filter.clone(),
            metrics: self.config.metrics.clone(),
        };
        f(&mut config);
        Self {
            config: Arc::new(config),
        }
    }
}

fn full_match(re: &str) -> String {
    format!("^(?:{re})$")
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around a router or handler.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
}

impl<S> tower_service::Service<Request<Body>> for SessionService<S>
where
    S: tower_service::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let m = &config.metrics;
            m.requests.fetch_add(1, Ordering::Relaxed);
            let replicate = !config
                .filter
                .as_ref()
                .is_some_and(|f| f.is_match(req.uri().path()));
            if !replicate {
                m.filtered.fetch_add(1, Ordering::Relaxed);
            }
            let requested = requested_id(&req, &config);
            let session = Session::new(
                config.engine.clone(),
                config.metrics.clone(),
                replicate,
                requested.clone(),
            );
            // JvmRouteBinderValve: a session of another route is taken over
            // and rebound now, whether or not a handler uses it, so the
            // answer carries the new cookie.
            let foreign = requested
                .as_deref()
                .and_then(|id| id.split_once('.'))
                .is_some_and(|(_, route)| route != config.engine.route());
            if foreign {
                // A failure (not ready) reaches the handler that uses it.
                let _ = session.load().await;
            }
            req.extensions_mut().insert(session.clone());
            let response = match inner.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(finish(&config, &session, requested.as_deref(), response).await)
        })
    }
}

/// The first well-formed session id among the request's cookies of the
/// configured name.
fn requested_id(req: &Request<Body>, config: &Config) -> Option<String> {
    let mut malformed = false;
    for value in req.headers().get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else {
            malformed = true;
            continue;
        };
        for c in cookie::Cookie::split_parse(text).flatten() {
            if c.name() != config.cookie.name {
                continue;
            }
            if shoal::session::parse_id(c.value()).is_some() && c.value().len() <= 128 {
                return Some(c.value().to_owned());
            }
            malformed = true;
        }
    }
    if malformed {
        config
            .metrics
            .malformed_cookies
            .fetch_add(1, Ordering::Relaxed);
    }
    None
}

/// ReplicationValve: hands the request's changes to the engine in one
/// change (the response waits for it: with `sync-ack`, for the
/// acknowledgements), then sets or removes the cookie.
async fn finish(
    config: &Config,
    session: &Session,
    requested: Option<&str>,
    mut response: Response,
) -> Response {
    let m = &config.metrics;
    let engine = &config.engine;
    let (changes, invalidated, error) = {
        let mut st = session.lock();
        st.committed = true;
        (
            std::mem::take(&mut st.changes),
            st.invalidated,
            st.error.take(),
        )
    };
    if let Some(e) = error {
        m.errors.fetch_add(1, Ordering::Relaxed);
        return e.into_response();
    }
    let loaded = session.shared.loaded.get().and_then(Option::as_ref);
    let mut cookie: Option<Result<String, ()>> = None;
    let mut replicated = true;
    if invalidated && let Some(snap) = loaded {
        let _ = engine.invalidate(&snap.id).await;
        m.invalidated.fetch_add(1, Ordering::Relaxed);
        cookie = Some(Err(()));
    }
    let existing = loaded.filter(|_| !invalidated);
    if !changes.is_empty() {
        let replicate = session.shared.replicate;
        let ops: Vec<(String, Option<Box<RawValue>>)> = changes.into_iter().collect();
        let written = match existing {
            Some(snap) => match engine.write(&snap.id, ops.clone(), replicate).await {
                // Expired or invalidated elsewhere meanwhile: the writes
                // start a new session rather than vanish.
                Err(shoal::session::SessionError::NotFound) => None,
                other => Some(other),
            },
            None => None,
        };
        let written = match written {
            Some(w) => w,
            None => {
                let sets: Vec<(String, Box<RawValue>)> = ops
                    .into_iter()
                    .filter_map(|(n, v)| v.map(|v| (n, v)))
                    .collect();
                let r = engine.create_written(None, sets, replicate).await;
                if r.is_ok() {
                    m.created.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
        };
        match written {
            Ok((id, sent)) => {
                m.replicated.fetch_add(1, Ordering::Relaxed);
                replicated = sent;
                if requested != Some(id.as_str()) {
                    cookie = Some(Ok(id));
                }
            }
            Err(e) => {
                m.errors.fetch_add(1, Ordering::Relaxed);
                return Error::from_engine(e)
                    .unwrap_or(Error::NotReady)
                    .into_response();
            }
        }
    } else if let Some(snap) = existing
        && requested != Some(snap.id.as_str())
    {
        cookie = Some(Ok(snap.id.clone()));
    }
    if let Some(Ok(_)) = &cookie
        && existing.is_some()
        && requested.is_some()
    {
        m.rebound.fetch_add(1, Ordering::Relaxed);
    }
    if !replicated {
        m.incomplete.fetch_add(1, Ordering::Relaxed);
        response
            .headers_mut()
            .insert("x-replication", HeaderValue::from_static("incomplete"));
    }
    if let Some(c) = cookie {
        let value = set_cookie(&config.cookie, c.as_deref().ok());
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// A `Set-Cookie` value: the session `id`, or (none) the cookie's removal.
fn set_cookie(cfg: &CookieConfig, id: Option<&str>) -> String {
    let mut c = cookie::Cookie::build((cfg.name.clone(), id.unwrap_or("").to_owned()))
        .path(cfg.path.clone())
        .http_only(cfg.http_only)
        .secure(cfg.secure);
    if let Some(s) = cfg.same_site {
        c = c.same_site(match s {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        });
    }
    let mut c = c.build();
    if id.is_none() {
        c.make_removal();
    }
    c.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_has_the_configured_attributes() {
        let cfg = CookieConfig::default();
        let v = set_cookie(&cfg, Some("ABC.n1"));
        assert!(v.starts_with("JSESSIONID=ABC.n1"), "{v}");
        assert!(v.contains("Path=/"), "{v}");
        assert!(v.contains("HttpOnly"), "{v}");
        assert!(!v.contains("Secure"), "{v}");
        assert!(!v.contains("SameSite"), "{v}");
        let cfg = CookieConfig {
            name: "SID".into(),
            path: "/shop".into(),
            http_only: false,
            secure: true,
            same_site: Some(SameSite::Strict),
        };
        let v = set_cookie(&cfg, Some("X.n2"));
        assert!(v.starts_with("SID=X.n2"), "{v}");
        assert!(v.contains("Path=/shop") && v.contains("Secure") && v.contains("SameSite=Strict"));
        assert!(!v.contains("HttpOnly"), "{v}");
        let gone = set_cookie(&cfg, None);
        assert!(gone.contains("Max-Age=0"), "{gone}");
    }

    #[test]
    fn the_default_filter_matches_static_paths_only() {
        let re = Regex::new(&full_match(crate::DEFAULT_FILTER)).expect("filter");
        for p in [
            "/a.css",
            "/img/x.png",
            "/index.html",
            "/app.js",
            "/robots.txt",
        ] {
            assert!(re.is_match(p), "{p}");
        }
        for p in ["/cart", "/cart/add", "/a.css/x", "/jsonp", "/x.json"] {
            assert!(!re.is_match(p), "{p}");
        }
    }
}
