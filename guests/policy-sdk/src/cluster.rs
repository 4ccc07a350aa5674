//! What `place` reads: the nodes that hold sessions ([`Cluster`]) and a
//! batch of sessions as columns ([`Sessions`]), one [`Session`] view each.

use crate::{Node, SessionColumns};

/// The members that hold sessions, this node included, as the host passed
/// them to one `place` call. Indices into [`Cluster::nodes`] are what
/// sessions and placements refer to.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<Node>,
    local: usize,
    by_id: Vec<usize>,
}

impl Cluster {
    /// The nodes of one `place` call, this node at index `local`. (The SDK
    /// builds it; public so that a policy's `place` can be unit-tested.)
    pub fn new(nodes: Vec<Node>, local: usize) -> Self {
        let mut by_id: Vec<usize> = (0..nodes.len()).collect();
        // Stable: equal ids (which membership never reports) keep list order.
        by_id.sort_by_key(|&i| (nodes[i].id.hi, nodes[i].id.lo));
        Self {
            nodes,
            local,
            by_id,
        }
    }

    /// Every node, in the host's order. That order may differ from node to
    /// node: base decisions on [`Cluster::by_member_id`] instead.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node at index `i`, if there is one.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// The number of nodes (at least 1: this node).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never, in a host call: this node is
    /// always there).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// This node's index.
    pub fn local(&self) -> usize {
        self.local
    }

    /// The zone label of node `i` (`""` when unset or `i` is out of range).
    pub fn zone(&self, i: usize) -> &str {
        self.nodes.get(i).map_or("", |n| n.zone.as_str())
    }

    /// Node indices sorted by member id (`hi`, then `lo`): the same order on
    /// every node.
    pub fn by_member_id(&self) -> &[usize] {
        &self.by_id
    }

    /// The nodes for which `eligible` holds, in member-id order, rotated to
    /// start at index `key % count`: the deterministic way to spread
    /// sessions over candidates. Empty when none is eligible. Typical use:
    /// `cluster.spread(s.key, |i| p.can_add(i))` for the nodes a session
    /// may still take as backups.
    pub fn spread(&self, key: u64, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        let candidates: Vec<usize> = self
            .by_id
            .iter()
            .copied()
            .filter(|&i| eligible(i))
            .collect();
        if candidates.is_empty() {
            return candidates;
        }
        let start = (key % candidates.len() as u64) as usize;
        let (head, tail) = candidates.split_at(start);
        tail.iter().chain(head).copied().collect()
    }
}

/// A batch of sessions to place (at most 4096), read one [`Session`] at a
/// time. Malformed columns (a host bug) read as "no primary" / "no backups"
/// rather than panicking.
#[derive(Debug, Clone)]
pub struct Sessions {
    cols: SessionColumns,
    nodes: usize,
}

impl Sessions {
    /// Wraps the columns the host passed, for a cluster of `nodes` nodes.
    /// (The SDK builds it; public so that a policy's `place` can be
    /// unit-tested.)
    pub fn new(cols: SessionColumns, nodes: usize) -> Self {
        Self { cols, nodes }
    }

    /// The number of sessions in the batch (possibly 0).
    pub fn len(&self) -> usize {
        self.cols.keys.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.cols.keys.is_empty()
    }

    /// Session `i` of the batch, if `i < len()`.
    pub fn get(&self, i: usize) -> Option<Session<'_>> {
        let key = *self.cols.keys.get(i)?;
        let primary = self
            .cols
            .primaries
            .get(i)
            .and_then(|&p| usize::try_from(p).ok())
            .filter(|&p| p < self.nodes);
        let start = self.cols.backup_start.get(i).map(|&s| s as usize);
        let end = self.cols.backup_start.get(i + 1).map(|&e| e as usize);
        let backups = match (start, end) {
            (Some(s), Some(e)) => self.cols.backups.get(s..e).unwrap_or(&[]),
            _ => &[],
        };
        Some(Session {
            index: i,
            key,
            primary,
            backups,
            size: self.cols.sizes.get(i).copied().unwrap_or(0),
            nodes: self.nodes,
        })
    }

    /// Every session, in order.
    pub fn iter(&self) -> impl Iterator<Item = Session<'_>> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One session of a batch, as the node currently has it.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    /// Its position in the batch.
    pub index: usize,
    /// 64 random bits of its id (uniformly spread): the key to spread
    /// sessions by.
    pub key: u64,
    /// Its current primary (the node serving it), or `None` when that node
    /// is gone and a backup must be promoted.
    pub primary: Option<usize>,
    /// Its current backups that are still members, in the order last
    /// placed, as node indices. Check an entry with [`Placement::can_add`]
    /// (or just [`Placement::add_backup`] it) before relying on it.
    pub backups: &'a [u32],
    /// Its size in bytes (attribute names and values).
    pub size: u32,
    nodes: usize,
}

impl Session<'_> {
    /// The primary to place it with: the current one; when it is gone, the
    /// first current backup (promoted, as Tomcat does); when there is none
    /// either, `fallback` (typically [`Cluster::local`]).
    pub fn primary_or_promote(&self, fallback: usize) -> usize {
        self.primary
            .or_else(|| {
                self.backups
                    .iter()
                    .map(|&b| b as usize)
                    .find(|&b| b < self.nodes)
            })
            .unwrap_or(fallback)
    }
}
