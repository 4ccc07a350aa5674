//! A shoal interceptor written from scratch with the guest SDK: a token-bucket
//! rate limit per sending member. Each sender may deliver `burst` messages at
//! once and `messages_per_second` on average; messages over the limit are
//! dropped before they reach the application (a sender asking for a
//! synchronized ACK still gets its ACK: the message was received, then
//! filtered). Never reads bodies.
//!
//! Settings: `messages_per_second` (default 1000), `burst` (default: the rate).
//!
//! Live swap: the buckets (and the counters' totals) go to the next version
//! (`export_state` / `take_over`), so replacing the plug-in on a running node
//! neither refills every sender's bucket nor resets the counts.

use std::collections::HashMap;

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

const STATE_V1: u8 = 1;

struct Bucket {
    tokens: f64,
    last_ms: u64,
}

struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: HashMap<(u64, u64), Bucket>,
    limited: Counter,
    passed: Counter,
}

impl Interceptor for RateLimit {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["messages_per_second", "burst"])?;
        let rate: f64 = settings.get_or("messages_per_second", 1000.0)?;
        let burst: f64 = settings.get_or("burst", rate)?;
        if !(rate > 0.0 && burst >= 1.0) {
            return Err("messages_per_second must be > 0 and burst >= 1".into());
        }
        Ok(Self {
            rate,
            burst,
            buckets: HashMap::new(),
            limited: Counter::register("rate_limited", "Messages dropped by the rate limit"),
            passed: Counter::register("rate_passed", "Messages within the rate limit"),
        })
    }

    fn capabilities(&self) -> Capabilities {
        // One bucket per sender must be shared by every call: one instance.
        Capabilities::new(Hooks::ON_RECEIVE | Hooks::MEMBER_EVENTS)
            .single_instance()
            .version(env!("CARGO_PKG_VERSION"))
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        let now = host::monotonic_ms();
        let key = (msg.sender.id.hi, msg.sender.id.lo);
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last_ms: now,
        });
        let elapsed = now.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last_ms = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            self.passed.add(1);
            Verdict::Pass
        } else {
            let n = self.limited.add(1);
            if n == 1 || n.is_multiple_of(1000) {
                host::warn(&format!(
                    "rate limit: dropping messages from {}:{} ({n} dropped so far)",
                    msg.sender.host, msg.sender.port
                ));
            }
            Verdict::Drop("rate limit exceeded".into())
        }
    }

    fn member_disappeared(&mut self, m: &Member, _reason: LeaveReason) -> MemberVerdict {
        self.buckets.remove(&(m.id.hi, m.id.lo));
        MemberVerdict::Pass
    }

    /// Version 1: a version byte; the counters' totals; then per bucket the
    /// sender's id (two u64), its tokens (f64) and its last refill (u64),
    /// all little-endian.
    fn export_state(&mut self) -> Option<Vec<u8>> {
        let mut v = vec![STATE_V1];
        v.extend_from_slice(&self.limited.get().to_le_bytes());
        v.extend_from_slice(&self.passed.get().to_le_bytes());
        for ((hi, lo), b) in &self.buckets {
            v.extend_from_slice(&hi.to_le_bytes());
            v.extend_from_slice(&lo.to_le_bytes());
            v.extend_from_slice(&b.tokens.to_le_bytes());
            v.extend_from_slice(&b.last_ms.to_le_bytes());
        }
        Some(v)
    }

    fn take_over(&mut self, state: Option<&[u8]>, _members: &[Member]) -> Result<(), String> {
        let Some(state) = state else {
            return Ok(()); // a fresh start: full buckets
        };
        let Some((&STATE_V1, rest)) = state.split_first() else {
            host::warn(
                "rate limit: unknown state version from the old version; starting with full buckets",
            );
            return Ok(());
        };
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
        if rest.len() < 16 || (rest.len() - 16) % 32 != 0 {
            return Err("rate limit: the old version's state is truncated".into());
        }
        self.limited.add(word(&rest[..8]));
        self.passed.add(word(&rest[8..16]));
        for b in rest[16..].chunks_exact(32) {
            let tokens = f64::from_le_bytes(b[16..24].try_into().unwrap_or_default());
            self.buckets.insert(
                (word(&b[..8]), word(&b[8..16])),
                Bucket {
                    // The new version's burst may be smaller.
                    tokens: tokens.min(self.burst),
                    last_ms: word(&b[24..32]),
                },
            );
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        vec![Stat::gauge(
            "rate_senders",
            self.buckets.len() as f64,
            "Senders with a token bucket",
        )]
    }
}

export_interceptor!(RateLimit);
