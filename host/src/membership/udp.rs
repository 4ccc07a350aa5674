//! The membership socket, in Tokio's reactor only while the service waits
//! for a datagram.
//!
//! A socket in the reactor wakes a parked runtime thread for every datagram
//! that arrives, whether or not a task reads it then. At 30 members that is
//! 60 wake-ups a second per node for heartbeats alone, and on a small
//! machine each wake-up (not the few microseconds of work it brings) is
//! what an idle cluster costs. While the service batches its reads
//! (`membership.receive_batch_ms`), the socket is out of the reactor:
//! datagrams queue in the kernel without waking anyone, and are read
//! together at the end of the batch.

use std::io;
use std::net::SocketAddr;

/// A non-blocking UDP socket, in or out of the reactor.
#[derive(Debug)]
pub(super) struct Udp {
    state: State,
}

#[derive(Debug)]
enum State {
    /// In the reactor: a read can park.
    Registered(tokio::net::UdpSocket),
    /// Out of it: datagrams wake nobody.
    Plain(std::net::UdpSocket),
    /// A registration change failed and lost the socket (never expected).
    Lost,
}

fn lost() -> io::Error {
    io::Error::other("membership socket lost while changing its reactor registration")
}

impl Udp {
    pub(super) fn new(socket: tokio::net::UdpSocket) -> Self {
        Self {
            state: State::Registered(socket),
        }
    }

    /// Leaves the reactor: datagrams that arrive now wake nobody.
    pub(super) fn unregister(&mut self) {
        if let State::Registered(_) = self.state {
            let State::Registered(s) = std::mem::replace(&mut self.state, State::Lost) else {
                return;
            };
            self.state = match s.into_std() {
                Ok(s) => State::Plain(s),
                Err(e) => {
                    tracing::warn!(error = %e, "membership socket could not leave the reactor");
                    State::Lost
                }
            };
        }
    }

    fn registered(&mut self) -> io::Result<&tokio::net::UdpSocket> {
        if let State::Plain(_) = self.state {
            let State::Plain(s) = std::mem::replace(&mut self.state, State::Lost) else {
                return Err(lost());
            };
            // Registering reports readiness already there: datagrams that
            // came while out of the reactor are not missed.
            self.state = State::Registered(tokio::net::UdpSocket::from_std(s)?);
        }
        match &self.state {
            State::Registered(s) => Ok(s),
            _ => Err(lost()),
        }
    }

    /// Reads one datagram without waiting (`WouldBlock` when none is queued).
    pub(super) fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &self.state {
            State::Registered(s) => s.try_recv_from(buf),
            State::Plain(s) => s.recv_from(buf),
            State::Lost => Err(lost()),
        }
    }

    /// Waits for a datagram, in the reactor.
    pub(super) async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.registered()?.recv_from(buf).await
    }

    /// Sends one datagram; waits (in the reactor) only if the send buffer is full.
    pub(super) async fn send_to(&mut self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let r = match &self.state {
            State::Registered(s) => s.try_send_to(buf, to),
            State::Plain(s) => s.send_to(buf, to),
            State::Lost => Err(lost()),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.registered()?.send_to(buf, to).await
            }
            r => r,
        }
    }
}
