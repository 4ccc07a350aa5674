//! A shoal session policy written with the policy SDK: each session gets
//! `backups` copies (default 2) besides its primary, in zones that differ
//! from the primary's and from each other where the cluster has enough
//! zones (a zone is a node's `[node] zone` label). Nodes without a copy keep
//! a proxy entry (as Tomcat's BackupManager).
//!
//! Per session:
//! 1. Primary: the current one; when it is gone, the first current backup
//!    (promoted); when there is none, this node.
//! 2. Keep the current backups that are still valid, as long as their zones
//!    differ from each other (they already hold a copy: keeping them is
//!    free).
//! 3. Fill from the other nodes in member-id order, starting at
//!    `key % count` (so sessions spread and every node computes the same),
//!    taking only nodes of a zone not yet used by the primary or a backup.
//! 4. If the zones run out: take the current backups step 2 left out (they
//!    still hold a copy), then any remaining node in the same order. Each
//!    backup placed this way is counted in `zone_shortfall_total`, and the
//!    first time it happens the policy logs a warning.
//!
//! Settings: `backups` (0..=8, default 2).

use std::cell::Cell;

use shoal_policy_sdk::host::{self, Counter};
use shoal_policy_sdk::*;

/// Two copies in two other zones survive the loss of any two zones.
const DEFAULT_BACKUPS: usize = 2;
/// More copies than this cost more than they save.
const MAX_BACKUPS: usize = 8;

struct ZonePolicy {
    backups: usize,
    shortfall: Counter,
    warned: Cell<bool>,
}

/// Places one session with `want` backups; returns how many of them share a
/// zone for want of zones.
fn place_one(want: usize, cluster: &Cluster, s: &Session<'_>, out: &mut Placements) -> u64 {
    let primary = s.primary_or_promote(cluster.local());
    let mut p = out.push(primary);
    let mut used = vec![cluster.zone(primary)];

    // Keep the current copies whose zones differ from each other.
    let mut kept_zones: Vec<&str> = Vec::new();
    let mut left_out = Vec::new();
    for &b in s.backups {
        let b = b as usize;
        if p.len() == want {
            break;
        }
        if !p.can_add(b) {
            continue;
        }
        let zone = cluster.zone(b);
        if kept_zones.contains(&zone) {
            left_out.push(b);
        } else {
            kept_zones.push(zone);
            p.add_backup(b);
        }
    }
    if p.len() == want {
        return 0;
    }
    used.extend(kept_zones);

    // Fill from zones not used yet, in the spread order.
    let candidates = cluster.spread(s.key, |i| p.can_add(i));
    for &c in &candidates {
        if p.len() == want {
            return 0;
        }
        let zone = cluster.zone(c);
        if !used.contains(&zone) {
            used.push(zone);
            p.add_backup(c);
        }
    }

    // Out of zones: nodes that already hold a copy first, then any.
    let mut short = 0;
    for &c in left_out.iter().chain(&candidates) {
        if p.len() == want {
            break;
        }
        if p.add_backup(c) {
            short += 1;
        }
    }
    short
}

impl Policy for ZonePolicy {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["backups"])?;
        let backups: i64 = settings.get_or("backups", DEFAULT_BACKUPS as i64)?;
        let backups = usize::try_from(backups)
            .ok()
            .filter(|&b| b <= MAX_BACKUPS)
            .ok_or_else(|| {
                format!("setting `backups`: {backups} is out of range (0..={MAX_BACKUPS})")
            })?;
        Ok(Self {
            backups,
            shortfall: Counter::register(
                "zone_shortfall_total",
                "Session backups placed in a zone that already holds a copy, for want of zones",
            ),
            warned: Cell::new(false),
        })
    }

    fn info(&self) -> PolicyInfo {
        PolicyInfo::new(env!("CARGO_PKG_VERSION"), true)
    }

    fn place(&self, cluster: &Cluster, sessions: &Sessions, out: &mut Placements) {
        let short: u64 = sessions
            .iter()
            .map(|s| place_one(self.backups, cluster, &s, out))
            .sum();
        if short > 0 {
            self.shortfall.add(short);
            if !self.warned.replace(true) {
                let mut zones: Vec<&str> =
                    cluster.nodes().iter().map(|n| n.zone.as_str()).collect();
                zones.sort_unstable();
                zones.dedup();
                host::warn(&format!(
                    "zone policy: {} zone(s) among {} node(s) cannot hold a primary and {} backups in distinct zones; \
                     some backups share a zone (counted in zone_shortfall_total; set `[node] zone` on every node)",
                    zones.len(),
                    cluster.len(),
                    self.backups
                ));
            }
        }
    }
}

export_policy!(ZonePolicy);

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes with member ids 0, 1, 2... in the given zones.
    fn cluster(zones: &[&str]) -> Cluster {
        let nodes = zones
            .iter()
            .enumerate()
            .map(|(i, z)| Node {
                id: MemberId {
                    hi: 0,
                    lo: i as u64,
                },
                zone: z.to_string(),
                route: String::new(),
                alive_ms: 0,
            })
            .collect();
        Cluster::new(nodes, 0)
    }

    /// Places one session (key, primary, backups); returns its backups and
    /// the shortfall.
    fn place(c: &Cluster, key: u64, primary: i32, backups: &[u32]) -> (Vec<u32>, u64) {
        let cols = SessionColumns {
            keys: vec![key],
            primaries: vec![primary],
            backup_start: vec![0, backups.len() as u32],
            backups: backups.to_vec(),
            sizes: vec![0],
        };
        let sessions = Sessions::new(cols, c.len());
        let mut out = Placements::new(c.len(), 1);
        let short = sessions.iter().map(|s| place_one(2, c, &s, &mut out)).sum();
        (out.backups(0).to_vec(), short)
    }

    #[test]
    fn backups_in_distinct_zones() {
        let c = cluster(&["a", "a", "b", "b", "c"]);
        for key in 0..10 {
            let (b, short) = place(&c, key, 0, &[]);
            let mut zones: Vec<&str> = b.iter().map(|&i| c.zone(i as usize)).collect();
            zones.sort_unstable();
            assert_eq!(zones, ["b", "c"], "key {key}");
            assert_eq!(short, 0);
        }
    }

    #[test]
    fn keeps_distinct_current_backups() {
        let c = cluster(&["a", "a", "b", "b", "c"]);
        // 1 shares the primary's zone but not 2's: both kept.
        assert_eq!(place(&c, 3, 0, &[1, 2]), (vec![1, 2], 0));
        // 2 and 3 share zone b: 3 gives way to a node of zone c.
        assert_eq!(place(&c, 3, 0, &[2, 3]), (vec![2, 4], 0));
    }

    #[test]
    fn out_of_zones_prefers_nodes_with_a_copy_and_counts() {
        let c = cluster(&["a", "b", "b", "b"]);
        // Zone b once, then nothing new: the left-out current backup 3 again.
        assert_eq!(place(&c, 0, 0, &[2, 3]), (vec![2, 3], 1));
        // Stable: placing the answer again gives the same answer.
        assert_eq!(place(&c, 0, 0, &[2, 3]), (vec![2, 3], 1));
        let (b, short) = place(&c, 1, 0, &[]);
        assert_eq!((b.len(), short), (2, 1));
    }
}
