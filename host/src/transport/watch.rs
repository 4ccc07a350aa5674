//! Watch connections: one idle TCP connection to every member's receiver,
//! so the node hears of a crash the moment it happens.
//!
//! When a process dies its kernel closes its sockets at once (a FIN, or a
//! reset), so a connection to it reads end-of-file or an error within a
//! round trip, long before its heartbeats are missed for `dropTime`. A
//! connection the node happens to use for messages would tell the same, but
//! only on a cluster with traffic; the watch connection tells it on an idle
//! one too. It never carries a byte: it is opened, read until it breaks and
//! opened again (with a back-off) while the member is in the membership
//! table.
//!
//! The watch decides nothing. Each broken (or refused) connection is
//! reported once to the node's control loop, which hands it to the
//! plug-ins that ask for `connection-events` (the failure detectors), and
//! they verify with a probe before anyone is dropped: a live member may
//! close a connection too (a restart of its receiver, an idle timeout of a
//! proxy in between).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::member::{Member, MemberId};
use crate::metrics::Metrics;

/// How long a connect may take before it counts as failed (Tribes'
/// TcpFailureDetector `connectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First wait before reconnecting after a break; doubled per failure. Short:
/// when a process dies its kernel closes the established connections an
/// instant before its listening socket, so the detector's first probe may
/// still be accepted; the reconnect, refused, is the second report.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// Longest wait between reconnects to a member that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a broken watch connection is reported: the member and the cause.
pub type Report = Arc<dyn Fn(Member, String) + Send + Sync>;

/// The running watches, one task per member.
pub struct Watcher {
    tasks: Mutex<HashMap<MemberId, JoinHandle<()>>>,
    report: Report,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("watched", &self.tasks_lock().len())
            .finish()
    }
}

impl Watcher {
    /// No watch yet; breaks go to `report`.
    pub fn new(report: Report, metrics: Arc<Metrics>) -> Self {
        Self {
            tasks: Mutex::new(HashMap::new()),
            report,
            metrics,
        }
    }

    fn tasks_lock(&self) -> std::sync::MutexGuard<'_, HashMap<MemberId, JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches exactly `members`: starts a watch for each new one, stops
    /// those of members no longer listed. Must run inside the runtime.
    pub fn reconcile(&self, members: &[Member]) {
        let mut tasks = self.tasks_lock();
        tasks.retain(|id, task| {
            let keep = members.iter().any(|m| m.id == *id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for m in members {
            tasks.entry(m.id).or_insert_with(|| {
                tokio::spawn(watch(m.clone(), self.report.clone(), self.metrics.clone()))
            });
        }
    }

    /// Members watched now.
    pub fn len(&self) -> usize {
        self.tasks_lock().len()
    }

    /// Whether no member is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every watch (the node is shutting down).
    pub fn stop(&self) {
        for (_, t) in self.tasks_lock().drain() {
            t.abort();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Keeps the `watch_connections` gauge right however the task ends
/// (aborted while connected included).
struct Open<'a>(&'a Metrics);

impl<'a> Open<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.watch_connections.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.watch_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn watch(m: Member, report: Report, metrics: Arc<Metrics>) {
    let addr = m.id.addr();
    let mut backoff = MIN_BACKOFF;
    loop {
        let cause = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _open = Open::new(&metrics);
                let opened = std::time::Instant::now();
                let cause = wait_closed(s, addr).await;
                // A connection that lived is a fresh start; one closed at
                // once (a member refusing it) keeps backing off.
                if opened.elapsed() >= MAX_BACKOFF {
                    backoff = MIN_BACKOFF;
                }
                cause
            }
            Ok(Err(e)) => format!("watch connection to {addr} failed: {e}"),
            Err(_) => format!(
                "watch connection to {addr} not accepted within {} ms",
                CONNECT_TIMEOUT.as_millis()
            ),
        };
        Metrics::inc(&metrics.watch_connections_lost_total);
        tracing::debug!(member = %m.id, %cause, "watch connection lost");
        report(m.clone(), cause);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads until the connection breaks; returns why. The receiver never
/// writes on a connection that sends nothing, but anything it does write is
/// read and discarded (16 bytes at a time), never kept.
async fn wait_closed(mut s: TcpStream, addr: SocketAddr) -> String {
    let mut buf = [0u8; 16];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return format!("watch connection to {addr} closed by the member"),
            Ok(_) => continue,
            Err(e) => return format!("watch connection to {addr} broken: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    fn member(addr: SocketAddr) -> Member {
        Member {
            id: MemberId {
                host: addr.ip(),
                port: addr.port(),
                unique_id: [7; 16],
            },
            domain: Bytes::new(),
            alive_ms: 0,
            payload: Bytes::new(),
            command: Bytes::new(),
            secure_port: -1,
            udp_port: -1,
        }
    }

    #[tokio::test]
    async fn a_closed_listener_is_reported_once_per_break_and_unwatched_members_are_left_alone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let w = Watcher::new(
            Arc::new(move |m: Member, cause: String| {
                let _ = tx.send((m, cause));
            }),
            metrics.clone(),
        );
        let m = member(addr);
        w.reconcile(std::slice::from_ref(&m));
        let (conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the watch connects")
            .expect("accept");
        assert!(rx.try_recv().is_err(), "nothing reported while it is open");
        // The member "crashes": its end of the connection and its listener go.
        drop(conn);
        drop(listener);
        let (who, cause) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a report")
            .expect("open channel");
        assert_eq!(who.id, m.id);
        assert!(cause.contains("closed by the member"), "{cause}");
        // The next attempt is refused and reported as such.
        let (_, cause) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a second report")
            .expect("open channel");
        assert!(cause.contains("failed"), "{cause}");
        w.reconcile(&[]);
        assert!(w.is_empty());
        assert_eq!(metrics.watch_connections.load(Ordering::Relaxed), 0);
    }
}
