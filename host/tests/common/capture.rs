//! Reads TCP payload bytes off the loopback interface while a test runs: an
//! `AF_PACKET` socket (Linux; needs root or CAP_NET_RAW, as the interop and
//! partition tests have), so a test can show what actually crossed the wire.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// A running capture of the TCP payloads to or from some ports.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u8>>>,
}

/// The payload of an IPv4 TCP segment to or from one of `ports`, if `pkt`
/// (a network-layer packet) is one.
fn tcp_payload<'a>(pkt: &'a [u8], ports: &[u16]) -> Option<&'a [u8]> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]])).min(pkt.len());
    let tcp = pkt.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let src = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dst = u16::from_be_bytes([tcp[2], tcp[3]]);
    if !ports.contains(&src) && !ports.contains(&dst) {
        return None;
    }
    tcp.get(usize::from(tcp[12] >> 4) * 4..)
}

impl Capture {
    /// Starts capturing every TCP payload to or from `ports` on any
    /// interface (the test's traffic is on lo). Panics, saying why, when the
    /// packet socket cannot be opened.
    pub fn start(ports: &[u16]) -> Self {
        let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
        let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(proto)))
            .unwrap_or_else(|e| {
                panic!("opening a packet socket to capture loopback traffic (needs root or CAP_NET_RAW): {e}")
            });
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let ports = ports.to_vec();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sock = sock;
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            while !s.load(Ordering::SeqCst) {
                match sock.read(&mut buf) {
                    Ok(n) => {
                        if let Some(p) = tcp_payload(&buf[..n], &ports) {
                            seen.extend_from_slice(p);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => panic!("reading the packet socket: {e}"),
                }
            }
            seen
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the payload bytes seen, in arrival order (on lo
    /// each segment may appear twice: sent and received).
    pub fn finish(mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
