//! What the node offers a policy (`policy-host`): a log and node-wide
//! counters. None of these blocks, and none fails in a way the policy must
//! handle. There is a wall clock, but `place` must not depend on it.

use crate::Level;
use crate::bindings::shoal::cluster::policy_host as h;

/// Wall clock, ms since the Unix epoch. Not for `place`, whose answer must
/// not depend on time.
pub fn now_ms() -> i64 {
    h::now_ms()
}

/// Writes a line to the node's log, tagged with the policy's name.
pub fn log(level: Level, message: &str) {
    h::log(level, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    h::log(Level::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    h::log(Level::Warn, message)
}

/// Logs at debug level.
pub fn debug(message: &str) {
    h::log(Level::Debug, message)
}

/// A node-wide counter of this policy (register it in `create`).
#[derive(Debug, Clone, Copy)]
pub struct Counter(u32);

impl Counter {
    /// Registers (or finds) the counter `name` (lowercase, `[a-z0-9_]`) with
    /// one line of `help`; an error when the policy already has 256.
    pub fn try_register(name: &str, help: &str) -> Result<Self, String> {
        h::register_counter(name, help).map(Self)
    }

    /// Registers (or finds) the counter `name`. If the host refuses (256
    /// counters already), logs a warning and returns a counter that counts
    /// nothing.
    pub fn register(name: &str, help: &str) -> Self {
        Self::try_register(name, help).unwrap_or_else(|e| {
            warn(&e);
            Self(u32::MAX)
        })
    }

    /// Adds `delta`; returns the node-wide total.
    #[allow(
        clippy::should_implement_trait,
        reason = "the name the interceptor SDK's `Counter` uses"
    )]
    pub fn add(self, delta: u64) -> u64 {
        h::counter_add(self.0, delta)
    }

    /// The node-wide total.
    pub fn get(self) -> u64 {
        h::counter_add(self.0, 0)
    }
}
