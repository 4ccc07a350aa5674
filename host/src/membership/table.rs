//! The member table: Tribes' identity and expiry rules (tribes.md §1.3–§1.4) as a
//! state machine fed with packets and explicit time. No sockets here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use crate::member::{LeaveReason, MemberEvent};
use crate::member::{Member, MemberId};

#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    last_heard: Instant,
}

/// Members heard from, keyed by identity.
#[derive(Debug)]
pub struct MemberTable {
    local: Option<MemberId>,
    drop_time: Duration,
    entries: HashMap<MemberId, Entry>,
    limits: Limits,
    /// Start of the current one-second window and the members added in it.
    new_window: Option<(Instant, u32)>,
    /// Receiver addresses of members that left recently, and when: a
    /// failure detector may still probe them (see [`MemberTable::may_probe`]).
    departed: HashMap<SocketAddr, Instant>,
}

/// How long a departed member's receiver may still be probed.
const PROBE_AFTER_LEAVING: Duration = Duration::from_secs(600);
/// Departed receivers remembered at most.
const MAX_DEPARTED: usize = 4096;

/// What the table admits from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Members held at most; a heartbeat from a new member beyond it is refused.
    pub max_members: usize,
    /// New members added per second at most; more are refused (they are
    /// heard again at their next heartbeat).
    pub max_new_per_s: u32,
    /// A heartbeat counts only if it comes from the address its member
    /// packet advertises, so that a packet forged elsewhere cannot evict a
    /// live member (a shutdown), keep a dead one (a refresh) or add one.
    pub check_source: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_members: 1024,
            max_new_per_s: 100,
            check_source: true,
        }
    }
}

/// Why a heartbeat was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It came from another address than the one its packet advertises.
    #[error("it came from another address than the member advertises")]
    WrongSource,
    /// The table holds `max_members` already.
    #[error("the member table is full (membership.max_members)")]
    Full,
    /// `max_new_per_s` members were added in the last second.
    #[error("too many new members this second (membership.max_new_members_per_s)")]
    TooManyNew,
}

impl MemberTable {
    /// An empty table that drops members silent for more than `drop_time`.
    /// Packets from `local` (the node itself) are ignored.
    pub fn new(local: Option<MemberId>, drop_time: Duration) -> Self {
        Self {
            local,
            drop_time,
            entries: HashMap::new(),
            limits: Limits {
                max_members: usize::MAX,
                max_new_per_s: u32::MAX,
                check_source: false,
            },
            new_window: None,
            departed: HashMap::new(),
        }
    }

    /// Whether a plug-in may probe `addr`: the receiver of a member in the
    /// table, or of one that left in the last ten minutes (a detector
    /// verifies a member after the table dropped it, and re-checks its
    /// suspects). Any other address is refused, so that a plug-in cannot
    /// make the node connect anywhere it likes.
    pub fn may_probe(&self, addr: SocketAddr, now: Instant) -> bool {
        self.entries.keys().any(|id| id.addr() == addr)
            || self
                .departed
                .get(&addr)
                .is_some_and(|t| now.saturating_duration_since(*t) <= PROBE_AFTER_LEAVING)
    }

    fn note_departed(&mut self, addr: SocketAddr, now: Instant) {
        if self.departed.len() >= MAX_DEPARTED {
            self.departed
                .retain(|_, t| now.saturating_duration_since(*t) <= PROBE_AFTER_LEAVING);
        }
        if self.departed.len() < MAX_DEPARTED {
            self.departed.insert(addr, now);
        }
    }

    /// The same table, admitting only what `limits` allow (through
    /// [`MemberTable::heard`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Applies one heartbeat that arrived from `source` at `now`, within the
    /// table's [`Limits`]: as [`MemberTable::heartbeat`], or refused.
    pub fn heard(
        &mut self,
        member: Member,
        now: Instant,
        source: IpAddr,
    ) -> Result<Option<MemberEvent>, Refusal> {
        if Some(member.id) == self.local {
            return Ok(None);
        }
        if self.limits.check_source && source.to_canonical() != member.id.host.to_canonical() {
            return Err(Refusal::WrongSource);
        }
        let shutdown = member.command.as_ref() == crate::wire::SHUTDOWN_COMMAND;
        if !shutdown && !self.entries.contains_key(&member.id) {
            if self.entries.len() >= self.limits.max_members {
                return Err(Refusal::Full);
            }
            let (start, n) = match self.new_window {
                Some((start, n))
                    if now.saturating_duration_since(start) < Duration::from_secs(1) =>
                {
                    (start, n)
                }
                _ => (now, 0),
            };
            if n >= self.limits.max_new_per_s {
                self.new_window = Some((start, n));
                return Err(Refusal::TooManyNew);
            }
            self.new_window = Some((start, n + 1));
        }
        Ok(self.heartbeat(member, now))
    }

    /// Applies one heartbeat received at `now`.
    ///
    /// An unknown member is added (→ `Added`); a known one refreshes its alive time,
    /// payload and command (no event; domain and ports stay as first seen, as in
    /// Tribes); a shutdown command removes it at once (→ `Disappeared`).
    pub fn heartbeat(&mut self, member: Member, now: Instant) -> Option<MemberEvent> {
        if Some(member.id) == self.local {
            return None;
        }
        if member.command.as_ref() == crate::wire::SHUTDOWN_COMMAND {
            let gone = self.entries.remove(&member.id)?;
            self.note_departed(member.id.addr(), now);
            return Some(MemberEvent::Disappeared(gone.member, LeaveReason::Shutdown));
        }
        match self.entries.get_mut(&member.id) {
            Some(e) => {
                e.last_heard = now;
                e.member.alive_ms = member.alive_ms;
                e.member.payload = member.payload;
                e.member.command = member.command;
                None
            }
            None => {
                self.entries.insert(
                    member.id,
                    Entry {
                        member: member.clone(),
                        last_heard: now,
                    },
                );
                Some(MemberEvent::Added(member))
            }
        }
    }

    /// Removes every member not heard from for strictly more than the drop time.
    pub fn expire(&mut self, now: Instant) -> Vec<MemberEvent> {
        let drop_time = self.drop_time;
        let gone: Vec<MemberId> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_heard) > drop_time)
            .map(|(id, _)| *id)
            .collect();
        let evs: Vec<MemberEvent> = gone
            .into_iter()
            .filter_map(|id| self.entries.remove(&id))
            .map(|e| MemberEvent::Disappeared(e.member, LeaveReason::Expired))
            .collect();
        for ev in &evs {
            if let MemberEvent::Disappeared(m, _) = ev {
                self.note_departed(m.id.addr(), now);
            }
        }
        evs
    }

    /// Current members, longest-running first (Tribes' `Membership` order: by
    /// reported alive time, descending), ties broken by identity.
    pub fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self.entries.values().map(|e| e.member.clone()).collect();
        v.sort_by(|a, b| b.alive_ms.cmp(&a.alive_ms).then(a.id.cmp(&b.id)));
        v
    }

    /// The member's uptime now, estimated from its latest heartbeat: the alive
    /// time it reported plus the time since we received it.
    pub fn uptime_ms(&self, id: &MemberId, now: Instant) -> Option<i64> {
        self.entries.get(id).map(|e| {
            let since = i64::try_from(now.saturating_duration_since(e.last_heard).as_millis())
                .unwrap_or(i64::MAX);
            e.member.alive_ms.saturating_add(since)
        })
    }

    /// The latest payload `id` sent.
    pub fn payload(&self, id: &MemberId) -> Option<&bytes::Bytes> {
        self.entries.get(id).map(|e| &e.member.payload)
    }

    /// When `id` was last heard from.
    pub fn last_heard(&self, id: &MemberId) -> Option<Instant> {
        self.entries.get(id).map(|e| e.last_heard)
    }

    /// The node's own identity, if set.
    pub fn local_id(&self) -> Option<MemberId> {
        self.local
    }

    /// Number of members (the node itself excluded).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn member(port: u16, uid: u8, alive: i64) -> Member {
        Member {
            id: MemberId {
                host: "127.0.0.1".parse().expect("ip"),
                port,
                unique_id: [uid; 16],
            },
            domain: Bytes::from_static(b"d"),
            alive_ms: alive,
            payload: Bytes::new(),
            command: Bytes::new(),
            secure_port: -1,
            udp_port: -1,
        }
    }

    const DROP: Duration = Duration::from_millis(3000);

    #[test]
    fn add_refresh_expire() {
        let t0 = Instant::now();
        let mut t = MemberTable::new(None, DROP);
        let a = member(4000, 1, 100);
        assert_eq!(
            t.heartbeat(a.clone(), t0),
            Some(MemberEvent::Added(a.clone()))
        );
        let mut a2 = a.clone();
        a2.alive_ms = 600;
        a2.domain = Bytes::from_static(b"other");
        assert_eq!(t.heartbeat(a2, t0 + Duration::from_millis(500)), None);
        let m = &t.members()[0];
        assert_eq!(m.alive_ms, 600, "alive time refreshed");
        assert_eq!(m.domain.as_ref(), b"d", "domain kept as first seen");
        // exactly drop time after the last heartbeat: still there (strictly greater)
        assert!(t.expire(t0 + Duration::from_millis(3500)).is_empty());
        let ev = t.expire(t0 + Duration::from_millis(3501));
        assert!(
            matches!(&ev[..], [MemberEvent::Disappeared(m, LeaveReason::Expired)] if m.id == a.id)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn restart_is_a_new_member() {
        let t0 = Instant::now();
        let mut t = MemberTable::new(None, DROP);
        t.heartbeat(member(4000, 1, 100), t0);
        let ev = t.heartbeat(member(4000, 2, 100), t0);
        assert!(matches!(ev, Some(MemberEvent::Added(_))));
        assert_eq!(t.len(), 2);
        let ev = t.expire(t0 + Duration::from_secs(4));
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn shutdown_removes_at_once_and_local_is_ignored() {
        let t0 = Instant::now();
        let local = member(4001, 9, 1);
        let mut t = MemberTable::new(Some(local.id), DROP);
        assert_eq!(t.heartbeat(local, t0), None);
        let a = member(4000, 1, 100);
        t.heartbeat(a.clone(), t0);
        let mut bye = a.clone();
        bye.command = Bytes::from_static(crate::wire::SHUTDOWN_COMMAND);
        let ev = t.heartbeat(bye.clone(), t0);
        assert!(matches!(
            ev,
            Some(MemberEvent::Disappeared(_, LeaveReason::Shutdown))
        ));
        // a shutdown from an unknown member raises nothing
        assert_eq!(t.heartbeat(bye, t0), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_packet_from_another_address_cannot_add_refresh_or_evict() {
        let t0 = Instant::now();
        let mut t = MemberTable::new(None, DROP).with_limits(Limits::default());
        let a = member(4000, 1, 100); // advertises 127.0.0.1
        let elsewhere: IpAddr = "127.0.0.2".parse().expect("ip");
        let own: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(t.heard(a.clone(), t0, elsewhere), Err(Refusal::WrongSource));
        assert!(t.is_empty(), "not added");
        assert!(matches!(
            t.heard(a.clone(), t0, own),
            Ok(Some(MemberEvent::Added(_)))
        ));
        let mut bye = a.clone();
        bye.command = Bytes::from_static(crate::wire::SHUTDOWN_COMMAND);
        assert_eq!(
            t.heard(bye.clone(), t0, elsewhere),
            Err(Refusal::WrongSource)
        );
        assert_eq!(t.len(), 1, "a forged shutdown does not evict");
        // A forged refresh does not keep it alive past its drop time.
        let later = t0 + Duration::from_millis(2500);
        assert_eq!(
            t.heard(a.clone(), later, elsewhere),
            Err(Refusal::WrongSource)
        );
        assert_eq!(t.expire(t0 + Duration::from_millis(3001)).len(), 1);
        // The real one's shutdown is honoured.
        t.heard(a, t0, own).expect("re-added");
        assert!(matches!(
            t.heard(bye, t0, own),
            Ok(Some(MemberEvent::Disappeared(_, LeaveReason::Shutdown)))
        ));
    }

    #[test]
    fn new_members_are_capped_in_number_and_per_second() {
        let t0 = Instant::now();
        let own: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut t = MemberTable::new(None, DROP).with_limits(Limits {
            max_members: 5,
            max_new_per_s: 3,
            check_source: true,
        });
        for i in 0..3 {
            t.heard(member(4000 + i, 1, 1), t0, own).expect("admitted");
        }
        assert_eq!(
            t.heard(member(4010, 1, 1), t0, own),
            Err(Refusal::TooManyNew)
        );
        // A known member's refresh is not a new member.
        assert_eq!(t.heard(member(4000, 1, 2), t0, own), Ok(None));
        let t1 = t0 + Duration::from_secs(1);
        t.heard(member(4010, 1, 1), t1, own).expect("next second");
        t.heard(member(4011, 1, 1), t1, own).expect("next second");
        assert_eq!(t.heard(member(4012, 1, 1), t1, own), Err(Refusal::Full));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn order_is_longest_running_first() {
        let t0 = Instant::now();
        let mut t = MemberTable::new(None, DROP);
        t.heartbeat(member(4000, 1, 100), t0);
        t.heartbeat(member(4001, 2, 9000), t0);
        t.heartbeat(member(4002, 3, 500), t0);
        let ports: Vec<u16> = t.members().iter().map(|m| m.id.port).collect();
        assert_eq!(ports, vec![4001, 4002, 4000]);
    }
}
