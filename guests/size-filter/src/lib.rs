//! Size filter: messages larger than `max_bytes` are dropped, sent or
//! received (a dropped send fails with an error naming the interceptor).
//! Never reads bodies: the size comes with the metadata. (The host's
//! message filter, `only_sizes_up_to`, selects the messages *up to* a
//! size, the other way round, so every message is offered and the bound is
//! checked here.)
//!
//! The second version of the `filter` plug-in in `examples/rolling-restart`
//! (the first is `domain-filter` with no settings): a filter every node can
//! take without a setting, that changes nothing for a cluster whose
//! messages are all under the bound.
//!
//! Settings: `max_bytes` (default 4 MiB: above the session engine's largest
//! session, `session.max_session_bytes` 1 MiB, and a deploy's 256 KiB
//! chunks; at most the receiver's 16 MiB frame limit, larger would filter
//! nothing) and `logInterval` (one warning per this many dropped messages;
//! default 100, as domain-filter's).

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

/// Default bound: 4 MiB (see the crate doc).
const DEFAULT_MAX_BYTES: u32 = 4 * 1024 * 1024;
/// The receiver's default `max_frame_bytes` (16 MiB): no message is larger.
const LARGEST: u32 = 16 * 1024 * 1024;

struct SizeFilter {
    max_bytes: u32,
    log_interval: u64,
    dropped: Counter,
}

impl SizeFilter {
    fn check(&self, size: u32, way: &str) -> Verdict {
        if size <= self.max_bytes {
            return Verdict::Pass;
        }
        let n = self.dropped.add(1);
        if n % self.log_interval == 1 || self.log_interval == 1 {
            host::warn(&format!(
                "dropping {way} messages over {} bytes ({n} so far), e.g. one of {size}",
                self.max_bytes
            ));
        }
        Verdict::Drop(format!(
            "message of {size} bytes over max_bytes {}",
            self.max_bytes
        ))
    }
}

impl Interceptor for SizeFilter {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["max_bytes", "logInterval"])?;
        let max_bytes: u32 = settings.get_or("max_bytes", DEFAULT_MAX_BYTES)?;
        if !(1..=LARGEST).contains(&max_bytes) {
            return Err(format!(
                "setting `max_bytes` must be 1..={LARGEST}, not {max_bytes}"
            ));
        }
        let log_interval: u64 = settings.get_or("logInterval", 100)?;
        Ok(Self {
            max_bytes,
            log_interval: log_interval.max(1),
            dropped: Counter::register(
                "oversized_messages_dropped",
                "Messages over max_bytes dropped",
            ),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Hooks::ON_SEND | Hooks::ON_RECEIVE).version(env!("CARGO_PKG_VERSION"))
    }

    fn on_send(&mut self, msg: &Outgoing<'_>) -> Verdict {
        self.check(msg.meta.size, "outgoing")
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        self.check(msg.meta.size, "incoming")
    }
}

export_interceptor!(SizeFilter);
