//! The pooled parallel sender (Tomcat's PooledParallelSender + NioSender).
//!
//! One pool of TCP connections per member address, at most `pool_size` in use
//! at once. A send to several members runs in parallel; each member's part is
//! bounded by `timeout_ms`, retried on connection errors up to
//! `max_retry_attempts` times on a fresh connection, and reported on its own in
//! [`SendError`] when it fails — as Tribes' faulty-member list.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::busy_poll::{Busy, BusyPoll, PollHistory, Side};
use super::iov::Cursor;
use super::pipe::PipeConn;
use super::socket::Socket;
use crate::config::SenderConfig;
use crate::member::MemberId;
use crate::metrics::Metrics;
use crate::security::Security;
use crate::wire::{AckKind, FrameDecoder};

/// Largest frame accepted on the ACK path (an ACK is 21 bytes).
const MAX_ACK_FRAME: usize = 64 * 1024;
/// Bytes asked of one read on the ACK path (the ACKs of a batch of frames).
const ACK_READ: usize = 2048;

/// Why a send to one member failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection broke while writing or waiting for the ACK.
    #[error("connection error: {0}")]
    Io(String),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// No ACK (or nothing at all) within the send timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer's listener failed to process the message (FAIL-ACK).
    #[error("remote processing failed (FAIL-ACK)")]
    FailAck,
    /// No pooled connection became free within `max_wait_ms`.
    #[error("no free pooled connection within {0:?}")]
    PoolExhausted(Duration),
    /// The sender is shutting down.
    #[error("sender closed")]
    ShuttingDown,
    /// An ACK that does not carry the cluster key's seal (a peer without
    /// the key, or a forged ACK): the message's fate is unknown.
    #[error("unauthenticated ACK: {0}")]
    Unauthenticated(String),
}

impl PeerError {
    /// Errors worth a reconnect and resend: the connection, not the message,
    /// was at fault. Timeouts and FAIL-ACKs are not retried (the peer may have
    /// processed the message).
    fn retryable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Io(_) | Self::Closed)
    }
}

/// One member that a send did not reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultyMember {
    /// The member.
    pub member: MemberId,
    /// What went wrong.
    pub error: PeerError,
}

/// A send that failed for some (or all) of its destinations; the others got it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("send failed for {} member(s): {}", .faulty.len(), describe(.faulty))]
pub struct SendError {
    /// Each member the message did not reach, with its error.
    pub faulty: Vec<FaultyMember>,
}

fn describe(f: &[FaultyMember]) -> String {
    f.iter()
        .map(|m| format!("{}: {}", m.member, m.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A member's ordered lane, held.
type LaneGuard = tokio::sync::OwnedMutexGuard<Option<Conn>>;

/// A place in the queue of a member's ordered lane (see
/// [`Sender::queue_on_lane`]).
pub struct LaneTicket {
    member: MemberId,
    state: TicketState,
}

enum TicketState {
    Ready(LaneGuard),
    Waiting(Pin<Box<dyn Future<Output = LaneGuard> + Send>>),
}

impl std::fmt::Debug for LaneTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneTicket")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

struct Conn {
    stream: Socket,
    rbuf: BytesMut,
    poll: PollHistory,
}

struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    /// The connection of ordered sends ([`Sender::queue_on_lane`]): one at
    /// a time, in the order their tickets were taken (tokio's mutex is
    /// FIFO), always on this connection, so the peer reads them in order.
    ordered: Arc<tokio::sync::Mutex<Option<Conn>>>,
    /// Acknowledged sends to this member in progress.
    acked: AtomicUsize,
    /// The pipelined connection that acknowledged sends use while others
    /// are in progress.
    pipe: tokio::sync::Mutex<Option<Arc<PipeConn>>>,
}

/// Pooled connections to every member, shared by all senders of a node.
pub struct Sender {
    cfg: SenderConfig,
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    metrics: Arc<Metrics>,
    ack_decoder: FrameDecoder,
    /// Polls for ACKs before parking (`busy_poll_us`).
    busy_poll: BusyPoll,
    /// Sends waiting for ACKs right now: on a connection of their own or on
    /// a pipelined one.
    waiting: AtomicUsize,
    /// With a cluster key: ACKs are opened.
    security: Option<Arc<Security>>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The members one send goes to at once, and how many of them have not
/// had their frames written yet.
#[derive(Debug)]
struct Fan {
    members: usize,
    unwritten: AtomicUsize,
}

impl Fan {
    fn new(members: usize) -> Self {
        Self {
            members,
            unwritten: AtomicUsize::new(members),
        }
    }
}

/// One member's part of a [`Fan`]: counted as written once, at its first
/// write or when it gives up.
#[derive(Debug)]
struct FanMember<'a> {
    fan: &'a Fan,
    done: std::sync::atomic::AtomicBool,
}

impl<'a> FanMember<'a> {
    fn new(fan: &'a Fan) -> Self {
        Self {
            fan,
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn written(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.fan.unwritten.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for FanMember<'_> {
    fn drop(&mut self) {
        self.written();
    }
}

impl Sender {
    /// A sender with no connections yet.
    pub fn new(cfg: SenderConfig, metrics: Arc<Metrics>) -> Self {
        super::park_spin::set_budget(cfg.busy_poll_us);
        Self {
            busy_poll: BusyPoll::new(cfg.busy_poll_us, metrics.clone(), Side::Sender),
            cfg,
            pools: Mutex::new(HashMap::new()),
            metrics,
            ack_decoder: FrameDecoder::new(MAX_ACK_FRAME),
            waiting: AtomicUsize::new(0),
            security: None,
        }
    }

    /// Opens every ACK with the cluster key (a sealed frame from the peer).
    pub fn with_security(mut self, security: Option<Arc<Security>>) -> Self {
        self.security = security;
        self
    }

    /// Sends `frames` (complete, encoded frames) to every destination in
    /// parallel, in order on one connection per destination, then waits for
    /// `acks` acknowledgement frames from each. Returns when every destination
    /// succeeded or failed.
    pub async fn send(
        &self,
        dests: &[MemberId],
        frames: &[Bytes],
        acks: usize,
    ) -> Result<(), SendError> {
        self.send_on(dests, frames, acks).await
    }

    /// Takes a place, now, in the queue of `member`'s ordered lane: one
    /// connection per member that ordered sends use one at a time, in the
    /// order their tickets were taken. Sending with the ticket later
    /// ([`Sender::send_with_tickets`]) waits only for the earlier tickets of
    /// the same member, so a member that does not answer delays no other.
    pub fn queue_on_lane(&self, member: MemberId) -> LaneTicket {
        let lane = self.pool(member.addr()).ordered.clone();
        let mut wait: Pin<Box<dyn Future<Output = LaneGuard> + Send>> = Box::pin(lane.lock_owned());
        // The first poll puts the ticket in the mutex's queue; a later
        // poll, with a real waker, takes the lane when its turn comes.
        let mut cx = Context::from_waker(Waker::noop());
        let state = match wait.as_mut().poll(&mut cx) {
            Poll::Ready(guard) => TicketState::Ready(guard),
            Poll::Pending => TicketState::Waiting(wait),
        };
        LaneTicket { member, state }
    }

    /// Sends `frames` to each ticket's member over its ordered lane, all
    /// members at once; like [`Sender::send`] otherwise.
    pub async fn send_with_tickets(
        &self,
        tickets: Vec<LaneTicket>,
        frames: &[Bytes],
        acks: usize,
    ) -> Result<(), SendError> {
        let fan = Fan::new(tickets.len());
        let fan = &fan;
        let faulty = futures_util::future::join_all(tickets.into_iter().map(|t| async move {
            let member = t.member;
            let part = FanMember::new(fan);
            let max_wait = Duration::from_millis(self.cfg.max_wait_ms);
            let guard = match t.state {
                TicketState::Ready(g) => g,
                TicketState::Waiting(wait) => match tokio::time::timeout(max_wait, wait).await {
                    Ok(g) => g,
                    Err(_) => {
                        return Err(FaultyMember {
                            member,
                            error: PeerError::PoolExhausted(max_wait),
                        });
                    }
                },
            };
            self.send_one(member, frames, acks, Some(guard), &part)
                .await
        }))
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
        self.outcome(faulty)
    }

    async fn send_on(
        &self,
        dests: &[MemberId],
        frames: &[Bytes],
        acks: usize,
    ) -> Result<(), SendError> {
        let faulty: Vec<FaultyMember> = match dests {
            [] => Vec::new(),
            [one] => self
                .send_one(*one, frames, acks, None, &FanMember::new(&Fan::new(1)))
                .await
                .err()
                .into_iter()
                .collect(),
            many => {
                let fan = Fan::new(many.len());
                futures_util::future::join_all(many.iter().map(|d| async {
                    self.send_one(*d, frames, acks, None, &FanMember::new(&fan))
                        .await
                }))
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect()
            }
        };
        self.outcome(faulty)
    }

    fn outcome(&self, faulty: Vec<FaultyMember>) -> Result<(), SendError> {
        if faulty.is_empty() {
            Ok(())
        } else {
            Metrics::add(&self.metrics.send_failures_total, faulty.len() as u64);
            Err(SendError { faulty })
        }
    }

    async fn send_one(
        &self,
        member: MemberId,
        frames: &[Bytes],
        acks: usize,
        lane: Option<LaneGuard>,
        fan: &FanMember<'_>,
    ) -> Result<(), FaultyMember> {
        let result = if lane.is_none() && acks > 0 {
            self.send_acked(member, frames, acks, fan).await
        } else {
            self.transfer(member, frames, acks, lane, fan)
                .await
                .and_then(|failed| {
                    if failed.is_empty() {
                        Ok(())
                    } else {
                        Err(PeerError::FailAck)
                    }
                })
        };
        result.map_err(|error| FaultyMember { member, error })
    }

    /// An acknowledged send on the pool. Alone (no other acknowledged send
    /// to the member in progress), it has a pooled connection to itself and
    /// busy-polls for its ACK: the lowest latency. Otherwise it goes on the
    /// member's pipelined connection ([`PipeConn`]), where it is written
    /// together with whatever else is pending and nobody waits for an ACK
    /// before writing. Each message still gets its own ACK.
    async fn send_acked(
        &self,
        member: MemberId,
        frames: &[Bytes],
        acks: usize,
        fan: &FanMember<'_>,
    ) -> Result<(), PeerError> {
        let pool = self.pool(member.addr());
        let mut waiting = Busy::new(&self.waiting);
        waiting.set(true);
        let mut mine = Busy::new(&pool.acked);
        mine.set(true);
        let failed = if pool.acked.load(Ordering::Relaxed) == 1 {
            self.transfer(member, frames, acks, None, fan).await?
        } else {
            Metrics::inc(&self.metrics.sync_sends_pipelined_total);
            self.send_piped(member, &pool, frames, acks).await?
        };
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PeerError::FailAck)
        }
    }

    /// Sends on the member's pipelined connection, retrying on a new one
    /// after a connection error.
    async fn send_piped(
        &self,
        member: MemberId,
        pool: &Pool,
        frames: &[Bytes],
        acks: usize,
    ) -> Result<Vec<usize>, PeerError> {
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut attempt = 0;
        // As in `transfer`: a retry sends only the messages not acknowledged.
        let one_ack_per_frame = frame_count(frames) == Some(acks);
        let mut progress = Progress::default();
        loop {
            if progress.got >= acks {
                self.count_sent(frames, &progress.failed);
                return Ok(progress.failed);
            }
            let rest = progress.rest(frames, acks);
            let (send, want) = match &rest {
                Some((r, want)) => (r.as_slice(), *want),
                None => (frames, acks),
            };
            let err = match self.pipe(member.addr(), pool).await {
                Err(e) => e,
                Ok(conn) => match tokio::time::timeout(timeout, conn.send(send, want)).await {
                    Ok(Ok(failed)) => {
                        let failed = if one_ack_per_frame {
                            let base = progress.got;
                            progress.failed.extend(failed.iter().map(|i| i + base));
                            progress.failed
                        } else {
                            failed
                        };
                        self.count_sent(frames, &failed);
                        return Ok(failed);
                    }
                    Ok(Err(broken)) => {
                        if one_ack_per_frame {
                            let base = progress.got;
                            progress
                                .failed
                                .extend(broken.failed.iter().map(|i| i + base));
                            progress.got += broken.acked;
                        }
                        broken.error
                    }
                    Err(_) => {
                        // Later ACKs could only come after the missing one.
                        conn.fail(PeerError::Timeout(timeout));
                        Metrics::inc(&self.metrics.ack_timeouts_total);
                        PeerError::Timeout(timeout)
                    }
                },
            };
            if let Some(err) = self.give_up(member, err, &mut attempt) {
                return Err(err);
            }
        }
    }

    /// The member's pipelined connection, opened if there is none alive.
    async fn pipe(&self, addr: SocketAddr, pool: &Pool) -> Result<Arc<PipeConn>, PeerError> {
        let max_wait = Duration::from_millis(self.cfg.max_wait_ms);
        let mut slot = match tokio::time::timeout(max_wait, pool.pipe.lock()).await {
            Ok(s) => s,
            Err(_) => return Err(PeerError::PoolExhausted(max_wait)),
        };
        if let Some(c) = slot.as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        if pool.permits.is_closed() {
            return Err(PeerError::ShuttingDown);
        }
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let conn = match tokio::time::timeout(
            timeout,
            PipeConn::connect(addr, MAX_ACK_FRAME, self.security.clone()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(PeerError::Connect(e.to_string())),
            Err(_) => {
                return Err(PeerError::Connect(format!(
                    "no connection within {timeout:?}"
                )));
            }
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `frames` to one member on a pooled connection (or its ordered
    /// lane) and reads `acks` ACKs, retrying on a fresh connection after a
    /// connection error. Ok holds the positions of FAIL-ACKs among the ACKs.
    /// `fan` is the number of members the same send goes to at once (see
    /// [`Sender::exchange`]).
    async fn transfer(
        &self,
        member: MemberId,
        frames: &[Bytes],
        acks: usize,
        lane: Option<LaneGuard>,
        fan: &FanMember<'_>,
    ) -> Result<Vec<usize>, PeerError> {
        let addr = member.addr();
        let pool = self.pool(addr);
        let max_wait = Duration::from_millis(self.cfg.max_wait_ms);
        // Ordered sends hold their lane for the whole exchange; the others
        // take a permit of the pool.
        let mut lane = lane;
        let mut permit = None;
        if lane.is_none() {
            match tokio::time::timeout(max_wait, pool.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => permit = Some(p),
                Ok(Err(_)) => return Err(PeerError::ShuttingDown),
                Err(_) => return Err(PeerError::PoolExhausted(max_wait)),
            }
        }
        // Sends from the pool are counted in `send_acked`.
        let mut waiting = Busy::new(&self.waiting);
        waiting.set(lane.is_some() && acks > 0);
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut attempt = 0;
        // Messages acknowledged by earlier attempts (one frame and one ACK
        // each), and the FAIL-ACKs among them: a retry sends only the rest.
        let one_ack_per_frame = acks > 0 && frame_count(frames) == Some(acks);
        let mut progress = Progress::default();
        loop {
            // A retry always uses a fresh connection: the pooled one just failed.
            let conn = match (&mut lane, attempt) {
                (_, 1..) => None,
                (Some(lane), 0) => lane.take(),
                (None, 0) => pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop(),
            };
            let rest = progress.rest(frames, acks);
            let (send, want) = match &rest {
                Some((r, want)) => (r.as_slice(), *want),
                None => (frames, acks),
            };
            let mut this = Progress::default();
            let result = tokio::time::timeout(
                timeout,
                self.exchange(addr, conn, send, want, fan, &mut this),
            )
            .await;
            if one_ack_per_frame {
                let base = progress.got;
                progress.failed.extend(this.failed.iter().map(|i| i + base));
                progress.got += this.got;
            }
            let err = match result {
                Ok(Ok(conn)) => {
                    match (&mut lane, &permit) {
                        (Some(lane), _) => **lane = Some(conn),
                        (None, Some(permit)) => self.checkin(&pool, conn, permit),
                        (None, None) => {}
                    }
                    let failed = if one_ack_per_frame {
                        progress.failed
                    } else {
                        this.failed
                    };
                    self.count_sent(frames, &failed);
                    return Ok(failed);
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    if acks > 0 {
                        Metrics::inc(&self.metrics.ack_timeouts_total);
                    }
                    PeerError::Timeout(timeout)
                }
            };
            if let Some(err) = self.give_up(member, err, &mut attempt) {
                return Err(err);
            }
        }
    }

    /// Counts a delivered exchange.
    fn count_sent(&self, frames: &[Bytes], failed: &[usize]) {
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        Metrics::add(&self.metrics.messages_sent_total, frames.len() as u64);
        Metrics::add(&self.metrics.bytes_sent_total, bytes as u64);
        Metrics::add(&self.metrics.fail_acks_received_total, failed.len() as u64);
    }

    /// After a failed attempt: `None` to retry on a fresh connection (a
    /// connection error, retries left), else the error to report.
    fn give_up(&self, member: MemberId, err: PeerError, attempt: &mut u32) -> Option<PeerError> {
        if err.retryable() && *attempt < self.cfg.max_retry_attempts {
            *attempt += 1;
            Metrics::inc(&self.metrics.send_retries_total);
            tracing::debug!(%member, error = %err, attempt, "send failed; reconnecting");
            return None;
        }
        tracing::debug!(%member, error = %err, "send failed");
        Some(err)
    }

    fn checkin(&self, pool: &Pool, conn: Conn, _permit: &OwnedSemaphorePermit) {
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// Writes the frames on `conn` (or a new connection) and reads the ACKs.
    /// ACKs read and FAIL-ACK positions go to `progress` as they arrive,
    /// so a caller whose exchange failed knows which messages got through.
    ///
    /// A send to several members at once (`fan`) runs one exchange per
    /// member, polled in turn by one task: each yields once after its
    /// write, and none busy-polls for an ACK while another has not written
    /// yet (it is still connecting, say), so that every member has its
    /// frames before any exchange holds the task. The ACKs then come back
    /// in parallel, as with Tribes' parallel sender, instead of one round
    /// trip after the other.
    async fn exchange(
        &self,
        addr: SocketAddr,
        conn: Option<Conn>,
        frames: &[Bytes],
        acks: usize,
        fan: &FanMember<'_>,
        progress: &mut Progress,
    ) -> Result<Conn, PeerError> {
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let stream = TcpStream::connect(addr)
                    .await
                    .and_then(Socket::new)
                    .map_err(|e| PeerError::Connect(e.to_string()))?;
                Conn {
                    stream,
                    rbuf: BytesMut::with_capacity(256),
                    poll: PollHistory::default(),
                }
            }
        };
        write_frames(&mut conn.stream, frames)
            .await
            .map_err(|e| PeerError::Io(e.to_string()))?;
        fan.written();
        if fan.fan.members > 1 && acks > 0 {
            tokio::task::yield_now().await;
        }

        if acks == 0 {
            // Tribes' health check: one non-blocking read; end of stream means
            // the peer is gone and the bytes may be lost.
            let mut probe = [0u8; 64];
            let read = conn
                .stream
                .std()
                .and_then(|mut s| std::io::Read::read(&mut s, &mut probe));
            return match read {
                Ok(0) => Err(PeerError::Closed),
                Ok(_) => Ok(conn),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(conn),
                Err(e) => Err(PeerError::Io(e.to_string())),
            };
        }
        while progress.got < acks {
            let next = match (self.ack_decoder.decode(&mut conn.rbuf), &self.security) {
                (Ok(Some(data)), Some(sec)) => Ok(Some(
                    sec.open_frame(data)
                        .map_err(|e| PeerError::Unauthenticated(e.to_string()))?,
                )),
                (r, _) => r,
            };
            match next {
                Ok(Some(data)) => match AckKind::from_payload(&data) {
                    Some(AckKind::Ack) => progress.got += 1,
                    Some(AckKind::FailAck) => {
                        progress.failed.push(progress.got);
                        progress.got += 1;
                    }
                    None => {} // Tribes ignores other frames and keeps waiting
                },
                Ok(None) => {
                    // Poll first, unless other sends wait for ACKs too (then
                    // wake-ups overlap, and polling would crowd them out);
                    // the exchanges of this same send do not count: their
                    // task is the one polling.
                    let others = || {
                        self.waiting.load(Ordering::Relaxed) > fan.fan.members
                            || fan.fan.unwritten.load(Ordering::Relaxed) > 0
                    };
                    let started = Instant::now();
                    let polled = self.busy_poll.read(
                        &mut conn.poll,
                        &mut conn.stream,
                        &mut conn.rbuf,
                        ACK_READ,
                        others,
                    );
                    let read = match polled {
                        Some(r) => r,
                        None => {
                            let r = conn.stream.read(&mut conn.rbuf, ACK_READ).await;
                            self.busy_poll.waited(&mut conn.poll, started.elapsed());
                            r
                        }
                    };
                    match read {
                        Ok(0) => return Err(PeerError::Closed),
                        Ok(_) => {}
                        Err(e) => return Err(PeerError::Io(e.to_string())),
                    }
                }
                Err(e) => return Err(PeerError::Io(format!("bad ACK frame: {e}"))),
            }
        }
        Ok(conn)
    }

    fn pool(&self, addr: SocketAddr) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Pool {
                    idle: Mutex::new(Vec::new()),
                    ordered: Arc::new(tokio::sync::Mutex::new(None)),
                    acked: AtomicUsize::new(0),
                    pipe: tokio::sync::Mutex::new(None),
                    permits: Arc::new(Semaphore::new(self.cfg.pool_size)),
                })
            })
            .clone()
    }

    /// Closes the idle connections to a member that left.
    pub fn forget(&self, addr: SocketAddr) {
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        if let Some(p) = pool {
            p.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            if let Ok(mut lane) = p.ordered.try_lock() {
                lane.take();
            }
            close_pipe(&p, PeerError::Closed);
        }
    }

    /// Closes every pooled connection; sends in progress fail with `ShuttingDown`
    /// if they wait for a connection.
    pub fn close(&self) {
        let pools: Vec<_> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in pools {
            p.permits.close();
            p.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            if let Ok(mut lane) = p.ordered.try_lock() {
                lane.take();
            }
            close_pipe(&p, PeerError::ShuttingDown);
        }
    }
}

/// Fails a pool's pipelined connection, if it has one and nobody is
/// opening it right now (then the opener finds the pool closed or gone).
fn close_pipe(pool: &Pool, error: PeerError) {
    if let Ok(mut pipe) = pool.pipe.try_lock()
        && let Some(c) = pipe.take()
    {
        c.fail(error);
    }
}

/// Frames of at least this many bytes on average are written straight from
/// their buffers (`writev`); smaller ones are first copied into one buffer,
/// which is cheaper than a long list of tiny slices.
const VECTORED_MIN_AVERAGE: usize = 4096;

/// Writes `frames` in order, in as few system calls as it can.
/// What an exchange learnt before it ended: ACKs read, and which of them
/// were FAIL-ACKs (positions among the ACKs).
#[derive(Debug, Default)]
struct Progress {
    got: usize,
    failed: Vec<usize>,
}

impl Progress {
    /// What a retry sends: the frames after those already acknowledged,
    /// with the ACKs still wanted. `None` to send everything again (nothing
    /// acknowledged yet, or the frames cannot be told apart), and then the
    /// earlier progress no longer counts.
    fn rest(&mut self, frames: &[Bytes], acks: usize) -> Option<(Vec<Bytes>, usize)> {
        let done = self.got;
        let rest = (done > 0).then(|| frames_after(frames, done)).flatten();
        if rest.is_none() {
            *self = Progress::default();
        }
        rest.map(|r| (r, acks - done))
    }
}

/// The byte at `pos` of the pieces taken as one stream.
fn byte_at(pieces: &[Bytes], mut pos: usize) -> Option<u8> {
    for p in pieces {
        if pos < p.len() {
            return Some(p[pos]);
        }
        pos -= p.len();
    }
    None
}

/// Where each frame of `pieces` (complete frames, one after another,
/// however split into pieces) starts, and where the last ends; `None` if
/// the bytes are not whole frames.
fn frame_offsets(pieces: &[Bytes]) -> Option<Vec<usize>> {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < total {
        offsets.push(at);
        let len = [7, 8, 9, 10].map(|i| byte_at(pieces, at + i));
        let len = i32::from_be_bytes([len[0]?, len[1]?, len[2]?, len[3]?]);
        at += usize::try_from(len).ok()? + crate::wire::frame::FRAME_OVERHEAD;
    }
    (at == total).then(|| {
        offsets.push(total);
        offsets
    })
}

/// How many frames `pieces` hold.
fn frame_count(pieces: &[Bytes]) -> Option<usize> {
    frame_offsets(pieces).map(|o| o.len() - 1)
}

/// The pieces from frame `skip` on (cheap slices of the same buffers).
fn frames_after(pieces: &[Bytes], skip: usize) -> Option<Vec<Bytes>> {
    let from = *frame_offsets(pieces)?.get(skip)?;
    let mut rest = Vec::new();
    let mut start = 0;
    for p in pieces {
        let end = start + p.len();
        if end > from {
            rest.push(p.slice(from.saturating_sub(start)..));
        }
        start = end;
    }
    Some(rest)
}

async fn write_frames(stream: &mut Socket, frames: &[Bytes]) -> std::io::Result<()> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    match frames {
        [] => Ok(()),
        [one] => stream.write_all(one).await,
        many if total / many.len() < VECTORED_MIN_AVERAGE => {
            let mut b = BytesMut::with_capacity(total);
            for f in many {
                b.extend_from_slice(f);
            }
            stream.write_all(&b).await
        }
        many => {
            // (frame index, offset in it) of the first byte not yet written
            let mut at = Cursor::default();
            while !at.done(many) {
                let n = stream.write_vectored(&at.slices(many)).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                at.advance(many, n);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Opening the pipelined connection is bounded by the send timeout: a
    /// member whose listen queue is full (its SYNs dropped) does not hold
    /// the senders for the kernel's connect timeout.
    #[tokio::test]
    async fn opening_the_pipe_gives_up_after_the_send_timeout() {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        l.listen(0).expect("listen");
        let addr = l
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet address");
        // Fill the accept queue; nobody accepts, so later SYNs are dropped.
        let mut held = Vec::new();
        for _ in 0..4 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            let _ = s.connect(&addr.into());
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cfg = SenderConfig {
            timeout_ms: 200,
            ..SenderConfig::default()
        };
        let sender = Sender::new(cfg, Arc::new(Metrics::default()));
        let pool = sender.pool(addr);
        let r = tokio::time::timeout(Duration::from_secs(10), sender.pipe(addr, &pool))
            .await
            .expect("the connect gives up by itself");
        assert!(matches!(r, Err(PeerError::Connect(_))), "{r:?}");
        drop(held);
    }

    fn frame(data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        crate::wire::frame::encode_frame(data, &mut b);
        b.freeze()
    }

    /// Frames are found across pieces however they are split, and the
    /// pieces after frame k are the bytes of frames k.. exactly.
    #[test]
    fn frames_are_counted_and_skipped_across_pieces() {
        let whole: Vec<u8> = [frame(b"zero"), frame(b"one"), frame(&[7; 300])]
            .iter()
            .flat_map(|f| f.to_vec())
            .collect();
        let whole = Bytes::from(whole);
        // The same bytes in odd pieces (one cut inside a length field).
        let pieces = vec![whole.slice(..9), whole.slice(9..30), whole.slice(30..)];
        for p in [vec![whole.clone()], pieces] {
            assert_eq!(frame_count(&p), Some(3));
            for skip in 0..=3 {
                let rest: Vec<u8> = frames_after(&p, skip)
                    .expect("whole frames")
                    .iter()
                    .flat_map(|b| b.to_vec())
                    .collect();
                let from = [0, 22, 43, whole.len()][skip];
                assert_eq!(rest, whole[from..].to_vec(), "skip {skip}");
            }
        }
        assert_eq!(frame_count(&[whole.slice(..whole.len() - 1)]), None);
    }

    /// A fake member: its first connection reads all the frames and
    /// acknowledges `first_acks` of them, then closes; the second reads
    /// what comes and acknowledges it. Answers the bodies each got.
    async fn breaking_member(
        frames: usize,
        first_acks: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<Vec<Vec<u8>>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let decoder = FrameDecoder::default();
            let mut seen = Vec::new();
            for (want, ack) in [
                (frames, first_acks),
                (frames - first_acks, frames - first_acks),
            ] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                while got.len() < want {
                    while let Some(d) = decoder.decode(&mut buf).expect("a frame") {
                        got.push(d.to_vec());
                    }
                    if got.len() < want && s.read_buf(&mut buf).await.expect("read") == 0 {
                        break;
                    }
                }
                for _ in 0..ack {
                    tokio::io::AsyncWriteExt::write_all(&mut s, AckKind::Ack.frame())
                        .await
                        .expect("ack");
                }
                seen.push(got);
            }
            seen
        });
        (addr, server)
    }

    /// A connection that breaks after acknowledging some of a batch: the
    /// retry, on a new connection, sends only the frames not acknowledged,
    /// on a pooled connection and on the pipelined one.
    #[tokio::test]
    async fn a_retry_sends_only_what_was_not_acknowledged() {
        let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let frames: Vec<Bytes> = bodies.iter().map(|b| frame(b)).collect();
        for piped in [false, true] {
            let (addr, server) = breaking_member(5, 2).await;
            let sender = Sender::new(SenderConfig::default(), Arc::new(Metrics::default()));
            let member = MemberId {
                host: addr.ip(),
                port: addr.port(),
                unique_id: [1; 16],
            };
            let failed = if piped {
                let pool = sender.pool(addr);
                sender.send_piped(member, &pool, &frames, 5).await
            } else {
                sender
                    .transfer(member, &frames, 5, None, &FanMember::new(&Fan::new(1)))
                    .await
            }
            .expect("delivered after one retry");
            assert!(failed.is_empty());
            let seen = server.await.expect("server");
            assert_eq!(
                seen[0], bodies,
                "piped {piped}: the first connection got all five"
            );
            assert_eq!(
                seen[1],
                bodies[2..].to_vec(),
                "piped {piped}: the retry sent only the last three"
            );
            assert_eq!(Metrics::get(&sender.metrics.send_retries_total), 1);
        }
    }

    /// A fake member on a thread of its own: reads one frame, then waits
    /// (up to 5 s) for `wait_for` before answering; ACK if it came,
    /// FAIL-ACK if not. Tells `tell` when it has its frame.
    fn waiting_member(
        wait_for: Option<std::sync::mpsc::Receiver<()>>,
        tell: Option<std::sync::mpsc::Sender<()>>,
    ) -> (MemberId, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let member = MemberId {
            host: addr.ip(),
            port: addr.port(),
            unique_id: [addr.port() as u8; 16],
        };
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let decoder = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut chunk = [0u8; 4096];
            while decoder.decode(&mut buf).expect("a frame").is_none() {
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "the sender closed before its frame");
                buf.extend_from_slice(&chunk[..n]);
            }
            if let Some(t) = tell {
                let _ = t.send(());
            }
            let answer = match wait_for {
                None => AckKind::Ack,
                Some(r) => match r.recv_timeout(Duration::from_secs(5)) {
                    Ok(()) => AckKind::Ack,
                    Err(_) => AckKind::FailAck,
                },
            };
            s.write_all(answer.frame()).expect("answer");
        });
        (member, server)
    }

    /// A send to several members writes to all of them before it waits
    /// for any ACK. Member B answers only once member C has its frame; the
    /// sender busy-polls with a budget (30 s) far past B's patience (5 s).
    /// A sender that waited (polled) for B's ACK before writing to C would
    /// get B's FAIL-ACK.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_to_several_members_writes_to_all_before_waiting() {
        let (c_has_it, b_may_answer) = std::sync::mpsc::channel();
        let (b, b_server) = waiting_member(Some(b_may_answer), None);
        let (c, c_server) = waiting_member(None, Some(c_has_it));
        let cfg = SenderConfig {
            busy_poll_us: 30_000_000,
            ..SenderConfig::default()
        };
        let sender = Sender::new(cfg, Arc::new(Metrics::default()));
        let r = sender.send(&[b, c], &[frame(b"to both")], 1).await;
        assert!(r.is_ok(), "B answered only after C had its frame: {r:?}");
        b_server.join().expect("member B");
        c_server.join().expect("member C");
    }

    /// Large frames go out through `writev`, partial writes included (a
    /// small socket buffer forces them), and arrive whole and in order.
    #[tokio::test]
    async fn vectored_writes_keep_every_byte_in_order() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let frames: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 5000 + usize::from(i) * 997]))
            .chain([Bytes::new(), Bytes::from_static(b"end")])
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_send_buffer_size(4096).expect("sndbuf");
        sock.connect(&addr.into()).expect("connect");
        sock.set_nonblocking(true).expect("nonblocking");
        let stream = TcpStream::from_std(sock.into()).expect("tokio stream");
        let mut stream = Socket::new(stream).expect("socket");
        write_frames(&mut stream, &frames).await.expect("written");
        drop(stream);
        assert_eq!(reader.await.expect("reader"), expected);
    }
}
