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

#[derive(Default)]
struct Window {
    seen: HashSet<u128, Hasher>,
    order: VecDeque<u128>,
}

#[derive(Default)]
struct Shard {
    senders: HashMap<[u8; 16], Window, Hasher>,
    /// Messages being delivered now (claimed, not finished): a copy that
    /// arrives meanwhile on another connection is not delivered too.
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

impl Dedup {
    fn shard(&self, sender: &[u8; 16]) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(sender[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `sender`'s message with this id for delivery: [`Claim::New`]
    /// (then [`Dedup::finish`] must follow), or why not. Ids that are not
    /// 16 bytes (Tribes always sends 16) are always new and never tracked.
    pub fn claim(&self, sender: &[u8; 16], id: &[u8]) -> Claim {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return Claim::New;
        };
        let id = u128::from_be_bytes(id);
        let mut shard = self.shard(sender);
        if shard
            .senders
            .get(sender)
            .is_some_and(|w| w.seen.contains(&id))
        {
            return Claim::Delivered;
        }
        // Bounded by the messages in delivery at once (a batch each per
        // connection, and the deferred ones).
        if !shard.in_progress.insert((*sender, id)) {
            return Claim::InProgress;
        }
        Claim::New
    }

    /// Ends a [`Claim::New`]: remembered as delivered, or released so that
    /// a resend is tried again.
    pub fn finish(&self, sender: &[u8; 16], id: &[u8], delivered: bool) {
        let Ok(raw) = <[u8; 16]>::try_from(id) else {
            return;
        };
        let id = u128::from_be_bytes(raw);
        let mut shard = self.shard(sender);
        shard.in_progress.remove(&(*sender, id));
        if delivered {
            shard.remember(sender, id);
        }
    }

    /// Remembers that `sender`'s message with this id was delivered; `false`
    /// if it was already.
    #[cfg(test)]
    pub fn remember(&self, sender: &[u8; 16], id: &[u8]) -> bool {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return true;
        };
        self.shard(sender).remember(sender, u128::from_be_bytes(id))
    }
}

impl Shard {
    fn remember(&mut self, sender: &[u8; 16], id: u128) -> bool {
        let w = match self.senders.get_mut(sender) {
            Some(w) => w,
            None => {
                while self.senders.len() >= MAX_SENDERS / SHARDS {
                    match self.arrival.pop_front() {
                        Some(old) => {
                            self.senders.remove(&old);
                        }
                        None => break,
                    }
                }
                self.arrival.push_back(*sender);
                self.senders.entry(*sender).or_default()
            }
        };
        if !w.seen.insert(id) {
            return false;
        }
        w.order.push_back(id);
        if w.order.len() > WINDOW
            && let Some(old) = w.order.pop_front()
        {
            w.seen.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_id_is_a_duplicate_within_the_window_and_per_sender() {
        let d = Dedup::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        assert_eq!(d.claim(&a, &[7; 16]), Claim::New);
        assert_eq!(
            d.claim(&a, &[7; 16]),
            Claim::InProgress,
            "a copy while the first is delivered"
        );
        d.finish(&a, &[7; 16], false);
        assert_eq!(
            d.claim(&a, &[7; 16]),
            Claim::New,
            "a failed delivery is tried again"
        );
        d.finish(&a, &[7; 16], true);
        assert_eq!(d.claim(&a, &[7; 16]), Claim::Delivered);
        assert!(!d.remember(&a, &[7; 16]), "same sender, same id");
        assert!(d.remember(&b, &[7; 16]), "another sender may use the id");
        assert!(
            d.remember(&a, &[7; 5]),
            "odd-length ids are never duplicates"
        );
        assert!(d.remember(&a, &[7; 5]));
        for i in 0..WINDOW as u128 {
            assert!(d.remember(&a, &(1000 + i).to_be_bytes()));
        }
        assert!(d.remember(&a, &[7; 16]), "forgotten beyond the window");
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
