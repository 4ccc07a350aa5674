//! Write shoal interceptor plug-ins in Rust.
//!
//! Implement [`Interceptor`] — only the hooks you need; the others pass
//! everything — and export it with [`export_interceptor!`]. Build with
//! `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to list in a node's
//! config.
//!
//! ```ignore
//! use shoal_guest_sdk::*;
//!
//! struct DropBig { max: u32 }
//!
//! impl Interceptor for DropBig {
//!     fn create(settings: &Settings) -> Result<Self, String> {
//!         Ok(Self { max: settings.get_or("max_bytes", 65536)? })
//!     }
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new(Hooks::ON_SEND)
//!     }
//!     fn on_send(&mut self, msg: &Outgoing) -> Verdict {
//!         if msg.meta.size > self.max { Verdict::Drop("too big".into()) } else { Verdict::Pass }
//!     }
//! }
//!
//! export_interceptor!(DropBig);
//! ```
//!
//! Each instance has its own memory; the node may run several instances of a
//! plug-in for messages on several threads, and sends membership, heartbeat,
//! probe, timer and stats calls to the first one only. Node-wide numbers go in
//! [`host::Counter`]s; a plug-in whose message hooks must share state asks for
//! [`Capabilities::single_instance`]. The host may pass several messages in
//! one call (the batch hooks of the WIT world); the SDK calls your
//! per-message hooks for each, in order.
//!
//! The cheapest call is the one not made: declare which messages you act on
//! ([`Capabilities::only_options`], Tribes' `optionFlag`, and
//! [`Capabilities::only_sizes_up_to`]) and the host passes the others by
//! without calling you; a queueing plug-in can hand the host a
//! [`Capabilities::defer_without_call`] rule for its common case.

use core::cell::RefCell;
use core::str::FromStr;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "interceptor",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_interceptor",
        default_bindings_module: "shoal_guest_sdk::bindings",
    });
}

use bindings::exports::shoal::cluster::hooks as wit;
use bindings::shoal::cluster::types::BatchMeta;
pub use bindings::shoal::cluster::types::{
    BodyAccess, Capabilities, DeferRule, Hooks, LeaveReason, Level, Member, MemberId,
    MessageFilter, MessageMeta, ProbeOptions, Stat, StatKind,
};

impl Capabilities {
    /// Calls `hooks`, passes no bodies.
    pub fn new(hooks: Hooks) -> Self {
        Self {
            hooks,
            bodies: BodyAccess::None,
            single_instance: false,
            filter: MessageFilter {
                options: 0,
                max_size: None,
            },
            defer: None,
            version: String::new(),
            changes_wire: false,
        }
    }

    /// Advertise `version` (e.g. `env!("CARGO_PKG_VERSION")`) in the chain
    /// fingerprint.
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_string();
        self
    }

    /// Declare that this plug-in changes the bytes on the wire: peers warn
    /// when their chain differs from this node's in it.
    pub fn changes_wire(mut self) -> Self {
        self.changes_wire = true;
        self
    }

    /// Lets the host defer sends whose options contain every bit of `bits`
    /// to its queue without calling [`Interceptor::on_send`], while the
    /// queue (message included) holds at most `max_queued_bytes`; past that
    /// bound `on_send` is called and decides.
    pub fn defer_without_call(mut self, bits: i32, max_queued_bytes: u64) -> Self {
        self.defer = Some(DeferRule {
            options: bits,
            max_queued_bytes,
        });
        self
    }

    /// Message hooks see only messages whose options contain every bit of
    /// `bits` (Tribes' `optionFlag`); the host passes the others by without
    /// a call.
    pub fn only_options(mut self, bits: i32) -> Self {
        self.filter.options = bits;
        self
    }

    /// Message hooks see only messages of at most `bytes` bytes; the host
    /// passes larger ones by without a call.
    pub fn only_sizes_up_to(mut self, bytes: u32) -> Self {
        self.filter.max_size = Some(bytes);
        self
    }

    /// Serve every call from one instance, so message hooks share state.
    pub fn single_instance(mut self) -> Self {
        self.single_instance = true;
        self
    }

    /// Also pass bodies, as `bodies` says.
    pub fn with_bodies(mut self, bodies: BodyAccess) -> Self {
        self.bodies = bodies;
        self
    }
}

impl BatchMeta {
    /// Metadata of message `i` (zeros for a column the host left short).
    fn meta(&self, i: usize) -> MessageMeta {
        MessageMeta {
            options: self.options.get(i).copied().unwrap_or(0),
            timestamp: self.timestamps.get(i).copied().unwrap_or(0),
            size: self.sizes.get(i).copied().unwrap_or(0),
        }
    }

    /// Body of message `i`, if passed.
    fn body(&self, i: usize) -> Option<&[u8]> {
        self.bodies.get(i).and_then(|b| b.as_deref())
    }
}

impl MemberId {
    /// The 16 bytes of the unique id.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.hi.to_be_bytes());
        b[8..].copy_from_slice(&self.lo.to_be_bytes());
        b
    }
}

impl Stat {
    /// A counter statistic.
    pub fn counter(name: &str, value: f64, help: &str) -> Self {
        Self {
            name: name.into(),
            value,
            kind: StatKind::Counter,
            help: help.into(),
        }
    }

    /// A gauge statistic.
    pub fn gauge(name: &str, value: f64, help: &str) -> Self {
        Self {
            name: name.into(),
            value,
            kind: StatKind::Gauge,
            help: help.into(),
        }
    }
}

/// What a message hook decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass on unchanged.
    Pass,
    /// Pass on with new option bits and/or a new body (`None`: unchanged).
    Modify {
        /// New options.
        options: Option<i32>,
        /// New body (only honoured if the plug-in reads bodies).
        body: Option<Vec<u8>>,
    },
    /// Stop the message, with a reason.
    Drop(String),
    /// Let the host queue it and continue later (asynchronous dispatch).
    Defer,
}

/// What a membership hook decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberVerdict {
    /// Pass the event up.
    Pass,
    /// Filter it out, with a reason.
    Drop(String),
    /// Decide later; raise the event with [`host::raise_member_added`] or
    /// [`host::raise_member_disappeared`] (or never).
    Hold,
}

/// A message on its way to the network.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Options, timestamp, size.
    pub meta: MessageMeta,
    /// Where it goes.
    pub destinations: &'a [MemberId],
    /// The body, if this plug-in reads bodies of this size.
    pub body: Option<&'a [u8]>,
}

/// A message on its way to the application.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Options, timestamp, size.
    pub meta: MessageMeta,
    /// Who sent it.
    pub sender: &'a Member,
    /// The body, if this plug-in reads bodies of this size.
    pub body: Option<&'a [u8]>,
}

/// The `settings` table of the plug-in's config entry.
#[derive(Debug, Clone, Default)]
pub struct Settings(Vec<(String, String)>);

impl Settings {
    /// Settings from key/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// The raw value of `key`.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed as `T`; `Ok(None)` when absent, an error naming the key
    /// when it does not parse.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| format!("setting `{key}`: cannot parse {v:?}")),
        }
    }

    /// `key` parsed as `T`, or `default` when absent.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// Keys present that are not in `known`: an error naming the first, so
    /// typos are caught at start.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(format!(
                "unknown setting `{k}` (known: {})",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

/// An interceptor plug-in. Implement the hooks you need; the defaults pass
/// everything through and do nothing.
pub trait Interceptor: Sized + 'static {
    /// Builds the plug-in from its settings; an error refuses the node's start.
    fn create(settings: &Settings) -> Result<Self, String>;
    /// Hooks to be called and bodies to be passed (asked once).
    fn capabilities(&self) -> Capabilities;
    /// A message on its way down.
    fn on_send(&mut self, _msg: &Outgoing<'_>) -> Verdict {
        Verdict::Pass
    }
    /// A message on its way up.
    fn on_receive(&mut self, _msg: &Incoming<'_>) -> Verdict {
        Verdict::Pass
    }
    /// Several messages on their way down, in order: one verdict each. The
    /// default calls [`Interceptor::on_send`] for each; override it to do
    /// per-batch work once (e.g. one counter update).
    fn on_send_batch(&mut self, msgs: &[Outgoing<'_>]) -> Vec<Verdict> {
        msgs.iter().map(|m| self.on_send(m)).collect()
    }
    /// Several messages on their way up, in order: one verdict each. The
    /// default calls [`Interceptor::on_receive`] for each.
    fn on_receive_batch(&mut self, msgs: &[Incoming<'_>]) -> Vec<Verdict> {
        msgs.iter().map(|m| self.on_receive(m)).collect()
    }
    /// A member appeared below this plug-in.
    fn member_added(&mut self, _m: &Member) -> MemberVerdict {
        MemberVerdict::Pass
    }
    /// A member disappeared below this plug-in.
    fn member_disappeared(&mut self, _m: &Member, _reason: LeaveReason) -> MemberVerdict {
        MemberVerdict::Pass
    }
    /// A probe started with [`host::probe`] finished.
    fn on_probe_result(&mut self, _probe: u64, _target: &Member, _alive: bool) {}
    /// A timer set with [`host::set_timer`] fired.
    fn on_timer(&mut self, _timer: u64) {}
    /// The channel heartbeat.
    fn heartbeat(&mut self) {}
    /// A connection to `m` broke, or could not be opened (ask for it with
    /// `Hooks::CONNECTION_EVENTS`). Verify before dropping anyone: a live
    /// member may close a connection too.
    fn connection_lost(&mut self, _m: &Member, _cause: &str) {}
    /// A heartbeat from `m` arrived at `at_ms` ([`host::monotonic_ms`]'s
    /// clock; ask for it with `Hooks::MEMBER_HEARTBEATS`).
    fn member_heartbeat(&mut self, _m: &Member, _at_ms: u64) {}
    /// Statistics for `/metrics`.
    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }
    /// Live swap, old side: the state a newer version should start from, or
    /// `None` (the default: the successor starts fresh). Encode it in a way
    /// the next version can read, with a version byte of your own.
    fn export_state(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Live swap, new side: `state` from the predecessor's
    /// [`Interceptor::export_state`] (or `None`), and the members currently in
    /// the channel's view. Called once, before the instance serves anything;
    /// an `Err` refuses the swap and the old version keeps running. The
    /// default ignores both.
    fn take_over(&mut self, _state: Option<&[u8]>, _members: &[Member]) -> Result<(), String> {
        Ok(())
    }
}

/// Host capabilities. None of these blocks; none can fail in a way the
/// plug-in must handle (probes and timers answer through hooks).
pub mod host {
    use super::bindings::shoal::cluster::host as h;
    use super::*;

    /// Wall clock, ms since the Unix epoch.
    pub fn now_ms() -> i64 {
        h::now_ms()
    }

    /// Monotonic clock in ms.
    pub fn monotonic_ms() -> u64 {
        h::monotonic_ms()
    }

    /// Logs a line in the node's log.
    pub fn log(level: Level, message: &str) {
        h::log(level, message)
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        h::log(Level::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        h::log(Level::Warn, message)
    }

    /// Logs at debug level.
    pub fn debug(message: &str) {
        h::log(Level::Debug, message)
    }

    /// A node-wide counter, shared by every instance of this plug-in.
    #[derive(Debug, Clone, Copy)]
    pub struct Counter(u32);

    impl Counter {
        /// Registers (or finds) the counter `name`; an error when the
        /// plug-in already has 256.
        pub fn try_register(name: &str, help: &str) -> Result<Self, String> {
            h::register_counter(name, help).map(Self)
        }

        /// Registers (or finds) the counter `name`. If the host refuses
        /// (256 counters already), logs a warning and returns a counter
        /// that counts nothing.
        pub fn register(name: &str, help: &str) -> Self {
            Self::try_register(name, help).unwrap_or_else(|e| {
                warn(&e);
                Self(u32::MAX)
            })
        }

        /// Adds `delta`; returns the node-wide total.
        // Not `std::ops::Add`: it counts on the host, it does not make a value.
        #[allow(clippy::should_implement_trait)]
        pub fn add(self, delta: u64) -> u64 {
            h::counter_add(self.0, delta)
        }

        /// The node-wide total.
        pub fn get(self) -> u64 {
            h::counter_add(self.0, 0)
        }

        /// The host's handle.
        pub fn handle(self) -> u32 {
            self.0
        }
    }

    /// Members as membership reports them (below every plug-in).
    pub fn members() -> Vec<Member> {
        h::members()
    }

    /// This node.
    pub fn local_member() -> Member {
        h::local_member()
    }

    /// Bytes in the host's deferred-send queue.
    pub fn queued_bytes() -> u64 {
        h::queued_bytes()
    }

    /// Starts a TCP liveness probe; the answer comes to `on_probe_result`
    /// with the returned id. An error means no answer will come.
    pub fn probe(target: &Member, options: ProbeOptions) -> Result<u64, String> {
        h::probe(target, options)
    }

    /// Asks for `on_timer` after `delay_ms` (at most an hour); returns the
    /// timer's id. An error means no timer was set. A delay of 250 ms or
    /// more comes due on the node's grid of periodic work: at most a tenth
    /// early, less than 250 ms late.
    pub fn set_timer(delay_ms: u32) -> Result<u64, String> {
        h::set_timer(delay_ms)
    }

    /// Passes a member-added event up from this plug-in.
    pub fn raise_member_added(m: &Member) {
        h::raise_member_added(m)
    }

    /// Passes a member-disappeared event up from this plug-in.
    pub fn raise_member_disappeared(m: &Member, reason: LeaveReason) {
        h::raise_member_disappeared(m, reason)
    }
}

/// Counting by the host (the WIT `tally` interface), for a plug-in whose
/// message hooks would only count: the host adds every message the
/// plug-in's filter admits to its counters with no call, and calls
/// `on_send` / `on_receive` only with a message that brings the count past
/// a multiple of `every` (Tribes' ThroughputInterceptor reports so). A
/// plug-in that never calls it does not import the interface.
pub mod tally {
    use super::bindings::shoal::cluster::tally as t;
    use super::host::Counter;

    /// Asks the host to count sent messages (one per destination), sent
    /// bytes (times the destinations), received messages and received bytes
    /// on these counters from the next message on; the hooks then see only
    /// the messages at a multiple of `every` (0: none). Call it from
    /// `create`. An error (nothing counted) when a counter was not
    /// registered.
    pub fn count_messages(
        sent_messages: Counter,
        sent_bytes: Counter,
        received_messages: Counter,
        received_bytes: Counter,
        every: u64,
    ) -> Result<(), String> {
        t::count_messages(t::TallySpec {
            sent_messages: sent_messages.handle(),
            sent_bytes: sent_bytes.handle(),
            received_messages: received_messages.handle(),
            received_bytes: received_bytes.handle(),
            every,
        })
    }
}

/// Ciphers run by the host (the WIT `crypto` interface): a plug-in hands a
/// key over once and encrypts or decrypts bodies by its handle. A plug-in
/// that never uses this module does not import the interface.
pub mod crypto {
    use super::bindings::shoal::cluster::crypto as c;
    pub use c::CipherMode;

    /// Why a crypto call failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CryptoError {
        /// The key is not 16, 24 or 32 bytes: its length.
        BadKeyLength(u32),
        /// The input is over the host's bound (16 MiB + 64): its length.
        TooLarge(u32),
        /// Too short for an IV and a ciphertext: its length.
        TooShort(u32),
        /// It does not decrypt: a wrong key, or changed on the way.
        Rejected,
        /// The instance already holds as many keys as the host allows (16).
        TooManyKeys,
    }

    impl From<c::CryptoError> for CryptoError {
        fn from(e: c::CryptoError) -> Self {
            match e {
                c::CryptoError::BadKeyLength(n) => Self::BadKeyLength(n),
                c::CryptoError::TooLarge(n) => Self::TooLarge(n),
                c::CryptoError::TooShort(n) => Self::TooShort(n),
                c::CryptoError::Rejected => Self::Rejected,
                c::CryptoError::TooManyKeys => Self::TooManyKeys,
            }
        }
    }

    impl core::fmt::Display for CryptoError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Self::BadKeyLength(n) => {
                    write!(f, "a key of {n} bytes (AES takes 16, 24 or 32)")
                }
                Self::TooLarge(n) => write!(f, "{n} bytes is more than the host encrypts at once"),
                Self::TooShort(n) => write!(f, "{n} bytes is too short for an IV and a ciphertext"),
                Self::Rejected => {
                    f.write_str("does not decrypt (wrong key, or changed on the way)")
                }
                Self::TooManyKeys => f.write_str("too many keys in one instance"),
            }
        }
    }

    /// A secret key held by the host. Dropping it frees the host's copy.
    #[derive(Debug)]
    pub struct Key(c::CipherKey);

    impl Key {
        /// Hands `key` (16, 24 or 32 bytes) to the host for `mode`.
        pub fn new(mode: CipherMode, key: &[u8]) -> Result<Self, CryptoError> {
            c::CipherKey::create(mode, key)
                .map(Self)
                .map_err(Into::into)
        }

        /// `IV || ciphertext` of `plaintext`, under a fresh random IV.
        pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
            self.0.seal(plaintext).map_err(Into::into)
        }

        /// The plaintext of `IV || ciphertext`.
        pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
            self.0.open(sealed).map_err(Into::into)
        }
    }
}

/// Adapts an [`Interceptor`] to the generated bindings. Not for direct use.
#[doc(hidden)]
pub struct PluginWrapper<T: Interceptor>(RefCell<T>);

fn to_wit(v: Verdict) -> bindings::shoal::cluster::types::Verdict {
    use bindings::shoal::cluster::types::{Modification, Verdict as W};
    match v {
        Verdict::Pass => W::Pass,
        Verdict::Modify { options, body } => W::PassModified(Modification { options, body }),
        Verdict::Drop(r) => W::Drop(r),
        Verdict::Defer => W::Defer,
    }
}

/// The batch answer: empty when every message passes (cheapest for the host
/// to read), else one verdict per message.
fn all_pass_or(v: Vec<Verdict>) -> Vec<bindings::shoal::cluster::types::Verdict> {
    if v.iter().all(|x| *x == Verdict::Pass) {
        Vec::new()
    } else {
        v.into_iter().map(to_wit).collect()
    }
}

fn member_to_wit(v: MemberVerdict) -> bindings::shoal::cluster::types::MemberVerdict {
    use bindings::shoal::cluster::types::MemberVerdict as W;
    match v {
        MemberVerdict::Pass => W::Pass,
        MemberVerdict::Drop(r) => W::Drop(r),
        MemberVerdict::Hold => W::Hold,
    }
}

impl<T: Interceptor> wit::GuestPlugin for PluginWrapper<T> {
    fn create(settings: Vec<(String, String)>) -> Result<wit::Plugin, String> {
        let s = Settings::new(settings);
        T::create(&s).map(|t| wit::Plugin::new(PluginWrapper(RefCell::new(t))))
    }

    fn capabilities(&self) -> Capabilities {
        self.0.borrow().capabilities()
    }

    fn on_send(
        &self,
        meta: MessageMeta,
        destinations: Vec<MemberId>,
        body: Option<Vec<u8>>,
    ) -> bindings::shoal::cluster::types::Verdict {
        let msg = Outgoing {
            meta,
            destinations: &destinations,
            body: body.as_deref(),
        };
        to_wit(self.0.borrow_mut().on_send(&msg))
    }

    fn on_receive(
        &self,
        meta: MessageMeta,
        sender: Member,
        body: Option<Vec<u8>>,
    ) -> bindings::shoal::cluster::types::Verdict {
        let msg = Incoming {
            meta,
            sender: &sender,
            body: body.as_deref(),
        };
        to_wit(self.0.borrow_mut().on_receive(&msg))
    }

    fn on_send_batch(
        &self,
        batch: BatchMeta,
        destinations: Vec<u32>,
        destination_sets: Vec<Vec<MemberId>>,
    ) -> Vec<bindings::shoal::cluster::types::Verdict> {
        let msgs: Vec<Outgoing<'_>> = (0..batch.options.len())
            .map(|i| Outgoing {
                meta: batch.meta(i),
                destinations: destinations
                    .get(i)
                    .and_then(|&d| destination_sets.get(d as usize))
                    .map_or(&[][..], |d| &d[..]),
                body: batch.body(i),
            })
            .collect();
        all_pass_or(self.0.borrow_mut().on_send_batch(&msgs))
    }

    fn on_receive_batch(
        &self,
        batch: BatchMeta,
        sender_of: Vec<u32>,
        senders: Vec<Member>,
    ) -> Vec<bindings::shoal::cluster::types::Verdict> {
        // A message whose sender index is out of range (a host bug) passes.
        let sender = |i: usize| sender_of.get(i).and_then(|&k| senders.get(k as usize));
        let n = batch.options.len();
        let msgs: Vec<Incoming<'_>> = (0..n)
            .filter_map(|i| {
                Some(Incoming {
                    meta: batch.meta(i),
                    sender: sender(i)?,
                    body: batch.body(i),
                })
            })
            .collect();
        let verdicts = self.0.borrow_mut().on_receive_batch(&msgs);
        if msgs.len() == n {
            return all_pass_or(verdicts);
        }
        let mut verdicts = verdicts.into_iter();
        (0..n)
            .map(|i| match sender(i) {
                Some(_) => verdicts
                    .next()
                    .map_or(bindings::shoal::cluster::types::Verdict::Pass, to_wit),
                None => bindings::shoal::cluster::types::Verdict::Pass,
            })
            .collect()
    }

    fn member_added(&self, m: Member) -> bindings::shoal::cluster::types::MemberVerdict {
        member_to_wit(self.0.borrow_mut().member_added(&m))
    }

    fn member_disappeared(
        &self,
        m: Member,
        reason: LeaveReason,
    ) -> bindings::shoal::cluster::types::MemberVerdict {
        member_to_wit(self.0.borrow_mut().member_disappeared(&m, reason))
    }

    fn on_probe_result(&self, probe: u64, target: Member, alive: bool) {
        self.0.borrow_mut().on_probe_result(probe, &target, alive)
    }

    fn on_timer(&self, timer: u64) {
        self.0.borrow_mut().on_timer(timer)
    }

    fn heartbeat(&self) {
        self.0.borrow_mut().heartbeat()
    }

    fn connection_lost(&self, m: Member, cause: String) {
        self.0.borrow_mut().connection_lost(&m, &cause)
    }

    fn member_heartbeat(&self, m: Member, at_ms: u64) {
        self.0.borrow_mut().member_heartbeat(&m, at_ms)
    }

    fn stats(&self) -> Vec<Stat> {
        self.0.borrow().stats()
    }

    fn export_state(&self) -> Option<Vec<u8>> {
        self.0.borrow_mut().export_state()
    }

    fn take_over(&self, state: Option<Vec<u8>>, members: Vec<Member>) -> Result<(), String> {
        self.0.borrow_mut().take_over(state.as_deref(), &members)
    }
}

#[doc(hidden)]
pub struct Root<T: Interceptor>(core::marker::PhantomData<T>);

impl<T: Interceptor> wit::Guest for Root<T> {
    type Plugin = PluginWrapper<T>;
}

/// Exports an [`Interceptor`] type as this component's plug-in.
#[macro_export]
macro_rules! export_interceptor {
    ($t:ty) => {
        type __ShoalRoot = $crate::Root<$t>;
        $crate::bindings::__export_interceptor!(__ShoalRoot with_types_in $crate::bindings);
    };
}
