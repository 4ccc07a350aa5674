//! Interceptor plug-ins: what a node's config names ([`InterceptorSpec`],
//! [`PluginOptions`]), the built-ins embedded in the binary ([`BUILTINS`]),
//! load errors ([`PluginLoadError`]) and a loaded interceptor
//! ([`Interceptor`]): its compiled code, the capabilities it declared, and its
//! instances in a [`crate::wasm::pool::InstancePool`]. The chain that runs
//! interceptors is [`crate::chain`].
//!
//! # Instances and threads
//!
//! Message hooks may run on several threads at once. Each interceptor keeps
//! several worker instances (`plugins.instances`, default: one per CPU); a
//! call takes the calling thread's own slot if free, else any free one, so
//! calls never wait for each other while an instance is idle; a call is
//! ~0.3 µs, and any shared lock costs more than that (wasmtime-notes.md: a
//! shared mutexed instance reached 1.4 M calls/s against 4.5 M for one
//! instance per thread). Membership, heartbeat, probe, timer, state and stats
//! calls go to a separate *control* instance, one at a time, from the node's
//! control loop, so a plug-in's membership state lives in one place.
//! Node-wide numbers belong in host counters (`register-counter`).
//! Compilation and instantiation at load run on a blocking thread; an
//! instance discarded after a failure is made again on the next call, on the
//! calling thread, within the control deadline.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceAny};

pub use crate::wasm::engine::{content_hash, default_cache_dir, engine};
pub use crate::wasm::host::{
    FailureKind, GuestCounter, HostEvent, NodeCtx, PluginShared, Raised, Reporter, TCP_FAIL_DETECT,
};
use crate::wasm::pool::{self, InstancePool, PoolLimits};
use crate::wasm::{bindings, engine, wasi};

use crate::member::{Member, MemberId};
use crate::membership::{LeaveReason, MemberEvent};
use crate::wasm::host::{HostState, member_to_wit};
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
        "phi-accrual-detector",
        include_bytes!(concat!(
            env!("SHOAL_GUEST_DIR"),
            "/phi_accrual_detector.wasm"
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
    (
        "encrypt",
        include_bytes!(concat!(env!("SHOAL_GUEST_DIR"), "/encrypt.wasm")),
    ),
];

/// The chain `shoal run` uses when the config lists no interceptor (Tomcat's
/// recommended set).
pub const DEFAULT_CHAIN: [&str; 3] = ["tcp-failure-detector", "message-dispatch", "throughput"];

use crate::config::CacheDir;
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
    pub fn list_from(cfg: &crate::config::Config) -> Vec<Self> {
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
                settings: settings_strings(&i.settings),
            })
            .collect()
    }
}

/// A config's settings table as the `(key, value)` strings plug-ins get
/// (strings as they are, other values in TOML syntax).
pub fn settings_strings(t: &toml::Table) -> Vec<(String, String)> {
    t.iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
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
        o.cache_dir = match &p.cache_dir {
            CacheDir::Default => default_cache_dir(),
            CacheDir::Off => None,
            CacheDir::Dir(d) => Some(d.clone()),
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
            cache_dir: default_cache_dir(),
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
    #[error("interceptor `{name}`: {source_desc} is not a valid WebAssembly component: {cause:#}")]
    Invalid {
        /// Interceptor name.
        name: String,
        /// File or built-in.
        source_desc: String,
        /// The compiler's error.
        #[source]
        cause: wasmtime::Error,
    },
    /// The component does not implement the `shoal:cluster/interceptor` world
    /// (or imports something the host does not provide).
    #[error(
        "interceptor `{name}`: {source_desc} does not implement the shoal:cluster@0.2.0 interceptor world: {cause:#}"
    )]
    WrongWorld {
        /// Interceptor name.
        name: String,
        /// File or built-in.
        source_desc: String,
        /// The linker's error.
        #[source]
        cause: wasmtime::Error,
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

/// Counters the host keeps for a plug-in that only counts messages (the
/// `tally` import), in place of a hook call per message.
#[derive(Debug)]
pub(crate) struct Tally {
    sent_messages: Arc<GuestCounter>,
    sent_bytes: Arc<GuestCounter>,
    received_messages: Arc<GuestCounter>,
    received_bytes: Arc<GuestCounter>,
    every: u64,
}

impl Tally {
    /// The counters `spec` names, if every handle is registered.
    fn resolve(shared: &PluginShared) -> Option<Self> {
        let spec = (*shared.tally.lock().unwrap_or_else(|p| p.into_inner()))?;
        let all = shared.counters.read().unwrap_or_else(|p| p.into_inner());
        let c = |i: usize| all.get(spec.counters[i] as usize).cloned();
        Some(Self {
            sent_messages: c(0)?,
            sent_bytes: c(1)?,
            received_messages: c(2)?,
            received_bytes: c(3)?,
            every: spec.every,
        })
    }

    /// Counts `n` messages of `size` bytes on `messages` and `bytes`;
    /// whether the count passed a multiple of `every` (the hook is called).
    fn count(&self, messages: &GuestCounter, bytes: &GuestCounter, n: u64, size: u64) -> bool {
        bytes.value.fetch_add(n * size, Ordering::Relaxed);
        let before = messages.value.fetch_add(n, Ordering::Relaxed);
        self.every > 0 && (before + n) / self.every != before / self.every
    }

    /// A message of `size` bytes sent to `n` members (`n` counts as at
    /// least one); whether the plug-in's `on-send` must see it.
    pub(crate) fn sent(&self, n: usize, size: usize) -> bool {
        self.count(
            &self.sent_messages,
            &self.sent_bytes,
            n.max(1) as u64,
            size as u64,
        )
    }

    /// A message of `size` bytes received; whether `on-receive` must see it.
    pub(crate) fn received(&self, size: usize) -> bool {
        self.count(
            &self.received_messages,
            &self.received_bytes,
            1,
            size as u64,
        )
    }
}

/// What a plug-in asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub(crate) send: bool,
    pub(crate) receive: bool,
    pub(crate) members: bool,
    pub(crate) heartbeat: bool,
    /// `connection-lost`.
    pub(crate) connections: bool,
    /// `member-heartbeat`.
    pub(crate) member_heartbeats: bool,
    pub(crate) single: bool,
    /// Largest body passed (0: none; u32::MAX: all).
    pub(crate) body_limit: u32,
    /// Message hooks see only messages with all these option bits…
    pub(crate) only_options: i32,
    /// … and bodies of at most this many bytes.
    pub(crate) max_size: u32,
    /// Defer rule: (option bits, queue bound in bytes).
    pub(crate) defer: Option<(i32, u64)>,
    /// It changes the bytes on the wire.
    pub(crate) changes_wire: bool,
}

impl Caps {
    fn from_wit(c: &wit::Capabilities) -> Self {
        Self {
            send: c.hooks.contains(wit::Hooks::ON_SEND),
            receive: c.hooks.contains(wit::Hooks::ON_RECEIVE),
            members: c.hooks.contains(wit::Hooks::MEMBER_EVENTS),
            heartbeat: c.hooks.contains(wit::Hooks::HEARTBEAT),
            connections: c.hooks.contains(wit::Hooks::CONNECTION_EVENTS),
            member_heartbeats: c.hooks.contains(wit::Hooks::MEMBER_HEARTBEATS),
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
    pub(crate) fn sees(&self, options: SendOptions, size: usize) -> bool {
        options.0 & self.only_options == self.only_options
            && size as u64 <= u64::from(self.max_size)
    }

    pub(crate) fn body<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
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
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) spec: InterceptorSpec,
    pub(crate) hash: String,
    pub(crate) caps: Caps,
    pub(crate) node: Arc<NodeCtx>,
    pool: InstancePool<IcFactory>,
    /// Membership events this version answered `hold` and has not resolved
    /// yet (by raising an event about that member, or by a later event about
    /// it): offered again to a version that replaces it.
    pub(crate) held: Mutex<Vec<MemberEvent>>,
    /// The oldest generation whose state flows into this version (its own
    /// when it started fresh): late probe and timer results of generations
    /// from there on reach it.
    pub(crate) lineage: AtomicU64,
    /// The version it declares.
    pub(crate) version: String,
    /// What the host counts for it instead of calling its message hooks.
    pub(crate) tally: Option<Tally>,
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
            .map_err(|cause| PluginLoadError::Invalid {
                name: name.clone(),
                source_desc: source_desc.clone(),
                cause,
            })?;
        let wrong_world = |cause: wasmtime::Error| PluginLoadError::WrongWorld {
            name: name.clone(),
            source_desc: source_desc.clone(),
            cause,
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
        let running = crate::wasm::engine::GuestCall::enter();
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
        drop(running);
        let caps_host = Caps::from_wit(&caps);
        pool.set_single(caps_host.single);
        pool.put_control(slot);
        let tally = Tally::resolve(&shared);
        let me = Self {
            tally,
            shared,
            hash,
            caps: caps_host,
            version: caps.version.chars().take(32).collect(),
            node,
            pool,
            held: Mutex::new(Vec::new()),
            lineage: AtomicU64::new(0),
            spec,
        };
        tracing::info!(
            plugin = %name, source = %source_desc, hash = %&me.hash[..12],
            generation = me.shared.generation,
            caps = ?me.caps, tally = me.tally.is_some(), failure_mode = ?me.spec.failure_mode,
            "interceptor loaded"
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

    /// The oldest generation whose state this version carries.
    pub(crate) fn lineage(&self) -> u64 {
        match self.lineage.load(Ordering::Relaxed) {
            0 => self.generation(),
            g => g,
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
    /// `from`: the version whose state this is.
    pub(crate) fn take_over(
        &self,
        state: Option<Vec<u8>>,
        members: &[Member],
        from: Option<&Interceptor>,
    ) -> Result<(), String> {
        let lineage = match (&state, from) {
            (Some(_), Some(old)) => old.lineage(),
            _ => self.generation(),
        };
        let members: Vec<wit::Member> = members.iter().map(member_to_wit).collect();
        let r = self.pool.control(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_take_over(&mut s.store, s.instance.plugin, state.as_deref(), &members)
        });
        match r {
            Ok((Ok(()), _)) => {
                self.lineage.store(lineage, Ordering::Relaxed);
                Ok(())
            }
            Ok((Err(msg), _)) => Err(msg),
            Err(kind) => Err(format!("take-over failed ({})", kind.label())),
        }
    }

    /// Records the latest event this plug-in saw about a member: kept if it
    /// answered `hold`, else any earlier held event about it is resolved.
    pub(crate) fn note_event(&self, ev: &MemberEvent, held: bool) {
        let id = ev.member().id;
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        h.retain(|e| e.member().id != id);
        if held {
            h.push(ev.clone());
        }
    }

    /// Events this plug-in raised resolve what it held about those members.
    pub(crate) fn note_raised(&self, raised: &[Raised]) {
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
    pub(crate) fn defers_at_once(&self, options: SendOptions, size: usize, pending: u64) -> bool {
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

    /// The columns of a batch for this plug-in: bodies only if it reads them.
    pub(crate) fn batch<'a>(
        &self,
        msgs: impl ExactSizeIterator<Item = (SendOptions, i64, &'a Bytes)>,
    ) -> Batch {
        let n = msgs.len();
        let reads = self.caps.body_limit > 0;
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
                b.bodies.push(self.caps.body(body).map(<[u8]>::to_vec));
            }
        }
        Batch(b)
    }

    /// One message down: the flat call.
    pub(crate) fn on_send_one(
        &self,
        options: SendOptions,
        timestamp: i64,
        body: &Bytes,
        dests: &Dests,
    ) -> Result<Verdict, FailureKind> {
        let meta = meta(options, timestamp, body.len());
        let body = self.caps.body(body);
        self.pool
            .worker(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_send(&mut s.store, s.instance.plugin, meta, &dests.0, body)
            })
            .map(|(v, _)| v.into())
    }

    /// Several messages down: message `i` goes to `sets[set_of[i]]`.
    pub(crate) fn on_send_many(
        &self,
        batch: &Batch,
        set_of: &[u32],
        sets: &DestSets,
    ) -> Result<Vec<Verdict>, FailureKind> {
        let (v, _) = self.pool.worker(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_on_send_batch(&mut s.store, s.instance.plugin, &batch.0, set_of, &sets.0)
        })?;
        self.check_len(v, batch.0.options.len())
    }

    /// One message up: the flat call.
    pub(crate) fn on_receive_one(
        &self,
        options: SendOptions,
        timestamp: i64,
        body: &Bytes,
        sender: &Sender,
    ) -> Result<Verdict, FailureKind> {
        let meta = meta(options, timestamp, body.len());
        let body = self.caps.body(body);
        self.pool
            .worker(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_receive(&mut s.store, s.instance.plugin, meta, &sender.0, body)
            })
            .map(|(v, _)| v.into())
    }

    /// Several messages up: message `i` comes from `senders[sender_of[i]]`.
    pub(crate) fn on_receive_many(
        &self,
        batch: &Batch,
        sender_of: &[u32],
        senders: &Senders,
    ) -> Result<Vec<Verdict>, FailureKind> {
        let (v, _) = self.pool.worker(|s| {
            let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
            hooks.call_on_receive_batch(
                &mut s.store,
                s.instance.plugin,
                &batch.0,
                sender_of,
                &senders.0,
            )
        })?;
        self.check_len(v, batch.0.options.len())
    }

    /// One verdict per message, or none (all pass); else the plug-in broke
    /// the contract.
    fn check_len(&self, v: Vec<wit::Verdict>, n: usize) -> Result<Vec<Verdict>, FailureKind> {
        if v.len() == n || v.is_empty() {
            // Empty: the batch hooks' shorthand, every message passes
            // unchanged (`apply` then has nothing to do).
            return Ok(v.into_iter().map(Verdict::from).collect());
        }
        self.pool.fail(
            FailureKind::Trap,
            &format!("returned {} verdicts for {n} messages", v.len()),
        );
        Err(FailureKind::Trap)
    }

    pub(crate) fn member_event(
        &self,
        ev: &MemberEvent,
    ) -> Result<(MemberVerdict, Vec<Raised>), FailureKind> {
        let r = self.pool.control(|s| {
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
        });
        r.map(|(v, raised)| {
            let v = match v {
                wit::MemberVerdict::Pass => MemberVerdict::Pass,
                wit::MemberVerdict::Drop(reason) => MemberVerdict::Drop(reason),
                wit::MemberVerdict::Hold => MemberVerdict::Hold,
            };
            (v, raised)
        })
    }

    pub(crate) fn on_probe_result(
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

    pub(crate) fn on_timer(&self, id: u64) -> Result<Vec<Raised>, FailureKind> {
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_on_timer(&mut s.store, s.instance.plugin, id)
            })
            .map(|((), raised)| raised)
    }

    pub(crate) fn heartbeat(&self) -> Result<Vec<Raised>, FailureKind> {
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_heartbeat(&mut s.store, s.instance.plugin)
            })
            .map(|((), raised)| raised)
    }

    pub(crate) fn connection_lost(
        &self,
        m: &Member,
        cause: &str,
    ) -> Result<Vec<Raised>, FailureKind> {
        let t = member_to_wit(m);
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_connection_lost(&mut s.store, s.instance.plugin, &t, cause)
            })
            .map(|((), raised)| raised)
    }

    pub(crate) fn member_heartbeat(
        &self,
        m: &Member,
        at_ms: u64,
    ) -> Result<Vec<Raised>, FailureKind> {
        let t = member_to_wit(m);
        self.pool
            .control(|s| {
                let hooks = s.instance.bindings.shoal_cluster_hooks().plugin();
                hooks.call_member_heartbeat(&mut s.store, s.instance.plugin, &t, at_ms)
            })
            .map(|((), raised)| raised)
    }
}

/// A plug-in's decision about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on unchanged.
    Pass,
    /// Pass it on with these options and/or this body.
    Modify {
        /// New option bits.
        options: Option<SendOptions>,
        /// New body.
        body: Option<Bytes>,
    },
    /// Drop it, for this reason.
    Drop(String),
    /// Hand it to the host's queue.
    Defer,
}

impl From<wit::Verdict> for Verdict {
    fn from(v: wit::Verdict) -> Self {
        match v {
            wit::Verdict::Pass => Self::Pass,
            wit::Verdict::PassModified(m) => Self::Modify {
                options: m.options.map(SendOptions),
                body: m.body.map(Bytes::from),
            },
            wit::Verdict::Drop(reason) => Self::Drop(reason),
            wit::Verdict::Defer => Self::Defer,
        }
    }
}

/// A plug-in's decision about a membership event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberVerdict {
    /// Pass it up.
    Pass,
    /// Drop it, for this reason.
    Drop(String),
    /// Keep it back (the plug-in raises it, or not, later).
    Hold,
}

/// A batch's columns as a plug-in takes them (built by the interceptor).
#[derive(Debug)]
pub struct Batch(wit::BatchMeta);

/// A message's destinations as plug-ins take them.
#[derive(Debug, Clone)]
pub struct Dests(Vec<wit::MemberId>);

impl Dests {
    /// The destinations `ids`.
    pub fn new(ids: &[MemberId]) -> Self {
        Self(ids.iter().map(|d| wit_id(&d.unique_id)).collect())
    }
}

/// The distinct destination sets of a batch.
#[derive(Debug)]
pub struct DestSets(Vec<Vec<wit::MemberId>>);

impl FromIterator<Dests> for DestSets {
    fn from_iter<I: IntoIterator<Item = Dests>>(iter: I) -> Self {
        Self(iter.into_iter().map(|d| d.0).collect())
    }
}

/// A message's sender as plug-ins take it.
#[derive(Debug, Clone)]
pub struct Sender(wit::Member);

impl Sender {
    /// The sender `m`.
    pub fn new(m: &Member) -> Self {
        Self(member_to_wit(m))
    }
}

/// The distinct senders of a batch.
#[derive(Debug)]
pub struct Senders(Vec<wit::Member>);

impl FromIterator<Sender> for Senders {
    fn from_iter<I: IntoIterator<Item = Sender>>(iter: I) -> Self {
        Self(iter.into_iter().map(|s| s.0).collect())
    }
}

fn meta(options: SendOptions, timestamp: i64, size: usize) -> wit::MessageMeta {
    wit::MessageMeta {
        options: options.0,
        timestamp,
        size: u32::try_from(size).unwrap_or(u32::MAX),
    }
}

fn wit_id(id: &[u8; 16]) -> wit::MemberId {
    let (hi, lo) = crate::wasm::host::id_to_wit(id);
    wit::MemberId { hi, lo }
}

/// A metric name as Prometheus accepts it.
pub fn metric_name(name: &str) -> String {
    crate::wasm::host::sanitize(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtins_are_the_names_config_accepts() {
        let names: Vec<&str> = super::BUILTINS.iter().map(|b| b.0).collect();
        assert_eq!(names, crate::config::BUILTIN_NAMES);
    }

    #[test]
    fn a_tally_counts_every_message_and_calls_the_hook_at_each_interval() {
        use super::{GuestCounter, PluginShared, Tally};
        use crate::wasm::host::TallySpec;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let shared = PluginShared::new("t".into(), 1);
        for name in ["tx", "txb", "rx", "rxb"] {
            shared
                .counters
                .write()
                .expect("counters lock")
                .push(Arc::new(GuestCounter {
                    name: name.into(),
                    help: String::new(),
                    value: AtomicU64::new(0),
                }));
        }
        // No spec: the host does not count, the hooks see everything.
        assert!(Tally::resolve(&shared).is_none());
        *shared.tally.lock().expect("tally lock") = Some(TallySpec {
            counters: [0, 1, 2, 3],
            every: 10,
        });
        let t = Tally::resolve(&shared).expect("all four handles registered");
        // Sent to 3 members: 3 messages, 3 × 100 bytes; the hook sees the
        // sends that pass 10, 20, ...
        let calls: Vec<bool> = (0..7).map(|_| t.sent(3, 100)).collect();
        assert_eq!(calls, [false, false, false, true, false, false, true]);
        // A message to no one (a broadcast) counts once.
        assert!(!t.sent(0, 5));
        let received: usize = (0..25).filter(|_| t.received(7)).count();
        assert_eq!(received, 2);
        let v = |i: usize| {
            shared.counters.read().expect("counters lock")[i]
                .value
                .load(Ordering::Relaxed)
        };
        assert_eq!((v(0), v(1), v(2), v(3)), (22, 2105, 25, 175));
        // A handle that was never registered: no tally (the import refuses it).
        *shared.tally.lock().expect("tally lock") = Some(TallySpec {
            counters: [0, 1, 2, 9],
            every: 10,
        });
        assert!(Tally::resolve(&shared).is_none());
    }
}
