//! HTTP-session replication: the host owns every session ([`store`]); a
//! WebAssembly policy ([`policy`]) says where copies belong; the engine
//! does the mechanics — ids, limits, expiry, replication messages
//! ([`wire`]) over the channel, take-over and failover, state transfer on
//! join — and the HTTP API ([`api`]) serves it.
//!
//! # Rules
//!
//! * A session id is `RANDOM.route`: 128 bits from the OS-seeded CSPRNG as
//!   32 hex digits, and the jvmRoute of the node that serves it. The store
//!   is keyed by the random part, so an id keeps working after the route
//!   changes.
//! * Changes are applied on the node serving the session, one at a time
//!   (under the session's shard lock), then sent to the members that hold
//!   copies: with `sync-ack`, the write returns after they acknowledged
//!   having applied it.
//! * Copies merge attribute by attribute by write stamp (a Lamport version,
//!   then the writer's id), so concurrent changes of different attributes
//!   both survive and two writes of one attribute end the same everywhere.
//! * A node that serves a session it does not own (a backup, or a proxy
//!   that fetches a copy) takes it over: it becomes primary, asks the
//!   policy for backups, and tells the others (Tomcat's failover path).
//! * Expiry is computed on each node from the replicated last access: a
//!   primary after `max_inactive_s`, a copy after twice that. No message.
//!   An invalidation is broadcast.
//! * A joining node asks every member for its share; each answers with a
//!   copy of the sessions the policy now places on the joiner and the
//!   location of the others, then says it is done. The node is ready when
//!   all have answered, or at the state-transfer timeout (logged, counted:
//!   Tomcat's behaviour).

pub mod api;
pub mod policy;
pub mod store;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::value::RawValue;

use crate::channel::{Channel, ListenerError, MembershipListener, ReceivedMessage};
use crate::config::{SessionConfig, SessionSendMode};
use crate::member::{Member, MemberId};
use crate::membership::LeaveReason;
use crate::wire::SendOptions;
use policy::{PlaceIn, Policy, ViewNode};
use store::{Data, Entry, LimitError, Limits, Role, Store};
use wire::{AttrOp, Copy, Delta, Key, Loc, Located, Msg, Stamp, Uid};

/// Batches sent at once (pipelined on the connection to each member).
const IN_FLIGHT: usize = 8;
/// Sessions per policy call.
const PLACE_BATCH: usize = 4096;
/// Bytes of copies batched into one message.
const MESSAGE_BYTES: usize = 256 * 1024;
/// Invalidated keys remembered (so a late copy does not bring one back).
const TOMBSTONES: usize = 65_536;
/// How long a fetch from another member waits.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a member asked for state waits to see the asker in its view.
const JOINER_WAIT: Duration = Duration::from_secs(10);
/// How long a member that joined has to ask for its share before it is
/// sent anyway.
const REJOIN_GRACE: Duration = Duration::from_secs(3);
/// Members remembered as having asked for their share.
const SERVED: usize = 4096;
/// Fetches of ids this node does not know at all, under way at once (each
/// asks every member); more are answered "no such session" at once.
const UNKNOWN_FETCHES: usize = 32;
/// An id no member knew is not asked for again for this long (a browser
/// sends a stale cookie with every request).
const MISS_TTL: Duration = Duration::from_secs(5);
/// Ids remembered as unknown.
const MISSES: usize = 4096;
/// Member label: the node runs a session engine (value: the policy).
pub const LABEL_SESSIONS: &str = "sessions";
/// Member label: the node's zone.
pub const LABEL_ZONE: &str = "zone";
/// Member label: the node's jvmRoute.
pub const LABEL_ROUTE: &str = "route";

/// Why a session request failed (the API maps each to a status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The node is still copying its state.
    #[error("this node is not ready: state transfer in progress")]
    NotReady,
    /// Unknown, expired or invalidated.
    #[error("no such session")]
    NotFound,
    /// A limit was exceeded.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The node holds `session.max_sessions` sessions.
    #[error("this node holds session.max_sessions ({0}) sessions")]
    Full(usize),
}

/// Counters of the engine, for `/metrics`.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    created: AtomicU64,
    expired: AtomicU64,
    invalidated: AtomicU64,
    takeovers: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bad_messages: AtomicU64,
    refused: AtomicU64,
    send_failures: AtomicU64,
    unknown_changes: AtomicU64,
    orphans: AtomicU64,
    fetches: AtomicU64,
    fetch_misses: AtomicU64,
    unknown_refused: AtomicU64,
    transfer_ms: AtomicU64,
    transfer_timeouts: AtomicU64,
    transfer_sent: AtomicU64,
}

/// One session's placement to carry out: who held it before and whether
/// its location changed.
struct Move {
    key: Key,
    before: Vec<Uid>,
    changed: bool,
}

/// A session as the API shows it.
#[derive(serde::Serialize)]
struct SessionJson<'a> {
    id: String,
    created_ms: i64,
    last_access_ms: i64,
    max_inactive_s: u32,
    version: u64,
    attributes: std::collections::BTreeMap<&'a str, &'a RawValue>,
}

/// A session read or written through the API: its id and its JSON.
#[derive(Debug, Clone)]
pub struct Served {
    /// The session's id now (after a rebind, the new one).
    pub id: String,
    /// The session as JSON.
    pub json: String,
    /// Whether the change reached every member that must hold a copy
    /// (with `sync-ack`: acknowledged by each; with `async`: queued).
    pub replicated: bool,
}

/// A session as an embedding web layer sees it (after a read or a
/// change).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The session's id now (after a rebind, the new one).
    pub id: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Last access, ms since the Unix epoch.
    pub last_access_ms: i64,
    /// Idle time before expiry, s.
    pub max_inactive_s: u32,
    /// Version (grows with every change).
    pub version: u64,
    /// Attributes: name and JSON value, in name order.
    pub attributes: Vec<(Box<str>, Box<RawValue>)>,
    /// Whether what had to be sent reached every member that must hold a
    /// copy (see [`Served::replicated`]).
    pub replicated: bool,
}

fn snapshot_of(key: Key, e: &Entry) -> Snapshot {
    let d = e.data.as_deref();
    let mut attributes: Vec<(Box<str>, Box<RawValue>)> = d
        .map(|d| d.live().map(|(n, v)| (n.into(), v.to_owned())).collect())
        .unwrap_or_default();
    attributes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Snapshot {
        id: format_id(key, &e.route),
        created_ms: d.map_or(0, |d| d.created_ms),
        last_access_ms: e.last_access_ms,
        max_inactive_s: e.max_inactive_s,
        version: d.map_or(0, |d| d.version),
        attributes,
        replicated: true,
    }
}

struct Inner {
    cfg: SessionConfig,
    limits: Limits,
    route: String,
    zone: String,
    me: Uid,
    tiebreak: u64,
    channel: Channel,
    policy: arc_swap::ArcSwap<Policy>,
    view: arc_swap::ArcSwap<Vec<ViewNode>>,
    loader: policy::PolicyLoader,
    swapping: tokio::sync::Mutex<()>,
    store: Store,
    ready: AtomicBool,
    next_req: AtomicU64,
    fetches: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Option<Copy>>>>,
    transfer: Mutex<HashMap<u64, Uid>>,
    /// When each member last asked for its share (a rejoin long after is
    /// sent its share without asking).
    served: Mutex<HashMap<Uid, Instant>>,
    tombstones: Mutex<(HashSet<Key>, VecDeque<Key>)>,
    /// Ids no member knew, and when that was found.
    misses: Mutex<HashMap<Key, Instant>>,
    unknown_fetches: tokio::sync::Semaphore,
    placing: tokio::sync::Mutex<()>,
    metrics: SessionMetrics,
}

/// The session engine of a node. Cheap to clone.
#[derive(Clone)]
pub struct SessionEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEngine")
            .field("route", &self.inner.route)
            .finish_non_exhaustive()
    }
}

fn uid_of(id: &MemberId) -> Uid {
    id.unique_id
}

/// Parses `RANDOM.route` (or just `RANDOM`) into the key; `None` when the
/// random part is not 32 hex digits.
pub fn parse_id(id: &str) -> Option<(Key, &str)> {
    let (base, route) = id.split_once('.').unwrap_or((id, ""));
    if base.len() != 32 || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(base, 16).ok().map(|k| (k, route))
}

pub(crate) fn format_id(key: Key, route: &str) -> String {
    format!("{key:032X}.{route}")
}

impl SessionEngine {
    /// An engine for the node whose channel is `channel`, placing with
    /// `policy`. Registers itself as a message and membership listener
    /// and starts the expiry sweep.
    pub fn start(
        cfg: SessionConfig,
        route: String,
        zone: String,
        channel: Channel,
        policy: Policy,
        loader: policy::PolicyLoader,
    ) -> Self {
        let me = uid_of(&channel.local_id());
        let tiebreak = u64::from_be_bytes(me[..8].try_into().unwrap_or_default());
        let limits = Limits {
            attributes: cfg.max_attributes,
            attribute_bytes: cfg.max_attribute_bytes,
            session_bytes: cfg.max_session_bytes,
        };
        let inner = Arc::new(Inner {
            cfg,
            limits,
            route,
            zone,
            me,
            tiebreak,
            channel: channel.clone(),
            policy: arc_swap::ArcSwap::from_pointee(policy),
            view: arc_swap::ArcSwap::from_pointee(Vec::new()),
            loader,
            swapping: tokio::sync::Mutex::new(()),
            store: Store::default(),
            ready: AtomicBool::new(false),
            next_req: AtomicU64::new(rand::random::<u32>() as u64),
            fetches: Mutex::new(HashMap::new()),
            transfer: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            tombstones: Mutex::new((HashSet::new(), VecDeque::new())),
            misses: Mutex::new(HashMap::new()),
            unknown_fetches: tokio::sync::Semaphore::new(UNKNOWN_FETCHES),
            placing: tokio::sync::Mutex::new(()),
            metrics: SessionMetrics::default(),
        });
        let engine = Self { inner };
        engine.refresh_view();
        let e = engine.clone();
        channel.add_listener(Arc::new(move |m: &ReceivedMessage| e.on_message(m)));
        channel.add_membership_listener(Arc::new(Members(engine.clone())));
        let weak = Arc::downgrade(&engine.inner);
        tokio::spawn(async move {
            // At once, then every second on the grid of the node's
            // periodic work (crate::clock::align).
            let every = Duration::from_secs(1);
            let first = crate::clock::align(tokio::time::Instant::now() + every, every);
            let mut tick = tokio::time::interval_at(first, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let Some(inner) = weak.upgrade() else { break };
                let e = SessionEngine { inner };
                e.refresh_view();
                e.sweep(crate::clock::now_ms());
                drop(e);
                tick.tick().await;
            }
        });
        engine
    }

    /// This node's jvmRoute (the suffix of the ids it issues).
    pub fn route(&self) -> &str {
        &self.inner.route
    }

    /// Stops serving the session API (the node is shutting down).
    pub fn stop_serving(&self) {
        self.inner.ready.store(false, Ordering::Relaxed);
    }

    /// Whether the state transfer is over.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The policy in use.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.load_full()
    }

    /// What this node holds.
    pub fn counts(&self) -> store::Counts {
        self.inner.store.counts()
    }

    fn send_options(&self, mode: SessionSendMode) -> SendOptions {
        match mode {
            SessionSendMode::Async => SendOptions::ASYNCHRONOUS,
            SessionSendMode::SyncAck => SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
        }
    }

    /// The members that hold sessions, this node first (as last
    /// refreshed: on every membership change, every second, and while a
    /// state transfer waits for a member).
    pub fn view(&self) -> Arc<Vec<ViewNode>> {
        self.inner.view.load_full()
    }

    /// Reads the members again.
    fn refresh_view(&self) -> Arc<Vec<ViewNode>> {
        let v = Arc::new(self.compute_view());
        self.inner.view.store(v.clone());
        v
    }

    fn compute_view(&self) -> Vec<ViewNode> {
        let local = self.inner.channel.local_id();
        let mut nodes = vec![ViewNode {
            uid: self.inner.me,
            id: local,
            zone: self.inner.zone.clone(),
            route: self.inner.route.clone(),
            alive_ms: i64::MAX,
        }];
        for m in self.inner.channel.members() {
            if let Some(n) = view_node(&m) {
                nodes.push(n);
            }
        }
        nodes
    }

    async fn send(&self, dests: &[MemberId], msg: &Msg, options: SendOptions) -> bool {
        if dests.is_empty() {
            return true;
        }
        let body = msg.encode();
        let m = &self.inner.metrics;
        m.messages_sent
            .fetch_add(dests.len() as u64, Ordering::Relaxed);
        m.bytes_sent
            .fetch_add((body.len() * dests.len()) as u64, Ordering::Relaxed);
        match self.inner.channel.send(dests, &body, options).await {
            Ok(()) => true,
            Err(e) => {
                let n = m.send_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= 3 || n.is_multiple_of(100) {
                    tracing::warn!(
                        kind = msg.kind(),
                        count = n,
                        "session replication send failed: {e}"
                    );
                }
                false
            }
        }
    }

    fn lock_transfer(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Uid>> {
        self.inner
            .transfer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn next_req(&self) -> u64 {
        self.inner.next_req.fetch_add(1, Ordering::Relaxed)
    }

    fn tombstoned(&self, key: Key) -> bool {
        self.inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .contains(&key)
    }

    fn bury(&self, key: Key) {
        let mut t = self
            .inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if t.0.insert(key) {
            t.1.push_back(key);
            if t.1.len() > TOMBSTONES
                && let Some(old) = t.1.pop_front()
            {
                t.0.remove(&old);
            }
        }
    }

    fn check_ready(&self) -> Result<(), SessionError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(SessionError::NotReady)
        }
    }

    fn stamp(&self, v: u64) -> Stamp {
        Stamp {
            v,
            node: self.inner.tiebreak,
        }
    }

    fn render(&self, key: Key, e: &Entry) -> Served {
        let id = format_id(key, &e.route);
        let d = e.data.as_deref();
        let json = serde_json::to_string(&SessionJson {
            id: id.clone(),
            created_ms: d.map_or(0, |d| d.created_ms),
            last_access_ms: e.last_access_ms,
            max_inactive_s: e.max_inactive_s,
            version: d.map_or(0, |d| d.version),
            attributes: d.map(|d| d.live().collect()).unwrap_or_default(),
        })
        .unwrap_or_default();
        Served {
            id,
            json,
            replicated: true,
        }
    }

    /// Replaces the placement policy with the component `bytes` (same
    /// settings and failure mode): the new version is loaded and handed
    /// the old one's state first; a failure leaves the old one placing.
    /// Sessions stay where they are; the new policy then places every
    /// session this node is primary of again (copies move where it says).
    pub async fn swap_policy(
        &self,
        bytes: Vec<u8>,
    ) -> Result<crate::chain::ChangeReport, crate::chain::SwapError> {
        use crate::chain::{ChangeKind, ChangeReport, PluginChange, SwapError};
        let _one_at_a_time = self.inner.swapping.lock().await;
        let started = Instant::now();
        let loader = self.inner.loader.clone();
        let new = tokio::task::spawn_blocking(move || loader.load_bytes(&bytes))
            .await
            .map_err(|_| SwapError::Stopped)??;
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        let old = self.inner.policy.load_full();
        let state = old.export_state();
        let handed = state.is_some();
        new.take_over(state.as_deref())
            .map_err(|message| SwapError::TakeOver {
                name: policy::POLICY_NAME.into(),
                message,
            })?;
        let generation = new.shared().generation;
        let new_hash = new.hash.clone();
        self.inner.policy.store(Arc::new(new));
        tracing::info!(
            old = %&old.hash[..12], new = %&new_hash[..12], generation,
            "session policy replaced; placing this node's sessions again"
        );
        let me = self.clone();
        tokio::spawn(async move {
            me.replace_all(None, None).await;
        });
        Ok(ChangeReport {
            plugins: vec![PluginChange {
                name: policy::POLICY_NAME.into(),
                change: ChangeKind::Replaced,
                old_sha256: Some(old.hash.clone()),
                new_sha256: Some(new_hash),
                generation: Some(generation),
                state_handed_over: handed,
            }],
            reordered: false,
            load_ms,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    // ----- the API's operations -------------------------------------------

    /// Creates a session with `attributes`, placed by the policy and
    /// replicated per the send mode.
    pub async fn create(
        &self,
        max_inactive_s: Option<u32>,
        attributes: Vec<(String, Box<RawValue>)>,
    ) -> Result<Served, SessionError> {
        let (mut served, replicated) = self
            .create_with(max_inactive_s, attributes, true, |k, e| self.render(k, e))
            .await?;
        served.replicated = replicated;
        Ok(served)
    }

    async fn create_with<T>(
        &self,
        max_inactive_s: Option<u32>,
        attributes: Vec<(String, Box<RawValue>)>,
        replicate: bool,
        answer: impl FnOnce(Key, &Entry) -> T,
    ) -> Result<(T, bool), SessionError> {
        self.check_ready()?;
        if self.inner.store.approx_len() >= self.inner.cfg.max_sessions {
            self.inner.store.recount();
            if self.inner.store.approx_len() >= self.inner.cfg.max_sessions {
                self.inner.metrics.refused.fetch_add(1, Ordering::Relaxed);
                return Err(SessionError::Full(self.inner.cfg.max_sessions));
            }
        }
        let now = crate::clock::now_ms();
        let key: Key = rand::random();
        let mut data = Data::new(now, 1, self.stamp(1));
        let ops: Vec<AttrOp> = attributes
            .into_iter()
            .map(|(name, v)| AttrOp {
                name,
                stamp: self.stamp(1),
                value: Some(v.get().to_owned()),
            })
            .collect();
        data.apply(&ops, &self.inner.limits)?;
        let view = self.view();
        let mut input = PlaceIn::new();
        input.push(key as u64, Some(0), &[], data.bytes);
        let out = self.inner.policy.load().place(&view, 0, &input);
        let backups: Vec<Uid> = out
            .backups_of(0)
            .iter()
            .map(|&i| view[i as usize].uid)
            .collect();
        let entry = Entry {
            role: Role::Primary,
            route: self.inner.route.as_str().into(),
            last_access_ms: now,
            replicated_access_ms: now,
            max_inactive_s: max_inactive_s.unwrap_or(self.inner.cfg.max_inactive_s as u32),
            loc: Loc {
                epoch: 1,
                primary: self.inner.me,
                backups,
            },
            data: Some(Box::new(data)),
            unsent: !replicate,
        };
        let served = answer(key, &entry);
        self.inner.store.shard(key).insert(key, entry);
        self.inner.store.note_insert();
        self.inner.metrics.created.fetch_add(1, Ordering::Relaxed);
        if !replicate {
            return Ok((served, false));
        }
        Ok((served, self.send_whole(&view, key).await))
    }

    /// Sends the whole session `key` (this node is its primary) to every
    /// member that must hold it, and its location to the others; whether
    /// all were reached.
    async fn send_whole(&self, view: &[ViewNode], key: Key) -> bool {
        let mv = Move {
            key,
            before: Vec::new(),
            changed: true,
        };
        let (_, replicated) = self
            .carry_out(view, vec![mv], None, self.inner.cfg.send_options)
            .await;
        replicated
    }

    /// Reads (`ops` empty, `write` false) or changes a session. Counts as
    /// an access. A session held here as a copy or a proxy is taken over
    /// first; a session whose id names another route is rebound to this
    /// node's route.
    pub async fn access(
        &self,
        id: &str,
        ops: Vec<(String, Option<Box<RawValue>>)>,
    ) -> Result<Served, SessionError> {
        let (mut served, replicated) = self
            .access_with(id, ops, true, |k, e| self.render(k, e))
            .await?;
        served.replicated = replicated;
        Ok(served)
    }

    /// The session as this node holds it (a primary's or a backup's copy),
    /// without counting an access or taking it over; none for an unknown,
    /// expired or location-only session. For tests and diagnostics.
    pub fn peek(&self, id: &str) -> Option<Snapshot> {
        let (key, _) = parse_id(id)?;
        let now = crate::clock::now_ms();
        let shard = self.inner.store.shard(key);
        let e = shard
            .get(&key)
            .filter(|e| e.has_data() && !e.expired_for_serving(now))?;
        Some(snapshot_of(key, e))
    }

    /// [`access`](Self::access) for an embedding web layer: answers a
    /// [`Snapshot`]. With `replicate` false (a request the layer's filter
    /// excludes) a change is applied here only and sent, as a full copy,
    /// with the session's next replicated change; a takeover or a rebind
    /// is still announced at once (as Tomcat's JvmRouteBinderValve does
    /// whatever the ReplicationValve's filter).
    pub async fn access_snapshot(
        &self,
        id: &str,
        ops: Vec<(String, Option<Box<RawValue>>)>,
        replicate: bool,
    ) -> Result<Snapshot, SessionError> {
        let (mut snap, replicated) = self.access_with(id, ops, replicate, snapshot_of).await?;
        snap.replicated = replicated;
        Ok(snap)
    }

    /// [`access_snapshot`](Self::access_snapshot) answering only the
    /// session's id now and whether the change was replicated (a web
    /// layer's write at the end of a request needs no copy of the data).
    pub async fn write(
        &self,
        id: &str,
        ops: Vec<(String, Option<Box<RawValue>>)>,
        replicate: bool,
    ) -> Result<(String, bool), SessionError> {
        self.access_with(id, ops, replicate, |k, e| format_id(k, &e.route))
            .await
    }

    /// [`create`](Self::create) for an embedding web layer, answering
    /// only the new session's id and whether it was replicated; with
    /// `replicate` false the session is only kept here until its next
    /// replicated change (a request the layer's filter excludes).
    pub async fn create_written(
        &self,
        max_inactive_s: Option<u32>,
        attributes: Vec<(String, Box<RawValue>)>,
        replicate: bool,
    ) -> Result<(String, bool), SessionError> {
        self.create_with(max_inactive_s, attributes, replicate, |k, e| {
            format_id(k, &e.route)
        })
        .await
    }

    async fn access_with<T>(
        &self,
        id: &str,
        ops: Vec<(String, Option<Box<RawValue>>)>,
        replicate: bool,
        out: impl FnOnce(Key, &Entry) -> T,
    ) -> Result<(T, bool), SessionError> {
        self.check_ready()?;
        let (key, _) = parse_id(id).ok_or(SessionError::NotFound)?;
        let now = crate::clock::now_ms();
        // 1. Own it.
        let state = {
            let mut shard = self.inner.store.shard(key);
            match shard.get(&key) {
                None => None,
                Some(e) if e.expired_for_serving(now) => {
                    shard.remove(&key);
                    return Err(SessionError::NotFound);
                }
                Some(e) => Some((e.role, e.has_data(), e.loc.clone())),
            }
        };
        match state {
            Some((Role::Primary, true, _)) => {}
            Some((_, true, _)) => {
                self.take_over(key, None).await;
            }
            Some((_, false, loc)) => {
                // A location entry (or a stub): ask its holders, then, if
                // they have none (the location was stale), everyone.
                let holders: Vec<Uid> = std::iter::once(loc.primary).chain(loc.backups).collect();
                let copy = match self.fetch(key, &holders).await {
                    Some(c) => Some(c),
                    None => {
                        let rest: Vec<Uid> = self
                            .view()
                            .iter()
                            .skip(1)
                            .map(|n| n.uid)
                            .filter(|u| !holders.contains(u))
                            .collect();
                        self.fetch(key, &rest).await
                    }
                };
                match copy {
                    Some(copy) => {
                        if !self.take_over(key, Some(copy)).await {
                            return Err(SessionError::NotFound);
                        }
                    }
                    None => {
                        let mut shard = self.inner.store.shard(key);
                        if shard.get(&key).is_some_and(|e| !e.has_data()) {
                            shard.remove(&key);
                        }
                        return Err(SessionError::NotFound);
                    }
                }
            }
            None => {
                if self.tombstoned(key) || self.recently_missed(key) {
                    return Err(SessionError::NotFound);
                }
                // Bounded: a flood of made-up ids must not become a flood
                // of cluster-wide fetches.
                let Ok(_permit) = self.inner.unknown_fetches.try_acquire() else {
                    self.inner
                        .metrics
                        .unknown_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(SessionError::NotFound);
                };
                let everyone: Vec<Uid> = self.view().iter().skip(1).map(|n| n.uid).collect();
                match self.fetch(key, &everyone).await {
                    Some(copy) => {
                        if !self.take_over(key, Some(copy)).await {
                            return Err(SessionError::NotFound);
                        }
                    }
                    None => {
                        // Remembered only when someone was asked: a node
                        // that sees no member yet must ask again later.
                        if !everyone.is_empty() {
                            self.note_miss(key);
                        }
                        return Err(SessionError::NotFound);
                    }
                }
            }
        }
        // 2. Change it, under its lock.
        let (served, delta, holders, proxies_touch) = {
            let mut shard = self.inner.store.shard(key);
            let Some(e) = shard.get_mut(&key) else {
                return Err(SessionError::NotFound);
            };
            let Some(data) = e.data.as_mut() else {
                return Err(SessionError::NotFound);
            };
            let mut version = data.version;
            let write = !ops.is_empty();
            let rebind = *e.route != *self.inner.route;
            if write || rebind {
                version = version.saturating_add(1);
            }
            let stamp = self.stamp(version);
            let ops: Vec<AttrOp> = ops
                .into_iter()
                .map(|(name, v)| AttrOp {
                    name,
                    stamp,
                    value: v.map(|v| v.get().to_owned()),
                })
                .collect();
            data.apply(&ops, &self.inner.limits)?;
            data.version = version;
            let route = if rebind {
                data.route_stamp = stamp;
                e.route = self.inner.route.as_str().into();
                Some((self.inner.route.clone(), stamp))
            } else {
                None
            };
            e.last_access_ms = now;
            let access_due = now.saturating_sub(e.replicated_access_ms)
                >= i64::from(e.max_inactive_s) * 1000 / 4;
            let send = rebind || (replicate && (write || access_due || e.unsent));
            if send {
                e.replicated_access_ms = now;
            } else if write {
                e.unsent = true;
            }
            // Changes kept here earlier go out as a full copy.
            let full = send && std::mem::take(&mut e.unsent);
            let delta = (send && !full).then_some(Delta {
                key,
                version,
                last_access_ms: now,
                route,
                ops,
            });
            let touch = (send && !write && !full).then(|| e.to_located(key));
            (out(key, e), (delta, full), e.loc.backups.clone(), touch)
        };
        let (delta, full) = delta;
        if full {
            return Ok((served, self.send_whole(&self.view(), key).await));
        }
        let mut replicated = true;
        if let Some(delta) = delta {
            let view = self.view();
            let ids = ids_of(&view, &holders);
            let mode = if delta.ops.is_empty() && delta.route.is_none() {
                SessionSendMode::Async
            } else {
                self.inner.cfg.send_options
            };
            let sent = self
                .send(&ids, &Msg::Deltas(vec![delta]), self.send_options(mode))
                .await;
            replicated = sent && ids.len() == holders.len();
            if let Some(l) = proxies_touch.filter(|_| self.inner.policy.load().proxies) {
                let others: Vec<MemberId> = view
                    .iter()
                    .skip(1)
                    .filter(|n| !holders.contains(&n.uid))
                    .map(|n| n.id)
                    .collect();
                self.send(&others, &Msg::Locations(vec![l]), SendOptions::ASYNCHRONOUS)
                    .await;
            }
        }
        Ok((served, replicated))
    }

    /// Invalidates a session on every node.
    pub async fn invalidate(&self, id: &str) -> Result<(), SessionError> {
        self.check_ready()?;
        let (key, _) = parse_id(id).ok_or(SessionError::NotFound)?;
        let now = crate::clock::now_ms();
        let found = match self.inner.store.shard(key).remove(&key) {
            Some(e) => !e.expired_for_serving(now),
            None => false,
        };
        self.bury(key);
        if found {
            self.inner
                .metrics
                .invalidated
                .fetch_add(1, Ordering::Relaxed);
        }
        // Told to everyone even when not held here: a copy may be on its
        // way, or this node's transfer may have timed out.
        let ids: Vec<MemberId> = self.view().iter().skip(1).map(|n| n.id).collect();
        self.send(
            &ids,
            &Msg::Invalidate(vec![key]),
            self.send_options(self.inner.cfg.send_options),
        )
        .await;
        if found {
            Ok(())
        } else {
            Err(SessionError::NotFound)
        }
    }

    /// Becomes the primary of `key` (with `copy` fetched from another
    /// member, if it was not held here), asks the policy for backups and
    /// tells the others.
    async fn take_over(&self, key: Key, copy: Option<Copy>) -> bool {
        let view = self.view();
        let before;
        let size;
        let mine;
        {
            if let Some(c) = &copy
                && c.key != key
            {
                return false;
            }
            let mut shard = self.inner.store.shard(key);
            // An invalidation that arrived while the copy was fetched wins.
            if self.tombstoned(key) {
                shard.remove(&key);
                return false;
            }
            if let Some(c) = copy {
                if !shard.contains_key(&key) {
                    self.inner.store.note_insert();
                }
                let e = shard.entry(key).or_insert_with(|| Entry::proxy_for(&c));
                let data = e
                    .data
                    .get_or_insert_with(|| Box::new(Data::stub(c.created_ms, c.route_stamp)));
                if data.merge_copy(&c, &self.inner.limits).is_err() || !data.complete {
                    shard.remove(&key);
                    return false;
                }
                if c.route_stamp > data.route_stamp {
                    data.route_stamp = c.route_stamp;
                    e.route = c.route.as_str().into();
                }
                e.last_access_ms = e.last_access_ms.max(clamp_time(c.last_access_ms));
                if c.loc.newer_than(&e.loc) {
                    e.loc = c.loc.clone();
                }
            }
            let Some(e) = shard.get_mut(&key) else {
                return false;
            };
            if e.role == Role::Primary {
                return e.has_data();
            }
            if !e.has_data() {
                return false;
            }
            let old = e.loc.clone();
            before = std::iter::once(old.primary)
                .chain(old.backups.iter().copied())
                .filter(|u| *u != self.inner.me)
                .collect::<Vec<_>>();
            e.role = Role::Primary;
            e.loc = Loc {
                epoch: old.epoch.saturating_add(1),
                primary: self.inner.me,
                // Those who held a copy stay candidates (the old primary
                // last), so a policy that keeps current backups moves less.
                backups: old
                    .backups
                    .iter()
                    .copied()
                    .chain(std::iter::once(old.primary))
                    .filter(|u| *u != self.inner.me)
                    .collect(),
            };
            mine = e.loc.clone();
            size = e.data.as_ref().map_or(0, |d| d.bytes);
        }
        self.inner.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
        let current: Vec<usize> = mine
            .backups
            .iter()
            .filter_map(|u| index_of(&view, u))
            .collect();
        let mut input = PlaceIn::new();
        input.push(key as u64, Some(0), &current, size);
        let out = self.inner.policy.load().place(&view, 0, &input);
        {
            // Only if nobody moved it meanwhile (a newer announcement).
            let mut shard = self.inner.store.shard(key);
            match shard.get_mut(&key) {
                Some(e) if e.loc == mine => {
                    e.loc.backups = out
                        .backups_of(0)
                        .iter()
                        .map(|&i| view[i as usize].uid)
                        .collect();
                }
                _ => return true,
            }
        }
        self.carry_out(
            &view,
            vec![Move {
                key,
                before,
                changed: true,
            }],
            None,
            self.inner.cfg.send_options,
        )
        .await;
        true
    }

    /// Asks `holders` (in parallel) for a copy of `key`; the first copy wins.
    fn recently_missed(&self, key: Key) -> bool {
        let mut m = self.inner.misses.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&key) {
            Some(at) if at.elapsed() < MISS_TTL => true,
            Some(_) => {
                m.remove(&key);
                false
            }
            None => false,
        }
    }

    fn note_miss(&self, key: Key) {
        let mut m = self.inner.misses.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MISSES {
            m.retain(|_, at| at.elapsed() < MISS_TTL);
            if m.len() >= MISSES {
                m.clear();
            }
        }
        m.insert(key, Instant::now());
    }

    async fn fetch(&self, key: Key, holders: &[Uid]) -> Option<Copy> {
        let view = self.view();
        let ids = ids_of(&view, holders);
        if ids.is_empty() {
            return None;
        }
        self.inner.metrics.fetches.fetch_add(1, Ordering::Relaxed);
        let mut waits = Vec::new();
        for id in ids {
            let req = self.next_req();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.inner
                .fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req, tx);
            let me = self.clone();
            waits.push(tokio::spawn(async move {
                me.send(&[id], &Msg::Fetch { req, key }, SendOptions::USE_ACK)
                    .await;
                let r = tokio::time::timeout(FETCH_TIMEOUT, rx).await;
                me.inner
                    .fetches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&req);
                r.ok().and_then(|r| r.ok()).flatten()
            }));
        }
        let mut best: Option<Copy> = None;
        for w in waits {
            if let Ok(Some(c)) = w.await
                && best.as_ref().is_none_or(|b| c.version > b.version)
            {
                best = Some(c);
            }
        }
        if best.is_none() {
            self.inner
                .metrics
                .fetch_misses
                .fetch_add(1, Ordering::Relaxed);
        }
        best
    }

    // ----- placement ------------------------------------------------------

    /// Sends what `moves` imply: a copy to each new holder (and to
    /// `fresh`, a joining node, whatever it held), the new location to the
    /// old holders and, with proxies, to everyone else. Returns the
    /// sessions sent to `fresh`, and whether every send went through.
    async fn carry_out(
        &self,
        view: &[ViewNode],
        moves: Vec<Move>,
        fresh: Option<Uid>,
        mode: SessionSendMode,
    ) -> (u64, bool) {
        let proxies = self.inner.policy.load().proxies;
        let mut out: HashMap<Uid, (Vec<Copy>, usize, Vec<Located>)> = HashMap::new();
        let options = self.send_options(mode);
        let mut to_fresh = 0u64;
        let mut ok = true;
        type Flush<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
        let mut inflight: Vec<Flush<'_>> = Vec::new();
        for mv in moves {
            let (copy, located) = {
                let shard = self.inner.store.shard(mv.key);
                let Some(e) = shard.get(&mv.key) else {
                    continue;
                };
                if e.role != Role::Primary {
                    continue;
                }
                (e.to_copy(mv.key), e.to_located(mv.key))
            };
            let Some(copy) = copy else { continue };
            for n in view.iter().skip(1) {
                let is_fresh = fresh == Some(n.uid);
                let holds = copy.loc.backups.contains(&n.uid);
                let held = mv.before.contains(&n.uid);
                let slot = out.entry(n.uid).or_default();
                if holds && (!held || is_fresh) {
                    slot.1 += copy
                        .attrs
                        .iter()
                        .map(|a| a.name.len() + a.value.as_ref().map_or(0, String::len) + 24)
                        .sum::<usize>()
                        + 96;
                    slot.0.push(copy.clone());
                } else if (holds || held || proxies) && (mv.changed || is_fresh) {
                    // Old holders learn they are not any more; with proxies,
                    // everyone learns where it lives.
                    slot.2.push(located.clone());
                } else {
                    continue;
                }
                if is_fresh {
                    to_fresh += 1;
                }
                if slot.1 >= MESSAGE_BYTES || slot.2.len() >= 4096 {
                    let (c, _, l) = std::mem::take(slot);
                    inflight.push(Box::pin(self.flush(n.id, c, l, options)));
                    if inflight.len() >= IN_FLIGHT {
                        ok &= join_all(inflight.drain(..)).await.into_iter().all(|x| x);
                    }
                }
            }
        }
        // The last batches to every member at once (one round trip, not
        // one per member).
        for (uid, (c, _, l)) in out {
            match ids_of(view, &[uid]).first() {
                Some(id) => inflight.push(Box::pin(self.flush(*id, c, l, options))),
                None => ok = false,
            }
        }
        ok &= join_all(inflight).await.into_iter().all(|x| x);
        (to_fresh, ok)
    }

    async fn flush(
        &self,
        id: MemberId,
        copies: Vec<Copy>,
        located: Vec<Located>,
        options: SendOptions,
    ) -> bool {
        let mut ok = true;
        if !copies.is_empty() {
            ok &= self.send(&[id], &Msg::Copies(copies), options).await;
        }
        if !located.is_empty() {
            ok &= self.send(&[id], &Msg::Locations(located), options).await;
        }
        ok
    }

    /// Places again every session this node is primary of, or whose
    /// primary is gone and which it holds, on the current members; with
    /// `fresh`, a joining node gets its share. Returns the sessions sent
    /// to `fresh`.
    async fn replace_all(&self, fresh: Option<Uid>, gone: Option<Uid>) -> u64 {
        let _one_at_a_time = self.inner.placing.lock().await;
        let view = self.view();
        let me = self.inner.me;
        let alive: HashSet<Uid> = view.iter().map(|n| n.uid).collect();
        let proxies = self.inner.policy.load().proxies;
        // Candidates, and the clean-up of what the departure orphans.
        let mut keys: Vec<Key> = Vec::new();
        let mut orphans = 0u64;
        self.inner.store.each_shard(|s| {
            s.retain(|k, e| {
                if let Some(g) = gone {
                    e.loc.backups.retain(|u| *u != g || *u == me);
                }
                let primary_alive = alive.contains(&e.loc.primary);
                match e.role {
                    Role::Primary => keys.push(*k),
                    Role::Backup if !primary_alive && e.has_data() => keys.push(*k),
                    Role::Proxy | Role::Backup
                        if !primary_alive && !e.loc.backups.iter().any(|u| alive.contains(u)) =>
                    {
                        // Nobody holds it any more (or only a stub here).
                        if !e.has_data() {
                            orphans += 1;
                            return false;
                        }
                        keys.push(*k);
                    }
                    _ => {}
                }
                true
            });
        });
        self.inner
            .metrics
            .orphans
            .fetch_add(orphans, Ordering::Relaxed);
        let mut sent = 0u64;
        let policy = self.inner.policy.load_full();
        for chunk in keys.chunks(PLACE_BATCH) {
            let mut input = PlaceIn::new();
            let mut befores = Vec::with_capacity(chunk.len());
            for &k in chunk {
                let shard = self.inner.store.shard(k);
                let Some(e) = shard.get(&k) else {
                    input.push(k as u64, Some(0), &[], 0);
                    befores.push(None);
                    continue;
                };
                let p = index_of(&view, &e.loc.primary)
                    .filter(|_| e.role == Role::Primary || e.loc.primary != me);
                let b: Vec<usize> = e
                    .loc
                    .backups
                    .iter()
                    .filter_map(|u| index_of(&view, u))
                    .collect();
                input.push(k as u64, p, &b, e.data.as_ref().map_or(0, |d| d.bytes));
                befores.push(Some(e.loc.clone()));
            }
            let out = policy.place(&view, 0, &input);
            let mut moves = Vec::new();
            for (i, &k) in chunk.iter().enumerate() {
                let Some(old) = &befores[i] else { continue };
                let primary = view[out.primaries[i] as usize].uid;
                let backups: Vec<Uid> = out
                    .backups_of(i)
                    .iter()
                    .map(|&j| view[j as usize].uid)
                    .collect();
                let mut shard = self.inner.store.shard(k);
                let Some(e) = shard.get_mut(&k) else { continue };
                if e.loc != *old {
                    continue; // moved while the policy placed it
                }
                if e.role != Role::Primary && primary != me {
                    continue; // another node is promoted: it will say so
                }
                if !e.has_data() {
                    continue;
                }
                let changed = e.role != Role::Primary || e.loc.backups != backups;
                if e.role != Role::Primary {
                    e.role = Role::Primary;
                    self.inner.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
                }
                if changed {
                    e.loc = Loc {
                        epoch: old.epoch.saturating_add(1),
                        primary: me,
                        backups,
                    };
                }
                if changed || fresh.is_some() {
                    moves.push(Move {
                        key: k,
                        before: std::iter::once(old.primary)
                            .chain(old.backups.iter().copied())
                            .filter(|u| *u != me && Some(*u) != gone)
                            .collect(),
                        changed,
                    });
                }
            }
            sent += self
                .carry_out(&view, moves, fresh, SessionSendMode::SyncAck)
                .await
                .0;
        }
        let _ = proxies;
        sent
    }

    // ----- state transfer -------------------------------------------------

    /// Asks every member that holds sessions for this node's share and
    /// waits until all have answered, the timeout passes, or they leave.
    /// Then the node is ready. Returns whether it completed.
    pub async fn transfer(&self) -> bool {
        let started = Instant::now();
        let peers: Vec<ViewNode> = self.refresh_view().iter().skip(1).cloned().collect();
        if peers.is_empty() {
            self.inner.ready.store(true, Ordering::Relaxed);
            return true;
        }
        tracing::info!(
            members = peers.len(),
            "session state transfer: asking the members for this node's share"
        );
        let timeout = Duration::from_millis(self.inner.cfg.state_transfer_timeout_ms);
        // Members asked (and when): a failed request is asked again, and a
        // session member that shows up meanwhile is asked too.
        let mut asked: HashMap<Uid, (u64, Option<Instant>)> = HashMap::new();
        let complete = loop {
            let view = self.refresh_view();
            for p in view.iter().skip(1) {
                let due = match asked.get(&p.uid) {
                    None => true,
                    Some((_, Some(failed))) => failed.elapsed() >= Duration::from_millis(250),
                    Some((_, None)) => false,
                };
                if !due {
                    continue;
                }
                let req = self.next_req();
                self.lock_transfer().insert(req, p.uid);
                let sent = self
                    .send(&[p.id], &Msg::StateRequest { req }, SendOptions::USE_ACK)
                    .await;
                if !sent {
                    self.lock_transfer().remove(&req);
                }
                asked.insert(p.uid, (req, (!sent).then(Instant::now)));
            }
            let alive: HashSet<Uid> = view.iter().map(|n| n.uid).collect();
            let left = {
                let mut t = self.lock_transfer();
                t.retain(|_, u| alive.contains(u));
                t.len()
            };
            let retrying = asked
                .iter()
                .any(|(u, (_, failed))| failed.is_some() && alive.contains(u));
            if left == 0 && !retrying {
                break true;
            }
            if started.elapsed() >= timeout {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ms = started.elapsed().as_millis() as u64;
        self.inner.metrics.transfer_ms.store(ms, Ordering::Relaxed);
        let held = self.counts();
        if complete {
            tracing::info!(
                ms,
                primary = held.primary,
                backup = held.backup,
                proxy = held.proxy,
                "session state transfer complete"
            );
        } else {
            self.inner
                .metrics
                .transfer_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                ms,
                "session state transfer not complete after session.state_transfer_timeout_ms; \
                 serving anyway with the sessions received so far (Tomcat's behaviour)"
            );
        }
        self.inner.ready.store(true, Ordering::Relaxed);
        complete
    }

    async fn serve_state_request(&self, from: Member, req: u64) {
        let uid = uid_of(&from.id);
        {
            let mut served = self.inner.served.lock().unwrap_or_else(|p| p.into_inner());
            if served.len() >= SERVED {
                served.retain(|_, t| t.elapsed() < 2 * REJOIN_GRACE);
            }
            served.insert(uid, Instant::now());
        }
        let started = Instant::now();
        while index_of(&self.refresh_view(), &uid).is_none() {
            if started.elapsed() >= JOINER_WAIT {
                tracing::warn!(member = %from.id, "a member asked for session state but never joined this node's view");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sent = self.replace_all(Some(uid), None).await;
        self.inner
            .metrics
            .transfer_sent
            .fetch_add(sent, Ordering::Relaxed);
        self.send(
            &[from.id],
            &Msg::StateDone { req, sent },
            SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
        )
        .await;
        tracing::info!(member = %from.id, sessions = sent, ms = started.elapsed().as_millis() as u64, "session state sent to a joining member");
    }

    // ----- receiving ------------------------------------------------------

    fn on_message(&self, m: &ReceivedMessage) -> Result<(), ListenerError> {
        if !Msg::is_session(&m.body) {
            return Ok(());
        }
        let metrics = &self.inner.metrics;
        metrics.messages_received.fetch_add(1, Ordering::Relaxed);
        let msg = match Msg::decode(&m.body) {
            Ok(msg) => msg,
            Err(e) => {
                let n = metrics.bad_messages.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= 3 || n.is_multiple_of(1000) {
                    tracing::warn!(from = %m.sender.id, count = n, "session message dropped: {e}");
                }
                return Err(ListenerError(e.to_string()));
            }
        };
        match msg {
            Msg::Copies(v) => {
                let mut refused = None;
                for c in v {
                    if let Err(e) = self.apply_copy(c) {
                        refused = Some(e);
                    }
                }
                if let Some(e) = refused {
                    metrics.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %m.sender.id, "session copy refused: {e}");
                    return Err(ListenerError(e.to_string()));
                }
            }
            Msg::Deltas(v) => {
                for d in v {
                    self.apply_delta(d)?;
                }
            }
            Msg::Locations(v) => {
                for l in v {
                    self.apply_location(l);
                }
            }
            Msg::Invalidate(keys) => {
                for k in keys {
                    if self.inner.store.shard(k).remove(&k).is_some() {
                        metrics.invalidated.fetch_add(1, Ordering::Relaxed);
                    }
                    self.bury(k);
                }
            }
            Msg::StateRequest { req } => {
                let me = self.clone();
                let from = m.sender.clone();
                tokio::spawn(async move { me.serve_state_request(from, req).await });
            }
            Msg::StateDone { req, .. } => {
                self.inner
                    .transfer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&req);
            }
            Msg::Fetch { req, key } => {
                let copy = self
                    .inner
                    .store
                    .shard(key)
                    .get(&key)
                    .and_then(|e| e.to_copy(key));
                let me = self.clone();
                let to = m.sender.id;
                tokio::spawn(async move {
                    me.send(&[to], &Msg::FetchReply { req, copy }, SendOptions::USE_ACK)
                        .await;
                });
            }
            Msg::FetchReply { req, copy } => {
                if let Some(tx) = self
                    .inner
                    .fetches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&req)
                {
                    let _ = tx.send(copy);
                }
            }
        }
        Ok(())
    }

    /// Room for one more entry (call without holding a shard lock).
    fn room(&self, shard_has: bool) -> Result<(), SessionError> {
        if shard_has || self.inner.store.approx_len() < self.inner.cfg.max_sessions {
            return Ok(());
        }
        self.inner.store.recount();
        if self.inner.store.approx_len() < self.inner.cfg.max_sessions {
            return Ok(());
        }
        Err(SessionError::Full(self.inner.cfg.max_sessions))
    }

    fn apply_copy(&self, c: Copy) -> Result<(), SessionError> {
        let key = c.key;
        if self.tombstoned(key) {
            return Ok(());
        }
        let me = self.inner.me;
        let proxies = self.inner.policy.load().proxies;
        let exists = self.inner.store.shard(key).contains_key(&key);
        self.room(exists)?;
        if !exists {
            self.inner.store.note_insert();
        }
        let mut shard = self.inner.store.shard(key);
        let e = shard.entry(key).or_insert_with(|| Entry::proxy_for(&c));
        let was_primary = e.role == Role::Primary;
        let data = e
            .data
            .get_or_insert_with(|| Box::new(Data::stub(c.created_ms, c.route_stamp)));
        let changed = match data.merge_copy(&c, &self.inner.limits) {
            Ok(changed) => changed,
            Err(err) => {
                if !data.complete {
                    shard.remove(&key);
                }
                return Err(err.into());
            }
        };
        if c.route_stamp >= data.route_stamp {
            data.route_stamp = c.route_stamp;
            e.route = c.route.as_str().into();
        }
        e.last_access_ms = e.last_access_ms.max(clamp_time(c.last_access_ms));
        e.max_inactive_s = c.max_inactive_s;
        let moved = c.loc.newer_than(&e.loc) || e.loc == Loc::default();
        if moved {
            self.hand_back_if_demoted(key, e, &c.loc);
            e.loc = c.loc;
        }
        settle_role(e, &me);
        if e.role == Role::Primary && was_primary && changed {
            // A demoted primary's late writes reach the holders through
            // the primary that took over.
            self.forward(key, e);
        }
        if e.data.is_none() && !proxies && e.role == Role::Proxy {
            shard.remove(&key);
        }
        Ok(())
    }

    /// Called before `e` takes location `new`: if it was the primary and
    /// no longer is, its copy goes to the new primary, so writes it took
    /// while the other node was taking over are not lost.
    fn hand_back_if_demoted(&self, key: Key, e: &Entry, new: &Loc) {
        if e.role != Role::Primary || new.primary == self.inner.me {
            return;
        }
        let Some(copy) = e.to_copy(key) else { return };
        let me = self.clone();
        let to = new.primary;
        tokio::spawn(async move {
            let ids = ids_of(&me.view(), &[to]);
            me.send(&ids, &Msg::Copies(vec![copy]), SendOptions::USE_ACK)
                .await;
        });
    }

    /// Sends `e`'s copy to its backups (after a merge changed it here).
    fn forward(&self, key: Key, e: &Entry) {
        let Some(copy) = e.to_copy(key) else { return };
        let me = self.clone();
        let to = e.loc.backups.clone();
        tokio::spawn(async move {
            let ids = ids_of(&me.view(), &to);
            me.send(&ids, &Msg::Copies(vec![copy]), SendOptions::USE_ACK)
                .await;
        });
    }

    fn apply_delta(&self, d: Delta) -> Result<(), ListenerError> {
        let key = d.key;
        if self.tombstoned(key) {
            return Ok(());
        }
        let mut shard = self.inner.store.shard(key);
        match shard.get_mut(&key) {
            Some(e) => match store::apply_delta(e, &d, &self.inner.limits) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    // A proxy: only the access time matters.
                    e.last_access_ms = e.last_access_ms.max(clamp_time(d.last_access_ms));
                    Ok(())
                }
                Err(err) => {
                    self.inner.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    Err(ListenerError(err.to_string()))
                }
            },
            None => {
                // The change came before the copy it changes: keep it in a
                // stub the copy will complete.
                drop(shard);
                self.inner
                    .metrics
                    .unknown_changes
                    .fetch_add(1, Ordering::Relaxed);
                if self.room(false).is_err() {
                    return Err(ListenerError("session.max_sessions reached".into()));
                }
                let data = Data::stub(0, Stamp::default());
                let at = clamp_time(d.last_access_ms);
                let mut e = Entry {
                    role: Role::Backup,
                    route: "".into(),
                    last_access_ms: at,
                    replicated_access_ms: at,
                    max_inactive_s: self.inner.cfg.max_inactive_s as u32,
                    loc: Loc::default(),
                    data: Some(Box::new(data)),
                    unsent: false,
                };
                store::apply_delta(&mut e, &d, &self.inner.limits)
                    .map_err(|err| ListenerError(err.to_string()))?;
                self.inner.store.shard(key).entry(key).or_insert(e);
                self.inner.store.note_insert();
                Ok(())
            }
        }
    }

    fn apply_location(&self, l: Located) {
        let key = l.key;
        if self.tombstoned(key) {
            return;
        }
        let me = self.inner.me;
        let proxies = self.inner.policy.load().proxies;
        let exists = self.inner.store.shard(key).contains_key(&key);
        let room = self.room(exists).is_ok();
        let mut shard = self.inner.store.shard(key);
        match shard.get_mut(&key) {
            Some(e) => {
                e.last_access_ms = e.last_access_ms.max(clamp_time(l.last_access_ms));
                if l.loc.newer_than(&e.loc) {
                    if e.data
                        .as_ref()
                        .is_some_and(|d| d.route_stamp == Stamp::default())
                        || e.data.is_none()
                    {
                        e.route = l.route.as_str().into();
                    }
                    self.hand_back_if_demoted(key, e, &l.loc);
                    e.loc = l.loc;
                    settle_role(e, &me);
                    if e.role == Role::Proxy && !proxies {
                        shard.remove(&key);
                    }
                }
            }
            None if proxies && !l.loc.holds(&me) => {
                if !room {
                    self.inner.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.inner.store.note_insert();
                let at = clamp_time(l.last_access_ms);
                shard.insert(
                    key,
                    Entry {
                        role: Role::Proxy,
                        route: l.route.as_str().into(),
                        last_access_ms: at,
                        replicated_access_ms: at,
                        max_inactive_s: l.max_inactive_s,
                        loc: l.loc,
                        data: None,
                        unsent: false,
                    },
                );
            }
            None => {}
        }
    }

    /// Drops what has expired: primaries after their idle time, copies and
    /// proxies after twice that.
    fn sweep(&self, now: i64) {
        let mut expired = 0u64;
        self.inner.store.each_shard(|s| {
            s.retain(|_, e| {
                let keep = e.expires_at_ms() > now;
                if !keep && e.role == Role::Primary {
                    expired += 1;
                }
                keep
            })
        });
        self.inner
            .metrics
            .expired
            .fetch_add(expired, Ordering::Relaxed);
        self.inner.store.recount();
    }

    /// Appends the engine's metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.inner.metrics;
        let c = self.counts();
        let g = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP shoal_{name} {help}\n# TYPE shoal_{name} {kind}\nshoal_{name} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP shoal_sessions Sessions held by this node, by role.\n# TYPE shoal_sessions gauge"
        );
        for (role, v) in [
            ("primary", c.primary),
            ("backup", c.backup),
            ("proxy", c.proxy),
        ] {
            let _ = writeln!(out, "shoal_sessions{{role=\"{role}\"}} {v}");
        }
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        g(
            out,
            "sessions_created_total",
            "Sessions created on this node.",
            "counter",
            l(&m.created),
        );
        g(
            out,
            "sessions_expired_total",
            "Sessions expired here as primary.",
            "counter",
            l(&m.expired),
        );
        g(
            out,
            "sessions_invalidated_total",
            "Sessions invalidated (here or by a peer).",
            "counter",
            l(&m.invalidated),
        );
        g(
            out,
            "sessions_taken_over_total",
            "Sessions this node became primary of (failover, promotion).",
            "counter",
            l(&m.takeovers),
        );
        g(
            out,
            "session_messages_sent_total",
            "Session replication messages sent (per destination).",
            "counter",
            l(&m.messages_sent),
        );
        g(
            out,
            "session_bytes_sent_total",
            "Bytes of session replication bodies sent (per destination).",
            "counter",
            l(&m.bytes_sent),
        );
        g(
            out,
            "session_messages_received_total",
            "Session replication messages received.",
            "counter",
            l(&m.messages_received),
        );
        g(
            out,
            "session_messages_bad_total",
            "Session messages dropped: unknown kind or format, or malformed.",
            "counter",
            l(&m.bad_messages),
        );
        g(
            out,
            "session_refused_total",
            "Session writes or copies refused by a limit.",
            "counter",
            l(&m.refused),
        );
        g(
            out,
            "session_send_failures_total",
            "Session replication sends that did not reach every destination.",
            "counter",
            l(&m.send_failures),
        );
        g(
            out,
            "session_changes_before_copy_total",
            "Changes received for a session not held yet (kept until its copy arrives).",
            "counter",
            l(&m.unknown_changes),
        );
        g(
            out,
            "session_orphans_dropped_total",
            "Location entries dropped because every holder left.",
            "counter",
            l(&m.orphans),
        );
        g(
            out,
            "session_fetches_total",
            "Copies fetched from other members (failover reads).",
            "counter",
            l(&m.fetches),
        );
        g(
            out,
            "session_fetch_misses_total",
            "Fetches no member could answer.",
            "counter",
            l(&m.fetch_misses),
        );
        g(
            out,
            "session_unknown_fetches_refused_total",
            "Reads of ids this node does not know that were not asked of the other members (too many under way).",
            "counter",
            l(&m.unknown_refused),
        );
        g(
            out,
            "session_state_transfer_ms",
            "Duration of this node's last state transfer, ms.",
            "gauge",
            l(&m.transfer_ms),
        );
        g(
            out,
            "session_state_transfer_timeouts_total",
            "State transfers that timed out.",
            "counter",
            l(&m.transfer_timeouts),
        );
        g(
            out,
            "session_state_sent_total",
            "Sessions sent to joining members.",
            "counter",
            l(&m.transfer_sent),
        );
        let p = self.policy();
        for (kind, v) in [("trap", 0usize), ("timeout", 1), ("memory", 2)] {
            let _ = writeln!(
                out,
                "shoal_session_policy_failures_total{{kind=\"{kind}\"}} {}",
                p.shared().failures[v].load(Ordering::Relaxed)
            );
        }
    }
}

/// Most a peer's clock may be ahead of this node's, ms: later access
/// times from the network are taken as now plus this, so one skewed or
/// lying peer cannot keep sessions alive forever.
const MAX_SKEW_MS: i64 = 60_000;

/// A time from the network, bounded by this node's clock plus the skew.
fn clamp_time(t: i64) -> i64 {
    t.min(crate::clock::now_ms().saturating_add(MAX_SKEW_MS))
}

/// The role `e` has now that its location says what it says; a copy
/// becomes a proxy (its data dropped) when it is no longer a holder.
fn settle_role(e: &mut Entry, me: &Uid) {
    let role = store::role_in(&e.loc, me);
    match role {
        Role::Proxy => {
            e.data = None;
            e.role = Role::Proxy;
        }
        Role::Backup | Role::Primary => {
            e.role = if e.data.is_some() { role } else { Role::Proxy };
        }
    }
}

fn index_of(view: &[ViewNode], uid: &Uid) -> Option<usize> {
    view.iter().position(|n| &n.uid == uid)
}

fn ids_of(view: &[ViewNode], uids: &[Uid]) -> Vec<MemberId> {
    uids.iter()
        .filter_map(|u| view.iter().skip(1).find(|n| &n.uid == u).map(|n| n.id))
        .collect()
}

/// A member as a session node, if it advertises a session engine.
fn view_node(m: &Member) -> Option<ViewNode> {
    let labels = crate::wire::fingerprint::labels(&m.payload).ok()?;
    let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    get(LABEL_SESSIONS)?;
    Some(ViewNode {
        uid: uid_of(&m.id),
        id: m.id,
        zone: get(LABEL_ZONE).unwrap_or_default(),
        route: get(LABEL_ROUTE).unwrap_or_default(),
        alive_ms: m.alive_ms,
    })
}

struct Members(SessionEngine);

impl MembershipListener for Members {
    fn member_added(&self, member: &Member) {
        let view = self.0.refresh_view();
        // A joining node asks for its share itself (state transfer). One
        // that does not ask within a few seconds — it came back after a
        // false suspicion or a partition, or it saw this node late — is
        // sent its share anyway, so copies and primaries reconcile.
        // Whether it runs a session engine is read from the refreshed view,
        // not from `member`: a member an interceptor raised (the TCP failure
        // detector, once its probe answers) carries no payload.
        let uid = uid_of(&member.id);
        if index_of(&view, &uid).is_none() {
            return;
        }
        let e = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REJOIN_GRACE).await;
            // Asked around this (re)join: a joiner's request may come just
            // before its arrival is seen here, or during the grace.
            let asked = e
                .inner
                .served
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&uid)
                .is_some_and(|t| t.elapsed() < 2 * REJOIN_GRACE);
            if !asked && index_of(&e.view(), &uid).is_some() {
                e.replace_all(Some(uid), None).await;
            }
        });
    }

    fn member_disappeared(&self, member: &Member, _reason: LeaveReason) {
        self.0.refresh_view();
        if view_node(member).is_none() && !member.payload.is_empty() {
            return;
        }
        let e = self.0.clone();
        let gone = uid_of(&member.id);
        tokio::spawn(async move {
            e.replace_all(None, Some(gone)).await;
        });
    }
}
