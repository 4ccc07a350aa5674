//! Membership: who is in the cluster.
//!
//! [`table`] holds Tribes' identity and expiry rules as a pure state machine;
//! this module runs it over UDP: multicast heartbeats (Tomcat's McastService),
//! or unicast heartbeats to a static list or to the addresses a DNS name
//! resolves to ([`dns`]). All send the same member packet every
//! `frequency_ms`, expire members silent for more than `drop_time_ms`, and
//! announce a graceful stop with one shutdown packet.

mod dns;
pub mod table;
mod udp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{MembershipConfig, MembershipKind};
use crate::member::Member;
use crate::metrics::Metrics;
use crate::security::Security;
use crate::wire::{MemberPacket, SHUTDOWN_COMMAND};
pub use table::{LeaveReason, Limits, MemberEvent, MemberTable, Refusal};

/// Receive buffer: one UDP datagram at most (Tribes' MAX_PACKET_SIZE).
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams read at most per wake-up before the service loop goes on.
const MAX_DRAIN: usize = 1024;
/// Payload changes waiting for the node (dropped when full: the table has
/// the latest payloads).
const EVENT_QUEUE: usize = 1024;
/// Heartbeat arrivals waiting for the node's control loop; when full, new
/// ones are dropped (counted).
const ARRIVAL_QUEUE: usize = 4096;
/// Log one warning per this many malformed datagrams (like DomainFilter's logInterval).
const WARN_EVERY: u64 = 100;

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The UDP socket could not be set up.
    #[error("membership socket on {addr}: {cause}")]
    Socket {
        /// Address being bound or joined.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The DNS resolver for `kind = "dns"` could not be set up (no usable
    /// `/etc/resolv.conf`, say).
    #[error("DNS resolver for membership (server {}): {cause}", server.map_or("from /etc/resolv.conf".into(), |s| s.to_string()))]
    Resolver {
        /// `membership.dns_server`, if set.
        server: Option<SocketAddr>,
        /// The resolver's error.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The running membership service.
#[derive(Debug)]
pub struct Membership {
    table: Arc<Mutex<MemberTable>>,
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// The DNS lookup task (`kind = "dns"`).
    lookups: Option<JoinHandle<()>>,
    payload: Arc<Mutex<Bytes>>,
    payload_changes: Option<mpsc::Receiver<Member>>,
    arrivals: Option<mpsc::Receiver<(Member, Instant)>>,
    arrivals_wanted: Arc<std::sync::atomic::AtomicBool>,
    flush: FlushHandle,
}

/// Asks the membership service to read every datagram queued now.
#[derive(Debug, Clone)]
pub struct FlushHandle(mpsc::Sender<tokio::sync::oneshot::Sender<()>>);

impl FlushHandle {
    /// Returns once the service has read (and applied to the table) every
    /// datagram queued on its socket when it got the request, or after
    /// 200 ms. While the service batches its reads, a member's shutdown
    /// announcement may wait in the kernel for up to `receive_batch_ms`;
    /// a broken connection to that member is checked against the table
    /// only after this, so the departure is seen as a shutdown.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.0.try_send(done).is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
        }
    }
}

/// Largest payload a node advertises in its heartbeats.
pub const MAX_PAYLOAD: usize = 4096;

/// Sets the payload of this node's heartbeats while it runs (the next
/// heartbeat carries it).
#[derive(Debug, Clone)]
pub struct PayloadHandle(Arc<Mutex<Bytes>>);

impl PayloadHandle {
    /// Replaces the payload; one larger than [`MAX_PAYLOAD`] is refused
    /// (logged) and the old one kept.
    pub fn set(&self, payload: Bytes) {
        if payload.len() > MAX_PAYLOAD {
            tracing::error!(
                len = payload.len(),
                "member payload too large; not advertised"
            );
            return;
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = payload;
    }
}

struct Service {
    socket: udp::Udp,
    /// Reads datagrams in batches this far apart while they come faster
    /// than that (zero: each as it comes); see [`udp`].
    batch: Duration,
    targets: dns::Targets,
    local: MemberPacket,
    payload: Arc<Mutex<Bytes>>,
    payload_changes: mpsc::Sender<Member>,
    arrivals: mpsc::Sender<(Member, Instant)>,
    /// Whether anyone reads the arrivals (a plug-in with the
    /// `member-heartbeats` hook): if not, none is queued and the node's
    /// control loop is not woken for each heartbeat.
    arrivals_wanted: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    frequency: Duration,
    table: Arc<Mutex<MemberTable>>,
    /// Unbounded so that the service never waits on its reader (its own
    /// heartbeats and expiry go on); bounded in practice by the table's
    /// limits: a member is added at most `max_new_members_per_s` times a
    /// second and leaves once.
    events: mpsc::UnboundedSender<MemberEvent>,
    metrics: Arc<Metrics>,
    /// With a cluster key: heartbeats carry a MAC and others' must.
    security: Option<Arc<Security>>,
}

impl Membership {
    /// Binds the socket, sends the first heartbeat and starts the service task.
    ///
    /// `local` is this node's packet (alive time is filled in per heartbeat);
    /// `unicast_bind` is where a static-list or DNS node receives heartbeats
    /// (the receiver's address and port number).
    pub async fn start(
        cfg: &MembershipConfig,
        local: MemberPacket,
        unicast_bind: SocketAddr,
        metrics: Arc<Metrics>,
        security: Option<Arc<Security>>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<MemberEvent>), MembershipError> {
        let (socket, targets, lookups) = match cfg.kind {
            MembershipKind::Multicast => {
                let group = SocketAddr::new(IpAddr::V4(cfg.address), cfg.port);
                (multicast_socket(cfg)?, dns::fixed(vec![group]), None)
            }
            MembershipKind::Static => {
                let sock = bind_udp(unicast_bind, false)?;
                let targets = cfg
                    .static_members()
                    .into_iter()
                    .filter(|a| *a != unicast_bind)
                    .collect();
                (sock, dns::fixed(targets), None)
            }
            MembershipKind::Dns => {
                let sock = bind_udp(unicast_bind, false)?;
                let (targets, task) = dns::start(cfg, unicast_bind, metrics.clone())?;
                (sock, targets, Some(task))
            }
        };
        let local_id = Member::from_packet(&local).ok().map(|m| m.id);
        let table = Arc::new(Mutex::new(
            MemberTable::new(local_id, Duration::from_millis(cfg.drop_time_ms)).with_limits(
                Limits {
                    max_members: cfg.max_members,
                    max_new_per_s: cfg.max_new_members_per_s,
                    check_source: cfg.check_source,
                },
            ),
        ));
        let (events, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let payload = Arc::new(Mutex::new(local.payload.clone()));
        let (changes_tx, changes_rx) = mpsc::channel(EVENT_QUEUE);
        let (arrivals_tx, arrivals_rx) = mpsc::channel(ARRIVAL_QUEUE);
        let arrivals_wanted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flush_tx, flush_rx) = mpsc::channel(16);
        let mut svc = Service {
            socket: udp::Udp::new(socket),
            batch: Duration::from_millis(cfg.receive_batch_ms()),
            targets,
            local,
            payload: payload.clone(),
            payload_changes: changes_tx,
            arrivals: arrivals_tx,
            arrivals_wanted: arrivals_wanted.clone(),
            started: Instant::now(),
            frequency: Duration::from_millis(cfg.frequency_ms),
            table: table.clone(),
            events,
            metrics,
            security,
        };
        svc.send_heartbeat(false).await;
        let task = tokio::spawn(svc.run(stop_rx, flush_rx));
        Ok((
            Self {
                table,
                stop_tx,
                task: Some(task),
                lookups,
                payload,
                payload_changes: Some(changes_rx),
                arrivals: Some(arrivals_rx),
                arrivals_wanted,
                flush: FlushHandle(flush_tx),
            },
            rx,
        ))
    }

    /// Members currently known to the membership layer (before the channel's
    /// interceptors), longest-running first.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.table).members()
    }

    /// Changes this node's heartbeat payload while it runs.
    pub fn payload_handle(&self) -> PayloadHandle {
        PayloadHandle(self.payload.clone())
    }

    /// Members whose payload changed (or who appeared with one), as heard;
    /// taken once. Bounded: when the reader lags, changes are dropped (the
    /// table always has the latest payload).
    pub fn take_payload_changes(&mut self) -> Option<mpsc::Receiver<Member>> {
        self.payload_changes.take()
    }

    /// Every heartbeat received from a member, with its arrival time; taken
    /// once. Bounded: when the reader lags, arrivals are dropped (counted in
    /// `shoal_heartbeat_arrivals_dropped_total`).
    pub fn take_arrivals(&mut self) -> Option<mpsc::Receiver<(Member, Instant)>> {
        self.arrivals.take()
    }

    /// Whether arrivals are queued at all (off until set).
    pub fn arrivals_wanted(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.arrivals_wanted.clone()
    }

    /// A handle that makes the service read what is queued on its socket.
    pub fn flush_handle(&self) -> FlushHandle {
        self.flush.clone()
    }

    /// The live table, for readers that need the latest alive times.
    pub fn table(&self) -> Arc<Mutex<MemberTable>> {
        self.table.clone()
    }

    /// Stops the service after announcing the departure with one shutdown packet.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.lookups.take() {
            t.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        for t in [self.task.take(), self.lookups.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}

pub(crate) fn lock(t: &Mutex<MemberTable>) -> std::sync::MutexGuard<'_, MemberTable> {
    // A panic while holding the lock cannot leave the table half-updated in a
    // way that matters more than losing membership altogether.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut flushes: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        // The first heartbeat went out in start(); the next ones on the
        // grid the node's other periodic work shares (crate::clock::align).
        let first =
            crate::clock::align(tokio::time::Instant::now() + self.frequency, self.frequency);
        let mut tick = tokio::time::interval_at(first, self.frequency);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_tick = first;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // Datagrams are read as they come until two come within `batch` of
        // each other; from then on the socket is out of the reactor and read
        // every `batch`, until a batch finds nothing. A batch due after the
        // next heartbeat is read with it instead: one wake-up, not two.
        let mut last_read: Option<Instant> = None;
        let mut batch_end: Option<tokio::time::Instant> = None;
        let batch = self.batch;
        let next_batch = |next_tick: tokio::time::Instant| {
            crate::clock::align(tokio::time::Instant::now() + batch, batch).min(next_tick)
        };
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                at = tick.tick() => {
                    next_tick = at + self.frequency;
                    self.send_heartbeat(false).await;
                    // Nothing queued may count as silence.
                    let n = self.drain(&mut buf).await;
                    self.expire().await;
                    if batch_end.is_some() {
                        // This read is the batch's.
                        Metrics::inc(&self.metrics.membership_batches_total);
                        batch_end = (n > 0).then(|| next_batch(next_tick));
                    }
                }
                // New DNS targets hear from us at once (fixed lists never change).
                Ok(()) = self.targets.changed() => self.send_heartbeat(false).await,
                Some(done) = flushes.recv() => {
                    self.drain(&mut buf).await;
                    let _ = done.send(());
                }
                () = sleep_until_some(batch_end) => {
                    Metrics::inc(&self.metrics.membership_batches_total);
                    if self.drain(&mut buf).await == 0 {
                        batch_end = None;
                    } else {
                        self.socket.unregister();
                        batch_end = Some(next_batch(next_tick));
                    }
                }
                r = self.socket.recv_from(&mut buf), if batch_end.is_none() => {
                    match r {
                        Ok((n, from)) => self.on_datagram(&buf[..n], from).await,
                        // ICMP errors from unicast targets that are down surface here.
                        Err(e) => tracing::debug!(error = %e, "membership receive error"),
                    }
                    self.drain(&mut buf).await;
                    let now = Instant::now();
                    // A plug-in that reads heartbeat arrivals (phi accrual)
                    // needs their times: no batching for it.
                    let wanted = self
                        .arrivals_wanted
                        .load(std::sync::atomic::Ordering::Relaxed);
                    if !self.batch.is_zero()
                        && !wanted
                        && last_read.is_some_and(|t| now.duration_since(t) < self.batch)
                    {
                        self.socket.unregister();
                        batch_end = Some(next_batch(next_tick));
                    }
                    last_read = Some(now);
                }
            }
        }
        self.drain(&mut buf).await;
        self.send_heartbeat(true).await;
        tracing::info!("membership stopped (shutdown announced)");
    }

    /// Handles every datagram queued, without waiting; returns how many.
    async fn drain(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        // Bounded: a flood cannot keep the loop from its heartbeats.
        while n < MAX_DRAIN {
            match self.socket.try_recv_from(buf) {
                Ok((len, from)) => {
                    n += 1;
                    self.on_datagram(&buf[..len], from).await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    n += 1;
                    tracing::debug!(error = %e, "membership receive error");
                }
            }
        }
        n
    }

    async fn send_heartbeat(&mut self, shutdown: bool) {
        let mut p = self.local.clone();
        p.alive_ms = self.started.elapsed().as_millis() as i64;
        p.payload = self
            .payload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if shutdown {
            p.command = Bytes::from_static(SHUTDOWN_COMMAND);
        }
        let mut buf = BytesMut::with_capacity(p.encoded_len());
        p.encode(&mut buf);
        if let Some(sec) = &self.security {
            sec.seal_heartbeat(&mut buf);
        }
        let targets = self.targets.borrow().clone();
        for t in targets.iter() {
            match self.socket.send_to(&buf, *t).await {
                Ok(_) => Metrics::inc(&self.metrics.heartbeats_sent_total),
                Err(e) => tracing::debug!(target_addr = %t, error = %e, "heartbeat send failed"),
            }
        }
    }

    async fn on_datagram(&self, data: &[u8], from: SocketAddr) {
        // With a cluster key, only a heartbeat whose MAC verifies is read
        // at all (refusals are counted and logged where they are checked).
        let (data, sent_at) = match &self.security {
            Some(sec) => match sec.open_heartbeat(data) {
                Ok((packet, t)) => (packet, Some(t)),
                Err(_) => return,
            },
            None => (data, None),
        };
        let member = match MemberPacket::decode(data)
            .map_err(|e| e.to_string())
            .and_then(|p| Member::from_packet(&p).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                if data.starts_with(b"FLT2002") {
                    // A Tribes SEND_OPTIONS_MULTICAST channel message: not supported yet.
                    tracing::debug!(%from, "ignoring multicast channel message");
                    return;
                }
                let n = self
                    .metrics
                    .bad_heartbeats_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_multiple_of(WARN_EVERY) {
                    tracing::warn!(%from, error = %e, dropped = n + 1, "dropping malformed membership datagram");
                }
                return;
            }
        };
        if let (Some(sec), Some(t)) = (&self.security, sent_at)
            && sec.heartbeat_fresh(&member.id.unique_id, t).is_err()
        {
            return;
        }
        let (is_local, payload_changed) = {
            let t = lock(&self.table);
            let is_local = t.local_id() == Some(member.id);
            (
                is_local,
                !is_local && t.payload(&member.id) != Some(&member.payload),
            )
        };
        let now = Instant::now();
        if !is_local {
            Metrics::inc(&self.metrics.heartbeats_received_total);
        }
        let id = member.id;
        // Only a heartbeat the table accepts (from the address its member
        // advertises, within the caps) is reported onwards: a forged one
        // must not refresh a failure detector's view or a payload.
        let arrival = (!is_local
            && member.command.as_ref() != SHUTDOWN_COMMAND
            && self
                .arrivals_wanted
                .load(std::sync::atomic::Ordering::Relaxed))
        .then(|| member.clone());
        let changed = payload_changed.then(|| member.clone());
        match lock(&self.table).heard(member, now, from.ip()) {
            Ok(ev) => {
                if let Some(m) = arrival
                    && self.arrivals.try_send((m, now)).is_err()
                {
                    Metrics::inc(&self.metrics.heartbeat_arrivals_dropped_total);
                }
                if let Some(m) = changed {
                    let _ = self.payload_changes.try_send(m);
                }
                if let Some(ev) = ev {
                    let _ = self.events.send(ev);
                }
            }
            Err(why) => {
                let n = self
                    .metrics
                    .heartbeats_refused_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n.is_multiple_of(WARN_EVERY) {
                    tracing::warn!(
                        %from, member = %id, refused = n + 1,
                        "heartbeat refused: {why}{}",
                        if why == Refusal::WrongSource {
                            " (a forged packet, or a node that sends from another \
                             interface than it advertises: then set membership.check_source = false)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }

    async fn expire(&self) {
        let evs = lock(&self.table).expire(Instant::now());
        for ev in evs {
            let _ = self.events.send(ev);
        }
    }
}

fn sock_err(addr: SocketAddr) -> impl Fn(std::io::Error) -> MembershipError {
    move |cause| MembershipError::Socket { addr, cause }
}

fn bind_udp(addr: SocketAddr, reuse: bool) -> Result<tokio::net::UdpSocket, MembershipError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let e = sock_err(addr);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(&e)?;
    if reuse {
        s.set_reuse_address(true).map_err(sock_err(addr))?;
        s.set_reuse_port(true).map_err(sock_err(addr))?;
    }
    s.set_nonblocking(true).map_err(sock_err(addr))?;
    s.bind(&addr.into()).map_err(sock_err(addr))?;
    tokio::net::UdpSocket::from_std(s.into()).map_err(sock_err(addr))
}

/// A socket joined to the group, bound to the group's port with address reuse so
/// several nodes on one host share it (as Java's MulticastSocket does).
fn multicast_socket(cfg: &MembershipConfig) -> Result<tokio::net::UdpSocket, MembershipError> {
    let group = SocketAddr::new(IpAddr::V4(cfg.address), cfg.port);
    let iface = cfg.bind.unwrap_or(Ipv4Addr::UNSPECIFIED);
    // Binding to the group address (not the wildcard) keeps unrelated unicast
    // traffic to this port out, as Tomcat does when `bind` is set.
    let sock = match bind_udp(group, true) {
        Ok(s) => s,
        Err(_) => bind_udp(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.port),
            true,
        )?,
    };
    let e = sock_err(group);
    sock.join_multicast_v4(cfg.address, iface).map_err(&e)?;
    let s2 = socket2::SockRef::from(&sock);
    if let Some(bind) = cfg.bind {
        s2.set_multicast_if_v4(&bind).map_err(sock_err(group))?;
    }
    s2.set_multicast_loop_v4(!cfg.local_loopback_disabled)
        .map_err(sock_err(group))?;
    if let Some(ttl) = cfg.ttl {
        s2.set_multicast_ttl_v4(ttl).map_err(sock_err(group))?;
    }
    Ok(sock)
}

/// Whether multicast to `group:port` sent on the loopback interface comes back
/// to a socket joined on it: the set-up a one-machine multicast cluster
/// (`bind = "127.0.0.1"`) needs. Sends one datagram; waits at most 300 ms.
pub fn loopback_multicast_works(group: Ipv4Addr, port: u16) -> bool {
    let probe = || -> std::io::Result<bool> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into())?;
        s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)?;
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        s.set_multicast_loop_v4(true)?;
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        s.send_to(b"shoal-probe", SocketAddr::new(IpAddr::V4(group), port))?;
        let mut buf = [0u8; 32];
        Ok(matches!(s.recv_from(&mut buf), Ok((11, _))))
    };
    probe().unwrap_or(false)
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
