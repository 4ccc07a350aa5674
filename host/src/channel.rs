//! The channel: what applications use. It sends byte messages to members with
//! Tribes' option bits, delivers received messages and membership changes to
//! listeners, and keeps the membership view that passed up to it.
//!
//! Path of a message (the interceptor chain will sit between the channel and
//! the transport; today the asynchronous queue is the only stage):
//!
//! ```text
//! send ─► [ASYNCHRONOUS? → dispatch queue] ─► sender ══TCP══► receiver ─► deliver ─► listeners
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use arc_swap::ArcSwap;

use crate::chain::{Chain, Flow, InMsg, OutMsg};
use crate::dedup::Claim;
use crate::dispatch::{Dispatcher, EnqueueError, Enqueued, Job};
use crate::member::{Member, MemberId};
use crate::membership::{LeaveReason, MemberEvent, MemberTable};
use crate::metrics::Metrics;
use crate::transport::receiver::{DeliveryError, MessageHandler};
use crate::transport::sender::{SendError, Sender};
use crate::wire::{ChannelData, FrameEncoder, MemberPacket, SendOptions};

/// Received messages kept for `GET /api/messages`.
const RECENT_MESSAGES: usize = 32;
/// Membership events kept for `GET /api/events`.
const RECENT_EVENTS: usize = 64;
/// Bytes of a body kept in the recent-messages log.
const PREVIEW_BYTES: usize = 256;

/// A message as delivered to listeners.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Who sent it (as its frame says).
    pub sender: Member,
    /// Option bits on the wire.
    pub options: SendOptions,
    /// Sender's clock at send time (ms since the Unix epoch).
    pub timestamp: i64,
    /// The message id.
    pub unique_id: Bytes,
    /// The body.
    pub body: Bytes,
}

/// A listener refused a message; with SYNC_ACK the sender receives a FAIL-ACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ListenerError(pub String);

/// Receives messages. Called on the receiver's connection task: must not block.
pub trait ChannelListener: Send + Sync + 'static {
    /// One received message. An `Err` turns into a FAIL-ACK for SYNC_ACK senders.
    fn message_received(&self, msg: &ReceivedMessage) -> Result<(), ListenerError>;
}

impl<F> ChannelListener for F
where
    F: Fn(&ReceivedMessage) -> Result<(), ListenerError> + Send + Sync + 'static,
{
    fn message_received(&self, msg: &ReceivedMessage) -> Result<(), ListenerError> {
        self(msg)
    }
}

/// Receives membership changes, in order, on the node's event task. Must not block.
pub trait MembershipListener: Send + Sync + 'static {
    /// A member joined the channel's view.
    fn member_added(&self, member: &Member);
    /// A member left the channel's view.
    fn member_disappeared(&self, member: &Member, reason: LeaveReason);
}

/// Why a send did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelSendError {
    /// Some destinations were not reached (the others were).
    #[error(transparent)]
    Failed(#[from] SendError),
    /// The asynchronous queue refused the message.
    #[error(transparent)]
    Queue(#[from] EnqueueError),
    /// No destination given.
    #[error("no destination members")]
    NoDestination,
    /// An interceptor dropped the message.
    #[error("message dropped by interceptor `{plugin}`: {reason}")]
    Dropped {
        /// The interceptor.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The body does not fit in a frame the receivers accept.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl From<crate::wire::FrameTooLarge> for ChannelSendError {
    fn from(e: crate::wire::FrameTooLarge) -> Self {
        Self::TooLarge {
            len: e.len,
            max: e.max,
        }
    }
}

/// A summary of a received message, for the admin API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MessageSummary {
    /// Sender unique id (hex).
    pub from: String,
    /// Sender address `host:port`.
    pub from_addr: String,
    /// Option bits.
    pub options: i32,
    /// Body length.
    pub len: usize,
    /// Up to 256 bytes of the body as (lossy) UTF-8.
    pub preview: String,
    /// Sender timestamp.
    pub timestamp: i64,
}

/// A membership change, for the admin API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EventSummary {
    /// `"added"` or `"disappeared"`.
    pub kind: String,
    /// Member unique id (hex).
    pub id: String,
    /// Member address.
    pub addr: String,
    /// `"expired"` or `"shutdown"` for disappearances.
    pub reason: Option<String>,
    /// Local wall-clock time of the event, ms since the Unix epoch.
    pub at_ms: i64,
}

/// A received message as kept for the admin API, unformatted.
#[derive(Debug)]
struct RecentMessage {
    from: MemberId,
    options: i32,
    len: usize,
    preview: Bytes,
    timestamp: i64,
}

struct Inner {
    local: MemberPacket,
    local_id: MemberId,
    encoder: Arc<FrameEncoder>,
    chain: Arc<ArcSwap<Chain>>,
    view: RwLock<Vec<Member>>,
    table: std::sync::OnceLock<Arc<Mutex<MemberTable>>>,
    sender: Arc<Sender>,
    dispatch: Dispatcher,
    listeners: RwLock<Vec<Arc<dyn ChannelListener>>>,
    member_listeners: RwLock<Vec<Arc<dyn MembershipListener>>>,
    metrics: Arc<Metrics>,
    recent: Mutex<VecDeque<RecentMessage>>,
    events: Mutex<VecDeque<EventSummary>>,
    /// Message ids seen per sender: a resent message is delivered once.
    dedup: crate::dedup::Dedup,
    /// Deferred deliveries in flight ([`MAX_DEFERRED`] permits): a full set
    /// holds the receiving connection back instead of spawning without
    /// bound, and shutdown waits for them.
    deferred: Arc<tokio::sync::Semaphore>,
}

/// Deferred deliveries (a plug-in's `Flow::Deferred` on receive) that run
/// at once at most.
const MAX_DEFERRED: usize = 4096;

/// The application-facing channel. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("local", &self.inner.local_id)
            .finish_non_exhaustive()
    }
}

impl Channel {
    pub(crate) fn new(
        local: MemberPacket,
        local_id: MemberId,
        encoder: Arc<FrameEncoder>,
        chain: Arc<ArcSwap<Chain>>,
        sender: Arc<Sender>,
        dispatch: Dispatcher,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                local_id,
                encoder,
                chain,
                view: RwLock::new(Vec::new()),
                table: std::sync::OnceLock::new(),
                sender,
                dispatch,
                listeners: RwLock::new(Vec::new()),
                member_listeners: RwLock::new(Vec::new()),
                metrics,
                recent: Mutex::new(VecDeque::new()),
                events: Mutex::new(VecDeque::new()),
                dedup: crate::dedup::Dedup::default(),
                deferred: Arc::new(tokio::sync::Semaphore::new(MAX_DEFERRED)),
            }),
        }
    }

    /// This node's identity.
    pub fn local_id(&self) -> MemberId {
        self.inner.local_id
    }

    /// This node's member packet (alive time as at start).
    pub fn local_packet(&self) -> &MemberPacket {
        &self.inner.local
    }

    /// Members in the channel's view, longest-running first, with `alive_ms`
    /// the member's estimated uptime now (latest reported alive time plus the
    /// time since that heartbeat).
    pub fn members(&self) -> Vec<Member> {
        let mut v = read(&self.inner.view).clone();
        if let Some(t) = self.inner.table.get() {
            let t = crate::membership::lock(t);
            let now = std::time::Instant::now();
            for m in &mut v {
                if let Some(a) = t.uptime_ms(&m.id, now) {
                    m.alive_ms = a;
                }
                if let Some(p) = t.payload(&m.id) {
                    m.payload = p.clone();
                }
            }
        }
        // Tribes' order: longest-running first, by the latest alive time.
        v.sort_by(|a, b| b.alive_ms.cmp(&a.alive_ms).then(a.id.cmp(&b.id)));
        v
    }

    pub(crate) fn attach_table(&self, table: Arc<Mutex<MemberTable>>) {
        let _ = self.inner.table.set(table);
    }

    /// Identities of all members in the view.
    pub fn member_ids(&self) -> Vec<MemberId> {
        read(&self.inner.view).iter().map(|m| m.id).collect()
    }

    /// Registers a message listener.
    pub fn add_listener(&self, l: Arc<dyn ChannelListener>) {
        write(&self.inner.listeners).push(l);
    }

    /// Registers a membership listener. It is not told about members already
    /// in the view; read [`Channel::members`] after registering.
    pub fn add_membership_listener(&self, l: Arc<dyn MembershipListener>) {
        write(&self.inner.member_listeners).push(l);
    }

    /// Sends `body` to `dests` with Tribes' option bits, down the
    /// interceptor chain.
    ///
    /// * An interceptor may drop the message ([`ChannelSendError::Dropped`])
    ///   or defer it: the message-dispatch plug-in defers `ASYNCHRONOUS`
    ///   sends, and with no chain at all the bit alone queues the message.
    ///   A deferred send returns once queued (or, queue full with
    ///   `always_send`, once sent); its failures are logged and counted.
    /// * Otherwise it returns when every destination has the message — and with
    ///   `USE_ACK`, has acknowledged it (with `SYNCHRONIZED_ACK`, after
    ///   processing). A [`SendError`] lists each member not reached.
    ///
    /// `BYTE_MESSAGE` is always set: shoal bodies are bytes.
    pub async fn send(
        &self,
        dests: &[MemberId],
        body: &[u8],
        options: SendOptions,
    ) -> Result<(), ChannelSendError> {
        if dests.is_empty() {
            return Err(ChannelSendError::NoDestination);
        }
        self.inner.encoder.check(body.len())?;
        let mut msg = OutMsg {
            options: options | SendOptions::BYTE_MESSAGE,
            timestamp: crate::clock::now_ms(),
            body: Bytes::copy_from_slice(body),
            dests: shared_dests(dests),
        };
        let chain = self.inner.chain.load_full();
        let flow = if chain.is_empty() {
            if msg.options.is_async() {
                Flow::Deferred { resume: 0 }
            } else {
                Flow::Continue
            }
        } else {
            chain.send_from(0, &mut msg).await
        };
        match flow {
            Flow::Continue => self.transmit(msg).await,
            Flow::Dropped { plugin, reason } => Err(ChannelSendError::Dropped { plugin, reason }),
            Flow::Deferred { resume } => {
                match self
                    .inner
                    .dispatch
                    .enqueue(Job::new(msg, resume, chain.clone()))?
                {
                    Enqueued::Queued => Ok(()),
                    Enqueued::SendNow(job) => {
                        let mut msg = job.msg;
                        if let Flow::Dropped { plugin, reason } =
                            chain.send_from(resume, &mut msg).await
                        {
                            return Err(ChannelSendError::Dropped { plugin, reason });
                        }
                        self.transmit(msg).await
                    }
                }
            }
        }
    }

    async fn transmit(&self, msg: OutMsg) -> Result<(), ChannelSendError> {
        let frame = self
            .inner
            .encoder
            .encode(msg.options, msg.timestamp, &msg.body)?;
        let acks = usize::from(msg.options.wants_ack());
        Ok(self
            .inner
            .sender
            .send(&msg.dests, frame.parts(), acks)
            .await?)
    }

    /// Sends to every member in the view. With no members, does nothing.
    pub async fn send_all(
        &self,
        body: &[u8],
        options: SendOptions,
    ) -> Result<(), ChannelSendError> {
        let dests = self.member_ids();
        if dests.is_empty() {
            return Ok(());
        }
        self.send(&dests, body, options).await
    }

    /// The interceptor chain in use.
    pub fn chain(&self) -> Arc<Chain> {
        self.inner.chain.load_full()
    }

    /// The cell holding the chain (shared with the node's [`ChainHandle`],
    /// which replaces its value while messages flow).
    ///
    /// [`ChainHandle`]: crate::chain::ChainHandle
    pub(crate) fn chain_cell(&self) -> &ArcSwap<Chain> {
        &self.inner.chain
    }

    /// Applies a membership event from below: updates the view and tells listeners.
    pub(crate) fn on_member_event(&self, ev: MemberEvent) {
        let (kind, member, reason) = match &ev {
            MemberEvent::Added(m) => {
                let mut v = write(&self.inner.view);
                if v.iter().any(|x| x.id == m.id) {
                    return;
                }
                v.push(m.clone());
                v.sort_by(|a, b| b.alive_ms.cmp(&a.alive_ms).then(a.id.cmp(&b.id)));
                self.inner
                    .metrics
                    .members
                    .store(v.len() as i64, std::sync::atomic::Ordering::Relaxed);
                Metrics::inc(&self.inner.metrics.members_added_total);
                ("added", m, None)
            }
            MemberEvent::Disappeared(m, r) => {
                let mut v = write(&self.inner.view);
                let before = v.len();
                v.retain(|x| x.id != m.id);
                if v.len() == before {
                    return;
                }
                self.inner
                    .metrics
                    .members
                    .store(v.len() as i64, std::sync::atomic::Ordering::Relaxed);
                Metrics::inc(&self.inner.metrics.members_disappeared_total);
                self.inner.sender.forget(m.id.addr());
                let reason = match r {
                    LeaveReason::Expired => "expired",
                    LeaveReason::Shutdown => "shutdown",
                };
                ("disappeared", m, Some(reason))
            }
        };
        tracing::info!(member = %member.id, domain = %member.domain_str(), reason = reason.unwrap_or(""), "member {kind}");
        {
            let mut evs = self.inner.events.lock().unwrap_or_else(|p| p.into_inner());
            if evs.len() == RECENT_EVENTS {
                evs.pop_front();
            }
            evs.push_back(EventSummary {
                kind: kind.to_owned(),
                id: member.id.unique_hex(),
                addr: member.id.addr().to_string(),
                reason: reason.map(str::to_owned),
                at_ms: crate::clock::now_ms(),
            });
        }
        let ls = read(&self.inner.member_listeners).clone();
        for l in ls {
            match &ev {
                MemberEvent::Added(m) => l.member_added(m),
                MemberEvent::Disappeared(m, r) => l.member_disappeared(m, *r),
            }
        }
    }

    /// The last received messages, oldest first.
    pub fn recent_messages(&self) -> Vec<MessageSummary> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| MessageSummary {
                from: r.from.unique_hex(),
                from_addr: r.from.addr().to_string(),
                options: r.options,
                len: r.len,
                preview: String::from_utf8_lossy(&r.preview).into_owned(),
                timestamp: r.timestamp,
            })
            .collect()
    }

    /// The last membership events, oldest first.
    pub fn recent_events(&self) -> Vec<EventSummary> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) async fn drain(&self, deadline: std::time::Duration) -> bool {
        self.inner.dispatch.drain(deadline).await
    }

    /// Waits (at most `deadline`) for the deferred deliveries in flight;
    /// those still running then are counted and logged, and answer how
    /// many.
    pub(crate) async fn drain_deferred(&self, deadline: std::time::Duration) -> usize {
        let all = u32::try_from(MAX_DEFERRED).unwrap_or(u32::MAX);
        match tokio::time::timeout(deadline, self.inner.deferred.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => {
                let left = MAX_DEFERRED - self.inner.deferred.available_permits();
                Metrics::add(&self.inner.metrics.deferred_abandoned_total, left as u64);
                tracing::warn!(
                    left,
                    "deferred deliveries still running {deadline:?} after the receiver stopped; abandoned"
                );
                left
            }
        }
    }

    pub(crate) fn close_sender(&self) {
        self.inner.sender.close();
    }

    pub(crate) fn handler(&self) -> Arc<Self> {
        Arc::new(self.clone())
    }
}

impl Channel {
    fn to_listeners(&self, m: InMsg) -> Result<(), DeliveryError> {
        self.to_listeners_many(vec![m]).pop().unwrap_or(Ok(()))
    }

    /// Hands each message to every listener, in order, and returns each
    /// one's outcome; the listener list is read, and the admin API's recent
    /// messages are recorded, once for the lot.
    fn to_listeners_many(&self, msgs: Vec<InMsg>) -> Vec<Result<(), DeliveryError>> {
        let mut results = Vec::with_capacity(msgs.len());
        let ls = read(&self.inner.listeners).clone();
        let mut recent: VecDeque<RecentMessage> = VecDeque::new();
        for m in msgs {
            let rm = ReceivedMessage {
                sender: m.sender,
                options: m.options,
                timestamp: m.timestamp,
                unique_id: m.unique_id,
                body: m.body,
            };
            let mut first_err = None;
            for l in &ls {
                if let Err(e) = l.message_received(&rm) {
                    Metrics::inc(&self.inner.metrics.listener_errors_total);
                    tracing::debug!(from = %rm.sender.id, error = %e, "listener rejected a message");
                    first_err.get_or_insert(e);
                }
            }
            results.push(match first_err {
                None => Ok(()),
                Some(e) => Err(DeliveryError(e.0)),
            });
            // Raw fields only: formatting happens when the API asks (it cost
            // ~20 % of a busy receiver's CPU when done per message).
            if recent.len() == RECENT_MESSAGES {
                recent.pop_front();
            }
            let n = rm.body.len().min(PREVIEW_BYTES);
            recent.push_back(RecentMessage {
                from: rm.sender.id,
                options: rm.options.0,
                len: rm.body.len(),
                preview: Bytes::copy_from_slice(&rm.body[..n]),
                timestamp: rm.timestamp,
            });
        }
        if !recent.is_empty() {
            let mut kept = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            let over = (kept.len() + recent.len())
                .saturating_sub(RECENT_MESSAGES)
                .min(kept.len());
            kept.drain(..over);
            kept.extend(recent);
        }
        results
    }
}

impl MessageHandler for Channel {
    async fn deliver_batch(&self, msgs: Vec<ChannelData>) -> Vec<Result<(), DeliveryError>> {
        let mut results: Vec<Result<(), DeliveryError>> = Vec::with_capacity(msgs.len());
        let mut batch = Vec::with_capacity(msgs.len());
        let mut index = Vec::with_capacity(msgs.len());
        let mut last: Option<(MemberPacket, Member)> = None;
        for (i, msg) in msgs.into_iter().enumerate() {
            // A batch comes from one connection, so nearly always from one
            // sender: its member is built once.
            let sender = match &last {
                Some((p, m)) if *p == msg.sender => Ok(m.clone()),
                _ => Member::from_packet(&msg.sender).inspect(|m| {
                    last = Some((msg.sender.clone(), m.clone()));
                }),
            };
            let claim = match &sender {
                Ok(s) => self.inner.dedup.claim(&s.id.unique_id, &msg.unique_id),
                Err(_) => Claim::New,
            };
            match sender {
                Ok(_) if claim == Claim::Delivered => {
                    // Sent again after a broken connection: delivered
                    // already; acknowledged again, not delivered twice.
                    Metrics::inc(&self.inner.metrics.duplicates_dropped_total);
                    results.push(Ok(()));
                }
                Ok(_) if claim == Claim::InProgress => {
                    // A copy is being delivered from another connection:
                    // not twice. Its outcome is not known yet, so no ACK
                    // that could be false; a later resend is answered from
                    // the first delivery's outcome.
                    Metrics::inc(&self.inner.metrics.duplicates_dropped_total);
                    results.push(Err(DeliveryError(
                        "a copy of this message is being delivered".into(),
                    )));
                }
                Ok(sender) => {
                    batch.push(InMsg {
                        sender,
                        options: msg.options,
                        timestamp: msg.timestamp,
                        unique_id: msg.unique_id,
                        body: msg.message,
                    });
                    index.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(DeliveryError(format!("bad sender address: {e}")))),
            }
        }
        let chain = self.inner.chain.load_full();
        let mut flows = vec![Flow::Continue; batch.len()];
        if !chain.is_empty() {
            chain
                .receive_batch(chain.len(), &mut batch, &mut flows)
                .await;
        }
        let mut deliver = Vec::with_capacity(batch.len());
        for ((m, flow), i) in batch.into_iter().zip(flows).zip(index) {
            match flow {
                Flow::Continue => deliver.push((m, i)),
                Flow::Dropped { plugin, reason } => {
                    tracing::debug!(%plugin, %reason, from = %m.sender.id, "received message dropped by an interceptor");
                    // Not delivered: a sender that asked for a synchronized
                    // ACK learns it (FAIL-ACK), not a false success.
                    self.inner
                        .dedup
                        .finish(&m.sender.id.unique_id, &m.unique_id, false);
                    results[i] = Err(DeliveryError(format!(
                        "refused by interceptor {plugin}: {reason}"
                    )));
                }
                Flow::Deferred { resume } => {
                    // Queued delivery: the rest of the chain and the listeners
                    // run on a task; the sender's ACK does not wait for them.
                    self.inner
                        .dedup
                        .finish(&m.sender.id.unique_id, &m.unique_id, true);
                    let ch = self.clone();
                    let chain = chain.clone();
                    let mut m = m;
                    // A permit per delivery in flight: when all are taken
                    // this connection waits (back-pressure on its sender).
                    let Ok(permit) = self.inner.deferred.clone().acquire_owned().await else {
                        continue; // closed: never, the channel owns it
                    };
                    let gauge = &self.inner.metrics.deferred_receives;
                    gauge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(async move {
                        if !matches!(
                            chain.receive_from(resume, &mut m).await,
                            Flow::Dropped { .. }
                        ) {
                            let _ = ch.to_listeners(m);
                        }
                        ch.inner
                            .metrics
                            .deferred_receives
                            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        drop(permit);
                    });
                }
            }
        }
        let ids: Vec<([u8; 16], Bytes)> = deliver
            .iter()
            .map(|(m, _)| (m.sender.id.unique_id, m.unique_id.clone()))
            .collect();
        let (msgs, slots): (Vec<InMsg>, Vec<usize>) = deliver.into_iter().unzip();
        for ((i, r), (sender, id)) in slots.into_iter().zip(self.to_listeners_many(msgs)).zip(ids) {
            self.inner.dedup.finish(&sender, &id, r.is_ok());
            results[i] = r;
        }
        results
    }
}

/// `dests` as a shared list, reusing this thread's previous one when equal:
/// a sender usually sends to the same members again, and an equal list
/// that is the same allocation also groups faster in the send queue.
fn shared_dests(dests: &[MemberId]) -> Arc<[MemberId]> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<Arc<[MemberId]>>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match last.as_ref() {
            Some(l) if **l == *dests => l.clone(),
            _ => {
                let new: Arc<[MemberId]> = dests.into();
                *last = Some(new.clone());
                new
            }
        }
    })
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
