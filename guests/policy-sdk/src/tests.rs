//! The builder's shape rules, the spread order and the reading of malformed
//! columns (run natively: `cargo test --target x86_64-unknown-linux-gnu`).

use crate::*;

fn node(hi: u64, zone: &str) -> Node {
    Node {
        id: MemberId { hi, lo: 0 },
        zone: zone.into(),
        route: String::new(),
        alive_ms: 0,
    }
}

#[test]
fn builder_keeps_shape_rules() {
    let mut out = Placements::new(3, 2);
    let mut p = out.push(1);
    assert!(!p.add_backup(1), "the primary is not a backup");
    assert!(p.add_backup(2));
    assert!(!p.add_backup(2), "no duplicate");
    assert!(!p.add_backup(3), "out of range");
    assert!(p.add_backup(0));
    assert_eq!(p.backups(), &[2, 0]);
    assert!(p.has_backup(0) && !p.has_backup(1));
    let mut p = out.push(0);
    assert!(p.add_backup(2), "marks of the previous session do not leak");
    assert!(p.add_backup(1));
    assert_eq!(p.len(), 2);
    let cols = out.into_columns();
    assert_eq!(cols.primaries, vec![1, 0]);
    assert_eq!(cols.backup_start, vec![0, 2, 4]);
    assert_eq!(cols.backups, vec![2, 0, 2, 1]);
}

#[test]
fn empty_batch_is_backup_start_zero() {
    let cols = Placements::new(1, 0).into_columns();
    assert!(cols.primaries.is_empty() && cols.backups.is_empty());
    assert_eq!(cols.backup_start, vec![0]);
}

#[test]
fn spread_walks_member_id_order_from_key() {
    // Host order differs from member-id order.
    let c = Cluster::new(
        vec![node(30, ""), node(10, ""), node(20, ""), node(40, "")],
        0,
    );
    assert_eq!(c.by_member_id(), &[1, 2, 0, 3]);
    assert_eq!(c.spread(0, |_| true), vec![1, 2, 0, 3]);
    assert_eq!(c.spread(6, |_| true), vec![0, 3, 1, 2]);
    // Candidates exclude node 2: [1, 0, 3], 7 % 3 = 1.
    assert_eq!(c.spread(7, |i| i != 2), vec![0, 3, 1]);
    assert!(c.spread(7, |_| false).is_empty());
}

#[test]
fn malformed_columns_read_as_nothing() {
    let cols = SessionColumns {
        keys: vec![1, 2, 3],
        primaries: vec![-1, 5, 0],
        backup_start: vec![0, 2, 9],
        backups: vec![7, 1],
        sizes: vec![],
    };
    let s = Sessions::new(cols, 2);
    let v: Vec<_> = s.iter().collect();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].primary, None);
    assert_eq!(v[0].backups, &[7, 1]);
    assert_eq!(
        v[0].primary_or_promote(0),
        1,
        "first backup in range is promoted"
    );
    assert_eq!(v[1].primary, None, "out of range");
    assert!(v[1].backups.is_empty(), "backup-start past the end");
    assert_eq!(
        v[1].primary_or_promote(0),
        0,
        "nothing to promote: fallback"
    );
    assert!(v[2].backups.is_empty(), "no backup-start[3]");
    assert_eq!(v[2].size, 0);
}
