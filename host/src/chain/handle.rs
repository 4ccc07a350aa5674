//! Changing the chain of a running node: one plug-in by name
//! ([`ChainHandle::swap`]) or the whole `[[interceptor]]` list from a changed
//! config ([`ChainHandle::apply_specs`], used on SIGHUP).
//!
//! Order of a change:
//! 1. the new components are compiled, instantiated and `create`d on a
//!    blocking thread, off the hot path; a failure leaves the chain alone;
//! 2. the change goes to the node's control loop (the one task that runs
//!    membership, probe, timer and heartbeat calls), so it is ordered with
//!    every control event. There, each replaced plug-in's `export-state` is
//!    handed to its successor's `take-over` together with the current
//!    members; a refusal leaves the chain alone;
//! 3. the new chain is stored atomically (a new generation per loaded
//!    plug-in). Messages already on their way finish on the chain they
//!    started on; unchanged plug-ins are the same values in both chains and
//!    keep their instances and state;
//! 4. membership events a replaced or removed plug-in held are passed up
//!    again from its place, so none is lost; the old instances are dropped
//!    when the last call using them returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{Chain, ControlEvent};
use crate::member::{Member, MemberEvent};
use crate::plugins::{
    BUILTINS, Interceptor, InterceptorSpec, NodeCtx, PluginLoadError, PluginOptions, PluginSource,
    content_hash,
};

/// Why a change of the chain was refused. The running chain is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No interceptor of that name in the chain.
    #[error("no interceptor named `{name}` in the chain (it has: {known})")]
    UnknownPlugin {
        /// The name asked for.
        name: String,
        /// The names in the chain.
        known: String,
    },
    /// The new component could not be loaded (read, compiled, linked or
    /// created).
    #[error(transparent)]
    Load(#[from] PluginLoadError),
    /// The new version refused (or failed) to take over.
    #[error("interceptor `{name}`: the new version refused to take over: {message}")]
    TakeOver {
        /// Interceptor name.
        name: String,
        /// Its message.
        message: String,
    },
    /// Two interceptors share a name.
    #[error("two interceptors are named `{0}`; names must be unique")]
    DuplicateName(String),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
}

/// What a change did to one plug-in.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Same code, settings and failure mode: kept with its instances.
    Unchanged,
    /// A new version (code or settings) replaced the old one.
    Replaced,
    /// New in the chain.
    Added,
    /// Gone from the chain.
    Removed,
}

/// One plug-in in a [`ChangeReport`].
#[derive(Debug, Clone, Serialize)]
pub struct PluginChange {
    /// Interceptor name.
    pub name: String,
    /// What happened to it.
    pub change: ChangeKind,
    /// SHA-256 of the code before (none if added).
    pub old_sha256: Option<String>,
    /// SHA-256 of the code after (none if removed).
    pub new_sha256: Option<String>,
    /// Generation now serving (none if removed).
    pub generation: Option<u64>,
    /// Whether the predecessor's state was handed over (`export-state`).
    pub state_handed_over: bool,
}

/// The outcome of a change of the chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    /// One entry per plug-in before or after, in the new chain's order
    /// (removed ones last).
    pub plugins: Vec<PluginChange>,
    /// Whether the chain's order changed.
    pub reordered: bool,
    /// Time to compile, instantiate and create the new components, ms.
    pub load_ms: f64,
    /// Time from the request to the new chain serving, ms.
    pub total_ms: f64,
}

impl ChangeReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.reordered
            || self
                .plugins
                .iter()
                .any(|p| p.change != ChangeKind::Unchanged)
    }
}

/// A change on its way to the control loop (see [`ControlEvent::Apply`]).
pub struct ChainChange {
    base: Arc<Chain>,
    chain: Arc<Chain>,
    /// (old, new) pairs with the same name.
    replaced: Vec<(Arc<Interceptor>, Arc<Interceptor>)>,
    added: Vec<Arc<Interceptor>>,
    /// Removed plug-ins and their position in `base`.
    removed: Vec<(usize, Arc<Interceptor>)>,
    reply: oneshot::Sender<Result<Vec<bool>, SwapError>>,
}

impl std::fmt::Debug for ChainChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainChange")
            .field("replaced", &self.replaced.len())
            .field("added", &self.added.len())
            .field("removed", &self.removed.len())
            .finish_non_exhaustive()
    }
}

impl ChainChange {
    /// Answers the requester with a refusal.
    pub(crate) fn refuse(self, why: &str) {
        tracing::error!("chain change refused: {why}");
        let _ = self.reply.send(Err(SwapError::Stopped));
    }

    /// Applies the change; runs on the node's control loop. `current` is the
    /// node's chain cell, `members` the channel's view. Returns the
    /// membership events that reached the top while held events were passed
    /// up again.
    pub(crate) async fn apply(
        self,
        current: &ArcSwap<Chain>,
        members: &[Member],
    ) -> Vec<MemberEvent> {
        if !Arc::ptr_eq(&current.load(), &self.base) {
            // Cannot happen while changes are serialised by the handle.
            let _ = self.reply.send(Err(SwapError::Stopped));
            return Vec::new();
        }
        let mut handed = Vec::with_capacity(self.replaced.len());
        for (old, new) in &self.replaced {
            let state = old.export_state();
            handed.push(state.is_some());
            if let Err(message) = new.take_over(state, members, Some(old)) {
                let _ = self.reply.send(Err(SwapError::TakeOver {
                    name: new.name().to_owned(),
                    message,
                }));
                return Vec::new();
            }
        }
        for new in &self.added {
            if let Err(message) = new.take_over(None, members, None) {
                let _ = self.reply.send(Err(SwapError::TakeOver {
                    name: new.name().to_owned(),
                    message,
                }));
                return Vec::new();
            }
        }
        for (old, new) in &self.replaced {
            new.shared().carry_over(old.shared());
        }
        current.store(self.chain.clone());
        // Held events go up again from where their holder was.
        let mut work = Vec::new();
        for (old, new) in &self.replaced {
            if let Some(i) = self.chain.index_of(new.name()) {
                work.extend(old.held_events().into_iter().map(|e| (i + 1, e)));
            }
        }
        for (pos, old) in &self.removed {
            // From just above the nearest plug-in that was below it and is
            // kept (it already saw the event), else from the bottom.
            let above = self.base.interceptors()[pos + 1..]
                .iter()
                .find_map(|below| self.chain.index_of(below.name()))
                .unwrap_or(self.chain.len());
            work.extend(old.held_events().into_iter().map(|e| (above, e)));
        }
        let up = self.chain.run_up(work).await;
        let _ = self.reply.send(Ok(handed));
        up
    }
}

/// The node's handle on its chain: reads it, and changes it while it runs.
/// Changes are serialised (one at a time).
pub struct ChainHandle {
    current: Arc<ArcSwap<Chain>>,
    node: Arc<NodeCtx>,
    opts: PluginOptions,
    control: mpsc::UnboundedSender<ControlEvent>,
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ChainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainHandle").finish_non_exhaustive()
    }
}

impl ChainHandle {
    /// A handle on the chain cell `current`, loading new plug-ins for
    /// `node` with `opts`; changes are applied by the control loop that
    /// reads `control`.
    pub fn new(
        current: Arc<ArcSwap<Chain>>,
        node: Arc<NodeCtx>,
        opts: PluginOptions,
        control: mpsc::UnboundedSender<ControlEvent>,
    ) -> Self {
        Self {
            current,
            node,
            opts,
            control,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The chain serving now.
    pub fn current(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    /// Replaces the interceptor `name` with the component `bytes` (same
    /// settings and failure mode).
    pub async fn swap(&self, name: &str, bytes: Vec<u8>) -> Result<ChangeReport, SwapError> {
        // The list is built from the chain as it is under the lock, so two
        // swaps at once never undo each other.
        let _one_at_a_time = self.serial.lock().await;
        let chain = self.current();
        let Some(old) = chain.interceptors().iter().find(|i| i.name() == name) else {
            return Err(SwapError::UnknownPlugin {
                name: name.to_owned(),
                known: names(&chain),
            });
        };
        let mut spec = old.spec().clone();
        spec.source = PluginSource::Uploaded(bytes.into());
        let specs = chain
            .interceptors()
            .iter()
            .map(|i| {
                if i.name() == name {
                    spec.clone()
                } else {
                    i.spec().clone()
                }
            })
            .collect();
        self.change(specs, Some(name)).await
    }

    /// Makes the chain `specs`: plug-ins whose name, code, settings and
    /// failure mode are unchanged keep their instances; the others are
    /// loaded, replaced, added or removed; the order follows `specs`.
    pub async fn apply_specs(
        &self,
        specs: Vec<InterceptorSpec>,
    ) -> Result<ChangeReport, SwapError> {
        let _one_at_a_time = self.serial.lock().await;
        self.change(specs, None).await
    }

    /// `force`: a plug-in to load anew even if its code looks unchanged.
    /// The caller holds `serial`.
    async fn change(
        &self,
        specs: Vec<InterceptorSpec>,
        force: Option<&str>,
    ) -> Result<ChangeReport, SwapError> {
        let started = Instant::now();
        let base = self.current();
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(SwapError::DuplicateName(s.name.clone()));
            }
        }
        let mut next: Vec<Arc<Interceptor>> = Vec::with_capacity(specs.len());
        let mut report = Vec::new();
        let mut replaced = Vec::new();
        let mut added = Vec::new();
        let mut load_time = Duration::ZERO;
        for spec in specs {
            let old = base
                .interceptors()
                .iter()
                .find(|i| i.name() == spec.name)
                .cloned();
            if let Some(old) = &old
                && force != Some(spec.name.as_str())
                && same(old, &spec)
            {
                report.push(PluginChange {
                    name: spec.name.clone(),
                    change: ChangeKind::Unchanged,
                    old_sha256: Some(old.hash().to_owned()),
                    new_sha256: Some(old.hash().to_owned()),
                    generation: Some(old.generation()),
                    state_handed_over: false,
                });
                next.push(old.clone());
                continue;
            }
            let t = Instant::now();
            let new = Arc::new(Interceptor::load(spec, &self.opts, self.node.clone()).await?);
            load_time += t.elapsed();
            report.push(PluginChange {
                name: new.name().to_owned(),
                change: if old.is_some() {
                    ChangeKind::Replaced
                } else {
                    ChangeKind::Added
                },
                old_sha256: old.as_ref().map(|o| o.hash().to_owned()),
                new_sha256: Some(new.hash().to_owned()),
                generation: Some(new.generation()),
                state_handed_over: false,
            });
            match old {
                Some(old) => replaced.push((old, new.clone())),
                None => added.push(new.clone()),
            }
            next.push(new);
        }
        let mut removed = Vec::new();
        for (pos, old) in base.interceptors().iter().enumerate() {
            if !next.iter().any(|n| n.name() == old.name()) {
                report.push(PluginChange {
                    name: old.name().to_owned(),
                    change: ChangeKind::Removed,
                    old_sha256: Some(old.hash().to_owned()),
                    new_sha256: None,
                    generation: None,
                    state_handed_over: false,
                });
                removed.push((pos, old.clone()));
            }
        }
        let kept_order: Vec<&str> = base
            .interceptors()
            .iter()
            .map(|i| i.name())
            .filter(|n| next.iter().any(|x| x.name() == *n))
            .collect();
        let new_order: Vec<&str> = next
            .iter()
            .map(|i| i.name())
            .filter(|n| kept_order.contains(n))
            .collect();
        let reordered = kept_order != new_order;
        let mut out = ChangeReport {
            plugins: report,
            reordered,
            load_ms: load_time.as_secs_f64() * 1e3,
            total_ms: 0.0,
        };
        if !out.changed() {
            out.total_ms = started.elapsed().as_secs_f64() * 1e3;
            return Ok(out);
        }
        let (reply, answer) = oneshot::channel();
        let change = ChainChange {
            base,
            chain: Arc::new(Chain::new(next)),
            replaced,
            added,
            removed,
            reply,
        };
        self.control
            .send(ControlEvent::Apply(Box::new(change)))
            .map_err(|_| SwapError::Stopped)?;
        let handed = answer.await.map_err(|_| SwapError::Stopped)??;
        let mut handed = handed.into_iter();
        for p in &mut out.plugins {
            if p.change == ChangeKind::Replaced {
                p.state_handed_over = handed.next().unwrap_or(false);
            }
        }
        out.total_ms = started.elapsed().as_secs_f64() * 1e3;
        for p in &out.plugins {
            if p.change != ChangeKind::Unchanged {
                tracing::info!(
                    plugin = %p.name, change = ?p.change,
                    old = %p.old_sha256.as_deref().map_or("-", |h| &h[..12]),
                    new = %p.new_sha256.as_deref().map_or("-", |h| &h[..12]),
                    generation = ?p.generation, state = p.state_handed_over,
                    "interceptor changed on the running node"
                );
            }
        }
        Ok(out)
    }
}

/// Whether `spec` would load what `old` already runs.
fn same(old: &Interceptor, spec: &InterceptorSpec) -> bool {
    if old.spec().settings != spec.settings || old.spec().failure_mode != spec.failure_mode {
        return false;
    }
    let hash = match &spec.source {
        PluginSource::Builtin(b) => match BUILTINS.iter().find(|(n, _)| n == b) {
            Some((_, bytes)) => content_hash(bytes),
            None => return false,
        },
        PluginSource::File(p) => match std::fs::read(p) {
            Ok(bytes) => content_hash(&bytes),
            Err(_) => return false, // let the load report it
        },
        PluginSource::Uploaded(b) => content_hash(b),
    };
    hash == old.hash()
}

fn names(chain: &Chain) -> String {
    let v: Vec<&str> = chain.interceptors().iter().map(|i| i.name()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
