//! Deploy messages, in the envelope of session messages:
//!
//! ```text
//! "shoal" | kind: u8 (24..=26) | format: u8 (1) | postcard payload
//! ```

use serde::{Deserialize, Serialize};

use crate::session::wire::MAGIC;

/// The format version written and read.
pub const FORMAT: u8 = 1;
/// Kind tags of deploy messages.
pub const KINDS: std::ops::RangeInclusive<u8> = 24..=26;

/// A deploy message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// The signed manifest, before any byte of the component (24).
    Offer {
        /// The deploy's id (chosen by the node that relays it).
        deploy: u64,
        /// The manifest's JSON text, exactly as signed.
        manifest: String,
        /// The signature, hex.
        signature: String,
    },
    /// Bytes of the component, in order (25).
    Chunk {
        /// The deploy.
        deploy: u64,
        /// Where the bytes start.
        offset: u64,
        /// The bytes (at most [`CHUNK_BYTES`](super::CHUNK_BYTES)).
        bytes: Vec<u8>,
    },
    /// A member's result, to the relaying node (26).
    Report(Report),
}

/// What one member did with a deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The deploy.
    pub deploy: u64,
    /// The member's node name.
    pub node: String,
    /// Whether it now runs the component.
    pub ok: bool,
    /// What happened ("replaced", "unchanged", or why not).
    pub message: String,
    /// SHA-256 it ran before (hex), if known.
    pub old_sha256: Option<String>,
    /// SHA-256 it runs now (hex), if changed.
    pub new_sha256: Option<String>,
    /// Time from the offer to the swap, ms.
    pub ms: f64,
}

impl Msg {
    /// Its kind tag.
    pub fn kind(&self) -> u8 {
        match self {
            Msg::Offer { .. } => 24,
            Msg::Chunk { .. } => 25,
            Msg::Report(_) => 26,
        }
    }

    /// Encodes the message with its envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(self.kind());
        out.push(FORMAT);
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Whether `body` claims to be a deploy message.
    pub fn is_deploy(body: &[u8]) -> bool {
        body.len() >= MAGIC.len() + 2
            && body.starts_with(MAGIC)
            && KINDS.contains(&body[MAGIC.len()])
    }

    /// Decodes a body (the kind byte must agree with the payload).
    pub fn decode(body: &[u8]) -> Result<Msg, String> {
        if !Self::is_deploy(body) {
            return Err("not a deploy message".into());
        }
        let kind = body[MAGIC.len()];
        let format = body[MAGIC.len() + 1];
        if format != FORMAT {
            return Err(format!(
                "deploy message of kind {kind}, format {format}: not understood"
            ));
        }
        let (msg, rest): (Msg, _) = postcard::take_from_bytes(&body[MAGIC.len() + 2..])
            .map_err(|e| format!("malformed deploy message of kind {kind}: {e}"))?;
        if !rest.is_empty() || msg.kind() != kind {
            return Err(format!("malformed deploy message of kind {kind}"));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let msgs = [
            Msg::Offer {
                deploy: 1,
                manifest: "{}".into(),
                signature: "00".into(),
            },
            Msg::Chunk {
                deploy: 2,
                offset: 5,
                bytes: vec![0, 1, 255],
            },
            Msg::Report(Report {
                deploy: 3,
                node: "a".into(),
                ok: true,
                message: "replaced".into(),
                old_sha256: None,
                new_sha256: Some("ab".into()),
                ms: 1.5,
            }),
        ];
        for m in msgs {
            let body = m.encode();
            assert!(Msg::is_deploy(&body));
            assert_eq!(Msg::decode(&body), Ok(m.clone()));
            for cut in 0..body.len() {
                assert!(Msg::decode(&body[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut wrong_kind = Msg::Chunk {
            deploy: 1,
            offset: 0,
            bytes: vec![],
        }
        .encode();
        wrong_kind[MAGIC.len()] = 24;
        assert!(Msg::decode(&wrong_kind).is_err());
        let mut future = wrong_kind.clone();
        future[MAGIC.len()] = 25;
        future[MAGIC.len() + 1] = 9;
        assert!(Msg::decode(&future).is_err());
    }
}
