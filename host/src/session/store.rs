//! The sessions a node holds, in shards, and the rules that merge copies:
//! each attribute keeps the stamp of its last write and a write only
//! replaces an older one, so changes of different attributes never lose
//! each other and two writes of one attribute end the same on every node
//! (the later version wins; at equal versions, the larger node id).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use serde_json::value::RawValue;

use super::wire::{AttrOp, Copy, Delta, Key, Loc, Located, Stamp, Uid};

/// Shards of the store (a power of two).
const SHARDS: usize = 64;
/// Removals remembered per session (so a late, older write of a removed
/// attribute does not bring it back); the oldest are forgotten first.
const MAX_TOMBSTONES: usize = 32;

/// A session's role on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This node serves it and replicates its changes.
    Primary,
    /// This node holds a full copy for another primary.
    Backup,
    /// This node only knows where it lives.
    Proxy,
}

/// One attribute.
#[derive(Debug)]
pub struct Attr {
    /// Name.
    pub name: Box<str>,
    /// Last write.
    pub stamp: Stamp,
    /// JSON value; none for a removal remembered.
    pub value: Option<Box<RawValue>>,
}

/// A session's contents.
#[derive(Debug)]
pub struct Data {
    /// Creation time, ms.
    pub created_ms: i64,
    /// Version: grows with every change (a Lamport clock across nodes).
    pub version: u64,
    /// Stamp of the current route.
    pub route_stamp: Stamp,
    /// Attributes (and remembered removals).
    pub attrs: Vec<Attr>,
    /// Bytes of names and values.
    pub bytes: usize,
    /// False for a stub made by a change that arrived before the copy it
    /// changes: not served until a full copy completes it.
    pub complete: bool,
}

/// One session as this node knows it.
#[derive(Debug)]
pub struct Entry {
    /// Role.
    pub role: Role,
    /// Current jvmRoute.
    pub route: Box<str>,
    /// Last access, ms.
    pub last_access_ms: i64,
    /// Last access sent to the other members, ms.
    pub replicated_access_ms: i64,
    /// Idle time before expiry, s.
    pub max_inactive_s: u32,
    /// Where it lives.
    pub loc: Loc,
    /// Contents (none for a proxy).
    pub data: Option<Box<Data>>,
    /// Changed here by a write that was not replicated (a request the web
    /// layer's filter excludes): the next replicated change sends a full
    /// copy, not a delta.
    pub unsent: bool,
}

impl Entry {
    /// When this entry expires here: a primary after its idle time, a copy
    /// or a proxy after twice that (Tomcat: a backup waits 2 × the
    /// interval, since accesses are replicated lazily).
    pub fn expires_at_ms(&self) -> i64 {
        let idle = i64::from(self.max_inactive_s) * 1000;
        let idle = if self.role == Role::Primary {
            idle
        } else {
            idle.saturating_mul(2)
        };
        self.last_access_ms.saturating_add(idle)
    }

    /// A location entry for `c`, before its data is merged in.
    pub fn proxy_for(c: &Copy) -> Self {
        Self {
            role: Role::Proxy,
            route: c.route.as_str().into(),
            last_access_ms: c.last_access_ms,
            replicated_access_ms: c.last_access_ms,
            max_inactive_s: c.max_inactive_s,
            loc: c.loc.clone(),
            data: None,
            unsent: false,
        }
    }

    /// Whether it is too old to be served: whatever its role here, a
    /// session idle longer than its interval (plus the quarter interval by
    /// which replicated accesses may lag) has expired on its primary.
    pub fn expired_for_serving(&self, now: i64) -> bool {
        let idle = i64::from(self.max_inactive_s) * 1000;
        let lag = if self.role == Role::Primary {
            0
        } else {
            idle / 4
        };
        self.last_access_ms.saturating_add(idle).saturating_add(lag) <= now
    }

    /// Whether it holds a complete copy.
    pub fn has_data(&self) -> bool {
        self.data.as_ref().is_some_and(|d| d.complete)
    }

    /// A full copy of it (none for a proxy or a stub).
    pub fn to_copy(&self, key: Key) -> Option<Copy> {
        let d = self.data.as_ref().filter(|d| d.complete)?;
        Some(Copy {
            key,
            route: self.route.to_string(),
            route_stamp: d.route_stamp,
            created_ms: d.created_ms,
            last_access_ms: self.last_access_ms,
            max_inactive_s: self.max_inactive_s,
            version: d.version,
            attrs: d
                .attrs
                .iter()
                .map(|a| AttrOp {
                    name: a.name.to_string(),
                    stamp: a.stamp,
                    value: a.value.as_ref().map(|v| v.get().to_owned()),
                })
                .collect(),
            loc: self.loc.clone(),
        })
    }

    /// Its location, for members without a copy.
    pub fn to_located(&self, key: Key) -> Located {
        Located {
            key,
            route: self.route.to_string(),
            last_access_ms: self.last_access_ms,
            max_inactive_s: self.max_inactive_s,
            loc: self.loc.clone(),
        }
    }
}

/// A value that broke a limit, in words for an HTTP 413 or a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too many attributes.
    #[error("session would have {n} attributes; session.max_attributes is {max}")]
    Attributes {
        /// Would have.
        n: usize,
        /// Allowed.
        max: usize,
    },
    /// An attribute value is too long.
    #[error("attribute `{name}` is {n} bytes of JSON; session.max_attribute_bytes is {max}")]
    Attribute {
        /// Its name.
        name: String,
        /// Its length.
        n: usize,
        /// Allowed.
        max: usize,
    },
    /// The session is too large.
    #[error("session would be {n} bytes; session.max_session_bytes is {max}")]
    Session {
        /// Would be.
        n: usize,
        /// Allowed.
        max: usize,
    },
    /// A change names one attribute twice.
    #[error("attribute `{name}` is named twice in one change")]
    Twice {
        /// The name.
        name: String,
    },
    /// An attribute name is empty or too long.
    #[error("attribute name {name:?} must be 1 to 256 bytes")]
    Name {
        /// The name.
        name: String,
    },
    /// A value from a peer is not JSON.
    #[error("attribute `{name}` is not JSON")]
    NotJson {
        /// Its name.
        name: String,
    },
}

/// Bounds on one session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attributes per session.
    pub attributes: usize,
    /// Bytes of one attribute's JSON.
    pub attribute_bytes: usize,
    /// Bytes of names and values.
    pub session_bytes: usize,
}

impl Data {
    /// An empty session.
    pub fn new(created_ms: i64, version: u64, route_stamp: Stamp) -> Self {
        Self {
            created_ms,
            version,
            route_stamp,
            attrs: Vec::new(),
            bytes: 0,
            complete: true,
        }
    }

    /// An empty stub, complete only once a copy has been merged into it.
    pub fn stub(created_ms: i64, route_stamp: Stamp) -> Self {
        Self {
            complete: false,
            ..Self::new(created_ms, 0, route_stamp)
        }
    }

    /// Live attributes (not removals).
    pub fn live(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.attrs
            .iter()
            .filter_map(|a| a.value.as_deref().map(|v| (&*a.name, v)))
    }

    fn live_count(&self) -> usize {
        self.attrs.iter().filter(|a| a.value.is_some()).count()
    }

    /// Applies `ops` where each is newer than what is held; returns whether
    /// anything changed. Checked against `limits` first: on an error
    /// nothing is applied.
    pub fn apply(&mut self, ops: &[AttrOp], limits: &Limits) -> Result<bool, LimitError> {
        // A change names each attribute once, and names at most as many as
        // a session may hold plus the removals a copy remembers.
        if ops.len() > limits.attributes + MAX_TOMBSTONES {
            return Err(LimitError::Attributes {
                n: ops.len(),
                max: limits.attributes,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(ops.len());
        if let Some(op) = ops.iter().find(|op| !seen.insert(op.name.as_str())) {
            return Err(LimitError::Twice {
                name: op.name.chars().take(64).collect(),
            });
        }
        // Names to positions, so a large change is not quadratic.
        let index: std::collections::HashMap<&str, usize> = self
            .attrs
            .iter()
            .enumerate()
            .map(|(i, a)| (&*a.name, i))
            .collect();
        // Check first: count and size after the ops that win.
        let mut count = self.live_count() as isize;
        let mut bytes = self.bytes as isize;
        let mut parsed: Vec<(Option<usize>, Option<Box<RawValue>>, bool)> =
            Vec::with_capacity(ops.len());
        for op in ops {
            if op.name.is_empty() || op.name.len() > 256 {
                return Err(LimitError::Name {
                    name: op.name.chars().take(64).collect(),
                });
            }
            let at = index.get(op.name.as_str()).copied();
            let cur = at.map(|i| &self.attrs[i]);
            if cur.is_some_and(|a| a.stamp >= op.stamp) {
                parsed.push((at, None, false));
                continue;
            }
            if let Some(c) = cur.and_then(|a| a.value.as_ref()) {
                count -= 1;
                bytes -= (op.name.len() + c.get().len()) as isize;
            }
            match &op.value {
                Some(v) => {
                    if v.len() > limits.attribute_bytes {
                        return Err(LimitError::Attribute {
                            name: op.name.clone(),
                            n: v.len(),
                            max: limits.attribute_bytes,
                        });
                    }
                    let raw =
                        RawValue::from_string(v.clone()).map_err(|_| LimitError::NotJson {
                            name: op.name.clone(),
                        })?;
                    count += 1;
                    bytes += (op.name.len() + v.len()) as isize;
                    parsed.push((at, Some(raw), true));
                }
                None => parsed.push((at, None, true)),
            }
        }
        let count = count.max(0) as usize;
        if count > limits.attributes {
            return Err(LimitError::Attributes {
                n: count,
                max: limits.attributes,
            });
        }
        let bytes = bytes.max(0) as usize;
        if bytes > limits.session_bytes {
            return Err(LimitError::Session {
                n: bytes,
                max: limits.session_bytes,
            });
        }
        drop(index);
        let mut changed = false;
        for (op, (at, raw, wins)) in ops.iter().zip(parsed) {
            if !wins {
                continue;
            }
            changed = true;
            let size =
                |v: &Option<Box<RawValue>>| v.as_ref().map_or(0, |v| op.name.len() + v.get().len());
            match at {
                Some(i) => {
                    let a = &mut self.attrs[i];
                    self.bytes = self.bytes - size(&a.value) + size(&raw);
                    a.stamp = op.stamp;
                    a.value = raw;
                }
                None => {
                    self.bytes += size(&raw);
                    self.attrs.push(Attr {
                        name: op.name.as_str().into(),
                        stamp: op.stamp,
                        value: raw,
                    });
                }
            }
        }
        self.forget_old_removals();
        Ok(changed)
    }

    fn forget_old_removals(&mut self) {
        let removed = self.attrs.len() - self.live_count();
        if removed <= MAX_TOMBSTONES {
            return;
        }
        let mut stamps: Vec<Stamp> = self
            .attrs
            .iter()
            .filter(|a| a.value.is_none())
            .map(|a| a.stamp)
            .collect();
        stamps.sort_unstable();
        let cut = stamps[removed - MAX_TOMBSTONES - 1];
        let mut forget = removed - MAX_TOMBSTONES;
        self.attrs.retain(|a| {
            let drop = a.value.is_none() && a.stamp <= cut && forget > 0;
            if drop {
                forget -= 1;
            }
            !drop
        });
    }

    /// Merges a full copy, attribute by attribute by stamp (removals the
    /// copy remembers included). An attribute held here but absent from
    /// the copy is kept: the copy's author may not have seen its write.
    /// Returns whether anything changed; on an error nothing is applied and
    /// a stub stays incomplete.
    pub fn merge_copy(&mut self, c: &Copy, limits: &Limits) -> Result<bool, LimitError> {
        let changed = self.apply(&c.attrs, limits)?;
        self.version = self.version.max(c.version);
        self.created_ms = c.created_ms;
        self.complete = true;
        Ok(changed)
    }
}

/// Identity hasher for keys that are already random.
#[derive(Debug, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, k: u128) {
        self.0 = k as u64 ^ (k >> 64) as u64;
    }
}

type Shard = HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>;

/// Counts of what a node holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Sessions served here.
    pub primary: usize,
    /// Full copies for other primaries (and stubs).
    pub backup: usize,
    /// Location entries.
    pub proxy: usize,
}

/// The sessions of one node.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// Entries held, counted up on every insert and set exactly by
    /// [`Store::recount`] (removals are not counted down one by one): an
    /// upper bound for the `max_sessions` check, without locking 64 shards.
    approx: std::sync::atomic::AtomicUsize,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            approx: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Store {
    /// The shard of `key`, locked.
    pub fn shard(&self, key: Key) -> MutexGuard<'_, Shard> {
        let i = (key as usize ^ (key >> 64) as usize) & (SHARDS - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on every shard in turn.
    pub fn each_shard(&self, mut f: impl FnMut(&mut Shard)) {
        for s in self.shards.iter() {
            f(&mut s.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Counts by role.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        self.each_shard(|s| {
            for e in s.values() {
                match e.role {
                    Role::Primary => c.primary += 1,
                    Role::Backup => c.backup += 1,
                    Role::Proxy => c.proxy += 1,
                }
            }
        });
        c
    }

    /// At least the number of entries held (see the field).
    pub fn approx_len(&self) -> usize {
        self.approx.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes one entry added.
    pub fn note_insert(&self) {
        self.approx
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts the entries again, exactly.
    pub fn recount(&self) {
        let n = self.len();
        self.approx.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.each_shard(|s| n += s.len());
        n
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies a change to a held entry (a copy, or a stub for a change that
/// came before its copy). Returns false when the entry holds no data.
pub fn apply_delta(e: &mut Entry, d: &Delta, limits: &Limits) -> Result<bool, LimitError> {
    let Some(data) = e.data.as_mut() else {
        return Ok(false);
    };
    data.apply(&d.ops, limits)?;
    data.version = data.version.max(d.version);
    if let Some((route, stamp)) = &d.route
        && *stamp > data.route_stamp
    {
        data.route_stamp = *stamp;
        e.route = route.as_str().into();
    }
    e.last_access_ms = e.last_access_ms.max(d.last_access_ms);
    Ok(true)
}

/// The role a location gives `me`.
pub fn role_in(loc: &Loc, me: &Uid) -> Role {
    if &loc.primary == me {
        Role::Primary
    } else if loc.backups.contains(me) {
        Role::Backup
    } else {
        Role::Proxy
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        attributes: 4,
        attribute_bytes: 100,
        session_bytes: 200,
    };

    fn op(name: &str, v: u64, node: u64, value: Option<&str>) -> AttrOp {
        AttrOp {
            name: name.into(),
            stamp: Stamp { v, node },
            value: value.map(str::to_owned),
        }
    }

    fn value(d: &Data, name: &str) -> Option<String> {
        d.live()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.get().to_owned())
    }

    #[test]
    fn different_attributes_both_survive_in_any_order() {
        let a = op("a", 2, 1, Some("1"));
        let b = op("b", 2, 2, Some("2"));
        for order in [[&a, &b], [&b, &a]] {
            let mut d = Data::new(0, 1, Stamp::default());
            for o in order {
                d.apply(std::slice::from_ref(o), &LIMITS).unwrap();
            }
            assert_eq!(value(&d, "a").as_deref(), Some("1"));
            assert_eq!(value(&d, "b").as_deref(), Some("2"));
        }
    }

    #[test]
    fn one_attribute_written_on_two_nodes_ends_the_same_everywhere() {
        let x1 = op("x", 5, 1, Some("\"one\""));
        let x2 = op("x", 5, 2, Some("\"two\""));
        let older = op("x", 4, 9, Some("\"old\""));
        for order in [[&x1, &x2, &older], [&older, &x2, &x1], [&x2, &older, &x1]] {
            let mut d = Data::new(0, 1, Stamp::default());
            for o in order {
                d.apply(std::slice::from_ref(o), &LIMITS).unwrap();
            }
            assert_eq!(value(&d, "x").as_deref(), Some("\"two\""));
        }
    }

    #[test]
    fn a_removal_is_not_undone_by_an_older_write_arriving_late() {
        let mut d = Data::new(0, 1, Stamp::default());
        d.apply(&[op("x", 3, 1, None)], &LIMITS).unwrap();
        d.apply(&[op("x", 2, 1, Some("1"))], &LIMITS).unwrap();
        assert_eq!(value(&d, "x"), None);
    }

    #[test]
    fn limits_refuse_the_whole_change_and_name_the_key() {
        let mut d = Data::new(0, 1, Stamp::default());
        let big = "1".repeat(101);
        let e = d.apply(&[op("a", 2, 1, Some(&big))], &LIMITS).unwrap_err();
        assert!(e.to_string().contains("max_attribute_bytes"), "{e}");
        let many: Vec<AttrOp> = (0..5)
            .map(|i| op(&format!("k{i}"), 2, 1, Some("1")))
            .collect();
        let e = d.apply(&many, &LIMITS).unwrap_err();
        assert!(e.to_string().contains("max_attributes"), "{e}");
        assert_eq!(d.live().count(), 0, "nothing applied");
        let sixty = "2".repeat(90);
        let e = d
            .apply(
                &[
                    op("a", 2, 1, Some(&sixty)),
                    op("b", 2, 1, Some(&sixty)),
                    op("c", 2, 1, Some(&sixty)),
                ],
                &LIMITS,
            )
            .unwrap_err();
        assert!(e.to_string().contains("max_session_bytes"), "{e}");
        let e = d
            .apply(&[op("a", 2, 1, Some("{nope"))], &LIMITS)
            .unwrap_err();
        assert!(matches!(e, LimitError::NotJson { .. }));
        // Replacing a value frees its bytes.
        d.apply(&[op("a", 2, 1, Some(&sixty))], &LIMITS).unwrap();
        d.apply(&[op("a", 3, 1, Some(&sixty))], &LIMITS).unwrap();
        assert_eq!(d.bytes, 91);
    }

    #[test]
    fn a_full_copy_keeps_local_writes_it_lacks_and_applies_its_removals() {
        let mut d = Data::new(0, 1, Stamp::default());
        d.apply(
            &[op("keep", 9, 1, Some("1")), op("stale", 2, 1, Some("2"))],
            &LIMITS,
        )
        .unwrap();
        let copy = Copy {
            key: 1,
            route: "a".into(),
            route_stamp: Stamp::default(),
            created_ms: 5,
            last_access_ms: 6,
            max_inactive_s: 60,
            version: 5,
            attrs: vec![op("new", 4, 2, Some("3")), op("stale", 3, 2, None)],
            loc: Loc::default(),
        };
        d.merge_copy(&copy, &LIMITS).unwrap();
        assert_eq!(value(&d, "keep").as_deref(), Some("1"));
        assert_eq!(value(&d, "stale"), None, "removed by the copy");
        // Absent from a copy is not removed: a concurrent write survives.
        let lacking = Copy {
            attrs: vec![],
            version: 9,
            ..copy
        };
        d.merge_copy(&lacking, &LIMITS).unwrap();
        assert_eq!(value(&d, "keep").as_deref(), Some("1"));
        assert_eq!(value(&d, "new").as_deref(), Some("3"));
        assert_eq!(d.version, 9);
    }

    #[test]
    fn a_name_twice_or_too_many_ops_is_refused() {
        let mut d = Data::new(0, 1, Stamp::default());
        let e = d
            .apply(&[op("a", 2, 1, None), op("a", 2, 1, None)], &LIMITS)
            .unwrap_err();
        assert!(matches!(e, LimitError::Twice { .. }), "{e}");
        let many: Vec<AttrOp> = (0..LIMITS.attributes + MAX_TOMBSTONES + 1)
            .map(|i| op(&format!("r{i}"), 2, 1, None))
            .collect();
        assert!(matches!(
            d.apply(&many, &LIMITS),
            Err(LimitError::Attributes { .. })
        ));
    }

    #[test]
    fn removals_remembered_are_bounded() {
        let mut d = Data::new(0, 1, Stamp::default());
        let big = Limits {
            attributes: 1000,
            attribute_bytes: 100,
            session_bytes: 100_000,
        };
        for i in 0..100u64 {
            d.apply(&[op(&format!("k{i}"), i + 1, 1, None)], &big)
                .unwrap();
        }
        assert_eq!(d.attrs.len(), MAX_TOMBSTONES);
    }
}
