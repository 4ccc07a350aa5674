//! The handler's view of its session: typed reads and writes over the
//! snapshot the engine gave, with every change recorded for the end of the
//! request.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use shoal::session::{SessionEngine, Snapshot};
use tokio::sync::OnceCell;

use crate::Error;
use crate::layer::WebMetrics;

/// The session of the current request. An extractor (`session: Session`
/// in a handler's arguments); cheap to clone (all clones are the same
/// session).
///
/// Reads see the session as loaded at the start of its first use plus this
/// request's own changes. Writes are recorded and replicated together when
/// the request ends; a value changed in place through [`get_mut`] is
/// compared with what was read when its guard drops, so a change cannot
/// escape replication. A [`get`] returns a copy: changing the copy does not
/// change the session (call [`set`], or use [`get_mut`]).
///
/// [`get`]: Session::get
/// [`set`]: Session::set
/// [`get_mut`]: Session::get_mut
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub engine: SessionEngine,
    pub metrics: Arc<WebMetrics>,
    /// The request's path does not match the filter.
    pub replicate: bool,
    /// The well-formed id the request's cookie named.
    pub requested: Option<String>,
    /// What the engine answered for `requested` (none: unknown or
    /// expired; also none when no id was requested).
    pub loaded: OnceCell<Option<Snapshot>>,
    pub state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Attributes set (`Some`) or removed (`None`) by this request.
    pub changes: BTreeMap<String, Option<Box<RawValue>>>,
    /// The loaded session was invalidated; later writes start a new one.
    pub invalidated: bool,
    /// The request's changes were handed to the engine: later ones are
    /// refused.
    pub committed: bool,
    /// A guard's value that could not be serialized when it dropped.
    pub error: Option<Error>,
}

impl Session {
    pub(crate) fn new(
        engine: SessionEngine,
        metrics: Arc<WebMetrics>,
        replicate: bool,
        requested: Option<String>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine,
                metrics,
                replicate,
                requested,
                loaded: OnceCell::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Loads the requested session once (an access: a copy or a location
    /// entry is taken over, a session of another route rebound here).
    pub(crate) async fn load(&self) -> Result<(), Error> {
        let s = &self.shared;
        s.loaded
            .get_or_try_init(|| async {
                let Some(id) = s.requested.as_deref() else {
                    return Ok(None);
                };
                match s.engine.access_snapshot(id, Vec::new(), s.replicate).await {
                    Ok(snap) => Ok(Some(snap)),
                    Err(e) => match Error::from_engine(e) {
                        Some(err) => Err(err),
                        None => Ok(None),
                    },
                }
            })
            .await
            .map(|_| ())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The loaded session, unless this request invalidated it.
    fn current(&self, st: &State) -> Option<&Snapshot> {
        if st.invalidated {
            return None;
        }
        self.shared.loaded.get().and_then(Option::as_ref)
    }

    fn raw(&self, st: &State, name: &str) -> Option<Box<RawValue>> {
        if let Some(change) = st.changes.get(name) {
            return change.clone();
        }
        let snap = self.current(st)?;
        snap.attributes
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| snap.attributes[i].1.clone())
    }

    /// The session's id, if it has one (none for a session this request
    /// will create, or one it invalidated). After a failover it is the id
    /// rebound to this node.
    pub fn id(&self) -> Option<String> {
        let st = self.lock();
        self.current(&st).map(|s| s.id.clone())
    }

    /// Whether no session existed for this request (a write will create
    /// one).
    pub fn is_new(&self) -> bool {
        let st = self.lock();
        self.current(&st).is_none()
    }

    /// The value of attribute `name`, if set.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        let raw = {
            let st = self.lock();
            self.raw(&st, name)
        };
        raw.map(|r| serde_json::from_str(r.get()).map_err(|e| json_error(name, e)))
            .transpose()
    }

    /// Sets attribute `name` to `value`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), Error> {
        let raw = to_raw(name, value)?;
        self.record(name, Some(raw))
    }

    /// Removes attribute `name` (nothing if it is not set).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        self.record(name, None)
    }

    /// The names of the attributes set, in order.
    pub fn names(&self) -> Vec<String> {
        let st = self.lock();
        let mut names: Vec<String> = self
            .current(&st)
            .map(|s| {
                s.attributes
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .filter(|n| !st.changes.contains_key(n))
                    .collect()
            })
            .unwrap_or_default();
        names.extend(
            st.changes
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| n.clone()),
        );
        names.sort_unstable();
        names
    }

    /// Ends the session on every node when the request ends (its cookie is
    /// removed). A write after this starts a new session.
    pub fn invalidate(&self) -> Result<(), Error> {
        let mut st = self.lock();
        if st.committed {
            return Err(self.late());
        }
        st.invalidated = true;
        st.changes.clear();
        Ok(())
    }

    /// Attribute `name` for changing in place; the change is recorded when
    /// the guard drops (if the value then differs from what was read).
    pub fn get_mut<T>(&self, name: &str) -> Result<Option<AttrMut<T>>, Error>
    where
        T: Serialize + DeserializeOwned,
    {
        let raw = {
            let st = self.lock();
            if st.committed {
                return Err(self.late());
            }
            self.raw(&st, name)
        };
        let Some(raw) = raw else { return Ok(None) };
        let value = serde_json::from_str(raw.get()).map_err(|e| json_error(name, e))?;
        Ok(Some(AttrMut {
            session: self.clone(),
            name: name.to_owned(),
            original: Some(raw),
            value: Some(value),
        }))
    }

    /// [`get_mut`](Self::get_mut), starting from `T::default()` when the
    /// attribute is not set (recorded only if the value is then changed
    /// from nothing, that is, always when it drops).
    pub fn get_mut_or_default<T>(&self, name: &str) -> Result<AttrMut<T>, Error>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        match self.get_mut(name)? {
            Some(g) => Ok(g),
            None => Ok(AttrMut {
                session: self.clone(),
                name: name.to_owned(),
                original: None,
                value: Some(T::default()),
            }),
        }
    }

    fn record(&self, name: &str, value: Option<Box<RawValue>>) -> Result<(), Error> {
        let mut st = self.lock();
        if st.committed {
            return Err(self.late());
        }
        st.changes.insert(name.to_owned(), value);
        Ok(())
    }

    fn late(&self) -> Error {
        self.shared
            .metrics
            .late_changes
            .fetch_add(1, Ordering::Relaxed);
        Error::Committed
    }
}

fn json_error(name: &str, source: serde_json::Error) -> Error {
    Error::Json {
        name: name.chars().take(64).collect(),
        source,
    }
}

fn to_raw<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Box<RawValue>, Error> {
    serde_json::to_string(value)
        .and_then(RawValue::from_string)
        .map_err(|e| json_error(name, e))
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(Error::NoLayer)?;
        session.load().await?;
        Ok(session)
    }
}

/// A session attribute being changed in place ([`Session::get_mut`]).
/// Dereferences to the value; when dropped, the value is serialized and,
/// if it differs from what was read, recorded as a change of the session.
pub struct AttrMut<T: Serialize> {
    session: Session,
    name: String,
    original: Option<Box<RawValue>>,
    value: Option<T>,
}

impl<T: Serialize + std::fmt::Debug> std::fmt::Debug for AttrMut<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttrMut")
            .field("name", &self.name)
            .field("value", &self.value)
            .finish()
    }
}

impl<T: Serialize> Deref for AttrMut<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Some until drop.
        self.value.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<T: Serialize> DerefMut for AttrMut<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<T: Serialize> Drop for AttrMut<T> {
    fn drop(&mut self) {
        let Some(value) = self.value.take() else {
            return;
        };
        let raw = match to_raw(&self.name, &value) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, "session: a changed attribute could not be serialized");
                self.session.lock().error.get_or_insert(e);
                return;
            }
        };
        if self.original.as_ref().is_some_and(|o| o.get() == raw.get()) {
            return;
        }
        if let Err(e) = self.session.record(&self.name, Some(raw)) {
            tracing::error!(
                attribute = %self.name,
                error = %e,
                "session: an attribute changed after its request ended was not replicated"
            );
        }
    }
}
