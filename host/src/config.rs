//! The node's configuration: one TOML file, one documented struct.
//!
//! Every key has a default (Tomcat's where it has one), unknown keys are
//! refused, and [`Config::load`] validates the whole file, naming the file and
//! the offending key in its error.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Names of the interceptors built into the binary (the plug-in host embeds
/// their code under these names).
pub const BUILTIN_NAMES: [&str; 6] = [
    "tcp-failure-detector",
    "phi-accrual-detector",
    "message-dispatch",
    "throughput",
    "domain-filter",
    "encrypt",
];

/// What happens to a message when its interceptor fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// Pass the message on as if the interceptor had said `pass`.
    #[default]
    FailOpen,
    /// Drop the message.
    FailClosed,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}: {cause}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("invalid config file {file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message (names the key and the line).
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid config file {file}: key `{key}`: {reason}")]
    Invalid {
        /// The file (`<built-in>` for configs built in code).
        file: PathBuf,
        /// Dotted key, e.g. `membership.drop_time_ms`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A whole node configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: identity.
    pub node: NodeConfig,
    /// `[membership]`: how members find each other.
    pub membership: MembershipConfig,
    /// `[receiver]`: the TCP listener.
    pub receiver: ReceiverConfig,
    /// `[sender]`: outgoing connections.
    pub sender: SenderConfig,
    /// `[dispatch]`: the asynchronous send queue.
    pub dispatch: DispatchConfig,
    /// `[runtime]`: the threads that run the node.
    pub runtime: RuntimeConfig,
    /// `[api]`: the HTTP admin endpoint.
    pub api: ApiConfig,
    /// `[plugins]`: limits for WebAssembly plug-ins.
    pub plugins: PluginsConfig,
    /// `[session]`: HTTP-session replication.
    pub session: SessionConfig,
    /// `[deploy]`: cluster-wide deploys of plug-ins.
    pub deploy: DeployConfig,
    /// `[security]`: the cluster key.
    pub security: SecurityConfig,
    /// `[[interceptor]]`: the channel's interceptor chain, top (nearest the
    /// application) first. Empty: the default chain (see `plugins.default_chain`).
    #[serde(rename = "interceptor")]
    pub interceptors: Vec<InterceptorConfig>,
    /// Directory of the config file; relative `wasm` paths start there.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// `[plugins]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// With no `[[interceptor]]`: run the built-in tcp-failure-detector,
    /// message-dispatch and throughput (true), or no chain at all (false).
    pub default_chain: bool,
    /// Deadline of one message-hook call (epoch interruption). Default 20 ms.
    /// Epochs count wall time; when one passes, the call is stopped only
    /// once it has used another deadline's worth of CPU (or 50 deadlines in
    /// all), so a call descheduled on a loaded machine is not failed
    /// ([`crate::wasm::engine::CallDeadline`]). Membership, heartbeat,
    /// probe, timer and stats calls get 1 s.
    pub call_deadline_ms: u64,
    /// Memory cap of one plug-in instance. Default 64 MiB.
    pub memory_limit_mb: u64,
    /// Instances per interceptor serving messages; 0 = one per CPU.
    pub instances: usize,
    /// Compiled-component cache directory: `""` (default) =
    /// `$XDG_CACHE_HOME/shoal/components` (or `~/.cache/…`), `"off"` = no
    /// cache, else a path.
    pub cache_dir: CacheDir,
    /// Channel heartbeat period (interceptors' `heartbeat` hook). Tribes: 5000 ms.
    pub heartbeat_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            default_chain: true,
            call_deadline_ms: 20,
            memory_limit_mb: 64,
            instances: 0,
            cache_dir: CacheDir::Default,
            heartbeat_ms: 5000,
        }
    }
}

/// One `[[interceptor]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptorConfig {
    /// Name in logs and metrics; without `wasm`, the built-in of that name.
    pub name: String,
    /// Path of a `.wasm` component (relative to the config file).
    #[serde(default)]
    pub wasm: Option<String>,
    /// `"fail-open"` (default: a failing plug-in passes the message) or `"fail-closed"`.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Settings given to the plug-in's `create`, as strings.
    #[serde(default)]
    pub settings: toml::Table,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name for logs and the admin API. Default `"shoal"`.
    pub name: String,
    /// Cluster domain carried in the member packet (Tomcat: empty). Members of
    /// other domains are still members unless a domain filter is configured.
    pub domain: String,
    /// The route suffix of the session ids this node issues (`ID.route`,
    /// Tomcat's Engine `jvmRoute`); a balancer sticks users to the node by
    /// it. Default: the node name.
    pub jvm_route: Option<String>,
    /// A free label advertised to the other members (placement policies
    /// use it to spread copies over zones). Default: empty.
    pub zone: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "shoal".into(),
            domain: String::new(),
            jvm_route: None,
            zone: String::new(),
        }
    }
}

impl NodeConfig {
    /// The jvmRoute: `jvm_route`, else the node name.
    pub fn route(&self) -> &str {
        self.jvm_route.as_deref().unwrap_or(&self.name)
    }
}

/// When a session write returns (Tomcat's `channelSendOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(try_from = "RawSendMode", into = "String")]
pub enum SessionSendMode {
    /// 8: the write returns before replication.
    #[default]
    Async,
    /// 6: the write returns once every member that must hold a copy has
    /// acknowledged having applied it.
    SyncAck,
}

impl SessionSendMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::SyncAck => "sync-ack",
        }
    }
}

impl From<SessionSendMode> for String {
    fn from(m: SessionSendMode) -> Self {
        m.as_str().into()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSendMode {
    Number(i64),
    Text(String),
}

impl TryFrom<RawSendMode> for SessionSendMode {
    type Error = String;
    fn try_from(r: RawSendMode) -> Result<Self, String> {
        match r {
            RawSendMode::Number(8) => Ok(Self::Async),
            RawSendMode::Number(6) => Ok(Self::SyncAck),
            RawSendMode::Text(t) if t == "async" => Ok(Self::Async),
            RawSendMode::Text(t) if t == "sync-ack" => Ok(Self::SyncAck),
            RawSendMode::Number(n) => Err(format!(
                "send_options {n} is not supported: use 8 (\"async\") or 6 (\"sync-ack\")"
            )),
            RawSendMode::Text(t) => Err(format!(
                "send_options {t:?} is not one of \"async\", \"sync-ack\", 8, 6"
            )),
        }
    }
}

/// `[security]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The cluster key file (`shoal keygen --out FILE`), relative to the
    /// config file; `""` (the default): no key, and the wire is Tribes'
    /// own (Tomcat-compatible, unauthenticated). With a key, heartbeats
    /// carry a MAC and frames are sealed (AES-256-GCM): only nodes with
    /// the key are heard. One key per line: the first seals, all are
    /// accepted (a key roll); the file is read again when it changes.
    pub key_file: String,
    /// How far a heartbeat's or frame's time may be from this node's clock
    /// (ms) before it is refused as a replay. Default 10 000 (Tribes'
    /// EncryptInterceptor replay window); the nodes' clocks must agree
    /// within it (NTP).
    pub max_clock_skew_ms: u64,
    /// How often the key file is checked for changes (ms). Default 2000.
    pub reload_ms: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            key_file: String::new(),
            max_clock_skew_ms: 10_000,
            reload_ms: 2_000,
        }
    }
}

impl SecurityConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(1_000..=600_000).contains(&self.max_clock_skew_ms) {
            return Err(Invalid::new(
                "security.max_clock_skew_ms",
                "must be 1000 to 600000".into(),
            ));
        }
        if !(100..=3_600_000).contains(&self.reload_ms) {
            return Err(Invalid::new(
                "security.reload_ms",
                "must be 100 to 3600000".into(),
            ));
        }
        Ok(())
    }

    /// The key file, relative to `base` (the config file's directory), if
    /// one is set.
    pub fn key_path(&self, base: Option<&Path>) -> Option<PathBuf> {
        match self.key_file.trim() {
            "" => None,
            f if Path::new(f).is_absolute() => Some(PathBuf::from(f)),
            f => Some(base.unwrap_or(Path::new(".")).join(f)),
        }
    }
}

/// `[deploy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Public keys (`ed25519:` and 64 hex digits) whose signed deploys
    /// this node accepts; empty (the default): it accepts none.
    pub keys: Vec<String>,
    /// Where deployed components are stored, so a restart runs them:
    /// relative to the config file's directory; `"off"`: not stored.
    pub dir: String,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            dir: "deployed".into(),
        }
    }
}

impl DeployConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.keys.len() > 64 {
            return Err(Invalid::new("deploy.keys", "at most 64 keys".into()));
        }
        crate::deploy::sign::TrustedKeys::parse(&self.keys)
            .map(|_| ())
            .map_err(|e| Invalid::new("deploy.keys", e))
    }

    /// The directory deployed components are stored in, if any: relative
    /// to `base` (the config file's directory; without one, the current
    /// directory).
    pub fn store_dir(&self, base: Option<&Path>) -> Option<PathBuf> {
        match self.dir.trim() {
            "" | "off" => None,
            d => {
                let d = Path::new(d);
                Some(if d.is_absolute() {
                    d.to_path_buf()
                } else {
                    base.unwrap_or(Path::new(".")).join(d)
                })
            }
        }
    }
}

/// `[session]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Run the session engine and its API (default true).
    pub enabled: bool,
    /// `"delta"` (default: every member holds every session, Tomcat's
    /// DeltaManager), `"backup"` (one primary and one backup per session,
    /// BackupManager), or the path of a policy `.wasm` component.
    pub policy: String,
    /// `"async"` / 8 (default, Tomcat's) or `"sync-ack"` / 6.
    pub send_options: SessionSendMode,
    /// Default idle time before a session expires, s (Tomcat: 1800).
    pub max_inactive_s: u64,
    /// How long a joining node waits for its state transfer before it
    /// becomes ready anyway (logged and counted), ms (Tomcat: 60000).
    pub state_transfer_timeout_ms: u64,
    /// Most sessions (and location entries) this node holds.
    pub max_sessions: usize,
    /// Most attributes in one session.
    pub max_attributes: usize,
    /// Longest attribute value (its JSON text), bytes.
    pub max_attribute_bytes: usize,
    /// Largest session (names and values), bytes.
    pub max_session_bytes: usize,
    /// What a failing policy does to replication: `"fail-open"` (default:
    /// copies go to every member) or `"fail-closed"` (the change stays on
    /// this node until the policy works again).
    pub failure_mode: FailureMode,
    /// A separate listen address for the session API; default: the admin
    /// API's listener.
    pub listen: Option<SocketAddr>,
    /// Settings given to the policy's `create`, as strings.
    pub settings: toml::Table,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            policy: "delta".into(),
            send_options: SessionSendMode::Async,
            max_inactive_s: 1800,
            state_transfer_timeout_ms: 60_000,
            max_sessions: 1_000_000,
            max_attributes: 256,
            max_attribute_bytes: 256 * 1024,
            max_session_bytes: 1024 * 1024,
            failure_mode: FailureMode::FailOpen,
            listen: None,
            settings: toml::Table::new(),
        }
    }
}

/// Names of the session policies built into the binary.
pub const BUILTIN_POLICIES: [&str; 2] = ["delta", "backup"];

impl SessionConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.policy.trim().is_empty() {
            return Err(Invalid::new(
                "session.policy",
                "must be \"delta\", \"backup\" or the path of a .wasm component".into(),
            ));
        }
        if self.max_inactive_s == 0 || self.max_inactive_s > 365 * 86_400 {
            return Err(Invalid::new(
                "session.max_inactive_s",
                "must be between 1 and 31536000 (a year)".into(),
            ));
        }
        if self.state_transfer_timeout_ms > 3_600_000 {
            return Err(Invalid::new(
                "session.state_transfer_timeout_ms",
                "must be at most 3600000 (0: do not wait)".into(),
            ));
        }
        if self.max_sessions == 0 || self.max_sessions > 100_000_000 {
            return Err(Invalid::new(
                "session.max_sessions",
                "must be between 1 and 100000000".into(),
            ));
        }
        if self.max_attributes == 0 || self.max_attributes > 65_536 {
            return Err(Invalid::new(
                "session.max_attributes",
                "must be between 1 and 65536".into(),
            ));
        }
        if self.max_attribute_bytes == 0 || self.max_attribute_bytes > 64 << 20 {
            return Err(Invalid::new(
                "session.max_attribute_bytes",
                "must be between 1 and 67108864".into(),
            ));
        }
        if self.max_session_bytes < self.max_attribute_bytes || self.max_session_bytes > 64 << 20 {
            return Err(Invalid::new(
                "session.max_session_bytes",
                "must be at least max_attribute_bytes and at most 67108864".into(),
            ));
        }
        for (k, v) in &self.settings {
            if v.is_table() || v.is_array() {
                return Err(Invalid::new(
                    &format!("session.settings.{k}"),
                    "must be a string, number or boolean".into(),
                ));
            }
        }
        Ok(())
    }
}

/// How members are discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MembershipKind {
    /// UDP multicast heartbeats to `address:port` (Tomcat's McastService).
    #[default]
    Multicast,
    /// UDP unicast heartbeats to each address in `members`.
    Static,
    /// UDP unicast heartbeats to every address `dns_name` resolves to (A and
    /// AAAA), resolved again every `dns_refresh_ms` (a Kubernetes headless
    /// Service, say).
    Dns,
}

/// `[membership]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipConfig {
    /// `"multicast"` (default), `"static"` or `"dns"`.
    pub kind: MembershipKind,
    /// Multicast group. Tomcat: 228.0.0.4.
    pub address: Ipv4Addr,
    /// Multicast port. Tomcat: 45564. Address and port define the cluster.
    pub port: u16,
    /// Heartbeat interval. Tomcat: 500 ms.
    pub frequency_ms: u64,
    /// A member silent for longer than this is dropped. Tomcat: 3000 ms.
    pub drop_time_ms: u64,
    /// Multicast TTL; unset leaves the OS default (1).
    pub ttl: Option<u32>,
    /// Address of the interface to multicast on (Tomcat's `bind`); unset: the OS's choice.
    /// Use `127.0.0.1` for a cluster on one machine.
    pub bind: Option<Ipv4Addr>,
    /// Do not receive our own multicast (IP_MULTICAST_LOOP off). Tomcat: false.
    pub local_loopback_disabled: bool,
    /// For `kind = "static"`: every member's receiver address `host:port`. The
    /// node heartbeats over UDP to the same host and port number; its own entry
    /// may be listed (it is skipped).
    pub members: Vec<String>,
    /// Keep one idle TCP connection to every member's receiver, so that a
    /// crashed member (its kernel closes the connection at once) is
    /// reported to the failure detector within milliseconds rather than
    /// after `drop_time_ms`, also on a cluster with no traffic. Default: on.
    pub watch: bool,
    /// Members held at most; heartbeats of further new members are refused
    /// and counted (`shoal_heartbeats_refused_total`).
    pub max_members: usize,
    /// New members admitted per second at most (a flood of forged members
    /// cannot crowd out the node's own work); the others are heard again at
    /// their next heartbeat.
    pub max_new_members_per_s: u32,
    /// Accept a heartbeat only from the address its member advertises, so
    /// that a forged shutdown cannot evict a live member nor a forged
    /// refresh keep a dead one. Turn off only for nodes that send from
    /// another interface than they advertise.
    pub check_source: bool,
    /// For `kind = "dns"`: the name whose A and AAAA records are the members'
    /// addresses (e.g. a Kubernetes headless Service,
    /// `shoal.default.svc.cluster.local`). Required for that kind.
    pub dns_name: String,
    /// For `kind = "dns"`: how often the name is resolved again. Default
    /// 5000 ms: a new member is heard from within about one refresh, and a
    /// node asks its resolver once per 5 s (CoreDNS answers a headless
    /// Service with a TTL of 5 s by default). 100 to 3600000.
    pub dns_refresh_ms: u64,
    /// For `kind = "dns"`: the DNS server to ask, `"ip:port"`; unset (the
    /// default): the system's resolvers, search domains and `ndots` from
    /// `/etc/resolv.conf` (and `/etc/hosts`).
    pub dns_server: Option<String>,
    /// For `kind = "dns"`: the UDP port heartbeats go to at each resolved
    /// address; unset (the default): this node's own receiver port, so every
    /// member must listen on the same port (set `receiver.auto_bind = 1`).
    pub dns_port: Option<u16>,
    /// While datagrams come faster than this, read them in batches this
    /// far apart instead of one wake-up each (0: each as it comes). An idle
    /// node in a large group is woken for every heartbeat otherwise (60 a
    /// second at 30 members); the price is that a heartbeat, a shutdown
    /// announcement or a new member is seen up to this much later (queued
    /// datagrams are always read before members are expired and before a
    /// broken connection is judged). Never while a plug-in reads heartbeat
    /// arrival times (the phi-accrual detector). Unset (the default): half
    /// of `frequency_ms`, at most 250 ms. Less than `frequency_ms`.
    pub receive_batch_ms: Option<u64>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            kind: MembershipKind::Multicast,
            address: Ipv4Addr::new(228, 0, 0, 4),
            port: 45564,
            frequency_ms: 500,
            drop_time_ms: 3000,
            ttl: None,
            bind: None,
            local_loopback_disabled: false,
            members: Vec::new(),
            watch: true,
            max_members: 1024,
            max_new_members_per_s: 100,
            check_source: true,
            dns_name: String::new(),
            dns_refresh_ms: 5000,
            dns_server: None,
            dns_port: None,
            receive_batch_ms: None,
        }
    }
}

impl MembershipConfig {
    /// `receive_batch_ms`, or its default for `frequency_ms`.
    pub fn receive_batch_ms(&self) -> u64 {
        self.receive_batch_ms
            .unwrap_or((self.frequency_ms / 2).min(250))
    }

    /// The static member addresses, parsed. Call after [`Config::validate`].
    pub fn static_members(&self) -> Vec<SocketAddr> {
        self.members.iter().filter_map(|m| m.parse().ok()).collect()
    }

    /// `dns_server`, parsed; `None` when unset or empty (the system's
    /// resolvers). Call after [`Config::validate`].
    pub fn dns_server_addr(&self) -> Option<SocketAddr> {
        self.dns_server
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| s.trim().parse().ok())
    }
}

/// `[receiver]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Address to listen on and advertise: an IP, or `"auto"` (Tomcat's default)
    /// for the address of the interface that routes to the multicast group.
    pub address: ReceiverAddress,
    /// First port to try. Tomcat: 4000. `0` lets the OS choose.
    pub port: u16,
    /// How many consecutive ports to try (Tomcat's autoBind): 4000..4099 by default.
    pub auto_bind: u16,
    /// Maximum simultaneous inbound connections; more are refused and counted.
    pub max_connections: usize,
    /// Largest accepted frame (data bytes). Tribes has no limit; default 16 MiB.
    pub max_frame_bytes: usize,
    /// A peer that leaves a frame incomplete this long is disconnected.
    /// Tomcat's receiver timeout: 3000 ms.
    pub stall_timeout_ms: u64,
    /// After a connection's frames are handled, poll it for the next bytes
    /// without parking for up to this many µs (one connection per node at a
    /// time; a connection whose waits keep lasting longer than twice this
    /// stops polling until a wait is short again); 0 = never. Not in Tomcat.
    pub busy_poll_us: u64,
    /// Read buffers of all inbound connections together, at most; a
    /// connection whose frame would take the node past it is closed and
    /// counted. Buffers grow with the bytes that actually arrive, never
    /// from a frame header's claim. Default 256 MiB (16 frames of the
    /// largest size).
    pub max_buffer_bytes: usize,
    /// A connection that carries no byte this long is closed (0: never).
    /// Peers reconnect as needed. Default one hour.
    pub idle_timeout_ms: u64,
    /// Inbound connections from one IP address at most (a member opens up
    /// to `sender.pool_size` plus one watch connection); more are refused
    /// and counted, so one address cannot take every connection slot.
    pub max_connections_per_address: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            address: ReceiverAddress::Auto,
            port: 4000,
            auto_bind: 100,
            max_connections: 1024,
            max_frame_bytes: crate::wire::DEFAULT_MAX_FRAME_BYTES,
            stall_timeout_ms: 3000,
            busy_poll_us: 50,
            max_buffer_bytes: 256 << 20,
            idle_timeout_ms: 3_600_000,
            max_connections_per_address: 256,
        }
    }
}

/// `[sender]`
/// Longest busy-poll budget accepted (µs): a poller holds a runtime worker.
pub const MAX_BUSY_POLL_US: u64 = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Time allowed for one send to one member: connect, write and ACK. Tomcat: 3000 ms.
    pub timeout_ms: u64,
    /// Reconnect-and-resend attempts after a connection error. Tomcat: 1.
    pub max_retry_attempts: u32,
    /// Maximum concurrent connections to one member. Tomcat's poolSize: 25.
    pub pool_size: usize,
    /// Time to wait for a free pooled connection. Tomcat's maxWait: 3000 ms.
    pub max_wait_ms: u64,
    /// While waiting for an ACK, poll the socket without parking for up to
    /// this many µs (one waiting send per node at a time); 0 = never. Waking
    /// a parked thread costs tens of µs on a virtual machine, more than a
    /// loopback or LAN round trip. The same budget bounds the spin of a
    /// runtime worker about to park while pipelined sends wait for ACKs
    /// (`transport::park_spin`). Not in Tomcat.
    pub busy_poll_us: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 3000,
            max_retry_attempts: 1,
            pool_size: 25,
            max_wait_ms: 3000,
            busy_poll_us: 50,
        }
    }
}

/// `[dispatch]`: the queue behind asynchronous sends (Tomcat's MessageDispatchInterceptor).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Bytes allowed in the queue. Tomcat: 64 MiB.
    pub max_queue_size: usize,
    /// When the queue is full: send in the caller (true, Tomcat's default) or fail.
    pub always_send: bool,
    /// Tasks draining the queue (Tomcat: up to 10 threads).
    pub workers: usize,
    /// Queued messages to a member arrive in the order queued: the workers
    /// send their batches in turn over one connection per member (true,
    /// shoal's default). False: they send in parallel over several
    /// connections, faster but a message may overtake an earlier one
    /// (Tribes' MessageDispatchInterceptor behaves so).
    pub ordered: bool,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_queue_size: 64 * 1024 * 1024,
            always_send: true,
            workers: 4,
            ordered: true,
        }
    }
}

/// `[runtime]`: the async runtime `shoal run` builds (an app embedding a
/// node brings its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; 0 (default) = half the CPUs the process may use,
    /// at least one. A node shares its machine with the application it
    /// replicates for, and every wake-up that hands a task to another
    /// worker costs a futex wake and a context switch: on 2 cores one
    /// worker moved 40 % more concurrent sync-ACK sends than two
    /// (docs/benchmarks.md, "One runtime worker on 2 cores").
    pub worker_threads: usize,
    /// Busy-polling (`sender.busy_poll_us`, `receiver.busy_poll_us`) and
    /// the spin before parking pause while the kernel reports that tasks
    /// of this machine wait for a CPU (`/proc/pressure/cpu`): a poller
    /// then holds the core its peer needs. Default true; false polls
    /// whatever the pressure (say, beside niced batch jobs that may wait).
    /// Process-wide: set by [`Self::build`].
    pub cpu_pressure_gate: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            cpu_pressure_gate: true,
        }
    }
}

/// Most runtime workers accepted.
pub const MAX_WORKER_THREADS: usize = 256;

impl RuntimeConfig {
    /// The worker threads to start: the configured number, or half of
    /// `cpus` (the CPUs this process may use), at least one.
    pub fn workers(&self, cpus: usize) -> usize {
        match self.worker_threads {
            0 => (cpus / 2).max(1),
            n => n,
        }
    }

    /// A multi-threaded Tokio runtime with [`Self::workers`] workers for
    /// the CPUs this process may use, I/O and timers enabled.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        crate::transport::cpu_pressure::set_enabled(self.cpu_pressure_gate);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.workers(cpus))
            .on_thread_park(crate::transport::park_spin::before_park)
            .on_thread_unpark(crate::transport::park_spin::after_unpark)
            .enable_all()
            .build()
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(Invalid::new(
                "runtime.worker_threads",
                format!("must be 0 (half the CPUs) to {MAX_WORKER_THREADS}"),
            ));
        }
        Ok(())
    }
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address of the HTTP admin API; `""` or `"off"` disables it.
    /// Default 127.0.0.1:8080.
    pub listen: ApiListen,
    /// A file holding the bearer token every request must carry
    /// (`Authorization: Bearer TOKEN`), relative to the config file; `""`
    /// (the default): no token, and then the API listens on loopback only.
    pub token_file: String,
    /// With a token: `/metrics` and `/api/ready` answer without it (for
    /// scrapers and health checks).
    pub open_health: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: ApiListen::At(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))),
            token_file: String::new(),
            open_health: true,
        }
    }
}

impl ApiConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let ApiListen::At(a) = self.listen
            && !a.ip().is_loopback()
            && self.token_file.trim().is_empty()
        {
            return Err(Invalid::new(
                "api.listen",
                format!(
                    "{a} is not a loopback address: the admin API can change the node's code, so it \
                     listens elsewhere only with a token (set api.token_file)"
                ),
            ));
        }
        Ok(())
    }

    /// Reads the token file (relative to `base`), if one is set: its first
    /// line, at least 16 characters.
    pub fn token(&self, base: Option<&Path>) -> Result<Option<String>, String> {
        let f = self.token_file.trim();
        if f.is_empty() {
            return Ok(None);
        }
        let path = Path::new(f);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.unwrap_or(Path::new(".")).join(path)
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("api.token_file {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "api.token_file {}: the token must be at least 16 visible ASCII characters on the first line",
                path.display()
            ));
        }
        Ok(Some(token))
    }

    /// The listen address, if the API is enabled.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        match self.listen {
            ApiListen::At(a) => Some(a),
            ApiListen::Off => None,
        }
    }
}

/// `receiver.address`: an IP address, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum ReceiverAddress {
    /// The address of the interface that routes to the multicast group (or
    /// `membership.bind`).
    #[default]
    Auto,
    /// This address.
    Ip(IpAddr),
}

impl TryFrom<String> for ReceiverAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Ip)
            .map_err(|_| format!("{s:?} is neither an IP address nor \"auto\""))
    }
}

impl From<IpAddr> for ReceiverAddress {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

/// `api.listen`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ApiListen {
    /// No admin API (`""` or `"off"`).
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl TryFrom<String> for ApiListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s == "off" {
            return Ok(Self::Off);
        }
        s.parse()
            .map(Self::At)
            .map_err(|_| format!("{s:?} is not an address like \"127.0.0.1:8080\" (or \"off\")"))
    }
}

/// `plugins.cache_dir`: where compiled components are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(from = "String")]
pub enum CacheDir {
    /// `""`: `$SHOAL_CACHE_DIR`, `$XDG_CACHE_HOME/shoal/components` or
    /// `~/.cache/shoal/components`.
    #[default]
    Default,
    /// `"off"`: compile at every start.
    Off,
    /// This directory.
    Dir(PathBuf),
}

impl From<String> for CacheDir {
    fn from(s: String) -> Self {
        match s.as_str() {
            "" => Self::Default,
            "off" => Self::Off,
            _ => Self::Dir(PathBuf::from(s)),
        }
    }
}

/// Placeholder file name for configurations not read from a file.
const BUILT_IN: &str = "<built-in>";

/// The 1-based line of byte `offset` in `text`, and the dotted key written on
/// that line (`section.key`), if the line is a `key = value` line.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned());
    let section = text[..offset].lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(|s| s.trim_matches(['[', ' ']).to_owned())
    });
    let key = key.filter(|k| !k.is_empty()).map(|k| match section {
        Some(s) if !s.is_empty() => format!("{s}.{k}"),
        _ => k,
    });
    (line_no, key)
}

impl Config {
    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            file: path.to_owned(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `file` is used in errors only.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: match e.span() {
                Some(span) => {
                    let (line, key) = locate(text, span.start);
                    match key {
                        Some(k) => format!("line {line}: key `{k}`: {}", e.message()),
                        None => format!("line {line}: {}", e.message()),
                    }
                }
                None => e.message().to_owned(),
            },
        })?;
        let mut cfg = cfg;
        cfg.base_dir = file.parent().map(Path::to_path_buf);
        cfg.validate_in(file)?;
        Ok(cfg)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in(Path::new(BUILT_IN))
    }

    /// The sections of `new` that differ from this config in a way a
    /// running node cannot apply (everything but `[[interceptor]]` and
    /// `plugins.default_chain`), by name.
    pub fn sections_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut differs = |name: &'static str, a: String, b: String| {
            if a != b {
                out.push(name);
            }
        };
        differs(
            "node",
            format!("{:?}", self.node),
            format!("{:?}", new.node),
        );
        differs(
            "membership",
            format!("{:?}", self.membership),
            format!("{:?}", new.membership),
        );
        differs(
            "receiver",
            format!("{:?}", self.receiver),
            format!("{:?}", new.receiver),
        );
        differs(
            "sender",
            format!("{:?}", self.sender),
            format!("{:?}", new.sender),
        );
        differs(
            "dispatch",
            format!("{:?}", self.dispatch),
            format!("{:?}", new.dispatch),
        );
        differs(
            "runtime",
            format!("{:?}", self.runtime),
            format!("{:?}", new.runtime),
        );
        differs("api", format!("{:?}", self.api), format!("{:?}", new.api));
        differs(
            "session",
            format!("{:?}", self.session),
            format!("{:?}", new.session),
        );
        differs(
            "deploy",
            format!("{:?}", self.deploy),
            format!("{:?}", new.deploy),
        );
        let plugins = |p: &PluginsConfig| {
            let mut p = p.clone();
            p.default_chain = true;
            format!("{p:?}")
        };
        differs("plugins", plugins(&self.plugins), plugins(&new.plugins));
        out
    }

    fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        let sections = [
            self.node.validate(),
            self.membership.validate(),
            self.receiver.validate(),
            self.sender.validate(),
            self.dispatch.validate(),
            self.runtime.validate(),
            self.plugins.validate(),
            self.session.validate(),
            self.deploy.validate(),
            self.security.validate(),
            self.api.validate(),
            validate_interceptors(&self.interceptors),
        ];
        for r in sections {
            r.map_err(|Invalid { key, reason }| ConfigError::Invalid {
                file: file.to_owned(),
                key,
                reason,
            })?;
        }
        Ok(())
    }
}

/// A bad value: its key and why.
#[derive(Debug)]
struct Invalid {
    key: String,
    reason: String,
}

impl Invalid {
    fn new(key: &str, reason: String) -> Self {
        Self {
            key: key.to_owned(),
            reason,
        }
    }
}

impl NodeConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.domain.chars().any(|c| c as u32 > 0xff) {
            return Err(Invalid::new(
                "node.domain",
                "must be ISO-8859-1 text".into(),
            ));
        }
        let route = self.route();
        if route.is_empty()
            || route.len() > 64
            || !route
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let key = if self.jvm_route.is_some() {
                "node.jvm_route"
            } else {
                "node.name"
            };
            return Err(Invalid::new(
                key,
                format!(
                    "{route:?} cannot be a jvmRoute (the suffix of session ids): use 1 to 64 of A-Z a-z 0-9 - _{}",
                    if self.jvm_route.is_none() {
                        "; or set node.jvm_route"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.zone.len() > 64 || self.zone.contains(['"', '\\', '\n']) {
            return Err(Invalid::new(
                "node.zone",
                "must be at most 64 characters without quotes".into(),
            ));
        }
        Ok(())
    }
}

impl MembershipConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !self.address.is_multicast() {
            return Err(Invalid::new(
                "membership.address",
                format!("{} is not a multicast address", self.address),
            ));
        }
        if self.frequency_ms == 0 || self.frequency_ms > 60_000 {
            return Err(Invalid::new(
                "membership.frequency_ms",
                "must be between 1 and 60000".into(),
            ));
        }
        if matches!(self.receive_batch_ms, Some(b) if b >= self.frequency_ms) {
            return Err(Invalid::new(
                "membership.receive_batch_ms",
                format!("must be less than frequency_ms ({})", self.frequency_ms),
            ));
        }
        if self.drop_time_ms <= self.frequency_ms {
            return Err(Invalid::new(
                "membership.drop_time_ms",
                format!("must be greater than frequency_ms ({})", self.frequency_ms),
            ));
        }
        if matches!(self.ttl, Some(t) if t > 255) {
            return Err(Invalid::new(
                "membership.ttl",
                "must be between 0 and 255".into(),
            ));
        }
        for (i, s) in self.members.iter().enumerate() {
            if s.parse::<SocketAddr>().is_err() {
                return Err(Invalid::new(
                    &format!("membership.members[{i}]"),
                    format!("{s:?} is not an address like \"127.0.0.1:4001\""),
                ));
            }
        }
        if self.kind == MembershipKind::Static && self.members.is_empty() {
            return Err(Invalid::new(
                "membership.members",
                "kind = \"static\" needs at least one member".into(),
            ));
        }
        if !(1..=65_536).contains(&self.max_members) {
            return Err(Invalid::new(
                "membership.max_members",
                format!("must be 1..=65536, not {}", self.max_members),
            ));
        }
        if !(1..=100_000).contains(&self.max_new_members_per_s) {
            return Err(Invalid::new(
                "membership.max_new_members_per_s",
                format!("must be 1..=100000, not {}", self.max_new_members_per_s),
            ));
        }
        self.validate_dns()
    }

    fn validate_dns(&self) -> Result<(), Invalid> {
        if self.kind == MembershipKind::Dns && self.dns_name.trim().is_empty() {
            return Err(Invalid::new(
                "membership.dns_name",
                "kind = \"dns\" needs the name whose A/AAAA records list the members \
                 (e.g. a Kubernetes headless Service name)"
                    .into(),
            ));
        }
        if let Err(why) = check_dns_name(&self.dns_name) {
            return Err(Invalid::new(
                "membership.dns_name",
                format!("{:?} is not a DNS name: {why}", self.dns_name),
            ));
        }
        if !(100..=3_600_000).contains(&self.dns_refresh_ms) {
            return Err(Invalid::new(
                "membership.dns_refresh_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        if let Some(s) = self.dns_server.as_deref().filter(|s| !s.trim().is_empty()) {
            match s.trim().parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => {}
                _ => {
                    return Err(Invalid::new(
                        "membership.dns_server",
                        format!(
                            "{s:?} is not a DNS server address like \"10.96.0.10:53\" \
                             (leave it unset for the system's resolvers)"
                        ),
                    ));
                }
            }
        }
        if self.dns_port == Some(0) {
            return Err(Invalid::new(
                "membership.dns_port",
                "must be between 1 and 65535 (leave it unset for the receiver's port)".into(),
            ));
        }
        Ok(())
    }
}

/// Whether `name` can be looked up: an empty name passes (it is checked
/// against the kind separately); otherwise at most 253 characters of dot
/// separated labels of 1 to 63 of `A-Z a-z 0-9 - _`, an optional final dot.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    let labels = name.strip_suffix('.').unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must have 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("labels may only hold A-Z a-z 0-9 - _");
        }
    }
    Ok(())
}

impl ReceiverConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.auto_bind == 0 {
            return Err(Invalid::new(
                "receiver.auto_bind",
                "must be at least 1".into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return Err(Invalid::new(
                "receiver.max_connections",
                "must be between 1 and 65536".into(),
            ));
        }
        if !(1024..=1 << 30).contains(&self.max_frame_bytes) {
            return Err(Invalid::new(
                "receiver.max_frame_bytes",
                "must be between 1024 and 1073741824".into(),
            ));
        }
        if self.stall_timeout_ms == 0 {
            return Err(Invalid::new(
                "receiver.stall_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.max_buffer_bytes < self.max_frame_bytes + 64 || self.max_buffer_bytes > 1 << 40 {
            return Err(Invalid::new(
                "receiver.max_buffer_bytes",
                "must hold at least one frame of max_frame_bytes, and be at most 1 TiB".into(),
            ));
        }
        if self.max_connections_per_address == 0 {
            return Err(Invalid::new(
                "receiver.max_connections_per_address",
                "must be at least 1".into(),
            ));
        }
        if self.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(Invalid::new(
                "receiver.busy_poll_us",
                format!("must be at most {MAX_BUSY_POLL_US} (µs; 0 turns polling off)"),
            ));
        }
        Ok(())
    }
}

impl SenderConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(Invalid::new(
                "sender.busy_poll_us",
                format!("must be at most {MAX_BUSY_POLL_US} (µs; 0 turns polling off)"),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(Invalid::new(
                "sender.timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return Err(Invalid::new(
                "sender.pool_size",
                "must be between 1 and 1024".into(),
            ));
        }
        if self.max_retry_attempts > 100 {
            return Err(Invalid::new(
                "sender.max_retry_attempts",
                "must be at most 100".into(),
            ));
        }
        Ok(())
    }
}

impl DispatchConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.workers == 0 || self.workers > 256 {
            return Err(Invalid::new(
                "dispatch.workers",
                "must be between 1 and 256".into(),
            ));
        }
        if self.max_queue_size == 0 || self.max_queue_size > 1 << 34 {
            return Err(Invalid::new(
                "dispatch.max_queue_size",
                "must be between 1 and 17179869184".into(),
            ));
        }
        Ok(())
    }
}

impl PluginsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.call_deadline_ms == 0 || self.call_deadline_ms > 10_000 {
            return Err(Invalid::new(
                "plugins.call_deadline_ms",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.memory_limit_mb == 0 || self.memory_limit_mb > 4096 {
            return Err(Invalid::new(
                "plugins.memory_limit_mb",
                "must be between 1 and 4096".into(),
            ));
        }
        if self.instances > 256 {
            return Err(Invalid::new(
                "plugins.instances",
                "must be at most 256".into(),
            ));
        }
        if !(100..=3_600_000).contains(&self.heartbeat_ms) {
            return Err(Invalid::new(
                "plugins.heartbeat_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        Ok(())
    }
}

fn validate_interceptors(interceptors: &[InterceptorConfig]) -> Result<(), Invalid> {
    let mut names = std::collections::HashSet::new();
    for (i, ic) in interceptors.iter().enumerate() {
        let key = |k: &str| format!("interceptor[{i}].{k}");
        if ic.name.trim().is_empty() || ic.name.len() > 64 || ic.name.contains(['"', '\\', '\n']) {
            return Err(Invalid::new(
                &key("name"),
                "must be 1 to 64 characters without quotes".into(),
            ));
        }
        if !names.insert(ic.name.as_str()) {
            return Err(Invalid::new(
                &key("name"),
                format!("{:?} is used twice", ic.name),
            ));
        }
        if ic.wasm.is_none() && !BUILTIN_NAMES.contains(&ic.name.as_str()) {
            return Err(Invalid::new(
                &key("wasm"),
                format!(
                    "missing: {:?} is not a built-in interceptor ({})",
                    ic.name,
                    BUILTIN_NAMES.join(", ")
                ),
            ));
        }
        for (k, v) in &ic.settings {
            if matches!(v, toml::Value::Array(_) | toml::Value::Table(_)) {
                return Err(Invalid::new(
                    &key(&format!("settings.{k}")),
                    "must be a string, number or boolean".into(),
                ));
            }
        }
        if ic.name == "encrypt" && ic.wasm.is_none() {
            validate_encrypt(interceptors, i, ic)?;
        }
    }
    Ok(())
}

/// The built-in `encrypt` (Tomcat's EncryptInterceptor) must fail closed: a
/// failing encrypt that passed messages would send plaintext and deliver
/// ciphertext. And, as Tomcat's start check, no TCP failure detector may be
/// above it: the detectors' probe message travels unencrypted and must be
/// swallowed before the decryption sees it.
fn validate_encrypt(
    interceptors: &[InterceptorConfig],
    i: usize,
    ic: &InterceptorConfig,
) -> Result<(), Invalid> {
    if ic.failure_mode != FailureMode::FailClosed {
        return Err(Invalid::new(
            &format!("interceptor[{i}].failure_mode"),
            "must be \"fail-closed\" for encrypt (a failing encrypt must never pass a message in clear)"
                .into(),
        ));
    }
    if let Some(j) = interceptors[..i]
        .iter()
        .position(|d| d.wasm.is_none() && d.name == "tcp-failure-detector")
    {
        return Err(Invalid::new(
            &format!("interceptor[{j}].name"),
            "tcp-failure-detector must be listed below encrypt (as in Tomcat: its probe is not encrypted)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn defaults_are_tomcats() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.membership.address, Ipv4Addr::new(228, 0, 0, 4));
        assert_eq!(c.membership.port, 45564);
        assert_eq!(
            (c.membership.frequency_ms, c.membership.drop_time_ms),
            (500, 3000)
        );
        assert_eq!((c.receiver.port, c.receiver.auto_bind), (4000, 100));
        assert_eq!(
            (c.sender.timeout_ms, c.sender.max_retry_attempts),
            (3000, 1)
        );
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"
            [node]
            name = "a"
            domain = "shoal"
            [membership]
            kind = "static"
            members = ["127.0.0.1:4001", "127.0.0.1:4002"]
            [receiver]
            address = "127.0.0.1"
            port = 4001
            [api]
            listen = "127.0.0.1:8081"
            "#,
        )
        .expect("valid");
        assert_eq!(c.membership.kind, MembershipKind::Static);
        assert_eq!(c.membership.static_members().len(), 2);
        assert_eq!(
            c.api.listen_addr(),
            Some("127.0.0.1:8081".parse().expect("addr"))
        );
    }

    #[test]
    fn upper_bounds_that_would_panic_are_refused() {
        for (text, want) in [
            (
                "[plugins]\nheartbeat_ms = 4000000\n",
                "plugins.heartbeat_ms",
            ),
            (
                "[receiver]\nmax_connections = 100000\n",
                "receiver.max_connections",
            ),
        ] {
            let e = parse(text).expect_err("refused");
            assert!(
                matches!(&e, ConfigError::Invalid { key, .. } if key == want),
                "{e}"
            );
        }
    }

    #[test]
    fn encrypt_must_fail_closed_and_sit_above_the_failure_detector() {
        let entry = |name: &str, mode: &str| {
            format!("[[interceptor]]\nname = \"{name}\"\nfailure_mode = \"{mode}\"\n")
        };
        let enc = |mode: &str| {
            format!(
                "{}settings = {{ encryptionKey = \"00112233445566778899aabbccddeeff\" }}\n",
                entry("encrypt", mode)
            )
        };
        let ok = [
            enc("fail-closed"),
            entry("tcp-failure-detector", "fail-open"),
        ]
        .concat();
        parse(&ok).expect("encrypt above the detector, fail-closed");
        for (text, want) in [
            (enc("fail-open"), "interceptor[0].failure_mode"),
            (
                [
                    entry("tcp-failure-detector", "fail-open"),
                    enc("fail-closed"),
                ]
                .concat(),
                "interceptor[0].name",
            ),
        ] {
            let e = parse(&text).expect_err(&text);
            assert!(
                matches!(&e, ConfigError::Invalid { key, .. } if key == want),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse("[membership]\ndrop_time_ms = 100\n").expect_err("invalid");
        let msg = e.to_string();
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "membership.drop_time_ms"),
            "{msg}"
        );
        assert!(msg.contains("node.toml"), "{msg}");

        let e = parse("[receiver]\nprot = 4000\n").expect_err("unknown key");
        assert!(matches!(&e, ConfigError::Parse { .. }));
        assert!(
            e.to_string().contains("prot") && e.to_string().contains("node.toml"),
            "{e}"
        );

        let e = parse("[membership]\nkind = \"static\"\nmembers = [\"nonsense\"]\n")
            .expect_err("bad member");
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "membership.members[0]"),
            "{e}"
        );

        for key in ["receiver", "sender"] {
            let e = parse(&format!("[{key}]\nbusy_poll_us = 1000000\n")).expect_err("too long");
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if *k == format!("{key}.busy_poll_us")),
                "{e}"
            );
        }

        let e = parse("[membership]\nport = \"x\"\n").expect_err("wrong type");
        assert!(e.to_string().contains("key `membership.port`"), "{e}");
        let e = parse("[node]\nname = \"a\"\n[receiver]\nprot = 4000\n").expect_err("unknown key");
        assert!(e.to_string().contains("line 4: key `receiver.prot`"), "{e}");
    }

    #[test]
    fn runtime_workers_default_to_half_the_cpus_at_least_one() {
        let c = parse("").expect("valid");
        assert_eq!(c.runtime.workers(1), 1);
        assert_eq!(c.runtime.workers(2), 1);
        assert_eq!(c.runtime.workers(8), 4);
        let c = parse("[runtime]\nworker_threads = 3\n").expect("valid");
        assert_eq!(c.runtime.workers(2), 3, "as configured");
        let rt = c.runtime.build().expect("runtime");
        assert_eq!(rt.metrics().num_workers(), 3);
        let e = parse("[runtime]\nworker_threads = 100000\n").expect_err("too many");
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "runtime.worker_threads"),
            "{e}"
        );
    }

    #[test]
    fn receive_batch_defaults_to_half_the_frequency_and_stays_below_it() {
        let c = parse("").expect("valid");
        assert_eq!(c.membership.receive_batch_ms(), 250);
        let c = parse("[membership]\nfrequency_ms = 100\n").expect("valid");
        assert_eq!(c.membership.receive_batch_ms(), 50);
        let c = parse("[membership]\nreceive_batch_ms = 0\n").expect("valid");
        assert_eq!(c.membership.receive_batch_ms(), 0, "off");
        let e = parse("[membership]\nreceive_batch_ms = 500\n").expect_err("not below frequency");
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "membership.receive_batch_ms"),
            "{e}"
        );
    }

    #[test]
    fn dns_discovery_keys() {
        let c =
            parse("[membership]\nkind = \"dns\"\ndns_name = \"shoal.default.svc.cluster.local\"\n")
                .expect("valid");
        assert_eq!(c.membership.kind, MembershipKind::Dns);
        assert_eq!(c.membership.dns_refresh_ms, 5000, "documented default");
        assert_eq!(c.membership.dns_server_addr(), None, "system resolver");
        assert_eq!(c.membership.dns_port, None, "the receiver's port");

        let c = parse(
            "[membership]\nkind = \"dns\"\ndns_name = \"peers.test.\"\ndns_server = \"127.0.0.1:5353\"\n\
             dns_refresh_ms = 250\ndns_port = 4100\n",
        )
        .expect("valid");
        assert_eq!(
            c.membership.dns_server_addr(),
            Some("127.0.0.1:5353".parse().expect("addr"))
        );
        assert_eq!(
            (c.membership.dns_refresh_ms, c.membership.dns_port),
            (250, Some(4100))
        );
    }

    #[test]
    fn bad_dns_settings_name_their_key() {
        let cases = [
            ("kind = \"dns\"\n", "membership.dns_name"),
            ("kind = \"dns\"\ndns_name = \"  \"\n", "membership.dns_name"),
            (
                "kind = \"dns\"\ndns_name = \"a..b\"\n",
                "membership.dns_name",
            ),
            (
                "kind = \"dns\"\ndns_name = \"a b\"\n",
                "membership.dns_name",
            ),
            ("dns_name = \"x/y\"\n", "membership.dns_name"),
            (
                "kind = \"dns\"\ndns_name = \"a\"\ndns_server = \"localhost\"\n",
                "membership.dns_server",
            ),
            (
                "kind = \"dns\"\ndns_name = \"a\"\ndns_server = \"127.0.0.1\"\n",
                "membership.dns_server",
            ),
            (
                "kind = \"dns\"\ndns_name = \"a\"\ndns_server = \"127.0.0.1:0\"\n",
                "membership.dns_server",
            ),
            (
                "kind = \"dns\"\ndns_name = \"a\"\ndns_refresh_ms = 10\n",
                "membership.dns_refresh_ms",
            ),
            (
                "kind = \"dns\"\ndns_name = \"a\"\ndns_port = 0\n",
                "membership.dns_port",
            ),
        ];
        for (body, want) in cases {
            let e = parse(&format!("[membership]\n{body}")).expect_err(body);
            assert!(
                matches!(&e, ConfigError::Invalid { key, .. } if key == want),
                "{body:?}: {e}"
            );
        }
        let long = format!("kind = \"dns\"\ndns_name = \"{}.svc\"\n", "a".repeat(64));
        assert!(
            parse(&format!("[membership]\n{long}")).is_err(),
            "label of 64"
        );
        let e = parse("[membership]\nkind = \"dnz\"\n").expect_err("unknown kind");
        assert!(e.to_string().contains("membership.kind"), "{e}");
    }
}
