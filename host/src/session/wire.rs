//! Session replication messages: shoal's own binary encoding inside a
//! ChannelData body (never Java serialization).
//!
//! ```text
//! "shoal" | kind: u8 (16..=23) | format: u8 (1) | postcard payload
//! ```
//!
//! The payload is [postcard](https://docs.rs/postcard) (varints, length-
//! prefixed strings and lists). Decoding reads a complete body that the
//! receiver has already bounded by its frame limit; lists are grown as
//! elements arrive, so a lying length costs nothing. An unknown kind or
//! format, or a payload that does not decode, is a [`WireError`]: the
//! engine logs it and counts it, and the sender of a SYNC_ACK message gets
//! a FAIL-ACK.

use serde::{Deserialize, Serialize};

/// Leading bytes of every shoal message body (as of the member payload).
pub const MAGIC: &[u8; 5] = crate::wire::fingerprint::PAYLOAD_MAGIC;
/// The format version written and read.
pub const FORMAT: u8 = 1;
/// First and last kind tags of session messages.
pub const KINDS: std::ops::RangeInclusive<u8> = 16..=23;

/// A session key: the 128 random bits of its id.
pub type Key = u128;
/// A member's unique id.
pub type Uid = [u8; 16];

/// The order of writes: a Lamport version, then the writing node. Two
/// writes of one attribute on two nodes at once are ordered the same way
/// everywhere, so every copy ends with the same value.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Stamp {
    /// The session version the write made.
    pub v: u64,
    /// The writing node's tie-breaker (8 bytes of its unique id).
    pub node: u64,
}

/// One attribute as replicated: set (`value` is JSON text) or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrOp {
    /// Attribute name.
    pub name: String,
    /// When it was written.
    pub stamp: Stamp,
    /// Its JSON text, or none for a removal.
    pub value: Option<String>,
}

/// Where a session lives: its primary and the members holding backups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Loc {
    /// Grows with every change of location; with the primary's id it
    /// orders two announcements.
    pub epoch: u64,
    /// The primary.
    pub primary: Uid,
    /// The backups, in placement order.
    pub backups: Vec<Uid>,
}

impl Loc {
    /// Whether `self` is a later announcement than `other`.
    pub fn newer_than(&self, other: &Loc) -> bool {
        (self.epoch, self.primary) > (other.epoch, other.primary)
    }

    /// Whether `uid` holds a full copy (primary or backup).
    pub fn holds(&self, uid: &Uid) -> bool {
        &self.primary == uid || self.backups.contains(uid)
    }
}

/// A full copy of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Key.
    pub key: Key,
    /// Current jvmRoute of its id.
    pub route: String,
    /// When the route was last set.
    pub route_stamp: Stamp,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Last access, ms since the Unix epoch.
    pub last_access_ms: i64,
    /// Idle time before expiry, s.
    pub max_inactive_s: u32,
    /// Version.
    pub version: u64,
    /// Every attribute, and removals not yet forgotten.
    pub attrs: Vec<AttrOp>,
    /// Where it lives.
    pub loc: Loc,
}

/// One change of a session (or, with no ops, an access).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Key.
    pub key: Key,
    /// The version the change made.
    pub version: u64,
    /// Last access, ms since the Unix epoch.
    pub last_access_ms: i64,
    /// A new route (after a failover), with its stamp.
    pub route: Option<(String, Stamp)>,
    /// Attributes set or removed.
    pub ops: Vec<AttrOp>,
}

/// Where a session lives, for members without a copy (proxy entries), and
/// for holders when the location changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    /// Key.
    pub key: Key,
    /// Current jvmRoute.
    pub route: String,
    /// Last access, ms since the Unix epoch.
    pub last_access_ms: i64,
    /// Idle time before expiry, s.
    pub max_inactive_s: u32,
    /// Where it lives.
    pub loc: Loc,
}

/// A session message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Full copies (16).
    Copies(Vec<Copy>),
    /// Changes (17).
    Deltas(Vec<Delta>),
    /// Locations (18).
    Locations(Vec<Located>),
    /// Invalidations (19).
    Invalidate(Vec<Key>),
    /// A joining node asks for its share (20).
    StateRequest {
        /// Request id.
        req: u64,
    },
    /// The share has been sent (21).
    StateDone {
        /// Request id.
        req: u64,
        /// Sessions sent (copies and locations).
        sent: u64,
    },
    /// A node without a copy asks for one (22).
    Fetch {
        /// Request id.
        req: u64,
        /// The session.
        key: Key,
    },
    /// The answer (23): a copy, or none when the session is not held here.
    FetchReply {
        /// Request id.
        req: u64,
        /// The copy.
        copy: Option<Copy>,
    },
}

/// Why a body is not a session message this node can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a shoal session message at all (an application's message).
    #[error("not a session message")]
    NotSession,
    /// A session message of a kind or format this node does not know.
    #[error("session message of kind {kind}, format {format}: not understood")]
    Unknown {
        /// Kind tag.
        kind: u8,
        /// Format version.
        format: u8,
    },
    /// The payload does not decode.
    #[error("malformed session message of kind {kind}: {reason}")]
    Malformed {
        /// Kind tag.
        kind: u8,
        /// The decoder's message.
        reason: String,
    },
}

impl Msg {
    /// Its kind tag.
    pub fn kind(&self) -> u8 {
        match self {
            Msg::Copies(_) => 16,
            Msg::Deltas(_) => 17,
            Msg::Locations(_) => 18,
            Msg::Invalidate(_) => 19,
            Msg::StateRequest { .. } => 20,
            Msg::StateDone { .. } => 21,
            Msg::Fetch { .. } => 22,
            Msg::FetchReply { .. } => 23,
        }
    }

    /// Encodes the message with its envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(self.kind());
        out.push(FORMAT);
        let r = match self {
            Msg::Copies(v) => postcard::to_extend(v, out),
            Msg::Deltas(v) => postcard::to_extend(v, out),
            Msg::Locations(v) => postcard::to_extend(v, out),
            Msg::Invalidate(v) => postcard::to_extend(v, out),
            Msg::StateRequest { req } => postcard::to_extend(req, out),
            Msg::StateDone { req, sent } => postcard::to_extend(&(req, sent), out),
            Msg::Fetch { req, key } => postcard::to_extend(&(req, key), out),
            Msg::FetchReply { req, copy } => postcard::to_extend(&(req, copy), out),
        };
        // Serializing into a Vec cannot fail for these types.
        r.unwrap_or_default()
    }

    /// Whether `body` claims to be a session message (the envelope and a
    /// session kind), whatever its format.
    pub fn is_session(body: &[u8]) -> bool {
        body.len() >= MAGIC.len() + 2
            && body.starts_with(MAGIC)
            && KINDS.contains(&body[MAGIC.len()])
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Msg, WireError> {
        if !Self::is_session(body) {
            return Err(WireError::NotSession);
        }
        let kind = body[MAGIC.len()];
        let format = body[MAGIC.len() + 1];
        if format != FORMAT {
            return Err(WireError::Unknown { kind, format });
        }
        let p = &body[MAGIC.len() + 2..];
        let bad = |e: postcard::Error| WireError::Malformed {
            kind,
            reason: e.to_string(),
        };
        fn all<'a, T: Deserialize<'a>>(p: &'a [u8]) -> Result<T, postcard::Error> {
            let (v, rest) = postcard::take_from_bytes(p)?;
            if rest.is_empty() {
                Ok(v)
            } else {
                Err(postcard::Error::DeserializeUnexpectedEnd)
            }
        }
        Ok(match kind {
            16 => Msg::Copies(all(p).map_err(bad)?),
            17 => Msg::Deltas(all(p).map_err(bad)?),
            18 => Msg::Locations(all(p).map_err(bad)?),
            19 => Msg::Invalidate(all(p).map_err(bad)?),
            20 => Msg::StateRequest {
                req: all(p).map_err(bad)?,
            },
            21 => {
                let (req, sent) = all(p).map_err(bad)?;
                Msg::StateDone { req, sent }
            }
            22 => {
                let (req, key) = all(p).map_err(bad)?;
                Msg::Fetch { req, key }
            }
            23 => {
                let (req, copy) = all(p).map_err(bad)?;
                Msg::FetchReply { req, copy }
            }
            kind => return Err(WireError::Unknown { kind, format }),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn copy() -> Copy {
        Copy {
            key: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            route: "a".into(),
            route_stamp: Stamp { v: 1, node: 7 },
            created_ms: 1_700_000_000_000,
            last_access_ms: 1_700_000_000_500,
            max_inactive_s: 1800,
            version: 3,
            attrs: vec![
                AttrOp {
                    name: "cart".into(),
                    stamp: Stamp { v: 2, node: 7 },
                    value: Some("[1,2]".into()),
                },
                AttrOp {
                    name: "gone".into(),
                    stamp: Stamp { v: 3, node: 9 },
                    value: None,
                },
            ],
            loc: Loc {
                epoch: 2,
                primary: [1; 16],
                backups: vec![[2; 16]],
            },
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let msgs = [
            Msg::Copies(vec![copy(), copy()]),
            Msg::Deltas(vec![Delta {
                key: 5,
                version: 9,
                last_access_ms: 12,
                route: Some(("b".into(), Stamp { v: 9, node: 1 })),
                ops: copy().attrs,
            }]),
            Msg::Locations(vec![Located {
                key: 5,
                route: "c".into(),
                last_access_ms: 3,
                max_inactive_s: 60,
                loc: copy().loc,
            }]),
            Msg::Invalidate(vec![1, 2, u128::MAX]),
            Msg::StateRequest { req: 77 },
            Msg::StateDone {
                req: 77,
                sent: 100_000,
            },
            Msg::Fetch { req: 1, key: 2 },
            Msg::FetchReply {
                req: 1,
                copy: Some(copy()),
            },
            Msg::FetchReply { req: 1, copy: None },
        ];
        for m in msgs {
            let b = m.encode();
            assert!(Msg::is_session(&b));
            assert_eq!(Msg::decode(&b), Ok(m));
        }
    }

    #[test]
    fn unknown_kind_or_format_and_foreign_bodies_are_errors() {
        let mut b = Msg::StateRequest { req: 1 }.encode();
        b[6] = 2;
        assert_eq!(
            Msg::decode(&b),
            Err(WireError::Unknown {
                kind: 20,
                format: 2
            })
        );
        assert_eq!(Msg::decode(b"hello"), Err(WireError::NotSession));
        assert_eq!(Msg::decode(b"shoal\x01\x01"), Err(WireError::NotSession));
        let mut trailing = Msg::StateRequest { req: 1 }.encode();
        trailing.push(0);
        assert!(matches!(
            Msg::decode(&trailing),
            Err(WireError::Malformed { kind: 20, .. })
        ));
    }

    #[test]
    fn a_lying_list_length_is_an_error_without_a_huge_allocation() {
        // kind 16 with a list length of 2^60 and nothing behind it.
        let mut b = b"shoal\x10\x01".to_vec();
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            Msg::decode(&b),
            Err(WireError::Malformed { kind: 16, .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(kind in 16u8..=23, tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = b"shoal".to_vec();
            b.push(kind);
            b.push(FORMAT);
            b.extend_from_slice(&tail);
            let _ = Msg::decode(&b);
        }
    }
}
