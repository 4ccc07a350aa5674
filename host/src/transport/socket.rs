//! A TCP connection that is registered with Tokio's reactor only while a
//! task waits on it.
//!
//! A socket registered with the reactor (epoll, edge-triggered) wakes the
//! runtime thread parked in `epoll_wait` whenever bytes arrive — also when
//! a busy-polling task reads them first. On a small machine that wake-up
//! costs more than the exchange it interrupts: measured on 2 vCPUs, each
//! sync-ACK round trip woke a second thread in each process (~17 000
//! voluntary switches a second) and preempted the polling thread about as
//! often. So a connection that busy-polls is taken out of the reactor, and
//! put back (one `epoll_ctl`) only when a wait has to park.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream as StdStream;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdRegisterError};

/// A non-blocking TCP stream, in or out of the reactor.
#[derive(Debug)]
pub(crate) struct Socket {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Not registered: bytes arriving wake nobody.
    Plain(StdStream),
    /// Registered: waits can park.
    Registered(AsyncFd<StdStream>),
    /// A registration change failed and lost the stream (never expected).
    Lost,
}

fn lost() -> io::Error {
    io::Error::other("socket lost while changing its reactor registration")
}

impl Socket {
    /// Takes a connected stream out of the reactor.
    pub(crate) fn new(stream: tokio::net::TcpStream) -> io::Result<Self> {
        let _ = stream.set_nodelay(true);
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        Ok(Self {
            state: State::Plain(std),
        })
    }

    /// The stream, for reads and writes that never wait.
    pub(crate) fn std(&self) -> io::Result<&StdStream> {
        match &self.state {
            State::Plain(s) => Ok(s),
            State::Registered(fd) => Ok(fd.get_ref()),
            State::Lost => Err(lost()),
        }
    }

    /// Leaves the reactor (before busy-polling): arriving bytes no longer
    /// wake a parked runtime thread.
    pub(crate) fn unregister(&mut self) {
        if matches!(self.state, State::Registered(_)) {
            let State::Registered(fd) = std::mem::replace(&mut self.state, State::Lost) else {
                return;
            };
            self.state = State::Plain(fd.into_inner());
        }
    }

    fn registered(&mut self) -> io::Result<&AsyncFd<StdStream>> {
        if let State::Plain(_) = self.state {
            let State::Plain(s) = std::mem::replace(&mut self.state, State::Lost) else {
                return Err(lost());
            };
            // Registering reports readiness that is already there, so bytes
            // that came while unregistered are not missed.
            self.state = match register(s) {
                Ok(fd) => State::Registered(fd),
                Err(e) => {
                    let (s, e) = e.into_parts();
                    self.state = State::Plain(s);
                    return Err(e);
                }
            };
        }
        match &self.state {
            State::Registered(fd) => Ok(fd),
            _ => Err(lost()),
        }
    }

    /// Reads at least one byte (0 = end of stream) into `buf`, at most
    /// `room`, parking until some arrive.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        match read_into(self.std()?, buf, room) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        let fd = self.registered()?;
        loop {
            let mut ready = fd.readable().await?;
            match ready.try_io(|s| read_into(s.get_ref(), buf, room)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`, parking while the send buffer is full.
    pub(crate) async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.write_vectored(&[IoSlice::new(data)]).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// One vectored write of at least one byte, parking while the send
    /// buffer is full; returns the bytes written.
    pub(crate) async fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match write_some(self.std()?, slices) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        let fd = self.registered()?;
        loop {
            let mut ready = fd.writable().await?;
            match ready.try_io(|s| write_some(s.get_ref(), slices)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Registers `s` with the reactor (readable and writable); hands it back
/// on failure.
#[allow(unsafe_code)]
pub(crate) fn register(
    s: StdStream,
) -> Result<AsyncFd<StdStream>, AsyncFdRegisterError<StdStream>> {
    // SAFETY: a `std::net::TcpStream` owns its file descriptor: it stays
    // open and the same for as long as the stream lives, and `as_raw_fd`
    // always returns it. The `AsyncFd` owns the stream until `into_inner`.
    unsafe { AsyncFd::register_with_interest(s, Interest::READABLE | Interest::WRITABLE) }
}

fn write_some(mut s: &StdStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match s.write_vectored(slices) {
            Ok(0) if slices.iter().any(|s| !s.is_empty()) => {
                return Err(io::ErrorKind::WriteZero.into());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// One non-blocking read of at most `room` bytes appended to `buf`, into
/// its spare capacity: nothing is zeroed first (a busy-polling reader
/// calls this in a loop, and zeroing 64 KiB per empty poll was 7–10 % of
/// the CPU under 8 concurrent sync-ACK senders).
#[allow(unsafe_code)]
pub(crate) fn read_into(s: &StdStream, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    let room = room.max(1);
    buf.reserve(room);
    let spare = &mut buf.spare_capacity_mut()[..room];
    let n = loop {
        match socket2::SockRef::from(s).recv(spare) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => break r?,
        }
    };
    // SAFETY: `recv` initialised the first `n` bytes of the spare
    // capacity (n <= room <= the spare capacity reserved above).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes that arrive while the socket is out of the reactor are read by
    /// the next parked read; parked reads and writes work in both states.
    #[tokio::test]
    async fn reads_and_writes_in_and_out_of_the_reactor() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut peer = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let mut s = Socket::new(s).expect("socket");
        let mut buf = BytesMut::new();
        // parks (registers), then the peer writes
        let w = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            peer.write_all(b"one").await.expect("write");
            peer
        });
        assert_eq!(s.read(&mut buf, 64).await.expect("read"), 3);
        let mut peer = w.await.expect("writer");
        // out of the reactor: bytes come, nobody is woken; the next read
        // (registering again) still sees them
        s.unregister();
        peer.write_all(b"two").await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(s.read(&mut buf, 64).await.expect("read"), 3);
        assert_eq!(&buf[..], b"onetwo");
        // a write larger than the socket buffers parks until the peer reads
        let big = vec![7u8; 8 << 20];
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 8 << 20];
            peer.read_exact(&mut got).await.expect("read");
            got
        });
        s.unregister();
        s.write_all(&big).await.expect("write");
        assert_eq!(reader.await.expect("reader"), big);
        // end of stream reads 0
        drop(s);
    }
}
