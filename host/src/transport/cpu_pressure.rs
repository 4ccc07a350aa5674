//! Whether this machine is short of CPU, for the busy-pollers.
//!
//! Busy-polling pays when a core is spare: the poller holds a core while its
//! peer answers on another. When every core is wanted (more runnable
//! threads than cores: a saturated node, the application beside it, a
//! hypervisor stealing the vCPU), the poll takes the time the peer needs to
//! answer, and each poller's own history cannot tell: every wait on the
//! machine gets longer, polled or parked. Measured on 2 vCPUs with three
//! session nodes and their clients: sync-ack writes +10–13 % with polling
//! off (docs/benchmarks.md, "Busy-polling gated on CPU pressure").
//!
//! The kernel says it directly: pressure stall information
//! (`/proc/pressure/cpu`, Linux ≥ 4.20 with PSI on) counts the time during
//! which at least one runnable task waited for a CPU. [`saturated`] samples
//! that counter at most every [`INTERVAL`] (one `pread`, by whichever poller
//! asks first) and says yes once more than [`ON`] of the interval was
//! stalled, no again once less than [`OFF`] was (hysteresis, so that the
//! pressure a poller itself adds does not flip it every interval).
//! Measured: 3–5 % during a two-node sync-ACK ping-pong with both sides
//! polling, 55–100 % under the saturating sessions bench. Where the file is
//! missing or unreadable (PSI off, an old kernel) it always says no, and
//! the per-connection history ([`super::busy_poll::PollHistory`]) is the
//! only judge, as before. The pressure is the whole machine's, not the
//! node's cgroup's: polling harms whatever else waits for a CPU.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The kernel's CPU pressure file.
const PATH: &str = "/proc/pressure/cpu";
/// How often the pressure is sampled (at most; only while something polls).
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);
/// Stalled share of an interval above which the machine counts as saturated.
pub(crate) const ON: f64 = 0.20;
/// Stalled share below which it no longer does.
pub(crate) const OFF: f64 = 0.10;

/// The process-wide gate.
struct Gate {
    epoch: Instant,
    /// When (ms after `epoch`) the next sample is due.
    next_ms: AtomicU64,
    saturated: AtomicBool,
    /// The last sample's stalled share, in ‰ (for the metrics).
    permille: AtomicU32,
    /// Times the gate turned on (saturated) since the start.
    turned_on: AtomicU64,
    sampler: Mutex<Sampler>,
}

/// The file and the previous reading.
struct Sampler {
    file: Option<File>,
    last: Option<(Instant, u64)>,
}

static GATE: OnceLock<Option<Gate>> = OnceLock::new();
/// `runtime.cpu_pressure_gate`.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches the gate on or off for the process (`runtime.cpu_pressure_gate`).
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

fn gate() -> Option<&'static Gate> {
    GATE.get_or_init(|| {
        let file = File::open(PATH)
            .map_err(|e| tracing::debug!(path = PATH, error = %e, "no CPU pressure information; busy-polling judged by its own history only"))
            .ok()?;
        let mut sampler = Sampler {
            file: Some(file),
            last: None,
        };
        // A file that opens but does not read (PSI compiled in, switched
        // off at boot: EOPNOTSUPP) disables the gate.
        let first = sampler.read()?;
        sampler.last = Some((Instant::now(), first));
        Some(Gate {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(INTERVAL.as_millis() as u64),
            saturated: AtomicBool::new(false),
            permille: AtomicU32::new(0),
            turned_on: AtomicU64::new(0),
            sampler: Mutex::new(sampler),
        })
    })
    .as_ref()
}

impl Sampler {
    /// The `some` line's `total=` (µs stalled since boot).
    fn read(&mut self) -> Option<u64> {
        let file = self.file.as_ref()?;
        let mut buf = [0u8; 256];
        let parsed = file
            .read_at(&mut buf, 0)
            .ok()
            .and_then(|n| parse_some_total(&buf[..n]));
        if parsed.is_none() {
            tracing::debug!(
                path = PATH,
                "unreadable CPU pressure; busy-polling judged by its own history only"
            );
            self.file = None;
        }
        parsed
    }
}

/// The `total=` of the `some` line of a PSI file.
pub(crate) fn parse_some_total(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The next state of the gate, from the stalled share of the last interval.
pub(crate) fn next_state(saturated: bool, stalled: f64) -> bool {
    if saturated {
        stalled >= OFF
    } else {
        stalled > ON
    }
}

/// Whether the machine is short of CPU, so that busy-polling should wait.
/// Cheap: a clock read and two atomic loads, and one `pread` per
/// [`INTERVAL`] by whichever caller finds the sample due.
pub(crate) fn saturated() -> bool {
    if !ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    let Some(g) = gate() else { return false };
    let now_ms = g.epoch.elapsed().as_millis() as u64;
    if now_ms >= g.next_ms.load(Ordering::Relaxed)
        && let Ok(mut s) = g.sampler.try_lock()
        && now_ms >= g.next_ms.load(Ordering::Relaxed)
    {
        g.next_ms
            .store(now_ms + INTERVAL.as_millis() as u64, Ordering::Relaxed);
        let at = Instant::now();
        match (s.read(), s.last) {
            (Some(total), Some((then, before))) => {
                let wall = at.duration_since(then).as_micros().max(1) as f64;
                let stalled = (total.saturating_sub(before) as f64 / wall).min(1.0);
                s.last = Some((at, total));
                g.permille
                    .store((stalled * 1000.0) as u32, Ordering::Relaxed);
                let was = g.saturated.load(Ordering::Relaxed);
                let now = next_state(was, stalled);
                if now != was {
                    g.saturated.store(now, Ordering::Relaxed);
                    if now {
                        g.turned_on.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {
                // The file stopped answering: the gate opens for good.
                g.saturated.store(false, Ordering::Relaxed);
                g.next_ms.store(u64::MAX, Ordering::Relaxed);
            }
        }
    }
    g.saturated.load(Ordering::Relaxed)
}

/// Appends the gate's state in Prometheus' text format:
/// `shoal_cpu_pressure_ratio` (the last sample) and
/// `shoal_busy_poll_paused` / `shoal_busy_poll_pauses_total`.
/// Nothing where the machine has no pressure information.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let Some(g) = gate() else { return };
    let ratio = f64::from(g.permille.load(Ordering::Relaxed)) / 1000.0;
    let paused = u8::from(g.saturated.load(Ordering::Relaxed));
    let pauses = g.turned_on.load(Ordering::Relaxed);
    for (name, kind, help, value) in [
        (
            "shoal_cpu_pressure_ratio",
            "gauge",
            "Share of the last sampled interval in which some task of this machine waited for a CPU (/proc/pressure/cpu; sampled only while busy-polling is asked for).",
            format!("{ratio:.3}"),
        ),
        (
            "shoal_busy_poll_paused",
            "gauge",
            "1 while busy-polling is off because the machine is short of CPU.",
            paused.to_string(),
        ),
        (
            "shoal_busy_poll_pauses_total",
            "counter",
            "Times busy-polling was switched off because the machine was short of CPU.",
            pauses.to_string(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_some_total_is_read_from_a_psi_file() {
        let text = b"some avg10=0.43 avg60=21.88 avg300=21.02 total=3443642888\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_some_total(text), Some(3_443_642_888));
        assert_eq!(parse_some_total(b"full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_some_total(b"some avg10=0.43 total=x\n"), None);
        assert_eq!(parse_some_total(b""), None);
        assert_eq!(parse_some_total(&[0xff, 0xfe]), None);
    }

    #[test]
    fn the_gate_turns_on_above_on_and_off_only_below_off() {
        assert!(
            !next_state(false, 0.15),
            "between the thresholds: stays off"
        );
        assert!(next_state(false, 0.25));
        assert!(next_state(true, 0.15), "between the thresholds: stays on");
        assert!(!next_state(true, 0.05));
        assert!(next_state(true, 1.0));
    }

    /// Real pressure: more busy threads than cores, for a few intervals.
    #[test]
    fn more_busy_threads_than_cores_turn_the_gate_on() {
        if gate().is_none() {
            eprintln!("no {PATH} here: nothing to check");
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let burners: Vec<_> = (0..cores * 3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + INTERVAL * 25;
        let mut seen = false;
        while Instant::now() < deadline {
            if saturated() {
                seen = true;
                break;
            }
            std::thread::sleep(INTERVAL / 4);
        }
        stop.store(true, Ordering::Relaxed);
        for b in burners {
            let _ = b.join();
        }
        assert!(
            seen,
            "{} busy threads on {cores} cores never read as saturated",
            cores * 3
        );
        let mut text = String::new();
        render_metrics(&mut text);
        assert!(text.contains("shoal_busy_poll_pauses_total "), "{text}");
    }
}
