//! Phi-accrual failure detector (Hayashibara et al.; as in Akka and
//! Cassandra), a replacement for the TCP failure detector's deadline rule.
//!
//! Instead of one fixed `dropTime`, each member's suspicion level phi grows
//! with the time since its last heartbeat, measured against the
//! distribution of the intervals between its heartbeats seen so far (a
//! normal distribution over a sliding window). phi = 1 means a 10 % chance
//! that the member is still alive and merely late, phi = 8 one in 10^8. A
//! member whose phi passes `threshold` is suspected; with `verify` on (the
//! default) it is then probed over TCP, up to `verifyAttempts` times with a
//! short `connectTimeout`, and dropped only if no probe answers and no
//! heartbeat arrived meanwhile. A member that answers stays (paused, CPU
//! starved or behind a lossy link), and is probed again at most once per
//! second while its phi stays high.
//!
//! Like the TCP failure detector it also acts on a broken connection
//! (`connection-lost`): one probe at once, and a member that does not
//! answer is dropped in milliseconds after a crash. The membership table's
//! own expiry (`dropTime`) is held while the member is in view: this
//! detector decides.
//!
//! Settings (Akka's names where it has one): `threshold` 8.0,
//! `maxSampleSize` 200, `minStdDeviation` 100 ms, `acceptableHeartbeatPause`
//! 1000 ms, `firstHeartbeatEstimate` 500 ms (Tomcat's heartbeat interval),
//! `checkInterval` 200 ms, `verify` true, `verifyAttempts` 4,
//! `connectTimeout` 250 ms.

use std::collections::{HashMap, VecDeque};

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

/// A member's identity: unique id, host and port.
type Key = (u64, u64, String, u16);

fn key(m: &Member) -> Key {
    (m.id.hi, m.id.lo, m.host.clone(), m.port)
}

/// Heartbeat intervals over a sliding window, with running sums.
#[derive(Debug, Clone)]
struct Window {
    intervals: VecDeque<f64>,
    max: usize,
    sum: f64,
    sum_sq: f64,
}

impl Window {
    /// Seeded as Akka does: two samples around the first estimate, so that
    /// a member is judged sensibly from its first heartbeat.
    fn new(max: usize, first_estimate_ms: f64) -> Self {
        let mut w = Self {
            intervals: VecDeque::with_capacity(max.min(1024)),
            max,
            sum: 0.0,
            sum_sq: 0.0,
        };
        let std = first_estimate_ms / 4.0;
        w.push(first_estimate_ms - std);
        w.push(first_estimate_ms + std);
        w
    }

    fn push(&mut self, v: f64) {
        if self.intervals.len() >= self.max
            && let Some(old) = self.intervals.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals.push_back(v);
        self.sum += v;
        self.sum_sq += v * v;
    }

    fn mean(&self) -> f64 {
        self.sum / self.intervals.len().max(1) as f64
    }

    fn std_dev(&self) -> f64 {
        let m = self.mean();
        (self.sum_sq / self.intervals.len().max(1) as f64 - m * m)
            .max(0.0)
            .sqrt()
    }
}

/// phi for `elapsed` ms since the last heartbeat, given the interval
/// distribution's `mean` and `std` (Akka's logistic approximation of the
/// normal CDF). Never NaN; capped.
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if elapsed > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    };
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1e6) }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    /// Phi passed the threshold (or a connection broke): alive or not?
    Verify,
    /// Dropped earlier, heartbeating again: re-add once it answers.
    Readd,
}

/// One member this detector follows.
struct Track {
    member: Member,
    window: Window,
    last_heartbeat: u64,
    /// In the view above (not dropped by this detector).
    in_view: bool,
    /// Failed probes in the current verification round.
    failures: u32,
    /// A round started by a broken connection: one failed probe suffices.
    connection_lost: bool,
    /// No new round before this time (a member that answered).
    quiet_until: u64,
    /// The membership table below has dropped it (its deadline passed):
    /// once this detector drops it too, nothing is left to follow.
    expired_below: bool,
}

struct Detector {
    threshold: f64,
    max_samples: usize,
    min_std: f64,
    pause: f64,
    first_estimate: f64,
    check_interval: u32,
    verify: bool,
    attempts: u32,
    probe: ProbeOptions,
    tracks: HashMap<Key, Track>,
    pending: HashMap<u64, (Key, Purpose)>,
    in_flight: HashMap<Key, u64>,
    timer: Option<u64>,
    suspicions: Counter,
    dropped: Counter,
    kept_alive: Counter,
}

/// After a member answers a verification, the next round waits this long.
const REVERIFY_MS: u64 = 1000;

impl Detector {
    fn name(m: &Member) -> String {
        format!("tcp://{}:{}", m.host, m.port)
    }

    fn phi_of(&self, t: &Track, now: u64) -> f64 {
        let elapsed = now.saturating_sub(t.last_heartbeat) as f64;
        let std = t.window.std_dev().max(self.min_std);
        phi(elapsed, t.window.mean() + self.pause, std)
    }

    fn ensure_timer(&mut self) {
        if self.timer.is_some() || !self.tracks.values().any(|t| t.in_view) {
            return;
        }
        match host::set_timer(self.check_interval) {
            Ok(id) => self.timer = Some(id),
            Err(e) => host::warn(&format!("no check timer: {e}")),
        }
    }

    fn track(&mut self, m: &Member, now: u64) {
        let window = Window::new(self.max_samples, self.first_estimate);
        self.tracks.entry(key(m)).or_insert_with(|| Track {
            member: m.clone(),
            window,
            last_heartbeat: now,
            in_view: true,
            failures: 0,
            connection_lost: false,
            quiet_until: 0,
            expired_below: false,
        });
        self.ensure_timer();
    }

    fn start_probe(&mut self, k: &Key, purpose: Purpose) {
        if self.in_flight.contains_key(k) {
            return;
        }
        let Some(t) = self.tracks.get(k) else { return };
        let (member, expired_below) = (t.member.clone(), t.expired_below);
        match host::probe(&member, self.probe) {
            Ok(id) => {
                self.pending.insert(id, (k.clone(), purpose));
                self.in_flight.insert(k.clone(), id);
            }
            // The node refuses to probe a member the table dropped long
            // ago: it is gone.
            Err(e) if expired_below => {
                let why = format!("dropped by the membership table and no longer probed ({e})");
                self.drop_member(k, &why);
            }
            // Not probed now: the next check tries again.
            Err(e) => host::warn(&format!("{}: {e}", Self::name(&member))),
        }
    }

    fn drop_member(&mut self, k: &Key, why: &str) {
        let mut gone = false;
        if let Some(t) = self.tracks.get_mut(k)
            && t.in_view
        {
            t.in_view = false;
            t.failures = 0;
            t.connection_lost = false;
            self.dropped.add(1);
            host::info(&format!("{}: {why}; dropped", Self::name(&t.member)));
            host::raise_member_disappeared(&t.member, LeaveReason::Expired);
            // No heartbeat can bring it back: the table no longer lists
            // it, and a return would be a new member anyway.
            gone = t.expired_below;
        }
        if gone {
            self.tracks.remove(k);
        }
    }

    fn check(&mut self) {
        let now = host::monotonic_ms();
        let suspected: Vec<Key> = self
            .tracks
            .iter()
            .filter(|(_, t)| {
                t.in_view && now >= t.quiet_until && self.phi_of(t, now) > self.threshold
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in suspected {
            if !self.verify {
                self.suspicions.add(1);
                self.drop_member(&k, &format!("phi above {}", self.threshold));
            } else if !self.in_flight.contains_key(&k) {
                if self.tracks.get(&k).is_some_and(|t| t.failures == 0) {
                    self.suspicions.add(1);
                }
                self.start_probe(&k, Purpose::Verify);
            }
        }
    }
}

impl Interceptor for Detector {
    fn create(s: &Settings) -> Result<Self, String> {
        s.only(&[
            "threshold",
            "maxSampleSize",
            "minStdDeviation",
            "acceptableHeartbeatPause",
            "firstHeartbeatEstimate",
            "checkInterval",
            "verify",
            "verifyAttempts",
            "connectTimeout",
        ])?;
        let threshold: f64 = s.get_or("threshold", 8.0)?;
        if !(threshold > 0.0 && threshold.is_finite()) {
            return Err(format!(
                "threshold must be a positive number, not {threshold}"
            ));
        }
        let max_samples: usize = s.get_or("maxSampleSize", 200)?;
        if !(2..=100_000).contains(&max_samples) {
            return Err(format!(
                "maxSampleSize must be 2..=100000, not {max_samples}"
            ));
        }
        let check_interval: u32 = s.get_or("checkInterval", 200)?;
        if !(10..=60_000).contains(&check_interval) {
            return Err(format!(
                "checkInterval must be 10..=60000 ms, not {check_interval}"
            ));
        }
        let ms = |name: &str, default: u32| -> Result<f64, String> {
            let v: u32 = s.get_or(name, default)?;
            if v > 3_600_000 {
                return Err(format!(
                    "{name} must be at most one hour (3600000 ms), not {v}"
                ));
            }
            Ok(f64::from(v))
        };
        let first_estimate = ms("firstHeartbeatEstimate", 500)?.max(1.0);
        Ok(Self {
            threshold,
            max_samples,
            min_std: ms("minStdDeviation", 100)?.max(1.0),
            pause: ms("acceptableHeartbeatPause", 1000)?,
            first_estimate,
            check_interval,
            verify: s.get_or("verify", true)?,
            attempts: s.get_or::<u32>("verifyAttempts", 4)?.clamp(1, 100),
            probe: ProbeOptions {
                connect_timeout_ms: s.get_or("connectTimeout", 250)?,
                send_test: true,
                read_test: false,
                read_timeout_ms: 0,
            },
            tracks: HashMap::new(),
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            timer: None,
            suspicions: Counter::register(
                "phi_suspicions",
                "Members whose phi passed the threshold",
            ),
            dropped: Counter::register(
                "phi_members_dropped",
                "Members dropped by the phi-accrual detector",
            ),
            kept_alive: Counter::register(
                "phi_suspects_kept_alive",
                "Suspected members kept because they answered a TCP probe",
            ),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            Hooks::MEMBER_EVENTS | Hooks::CONNECTION_EVENTS | Hooks::MEMBER_HEARTBEATS,
        )
        .version(env!("CARGO_PKG_VERSION"))
    }

    fn member_added(&mut self, m: &Member) -> MemberVerdict {
        let k = key(m);
        // A member at this address under another unique id is an earlier
        // incarnation (a restart on the same port): gone, although probes
        // of its address answer (the new one answers them).
        let earlier: Vec<Key> = self
            .tracks
            .iter()
            .filter(|(o, t)| t.in_view && o.2 == k.2 && o.3 == k.3 && **o != k)
            .map(|(o, _)| o.clone())
            .collect();
        for o in earlier {
            self.drop_member(
                &o,
                "restarted on the same address: its earlier incarnation is gone",
            );
        }
        if let Some(t) = self.tracks.get(&k) {
            if t.in_view {
                return MemberVerdict::Drop("was never removed".into());
            }
            // Dropped by this detector, seen again by the table below.
            self.start_probe(&k, Purpose::Readd);
            return MemberVerdict::Hold;
        }
        self.track(m, host::monotonic_ms());
        MemberVerdict::Pass
    }

    fn member_disappeared(&mut self, m: &Member, reason: LeaveReason) -> MemberVerdict {
        let k = key(m);
        let in_view = self.tracks.get(&k).is_some_and(|t| t.in_view);
        if reason == LeaveReason::Shutdown {
            self.tracks.remove(&k);
            return if in_view {
                MemberVerdict::Pass
            } else {
                MemberVerdict::Drop("already dropped".into())
            };
        }
        if !in_view {
            self.tracks.remove(&k);
            return MemberVerdict::Drop("already dropped".into());
        }
        // The table's deadline passed; phi and the probes decide.
        if let Some(t) = self.tracks.get_mut(&k) {
            t.expired_below = true;
        }
        MemberVerdict::Hold
    }

    fn connection_lost(&mut self, m: &Member, _cause: &str) {
        let k = key(m);
        if let Some(t) = self.tracks.get_mut(&k)
            && t.in_view
        {
            t.connection_lost = true;
            self.start_probe(&k, Purpose::Verify);
        }
    }

    fn member_heartbeat(&mut self, m: &Member, at_ms: u64) {
        let k = key(m);
        let (threshold, min_std, pause) = (self.threshold, self.min_std, self.pause);
        let Some(t) = self.tracks.get_mut(&k) else {
            return;
        };
        let interval = at_ms.saturating_sub(t.last_heartbeat) as f64;
        let std = t.window.std_dev().max(min_std);
        // Akka: an interval that was itself a suspicion is not learnt from.
        if interval > 0.0 && phi(interval, t.window.mean() + pause, std) < threshold {
            t.window.push(interval);
        }
        t.last_heartbeat = at_ms.max(t.last_heartbeat);
        t.failures = 0;
        t.connection_lost = false;
        t.quiet_until = 0;
        if !t.in_view {
            self.start_probe(&k, Purpose::Readd);
        }
    }

    fn on_probe_result(&mut self, probe: u64, _target: &Member, alive: bool) {
        let Some((k, purpose)) = self.pending.remove(&probe) else {
            return;
        };
        self.in_flight.remove(&k);
        let now = host::monotonic_ms();
        let Some(t) = self.tracks.get_mut(&k) else {
            return;
        };
        match (purpose, alive) {
            (Purpose::Readd, true) => {
                if !t.in_view {
                    t.in_view = true;
                    t.failures = 0;
                    host::info(&format!(
                        "{}: heartbeating and answering again; re-added",
                        Self::name(&t.member)
                    ));
                    host::raise_member_added(&t.member);
                    self.ensure_timer();
                }
            }
            (Purpose::Readd, false) => {} // the next heartbeat tries again
            (Purpose::Verify, true) => {
                if t.failures > 0 || !t.connection_lost {
                    self.kept_alive.add(1);
                }
                t.failures = 0;
                t.connection_lost = false;
                t.quiet_until = now + REVERIFY_MS;
            }
            (Purpose::Verify, false) => {
                if !t.in_view {
                    return;
                }
                t.failures += 1;
                if t.connection_lost {
                    self.drop_member(&k, "its connection broke and it does not answer");
                    return;
                }
                let still = self.phi_of(&self.tracks[&k], now) > self.threshold;
                if !still {
                    // A heartbeat arrived meanwhile.
                    if let Some(t) = self.tracks.get_mut(&k) {
                        t.failures = 0;
                    }
                } else if self.tracks[&k].failures >= self.attempts {
                    let why = format!(
                        "phi above {} and {} probes unanswered",
                        self.threshold, self.attempts
                    );
                    self.drop_member(&k, &why);
                } else {
                    self.start_probe(&k, Purpose::Verify);
                }
            }
        }
    }

    fn on_timer(&mut self, timer: u64) {
        if self.timer != Some(timer) {
            return;
        }
        self.timer = None;
        self.check();
        self.ensure_timer();
    }

    fn take_over(&mut self, _state: Option<&[u8]>, members: &[Member]) -> Result<(), String> {
        let now = host::monotonic_ms();
        for m in members {
            self.track(m, now);
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        let now = host::monotonic_ms();
        let max_phi = self
            .tracks
            .values()
            .filter(|t| t.in_view)
            .map(|t| self.phi_of(t, now))
            .fold(0.0, f64::max);
        vec![
            Stat::gauge(
                "phi_view_members",
                self.tracks.values().filter(|t| t.in_view).count() as f64,
                "Members in the phi detector's view",
            ),
            Stat::gauge(
                "phi_max",
                max_phi,
                "Highest phi among the members in view now",
            ),
        ]
    }
}

export_interceptor!(Detector);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence_and_is_low_on_time() {
        let (mean, std) = (500.0, 100.0);
        assert!(phi(500.0, mean, std) < 0.5);
        assert!(phi(700.0, mean, std) < phi(900.0, mean, std));
        assert!(
            phi(1100.0, mean, std) > 8.0,
            "six deviations late is a suspicion"
        );
        assert!(phi(1e9, mean, std).is_finite());
        assert_eq!(phi(f64::NAN, mean, std), 0.0);
    }

    #[test]
    fn window_keeps_running_sums_over_its_size() {
        let mut w = Window::new(4, 500.0);
        for v in [500.0, 500.0, 500.0, 500.0] {
            w.push(v);
        }
        assert_eq!(w.intervals.len(), 4);
        assert!((w.mean() - 500.0).abs() < 1e-9);
        assert!(w.std_dev() < 1e-6);
    }
}
