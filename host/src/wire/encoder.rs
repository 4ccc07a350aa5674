//! Encodes this node's outgoing messages as Tribes frames (the sender's
//! member packet embedded), in one buffer or as head, body and trailer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::{
    MESSAGE_TRAILER, MemberPacket, SendOptions, encode_message_frame, encode_message_head,
    message_frame_len,
};

/// A body too large for a frame the receivers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
pub struct FrameTooLarge {
    /// Body length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// Encodes outgoing messages as frames with this node as the sender.
#[derive(Debug)]
pub struct FrameEncoder {
    address: Bytes,
    max_frame: usize,
    /// Message ids: 8 random bytes chosen at start, then a counter, so ids
    /// are unique without a CSPRNG call per message (2.5 % of a busy
    /// sender's CPU).
    id_prefix: [u8; 8],
    next_id: AtomicU64,
    /// With a cluster key: every frame's data is sealed.
    security: Option<Arc<crate::security::Security>>,
}

impl FrameEncoder {
    /// An encoder for a node whose member packet is `local`.
    pub fn new(local: &MemberPacket, max_frame: usize) -> Self {
        Self {
            address: local.to_bytes(),
            max_frame,
            id_prefix: rand::random(),
            next_id: AtomicU64::new(0),
            security: None,
        }
    }

    /// Seals every frame with the cluster key.
    pub fn with_security(mut self, security: Option<Arc<crate::security::Security>>) -> Self {
        self.security = security;
        self
    }

    /// The sealed frame of a plain one (markers and all), if there is a key.
    fn seal(&self, plain_frame: &[u8]) -> Option<Bytes> {
        let s = self.security.as_ref()?;
        let data = &plain_frame[11..plain_frame.len() - MESSAGE_TRAILER.len()];
        Some(s.seal_frame(data))
    }

    /// A message id no other message of this node (or, but by a 2^-64
    /// chance, of any node) has.
    fn next_id(&self) -> [u8; 16] {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.id_prefix);
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    /// This node's encoded member packet.
    pub fn address(&self) -> &Bytes {
        &self.address
    }

    /// Whether a body of `body_len` bytes fits in a frame.
    pub fn check(&self, body_len: usize) -> Result<(), FrameTooLarge> {
        let len = self.frame_len(body_len);
        if len - super::frame::FRAME_OVERHEAD > self.max_frame {
            return Err(FrameTooLarge {
                len: body_len,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    /// One complete frame for `msg`, with a fresh message id. A body of at
    /// least [`SPLIT_BODY_AT`] bytes is not copied: the frame is its head,
    /// the body's own buffer and the trailer, written with `writev`.
    pub fn encode(
        &self,
        options: SendOptions,
        timestamp: i64,
        body: &Bytes,
    ) -> Result<Frame, FrameTooLarge> {
        self.check(body.len())?;
        let id = self.next_id();
        if body.len() >= SPLIT_BODY_AT && self.security.is_none() {
            let mut head = BytesMut::with_capacity(64 + self.address.len());
            encode_message_head(
                &mut head,
                options,
                timestamp,
                &id,
                &self.address,
                body.len(),
            );
            return Ok(Frame::Split([
                head.freeze(),
                body.clone(),
                Bytes::from_static(&MESSAGE_TRAILER),
            ]));
        }
        let mut buf = BytesMut::with_capacity(self.frame_len(body.len()));
        self.encode_into(&mut buf, options, timestamp, body)?;
        Ok(Frame::Whole(buf.freeze()))
    }

    /// Bytes of the frame of a body of `body_len` bytes.
    pub fn frame_len(&self, body_len: usize) -> usize {
        let sealed = if self.security.is_some() {
            crate::security::SEAL_OVERHEAD
        } else {
            0
        };
        message_frame_len(16, self.address.len(), body_len) + sealed
    }

    /// Appends the whole frame of one message to `buf` (several frames
    /// bound for the same members then go out in one write, with no copy
    /// to join them).
    pub fn encode_into(
        &self,
        buf: &mut BytesMut,
        options: SendOptions,
        timestamp: i64,
        body: &[u8],
    ) -> Result<(), FrameTooLarge> {
        self.check(body.len())?;
        let id = self.next_id();
        if self.security.is_some() {
            let mut plain = BytesMut::with_capacity(self.frame_len(body.len()));
            encode_message_frame(&mut plain, options, timestamp, &id, &self.address, body);
            if let Some(sealed) = self.seal(&plain) {
                buf.extend_from_slice(&sealed);
            }
            return Ok(());
        }
        encode_message_frame(buf, options, timestamp, &id, &self.address, body);
        Ok(())
    }
}

/// Bodies from this size on are written from their own buffer rather than
/// copied into the frame.
pub const SPLIT_BODY_AT: usize = 8 * 1024;

/// An encoded message frame: its bytes in one buffer, or in three pieces
/// (head, body, trailer) to be written in order.
#[derive(Debug, Clone)]
pub enum Frame {
    /// The whole frame.
    Whole(Bytes),
    /// Head, body, trailer.
    Split([Bytes; 3]),
}

impl Frame {
    /// The pieces, in write order.
    pub fn parts(&self) -> &[Bytes] {
        match self {
            Self::Whole(b) => std::slice::from_ref(b),
            Self::Split(p) => p,
        }
    }
}
