//! What `place` writes: one primary and a list of backups per session, built
//! in the host's column layout. The builder keeps the per-session shape rules
//! (no backup out of range, equal to the primary or listed twice) by
//! construction; pushing exactly one entry per session is the policy's part.

use crate::PlacementColumns;

/// The answer to one `place` call, built one session at a time with
/// [`Placements::push`].
#[derive(Debug, Clone)]
pub struct Placements {
    primaries: Vec<u32>,
    backup_start: Vec<u32>,
    backups: Vec<u32>,
    /// `mark[node] == primaries.len()`: `node` is the primary or a backup of
    /// the session being built (an O(1) duplicate check, never cleared).
    mark: Vec<u32>,
}

impl Placements {
    /// An empty answer for a cluster of `nodes` nodes, with room for
    /// `sessions` sessions. (The SDK builds it; public so that a policy's
    /// `place` can be unit-tested.)
    pub fn new(nodes: usize, sessions: usize) -> Self {
        let mut backup_start = Vec::with_capacity(sessions + 1);
        backup_start.push(0);
        Self {
            primaries: Vec::with_capacity(sessions),
            backup_start,
            backups: Vec::with_capacity(sessions),
            mark: vec![0; nodes],
        }
    }

    /// Starts the next session's entry with its `primary` (an index into
    /// the cluster's nodes) and returns it, to add backups to. Call once per
    /// session, in order. Only honoured by the host for a session whose
    /// primary is gone; for the others pass the current one
    /// ([`Session::primary_or_promote`](crate::Session::primary_or_promote)
    /// does both), so that it is not chosen as a backup. A primary out of
    /// range makes the whole answer a failure of the policy.
    pub fn push(&mut self, primary: usize) -> Placement<'_> {
        self.primaries
            .push(u32::try_from(primary).unwrap_or(u32::MAX));
        self.backup_start.push(self.backups.len() as u32);
        let stamp = self.primaries.len() as u32;
        if let Some(m) = self.mark.get_mut(primary) {
            *m = stamp;
        }
        Placement { out: self, primary }
    }

    /// The number of sessions placed so far.
    pub fn len(&self) -> usize {
        self.primaries.len()
    }

    /// Whether no session has been placed yet.
    pub fn is_empty(&self) -> bool {
        self.primaries.is_empty()
    }

    /// The primary placed for session `i`.
    pub fn primary(&self, i: usize) -> Option<usize> {
        self.primaries.get(i).map(|&p| p as usize)
    }

    /// The backups placed for session `i` (empty when `i` is out of range).
    pub fn backups(&self, i: usize) -> &[u32] {
        match (self.backup_start.get(i), self.backup_start.get(i + 1)) {
            (Some(&s), Some(&e)) => &self.backups[s as usize..e as usize],
            _ => &[],
        }
    }

    /// The columns handed back to the host.
    pub(crate) fn into_columns(self) -> PlacementColumns {
        PlacementColumns {
            primaries: self.primaries,
            backup_start: self.backup_start,
            backups: self.backups,
        }
    }
}

/// The entry of the session being placed: add its backups, in order of
/// preference (the host keeps the order; the first backup is the one promoted
/// when the primary goes).
#[derive(Debug)]
pub struct Placement<'a> {
    out: &'a mut Placements,
    primary: usize,
}

impl Placement<'_> {
    fn stamp(&self) -> u32 {
        self.out.primaries.len() as u32
    }

    /// The session's primary, as pushed.
    pub fn primary(&self) -> usize {
        self.primary
    }

    /// Whether `node` may still be added as a backup: it is a node of the
    /// cluster, not the primary, and not already a backup.
    pub fn can_add(&self, node: usize) -> bool {
        self.out.mark.get(node).is_some_and(|&m| m != self.stamp())
    }

    /// Adds `node` as the next backup, if [`Placement::can_add`] allows it;
    /// returns whether it was added. So a session's current backups can be
    /// kept with `add_backup` alone: those no longer valid are skipped.
    pub fn add_backup(&mut self, node: usize) -> bool {
        if !self.can_add(node) {
            return false;
        }
        let stamp = self.stamp();
        self.out.mark[node] = stamp;
        self.out.backups.push(node as u32);
        if let Some(end) = self.out.backup_start.last_mut() {
            *end += 1;
        }
        true
    }

    /// Whether `node` is already one of this session's backups.
    pub fn has_backup(&self, node: usize) -> bool {
        node != self.primary && self.out.mark.get(node).is_some_and(|&m| m == self.stamp())
    }

    /// The backups added so far.
    pub fn backups(&self) -> &[u32] {
        let start = self.out.backup_start[self.out.backup_start.len() - 2] as usize;
        &self.out.backups[start..]
    }

    /// The number of backups added so far.
    pub fn len(&self) -> usize {
        self.backups().len()
    }

    /// Whether no backup has been added yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
