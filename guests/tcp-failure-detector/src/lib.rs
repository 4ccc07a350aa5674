//! TCP failure detector (Tribes' TcpFailureDetector, tribes.md §4.4).
//!
//! Membership events are verified over TCP before they go up:
//! * a member that disappeared (missed heartbeats) is probed; if it still
//!   answers TCP it is kept, as a *suspect*, and the event is swallowed; if not,
//!   the event goes up. A graceful shutdown goes up at once;
//! * a member that appeared is probed and goes up only once it answers;
//! * every heartbeat re-probes the suspects: a dead one is removed, a live one
//!   stops being a suspect after `removeSuspectsTimeout` (and stays);
//! * the probe message Tomcat's detector sends (TCP_FAIL_DETECT) is swallowed
//!   on receive, never delivered;
//! * beyond Tribes: a broken connection to a member (the host's watch
//!   connection, `connection-lost`) is verified at once; a member that does
//!   not answer is dropped then, in milliseconds after a crash, not after
//!   `dropTime`. One that answers stays, not even a suspect (a live member
//!   may close a connection). If a member dropped this way turns out to be
//!   heartbeating still, it is probed again and re-added once it answers;
//! * beyond Tribes: a member silent for `verifyAfter` (dropTime minus
//!   connectTimeout) is probed ahead of its expiry. If that probe fails and
//!   no heartbeat arrives until the membership table expires it, it goes up
//!   at the expiry without a second probe: a silent failure (host gone, no
//!   reset) is dropped at dropTime, not dropTime plus a connect timeout.
//!   The rule for dropping is unchanged: silent for dropTime *and* not
//!   answering TCP.
//!
//! Live swap: a new version takes the current members as its view
//! (`take-over`); events the old one held are offered to it again by the
//! host, so a pending verification is started anew, never lost.
//!
//! Settings (Tribes' names and defaults): `connectTimeout` 1000 ms,
//! `performSendTest` true, `performReadTest` false, `readTestTimeout` 5000 ms,
//! `removeSuspectsTimeout` 300 s; shoal's own: `verifyAfter` 1500 ms (0: off),
//! `checkInterval` 500 ms (how often silences are looked at, from the
//! membership table's alive times, while there are members: no call per
//! heartbeat).

use std::collections::HashMap;

use shoal_guest_sdk::host::{self, Counter};
use shoal_guest_sdk::*;

/// Tribes' `TcpFailureDetector.TCP_FAIL_DETECT`.
const TCP_FAIL_DETECT: [u8; 64] = [
    0x4f, 0xa7, 0x73, 0x48, 0x79, 0x82, 0x43, 0xc9, 0x9f, 0x6f, 0x89, 0x80, 0xa1, 0x5b, 0x07, 0x14,
    0x7d, 0xd9, 0x52, 0x5b, 0xeb, 0xf1, 0x43, 0x9a, 0xb7, 0x7e, 0xbe, 0x8f, 0x81, 0x67, 0x1e, 0xb6,
    0x37, 0x15, 0xbe, 0x87, 0x45, 0x7e, 0x4c, 0xa8, 0xbf, 0x0a, 0x4d, 0x13, 0x53, 0x38, 0x15, 0x32,
    0x55, 0xf6, 0x94, 0xb7, 0x3a, 0xfa, 0x40, 0x78, 0x91, 0x04, 0x7d, 0xd7, 0x72, 0x84, 0xc0, 0xd5,
];

/// A member's identity: unique id, host and port.
type Key = (u64, u64, String, u16);

fn key(m: &Member) -> Key {
    (m.id.hi, m.id.lo, m.host.clone(), m.port)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    /// A member appeared: pass it up once it answers.
    Add,
    /// A member disappeared: pass it up only if it does not answer.
    Remove,
    /// Heartbeat re-check of a suspect.
    RecheckSuspect,
    /// A connection to the member broke: drop it now if it does not answer.
    ConnectionLost,
    /// Silent for `verifyAfter`: probed ahead of its expiry.
    Early,
}

struct Detector {
    probe: ProbeOptions,
    remove_suspects_timeout_ms: u64,
    view: HashMap<Key, Member>,
    remove_suspects: HashMap<Key, (Member, u64)>,
    add_suspects: HashMap<Key, Member>,
    pending: HashMap<u64, Purpose>,
    in_flight: HashMap<Key, u64>,
    /// Dropped after a broken connection and a failed probe, while the
    /// membership table below may still list it (until `dropTime`).
    dropped_early: HashMap<Key, Member>,
    /// Per member: the alive time its latest heartbeat reported, and when
    /// a check first saw it (host monotonic ms): when it was last heard.
    heard: HashMap<Key, (i64, u64)>,
    /// Members whose early probe failed, with the time it failed.
    early_dead: HashMap<Key, u64>,
    /// Expired by the table while another probe of it was under way.
    expired_pending: std::collections::HashSet<Key>,
    verify_after_ms: u64,
    check_interval_ms: u32,
    timer: Option<u64>,
    kept_alive: Counter,
    dropped_on_connection_loss: Counter,
    confirmed_dead: Counter,
    probes_swallowed: Counter,
}

impl Detector {
    fn start_probe(&mut self, m: &Member, purpose: Purpose) {
        let k = key(m);
        if self.in_flight.contains_key(&k) {
            return; // one probe per member at a time
        }
        match host::probe(m, self.probe) {
            Ok(id) => {
                self.pending.insert(id, purpose);
                self.in_flight.insert(k, id);
            }
            Err(e) => {
                // Not probed now: the heartbeat tries again, as for a suspect.
                host::warn(&format!(
                    "{}: {e}; retrying at the next heartbeat",
                    Self::name(m)
                ));
                match purpose {
                    Purpose::Add => {
                        self.add_suspects.insert(k, m.clone());
                    }
                    Purpose::ConnectionLost | Purpose::Early => {} // reported or checked again
                    Purpose::Remove | Purpose::RecheckSuspect => {
                        self.remove_suspects
                            .entry(k)
                            .or_insert_with(|| (m.clone(), host::monotonic_ms()));
                    }
                }
            }
        }
    }

    /// Keeps the silence check running while there is something to check:
    /// members in view (with `verifyAfter` on), or members dropped after a
    /// broken connection that may turn out to be heartbeating.
    fn ensure_timer(&mut self) {
        let wanted =
            (self.verify_after_ms > 0 && !self.view.is_empty()) || !self.dropped_early.is_empty();
        if self.timer.is_some() || !wanted {
            return;
        }
        match host::set_timer(self.check_interval_ms) {
            Ok(id) => self.timer = Some(id),
            Err(e) => host::warn(&format!("no silence check: {e}")),
        }
    }

    fn name(m: &Member) -> String {
        format!("tcp://{}:{}", m.host, m.port)
    }

    /// Forgets everything about `k`; answers the member if it was in view.
    fn forget(&mut self, k: &Key) -> Option<Member> {
        self.remove_suspects.remove(k);
        self.add_suspects.remove(k);
        self.early_dead.remove(k);
        self.heard.remove(k);
        self.dropped_early.remove(k);
        self.expired_pending.remove(k);
        self.view.remove(k)
    }

    /// A member at `m`'s address under another unique id is an earlier
    /// incarnation of it (a restart on the same port): gone, although
    /// probes of its address answer (the new one answers them). Dropped.
    fn drop_earlier_incarnations(&mut self, m: &Member) {
        let k = key(m);
        let earlier: Vec<Key> = self
            .view
            .keys()
            .chain(self.add_suspects.keys())
            .filter(|o| o.2 == k.2 && o.3 == k.3 && **o != k)
            .cloned()
            .collect();
        for o in earlier {
            if let Some(old) = self.forget(&o) {
                self.confirmed_dead.add(1);
                host::info(&format!(
                    "{}: restarted on the same address; its earlier incarnation is gone",
                    Self::name(m)
                ));
                host::raise_member_disappeared(&old, LeaveReason::Expired);
            }
        }
    }
}

impl Interceptor for Detector {
    fn create(s: &Settings) -> Result<Self, String> {
        s.only(&[
            "connectTimeout",
            "performSendTest",
            "performReadTest",
            "readTestTimeout",
            "removeSuspectsTimeout",
            "verifyAfter",
            "checkInterval",
        ])?;
        let check_interval_ms: u32 = s.get_or("checkInterval", 500)?;
        if !(10..=60_000).contains(&check_interval_ms) {
            return Err(format!(
                "checkInterval must be 10..=60000 ms, not {check_interval_ms}"
            ));
        }
        Ok(Self {
            probe: ProbeOptions {
                connect_timeout_ms: s.get_or("connectTimeout", 1000)?,
                send_test: s.get_or("performSendTest", true)?,
                read_test: s.get_or("performReadTest", false)?,
                read_timeout_ms: s.get_or("readTestTimeout", 5000)?,
            },
            remove_suspects_timeout_ms: s.get_or::<u64>("removeSuspectsTimeout", 300)? * 1000,
            view: HashMap::new(),
            remove_suspects: HashMap::new(),
            add_suspects: HashMap::new(),
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            dropped_early: HashMap::new(),
            heard: HashMap::new(),
            early_dead: HashMap::new(),
            expired_pending: std::collections::HashSet::new(),
            verify_after_ms: s.get_or::<u64>("verifyAfter", 1500)?,
            check_interval_ms,
            timer: None,
            dropped_on_connection_loss: Counter::register(
                "members_dropped_on_connection_loss",
                "Members dropped at once: a connection to them broke and they did not answer a probe",
            ),
            kept_alive: Counter::register(
                "suspects_kept_alive",
                "Members that missed heartbeats but answered TCP",
            ),
            confirmed_dead: Counter::register(
                "members_confirmed_dead",
                "Disappearances confirmed by a failed TCP probe",
            ),
            probes_swallowed: Counter::register(
                "probe_messages_swallowed",
                "TCP_FAIL_DETECT messages swallowed",
            ),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            Hooks::ON_RECEIVE | Hooks::MEMBER_EVENTS | Hooks::HEARTBEAT | Hooks::CONNECTION_EVENTS,
        )
        .version(env!("CARGO_PKG_VERSION"))
        .with_bodies(BodyAccess::UpTo(TCP_FAIL_DETECT.len() as u32))
        // Only a message of the probe's length can be the probe.
        .only_sizes_up_to(TCP_FAIL_DETECT.len() as u32)
    }

    fn on_receive(&mut self, msg: &Incoming<'_>) -> Verdict {
        if msg.body == Some(&TCP_FAIL_DETECT[..]) {
            self.probes_swallowed.add(1);
            return Verdict::Drop("TcpFailureDetector probe".into());
        }
        Verdict::Pass
    }

    fn member_added(&mut self, m: &Member) -> MemberVerdict {
        let k = key(m);
        self.drop_earlier_incarnations(m);
        if self.remove_suspects.remove(&k).is_some() {
            host::info(&format!(
                "{} is heartbeating again; no longer a suspect",
                Self::name(m)
            ));
            return MemberVerdict::Drop("was never removed".into());
        }
        if self.view.contains_key(&k) {
            return MemberVerdict::Drop("already in view".into());
        }
        self.start_probe(m, Purpose::Add);
        MemberVerdict::Hold
    }

    fn member_disappeared(&mut self, m: &Member, reason: LeaveReason) -> MemberVerdict {
        let k = key(m);
        if self.dropped_early.remove(&k).is_some() {
            return MemberVerdict::Drop("already dropped after its connection broke".into());
        }
        if reason == LeaveReason::Shutdown {
            return match self.forget(&k) {
                Some(_) => MemberVerdict::Pass,
                None => MemberVerdict::Drop("not in view".into()),
            };
        }
        if self.add_suspects.remove(&k).is_some() || !self.view.contains_key(&k) {
            // Never passed up: nothing to take back.
            return MemberVerdict::Drop("not in view".into());
        }
        let heard = self.heard.remove(&k).map(|(_, at)| at);
        if let Some(failed_at) = self.early_dead.remove(&k)
            && heard.is_none_or(|h| h < failed_at)
        {
            // Silent for dropTime, and its probe ahead of the expiry failed.
            self.view.remove(&k);
            self.remove_suspects.remove(&k);
            self.confirmed_dead.add(1);
            host::info(&format!("{} confirmed dead by TCP probe", Self::name(m)));
            return MemberVerdict::Pass;
        }
        if self.in_flight.contains_key(&k) {
            // Another probe of it is under way: its answer decides this too.
            self.expired_pending.insert(k);
        } else {
            self.start_probe(m, Purpose::Remove);
        }
        MemberVerdict::Hold
    }

    fn on_probe_result(&mut self, probe: u64, m: &Member, alive: bool) {
        let k = key(m);
        self.in_flight.remove(&k);
        let Some(mut purpose) = self.pending.remove(&probe) else {
            return;
        };
        if self.expired_pending.remove(&k) && self.view.contains_key(&k) {
            // The table expired it while this probe ran.
            purpose = Purpose::Remove;
        }
        match purpose {
            // Added only if the table still lists it: it may have expired
            // (or shut down) while this probe ran.
            Purpose::Add if !host::members().iter().any(|x| key(x) == k) => {
                self.add_suspects.remove(&k);
                return;
            }
            // Every other answer is about a member in view (or dropped
            // early); one dropped meanwhile is not brought back as a suspect.
            Purpose::Add => {}
            _ if !self.view.contains_key(&k) && !self.dropped_early.contains_key(&k) => return,
            _ => {}
        }
        match (purpose, alive) {
            (Purpose::Add, true) => {
                self.add_suspects.remove(&k);
                self.dropped_early.remove(&k);
                if self.view.insert(k, m.clone()).is_none() {
                    host::raise_member_added(m);
                }
                self.ensure_timer();
            }
            (Purpose::Add, false) => {
                host::info(&format!(
                    "{} heartbeats but does not answer TCP; not added yet",
                    Self::name(m)
                ));
                self.add_suspects.insert(k, m.clone());
            }
            (Purpose::Remove, true) => {
                self.kept_alive.add(1);
                host::warn(&format!(
                    "{} missed its heartbeats but answers TCP: kept as a suspect",
                    Self::name(m)
                ));
                self.remove_suspects
                    .insert(k, (m.clone(), host::monotonic_ms()));
            }
            (Purpose::Remove | Purpose::RecheckSuspect, false) => {
                self.remove_suspects.remove(&k);
                if self.view.remove(&k).is_some() {
                    self.confirmed_dead.add(1);
                    host::info(&format!("{} confirmed dead by TCP probe", Self::name(m)));
                    host::raise_member_disappeared(m, LeaveReason::Expired);
                }
            }
            (Purpose::Early, true) => {
                self.early_dead.remove(&k);
            }
            (Purpose::Early, false) => {
                if self.view.contains_key(&k) {
                    self.early_dead.insert(k, host::monotonic_ms());
                }
            }
            (Purpose::ConnectionLost, true) => {
                host::debug(&format!(
                    "{}: a connection broke but it answers; kept",
                    Self::name(m)
                ));
            }
            // The table no longer lists it: it left by itself (a graceful
            // stop closes its receiver right after announcing it), and the
            // table's own event for it follows. Not an expiry.
            (Purpose::ConnectionLost, false) if !host::members().iter().any(|x| key(x) == k) => {}
            (Purpose::ConnectionLost, false) => {
                if self.view.remove(&k).is_some() {
                    self.remove_suspects.remove(&k);
                    self.dropped_on_connection_loss.add(1);
                    self.confirmed_dead.add(1);
                    host::info(&format!(
                        "{}: its connection broke and it does not answer; dropped",
                        Self::name(m)
                    ));
                    self.dropped_early.insert(k, m.clone());
                    host::raise_member_disappeared(m, LeaveReason::Expired);
                    self.ensure_timer();
                }
            }
            (Purpose::RecheckSuspect, true) => {
                let expired = self.remove_suspects.get(&k).is_some_and(|(_, since)| {
                    host::monotonic_ms().saturating_sub(*since) > self.remove_suspects_timeout_ms
                });
                if expired {
                    // Tribes: the suspicion lapses; the member stays in view.
                    self.remove_suspects.remove(&k);
                }
            }
        }
    }

    fn heartbeat(&mut self) {
        let suspects: Vec<Member> = self
            .remove_suspects
            .values()
            .map(|(m, _)| m.clone())
            .collect();
        for m in suspects {
            self.start_probe(&m, Purpose::RecheckSuspect);
        }
        let adds: Vec<Member> = self.add_suspects.values().cloned().collect();
        for m in adds {
            self.start_probe(&m, Purpose::Add);
        }
    }

    fn connection_lost(&mut self, m: &Member, _cause: &str) {
        let k = key(m);
        if self.remove_suspects.contains_key(&k) {
            self.start_probe(m, Purpose::RecheckSuspect);
        } else if self.view.contains_key(&k) {
            self.start_probe(m, Purpose::ConnectionLost);
        }
    }

    fn on_timer(&mut self, timer: u64) {
        if self.timer != Some(timer) {
            return;
        }
        self.timer = None;
        let now = host::monotonic_ms();
        // A heartbeat arrived since the last check if the alive time the
        // table holds for the member moved.
        for m in host::members() {
            let k = key(&m);
            if !self.view.contains_key(&k) && !self.dropped_early.contains_key(&k) {
                continue;
            }
            if self
                .heard
                .get(&k)
                .is_some_and(|(alive, _)| *alive == m.alive_ms)
            {
                continue;
            }
            self.heard.insert(k.clone(), (m.alive_ms, now));
            self.early_dead.remove(&k);
            // Dropped after a broken connection, yet heartbeating: a false
            // alarm (its receiver restarted, say). Re-add it once it answers.
            if self.dropped_early.contains_key(&k) {
                self.start_probe(&m, Purpose::Add);
            }
        }
        self.heard
            .retain(|k, _| self.view.contains_key(k) || self.dropped_early.contains_key(k));
        if self.verify_after_ms > 0 {
            let late: Vec<Member> = self
                .heard
                .iter()
                .filter(|(k, (_, at))| {
                    now.saturating_sub(*at) >= self.verify_after_ms
                        && !self.early_dead.contains_key(*k)
                        && !self.remove_suspects.contains_key(*k)
                })
                .filter_map(|(k, _)| self.view.get(k).cloned())
                .collect();
            for m in late {
                self.start_probe(&m, Purpose::Early);
            }
        }
        self.ensure_timer();
    }

    fn take_over(&mut self, _state: Option<&[u8]>, members: &[Member]) -> Result<(), String> {
        for m in members {
            self.view.insert(key(m), m.clone());
        }
        self.ensure_timer();
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        vec![
            Stat::gauge(
                "view_members",
                self.view.len() as f64,
                "Members in the detector's view",
            ),
            Stat::gauge(
                "suspects",
                self.remove_suspects.len() as f64,
                "Members kept although they missed heartbeats",
            ),
        ]
    }
}

export_interceptor!(Detector);
