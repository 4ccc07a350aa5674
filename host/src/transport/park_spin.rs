//! Spinning, before a runtime worker parks, for the ACKs that pipelined
//! sends wait for.
//!
//! A task that waits for an ACK cannot busy-poll for it without holding
//! the runtime worker that the other sending tasks need (tried on the
//! pipelined connection: −14 %). But once the worker has nothing else to
//! run it is about to park in `epoll_wait`, and on a virtual machine a
//! parked worker whose core goes idle costs tens of µs to wake when the
//! ACK comes. Tokio calls a hook just before a worker parks
//! ([`before_park`], installed by [`crate::config::RuntimeConfig::build`]):
//! if pipelined sends are waiting for ACKs, it spins for up to the sender's
//! `busy_poll_us` on an epoll set of the pipelined connections, and returns
//! as soon as one has bytes to read. The worker then parks, finds the
//! socket ready at once, and runs the ACK reader without a wake-up.
//!
//! Bounds: one spinner at a time in the process; each spin at most the
//! budget; it backs off by the busy-poll's rule ([`PollHistory`]): after two
//! waits in a row in which the ACK came later than twice the budget, or
//! while waits that spun take longer than waits that parked at once (a
//! machine with no core to spare, where the spinner holds the core the
//! peer needs), it spins only once every 64 parks. A wait lasts from the
//! hook until the worker is woken ([`after_unpark`], Tokio's
//! `on_thread_unpark`). Nothing spins while no pipelined send waits, nor
//! while the machine is short of CPU ([`super::cpu_pressure`]).

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

// When to spin: the busy-poll's own rule.
use super::busy_poll::PollHistory;

/// The process's spinner: the epoll set of pipelined connections, the sends
/// waiting on them, and the budget.
struct ParkSpin {
    epoll: OwnedFd,
    awaiting: AtomicUsize,
    budget_ns: AtomicU64,
    /// How long recent waits took, spun and parked; held while spinning
    /// (so one spinner at a time).
    history: Mutex<PollHistory>,
}

std::thread_local! {
    /// This worker's wait under way: when it began, and whether it spun
    /// (and missed) or parked at once because spinning was backed off.
    static WAITING: Cell<Option<(Instant, bool)>> = const { Cell::new(None) };
}

/// What the spins did, process-wide (`shoal_park_spins_total`).
#[derive(Debug, Default)]
pub struct SpinCounts {
    /// Spins that saw an ACK arrive.
    pub hit: AtomicU64,
    /// Spins that ran out of budget.
    pub missed: AtomicU64,
    /// Parks with sends waiting that did not spin (backed off).
    pub skipped: AtomicU64,
}

static SPIN: OnceLock<Option<ParkSpin>> = OnceLock::new();
/// Tests of the spinning itself, which run beside other tests, ignore the
/// machine's CPU pressure.
static IGNORE_CPU_PRESSURE: AtomicBool = AtomicBool::new(false);
static COUNTS: SpinCounts = SpinCounts {
    hit: AtomicU64::new(0),
    missed: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
};

/// The process-wide counts of what the spins did.
pub fn counts() -> &'static SpinCounts {
    &COUNTS
}

/// Appends `shoal_park_spins_total{outcome=...}` in Prometheus' text
/// format (process-wide: every node of the process shares the spinner).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP shoal_park_spins_total Times a runtime worker about to park spun for the ACKs of pipelined sends: hit (an ACK came), missed (budget spent), skipped (backed off)."
    );
    let _ = writeln!(out, "# TYPE shoal_park_spins_total counter");
    for (outcome, c) in [
        ("hit", &COUNTS.hit),
        ("missed", &COUNTS.missed),
        ("skipped", &COUNTS.skipped),
    ] {
        let _ = writeln!(
            out,
            "shoal_park_spins_total{{outcome=\"{outcome}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
}

#[allow(unsafe_code)]
fn spinner() -> Option<&'static ParkSpin> {
    SPIN.get_or_init(|| {
        // SAFETY: epoll_create1 takes no pointers; a negative result is an
        // error, anything else a new descriptor this process owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "no epoll set for spinning before park; workers park at once"
            );
            return None;
        }
        Some(ParkSpin {
            // SAFETY: `fd` was just returned by epoll_create1 and is not
            // owned by anything else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            awaiting: AtomicUsize::new(0),
            budget_ns: AtomicU64::new(0),
            history: Mutex::new(PollHistory::default()),
        })
    })
    .as_ref()
}

/// Spins for at most `budget_us` µs before a worker parks while pipelined
/// sends wait (the largest budget any sender of the process asked for).
pub(crate) fn set_budget(budget_us: u64) {
    if let Some(s) = spinner() {
        s.budget_ns
            .fetch_max(budget_us.saturating_mul(1000), Ordering::Relaxed);
    }
}

/// Adds a pipelined connection's socket to the set spun on. It leaves the
/// set by itself when the socket is closed.
#[allow(unsafe_code)]
pub(crate) fn watch(fd: RawFd) {
    let Some(s) = spinner() else { return };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are open (the caller holds `fd`); `ev` is a
    // valid epoll_event for the call's duration.
    let rc = unsafe { libc::epoll_ctl(s.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot watch a pipelined connection for spinning");
    }
}

/// A pipelined send waiting for its ACKs, counted while it lives.
#[derive(Debug)]
pub(crate) struct Awaiting(bool);

impl Awaiting {
    pub(crate) fn start() -> Self {
        match spinner() {
            Some(s) => {
                s.awaiting.fetch_add(1, Ordering::Relaxed);
                Self(true)
            }
            None => Self(false),
        }
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        if self.0
            && let Some(s) = spinner()
        {
            s.awaiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The hook Tokio calls before a worker parks (`on_thread_park`): spins
/// while pipelined sends wait for ACKs and none has come, within the
/// budget. An application that builds its own runtime for an embedded node
/// can install it too.
pub fn before_park() {
    let Some(s) = SPIN.get().and_then(Option::as_ref) else {
        return;
    };
    let unended = WAITING.take();
    if unended.is_none() && s.awaiting.load(Ordering::Relaxed) == 0 {
        return; // an idle node's park: nothing to do
    }
    let budget = Duration::from_nanos(s.budget_ns.load(Ordering::Relaxed));
    let Ok(mut history) = s.history.try_lock() else {
        return; // another worker spins
    };
    // A wait [`after_unpark`] did not end (a runtime built without it): a
    // spin that caught nothing counts as a long wait, so spinning still
    // backs off on sparse ACKs.
    if let Some((_, true)) = unended {
        history.polled(Duration::MAX, budget);
    }
    if s.awaiting.load(Ordering::Relaxed) == 0 || budget.is_zero() {
        return;
    }
    if super::cpu_pressure::saturated() && !IGNORE_CPU_PRESSURE.load(Ordering::Relaxed) {
        // Not a sample of either kind: every wait is longer on a machine
        // short of CPU.
        COUNTS.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if !history.should_try() {
        COUNTS.skipped.fetch_add(1, Ordering::Relaxed);
        WAITING.set(Some((Instant::now(), false)));
        return;
    }
    let start = Instant::now();
    let hit = loop {
        if s.ready() {
            break true;
        }
        if s.awaiting.load(Ordering::Relaxed) == 0 || start.elapsed() >= budget {
            break false;
        }
        std::hint::spin_loop();
    };
    if hit {
        history.polled(start.elapsed(), budget);
        COUNTS.hit.fetch_add(1, Ordering::Relaxed);
    } else {
        WAITING.set(Some((start, true)));
        COUNTS.missed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The hook Tokio calls when a worker wakes (`on_thread_unpark`): ends the
/// wait [`before_park`] began, so that spinning is judged by how long the
/// worker waited for the ACKs, spun or not. Without it spinning still backs
/// off on spins that caught nothing.
pub fn after_unpark() {
    let Some((since, spun)) = WAITING.take() else {
        return;
    };
    let Some(s) = SPIN.get().and_then(Option::as_ref) else {
        return;
    };
    let budget = Duration::from_nanos(s.budget_ns.load(Ordering::Relaxed));
    if let Ok(mut history) = s.history.try_lock() {
        if spun {
            history.polled(since.elapsed(), budget);
        } else {
            history.parked(since.elapsed(), budget);
        }
    }
}

impl ParkSpin {
    /// Whether a watched socket has bytes (or an end) to read.
    #[allow(unsafe_code)]
    fn ready(&self) -> bool {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
        // SAFETY: `ev` has room for the one event asked for; timeout 0
        // never blocks.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), ev.as_mut_ptr(), 1, 0) };
        n > 0
    }
}

/// Forgets how recent waits went (tests, which share the process's
/// spinner with other tests).
#[cfg(test)]
fn reset_history() {
    if let Some(s) = spinner()
        && let Ok(mut h) = s.history.lock()
    {
        *h = PollHistory::default();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use std::io::{Read, Write};

    use super::*;
    use crate::config::RuntimeConfig;
    use crate::transport::pipe::PipeConn;
    use crate::wire::AckKind;

    /// On a runtime built from the node config (the hook installed), a
    /// worker that has nothing left to run while pipelined sends wait for
    /// ACKs spins for them before it parks, and catches them.
    ///
    /// The history is process-wide and the lib's other tests run beside
    /// this one: on a loaded machine two slow waits back spinning off for
    /// 64 parks (a CI run failed so, after 50 rounds). So each round starts
    /// from a fresh history, and rounds go on until a spin catches an ACK
    /// (bounded); what is checked is that spinning catches ACKs at all.
    #[test]
    fn a_worker_about_to_park_spins_for_pipelined_acks() {
        IGNORE_CPU_PRESSURE.store(true, Ordering::Relaxed);
        set_budget(2000);
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        // The peer answers every read's frames (one byte each) after a
        // pause, so the sender's worker is idle by then.
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 64];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                std::thread::sleep(Duration::from_micros(200));
                for _ in 0..n {
                    if s.write_all(AckKind::Ack.frame()).is_err() {
                        return;
                    }
                }
            }
        });
        let rt = RuntimeConfig {
            worker_threads: 1,
            ..RuntimeConfig::default()
        }
        .build()
        .expect("runtime");
        let hits = counts().hit.load(Ordering::Relaxed);
        let caught = || counts().hit.load(Ordering::Relaxed) - hits;
        let deadline = Instant::now() + Duration::from_secs(20);
        rt.block_on(async {
            let conn = PipeConn::connect(addr, 1024, None).await.expect("connect");
            for _ in 0..2000 {
                if caught() > 0 || Instant::now() > deadline {
                    break;
                }
                reset_history();
                let sends = (0..4).map(|_| {
                    let conn = conn.clone();
                    tokio::spawn(async move { conn.send(&[Bytes::from_static(b"x")], 1).await })
                });
                for s in sends {
                    let r = tokio::time::timeout(Duration::from_secs(10), s)
                        .await
                        .expect("no send hangs")
                        .expect("task");
                    assert_eq!(r, Ok(vec![]));
                }
            }
            conn.fail(crate::transport::sender::PeerError::Closed);
        });
        drop(rt);
        peer.join().expect("peer");
        assert!(
            caught() > 0,
            "no ACK was caught by spinning before park in 2000 rounds or 20 s"
        );
    }
}
