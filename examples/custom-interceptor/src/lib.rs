//! A shoal interceptor written from scratch with the guest SDK: a token-bucket
//! rate limit per sending member. Each sender may deliver `burst` messages at
//! once and `messages_per_second` on average; messages over the limit are
//! dropped before they reach the application (a sender asking for a
//! synchronized ACK still gets its ACK: the message was received, then
//! filtered). Never reads bodies.
//!
//! Settings: `messages_per_second` (default 1000), `burst` (default: the rate).

use std::collections::HashMap;

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

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

    fn stats(&self) -> Vec<Stat> {
        vec![Stat::gauge("rate_senders", self.buckets.len() as f64, "Senders with a token bucket")]
    }
}

export_interceptor!(RateLimit);
