//! Wall-clock time as Tribes carries it (ms since the Unix epoch). A leaf:
//! imports nothing from the rest of the host.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The grid a node's periodic work is aligned to ([`align`]).
pub const GRID: std::time::Duration = std::time::Duration::from_millis(250);

/// A deadline `delay` from now, moved onto the process-wide grid of
/// [`GRID`] so that a node's periodic work — heartbeat ticks, batched
/// membership reads, plug-in timers, the session sweep, channel heartbeats —
/// comes due together and costs one wake-up, not one each (on a virtual
/// machine waking an idle core is most of what an idle node costs). A
/// deadline at least [`GRID`] away moves to the first grid point no more
/// than a tenth of `delay` before it, so at most a tenth early and less
/// than [`GRID`] late; a shorter one is kept as it is.
pub fn align(deadline: tokio::time::Instant, delay: std::time::Duration) -> tokio::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = tokio::time::Instant::from_std(*BASE.get_or_init(std::time::Instant::now));
    align_to(base, deadline, delay)
}

fn align_to(
    base: tokio::time::Instant,
    deadline: tokio::time::Instant,
    delay: std::time::Duration,
) -> tokio::time::Instant {
    if delay < GRID {
        return deadline;
    }
    let Some(earliest) = deadline.checked_sub(delay / 10) else {
        return deadline;
    };
    let Some(since) = earliest.checked_duration_since(base) else {
        return deadline;
    };
    let grid = GRID.as_nanos();
    let steps = since.as_nanos().div_ceil(grid);
    u64::try_from(steps * grid)
        .ok()
        .and_then(|ns| base.checked_add(std::time::Duration::from_nanos(ns)))
        .unwrap_or(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn long_deadlines_land_on_the_grid_within_their_slack_and_short_ones_stay() {
        let base = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        // Short: unchanged.
        let d = base + ms(1234);
        assert_eq!(align_to(base, d, ms(100)), d);
        for (offset, delay) in [
            (1234, 500),
            (1_000, 1_000),
            (777, 5_000),
            (250, 250),
            (3, 300),
        ] {
            let d = base + ms(offset) + ms(delay);
            let a = align_to(base, d, ms(delay));
            let from_base = a.duration_since(base);
            assert_eq!(
                from_base.as_nanos() % GRID.as_nanos(),
                0,
                "{offset}+{delay}: on the grid"
            );
            assert!(
                a >= d - ms(delay) / 10,
                "{offset}+{delay}: at most a tenth early"
            );
            assert!(
                a < d - ms(delay) / 10 + GRID,
                "{offset}+{delay}: less than a grid late"
            );
        }
        // A timer re-armed just after it fired on the grid stays on it.
        let fired = base + ms(2_000) + Duration::from_micros(300);
        assert_eq!(align_to(base, fired + ms(500), ms(500)), base + ms(2_500));
        // Two timers due within the same window come due together.
        let a = align_to(base, base + ms(1_310), ms(500));
        let b = align_to(base, base + ms(1_480), ms(1_000));
        assert_eq!(a, b);
    }
}
