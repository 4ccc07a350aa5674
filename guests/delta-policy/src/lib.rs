//! Session policy of Tomcat's DeltaManager: every session is copied to every
//! node, so any node can serve it and no proxy entries are needed.
//!
//! Primary: the current one; when it is gone, the first current backup
//! (promoted); when there is none, this node. Backups: every other node —
//! first the current backups in their order (those still valid), then the
//! remaining nodes in the host's order. No settings.

use shoal_policy_sdk::*;

struct DeltaPolicy;

impl Policy for DeltaPolicy {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&[])?;
        Ok(Self)
    }

    fn info(&self) -> PolicyInfo {
        PolicyInfo::new(env!("CARGO_PKG_VERSION"), false)
    }

    fn place(&self, cluster: &Cluster, sessions: &Sessions, out: &mut Placements) {
        for s in sessions.iter() {
            let mut p = out.push(s.primary_or_promote(cluster.local()));
            // `add_backup` skips the invalid, the primary and duplicates.
            for &b in s.backups {
                p.add_backup(b as usize);
            }
            for i in 0..cluster.len() {
                p.add_backup(i);
            }
        }
    }
}

export_policy!(DeltaPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: u64, local: usize) -> Cluster {
        let nodes = (0..n)
            .map(|i| Node {
                id: MemberId { hi: 100 - i, lo: 0 },
                zone: String::new(),
                route: String::new(),
                alive_ms: 0,
            })
            .collect();
        Cluster::new(nodes, local)
    }

    fn place(c: &Cluster, primaries: Vec<i32>, backups: Vec<Vec<u32>>) -> Placements {
        let n = primaries.len();
        let mut backup_start = vec![0];
        for b in &backups {
            backup_start.push(backup_start[backup_start.len() - 1] + b.len() as u32);
        }
        let cols = SessionColumns {
            keys: (0..n as u64).collect(),
            primaries,
            backup_start,
            backups: backups.concat(),
            sizes: vec![0; n],
        };
        let mut out = Placements::new(c.len(), n);
        DeltaPolicy.place(c, &Sessions::new(cols, c.len()), &mut out);
        out
    }

    #[test]
    fn copies_everywhere_current_backups_first() {
        let c = cluster(4, 0);
        let out = place(
            &c,
            vec![1, -1, -1, -1],
            vec![vec![3, 9, 1], vec![2, 3], vec![], vec![9]],
        );
        assert_eq!(out.len(), 4);
        assert_eq!((out.primary(0), out.backups(0)), (Some(1), &[3, 0, 2][..]));
        assert_eq!(
            (out.primary(1), out.backups(1)),
            (Some(2), &[3, 0, 1][..]),
            "backup promoted"
        );
        assert_eq!(
            (out.primary(2), out.backups(2)),
            (Some(0), &[1, 2, 3][..]),
            "nothing left: local"
        );
        assert_eq!(out.primary(3), Some(0), "an invalid backup is not promoted");
    }

    #[test]
    fn empty_batch() {
        let out = place(&cluster(2, 1), vec![], vec![]);
        assert!(out.is_empty());
        assert!(out.backups(0).is_empty());
    }
}
