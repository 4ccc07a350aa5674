//! Write shoal session-placement policies in Rust.
//!
//! The node owns every HTTP session; a policy only decides, for each
//! session, which node is its primary (honoured only when the old primary is
//! gone: a promotion) and which nodes hold a full copy (its backups).
//! Implement [`Policy`] and export it with [`export_policy!`]. Build with
//! `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to name in a node's
//! `[session] policy`.
//!
//! ```no_run
//! use shoal_policy_sdk::*;
//!
//! /// One backup, spread over the other nodes by session key.
//! struct OneBackup;
//!
//! impl Policy for OneBackup {
//!     fn create(settings: &Settings) -> Result<Self, String> {
//!         settings.only(&[])?;
//!         Ok(Self)
//!     }
//!     fn info(&self) -> PolicyInfo {
//!         PolicyInfo::new(env!("CARGO_PKG_VERSION"), true)
//!     }
//!     fn place(&self, cluster: &Cluster, sessions: &Sessions, out: &mut Placements) {
//!         for s in sessions.iter() {
//!             let mut p = out.push(s.primary_or_promote(cluster.local()));
//!             if let Some(&b) = s.backups.first() {
//!                 p.add_backup(b as usize); // keep it if still valid
//!             }
//!             if p.is_empty() {
//!                 if let Some(&c) = cluster.spread(s.key, |i| p.can_add(i)).first() {
//!                     p.add_backup(c);
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! export_policy!(OneBackup);
//! ```
//!
//! `place` must be a pure, deterministic function of its arguments and the
//! settings: every node computes the promotion of a backup itself, and they
//! must agree. Don't read the clock or keep per-call state that changes the
//! answer; spread sessions by [`Session::key`] and order nodes by member id
//! ([`Cluster::by_member_id`], [`Cluster::spread`]), never by the position
//! of a node in the list, which may differ between nodes.
//!
//! # Layout
//!
//! - [`Policy`], [`export_policy!`]: what a policy implements and how it is
//!   exported.
//! - [`Cluster`], [`Sessions`], [`Session`]: what `place` reads (the nodes
//!   that hold sessions, and a batch of up to 4096 sessions).
//! - [`Placements`], [`Placement`]: what `place` writes, one entry per
//!   session; the builder keeps the host's shape rules.
//! - [`host`]: logging and node-wide counters. No host call blocks.
//! - [`Settings`]: the `[session.settings]` table, typed (the interceptor
//!   SDK's type).

use core::cell::RefCell;

mod cluster;
pub mod host;
mod placements;

pub use cluster::{Cluster, Session, Sessions};
pub use placements::{Placement, Placements};
pub use shoal_guest_sdk::Settings;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "session-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_session_policy",
        default_bindings_module: "shoal_policy_sdk::bindings",
    });
}

use bindings::exports::shoal::cluster::placement as wit;
use bindings::shoal::cluster::placement_types::Placements as PlacementColumns;
pub use bindings::shoal::cluster::placement_types::{Node, PolicyInfo, Sessions as SessionColumns};
pub use bindings::shoal::cluster::types::{Level, MemberId};

impl PolicyInfo {
    /// What the host is told at creation: the policy's own `version` (free
    /// text, at most 32 bytes shown; use `env!("CARGO_PKG_VERSION")`) and
    /// whether members without a copy of a session get a proxy entry that
    /// fetches it on first use (`proxies`, BackupManager) or nothing (the
    /// policy copies every session everywhere, DeltaManager).
    pub fn new(version: &str, proxies: bool) -> Self {
        Self {
            version: version.into(),
            proxies,
        }
    }
}

/// A session-placement policy. Only `create`, `info` and `place` are
/// required. The host calls one method at a time; none of them may block.
pub trait Policy: Sized + 'static {
    /// Builds the policy from `[session.settings]`. An error refuses the
    /// node's start (or the swap); name the offending key in it
    /// ([`Settings::get_or`] and [`Settings::only`] do).
    fn create(settings: &Settings) -> Result<Self, String>;

    /// The policy's version and whether it wants proxy entries. Asked once,
    /// after `create`.
    fn info(&self) -> PolicyInfo;

    /// Places each session of `sessions` among `cluster`'s nodes: call
    /// [`Placements::push`] exactly once per session, in order, with its
    /// primary, and add its backups to the returned [`Placement`].
    ///
    /// Called when a session is created, when a node takes one over, when a
    /// member joins or leaves, with up to 4096 sessions at a time. It must be
    /// a pure function of its arguments and the settings (every node
    /// computes promotions itself and they must agree); counters and logs
    /// are fine. A result of the wrong shape (a session missing, a primary
    /// out of range) counts as a failure of the policy, as a panic does.
    fn place(&self, cluster: &Cluster, sessions: &Sessions, out: &mut Placements);

    /// Live swap, old side: state for the successor, or `None` (the default;
    /// most policies keep none, as the host owns the sessions). Must not
    /// change the policy's behaviour.
    fn export_state(&self) -> Option<Vec<u8>> {
        None
    }

    /// Live swap, new side: `state` from the predecessor's
    /// [`Policy::export_state`], or `None`. Called once before the first
    /// `place`; an `Err` refuses the swap and the old version keeps running.
    /// The default accepts anything.
    fn take_over(&mut self, _state: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }
}

/// Adapts a [`Policy`] to the generated bindings. Not for direct use.
#[doc(hidden)]
#[derive(Debug)]
pub struct PolicyWrapper<T: Policy>(RefCell<T>);

impl<T: Policy> wit::GuestPolicy for PolicyWrapper<T> {
    fn create(settings: Vec<(String, String)>) -> Result<wit::Policy, String> {
        let s = Settings::new(settings);
        T::create(&s).map(|t| wit::Policy::new(PolicyWrapper(RefCell::new(t))))
    }

    fn info(&self) -> PolicyInfo {
        self.0.borrow().info()
    }

    fn place(&self, nodes: Vec<Node>, local: u32, sessions: SessionColumns) -> PlacementColumns {
        let cluster = Cluster::new(nodes, local as usize);
        let sessions = Sessions::new(sessions, cluster.len());
        let mut out = Placements::new(cluster.len(), sessions.len());
        self.0.borrow().place(&cluster, &sessions, &mut out);
        out.into_columns()
    }

    fn export_state(&self) -> Option<Vec<u8>> {
        self.0.borrow().export_state()
    }

    fn take_over(&self, state: Option<Vec<u8>>) -> Result<(), String> {
        self.0.borrow_mut().take_over(state.as_deref())
    }
}

#[doc(hidden)]
#[derive(Debug)]
pub struct Root<T: Policy>(core::marker::PhantomData<T>);

impl<T: Policy> wit::Guest for Root<T> {
    type Policy = PolicyWrapper<T>;
}

/// Exports a [`Policy`] type as this component's session policy. Use it once,
/// at the crate root of a `cdylib`.
#[macro_export]
macro_rules! export_policy {
    ($t:ty) => {
        type __ShoalPolicyRoot = $crate::Root<$t>;
        $crate::bindings::__export_session_policy!(__ShoalPolicyRoot with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests;
