//! Session policy of Tomcat's BackupManager: each session has a primary and
//! a few backups; the other nodes keep a proxy entry and fetch the session
//! on first use.
//!
//! Primary: the current one; when it is gone, the first current backup
//! (promoted); when there is none, this node. Backups: the current ones that
//! are still valid, up to `backups`; the rest from the other nodes in
//! member-id order, starting at `key % count` (so sessions spread evenly and
//! every node computes the same).
//!
//! Settings: `backups` (copies besides the primary, 0..=8; Tomcat: 1).

use shoal_policy_sdk::*;

/// Tomcat's BackupManager keeps exactly one backup.
const DEFAULT_BACKUPS: usize = 1;
/// More copies than this cost more than they save.
const MAX_BACKUPS: usize = 8;

struct BackupPolicy {
    backups: usize,
}

impl Policy for BackupPolicy {
    fn create(settings: &Settings) -> Result<Self, String> {
        settings.only(&["backups"])?;
        let backups: i64 = settings.get_or("backups", DEFAULT_BACKUPS as i64)?;
        let backups = usize::try_from(backups)
            .ok()
            .filter(|&b| b <= MAX_BACKUPS)
            .ok_or_else(|| {
                format!("setting `backups`: {backups} is out of range (0..={MAX_BACKUPS})")
            })?;
        Ok(Self { backups })
    }

    fn info(&self) -> PolicyInfo {
        PolicyInfo::new(env!("CARGO_PKG_VERSION"), true)
    }

    fn place(&self, cluster: &Cluster, sessions: &Sessions, out: &mut Placements) {
        let want = self.backups;
        for s in sessions.iter() {
            let mut p = out.push(s.primary_or_promote(cluster.local()));
            // Keep the current copies that are still valid (`add_backup`
            // skips the others).
            for &b in s.backups {
                if p.len() == want {
                    break;
                }
                p.add_backup(b as usize);
            }
            if p.len() < want {
                for c in cluster.spread(s.key, |i| p.can_add(i)) {
                    if p.len() == want {
                        break;
                    }
                    p.add_backup(c);
                }
            }
        }
    }
}

export_policy!(BackupPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn nodes(ids: &[u64]) -> Vec<Node> {
        ids.iter()
            .map(|&hi| Node {
                id: MemberId { hi, lo: 7 },
                zone: String::new(),
                route: String::new(),
                alive_ms: 0,
            })
            .collect()
    }

    /// Session columns from (key, primary, backups) rows.
    fn columns(rows: &[(u64, i32, Vec<u32>)]) -> SessionColumns {
        let mut cols = SessionColumns {
            keys: vec![],
            primaries: vec![],
            backup_start: vec![0],
            backups: vec![],
            sizes: vec![],
        };
        for (k, p, b) in rows {
            cols.keys.push(*k);
            cols.primaries.push(*p);
            cols.backups.extend(b);
            cols.backup_start.push(cols.backups.len() as u32);
            cols.sizes.push(10);
        }
        cols
    }

    fn place(policy: &BackupPolicy, c: &Cluster, rows: &[(u64, i32, Vec<u32>)]) -> Placements {
        let mut out = Placements::new(c.len(), rows.len());
        policy.place(c, &Sessions::new(columns(rows), c.len()), &mut out);
        out
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(
            BackupPolicy::create(&settings(&[])).map(|p| p.backups),
            Ok(1)
        );
        assert_eq!(
            BackupPolicy::create(&settings(&[("backups", "8")])).map(|p| p.backups),
            Ok(8)
        );
        for bad in ["9", "-1"] {
            let e = BackupPolicy::create(&settings(&[("backups", bad)]))
                .err()
                .unwrap_or_default();
            assert!(e.contains("`backups`") && e.contains("out of range"), "{e}");
        }
        let e = BackupPolicy::create(&settings(&[("backups", "x")]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("`backups`"), "{e}");
        let e = BackupPolicy::create(&settings(&[("backup", "1")]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("`backup`"), "{e}");
    }

    #[test]
    fn keeps_valid_backups_and_fills_by_key() {
        // Member-id order: node 2 (id 10), node 0 (20), node 3 (30), node 1 (40).
        let c = Cluster::new(nodes(&[20, 40, 10, 30]), 0);
        let p = BackupPolicy { backups: 2 };
        let out = place(
            &p,
            &c,
            &[
                (0, 0, vec![3]),     // keep 3; candidates [2, 1], 0 % 2 -> 2
                (1, 0, vec![0, 3]),  // 0 is the primary: keep 3, then 1 % 2 -> 1
                (5, 1, vec![]),      // candidates [2, 0, 3], 5 % 3 = 2 -> 3, 2
                (4, -1, vec![1, 2]), // 1 promoted, keep 2; candidates [0, 3], 4 % 2 -> 0
            ],
        );
        assert_eq!((out.primary(0), out.backups(0)), (Some(0), &[3, 2][..]));
        assert_eq!((out.primary(1), out.backups(1)), (Some(0), &[3, 1][..]));
        assert_eq!((out.primary(2), out.backups(2)), (Some(1), &[3, 2][..]));
        assert_eq!((out.primary(3), out.backups(3)), (Some(1), &[2, 0][..]));
    }

    #[test]
    fn same_answer_whatever_the_host_order_and_stable() {
        let ids = [50, 10, 40, 20, 30];
        let order_b = [3, 0, 4, 1, 2]; // a permutation of the indices
        let a = Cluster::new(nodes(&ids), 0);
        let b = Cluster::new(nodes(&order_b.map(|i| ids[i])), 1);
        let p = BackupPolicy { backups: 2 };
        for key in 0..40u64 {
            let rows = [(key, -1, vec![(key % 5) as u32])];
            let pa = place(&p, &a, &rows);
            // The same session on b: its backup is the same member.
            let pos = |i: u32| order_b.iter().position(|&x| x == i as usize).unwrap_or(99) as u32;
            let pb = place(&p, &b, &[(key, -1, vec![pos(rows[0].2[0])])]);
            let id = |c: &Cluster, i: usize| c.nodes()[i].id.hi;
            assert_eq!(
                id(&a, pa.primary(0).unwrap_or(99)),
                id(&b, pb.primary(0).unwrap_or(99))
            );
            let ba: Vec<u64> = pa.backups(0).iter().map(|&i| id(&a, i as usize)).collect();
            let bb: Vec<u64> = pb.backups(0).iter().map(|&i| id(&b, i as usize)).collect();
            assert_eq!(ba, bb, "key {key}");
            assert_eq!(ba.len(), 2);
            // Placing the result again changes nothing.
            let again = place(
                &p,
                &a,
                &[(
                    key,
                    pa.primary(0).unwrap_or(0) as i32,
                    pa.backups(0).to_vec(),
                )],
            );
            assert_eq!(again.backups(0), pa.backups(0));
        }
    }
}
