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
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::dispatch::{Dispatcher, EnqueueError, Enqueued};
use crate::member::{Member, MemberId};
use crate::membership::{LeaveReason, MemberEvent, MemberTable};
use crate::metrics::Metrics;
use crate::transport::receiver::{DeliveryError, MessageHandler};
use crate::transport::sender::{SendError, Sender};
use crate::wire::{ChannelData, MemberPacket, SendOptions, encode_message_frame};

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
    /// The body does not fit in a frame the receivers accept.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
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

struct Inner {
    local: MemberPacket,
    local_id: MemberId,
    address: Bytes,
    max_frame: usize,
    view: RwLock<Vec<Member>>,
    table: std::sync::OnceLock<Arc<Mutex<MemberTable>>>,
    sender: Arc<Sender>,
    dispatch: Dispatcher,
    listeners: RwLock<Vec<Arc<dyn ChannelListener>>>,
    member_listeners: RwLock<Vec<Arc<dyn MembershipListener>>>,
    metrics: Arc<Metrics>,
    recent: Mutex<VecDeque<MessageSummary>>,
    events: Mutex<VecDeque<EventSummary>>,
}

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

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Channel {
    pub(crate) fn new(
        local: MemberPacket,
        local_id: MemberId,
        max_frame: usize,
        sender: Arc<Sender>,
        dispatch: Dispatcher,
        metrics: Arc<Metrics>,
    ) -> Self {
        let address = local.to_bytes();
        Self {
            inner: Arc::new(Inner {
                local,
                local_id,
                address,
                max_frame,
                view: RwLock::new(Vec::new()),
                table: std::sync::OnceLock::new(),
                sender,
                dispatch,
                listeners: RwLock::new(Vec::new()),
                member_listeners: RwLock::new(Vec::new()),
                metrics,
                recent: Mutex::new(VecDeque::new()),
                events: Mutex::new(VecDeque::new()),
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
            }
        }
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

    /// Sends `body` to `dests` with Tribes' option bits.
    ///
    /// * `ASYNCHRONOUS`: queued; returns once queued (or, queue full with
    ///   `always_send`, once sent). Failures are logged and counted.
    /// * otherwise: returns when every destination has the message — and with
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
        let options = options | SendOptions::BYTE_MESSAGE;
        let frame = self.encode(body, options)?;
        let acks = usize::from(options.wants_ack());
        if options.is_async() {
            match self.inner.dispatch.enqueue(dests.into(), frame, acks > 0)? {
                Enqueued::Queued => return Ok(()),
                Enqueued::SendNow(job) => {
                    return Ok(self
                        .inner
                        .sender
                        .send(&job.dests, std::slice::from_ref(&job.frame), acks)
                        .await?);
                }
            }
        }
        Ok(self.inner.sender.send(dests, &[frame], acks).await?)
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

    fn encode(&self, body: &[u8], options: SendOptions) -> Result<Bytes, ChannelSendError> {
        let len = crate::wire::message_frame_len(16, self.inner.address.len(), body.len());
        if len - crate::wire::frame::FRAME_OVERHEAD > self.inner.max_frame {
            return Err(ChannelSendError::TooLarge {
                len: body.len(),
                max: self.inner.max_frame,
            });
        }
        let id: [u8; 16] = rand::random();
        let mut buf = BytesMut::with_capacity(len);
        encode_message_frame(&mut buf, options, now_ms(), &id, &self.inner.address, body);
        Ok(buf.freeze())
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
                at_ms: now_ms(),
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
            .cloned()
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

    pub(crate) fn close_sender(&self) {
        self.inner.sender.close();
    }

    pub(crate) fn handler(&self) -> Arc<dyn MessageHandler> {
        Arc::new(self.clone())
    }
}

impl MessageHandler for Channel {
    fn deliver(&self, msg: ChannelData, _wire_len: usize) -> Result<(), DeliveryError> {
        let sender = Member::from_packet(&msg.sender)
            .map_err(|e| DeliveryError(format!("bad sender address: {e}")))?;
        let rm = ReceivedMessage {
            sender,
            options: msg.options,
            timestamp: msg.timestamp,
            unique_id: msg.unique_id,
            body: msg.message,
        };
        {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_MESSAGES {
                recent.pop_front();
            }
            let n = rm.body.len().min(PREVIEW_BYTES);
            recent.push_back(MessageSummary {
                from: rm.sender.id.unique_hex(),
                from_addr: rm.sender.id.addr().to_string(),
                options: rm.options.0,
                len: rm.body.len(),
                preview: String::from_utf8_lossy(&rm.body[..n]).into_owned(),
                timestamp: rm.timestamp,
            });
        }
        let ls = read(&self.inner.listeners).clone();
        let mut first_err = None;
        for l in ls {
            if let Err(e) = l.message_received(&rm) {
                Metrics::inc(&self.inner.metrics.listener_errors_total);
                tracing::debug!(from = %rm.sender.id, error = %e, "listener rejected a message");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(DeliveryError(e.0)),
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
