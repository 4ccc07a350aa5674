//! Bounded, adaptive busy-polling of a socket.
//!
//! Waking a parked thread when bytes arrive costs tens of µs on a virtual
//! machine (measured here: a 1 KiB request/ACK ping-pong between two
//! processes takes ~80 µs p50 when both sides park, ~25 µs when one side
//! polls, ~8 µs when both do). Where a reply is expected soon — an ACK after
//! a send, the next frame of a request/response exchange — polling the
//! socket for a few tens of µs first avoids that wake-up.
//!
//! Bounds: one poller per [`BusyPoll`] (per node side) at a time, each poll
//! at most `budget`; and each connection keeps a [`PollHistory`] of how
//! long its recent waits took, polled or not. After two polled waits in a
//! row that took longer than twice the budget (polling would not have paid:
//! the data came late) it stops polling, retrying once every 64 waits, so
//! sparse traffic (gaps longer than the budget) costs almost nothing.
//! Judging by the wait's whole length, not by the poll's luck, matters: when
//! one side of an exchange stops polling, the other side's waits get longer
//! too, and a rule that backs off on missed polls alone lets both sides talk
//! each other into parking (measured: a fifth of the waits parked, p50 at
//! 28 µs instead of ~15).
//!
//! Polling also stops when it makes waits longer than parking does: the
//! history keeps a moving average of polled and of parked waits, and polls
//! only while the polled ones are not the longer. That is the case on a
//! machine with no core to spare (another busy process, a hypervisor
//! stealing the vCPU): the poller holds the core its peer needs to answer.
//! Measured on 2 vCPUs with one busy process beside the two nodes: p50 89 µs
//! polling against 32 µs parking, where an idle machine gives 13 against
//! ~80 (docs/benchmarks.md, "Polling on a machine with no core to spare").
//!
//! And it stops, for every connection at once, while the kernel says that
//! tasks of this machine wait for a CPU ([`super::cpu_pressure`]): when all
//! waits get longer, polled or not, the averages cannot tell.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::socket::{Socket, read_into};

use crate::metrics::Metrics;

/// Long waits in a row before a connection stops polling.
pub(super) const MISSES_TO_BACK_OFF: u32 = 2;
/// A wait counts as long when it took more than this many budgets.
const SLACK: u32 = 2;
/// While backed off, poll again once every this many waits.
pub(super) const RETRY_EVERY: u32 = 64;
/// Most bytes one poll reads.
const MAX_POLL_READ: usize = 64 * 1024;

/// Which side of the transport a poller serves (for its counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Waits for ACKs.
    Sender,
    /// Waits for the next frame.
    Receiver,
}

/// The node-side poller: budget, the one-at-a-time flag and the counters
/// of what its waits did (`{sender,receiver}_polls_{hit,missed,skipped}_total`).
#[derive(Debug)]
pub(crate) struct BusyPoll {
    budget: Duration,
    active: AtomicBool,
    metrics: Arc<Metrics>,
    side: Side,
    /// Whether the machine is short of CPU ([`super::cpu_pressure`]).
    short_of_cpu: fn() -> bool,
}

/// What one wait did.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit,
    Missed,
    Skipped,
}

/// How long a connection's recent waits took.
#[derive(Debug, Default)]
pub(crate) struct PollHistory {
    /// Long polled waits in a row.
    misses: u32,
    /// Waits not polled since backing off.
    skipped: u32,
    /// Moving averages of whole waits, polled and parked (not polled).
    polled: Average,
    parked: Average,
    /// What the wait under way did, for [`BusyPoll::waited`] to file its
    /// whole length under.
    wait: Wait,
}

/// What a wait did before parking.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Polled, and the poll missed: a polled wait.
    Polled,
    /// Did not poll because the history said not to: a parked wait.
    BackedOff,
    /// Did not poll for another reason (other work, another poller): not
    /// a sample of either.
    #[default]
    Other,
}

/// A moving average of wait lengths (ns). Waits longer than
/// [`Average::CAP`] budgets are gaps in the traffic, not exchanges: they
/// are left out (the misses count them).
#[derive(Debug, Default, Clone, Copy)]
struct Average {
    ns: u64,
    seen: bool,
}

impl Average {
    /// Budgets a sample may take to count.
    const CAP: u32 = 4;
    /// Weight of a new sample: 1 / 2^SHIFT.
    const SHIFT: u32 = 3;

    fn add(&mut self, sample: Duration, budget: Duration) {
        if sample > budget * Self::CAP {
            return;
        }
        let x = sample.as_nanos() as u64;
        if self.seen {
            self.ns = self.ns - (self.ns >> Self::SHIFT) + (x >> Self::SHIFT);
        } else {
            self.ns = x;
            self.seen = true;
        }
    }
}

impl PollHistory {
    /// Whether polling is off for now: polled waits were long twice in a
    /// row, or polled waits take longer than parked ones.
    pub(super) fn backed_off(&self) -> bool {
        self.misses >= MISSES_TO_BACK_OFF
            || (self.polled.seen && self.parked.seen && self.polled.ns > self.parked.ns)
    }

    pub(super) fn should_try(&mut self) -> bool {
        if !self.backed_off() {
            return true;
        }
        self.skipped += 1;
        if self.skipped >= RETRY_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    /// A polled wait took `waited` in all.
    pub(super) fn polled(&mut self, waited: Duration, budget: Duration) {
        self.polled.add(waited, budget);
        if waited <= budget * SLACK {
            self.misses = 0;
            self.skipped = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
        }
    }

    /// A wait that did not poll took `waited` in all. A short one says
    /// polling would have caught the data (when the averages do not say
    /// that polling makes waits longer).
    pub(super) fn parked(&mut self, waited: Duration, budget: Duration) {
        self.parked.add(waited, budget);
        if waited <= budget * SLACK && !(self.polled.seen && self.polled.ns > self.parked.ns) {
            self.misses = 0;
            self.skipped = 0;
        }
    }
}

impl BusyPoll {
    /// A poller that polls for up to `budget_us` µs (0: never), counting
    /// its waits in `metrics` as `side`.
    pub(crate) fn new(budget_us: u64, metrics: Arc<Metrics>, side: Side) -> Self {
        Self {
            budget: Duration::from_micros(budget_us),
            active: AtomicBool::new(false),
            metrics,
            side,
            short_of_cpu: super::cpu_pressure::saturated,
        }
    }

    /// The same, blind to the machine's CPU pressure (tests of the
    /// polling itself, which run beside other tests).
    #[cfg(test)]
    fn ignoring_cpu_pressure(mut self) -> Self {
        self.short_of_cpu = || false;
        self
    }

    fn count(&self, outcome: Outcome) {
        let m = &self.metrics;
        let c = match (self.side, outcome) {
            (Side::Sender, Outcome::Hit) => &m.sender_polls_hit_total,
            (Side::Sender, Outcome::Missed) => &m.sender_polls_missed_total,
            (Side::Sender, Outcome::Skipped) => &m.sender_polls_skipped_total,
            (Side::Receiver, Outcome::Hit) => &m.receiver_polls_hit_total,
            (Side::Receiver, Outcome::Missed) => &m.receiver_polls_missed_total,
            (Side::Receiver, Outcome::Skipped) => &m.receiver_polls_skipped_total,
        };
        Metrics::inc(c);
    }

    /// A wait that `read` did not answer ended: the bytes came after
    /// `waited` in all (polling, then parking).
    pub(crate) fn waited(&self, history: &mut PollHistory, waited: Duration) {
        if self.budget.is_zero() {
            return;
        }
        match std::mem::take(&mut history.wait) {
            Wait::Polled => history.polled(waited, self.budget),
            Wait::BackedOff => history.parked(waited, self.budget),
            Wait::Other => {}
        }
    }

    /// Reads from `stream` into `buf` without parking, for up to the
    /// budget, and only while `others_busy` says no other task of this kind
    /// has work (a poller holds a runtime worker; it must not keep ready
    /// work waiting). `None` when it did not poll or nothing came: the caller
    /// then awaits readiness as usual and reports how long the whole wait
    /// took ([`BusyPoll::waited`]). `Some` is the read's result (0 = end of
    /// stream).
    pub(crate) fn read(
        &self,
        history: &mut PollHistory,
        sock: &mut Socket,
        buf: &mut BytesMut,
        room: usize,
        others_busy: impl Fn() -> bool,
    ) -> Option<io::Result<usize>> {
        if self.budget.is_zero() {
            return None;
        }
        history.wait = Wait::Other;
        if others_busy() || (self.short_of_cpu)() {
            self.count(Outcome::Skipped);
            return None;
        }
        if !history.should_try() {
            history.wait = Wait::BackedOff;
            self.count(Outcome::Skipped);
            return None;
        }
        if self
            .active
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.count(Outcome::Skipped);
            return None;
        }
        // Out of the reactor while polling: the bytes polled for must not
        // also wake a parked runtime thread.
        sock.unregister();
        let stream = match sock.std() {
            Ok(s) => s,
            Err(e) => {
                self.active.store(false, Ordering::Release);
                return Some(Err(e));
            }
        };
        let start = Instant::now();
        let r = loop {
            match read_into(stream, buf, room.min(MAX_POLL_READ)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => break Some(r),
            }
            if start.elapsed() >= self.budget || others_busy() {
                break None;
            }
            std::hint::spin_loop();
        };
        self.active.store(false, Ordering::Release);
        if r.is_some() {
            history.polled(start.elapsed(), self.budget);
        } else {
            history.wait = Wait::Polled;
        }
        self.count(if r.is_some() {
            Outcome::Hit
        } else {
            Outcome::Missed
        });
        r
    }
}

/// Slots of [`Activity`].
const SLOTS: usize = 64;

/// When each connection last carried bytes (one slot per connection, modulo
/// 64), so a connection can tell whether it is the only one busy: polling
/// pays for a lone request/response exchange, not while several peers keep
/// the node's workers busy.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    slots: [AtomicU64; SLOTS],
    next: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slots: [const { AtomicU64::new(0) }; SLOTS],
            next: AtomicUsize::new(0),
        }
    }

    /// A slot for a new connection.
    pub(crate) fn slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % SLOTS
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Connection `slot` carried bytes just now.
    pub(crate) fn touch(&self, slot: usize) {
        self.slots[slot % SLOTS].store(self.now_ms(), Ordering::Relaxed);
    }

    /// Connection `slot` closed.
    pub(crate) fn clear(&self, slot: usize) {
        self.slots[slot % SLOTS].store(0, Ordering::Relaxed);
    }

    /// Whether a connection other than `slot` carried bytes in the last
    /// `within_ms`.
    pub(crate) fn others_recent(&self, slot: usize, within_ms: u64) -> bool {
        let now = self.now_ms();
        self.slots.iter().enumerate().any(|(i, t)| {
            let t = t.load(Ordering::Relaxed);
            i != slot % SLOTS && t != 0 && now.saturating_sub(t) <= within_ms
        })
    }
}

/// Counts its task in a shared counter while switched on; switched off
/// when dropped (also when the task is cancelled).
#[derive(Debug)]
pub(crate) struct Busy<'a> {
    count: &'a AtomicUsize,
    on: bool,
}

impl<'a> Busy<'a> {
    /// Not counted yet.
    pub(crate) fn new(count: &'a AtomicUsize) -> Self {
        Self { count, on: false }
    }

    /// Counts the task (`true`) or not.
    pub(crate) fn set(&mut self, on: bool) {
        if on != self.on {
            if on {
                self.count.fetch_add(1, Ordering::Relaxed);
            } else {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            self.on = on;
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_counts_while_on_and_uncounts_on_drop() {
        let n = AtomicUsize::new(0);
        let mut a = Busy::new(&n);
        a.set(true);
        a.set(true);
        assert_eq!(n.load(Ordering::Relaxed), 1);
        {
            let mut b = Busy::new(&n);
            b.set(true);
            assert_eq!(n.load(Ordering::Relaxed), 2);
        }
        assert_eq!(n.load(Ordering::Relaxed), 1);
        a.set(false);
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn activity_tells_other_recent_connections() {
        let a = Activity::new();
        let (x, y) = (a.slot(), a.slot());
        assert!(!a.others_recent(x, 10));
        a.touch(x);
        assert!(!a.others_recent(x, 10), "its own activity does not count");
        assert!(a.others_recent(y, 10));
        a.clear(x);
        assert!(!a.others_recent(y, 10));
    }

    const BUDGET: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Of `n` waits, how many would poll.
    fn tries(h: &mut PollHistory, n: u32) -> usize {
        (0..n).filter(|_| h.should_try()).count()
    }

    #[test]
    fn long_waits_back_off_and_a_short_one_resumes_polling() {
        let poll = BusyPoll::new(50, Arc::new(Metrics::default()), Side::Sender);
        let mut h = PollHistory::default();
        // data just after the budget (a parked peer's answer): keep polling
        for _ in 0..10 {
            h.wait = Wait::Polled;
            poll.waited(&mut h, us(90));
            assert!(h.should_try());
        }
        // sparse traffic: two long polled waits, then polling stops
        for _ in 0..2 {
            h.wait = Wait::Polled;
            poll.waited(&mut h, Duration::from_millis(5));
        }
        assert!(!h.should_try());
        // one short wait while backed off (the answer plus a wake-up, no
        // shorter than the polled waits were): polling resumes at once
        h.wait = Wait::BackedOff;
        poll.waited(&mut h, us(95));
        assert!(h.should_try());
    }

    #[test]
    fn history_backs_off_after_misses_and_retries_periodically() {
        let mut h = PollHistory::default();
        assert!(h.should_try());
        h.polled(us(500), BUDGET);
        assert!(h.should_try());
        h.polled(us(500), BUDGET);
        // backed off: only one wait in RETRY_EVERY polls
        assert_eq!(tries(&mut h, RETRY_EVERY * 3), 3);
        // a polled wait that caught the data soon: polling again
        h.polled(us(10), BUDGET);
        assert_eq!(tries(&mut h, 2), 2);
    }

    #[test]
    fn polling_stops_while_it_makes_waits_longer_than_parking() {
        let mut h = PollHistory::default();
        // Both caught within the slack, so no miss: but polled waits take
        // 90 µs and parked ones 30 (the poller holds the core the peer needs).
        for _ in 0..8 {
            h.polled(us(90), BUDGET);
            h.parked(us(30), BUDGET);
        }
        assert_eq!(tries(&mut h, RETRY_EVERY * 2), 2, "explores now and then");
        // A short parked wait does not turn it back on against that evidence.
        h.parked(us(30), BUDGET);
        assert!(!h.should_try());
        // The machine frees up: parked waits pay a wake-up, polls catch the
        // data at once; a few explorations turn polling back on.
        let mut explored = 0;
        assert!(h.backed_off());
        while h.backed_off() && explored < 20 {
            for _ in 0..RETRY_EVERY {
                if h.should_try() {
                    h.polled(us(13), BUDGET);
                    explored += 1;
                } else {
                    h.parked(us(80), BUDGET);
                }
            }
        }
        assert!(
            !h.backed_off(),
            "polling resumed after {explored} explorations"
        );
        assert!(explored <= 4, "within a few explorations: {explored}");
        assert_eq!(tries(&mut h, 10), 10);
    }

    #[tokio::test]
    async fn read_returns_bytes_already_there_and_gives_up_on_silence() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut a = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        let mut b = Socket::new(b).expect("socket");
        let metrics = Arc::new(Metrics::default());
        let poll = BusyPoll::new(200, metrics.clone(), Side::Receiver).ignoring_cpu_pressure();
        let mut h = PollHistory::default();
        let mut buf = BytesMut::with_capacity(64);
        // silence: the poll gives up and says so
        assert!(poll.read(&mut h, &mut b, &mut buf, 64, || false).is_none());
        a.write_all(b"ack").await.expect("write");
        // bytes in flight on loopback arrive within the budget, or are read
        // by the next poll
        let mut got = 0;
        for _ in 0..1000 {
            if let Some(r) = poll.read(&mut h, &mut b, &mut buf, 64, || false) {
                got += r.expect("read");
                break;
            }
            h = PollHistory::default();
        }
        assert_eq!(got, 3);
        assert_eq!(&buf[..], b"ack");
        // another task has work: does not poll
        a.write_all(b"y").await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            poll.read(&mut PollHistory::default(), &mut b, &mut buf, 64, || true)
                .is_none()
        );
        assert!(
            poll.read(&mut PollHistory::default(), &mut b, &mut buf, 64, || false)
                .is_some()
        );
        // every wait above was counted by what it did
        let (hit, missed, skipped) = (
            Metrics::get(&metrics.receiver_polls_hit_total),
            Metrics::get(&metrics.receiver_polls_missed_total),
            Metrics::get(&metrics.receiver_polls_skipped_total),
        );
        assert_eq!(hit, 2, "the ACK and the byte after the refused poll");
        assert!(missed >= 1, "the poll on silence");
        assert_eq!(skipped, 1, "the poll refused while others were busy");
        assert_eq!(Metrics::get(&metrics.sender_polls_hit_total), 0);
        // disabled: never polls, counts nothing
        let off = BusyPoll::new(0, metrics.clone(), Side::Sender);
        a.write_all(b"x").await.expect("write");
        assert!(
            off.read(&mut PollHistory::default(), &mut b, &mut buf, 64, || false)
                .is_none()
        );
        assert_eq!(Metrics::get(&metrics.sender_polls_skipped_total), 0);
    }
}
