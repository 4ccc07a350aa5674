//! Encodes this node's outgoing messages as Tribes frames (the sender's
//! member packet embedded), in one buffer or as head, body and trailer.

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
}

impl FrameEncoder {
    /// An encoder for a node whose member packet is `local`.
    pub fn new(local: &MemberPacket, max_frame: usize) -> Self {
        Self {
            address: local.to_bytes(),
            max_frame,
        }
    }

    /// This node's encoded member packet.
    pub fn address(&self) -> &Bytes {
        &self.address
    }

    /// Whether a body of `body_len` bytes fits in a frame.
    pub fn check(&self, body_len: usize) -> Result<(), FrameTooLarge> {
        let len = message_frame_len(16, self.address.len(), body_len);
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
        let id: [u8; 16] = rand::random();
        if body.len() >= SPLIT_BODY_AT {
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
        let len = message_frame_len(16, self.address.len(), body.len());
        let mut buf = BytesMut::with_capacity(len);
        encode_message_frame(&mut buf, options, timestamp, &id, &self.address, body);
        Ok(Frame::Whole(buf.freeze()))
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
