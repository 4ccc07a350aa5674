//! The chain fingerprint a shoal node advertises in its member packet's
//! payload: for each interceptor, in chain order, its name, its declared
//! version, the first 8 bytes of its component's SHA-256 and whether it
//! changes the bytes on the wire.
//!
//! Layout (shoal's envelope: a magic, a kind tag and a format version, so a
//! peer can tell it from any other payload and refuse a version it does not
//! know):
//!
//! ```text
//! "shoal" | kind = 1 (chain fingerprint) | version = 1 | count: u8
//! count × ( name_len: u8 | name | version_len: u8 | version | sha256[..8] | flags: u8 )
//! flags bit 0: changes the wire
//! ```
//!
//! Format 2 appends the node's labels (zone, jvmRoute, whether it holds
//! sessions): `count: u8 | count × (key_len: u8 | key | value_len: u8 | value)`.
//! Format-1 payloads (no labels) are still read.
//!
//! Tribes carries the payload as opaque bytes (Tomcat nodes ignore it).

use super::DecodeError;

/// Leading bytes of every shoal member payload.
pub const PAYLOAD_MAGIC: &[u8; 5] = b"shoal";
/// Kind tag of a chain fingerprint.
pub const KIND_CHAIN: u8 = 1;
/// The format version this code writes (it also reads format 1).
pub const CHAIN_FORMAT: u8 = 2;
/// Most labels encoded.
pub const MAX_LABELS: usize = 16;
/// Most entries encoded (a longer chain is cut, and says so by its count).
pub const MAX_ENTRIES: usize = 64;
/// Longest name or version encoded, bytes (longer ones are cut).
pub const MAX_TEXT: usize = 64;
/// Bytes of the SHA-256 carried (16 hex digits).
pub const HASH_PREFIX: usize = 8;

/// One interceptor in a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// Interceptor name.
    pub name: String,
    /// The version it declares (may be empty).
    pub version: String,
    /// The first [`HASH_PREFIX`] bytes of its SHA-256.
    pub sha256_prefix: [u8; HASH_PREFIX],
    /// Whether it changes the bytes on the wire.
    pub changes_wire: bool,
}

impl ChainEntry {
    /// The hash prefix in hex (16 digits).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256_prefix)
    }
}

/// Why a payload is not a chain fingerprint this node can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// Not a shoal payload at all (empty, or another application's).
    #[error("not a shoal payload")]
    NotShoal,
    /// A shoal payload of another kind or a newer format.
    #[error("shoal payload of kind {kind}, format {format}: not understood")]
    Unknown {
        /// Kind tag.
        kind: u8,
        /// Format version.
        format: u8,
    },
    /// Cut short or inconsistent.
    #[error("malformed chain fingerprint: {0}")]
    Malformed(#[from] DecodeError),
    /// A name or version is not UTF-8.
    #[error("malformed chain fingerprint: text is not UTF-8")]
    NotUtf8,
}

fn cut(s: &str) -> &[u8] {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// Largest encoded fingerprint, bytes (it must fit in a member payload).
pub const MAX_ENCODED: usize = 4096;

/// Encodes a fingerprint: at most [`MAX_ENTRIES`] entries and
/// [`MAX_ENCODED`] bytes (the entries that do not fit are left out; the
/// count says how many are there); texts cut to [`MAX_TEXT`] bytes.
pub fn encode(entries: &[ChainEntry]) -> Vec<u8> {
    encode_with_labels(entries, &[])
}

/// [`encode`], followed by the node's labels (at most [`MAX_LABELS`],
/// texts cut to [`MAX_TEXT`] bytes; labels that do not fit are left out).
pub fn encode_with_labels(entries: &[ChainEntry], labels: &[(&str, &str)]) -> Vec<u8> {
    let mut out = encode_entries(entries);
    let at = out.len();
    out.push(0);
    let mut count = 0u8;
    for (k, v) in labels.iter().take(MAX_LABELS) {
        let (k, v) = (cut(k), cut(v));
        if out.len() + 2 + k.len() + v.len() > MAX_ENCODED {
            break;
        }
        for text in [k, v] {
            out.push(text.len() as u8);
            out.extend_from_slice(text);
        }
        count += 1;
    }
    out[at] = count;
    out
}

fn encode_entries(entries: &[ChainEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len().min(MAX_ENTRIES) * 48);
    out.extend_from_slice(PAYLOAD_MAGIC);
    out.extend_from_slice(&[KIND_CHAIN, CHAIN_FORMAT, 0]);
    let mut count = 0u8;
    for e in entries.iter().take(MAX_ENTRIES) {
        let (name, version) = (cut(&e.name), cut(&e.version));
        let len = 2 + name.len() + version.len() + HASH_PREFIX + 1;
        if out.len() + len > MAX_ENCODED - 1 {
            break;
        }
        for text in [name, version] {
            out.push(text.len() as u8);
            out.extend_from_slice(text);
        }
        out.extend_from_slice(&e.sha256_prefix);
        out.push(u8::from(e.changes_wire));
        count += 1;
    }
    out[PAYLOAD_MAGIC.len() + 2] = count;
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Incomplete {
                needed: n - self.0.len(),
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn text(&mut self) -> Result<String, FingerprintError> {
        let n = self.byte()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| FingerprintError::NotUtf8)
    }
}

/// Decodes a member payload as a chain fingerprint.
pub fn decode(payload: &[u8]) -> Result<Vec<ChainEntry>, FingerprintError> {
    decode_all(payload).map(|(entries, _)| entries)
}

/// The labels of a member payload (none for a format-1 payload).
pub fn labels(payload: &[u8]) -> Result<Vec<(String, String)>, FingerprintError> {
    decode_all(payload).map(|(_, labels)| labels)
}

/// A chain fingerprint and the labels after it.
pub type Decoded = (Vec<ChainEntry>, Vec<(String, String)>);

/// Decodes a member payload: the chain and the labels.
pub fn decode_all(payload: &[u8]) -> Result<Decoded, FingerprintError> {
    let Some(rest) = payload.strip_prefix(PAYLOAD_MAGIC) else {
        return Err(FingerprintError::NotShoal);
    };
    let mut r = Reader(rest);
    let kind = r.byte()?;
    let format = r.byte()?;
    if kind != KIND_CHAIN || !(1..=CHAIN_FORMAT).contains(&format) {
        return Err(FingerprintError::Unknown { kind, format });
    }
    let count = r.byte()? as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.text()?;
        let version = r.text()?;
        let mut sha256_prefix = [0u8; HASH_PREFIX];
        sha256_prefix.copy_from_slice(r.take(HASH_PREFIX)?);
        let flags = r.byte()?;
        out.push(ChainEntry {
            name,
            version,
            sha256_prefix,
            changes_wire: flags & 1 != 0,
        });
    }
    let mut labels = Vec::new();
    if format >= 2 {
        let n = r.byte()? as usize;
        for _ in 0..n {
            labels.push((r.text()?, r.text()?));
        }
    }
    if !r.0.is_empty() {
        return Err(FingerprintError::Malformed(DecodeError::LengthOutOfRange {
            field: "chain fingerprint",
            len: payload.len() as i64,
            max: payload.len() - r.0.len(),
        }));
    }
    Ok((out, labels))
}

/// The plug-ins that change the wire and differ between two chains: by
/// name, present in one only, or with another hash. Empty when the two can
/// read each other's messages.
pub fn wire_mismatches(local: &[ChainEntry], peer: &[ChainEntry]) -> Vec<String> {
    let mut out = Vec::new();
    for e in local.iter().chain(peer) {
        if !e.changes_wire || out.contains(&e.name) {
            continue;
        }
        let find = |chain: &[ChainEntry]| {
            chain
                .iter()
                .find(|x| x.name == e.name)
                .map(|x| x.sha256_prefix)
        };
        if find(local) != find(peer) {
            out.push(e.name.clone());
        }
    }
    out
}

/// Plug-ins both chains run under one name but in different versions
/// (another SHA-256): name, hash here, hash there (16 hex digits).
pub fn version_mismatches(
    local: &[ChainEntry],
    peer: &[ChainEntry],
) -> Vec<(String, String, String)> {
    local
        .iter()
        .filter_map(|e| {
            let there = peer.iter().find(|x| x.name == e.name)?;
            (there.sha256_prefix != e.sha256_prefix)
                .then(|| (e.name.clone(), e.sha256_hex(), there.sha256_hex()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_mismatches_name_plugins_in_both_chains_with_other_hashes() {
        let here = [
            entry("a", 1, false),
            entry("b", 2, false),
            entry("c", 3, true),
        ];
        let there = [
            entry("a", 1, false),
            entry("b", 9, false),
            entry("d", 4, false),
        ];
        let m = version_mismatches(&here, &there);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "b");
        assert_eq!(m[0].1, hex::encode([2u8; 8]));
        assert_eq!(m[0].2, hex::encode([9u8; 8]));
        assert!(version_mismatches(&here, &here).is_empty());
    }

    fn entry(name: &str, b: u8, wire: bool) -> ChainEntry {
        ChainEntry {
            name: name.into(),
            version: "0.1.0".into(),
            sha256_prefix: [b; 8],
            changes_wire: wire,
        }
    }

    #[test]
    fn round_trip_and_golden_bytes() {
        let chain = vec![entry("a", 1, false), entry("zip", 2, true)];
        let bytes = encode(&chain);
        assert_eq!(&bytes[..8], b"shoal\x01\x02\x02");
        assert_eq!(&bytes[8..16], b"\x01a\x050.1.0");
        assert_eq!(bytes.last(), Some(&0), "no labels");
        assert_eq!(decode(&bytes), Ok(chain.clone()));
        assert_eq!(decode(&encode(&[])), Ok(vec![]));
        // A format-1 payload (an older node's): the same without labels.
        let mut v1 = bytes[..bytes.len() - 1].to_vec();
        v1[6] = 1;
        assert_eq!(decode_all(&v1), Ok((chain.clone(), vec![])));
        let labelled = encode_with_labels(&chain, &[("zone", "eu-1"), ("route", "a")]);
        assert_eq!(
            decode_all(&labelled),
            Ok((
                chain,
                vec![("zone".into(), "eu-1".into()), ("route".into(), "a".into())]
            ))
        );
    }

    #[test]
    fn foreign_unknown_and_broken_payloads_are_refused() {
        assert_eq!(decode(b""), Err(FingerprintError::NotShoal));
        assert_eq!(decode(b"tomcat"), Err(FingerprintError::NotShoal));
        assert_eq!(
            decode(b"shoal\x02\x01"),
            Err(FingerprintError::Unknown { kind: 2, format: 1 })
        );
        assert_eq!(
            decode(b"shoal\x01\x09\x00"),
            Err(FingerprintError::Unknown { kind: 1, format: 9 })
        );
        let good = encode_with_labels(&[entry("a", 1, true)], &[("k", "v")]);
        for n in 5..good.len() {
            assert!(decode(&good[..n]).is_err(), "cut at {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(FingerprintError::Malformed(_))));
    }

    #[test]
    fn a_long_chain_is_cut_to_fit_a_payload() {
        let e = |i: usize| ChainEntry {
            name: format!("{i}-{}", "n".repeat(60)),
            version: "v".repeat(64),
            sha256_prefix: [1; 8],
            changes_wire: false,
        };
        let chain: Vec<ChainEntry> = (0..64).map(e).collect();
        let bytes = encode(&chain);
        assert!(bytes.len() <= MAX_ENCODED, "{}", bytes.len());
        let d = decode(&bytes).expect("decodes");
        assert!(d.len() < 64 && !d.is_empty());
        assert_eq!(d[..], chain[..d.len()]);
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let mut e = entry(&"é".repeat(40), 1, false);
        e.version = "v".repeat(100);
        let d = decode(&encode(&[e])).expect("decodes");
        assert_eq!(d[0].name, "é".repeat(32));
        assert_eq!(d[0].version.len(), MAX_TEXT);
    }

    #[test]
    fn only_wire_changing_plugins_count_as_mismatches() {
        let a = vec![entry("t", 1, false), entry("zip", 2, true)];
        let same_wire = vec![entry("t", 9, false), entry("zip", 2, true)];
        assert!(wire_mismatches(&a, &same_wire).is_empty());
        let other_zip = vec![entry("t", 1, false), entry("zip", 3, true)];
        assert_eq!(wire_mismatches(&a, &other_zip), ["zip"]);
        let no_zip = vec![entry("t", 1, false)];
        assert_eq!(wire_mismatches(&a, &no_zip), ["zip"]);
        assert_eq!(wire_mismatches(&no_zip, &a), ["zip"]);
    }
}
