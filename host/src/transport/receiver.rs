//! The TCP receiver (Tomcat's NioReceiver): accepts peers, reads pipelined
//! frames, acknowledges them by Tribes' rules (tribes.md §2.4) and hands each
//! message to a [`MessageHandler`].
//!
//! Bounded: at most `max_connections` peers and `max_connections_per_address`
//! from one IP; frames of at most `max_frame_bytes`; read buffers that grow
//! with the bytes that arrive (at most doubling per read, never from a
//! header's claim), all of them together within `max_buffer_bytes`. A peer
//! that sends garbage, takes longer than `stall_timeout_ms` over one frame
//! (however it trickles the bytes in), would take the node past its buffer
//! budget, or stays silent for `idle_timeout_ms`, is disconnected with a
//! counter (and a warning at a bounded rate); other peers are not affected.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::busy_poll::{Activity, Busy, BusyPoll, PollHistory, Side};
use super::socket::Socket;
use crate::config::ReceiverConfig;
use crate::metrics::Metrics;
use crate::security::{AuthError, Security};
use crate::wire::{AckKind, ChannelData, DecodeError, FrameDecoder, SenderCache};

/// Most messages delivered as one batch.
const MAX_BATCH: usize = 64;
/// How long [`Receiver::stop`] waits for connections to finish their frame.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// One warning per this many refusals of a kind (each is counted).
const WARN_EVERY: u64 = 100;
/// Bounds of the bytes asked of one read when no frame is pending.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;
/// A connection does not busy-poll when another carried bytes this recently.
const CROWDED_WITHIN_MS: u64 = 10;

/// Why a received message was not processed; answered with FAIL-ACK when the
/// sender asked for a synchronized ACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery failed: {0}")]
pub struct DeliveryError(pub String);

/// Where the receiver hands decoded messages.
pub trait MessageHandler: Send + Sync + 'static {
    /// Processes the messages read together from one connection, in order,
    /// on the connection's task (its next frames wait). Must not block the
    /// thread. Returns one result per message; an `Err` becomes a FAIL-ACK
    /// if that message's sender asked for `USE_ACK | SYNCHRONIZED_ACK`.
    fn deliver_batch(
        &self,
        msgs: Vec<ChannelData>,
    ) -> impl std::future::Future<Output = Vec<Result<(), DeliveryError>>> + Send;
}

/// Why the receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// No port in the auto-bind range could be bound.
    #[error("cannot bind receiver on {ip} ports {first}..={last}: {cause}")]
    Bind {
        /// Address tried.
        ip: IpAddr,
        /// First port tried.
        first: u16,
        /// Last port tried.
        last: u16,
        /// The last error.
        cause: std::io::Error,
    },
}

/// Binds the listener on `ip`, trying `port`, `port + 1`, … for `auto_bind`
/// ports (Tomcat's autoBind). Port 0 lets the OS choose.
pub async fn bind(ip: IpAddr, cfg: &ReceiverConfig) -> Result<TcpListener, ReceiverError> {
    let first = cfg.port;
    let tries = if first == 0 { 1 } else { cfg.auto_bind.max(1) };
    let last = first.saturating_add(tries - 1);
    let mut last_err = None;
    for port in first..=last {
        match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(ReceiverError::Bind {
        ip,
        first,
        last,
        cause: last_err.unwrap_or_else(|| std::io::Error::other("no port tried")),
    })
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    local_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

struct Shared<H> {
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    decoder: FrameDecoder,
    stall: Duration,
    busy_poll: BusyPoll,
    /// Connections handling frames right now (not waiting for bytes).
    serving: AtomicUsize,
    /// When each connection last carried bytes.
    activity: Activity,
    /// `receiver.max_buffer_bytes`.
    buffer_budget: usize,
    /// `receiver.idle_timeout_ms` (none: never).
    idle: Option<Duration>,
    /// `receiver.max_connections_per_address`, and the count per address.
    per_address: usize,
    open_by_address: Mutex<HashMap<IpAddr, usize>>,
    /// With a cluster key: frames are opened, ACKs sealed.
    security: Option<Arc<Security>>,
}

/// Logs a warning for the first refusal of a kind and then every
/// [`WARN_EVERY`]th, with the running count.
fn warn_bounded(counter: &AtomicU64, what: &str, peer: SocketAddr) {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(WARN_EVERY) {
        tracing::warn!(%peer, count = n + 1, "{what}");
    }
}

/// A connection's share of the node's read-buffer budget, given back when
/// it ends.
struct BufferShare<'a> {
    gauge: &'a std::sync::atomic::AtomicI64,
    held: usize,
}

impl<'a> BufferShare<'a> {
    /// Accounts for the buffer now holding `capacity` bytes; `false` if that
    /// takes the node past `budget` (then nothing is taken).
    fn resize(&mut self, capacity: usize, budget: usize) -> bool {
        if capacity == self.held {
            return true; // the common case: no shared counter touched
        }
        let delta = capacity as i64 - self.held as i64;
        let total = self.gauge.fetch_add(delta, Ordering::Relaxed) + delta;
        if delta > 0 && total > budget as i64 {
            self.gauge.fetch_sub(delta, Ordering::Relaxed);
            return false;
        }
        self.held = capacity;
        true
    }
}

impl Drop for BufferShare<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.held as i64, Ordering::Relaxed);
    }
}

impl Receiver {
    /// Starts accepting on `listener`.
    pub fn start<H: MessageHandler>(
        listener: TcpListener,
        cfg: &ReceiverConfig,
        handler: Arc<H>,
        metrics: Arc<Metrics>,
        security: Option<Arc<Security>>,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            handler,
            busy_poll: BusyPoll::new(cfg.busy_poll_us, metrics.clone(), Side::Receiver),
            metrics,
            decoder: FrameDecoder::new(cfg.max_frame_bytes),
            stall: Duration::from_millis(cfg.stall_timeout_ms),
            serving: AtomicUsize::new(0),
            activity: Activity::new(),
            buffer_budget: cfg.max_buffer_bytes,
            idle: (cfg.idle_timeout_ms > 0).then(|| Duration::from_millis(cfg.idle_timeout_ms)),
            per_address: cfg.max_connections_per_address,
            open_by_address: Mutex::new(HashMap::new()),
            security,
        });
        let limit = Arc::new(Semaphore::new(cfg.max_connections));
        let task = tokio::spawn(accept_loop(listener, shared, limit, stop_rx));
        Ok(Self {
            local_addr,
            stop_tx,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection after the frame it is
    /// processing. Bounded: connections still busy after [`STOP_DEADLINE`]
    /// (an ACK write to a peer that stopped reading, say) are cut (logged).
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(STOP_DEADLINE, &mut t).await.is_err()
        {
            tracing::warn!(
                "receiver: connections still busy {STOP_DEADLINE:?} after stop (a peer not reading its ACKs?); closing them"
            );
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}

async fn accept_loop<H: MessageHandler>(
    listener: TcpListener,
    shared: Arc<Shared<H>>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => r,
            // reap finished connection tasks so the set stays small
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn_bounded(
                        &shared.metrics.refused_connections_total,
                        "refusing connection: receiver.max_connections reached",
                        peer,
                    );
                    drop(stream);
                    continue;
                };
                {
                    let mut open = shared
                        .open_by_address
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let n = open.entry(peer.ip()).or_insert(0);
                    if *n >= shared.per_address {
                        drop(open);
                        warn_bounded(
                            &shared.metrics.refused_connections_per_address_total,
                            "refusing connection: receiver.max_connections_per_address reached for its address",
                            peer,
                        );
                        drop(stream);
                        continue;
                    }
                    *n += 1;
                }
                let shared = shared.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    // Counts given back however the connection ends (a
                    // panic in `serve` included).
                    let _open = OpenConnection::new(&shared, peer.ip());
                    serve(stream, peer, &shared, stop).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off, never give up.
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // Stop signalled: connections see the same signal and finish.
    while conns.join_next().await.is_some() {}
}

/// One open inbound connection in the counts (`inbound_connections`, the
/// per-address map); taken out when dropped.
struct OpenConnection<'a, H> {
    shared: &'a Shared<H>,
    ip: IpAddr,
}

impl<'a, H> OpenConnection<'a, H> {
    fn new(shared: &'a Shared<H>, ip: IpAddr) -> Self {
        shared
            .metrics
            .inbound_connections
            .fetch_add(1, Ordering::Relaxed);
        Self { shared, ip }
    }
}

impl<H> Drop for OpenConnection<'_, H> {
    fn drop(&mut self) {
        self.shared
            .metrics
            .inbound_connections
            .fetch_sub(1, Ordering::Relaxed);
        let mut open = self
            .shared
            .open_by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Why a connection ended.
enum End {
    Eof,
    Stopped,
    Io(std::io::Error),
    Bad(DecodeError),
    Unauthenticated(AuthError),
    Stalled,
    OverBudget,
    Idle,
}

async fn serve<H: MessageHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared<H>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sock = match Socket::new(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot set up connection");
            return;
        }
    };
    // Bytes asked of each read: twice the last read's, within bounds (a
    // read fills zeroed room first, so asking 64 KiB for a 1 KiB frame
    // costs a 64 KiB memset).
    let mut last_read = 0usize;
    // Empty until bytes arrive: an idle connection holds no buffer.
    let mut buf = BytesMut::new();
    let mut share = BufferShare {
        gauge: &shared.metrics.receiver_buffer_bytes,
        held: 0,
    };
    // When the frame now buffered began: its deadline is `stall` from
    // there, however the bytes trickle in.
    let mut frame_started: Option<Instant> = None;
    let mut out = Vec::<u8>::new();
    let mut poll = PollHistory::default();
    let mut senders = SenderCache::default();
    let mut serving = Busy::new(&shared.serving);
    let slot = shared.activity.slot();
    let end = loop {
        // Decode every complete frame already buffered, delivering them in
        // batches of at most MAX_BATCH, and acknowledge them in order. Only
        // an incomplete frame stays buffered across reads (so the buffer is
        // bounded by one frame, and the stall timer only ever times a frame
        // that is really incomplete).
        let mut failed = None;
        let mut refused = None;
        let mut completed = false;
        loop {
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                let next = match (shared.decoder.decode(&mut buf), &shared.security) {
                    (Ok(Some(data)), Some(sec)) => match sec.open_frame(data) {
                        Ok(plain) => Ok(Some(plain)),
                        Err(e) => {
                            refused = Some(e);
                            break;
                        }
                    },
                    (r, _) => r,
                };
                match next {
                    Ok(Some(data)) => match ChannelData::decode_cached(&data, &mut senders) {
                        Ok(msg) => {
                            let wire_len = data.len() + crate::wire::frame::FRAME_OVERHEAD;
                            Metrics::inc(&shared.metrics.messages_received_total);
                            Metrics::add(&shared.metrics.bytes_received_total, wire_len as u64);
                            batch.push(msg);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let full = batch.len() == MAX_BATCH;
            completed |= !batch.is_empty();
            if !batch.is_empty() {
                deliver(batch, shared, &mut out).await;
            }
            if !full || failed.is_some() || refused.is_some() {
                break;
            }
        }
        if !out.is_empty() {
            if let Err(e) = sock.write_all(&out).await {
                break End::Io(e);
            }
            out.clear();
        }
        if let Some(e) = failed {
            break End::Bad(e);
        }
        if let Some(e) = refused {
            break End::Unauthenticated(e);
        }
        if buf.is_empty() {
            frame_started = None;
            if buf.capacity() > 2 * MAX_READ {
                // A large frame is done: give its room back.
                buf = BytesMut::new();
            }
        } else if completed || frame_started.is_none() {
            frame_started = Some(Instant::now());
            if buf.capacity() > 4 * MAX_READ && buf.len() < MAX_READ {
                // Keep the start of the next frame, not the last one's room.
                buf = BytesMut::from(&buf[..]);
            }
        }
        // Room for the rest of the current frame, but at most as much again
        // as is buffered (a header's claim alone reserves nothing), or twice
        // the last read; bounded by the frame limit.
        let pending = shared.decoder.pending_len(&buf).unwrap_or(0);
        // A frame's deadline: the stall timeout, plus a second per MiB it
        // claims (at least 1 MiB/s), so a large frame over a slow link
        // still arrives and a trickle of bytes still cannot hold a
        // connection open.
        let frame_deadline = frame_started.map(|began| {
            let claimed = (buf.len() + pending) as u64;
            began + shared.stall + Duration::from_micros(claimed)
        });
        let room = pending
            .min(buf.len().max(MAX_READ))
            .max((last_read * 2).clamp(MIN_READ, MAX_READ))
            .min(shared.decoder.max_frame() + 64);
        if !share.resize(buf.capacity().max(buf.len() + room), shared.buffer_budget) {
            break End::OverBudget;
        }
        // Poll for the next bytes only when no other connection carried
        // bytes lately, and only while none has frames to handle (a poller
        // holds a runtime worker, and on a small machine a core).
        serving.set(false);
        let crowded = shared.activity.others_recent(slot, CROWDED_WITHIN_MS);
        let others = || crowded || shared.serving.load(Ordering::Relaxed) > 0;
        let started = Instant::now();
        let read = if let Some(r) = shared
            .busy_poll
            .read(&mut poll, &mut sock, &mut buf, room, others)
        {
            r
        } else {
            let r = match (frame_deadline, shared.idle) {
                (Some(deadline), _) => tokio::select! {
                    _ = stop.changed() => break End::Stopped,
                    r = tokio::time::timeout_at(deadline.into(), sock.read(&mut buf, room)) => match r {
                        Ok(r) => r,
                        Err(_) => break End::Stalled,
                    },
                },
                (None, Some(idle)) => tokio::select! {
                    _ = stop.changed() => break End::Stopped,
                    r = tokio::time::timeout(idle, sock.read(&mut buf, room)) => match r {
                        Ok(r) => r,
                        Err(_) => break End::Idle,
                    },
                },
                (None, None) => tokio::select! {
                    _ = stop.changed() => break End::Stopped,
                    r = sock.read(&mut buf, room) => r,
                },
            };
            shared.busy_poll.waited(&mut poll, started.elapsed());
            r
        };
        match read {
            Ok(0) => break End::Eof,
            Ok(n) => {
                last_read = n;
                serving.set(true);
                shared.activity.touch(slot);
            }
            Err(e) => break End::Io(e),
        }
    };
    shared.activity.clear(slot);
    match end {
        End::Eof | End::Stopped => {
            if !buf.is_empty() {
                tracing::debug!(%peer, pending = buf.len(), "peer closed in the middle of a frame");
            }
        }
        End::Io(e) => tracing::debug!(%peer, error = %e, "connection error"),
        End::Bad(e) => warn_bounded(
            &shared.metrics.bad_frames_total,
            &format!("dropping connection: malformed frame: {e}"),
            peer,
        ),
        // Counted and logged (bounded) where the frame was opened.
        End::Unauthenticated(e) => {
            tracing::debug!(%peer, error = %e, "dropping connection: frame refused")
        }
        End::Stalled => warn_bounded(
            &shared.metrics.stalled_connections_total,
            &format!(
                "dropping connection: a frame took longer than {:?} (receiver.stall_timeout_ms)",
                shared.stall
            ),
            peer,
        ),
        End::OverBudget => warn_bounded(
            &shared.metrics.over_budget_connections_total,
            "dropping connection: its frame would take the read buffers past receiver.max_buffer_bytes",
            peer,
        ),
        End::Idle => {
            Metrics::inc(&shared.metrics.idle_connections_closed_total);
            tracing::debug!(%peer, "closing a connection idle for receiver.idle_timeout_ms");
        }
    }
}

/// Delivers a batch and queues the ACKs the options call for, in frame order:
/// USE_ACK alone is acknowledged regardless of delivery (Tribes sends it
/// before delivery); USE_ACK | SYNCHRONIZED_ACK gets ACK or FAIL-ACK by the
/// delivery's result.
async fn deliver<H: MessageHandler>(
    batch: Vec<ChannelData>,
    shared: &Shared<H>,
    out: &mut Vec<u8>,
) {
    let opts: Vec<_> = batch.iter().map(|m| m.options).collect();
    let results = shared.handler.deliver_batch(batch).await;
    for (i, o) in opts.into_iter().enumerate() {
        if !o.wants_ack() {
            continue;
        }
        let ok = !o.wants_sync_ack() || results.get(i).is_some_and(Result::is_ok);
        if !ok {
            Metrics::inc(&shared.metrics.fail_acks_sent_total);
        }
        let kind = if ok { AckKind::Ack } else { AckKind::FailAck };
        match &shared.security {
            Some(sec) => out.extend_from_slice(&sec.seal_frame(kind.payload())),
            None => out.extend_from_slice(kind.frame()),
        }
    }
}
