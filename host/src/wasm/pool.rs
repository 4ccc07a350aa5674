//! The instances of one loaded plug-in, whatever its world: a *control*
//! instance for membership, timer, probe, state and stats calls (one at a
//! time) and *worker* instances for message calls on several threads at
//! once. Every instance lives in its own store with a memory cap
//! ([`MemoryCap`]) and every call runs under an epoch deadline. A call that
//! traps, times out or hits the cap is counted and logged by kind, and its
//! instance is discarded and made anew on the next call.
//!
//! The world-specific part — how to instantiate and construct a plug-in of
//! that world — is an [`Instantiate`] implementation.

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use wasmtime::Store;

use super::engine::{EPOCH_TICK, GuestCall, engine};
use super::host::{FailureKind, HostState, MemoryCap, NodeCtx, PluginShared, Raised};

/// How a world's plug-in is made in a fresh store.
pub trait Instantiate: Send + Sync + 'static {
    /// What a made instance is (bindings and the plug-in's handle).
    type Instance: Send + 'static;
    /// Instantiates the component in `store` and constructs the plug-in (its
    /// `create`); an error says why, in the plug-in's or the linker's words.
    fn instantiate(&self, store: &mut Store<HostState>) -> Result<Self::Instance, String>;
}

/// One instance and its store.
#[derive(Debug)]
pub struct Slot<I> {
    /// The store (host state, limits, deadline).
    pub store: Store<HostState>,
    /// The world's instance.
    pub instance: I,
}

/// Limits of every instance of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Deadline of a message call.
    pub call_deadline: Duration,
    /// Deadline of instantiation, construction and control calls.
    pub control_deadline: Duration,
    /// Memory cap of one instance, bytes.
    pub memory: usize,
    /// Worker instances.
    pub workers: usize,
}

/// Epoch ticks for a deadline (at least one, plus one for the tick in progress).
pub fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// A slot's place in the pool: empty until made, emptied by a failure.
type Cell<I> = Mutex<Option<Slot<I>>>;

/// The instances of one plug-in. See the module doc.
pub struct InstancePool<F: Instantiate> {
    factory: F,
    shared: Arc<PluginShared>,
    node: Arc<NodeCtx>,
    limits: PoolLimits,
    call_ticks: u64,
    control_ticks: u64,
    /// Message calls go to the control instance too (the plug-in asked for
    /// a single instance).
    single: bool,
    control: Cell<F::Instance>,
    workers: Box<[Cell<F::Instance>]>,
}

impl<F: Instantiate> std::fmt::Debug for InstancePool<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("plugin", &self.shared.name)
            .field("single", &self.single)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

std::thread_local! {
    static WORKER_SLOT: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

impl<F: Instantiate> InstancePool<F> {
    /// A pool with no instance yet.
    pub fn new(
        factory: F,
        shared: Arc<PluginShared>,
        node: Arc<NodeCtx>,
        limits: PoolLimits,
    ) -> Self {
        Self {
            factory,
            shared,
            node,
            call_ticks: ticks(limits.call_deadline),
            control_ticks: ticks(limits.control_deadline),
            limits,
            single: false,
            control: Mutex::new(None),
            workers: (0..limits.workers.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
        }
    }

    /// Serve message calls from the control instance too.
    pub fn set_single(&mut self, single: bool) {
        self.single = single;
    }

    /// The plug-in's shared state.
    pub fn shared(&self) -> &Arc<PluginShared> {
        &self.shared
    }

    /// A new store and instance (instantiated and constructed).
    pub fn make(&self) -> Result<Slot<F::Instance>, String> {
        let mut store = Store::new(
            engine(),
            HostState::new(
                self.shared.clone(),
                self.node.clone(),
                MemoryCap::new(self.limits.memory),
            ),
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().deadline.expired()));
        store.data_mut().deadline.arm(self.control_ticks);
        store.set_epoch_deadline(self.control_ticks);
        let instance = {
            let _running = GuestCall::enter();
            self.factory.instantiate(&mut store)?
        };
        self.shared
            .instantiations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Slot { store, instance })
    }

    /// Installs `slot` as the control instance (the one made at load time).
    pub fn put_control(&mut self, slot: Slot<F::Instance>) {
        *self.control.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(slot);
    }

    /// Runs `call` on the control instance.
    pub fn control<R>(
        &self,
        call: impl FnOnce(&mut Slot<F::Instance>) -> wasmtime::Result<R>,
    ) -> Result<(R, Vec<Raised>), FailureKind> {
        let g = self
            .control
            .lock()
            .unwrap_or_else(|p| discard(p.into_inner()));
        self.run_brief(self.ready(g, true)?, call)
    }

    /// Runs `call` on a worker instance: the calling thread's own slot if it
    /// is free, else the first free one, so a thread never waits for another
    /// while a slot is idle; only when every slot is busy does the caller
    /// wait for its own. A single-instance plug-in uses its control instance.
    pub fn worker<R>(
        &self,
        call: impl FnOnce(&mut Slot<F::Instance>) -> wasmtime::Result<R>,
    ) -> Result<(R, Vec<Raised>), FailureKind> {
        if self.single {
            let g = self
                .control
                .lock()
                .unwrap_or_else(|p| discard(p.into_inner()));
            return self.run(self.ready(g, false)?, call);
        }
        let n = self.workers.len();
        let own = WORKER_SLOT.with(|s| *s) % n;
        for k in 0..n {
            match self.workers[(own + k) % n].try_lock() {
                Ok(g) => return self.run(self.ready(g, false)?, call),
                Err(TryLockError::Poisoned(p)) => {
                    return self.run(self.ready(discard(p.into_inner()), false)?, call);
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let g = self.workers[own]
            .lock()
            .unwrap_or_else(|p| discard(p.into_inner()));
        self.run(self.ready(g, false)?, call)
    }

    /// Counts and logs a failure found outside a call (a broken contract).
    pub fn fail(&self, kind: FailureKind, detail: &str) {
        self.shared.count_failure(kind);
        self.log_failure(kind, detail);
    }

    /// Makes sure a locked slot holds an instance, with the deadline armed:
    /// control calls (rare, carrying state a spurious timeout would lose)
    /// get the control deadline, message calls the call deadline.
    fn ready<'a>(
        &self,
        mut g: MutexGuard<'a, Option<Slot<F::Instance>>>,
        control: bool,
    ) -> Result<MutexGuard<'a, Option<Slot<F::Instance>>>, FailureKind> {
        let deadline = if control {
            self.control_ticks
        } else {
            self.call_ticks
        };
        if g.is_none() {
            match self.make() {
                Ok(s) => *g = Some(s),
                Err(e) => {
                    self.fail(FailureKind::Trap, &e);
                    return Err(FailureKind::Trap);
                }
            }
        }
        if let Some(s) = g.as_mut() {
            s.store.data_mut().deadline.arm(deadline);
            s.store.set_epoch_deadline(deadline);
        }
        Ok(g)
    }

    /// Runs `call` and takes its result: the events it raised, or, on
    /// failure, the kind (counted, logged, the instance discarded).
    fn run<R>(
        &self,
        g: MutexGuard<'_, Option<Slot<F::Instance>>>,
        call: impl FnOnce(&mut Slot<F::Instance>) -> wasmtime::Result<R>,
    ) -> Result<(R, Vec<Raised>), FailureKind> {
        self.run_as(g, call, GuestCall::enter)
    }

    /// [`Self::run`] for a control call (membership, heartbeat, probe,
    /// timer): rare, so the epoch ticker need not linger after it
    /// ([`GuestCall::enter_brief`]); an idle node's heartbeats and timers
    /// then cost a few wake-ups each, not a millisecond ticker.
    fn run_brief<R>(
        &self,
        g: MutexGuard<'_, Option<Slot<F::Instance>>>,
        call: impl FnOnce(&mut Slot<F::Instance>) -> wasmtime::Result<R>,
    ) -> Result<(R, Vec<Raised>), FailureKind> {
        self.run_as(g, call, GuestCall::enter_brief)
    }

    fn run_as<R>(
        &self,
        mut g: MutexGuard<'_, Option<Slot<F::Instance>>>,
        call: impl FnOnce(&mut Slot<F::Instance>) -> wasmtime::Result<R>,
        enter: fn() -> GuestCall,
    ) -> Result<(R, Vec<Raised>), FailureKind> {
        let Some(slot) = g.as_mut() else {
            return Err(FailureKind::Trap);
        };
        let result = {
            let _running = enter();
            call(slot)
        };
        match result {
            Ok(v) => Ok((v, std::mem::take(&mut slot.store.data_mut().outbox))),
            Err(e) => {
                let memory = slot.store.data_mut().limits.take_hit();
                let kind = classify(&e, memory);
                self.fail(kind, &format!("{e:#}"));
                *g = None;
                Err(kind)
            }
        }
    }

    fn log_failure(&self, kind: FailureKind, detail: &str) {
        let n = self.shared.failures_of(kind);
        // the first few, then one in a thousand
        if n <= 3 || n.is_multiple_of(1000) {
            tracing::warn!(
                plugin = %self.shared.name, kind = kind.label(), count = n,
                "plug-in call failed; instance recreated: {}", detail.lines().next().unwrap_or("")
            );
        }
    }
}

/// A slot whose lock was poisoned (a panic during a call): its store may be
/// inconsistent, so the instance is dropped and made anew.
fn discard<I>(mut g: MutexGuard<'_, Option<Slot<I>>>) -> MutexGuard<'_, Option<Slot<I>>> {
    *g = None;
    g
}

/// The kind of a failed call: `memory` when the instance's cap refused a
/// growth during the call, `timeout` for an epoch interruption, else `trap`.
fn classify(e: &wasmtime::Error, memory_cap_hit: bool) -> FailureKind {
    if memory_cap_hit {
        return FailureKind::Memory;
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    }
}
