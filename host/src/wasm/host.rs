//! What a plug-in instance's store holds, and the host imports (`host`
//! interface of the WIT package) that plug-ins call. No import blocks: probes
//! and timers run on the runtime and answer through the control loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::shoal::cluster::{host, types};
use crate::member::LeaveReason;
use crate::member::{Member, MemberId};
use crate::membership::MemberTable;
use crate::metrics::Metrics;
use crate::wire::SendOptions;

/// Tribes' `TcpFailureDetector.TCP_FAIL_DETECT`, the body of a probe message.
pub const TCP_FAIL_DETECT: [u8; 64] = [
    0x4f, 0xa7, 0x73, 0x48, 0x79, 0x82, 0x43, 0xc9, 0x9f, 0x6f, 0x89, 0x80, 0xa1, 0x5b, 0x07, 0x14,
    0x7d, 0xd9, 0x52, 0x5b, 0xeb, 0xf1, 0x43, 0x9a, 0xb7, 0x7e, 0xbe, 0x8f, 0x81, 0x67, 0x1e, 0xb6,
    0x37, 0x15, 0xbe, 0x87, 0x45, 0x7e, 0x4c, 0xa8, 0xbf, 0x0a, 0x4d, 0x13, 0x53, 0x38, 0x15, 0x32,
    0x55, 0xf6, 0x94, 0xb7, 0x3a, 0xfa, 0x40, 0x78, 0x91, 0x04, 0x7d, 0xd7, 0x72, 0x84, 0xc0, 0xd5,
];

/// Most probes and timers one plug-in may have outstanding; more are refused
/// (the import returns an error and the host logs).
const MAX_OUTSTANDING: usize = 4096;
/// Most counters one plug-in may register.
const MAX_COUNTERS: usize = 256;
/// Longest timer a plug-in may set, ms (an hour).
const MAX_TIMER_MS: u32 = 3_600_000;

/// What a plug-in's asynchronous host imports report back: handed to the
/// node's control loop, which calls the plug-in's control instance.
#[derive(Debug)]
pub enum HostEvent {
    /// A probe a plug-in started has finished.
    ProbeResult {
        /// The plug-in that asked.
        plugin: Arc<PluginShared>,
        /// The probe's id.
        id: u64,
        /// The probed member.
        target: Member,
        /// Whether it answered.
        alive: bool,
    },
    /// A timer a plug-in set has fired.
    Timer {
        /// The plug-in that asked.
        plugin: Arc<PluginShared>,
        /// The timer's id.
        id: u64,
    },
}

/// Where host events go (the node's control loop).
pub struct Reporter(Box<dyn Fn(HostEvent) + Send + Sync>);

impl Reporter {
    /// Reports through `f`.
    pub fn new(f: impl Fn(HostEvent) + Send + Sync + 'static) -> Self {
        Self(Box::new(f))
    }

    fn report(&self, ev: HostEvent) {
        (self.0)(ev)
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

/// Node-wide facts and channels every plug-in store can reach.
#[derive(Debug)]
pub struct NodeCtx {
    /// This node.
    pub local: Member,
    /// This node's encoded member packet (the address of probe messages).
    pub local_address: Bytes,
    /// The membership table (set once membership has started).
    pub table: OnceLock<Arc<Mutex<MemberTable>>>,
    /// Node metrics (the deferred-queue gauge lives there).
    pub metrics: Arc<Metrics>,
    /// Where probes and timers report back.
    pub control: Reporter,
    next_id: AtomicU64,
    next_generation: AtomicU64,
    /// The zero of `host.monotonic-ms`.
    pub started: Instant,
}

impl NodeCtx {
    /// A context for a node whose identity is `local`.
    pub fn new(
        local: Member,
        local_address: Bytes,
        metrics: Arc<Metrics>,
        control: Reporter,
    ) -> Self {
        Self {
            local,
            local_address,
            table: OnceLock::new(),
            metrics,
            control,
            next_id: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            started: Instant::now(),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new plug-in generation number (1, 2, …).
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }
}

/// A counter a plug-in registered; shared by all its instances.
#[derive(Debug)]
pub struct GuestCounter {
    /// Name (sanitised).
    pub name: String,
    /// Help text.
    pub help: String,
    /// Node-wide value.
    pub value: AtomicU64,
}

/// What a plug-in asked the host to count for it (the `tally` import):
/// counter handles for messages sent, bytes sent, messages received, bytes
/// received, and every how many messages the hook is still called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TallySpec {
    /// Handles, in the order above.
    pub counters: [u32; 4],
    /// Call the hook with the message that passes a multiple of this (0: never).
    pub every: u64,
}

/// Kinds of guest failure, counted per plug-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, bad memory access…).
    Trap,
    /// The call ran past its deadline (epoch interruption).
    Timeout,
    /// The guest asked for more memory than its cap.
    Memory,
}

impl FailureKind {
    /// Label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
        }
    }
}

/// State shared by every instance of one configured plug-in.
#[derive(Debug)]
pub struct PluginShared {
    /// The configured name.
    pub name: String,
    /// Which load of this name it is (node-wide, grows with every load):
    /// probe and timer results are routed by name and generation.
    pub generation: u64,
    /// Registered counters, by handle (index).
    pub counters: RwLock<Vec<Arc<GuestCounter>>>,
    /// What the host counts for the plug-in (`tally.count-messages`).
    pub tally: std::sync::Mutex<Option<TallySpec>>,
    /// Failures by kind: trap, timeout, memory.
    pub failures: [AtomicU64; 3],
    /// Messages this plug-in dropped.
    pub drops: AtomicU64,
    /// Messages this plug-in deferred.
    pub defers: AtomicU64,
    /// Instances (re)created.
    pub instantiations: AtomicU64,
    /// Log lines not written because the plug-in logged faster than
    /// [`LOG_LINES_PER_S`].
    pub logs_suppressed: AtomicU64,
    log_budget: std::sync::Mutex<LogBudget>,
    outstanding: AtomicUsize,
}

/// Log lines a plug-in may write per second, on average.
pub const LOG_LINES_PER_S: f64 = 20.0;
/// Log lines a plug-in may write at once (a burst).
pub const LOG_BURST: f64 = 100.0;

/// A token bucket for a plug-in's log lines.
#[derive(Debug)]
struct LogBudget {
    tokens: f64,
    at: std::time::Instant,
    /// Lines suppressed since the last line written.
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            tokens: LOG_BURST,
            at: std::time::Instant::now(),
            suppressed: 0,
        }
    }
}

impl LogBudget {
    /// Whether a line may be written now; if so, how many were suppressed
    /// before it.
    fn take(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * LOG_LINES_PER_S;
        self.tokens = (self.tokens + refill).min(LOG_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl PluginShared {
    /// Fresh shared state for plug-in `name`, load number `generation`.
    pub fn new(name: String, generation: u64) -> Self {
        Self {
            name,
            generation,
            counters: RwLock::new(Vec::new()),
            tally: std::sync::Mutex::new(None),
            failures: Default::default(),
            drops: AtomicU64::new(0),
            defers: AtomicU64::new(0),
            instantiations: AtomicU64::new(0),
            logs_suppressed: AtomicU64::new(0),
            log_budget: std::sync::Mutex::new(LogBudget::default()),
            outstanding: AtomicUsize::new(0),
        }
    }

    /// Whether the plug-in may write a log line now (at most
    /// [`LOG_LINES_PER_S`] a second, bursts of [`LOG_BURST`]); if so, how
    /// many lines were suppressed before it. Suppressed lines are counted.
    pub fn log_allowed(&self) -> Option<u64> {
        let r = self
            .log_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if r.is_none() {
            self.logs_suppressed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Carries the host's own counts about a plug-in (failures, drops,
    /// defers, instantiations) over from the version it replaces, so the
    /// `/metrics` series of a name do not restart at a swap. The plug-in's
    /// own counters (`register-counter`) start at zero: a plug-in carries
    /// them over with `export-state` / `take-over`.
    pub fn carry_over(&self, old: &PluginShared) {
        for (new, old) in self.failures.iter().zip(&old.failures) {
            new.fetch_add(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (new, old) in [
            (&self.drops, &old.drops),
            (&self.defers, &old.defers),
            (&self.instantiations, &old.instantiations),
            (&self.logs_suppressed, &old.logs_suppressed),
        ] {
            new.fetch_add(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Counts one failure.
    pub fn count_failure(&self, kind: FailureKind) {
        let i = match kind {
            FailureKind::Trap => 0,
            FailureKind::Timeout => 1,
            FailureKind::Memory => 2,
        };
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures of one kind so far.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        let i = match kind {
            FailureKind::Trap => 0,
            FailureKind::Timeout => 1,
            FailureKind::Memory => 2,
        };
        self.failures[i].load(Ordering::Relaxed)
    }
}

/// An event a plug-in raised during a call, to be passed up from it.
#[derive(Debug, Clone)]
pub enum Raised {
    /// `raise-member-added`.
    Added(Member),
    /// `raise-member-disappeared`.
    Disappeared(Member, LeaveReason),
}

/// The memory cap of one instance (a wasmtime `ResourceLimiter`): a growth
/// past the cap fails and traps, and the cap remembers it was hit, so the
/// failure is counted as `memory` by fact, not by an error's text.
#[derive(Debug)]
pub struct MemoryCap {
    max_bytes: usize,
    hit: bool,
}

impl MemoryCap {
    /// A cap of `max_bytes` of linear memory (each memory).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            hit: false,
        }
    }

    /// Whether a growth was refused since the last call; clears the flag.
    pub fn take_hit(&mut self) -> bool {
        std::mem::take(&mut self.hit)
    }
}

/// Most table elements one instance may have (guests use small tables).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Core instances, tables and memories one plug-in instance may create
/// (wasmtime's defaults are 10 000 each; a guest built with the SDK uses a
/// handful: its own module and the WASI adapter's).
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "memory cap of {} bytes reached (asked for {desired})",
                self.max_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The data of one plug-in instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap.
    pub limits: MemoryCap,
    /// The plug-in this instance belongs to.
    pub plugin: Arc<PluginShared>,
    /// The node.
    pub node: Arc<NodeCtx>,
    /// Events raised during the current call.
    pub outbox: Vec<Raised>,
    counters: Vec<Arc<GuestCounter>>,
    /// Keys of the `crypto` import this instance holds.
    pub(crate) crypto_keys: usize,
    /// The running call's deadline.
    pub(crate) deadline: super::engine::CallDeadline,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl HostState {
    /// A store's data: no WASI capabilities besides stdout/stderr, which go to the log.
    pub fn new(plugin: Arc<PluginShared>, node: Arc<NodeCtx>, limits: MemoryCap) -> Self {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(super::wasi::LogStream::new(&plugin.name, false))
            .stderr(super::wasi::LogStream::new(&plugin.name, true))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            plugin,
            node,
            outbox: Vec::new(),
            counters: Vec::new(),
            crypto_keys: 0,
            deadline: Default::default(),
        }
    }

    /// The store's resource table (WASI handles).
    pub fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn counter(&mut self, handle: u32) -> Option<&Arc<GuestCounter>> {
        let i = handle as usize;
        if i >= self.counters.len() {
            self.counters = self
                .plugin
                .counters
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        self.counters.get(i)
    }

    /// Runs `work` on the runtime and hands the event it returns to the
    /// control loop; returns the work's id, or why it was refused (too many
    /// outstanding, or no runtime).
    fn spawn_reporting<F, Fut>(&mut self, what: &str, work: F) -> Result<u64, String>
    where
        F: FnOnce(Arc<NodeCtx>, Arc<PluginShared>, u64) -> Fut,
        Fut: std::future::Future<Output = HostEvent> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Err(format!("{what} refused: no runtime"));
        };
        if !self.reserve_outstanding(what) {
            return Err(format!(
                "{what} refused: {MAX_OUTSTANDING} probes and timers already outstanding"
            ));
        }
        let id = self.node.next_id();
        let node = self.node.clone();
        let plugin = self.plugin.clone();
        let fut = work(node.clone(), plugin.clone(), id);
        rt.spawn(async move {
            let ev = fut.await;
            plugin.outstanding.fetch_sub(1, Ordering::Relaxed);
            node.control.report(ev);
        });
        Ok(id)
    }

    fn reserve_outstanding(&self, what: &str) -> bool {
        if self.plugin.outstanding.fetch_add(1, Ordering::Relaxed) >= MAX_OUTSTANDING {
            self.plugin.outstanding.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.plugin.name, "refusing {what}: {MAX_OUTSTANDING} already outstanding");
            return false;
        }
        true
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Converts a member to its WIT form.
pub fn member_to_wit(m: &Member) -> types::Member {
    let (hi, lo) = id_to_wit(&m.id.unique_id);
    types::Member {
        id: types::MemberId { hi, lo },
        host: m.id.host.to_string(),
        port: m.id.port,
        domain: m.domain.to_vec(),
        alive_ms: m.alive_ms,
    }
}

/// The two halves of a unique id.
pub fn id_to_wit(id: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id[..8]);
    lo.copy_from_slice(&id[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Converts a WIT member back, if its host parses.
pub fn member_from_wit(m: &types::Member) -> Option<Member> {
    let mut uid = [0u8; 16];
    uid[..8].copy_from_slice(&m.id.hi.to_be_bytes());
    uid[8..].copy_from_slice(&m.id.lo.to_be_bytes());
    Some(Member {
        id: MemberId {
            host: m.host.parse().ok()?,
            port: m.port,
            unique_id: uid,
        },
        domain: Bytes::copy_from_slice(&m.domain),
        alive_ms: m.alive_ms,
        payload: Bytes::new(),
        command: Bytes::new(),
        secure_port: -1,
        udp_port: -1,
    })
}

/// A metric-safe name: lowercase ASCII letters, digits and `_`, at most 64.
pub(crate) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "unnamed".into() } else { s }
}

impl types::Host for HostState {}

impl super::bindings::policy::shoal::cluster::placement_types::Host for HostState {}

/// A session policy's imports: the interceptor world's, minus members,
/// probes and timers.
impl super::bindings::policy::shoal::cluster::policy_host::Host for HostState {
    fn now_ms(&mut self) -> i64 {
        crate::clock::now_ms()
    }

    fn log(&mut self, level: types::Level, message: String) {
        host::Host::log(self, level, message)
    }

    fn register_counter(&mut self, name: String, help: String) -> Result<u32, String> {
        host::Host::register_counter(self, name, help)
    }

    fn counter_add(&mut self, counter: u32, delta: u64) -> u64 {
        host::Host::counter_add(self, counter, delta)
    }
}

impl super::bindings::shoal::cluster::tally::Host for HostState {
    fn count_messages(
        &mut self,
        spec: super::bindings::shoal::cluster::tally::TallySpec,
    ) -> Result<(), String> {
        let counters = [
            spec.sent_messages,
            spec.sent_bytes,
            spec.received_messages,
            spec.received_bytes,
        ];
        if let Some(bad) = counters.iter().find(|&&c| self.counter(c).is_none()) {
            return Err(format!(
                "tally: counter handle {bad} is not a registered counter"
            ));
        }
        *self.plugin.tally.lock().unwrap_or_else(|p| p.into_inner()) = Some(TallySpec {
            counters,
            every: spec.every,
        });
        Ok(())
    }
}

impl host::Host for HostState {
    fn now_ms(&mut self) -> i64 {
        crate::clock::now_ms()
    }

    fn monotonic_ms(&mut self) -> u64 {
        self.node.started.elapsed().as_millis() as u64
    }

    fn log(&mut self, level: types::Level, message: String) {
        let plugin = &self.plugin.name;
        // Bounded: a plug-in that logs per message cannot flood the node's log.
        let Some(suppressed) = self.plugin.log_allowed() else {
            return;
        };
        let mut message: String = message.chars().take(4096).collect();
        if suppressed > 0 {
            message.push_str(&format!(
                " ({suppressed} earlier lines of this plug-in suppressed: more than {LOG_LINES_PER_S} a second)"
            ));
        }
        match level {
            types::Level::Trace => tracing::trace!(target: "shoal::plugin", %plugin, "{message}"),
            types::Level::Debug => tracing::debug!(target: "shoal::plugin", %plugin, "{message}"),
            types::Level::Info => tracing::info!(target: "shoal::plugin", %plugin, "{message}"),
            types::Level::Warn => tracing::warn!(target: "shoal::plugin", %plugin, "{message}"),
            types::Level::Error => tracing::error!(target: "shoal::plugin", %plugin, "{message}"),
        }
    }

    fn register_counter(&mut self, name: String, help: String) -> Result<u32, String> {
        let name = sanitize(&name);
        let mut all = self
            .plugin
            .counters
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = all.iter().position(|c| c.name == name) {
            return Ok(i as u32);
        }
        if all.len() >= MAX_COUNTERS {
            return Err(format!(
                "counter {name} not registered: a plug-in has at most {MAX_COUNTERS}"
            ));
        }
        all.push(Arc::new(GuestCounter {
            name,
            help: help.chars().filter(|c| *c != '\n').take(200).collect(),
            value: AtomicU64::new(0),
        }));
        Ok((all.len() - 1) as u32)
    }

    fn counter_add(&mut self, counter: u32, delta: u64) -> u64 {
        match self.counter(counter) {
            Some(c) => c
                .value
                .fetch_add(delta, Ordering::Relaxed)
                .wrapping_add(delta),
            None => 0,
        }
    }

    fn members(&mut self) -> Vec<types::Member> {
        match self.node.table.get() {
            Some(t) => crate::membership::lock(t)
                .members()
                .iter()
                .map(member_to_wit)
                .collect(),
            None => Vec::new(),
        }
    }

    fn local_member(&mut self) -> types::Member {
        member_to_wit(&self.node.local)
    }

    fn queued_bytes(&mut self) -> u64 {
        self.node
            .metrics
            .async_queue_bytes
            .load(Ordering::Relaxed)
            .max(0) as u64
    }

    fn probe(
        &mut self,
        target: types::Member,
        options: types::ProbeOptions,
    ) -> Result<u64, String> {
        let Some(member) = member_from_wit(&target) else {
            return Err(format!(
                "cannot probe {:?}: the host is not an IP address",
                target.host
            ));
        };
        let addr = member.id.addr();
        let allowed =
            self.node.table.get().is_some_and(|t| {
                crate::membership::lock(t).may_probe(addr, std::time::Instant::now())
            });
        if !allowed {
            return Err(format!(
                "probe of {addr} refused: not the receiver of a current or recent member"
            ));
        }
        self.spawn_reporting("a probe", move |node, plugin, id| async move {
            let alive = probe_member(member.id.addr(), &options, &node.local_address).await;
            tracing::debug!(plugin = %plugin.name, member = %member.id, alive, "probe finished");
            HostEvent::ProbeResult {
                plugin,
                id,
                target: member,
                alive,
            }
        })
    }

    fn set_timer(&mut self, delay_ms: u32) -> Result<u64, String> {
        if delay_ms > MAX_TIMER_MS {
            return Err(format!(
                "timer of {delay_ms} ms refused: at most {MAX_TIMER_MS} ms"
            ));
        }
        self.spawn_reporting("a timer", move |_node, plugin, id| async move {
            let delay = Duration::from_millis(u64::from(delay_ms));
            // On the grid of the node's periodic work: one wake-up for all.
            let due = crate::clock::align(tokio::time::Instant::now() + delay, delay);
            tokio::time::sleep_until(due).await;
            HostEvent::Timer { plugin, id }
        })
    }

    fn raise_member_added(&mut self, m: types::Member) {
        match member_from_wit(&m) {
            Some(m) if self.outbox.len() < 1024 => self.outbox.push(Raised::Added(m)),
            _ => tracing::warn!(plugin = %self.plugin.name, "ignoring a raised member-added event"),
        }
    }

    fn raise_member_disappeared(&mut self, m: types::Member, reason: types::LeaveReason) {
        let reason = match reason {
            types::LeaveReason::Expired => LeaveReason::Expired,
            types::LeaveReason::Shutdown => LeaveReason::Shutdown,
        };
        match member_from_wit(&m) {
            Some(m) if self.outbox.len() < 1024 => self.outbox.push(Raised::Disappeared(m, reason)),
            _ => {
                tracing::warn!(plugin = %self.plugin.name, "ignoring a raised member-disappeared event")
            }
        }
    }
}

/// Connect attempts one probe makes at most, started a quarter of the
/// connect timeout apart.
const PROBE_ATTEMPTS: u32 = 4;

/// Connects to `addr` within `timeout`, starting a fresh attempt every
/// quarter of it while none succeeded: on a lossy link a lost SYN is
/// retransmitted by the kernel only after a second, which a 1 s connect
/// timeout never sees, so one lost packet would take a live member for
/// dead (measured: a false drop per few minutes at 20 % loss). With four
/// attempts in flight a probe fails only if all four handshakes are lost.
/// A refused connection (a reset: nothing listens there) is final at once.
async fn connect_persistently(
    addr: SocketAddr,
    timeout: Duration,
) -> Option<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    let step = timeout / PROBE_ATTEMPTS;
    let mut attempts = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut next = tokio::time::Instant::now();
    loop {
        if started < PROBE_ATTEMPTS && tokio::time::Instant::now() >= next {
            attempts.spawn(tokio::net::TcpStream::connect(addr));
            started += 1;
            next += step;
        }
        let wake = if started < PROBE_ATTEMPTS {
            next.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            Some(r) = attempts.join_next() => match r {
                Ok(Ok(s)) => return Some(s),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return None,
                // Unreachable for now, or the task failed: others may still answer.
                _ => {
                    if attempts.is_empty() && started >= PROBE_ATTEMPTS {
                        return None;
                    }
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return None; // dropping the set aborts the attempts still pending
        }
    }
}

/// Tribes' `TcpFailureDetector.memberAlive` (tribes.md §4.4): connect within
/// the timeout (with several attempts, [`connect_persistently`]); optionally
/// send a TCP_FAIL_DETECT message; optionally wait for its ACK. A refused or
/// timed-out connect means dead.
pub async fn probe_member(addr: SocketAddr, o: &types::ProbeOptions, local_address: &[u8]) -> bool {
    let connect = Duration::from_millis(u64::from(o.connect_timeout_ms.max(1)));
    let Some(mut s) = connect_persistently(addr, connect).await else {
        return false;
    };
    if o.send_test {
        let mut opts = SendOptions::BYTE_MESSAGE;
        if o.read_test {
            opts |= SendOptions::USE_ACK;
        }
        let mut frame = BytesMut::new();
        let id: [u8; 16] = rand::random();
        crate::wire::encode_message_frame(
            &mut frame,
            opts,
            crate::clock::now_ms(),
            &id,
            local_address,
            &TCP_FAIL_DETECT,
        );
        if tokio::time::timeout(connect, s.write_all(&frame))
            .await
            .map_or(true, |r| r.is_err())
        {
            return false;
        }
        if o.read_test {
            let wait = Duration::from_millis(u64::from(o.read_timeout_ms.max(1)));
            let mut buf = [0u8; 64];
            return matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_that_logs_per_message_is_held_to_its_budget() {
        let p = PluginShared::new("chatty".into(), 1);
        let written = (0..10_000).filter(|_| p.log_allowed().is_some()).count();
        // The burst, and what trickles back in while the loop runs.
        assert!((100..1_000).contains(&written), "{written} lines written");
        assert_eq!(
            p.logs_suppressed.load(Ordering::Relaxed),
            10_000 - written as u64
        );
        // After a pause the next line goes out and says what was held back.
        let mut b = p.log_budget.lock().expect("lock");
        b.at -= Duration::from_secs(1);
        assert_eq!(b.take(), Some(10_000 - written as u64));
    }

    #[tokio::test]
    async fn a_probe_connects_to_a_listener_and_a_refused_port_is_dead() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = l.local_addr().expect("addr");
        assert!(
            connect_persistently(open, Duration::from_secs(5))
                .await
                .is_some()
        );
        drop(l);
        assert!(
            connect_persistently(open, Duration::from_secs(5))
                .await
                .is_none()
        );
    }
}
