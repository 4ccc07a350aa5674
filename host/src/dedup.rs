//! Duplicate suppression on receive.
//!
//! A sender that loses its connection after writing a message, but before
//! the ACK came back, cannot tell whether the message arrived; it sends it
//! again on a new connection (Tribes' retry). The receiver remembers the
//! last [`WINDOW`] message ids (ChannelData's `uniqueId`) of each sender
//! that it *delivered*, and drops such a message when it comes again:
//! delivered once, acknowledged again. A message that failed (a listener
//! threw, a plug-in refused it: FAIL-ACK) is not remembered, so a retry is
//! tried again, as Tomcat's sender expects after a FAIL-ACK.
//! Bounded: [`WINDOW`] ids per sender, [`MAX_SENDERS`] senders (the least
//! recently heard is forgotten first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// foldhash, randomly seeded per map: every received message costs a few
/// lookups here, and SipHash made them ~10 % of a node's CPU at 1 KiB async
/// (docs/benchmarks.md). The ids are the sender's, so the seed still matters.
type Hasher = foldhash::fast::RandomState;

/// Message ids remembered per sender.
pub const WINDOW: usize = 2048;
/// Senders remembered at most (over all shards).
pub const MAX_SENDERS: usize = 256;
const SHARDS: usize = 16;
const WORDS: usize = WINDOW / 64;

/// A shoal node's ids are its random 8-byte prefix and a counter (big
/// endian): those are remembered as bits in a window of [`WINDOW`]
/// counters below the highest seen, two bit operations per message
/// instead of five hash-set operations. Other ids (Tomcat's are random)
/// take the hash sets of [`Window`].
struct Counters {
    prefix: [u8; 8],
    /// The highest counter claimed; the window is `hi - WINDOW + 1 ..= hi`.
    hi: u64,
    delivered: [u64; WORDS],
    claimed: [u64; WORDS],
}

impl Counters {
    fn new(prefix: [u8; 8], hi: u64) -> Box<Self> {
        Box::new(Self {
            prefix,
            hi,
            delivered: [0; WORDS],
            claimed: [0; WORDS],
        })
    }

    fn in_window(&self, c: u64) -> bool {
        c <= self.hi && self.hi - c < WINDOW as u64
    }

    fn bit(c: u64) -> (usize, u64) {
        let slot = (c % WINDOW as u64) as usize;
        (slot / 64, 1 << (slot % 64))
    }

    /// Moves the window up to `c`; counters leaving it while claimed are
    /// handed to `evicted` (their delivery is still tracked, by hash).
    fn slide(&mut self, c: u64, mut evicted: impl FnMut(u64)) {
        let from = if c - self.hi >= WINDOW as u64 {
            c - WINDOW as u64 + 1
        } else {
            self.hi + 1
        };
        for k in from..=c {
            // The slot of `k` held `k - WINDOW`, which leaves now.
            let (w, b) = Self::bit(k);
            if self.claimed[w] & b != 0
                && let Some(old) = k.checked_sub(WINDOW as u64)
            {
                evicted(old);
            }
            self.claimed[w] &= !b;
            self.delivered[w] &= !b;
        }
        self.hi = c;
    }
}

/// One sender's remembered ids.
#[derive(Default)]
struct Window {
    seen: HashSet<u128, Hasher>,
    order: VecDeque<u128>,
    counters: Option<Box<Counters>>,
}

#[derive(Default)]
struct Shard {
    senders: HashMap<[u8; 16], Window, Hasher>,
    /// Messages being delivered now (claimed, not finished) that are not in
    /// a counter window: a copy that arrives meanwhile on another connection
    /// is not delivered too.
    in_progress: HashSet<([u8; 16], u128), Hasher>,
    /// Senders in the order first heard, for eviction.
    arrival: VecDeque<[u8; 16]>,
}

/// What [`Dedup::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen: deliver it.
    New,
    /// Delivered already: acknowledge, do not deliver again.
    Delivered,
    /// A copy is being delivered right now (from another connection).
    InProgress,
}

/// The ids seen per sender.
pub struct Dedup {
    shards: [Mutex<Shard>; SHARDS],
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        }
    }
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup").finish_non_exhaustive()
    }
}

/// An id as its prefix and counter.
fn split(id: u128) -> ([u8; 8], u64) {
    let b = id.to_be_bytes();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&b[..8]);
    (prefix, id as u64)
}

impl Dedup {
    fn shard(&self, sender: &[u8; 16]) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(sender[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `sender`'s message with this id for delivery: [`Claim::New`]
    /// (then [`Dedup::finish`] must follow), or why not. Ids that are not
    /// 16 bytes (Tribes always sends 16) are always new and never tracked.
    #[cfg(test)]
    pub fn claim(&self, sender: &[u8; 16], id: &[u8]) -> Claim {
        let mut out = Vec::with_capacity(1);
        self.claim_many(sender, [id], &mut out);
        out.pop().unwrap_or(Claim::New)
    }

    /// [`Dedup::claim`] for several messages of one sender, in order, with
    /// one lock; a claim per id is appended to `out`.
    pub fn claim_many<'a>(
        &self,
        sender: &[u8; 16],
        ids: impl IntoIterator<Item = &'a [u8]>,
        out: &mut Vec<Claim>,
    ) {
        let mut shard = self.shard(sender);
        let Shard {
            senders,
            in_progress,
            arrival,
        } = &mut *shard;
        let w = window(senders, arrival, sender);
        for id in ids {
            let Ok(id) = <[u8; 16]>::try_from(id) else {
                out.push(Claim::New);
                continue;
            };
            out.push(w.claim(in_progress, sender, u128::from_be_bytes(id)));
        }
    }

    /// Ends a [`Claim::New`]: remembered as delivered, or released so that
    /// a resend is tried again.
    pub fn finish(&self, sender: &[u8; 16], id: &[u8], delivered: bool) {
        self.finish_many(sender, [(id, delivered)]);
    }

    /// [`Dedup::finish`] for several messages of one sender, with one lock.
    pub fn finish_many<'a>(
        &self,
        sender: &[u8; 16],
        done: impl IntoIterator<Item = (&'a [u8], bool)>,
    ) {
        let mut shard = self.shard(sender);
        let Shard {
            senders,
            in_progress,
            arrival,
        } = &mut *shard;
        let w = window(senders, arrival, sender);
        for (id, delivered) in done {
            let Ok(raw) = <[u8; 16]>::try_from(id) else {
                continue;
            };
            w.finish(in_progress, sender, u128::from_be_bytes(raw), delivered);
        }
    }

    /// Remembers that `sender`'s message with this id was delivered; `false`
    /// if it was already.
    #[cfg(test)]
    pub fn remember(&self, sender: &[u8; 16], id: &[u8]) -> bool {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return true;
        };
        if self.claim(sender, &id) != Claim::New {
            return false;
        }
        self.finish(sender, &id, true);
        true
    }
}

impl Window {
    fn claim(
        &mut self,
        in_progress: &mut HashSet<([u8; 16], u128), Hasher>,
        sender: &[u8; 16],
        id: u128,
    ) -> Claim {
        let (prefix, c) = split(id);
        let counters = self
            .counters
            .get_or_insert_with(|| Counters::new(prefix, c.saturating_sub(1)));
        if counters.prefix == prefix {
            if c > counters.hi {
                counters.slide(c, |old| {
                    in_progress.insert((*sender, id & !u128::from(u64::MAX) | u128::from(old)));
                });
            }
            if counters.in_window(c) {
                let (i, b) = Counters::bit(c);
                if counters.delivered[i] & b != 0 {
                    return Claim::Delivered;
                }
                if counters.claimed[i] & b != 0 {
                    return Claim::InProgress;
                }
                counters.claimed[i] |= b;
                return Claim::New;
            }
            // Below the window: forgotten whether delivered, but not
            // delivered twice at once.
        } else if self.seen.contains(&id) {
            return Claim::Delivered;
        }
        // Bounded by the messages in delivery at once (a batch each per
        // connection, and the deferred ones).
        if in_progress.insert((*sender, id)) {
            Claim::New
        } else {
            Claim::InProgress
        }
    }

    fn finish(
        &mut self,
        in_progress: &mut HashSet<([u8; 16], u128), Hasher>,
        sender: &[u8; 16],
        id: u128,
        delivered: bool,
    ) {
        let (prefix, c) = split(id);
        if let Some(counters) = &mut self.counters
            && counters.prefix == prefix
        {
            if counters.in_window(c) {
                let (i, b) = Counters::bit(c);
                if counters.claimed[i] & b != 0 {
                    counters.claimed[i] &= !b;
                    if delivered {
                        counters.delivered[i] |= b;
                    }
                    return;
                }
            }
            // Claimed below the window, or pushed out of it meanwhile.
            in_progress.remove(&(*sender, id));
            return;
        }
        in_progress.remove(&(*sender, id));
        if delivered && self.seen.insert(id) {
            self.order.push_back(id);
            if self.order.len() > WINDOW
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
    }
}

/// `sender`'s window, made room for when new (the sender heard first is
/// forgotten first).
fn window<'a>(
    senders: &'a mut HashMap<[u8; 16], Window, Hasher>,
    arrival: &mut VecDeque<[u8; 16]>,
    sender: &[u8; 16],
) -> &'a mut Window {
    if !senders.contains_key(sender) {
        while senders.len() >= MAX_SENDERS / SHARDS {
            match arrival.pop_front() {
                Some(old) => {
                    senders.remove(&old);
                }
                None => break,
            }
        }
        arrival.push_back(*sender);
    }
    senders.entry(*sender).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id with no pattern (as Tomcat's are): prefix and counter differ
    /// every time.
    fn random_id(i: u64) -> [u8; 16] {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&mix(i).to_be_bytes());
        id[8..].copy_from_slice(&mix(i ^ 0x5555).to_be_bytes());
        id
    }

    fn counter_id(prefix: u64, c: u64) -> [u8; 16] {
        ((u128::from(prefix) << 64) | u128::from(c)).to_be_bytes()
    }

    #[test]
    fn a_repeated_id_is_a_duplicate_within_the_window_and_per_sender() {
        let d = Dedup::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let x = random_id(7);
        assert_eq!(d.claim(&a, &x), Claim::New);
        assert_eq!(
            d.claim(&a, &x),
            Claim::InProgress,
            "a copy while the first is delivered"
        );
        d.finish(&a, &x, false);
        assert_eq!(
            d.claim(&a, &x),
            Claim::New,
            "a failed delivery is tried again"
        );
        d.finish(&a, &x, true);
        assert_eq!(d.claim(&a, &x), Claim::Delivered);
        assert!(!d.remember(&a, &x), "same sender, same id");
        assert!(d.remember(&b, &x), "another sender may use the id");
        assert!(
            d.remember(&a, &[7; 5]),
            "odd-length ids are never duplicates"
        );
        assert!(d.remember(&a, &[7; 5]));
        assert!(d.remember(&a, &random_id(8)));
        for i in 0..WINDOW as u64 {
            assert!(d.remember(&a, &random_id(1000 + i)));
        }
        assert!(d.remember(&a, &random_id(8)), "forgotten beyond the window");
    }

    #[test]
    fn a_shoal_senders_counters_are_remembered_in_a_window() {
        let d = Dedup::default();
        let a = [1u8; 16];
        let id = |c| counter_id(0xabcd, c);
        assert_eq!(d.claim(&a, &id(10)), Claim::New);
        assert_eq!(d.claim(&a, &id(10)), Claim::InProgress);
        d.finish(&a, &id(10), false);
        assert_eq!(
            d.claim(&a, &id(10)),
            Claim::New,
            "a failed delivery is tried again"
        );
        d.finish(&a, &id(10), true);
        assert_eq!(d.claim(&a, &id(10)), Claim::Delivered);
        // Out of order within the window (several connections).
        let mut claims = Vec::new();
        d.claim_many(&a, [&id(15)[..], &id(12)[..], &id(15)[..]], &mut claims);
        assert_eq!(claims, [Claim::New, Claim::New, Claim::InProgress]);
        d.finish_many(&a, [(&id(15)[..], true), (&id(12)[..], true)]);
        assert_eq!(d.claim(&a, &id(12)), Claim::Delivered);
        assert_eq!(d.claim(&a, &id(11)), Claim::New, "a gap is not a delivery");
        d.finish(&a, &id(11), true);
        // 20 is still being delivered when the window moves past it.
        assert_eq!(d.claim(&a, &id(20)), Claim::New);
        for c in 21..21 + WINDOW as u64 {
            assert!(d.remember(&a, &id(c)));
        }
        assert_eq!(
            d.claim(&a, &id(20)),
            Claim::InProgress,
            "out of the window, still not delivered twice at once"
        );
        d.finish(&a, &id(20), true);
        assert_eq!(
            d.claim(&a, &id(20)),
            Claim::New,
            "forgotten beyond the window"
        );
        d.finish(&a, &id(20), false);
        assert!(d.remember(&a, &id(12)), "forgotten beyond the window");
        assert!(
            !d.remember(&a, &id(20 + WINDOW as u64)),
            "still in the window"
        );
        // A far jump forgets everything at once.
        assert!(d.remember(&a, &id(1 << 40)));
        assert!(d.remember(&a, &id(20 + WINDOW as u64)));
        // Another prefix from the same sender takes the hash sets.
        let other = counter_id(0x1234, 10);
        assert!(d.remember(&a, &other));
        assert!(!d.remember(&a, &other));
    }

    #[test]
    fn senders_are_bounded() {
        let d = Dedup::default();
        for s in 0..=255u8 {
            for k in 0..4u8 {
                let mut sender = [k; 16];
                sender[0] = s;
                assert!(d.remember(&sender, &[1; 16]));
            }
        }
        let held: usize = d
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").senders.len())
            .sum();
        assert!(held <= MAX_SENDERS, "{held}");
    }
}
