//! Throughput interceptor (Tribes' ThroughputInterceptor, tribes.md §4.5):
//! counts messages and bytes sent and received, node-wide, and every
//! `interval` messages logs the totals and rates. Never reads bodies.
//!
//! The host does the counting (the `tally` import): it adds every message
//! to the four counters itself and calls the message hooks only with the
//! message that completes an interval, which is when this plug-in reports.
//! On a host that refuses, it counts in its hooks, one call per message.
//!
//! Settings: `interval` (messages between log lines; Tribes: 10000).
//!
//! Live swap: hands its totals and start time to its successor
//! (`export-state` / `take-over`), so counters and rates carry on.

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

const STATE_V1: u8 = 1;

struct Throughput {
    interval: u64,
    tx_msgs: Counter,
    tx_bytes: Counter,
    rx_msgs: Counter,
    rx_bytes: Counter,
    started_ms: u64,
    /// The host counts; the hooks only report.
    tallied: bool,
    reports: Counter,
}

impl Throughput {
    fn report(&self, dir: &str, msgs: u64, bytes: Counter) {
        self.reports.add(1);
        let secs = (host::monotonic_ms().saturating_sub(self.started_ms)).max(1) as f64 / 1000.0;
        let mb = bytes.get() as f64 / (1024.0 * 1024.0);
        host::info(&format!(
            "throughput {dir}: {msgs} messages, {mb:.2} MiB, {:.2} MiB/s, {:.0} msg/s since start",
            mb / secs,
            msgs as f64 / secs
        ));
    }
}

impl Interceptor for Throughput {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["interval"])?;
        let interval: u64 = settings.get_or("interval", 10_000)?;
        if interval == 0 {
            return Err("setting `interval` must be at least 1".into());
        }
        let tx_msgs = Counter::register(
            "tx_messages",
            "Messages sent through the throughput interceptor",
        );
        let tx_bytes = Counter::register(
            "tx_bytes",
            "Body bytes sent through the throughput interceptor",
        );
        let rx_msgs = Counter::register(
            "rx_messages",
            "Messages received through the throughput interceptor",
        );
        let rx_bytes = Counter::register(
            "rx_bytes",
            "Body bytes received through the throughput interceptor",
        );
        let tallied = match tally::count_messages(tx_msgs, tx_bytes, rx_msgs, rx_bytes, interval) {
            Ok(()) => true,
            Err(e) => {
                host::warn(&format!("throughput: counting in the plug-in ({e})"));
                false
            }
        };
        let reports = Counter::register("reports", "Report lines the throughput interceptor wrote");
        Ok(Self {
            interval,
            tx_msgs,
            tx_bytes,
            rx_msgs,
            rx_bytes,
            started_ms: host::monotonic_ms(),
            tallied,
            reports,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Hooks::ON_SEND | Hooks::ON_RECEIVE).version(env!("CARGO_PKG_VERSION"))
    }

    fn on_send(&mut self, msg: &Outgoing<'_>) -> Verdict {
        self.on_send_batch(std::slice::from_ref(msg))
            .pop()
            .unwrap_or(Verdict::Pass)
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        self.on_receive_batch(std::slice::from_ref(msg))
            .pop()
            .unwrap_or(Verdict::Pass)
    }

    /// One counter update per batch: a message to N members counts N times.
    /// Counted by the host: called only when an interval is complete.
    fn on_send_batch(&mut self, msgs: &[Outgoing<'_>]) -> Vec<Verdict> {
        if self.tallied {
            self.report("tx", self.tx_msgs.get(), self.tx_bytes);
            return Vec::new();
        }
        let n: u64 = msgs
            .iter()
            .map(|m| m.destinations.len().max(1) as u64)
            .sum();
        let bytes: u64 = msgs
            .iter()
            .map(|m| u64::from(m.meta.size) * m.destinations.len().max(1) as u64)
            .sum();
        self.tx_bytes.add(bytes);
        let total = self.tx_msgs.add(n);
        if total / self.interval != (total - n) / self.interval {
            self.report("tx", total, self.tx_bytes);
        }
        vec![Verdict::Pass; msgs.len()]
    }

    fn on_receive_batch(&mut self, msgs: &[Incoming<'_>]) -> Vec<Verdict> {
        if self.tallied {
            self.report("rx", self.rx_msgs.get(), self.rx_bytes);
            return Vec::new();
        }
        let n = msgs.len() as u64;
        self.rx_bytes
            .add(msgs.iter().map(|m| u64::from(m.meta.size)).sum());
        let total = self.rx_msgs.add(n);
        if total / self.interval != (total - n) / self.interval {
            self.report("rx", total, self.rx_bytes);
        }
        vec![Verdict::Pass; msgs.len()]
    }

    /// Version 1: a version byte, then tx messages, tx bytes, rx messages,
    /// rx bytes and the start time, each u64 little-endian.
    fn export_state(&mut self) -> Option<Vec<u8>> {
        let mut v = vec![STATE_V1];
        for x in [
            self.tx_msgs.get(),
            self.tx_bytes.get(),
            self.rx_msgs.get(),
            self.rx_bytes.get(),
            self.started_ms,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        Some(v)
    }

    fn take_over(&mut self, state: Option<&[u8]>, _members: &[Member]) -> Result<(), String> {
        let Some(state) = state else {
            return Ok(());
        };
        let Some((&STATE_V1, rest)) = state.split_first() else {
            host::warn(
                "throughput: predecessor's state has an unknown version; starting from zero",
            );
            return Ok(());
        };
        let mut it = rest
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let mut next = || {
            it.next()
                .ok_or("throughput: predecessor's state is truncated")
        };
        let (tm, tb, rm, rb, started) = (next()?, next()?, next()?, next()?, next()?);
        // Counters of a new version start at zero: add the predecessor's totals.
        self.tx_msgs.add(tm);
        self.tx_bytes.add(tb);
        self.rx_msgs.add(rm);
        self.rx_bytes.add(rb);
        self.started_ms = started;
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        let secs = (host::monotonic_ms().saturating_sub(self.started_ms)).max(1) as f64 / 1000.0;
        vec![
            Stat::gauge(
                "tx_mib_per_second",
                self.tx_bytes.get() as f64 / 1048576.0 / secs,
                "Mean send rate since start",
            ),
            Stat::gauge(
                "rx_mib_per_second",
                self.rx_bytes.get() as f64 / 1048576.0 / secs,
                "Mean receive rate since start",
            ),
        ]
    }
}

export_interceptor!(Throughput);
