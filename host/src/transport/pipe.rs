//! One connection per member that carries many acknowledged sends at once
//! (pipelining), for when several tasks send to the same member together.
//!
//! A send appends its frames to the connection's pending bytes and its
//! waiter to the in-flight queue, under one lock, so waiters are queued in
//! the order their frames go out. Whoever finds no write in progress writes
//! everything pending in one system call (sends that come meanwhile join the
//! next); a reader task matches the ACKs, which the receiver returns in
//! frame order, to the waiters in turn. Nobody waits for an ACK before
//! writing, and every write carries every send queued by then: on a small
//! machine each segment over loopback costs a wake-up of the receiving
//! thread, so fewer, fuller writes are what raise the rate.
//!
//! Pending bytes are bounded by the callers: each waits for its own send,
//! so at most one message per sending task is pending.
//!
//! A broken connection fails every send in flight on it (with the error, so
//! callers retry on a new one); a send whose ACK does not come within its
//! timeout closes the connection, failing the others too — their ACKs could
//! only come after the missing one.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::iov::Cursor;
use super::sender::PeerError;
use super::socket::register;
use crate::security::Security;
use crate::wire::{AckKind, FrameDecoder};

/// What a waiter gets: the positions of FAIL-ACKs among its ACKs, or how
/// far it got before the connection broke.
type Outcome = Result<Vec<usize>, Broken>;

/// A send the connection failed: the error, and the ACKs (and FAIL-ACK
/// positions among them) it had received by then, so a retry need not
/// send those messages again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Broken {
    pub(crate) error: PeerError,
    pub(crate) acked: usize,
    pub(crate) failed: Vec<usize>,
}

impl Broken {
    fn at_start(error: PeerError) -> Self {
        Self {
            error,
            acked: 0,
            failed: Vec::new(),
        }
    }
}

struct Waiter {
    acks: usize,
    failed: Vec<usize>,
    seen: usize,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct State {
    pending: Vec<Bytes>,
    writing: bool,
    inflight: VecDeque<Waiter>,
    broken: Option<PeerError>,
}

/// A pipelined connection.
pub(crate) struct PipeConn {
    fd: AsyncFd<StdStream>,
    state: Mutex<State>,
    dead: AtomicBool,
}

impl std::fmt::Debug for PipeConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeConn")
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl PipeConn {
    /// Connects to `addr` and starts the connection's ACK reader.
    pub(crate) async fn connect(
        addr: SocketAddr,
        max_ack_frame: usize,
        security: Option<Arc<Security>>,
    ) -> io::Result<Arc<Self>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        super::park_spin::watch(std::os::fd::AsRawFd::as_raw_fd(&std));
        let conn = Arc::new(Self {
            fd: register(std).map_err(|e| e.into_parts().1)?,
            state: Mutex::new(State::default()),
            dead: AtomicBool::new(false),
        });
        tokio::spawn(read_acks(
            conn.clone(),
            FrameDecoder::new(max_ack_frame),
            security,
        ));
        Ok(conn)
    }

    /// Whether new sends can use it.
    pub(crate) fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `frames` and waits for `acks` ACKs (at least one).
    pub(crate) async fn send(&self, frames: &[Bytes], acks: usize) -> Outcome {
        let (done, answer) = oneshot::channel();
        let write = {
            let mut s = self.lock();
            if let Some(e) = &s.broken {
                return Err(Broken::at_start(e.clone()));
            }
            s.pending.extend(frames.iter().cloned());
            s.inflight.push_back(Waiter {
                acks,
                failed: Vec::new(),
                seen: 0,
                done,
            });
            !std::mem::replace(&mut s.writing, true)
        };
        if write {
            let mut guard = WriteGuard {
                conn: self,
                finished: false,
            };
            // Let the other sends already runnable (woken together by the
            // last read of ACKs) add theirs first: one fuller write.
            tokio::task::yield_now().await;
            let r = self.flush().await;
            guard.finished = true;
            if let Err(e) = r {
                self.fail(PeerError::Io(e.to_string()));
            }
        }
        let _awaiting = super::park_spin::Awaiting::start();
        answer
            .await
            .unwrap_or(Err(Broken::at_start(PeerError::Closed)))
    }

    /// Writes what is pending until nothing is.
    async fn flush(&self) -> io::Result<()> {
        loop {
            let parts = {
                let mut s = self.lock();
                if s.pending.is_empty() || s.broken.is_some() {
                    s.writing = false;
                    return Ok(());
                }
                std::mem::take(&mut s.pending)
            };
            self.write_all(&parts).await?;
        }
    }

    async fn write_all(&self, parts: &[Bytes]) -> io::Result<()> {
        let mut at = Cursor::default();
        while !at.done(parts) {
            let slices = at.slices(parts);
            let n = match self.fd.get_ref().write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut ready = self.fd.writable().await?;
                    match ready.try_io(|s| s.get_ref().write_vectored(&slices)) {
                        Ok(r) => r?,
                        Err(_would_block) => continue,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at.advance(parts, n);
        }
        Ok(())
    }

    /// Breaks the connection: every send in flight, and every later one,
    /// fails with `error`; the reader ends.
    pub(crate) fn fail(&self, error: PeerError) {
        self.dead.store(true, Ordering::Release);
        let waiters: Vec<Waiter> = {
            let mut s = self.lock();
            s.broken.get_or_insert(error.clone());
            s.pending.clear();
            s.inflight.drain(..).collect()
        };
        for w in waiters {
            let _ = w.done.send(Err(Broken {
                error: error.clone(),
                acked: w.seen,
                failed: w.failed,
            }));
        }
        let _ = self.fd.get_ref().shutdown(std::net::Shutdown::Both);
    }

    /// One ACK arrived: credits the oldest waiter.
    fn ack(&self, kind: AckKind) -> Result<(), PeerError> {
        let finished = {
            let mut s = self.lock();
            let Some(w) = s.inflight.front_mut() else {
                return Err(PeerError::Io("an ACK nobody waits for".into()));
            };
            if kind == AckKind::FailAck {
                w.failed.push(w.seen);
            }
            w.seen += 1;
            if w.seen < w.acks {
                return Ok(());
            }
            s.inflight.pop_front()
        };
        if let Some(w) = finished {
            let _ = w.done.send(Ok(w.failed));
        }
        Ok(())
    }
}

/// A writer whose future was dropped mid-write leaves the stream in an
/// unknown state: the connection is failed so nobody waits on it forever.
struct WriteGuard<'a> {
    conn: &'a PipeConn,
    finished: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.conn
                .fail(PeerError::Io("a write was cancelled halfway".into()));
        }
    }
}

/// Reads ACKs until the connection ends, handing each to its waiter.
async fn read_acks(conn: Arc<PipeConn>, decoder: FrameDecoder, security: Option<Arc<Security>>) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = match conn.fd.get_ref().read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut ready = match conn.fd.readable().await {
                    Ok(r) => r,
                    Err(e) => break PeerError::Io(e.to_string()),
                };
                match ready.try_io(|s| s.get_ref().read(&mut chunk)) {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => break PeerError::Io(e.to_string()),
                    Err(_would_block) => continue,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break PeerError::Io(e.to_string()),
        };
        if n == 0 {
            break PeerError::Closed;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut bad = None;
        loop {
            let next = match (decoder.decode(&mut buf), &security) {
                (Ok(Some(data)), Some(sec)) => match sec.open_frame(data) {
                    Ok(plain) => Ok(Some(plain)),
                    Err(e) => {
                        bad = Some(PeerError::Unauthenticated(e.to_string()));
                        break;
                    }
                },
                (r, _) => r,
            };
            match next {
                Ok(Some(data)) => {
                    // Tribes ignores other frames on the ACK path.
                    if let Some(kind) = AckKind::from_payload(&data)
                        && let Err(e) = conn.ack(kind)
                    {
                        bad = Some(e);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bad = Some(PeerError::Io(format!("bad ACK frame: {e}")));
                    break;
                }
            }
        }
        if let Some(e) = bad {
            break e;
        }
        if !conn.is_alive() {
            break PeerError::Closed;
        }
    };
    conn.fail(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// ACKs go to the sends in the order they were written; when the peer
    /// closes with sends still in flight, those fail (they do not hang) and
    /// the connection refuses new sends.
    #[tokio::test]
    async fn acks_match_sends_in_order_and_a_close_fails_the_rest() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let peer = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < 3 {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"abc", "frames written in order");
            // ACK the first, FAIL-ACK the second, then close.
            s.write_all(AckKind::Ack.frame()).await.expect("ack");
            s.write_all(AckKind::FailAck.frame())
                .await
                .expect("fail-ack");
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let conn = PipeConn::connect(addr, 1024, None).await.expect("connect");
        let sends = ["a", "b", "c"].map(|f| {
            let conn = conn.clone();
            async move { conn.send(&[Bytes::from_static(f.as_bytes())], 1).await }
        });
        let results = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(sends),
        )
        .await
        .expect("no send hangs");
        peer.await.expect("peer");
        assert_eq!(results[0], Ok(vec![]));
        assert_eq!(results[1], Ok(vec![0]), "its one ACK was a FAIL-ACK");
        assert!(results[2].is_err(), "in flight when the peer closed");
        assert!(!conn.is_alive());
        assert!(conn.send(&[Bytes::from_static(b"d")], 1).await.is_err());
    }
}
