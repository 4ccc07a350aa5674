//! Plug-ins: the channel's interceptor chain as WebAssembly components.
//!
//! One wasmtime [`Engine`](wasmtime::Engine) per process ([`engine`]);
//! each configured interceptor is compiled once (cached on disk by content
//! hash and engine version) and pre-linked; its instances live in their own
//! stores with a memory cap, and every call runs under an epoch deadline. A
//! trap, a timeout or an over-limit allocation never takes the node down: the
//! instance is dropped (recreated on the next call), the message follows the
//! interceptor's failure mode, and the event is logged and counted.
//!
//! # Order (an onion)
//!
//! Interceptors are listed top (nearest the application) to bottom (nearest
//! the network). A message being sent visits them in list order; a received
//! message, membership events and events a plug-in raises travel up, in
//! reverse list order. A plug-in's `defer` on send hands the message to the
//! host's bounded queue, and a worker continues with the plug-ins below it.
//!
//! # Instances and threads
//!
//! Message hooks may run on several threads at once. Each interceptor keeps
//! one instance per worker slot (`plugins.instances`, default: one per CPU),
//! picked by the calling thread, so calls on different threads never wait for
//! each other; a call is ~0.3 µs, and any shared lock costs more than that
//! (wasmtime-notes.md: a shared mutexed instance reached 1.4 M calls/s against
//! 4.5 M for one instance per thread). Membership, heartbeat, probe, timer and
//! stats calls go to a separate *control* instance, one at a time, from the
//! node's control loop, so a plug-in's membership state lives in one place.
//! Node-wide numbers belong in host counters (`register-counter`).

mod swap;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceAny};

pub use crate::wasm::engine::{content_hash, default_cache_dir, engine};
pub use crate::wasm::host::{
    FailureKind, HostEvent, NodeCtx, PluginShared, Raised, Reporter, TCP_FAIL_DETECT,
};
use crate::wasm::pool::{self, InstancePool, PoolLimits};
use crate::wasm::{bindings, engine, wasi};
pub use swap::{ChainChange, ChainHandle, ChangeKind, ChangeReport, PluginChange, SwapError};

use crate::member::{Member, MemberId};
use crate::membership::{LeaveReason, MemberEvent};
use crate::wasm::host::{self as host, HostState, id_to_wit, member_to_wit};
use crate::wire::SendOptions;

use bindings::shoal::cluster::types as wit;

/// Directory holding the guest components built with this binary.
pub const GUEST_DIR: &str = env!("SHOAL_GUEST_DIR");

/// Built-in interceptors, embedded in the binary at build time from `guests/`
/// (the names are [`crate::config::BUILTIN_NAMES`], in the same order).
pub const BUILTINS: [(&str, &[u8]); crate::config::BUILTIN_NAMES.len()] = [
    (
        "tcp-failure-detector",
        include_bytes!(concat!(
            env!("SHOAL_GUEST_DIR"),
            "/tcp_failure_detector.wasm"
        )),
    ),
    (
        "message-dispatch",
        include_bytes!(concat!(env!("SHOAL_GUEST_DIR"), "/message_dispatch.wasm")),
    ),
    (
        "throughput",
        include_bytes!(concat!(env!("SHOAL_GUEST_DIR"), "/throughput.wasm")),
    ),
    (
        "domain-filter",
        include_bytes!(concat!(env!("SHOAL_GUEST_DIR"), "/domain_filter.wasm")),
    ),
];

/// The chain `shoal run` uses when the config lists no interceptor (Tomcat's
/// recommended set).
pub const DEFAULT_CHAIN: [&str; 3] = ["tcp-failure-detector", "message-dispatch", "throughput"];

pub use crate::config::FailureMode;

/// Where an interceptor's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// One of [`BUILTINS`].
    Builtin(String),
    /// A `.wasm` component file.
    File(PathBuf),
    /// Component bytes handed to a running node (`PUT /api/plugins/NAME`).
    Uploaded(Arc<[u8]>),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(n) => write!(f, "builtin:{n}"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Uploaded(b) => write!(f, "uploaded ({} bytes)", b.len()),
        }
    }
}

/// One configured interceptor.
#[derive(Debug, Clone)]
pub struct InterceptorSpec {
    /// Name in logs and metrics.
    pub name: String,
    /// Code.
    pub source: PluginSource,
    /// Failure mode.
    pub failure_mode: FailureMode,
    /// Settings passed to `create`.
    pub settings: Vec<(String, String)>,
}

impl InterceptorSpec {
    /// The interceptor chain `cfg` asks for, top first.
    pub fn list_from(cfg: &crate::Config) -> Vec<Self> {
        if cfg.interceptors.is_empty() {
            if !cfg.plugins.default_chain {
                return Vec::new();
            }
            return DEFAULT_CHAIN
                .iter()
                .map(|n| Self {
                    name: (*n).into(),
                    source: PluginSource::Builtin((*n).into()),
                    failure_mode: FailureMode::FailOpen,
                    settings: Vec::new(),
                })
                .collect();
        }
        cfg.interceptors
            .iter()
            .map(|i| Self {
                name: i.name.clone(),
                source: match &i.wasm {
                    None => PluginSource::Builtin(i.name.clone()),
                    Some(p) => {
                        let p = PathBuf::from(p);
                        PluginSource::File(match &cfg.base_dir {
                            Some(base) if p.is_relative() => base.join(p),
                            _ => p,
                        })
                    }
                },
                failure_mode: i.failure_mode,
                settings: i
                    .settings
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            toml::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Limits and placement for every plug-in of a node.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// Deadline of one call.
    pub call_deadline: Duration,
    /// Deadline of instantiation plus `create`.
    pub create_deadline: Duration,
    /// Memory cap of one instance, bytes.
    pub memory_limit: usize,
    /// Worker instances per interceptor.
    pub instances: usize,
    /// Compiled-component cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
}

impl PluginOptions {
    /// Plug-in limits from `[plugins]`.
    pub fn from_config(p: &crate::config::PluginsConfig) -> Self {
        let mut o = Self {
            call_deadline: std::time::Duration::from_millis(p.call_deadline_ms),
            memory_limit: (p.memory_limit_mb as usize) << 20,
            ..Default::default()
        };
        if p.instances > 0 {
            o.instances = p.instances;
        }
        o.cache_dir = match p.cache_dir.as_str() {
            "" => Some(default_cache_dir()),
            "off" => None,
            d => Some(PathBuf::from(d)),
        };
        o
    }
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_millis(20),
            create_deadline: Duration::from_millis(1000),
            memory_limit: 64 << 20,
            instances: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache_dir: Some(default_cache_dir()),
        }
    }
}

/// Why an interceptor could not be loaded. Each names the interceptor and,
/// for files, the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The `.wasm` file cannot be read.
    #[error("interceptor `{name}`: cannot read {}: {cause}", file.display())]
    Read {
        /// Interceptor name.
        name: String,
        /// The file.
        file: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// No built-in of that name.
    #[error("interceptor `{name}`: no built-in interceptor `{builtin}` (built-ins: {}); give a `wasm` path", BUILTINS.map(|b| b.0).join(", "))]
    UnknownBuiltin {
        /// Interceptor name.
        name: String,
        /// The name asked for.
        builtin: String,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("interceptor `{name}`: {source_desc} is not a valid WebAssembly component: {message}")]
    Invalid {
        /// Interceptor name.
        name: String,
        /// File or built-in.
        source_desc: String,
        /// The compiler's message.
        message: String,
    },
    /// The component does not implement the `shoal:cluster/interceptor` world
    /// (or imports something the host does not provide).
    #[error(
        "interceptor `{name}`: {source_desc} does not implement the shoal:cluster@0.1.0 interceptor world: {message}"
    )]
    WrongWorld {
        /// Interceptor name.
        name: String,
        /// File or built-in.
        source_desc: String,
        /// The linker's message.
        message: String,
    },
    /// The plug-in's `create` refused its settings, or trapped.
    #[error("interceptor `{name}` ({source_desc}) refused to start: {message}")]
    Create {
        /// Interceptor name.
        name: String,
        /// File or built-in.
        source_desc: String,
        /// The plug-in's message.
        message: String,
    },
}

/// What a plug-in asked for.
#[derive(Debug, Clone, Copy)]
struct Caps {
    send: bool,
    receive: bool,
    members: bool,
    heartbeat: bool,
    single: bool,
    /// Largest body passed (0: none; u32::MAX: all).
    body_limit: u32,
    /// Message hooks see only messages with all these option bits…
    only_options: i32,
    /// … and bodies of at most this many bytes.
    max_size: u32,
    /// Defer rule: (option bits, queue bound in bytes).
    defer: Option<(i32, u64)>,
    /// It changes the bytes on the wire.
    changes_wire: bool,
}

impl Caps {
    fn from_wit(c: &wit::Capabilities) -> Self {
        Self {
            send: c.hooks.contains(wit::Hooks::ON_SEND),
            receive: c.hooks.contains(wit::Hooks::ON_RECEIVE),
            members: c.hooks.contains(wit::Hooks::MEMBER_EVENTS),
            heartbeat: c.hooks.contains(wit::Hooks::HEARTBEAT),
            single: c.single_instance,
            body_limit: match c.bodies {
                wit::BodyAccess::None => 0,
                wit::BodyAccess::All => u32::MAX,
                wit::BodyAccess::UpTo(n) => n,
            },
            only_options: c.filter.options,
            max_size: c.filter.max_size.unwrap_or(u32::MAX),
            defer: c.defer.map(|d| (d.options, d.max_queued_bytes)),
            changes_wire: c.changes_wire,
        }
    }

    /// Whether message hooks see a message with these options and size.
    fn sees(&self, options: SendOptions, size: usize) -> bool {
        options.0 & self.only_options == self.only_options
            && size as u64 <= u64::from(self.max_size)
    }

    fn body<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
        (self.body_limit > 0 && body.len() as u64 <= u64::from(self.body_limit)).then_some(body)
    }
}

/// An interceptor instance: its bindings and its `plugin` resource.
struct IcInstance {
    bindings: bindings::Interceptor,
    plugin: ResourceAny,
}

/// Makes interceptor instances: instantiate, then `create` with the settings.
struct IcFactory {
    pre: bindings::InterceptorPre<HostState>,
    settings: Vec<(String, String)>,
}

impl pool::Instantiate for IcFactory {
    type Instance = IcInstance;

    fn instantiate(&self, store: &mut Store<HostState>) -> Result<IcInstance, String> {
        let bindings = self
            .pre
            .instantiate(&mut *store)
            .map_err(|e| format!("instantiation failed: {e:#}"))?;
        let plugin = bindings
            .shoal_cluster_hooks()
            .plugin()
            .call_create(&mut *store, &self.settings)
            .map_err(|e| format!("create() trapped: {e:#}"))??;
        Ok(IcInstance { bindings, plugin })
    }
}

/// One loaded interceptor: its compiled code, capabilities and instances.
pub struct Interceptor {
    shared: Arc<PluginShared>,
    spec: InterceptorSpec,
    hash: String,
    caps: Caps,
    node: Arc<NodeCtx>,
    pool: InstancePool<IcFactory>,
    /// Membership events this version answered `hold` and has not resolved
    /// yet (by raising an event about that member, or by a later event about
    /// it): offered again to a version that replaces it.
    held: Mutex<Vec<MemberEvent>>,
    /// Whether this version received its predecessor's state at a swap (then
    /// the predecessor's late probe and timer results reach it too).
    took_state: AtomicBool,
    /// The version it declares.
    version: String,
}

impl fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interceptor")
            .field("name", &self.spec.name)
            .field("source", &self.spec.source)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// Compiles (or loads from the cache), links and test-instantiates
    /// `spec`, on a blocking thread (never on a runtime worker).
    pub async fn load(
        spec: InterceptorSpec,
        opts: &PluginOptions,
        node: Arc<NodeCtx>,
    ) -> Result<Self, PluginLoadError> {
        let opts = opts.clone();
        let name = spec.name.clone();
        match tokio::task::spawn_blocking(move || Self::load_blocking(spec, &opts, node)).await {
            Ok(r) => r,
            Err(e) => Err(PluginLoadError::Create {
                name,
                source_desc: "the loader".into(),
                message: format!("loading panicked: {e}"),
            }),
        }
    }

    /// [`Interceptor::load`] on the calling thread.
    pub fn load_blocking(
        spec: InterceptorSpec,
        opts: &PluginOptions,
        node: Arc<NodeCtx>,
    ) -> Result<Self, PluginLoadError> {
        let name = spec.name.clone();
        let source_desc = spec.source.to_string();
        let file_bytes;
        let bytes: &[u8] = match &spec.source {
            PluginSource::Builtin(b) => BUILTINS
                .iter()
                .find(|(n, _)| n == b)
                .map(|(_, bytes)| *bytes)
                .ok_or_else(|| PluginLoadError::UnknownBuiltin {
                    name: name.clone(),
                    builtin: b.clone(),
                })?,
            PluginSource::File(p) => {
                file_bytes = std::fs::read(p).map_err(|cause| PluginLoadError::Read {
                    name: name.clone(),
                    file: p.clone(),
                    cause,
                })?;
                &file_bytes
            }
            PluginSource::Uploaded(b) => b,
        };
        let engine = engine();
        let hash = content_hash(bytes);
        let component = engine::load_component(engine, bytes, &hash, opts.cache_dir.as_deref())
            .map_err(|e| PluginLoadError::Invalid {
                name: name.clone(),
                source_desc: source_desc.clone(),
                message: format!("{e:#}"),
            })?;
        let wrong_world = |e: wasmtime::Error| PluginLoadError::WrongWorld {
            name: name.clone(),
            source_desc: source_desc.clone(),
            message: format!("{e:#}"),
        };
        let mut linker: Linker<HostState> = Linker::new(engine);
        wasi::add_to_linker(&mut linker).map_err(wrong_world)?;
        bindings::Interceptor::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(wrong_world)?;
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = bindings::InterceptorPre::new(pre).map_err(wrong_world)?;
        let shared = Arc::new(PluginShared::new(name.clone(), node.next_generation()));
        let mut pool = InstancePool::new(
            IcFactory {
                pre,
                settings: spec.settings.clone(),
            },
            shared.clone(),
            node.clone(),
            PoolLimits {
                call_deadline: opts.call_deadline,
                control_deadline: opts.create_deadline,
                memory: opts.memory_limit,
                workers: opts.instances,
            },
        );
        let mut slot = pool.make().map_err(|message| PluginLoadError::Create {
            name: name.clone(),
            source_desc: source_desc.clone(),
            message,
        })?;
        let caps = slot
            .instance
            .bindings
            .shoal_cluster_hooks()
            .plugin()
            .call_capabilities(&mut slot.store, slot.instance.plugin)
            .map_err(|e| PluginLoadError::Create {
                name: name.clone(),
                source_desc: source_desc.clone(),
                message: format!("capabilities() failed: {e:#}"),
            })?;
        let caps_host = Caps::from_wit(&caps);
        pool.set_single(caps_host.single);
        pool.put_control(slot);
        let me = Self {
            shared,
            hash,
            caps: caps_host,
            version: caps.version.chars().take(32).collect(),
            node,
            pool,
            held: Mutex::new(Vec::new()),
            took_state: AtomicBool::new(false),
            spec,
        };
        tracing::info!(
            plugin = %name, source = %source_desc, hash = %&me.hash[..12],
            generation = me.shared.generation,
            caps = ?me.caps, failure_mode = ?me.spec.failure_mode, "interceptor loaded"
        );
        Ok(me)
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Shared state (counters, failure counts).
    pub fn shared(&self) -> &Arc<PluginShared> {
        &self.shared
    }

    /// The spec it was loaded from.
    pub fn spec(&self) -> &InterceptorSpec {
        &self.spec
    }

    /// SHA-256 of the component.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The version the plug-in declares (may be empty).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the plug-in declares that it changes the bytes on the wire.
    pub fn changes_wire(&self) -> bool {
        self.caps.changes_wire
    }

    /// This plug-in's entry in the chain fingerprint.
    pub fn fingerprint(&self) -> crate::wire::fingerprint::ChainEntry {
        let mut prefix = [0u8; crate::wire::fingerprint::HASH_PREFIX];
        if let Ok(h) = hex::decode(&self.hash[..2 * prefix.len()]) {
            prefix.copy_from_slice(&h);
        }
        crate::wire::fingerprint::ChainEntry {
            name: self.spec.name.clone(),
            version: self.version.clone(),
            sha256_prefix: prefix,
            changes_wire: self.caps.changes_wire,
        }
    }

    /// Which load of this name this is (see [`PluginShared::generation`]).
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// Live swap, old side: the plug-in's state for its successor, from the
    /// control instance (`None` if it keeps none, or if the call failed).
    pub(crate) fn export_state(&self) -> Option<Vec<u8>> {
        match self.pool.control(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_export_state(&mut s.store, s.instance.plugin)
        }) {
            Ok((state, _)) => state,
            Err(kind) => {
                tracing::warn!(
                    plugin = %self.spec.name, kind = kind.label(),
                    "export-state failed; the new version starts without state"
                );
                None
            }
        }
    }

    /// Live swap, new side: hands `state` and the current members to the
    /// control instance. Raised events are ignored (a plug-in has nothing to
    /// raise about members it is told are there).
    pub(crate) fn take_over(
        &self,
        state: Option<Vec<u8>>,
        members: &[Member],
    ) -> Result<(), String> {
        let has_state = state.is_some();
        let members: Vec<wit::Member> = members.iter().map(member_to_wit).collect();
        let r = self.pool.control(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_take_over(&mut s.store, s.instance.plugin, state.as_deref(), &members)
        });
        match r {
            Ok((Ok(()), _)) => {
                self.took_state.store(has_state, Ordering::Relaxed);
                Ok(())
            }
            Ok((Err(msg), _)) => Err(msg),
            Err(kind) => Err(format!("take-over failed ({})", kind.label())),
        }
    }

    /// Records the latest event this plug-in saw about a member: kept if it
    /// answered `hold`, else any earlier held event about it is resolved.
    fn note_event(&self, ev: &MemberEvent, held: bool) {
        let id = ev.member().id;
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        h.retain(|e| e.member().id != id);
        if held {
            h.push(ev.clone());
        }
    }

    /// Events this plug-in raised resolve what it held about those members.
    fn note_raised(&self, raised: &[Raised]) {
        if raised.is_empty() {
            return;
        }
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for r in raised {
            let id = match r {
                Raised::Added(m) | Raised::Disappeared(m, _) => m.id,
            };
            h.retain(|e| e.member().id != id);
        }
    }

    /// The membership events held and not resolved, oldest first.
    pub fn held_events(&self) -> Vec<MemberEvent> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Guest statistics from the control instance: (name, value, is counter, help).
    pub async fn guest_stats(&self) -> Vec<(String, f64, bool, String)> {
        let r = self.pool.control(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_stats(&mut s.store, s.instance.plugin)
        });
        match r {
            Ok((stats, _)) => stats
                .into_iter()
                .map(|st| {
                    (
                        st.name,
                        st.value,
                        matches!(st.kind, wit::StatKind::Counter),
                        st.help,
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether the plug-in's defer rule covers a message with these options
    /// and size, given `pending` bytes about to join the queue ahead of it.
    fn defers_at_once(&self, options: SendOptions, size: usize, pending: u64) -> bool {
        let Some((bits, max)) = self.caps.defer else {
            return false;
        };
        let queued = self
            .node
            .metrics
            .async_queue_bytes
            .load(Ordering::Relaxed)
            .max(0) as u64;
        options.0 & bits == bits && queued + pending + size as u64 <= max
    }

    /// One message down: the flat call, cheaper than a one-element list.
    fn on_send_one(
        &self,
        meta: wit::MessageMeta,
        dests: &[wit::MemberId],
        body: Option<&[u8]>,
    ) -> Result<wit::Verdict, FailureKind> {
        self.pool
            .worker(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_send(&mut s.store, s.instance.plugin, meta, dests, body)
            })
            .map(|(v, _)| v)
    }

    fn on_send_many(
        &self,
        batch: &wit::BatchMeta,
        set_of: &[u32],
        sets: &[Vec<wit::MemberId>],
    ) -> Result<Vec<wit::Verdict>, FailureKind> {
        let (v, _) = self.pool.worker(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_on_send_batch(&mut s.store, s.instance.plugin, batch, set_of, sets)
        })?;
        self.check_len(v, batch.options.len())
    }

    /// One message up: the flat call.
    fn on_receive_one(
        &self,
        meta: wit::MessageMeta,
        sender: &wit::Member,
        body: Option<&[u8]>,
    ) -> Result<wit::Verdict, FailureKind> {
        self.pool
            .worker(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_receive(&mut s.store, s.instance.plugin, meta, sender, body)
            })
            .map(|(v, _)| v)
    }

    fn on_receive_many(
        &self,
        batch: &wit::BatchMeta,
        sender_of: &[u32],
        senders: &[wit::Member],
    ) -> Result<Vec<wit::Verdict>, FailureKind> {
        let (v, _) = self.pool.worker(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_on_receive_batch(&mut s.store, s.instance.plugin, batch, sender_of, senders)
        })?;
        self.check_len(v, batch.options.len())
    }

    /// One verdict per message, or none (all pass); else the plug-in broke
    /// the contract.
    fn check_len(&self, v: Vec<wit::Verdict>, n: usize) -> Result<Vec<wit::Verdict>, FailureKind> {
        if v.len() == n {
            return Ok(v);
        }
        if v.is_empty() {
            // The batch hooks' shorthand: every message passes unchanged
            // (`apply` then has nothing to do).
            return Ok(v);
        }
        self.pool.fail(
            FailureKind::Trap,
            &format!("returned {} verdicts for {n} messages", v.len()),
        );
        Err(FailureKind::Trap)
    }

    fn member_event(
        &self,
        ev: &MemberEvent,
    ) -> Result<(wit::MemberVerdict, Vec<Raised>), FailureKind> {
        self.pool.control(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            match ev {
                MemberEvent::Added(m) => {
                    hooks.call_member_added(&mut s.store, s.instance.plugin, &member_to_wit(m))
                }
                MemberEvent::Disappeared(m, reason) => {
                    let r = match reason {
                        LeaveReason::Expired => wit::LeaveReason::Expired,
                        LeaveReason::Shutdown => wit::LeaveReason::Shutdown,
                    };
                    hooks.call_member_disappeared(
                        &mut s.store,
                        s.instance.plugin,
                        &member_to_wit(m),
                        r,
                    )
                }
            }
        })
    }

    fn on_probe_result(
        &self,
        id: u64,
        target: &Member,
        alive: bool,
    ) -> Result<Vec<Raised>, FailureKind> {
        let t = member_to_wit(target);
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_probe_result(&mut s.store, s.instance.plugin, id, &t, alive)
            })
            .map(|((), raised)| raised)
    }

    fn on_timer(&self, id: u64) -> Result<Vec<Raised>, FailureKind> {
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_timer(&mut s.store, s.instance.plugin, id)
            })
            .map(|((), raised)| raised)
    }

    fn heartbeat(&self) -> Result<Vec<Raised>, FailureKind> {
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_heartbeat(&mut s.store, s.instance.plugin)
            })
            .map(|((), raised)| raised)
    }
}

/// Work for the node's control loop, which runs every membership, heartbeat,
/// probe-result and timer call on the plug-ins' control instances, and every
/// change of the chain, one at a time, in order.
#[derive(Debug)]
pub enum ControlEvent {
    /// A membership event from below the chain.
    Member(MemberEvent),
    /// A probe or timer a plug-in started has reported back.
    Plugin(HostEvent),
    /// The channel heartbeat.
    Heartbeat,
    /// A change of the chain on the running node (live swap).
    Apply(Box<ChainChange>),
}

/// A message on its way down the chain.
#[derive(Debug, Clone)]
pub struct OutMsg {
    /// Option bits.
    pub options: SendOptions,
    /// Sender's wall clock.
    pub timestamp: i64,
    /// Body.
    pub body: Bytes,
    /// Destinations.
    pub dests: Arc<[MemberId]>,
}

/// A message on its way up the chain.
#[derive(Debug, Clone)]
pub struct InMsg {
    /// Option bits.
    pub options: SendOptions,
    /// Sender's wall clock.
    pub timestamp: i64,
    /// Who sent it.
    pub sender: Member,
    /// Message id.
    pub unique_id: Bytes,
    /// Body.
    pub body: Bytes,
}

/// Where a message stands after passing (part of) the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// It passed every interceptor.
    Continue,
    /// An interceptor dropped it.
    Dropped {
        /// Which.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// An interceptor deferred it; continue at `resume` (for send: the index
    /// of the next interceptor down; for receive: the number of interceptors
    /// still to pass above, counting down).
    Deferred {
        /// Where to resume.
        resume: usize,
    },
}

/// The ordered interceptors of a node. Replaced as a whole (never edited in
/// place), so a chain can be swapped atomically while messages flow.
#[derive(Debug, Default)]
pub struct Chain {
    interceptors: Vec<Arc<Interceptor>>,
}

impl Chain {
    /// A chain of already loaded interceptors, top first.
    pub fn new(interceptors: Vec<Arc<Interceptor>>) -> Self {
        Self { interceptors }
    }

    /// Loads every spec, top first.
    pub async fn load(
        specs: Vec<InterceptorSpec>,
        opts: &PluginOptions,
        node: Arc<NodeCtx>,
    ) -> Result<Self, PluginLoadError> {
        let mut v = Vec::new();
        for s in specs {
            v.push(Arc::new(Interceptor::load(s, opts, node.clone()).await?));
        }
        Ok(Self::new(v))
    }

    /// Whether there is no interceptor.
    pub fn is_empty(&self) -> bool {
        self.interceptors.is_empty()
    }

    /// Number of interceptors.
    pub fn len(&self) -> usize {
        self.interceptors.len()
    }

    /// The interceptors, top first.
    pub fn interceptors(&self) -> &[Arc<Interceptor>] {
        &self.interceptors
    }

    /// The chain's fingerprint, top first (advertised in the member packet).
    pub fn fingerprint(&self) -> Vec<crate::wire::fingerprint::ChainEntry> {
        self.interceptors.iter().map(|i| i.fingerprint()).collect()
    }

    fn failed(&self, ic: &Interceptor, kind: FailureKind) -> Option<Flow> {
        match ic.spec.failure_mode {
            FailureMode::FailOpen => None,
            FailureMode::FailClosed => Some(Flow::Dropped {
                plugin: ic.spec.name.clone(),
                reason: format!("interceptor failed ({}) and is fail-closed", kind.label()),
            }),
        }
    }

    /// Passes `msg` down from interceptor `start`.
    pub async fn send_from(&self, start: usize, msg: &mut OutMsg) -> Flow {
        let mut flows = [Flow::Continue];
        self.send_batch(start, std::slice::from_mut(msg), &mut flows)
            .await;
        let [f] = flows;
        f
    }

    /// Passes `msg` up through the `above` interceptors nearest the network
    /// … up to the top (`above` = [`Chain::len`] for a fresh message).
    pub async fn receive_from(&self, above: usize, msg: &mut InMsg) -> Flow {
        let mut flows = [Flow::Continue];
        self.receive_batch(above, std::slice::from_mut(msg), &mut flows)
            .await;
        let [f] = flows;
        f
    }

    /// Applies one plug-in's verdict (or failure) to one message.
    fn apply_one<M: BodyOwner>(
        &self,
        ic: &Interceptor,
        result: Result<wit::Verdict, FailureKind>,
        msg: &mut M,
        flow: &mut Flow,
        deferred: &Flow,
    ) {
        match result {
            Err(kind) => {
                if let Some(f) = self.failed(ic, kind) {
                    *flow = f;
                }
            }
            Ok(wit::Verdict::Pass) => {}
            Ok(wit::Verdict::PassModified(m)) => {
                if let Some(o) = m.options {
                    msg.set_options(SendOptions(o));
                }
                if let (Some(b), true) = (m.body, ic.caps.body_limit > 0) {
                    msg.set_body(Bytes::from(b));
                }
            }
            Ok(wit::Verdict::Drop(reason)) => {
                ic.shared.drops.fetch_add(1, Ordering::Relaxed);
                *flow = Flow::Dropped {
                    plugin: ic.spec.name.clone(),
                    reason,
                };
            }
            Ok(wit::Verdict::Defer) => {
                ic.shared.defers.fetch_add(1, Ordering::Relaxed);
                *flow = deferred.clone();
            }
        }
    }

    /// Applies one plug-in's verdicts (or failure) to the messages `live`.
    fn apply<M: BodyOwner>(
        &self,
        ic: &Interceptor,
        result: Result<Vec<wit::Verdict>, FailureKind>,
        live: &[usize],
        msgs: &mut [M],
        flows: &mut [Flow],
        deferred: &Flow,
    ) {
        match result {
            Ok(verdicts) => {
                for (&j, v) in live.iter().zip(verdicts) {
                    self.apply_one(ic, Ok(v), &mut msgs[j], &mut flows[j], deferred);
                }
            }
            Err(kind) => {
                if let Some(f) = self.failed(ic, kind) {
                    for &j in live {
                        flows[j] = f.clone();
                    }
                }
            }
        }
    }

    /// Passes a batch down from interceptor `start`. `flows[j]` must start as
    /// [`Flow::Continue`]; a message stops at the first drop or defer. A
    /// plug-in is called once per batch, with the messages its filter admits;
    /// a batch of one takes the flat per-message hook.
    pub async fn send_batch(&self, start: usize, msgs: &mut [OutMsg], flows: &mut [Flow]) {
        if let ([msg], [flow]) = (&mut *msgs, &mut *flows) {
            self.send_one(start, msg, flow);
            return;
        }
        // Destination sets, shared by messages with the same destinations.
        let mut sets: Vec<Vec<wit::MemberId>> = Vec::new();
        let mut set_of: Vec<u32> = Vec::new();
        let mut live: Vec<usize> = Vec::with_capacity(msgs.len());
        for (i, ic) in self.interceptors.iter().enumerate().skip(start) {
            if !ic.caps.send {
                continue;
            }
            live.clear();
            let mut any = false;
            let mut pending = 0u64;
            let deferred = Flow::Deferred { resume: i + 1 };
            for (j, m) in msgs.iter().enumerate() {
                if flows[j] == Flow::Continue {
                    any = true;
                    if !ic.caps.sees(m.options, m.body.len()) {
                        continue;
                    }
                    if ic.defers_at_once(m.options, m.body.len(), pending) {
                        pending += m.body.len() as u64;
                        ic.shared.defers.fetch_add(1, Ordering::Relaxed);
                        flows[j] = deferred.clone();
                    } else {
                        live.push(j);
                    }
                }
            }
            if !any {
                return;
            }
            if live.is_empty() {
                continue;
            }
            if set_of.is_empty() {
                let mut seen: Vec<&Arc<[MemberId]>> = Vec::new();
                for m in msgs.iter() {
                    let idx = match seen
                        .iter()
                        .position(|d| Arc::ptr_eq(d, &m.dests) || d[..] == m.dests[..])
                    {
                        Some(k) => k,
                        None => {
                            seen.push(&m.dests);
                            sets.push(m.dests.iter().map(|d| wit_id(&d.unique_id)).collect());
                            seen.len() - 1
                        }
                    };
                    set_of.push(idx as u32);
                }
            }
            let batch = batch_meta(
                ic,
                live.iter().map(|&j| {
                    let m = &msgs[j];
                    (m.options, m.timestamp, &m.body)
                }),
            );
            let dests: Vec<u32> = live.iter().map(|&j| set_of[j]).collect();
            let r = ic.on_send_many(&batch, &dests, &sets);
            self.apply(ic, r, &live, msgs, flows, &deferred);
        }
    }

    fn send_one(&self, start: usize, msg: &mut OutMsg, flow: &mut Flow) {
        let mut dests: Option<Vec<wit::MemberId>> = None;
        for (i, ic) in self.interceptors.iter().enumerate().skip(start) {
            if *flow != Flow::Continue {
                return;
            }
            if !ic.caps.send || !ic.caps.sees(msg.options, msg.body.len()) {
                continue;
            }
            let r = if ic.defers_at_once(msg.options, msg.body.len(), 0) {
                Ok(wit::Verdict::Defer)
            } else {
                let d = dests.get_or_insert_with(|| {
                    msg.dests.iter().map(|d| wit_id(&d.unique_id)).collect()
                });
                let m = meta(msg.options, msg.timestamp, msg.body.len());
                ic.on_send_one(m, d, ic.caps.body(&msg.body))
            };
            self.apply_one(ic, r, msg, flow, &Flow::Deferred { resume: i + 1 });
        }
    }

    /// Passes a batch up through the `above` interceptors nearest the
    /// network. `flows[j]` must start as [`Flow::Continue`].
    pub async fn receive_batch(&self, above: usize, msgs: &mut [InMsg], flows: &mut [Flow]) {
        if let ([msg], [flow]) = (&mut *msgs, &mut *flows) {
            self.receive_one(above, msg, flow);
            return;
        }
        let mut senders: Vec<wit::Member> = Vec::new();
        let mut sender_of: Vec<u32> = Vec::new();
        let mut live: Vec<usize> = Vec::with_capacity(msgs.len());
        for i in (0..above.min(self.interceptors.len())).rev() {
            let ic = &self.interceptors[i];
            if !ic.caps.receive {
                continue;
            }
            live.clear();
            let mut any = false;
            for (j, m) in msgs.iter().enumerate() {
                if flows[j] == Flow::Continue {
                    any = true;
                    if ic.caps.sees(m.options, m.body.len()) {
                        live.push(j);
                    }
                }
            }
            if !any {
                return;
            }
            if live.is_empty() {
                continue;
            }
            if sender_of.is_empty() {
                let mut seen: Vec<MemberId> = Vec::new();
                for m in msgs.iter() {
                    let idx = match seen.iter().position(|s| *s == m.sender.id) {
                        Some(k) => k,
                        None => {
                            seen.push(m.sender.id);
                            senders.push(member_to_wit(&m.sender));
                            seen.len() - 1
                        }
                    };
                    sender_of.push(idx as u32);
                }
            }
            let batch = batch_meta(
                ic,
                live.iter().map(|&j| {
                    let m = &msgs[j];
                    (m.options, m.timestamp, &m.body)
                }),
            );
            let from: Vec<u32> = live.iter().map(|&j| sender_of[j]).collect();
            let r = ic.on_receive_many(&batch, &from, &senders);
            self.apply(ic, r, &live, msgs, flows, &Flow::Deferred { resume: i });
        }
    }

    fn receive_one(&self, above: usize, msg: &mut InMsg, flow: &mut Flow) {
        let mut sender: Option<wit::Member> = None;
        for i in (0..above.min(self.interceptors.len())).rev() {
            let ic = &self.interceptors[i];
            if *flow != Flow::Continue {
                return;
            }
            if !ic.caps.receive || !ic.caps.sees(msg.options, msg.body.len()) {
                continue;
            }
            let s = sender.get_or_insert_with(|| member_to_wit(&msg.sender));
            let m = meta(msg.options, msg.timestamp, msg.body.len());
            let r = ic.on_receive_one(m, s, ic.caps.body(&msg.body));
            self.apply_one(ic, r, msg, flow, &Flow::Deferred { resume: i });
        }
    }

    /// Runs one control event through the chain on the control instances and
    /// returns the membership events that reached the top, in order.
    pub async fn control(&self, ev: ControlEvent) -> Vec<MemberEvent> {
        let mut work: Vec<(usize, MemberEvent)> = Vec::new();
        match ev {
            ControlEvent::Member(e) => work.push((self.interceptors.len(), e)),
            ControlEvent::Plugin(HostEvent::ProbeResult {
                plugin,
                id,
                target,
                alive,
            }) => {
                if let Some(i) = self.route(&plugin, "probe result")
                    && let Ok(raised) = self.interceptors[i].on_probe_result(id, &target, alive)
                {
                    self.interceptors[i].note_raised(&raised);
                    push_raised(&mut work, i, raised);
                }
            }
            ControlEvent::Plugin(HostEvent::Timer { plugin, id }) => {
                if let Some(i) = self.route(&plugin, "timer")
                    && let Ok(raised) = self.interceptors[i].on_timer(id)
                {
                    self.interceptors[i].note_raised(&raised);
                    push_raised(&mut work, i, raised);
                }
            }
            ControlEvent::Apply(change) => {
                // Only the node's control loop applies chain changes; a chain
                // asked to do it has nothing to say.
                change.refuse("chain changes are applied by the node's control loop");
            }
            ControlEvent::Heartbeat => {
                for (i, ic) in self.interceptors.iter().enumerate() {
                    if !ic.caps.heartbeat {
                        continue;
                    }
                    if let Ok(raised) = ic.heartbeat() {
                        ic.note_raised(&raised);
                        push_raised(&mut work, i, raised);
                    }
                }
            }
        }
        self.run_up(work).await
    }

    /// Passes each `(above, event)` up from its position, in order, with the
    /// events raised on the way; returns those that reached the top.
    pub(crate) async fn run_up(&self, mut work: Vec<(usize, MemberEvent)>) -> Vec<MemberEvent> {
        let mut out = Vec::new();
        // Process in order: a FIFO over the work list.
        let mut next = 0;
        while next < work.len() {
            let (above, ev) = work[next].clone();
            next += 1;
            if let Some(e) = self.member_up(above, ev, &mut work).await {
                out.push(e);
            }
            if work.len() > 10_000 {
                tracing::error!(
                    "interceptors raised too many membership events; dropping the rest"
                );
                break;
            }
        }
        out
    }

    /// Passes a membership event up through the `above` interceptors nearest
    /// the network; events raised on the way are appended to `work`.
    async fn member_up(
        &self,
        above: usize,
        ev: MemberEvent,
        work: &mut Vec<(usize, MemberEvent)>,
    ) -> Option<MemberEvent> {
        for i in (0..above.min(self.interceptors.len())).rev() {
            let ic = &self.interceptors[i];
            if !ic.caps.members {
                continue;
            }
            let r = ic.member_event(&ev);
            match r {
                Ok((verdict, raised)) => {
                    ic.note_event(&ev, matches!(verdict, wit::MemberVerdict::Hold));
                    ic.note_raised(&raised);
                    push_raised(work, i, raised);
                    match verdict {
                        wit::MemberVerdict::Pass => {}
                        wit::MemberVerdict::Drop(reason) => {
                            tracing::debug!(plugin = %ic.spec.name, %reason, "membership event filtered");
                            return None;
                        }
                        wit::MemberVerdict::Hold => return None,
                    }
                }
                Err(_) if ic.spec.failure_mode == FailureMode::FailClosed => return None,
                Err(_) => {}
            }
        }
        Some(ev)
    }

    /// Where a probe or timer result of `plugin` goes: to the plug-in of
    /// that name if it is the same load, or a later one that took its state
    /// over. Otherwise it is dropped (logged): a successor that started
    /// without state was offered the events its predecessor held instead.
    fn route(&self, plugin: &PluginShared, what: &str) -> Option<usize> {
        let i = self.index_of(&plugin.name)?;
        let ic = &self.interceptors[i];
        if ic.shared.generation == plugin.generation
            || (plugin.generation < ic.shared.generation && ic.took_state.load(Ordering::Relaxed))
        {
            return Some(i);
        }
        tracing::debug!(
            plugin = %plugin.name, generation = plugin.generation,
            current = ic.shared.generation, "dropping a {what} of a replaced version"
        );
        None
    }

    /// Position of the interceptor named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.interceptors.iter().position(|ic| ic.spec.name == name)
    }

    /// Appends this chain's metrics (Prometheus text) to `out`.
    pub async fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        if self.interceptors.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP shoal_plugin_failures_total Interceptor calls that trapped, timed out or hit the memory cap."
        );
        let _ = writeln!(out, "# TYPE shoal_plugin_failures_total counter");
        for ic in &self.interceptors {
            for k in [FailureKind::Trap, FailureKind::Timeout, FailureKind::Memory] {
                let _ = writeln!(
                    out,
                    "shoal_plugin_failures_total{{plugin=\"{}\",kind=\"{}\"}} {}",
                    ic.spec.name,
                    k.label(),
                    ic.shared.failures_of(k)
                );
            }
        }
        for (metric, help, get) in [
            (
                "shoal_plugin_dropped_total",
                "Messages an interceptor dropped.",
                (|s: &PluginShared| s.drops.load(Ordering::Relaxed)) as fn(&PluginShared) -> u64,
            ),
            (
                "shoal_plugin_deferred_total",
                "Messages an interceptor deferred to the queue.",
                |s| s.defers.load(Ordering::Relaxed),
            ),
            (
                "shoal_plugin_instantiations_total",
                "Interceptor instances created.",
                |s| s.instantiations.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for ic in &self.interceptors {
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{}\"}} {}",
                    ic.spec.name,
                    get(&ic.shared)
                );
            }
        }
        for ic in &self.interceptors {
            let counters = ic
                .shared
                .counters
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for c in counters {
                let _ = writeln!(
                    out,
                    "# HELP shoal_plugin_{} {}\n# TYPE shoal_plugin_{} counter\nshoal_plugin_{}{{plugin=\"{}\"}} {}",
                    c.name,
                    c.help,
                    c.name,
                    c.name,
                    ic.spec.name,
                    c.value.load(Ordering::Relaxed)
                );
            }
            for (name, value, counter, help) in ic.guest_stats().await {
                let name = host::sanitize(&name);
                let kind = if counter { "counter" } else { "gauge" };
                let help: String = help.chars().filter(|c| *c != '\n').collect();
                let _ = writeln!(
                    out,
                    "# HELP shoal_plugin_{name} {help}\n# TYPE shoal_plugin_{name} {kind}\nshoal_plugin_{name}{{plugin=\"{}\"}} {value}",
                    ic.spec.name
                );
            }
        }
    }
}

/// The columns of a batch for `ic`: bodies only for a plug-in that reads them.
fn batch_meta<'a>(
    ic: &Interceptor,
    msgs: impl ExactSizeIterator<Item = (SendOptions, i64, &'a Bytes)>,
) -> wit::BatchMeta {
    let n = msgs.len();
    let reads = ic.caps.body_limit > 0;
    let mut b = wit::BatchMeta {
        options: Vec::with_capacity(n),
        timestamps: Vec::with_capacity(n),
        sizes: Vec::with_capacity(n),
        bodies: Vec::with_capacity(if reads { n } else { 0 }),
    };
    for (options, timestamp, body) in msgs {
        b.options.push(options.0);
        b.timestamps.push(timestamp);
        b.sizes.push(body.len() as u32);
        if reads {
            b.bodies.push(ic.caps.body(body).map(<[u8]>::to_vec));
        }
    }
    b
}

fn meta(options: SendOptions, timestamp: i64, size: usize) -> wit::MessageMeta {
    wit::MessageMeta {
        options: options.0,
        timestamp,
        size: u32::try_from(size).unwrap_or(u32::MAX),
    }
}

fn wit_id(id: &[u8; 16]) -> wit::MemberId {
    let (hi, lo) = id_to_wit(id);
    wit::MemberId { hi, lo }
}

/// Messages whose options and body a plug-in may change.
trait BodyOwner {
    fn set_options(&mut self, o: SendOptions);
    fn set_body(&mut self, b: Bytes);
}

impl BodyOwner for OutMsg {
    fn set_options(&mut self, o: SendOptions) {
        self.options = o;
    }
    fn set_body(&mut self, b: Bytes) {
        self.body = b;
    }
}

impl BodyOwner for InMsg {
    fn set_options(&mut self, o: SendOptions) {
        self.options = o;
    }
    fn set_body(&mut self, b: Bytes) {
        self.body = b;
    }
}

fn push_raised(work: &mut Vec<(usize, MemberEvent)>, from: usize, raised: Vec<Raised>) {
    for r in raised {
        work.push((
            from,
            match r {
                Raised::Added(m) => MemberEvent::Added(m),
                Raised::Disappeared(m, reason) => MemberEvent::Disappeared(m, reason),
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtins_are_the_names_config_accepts() {
        let names: Vec<&str> = super::BUILTINS.iter().map(|b| b.0).collect();
        assert_eq!(names, crate::config::BUILTIN_NAMES);
    }
}
