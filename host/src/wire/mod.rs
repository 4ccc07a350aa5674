//! Codecs for Apache Tribes' wire format: bytes in, typed values out, no I/O.
//!
//! * [`MemberPacket`] — the membership heartbeat (`MemberImpl.getData`, tribes.md §1.1),
//!   also carried as the sender address of every channel message.
//! * [`frame`] — the `FLT2002 … TLF2003` framing of TCP messages (§2.1) and the
//!   ACK / FAIL-ACK frames (§2.4).
//! * [`ChannelData`] — the message inside a frame (§2.2).
//! * [`SendOptions`] — Tribes' send-option bits (§3).
//! * [`fingerprint`] — shoal's chain fingerprint in the member payload.
//!
//! Every decoder takes a complete buffer (or, for frames, a stream prefix), checks
//! every length it reads against the bytes present and against a configured
//! maximum, and returns a typed [`DecodeError`]; none of them panics on any input.

mod channel_data;
mod encoder;
pub mod fingerprint;
pub mod frame;
mod member;
mod options;
#[cfg(test)]
mod proptests;

pub use channel_data::{
    ChannelData, MESSAGE_TRAILER, SenderCache, encode_message_frame, encode_message_head,
    message_frame_len,
};
pub use encoder::{Frame, FrameEncoder, FrameTooLarge, SPLIT_BODY_AT};
pub use frame::{AckKind, DEFAULT_MAX_FRAME_BYTES, FrameDecoder};
pub use member::{MemberPacket, SHUTDOWN_COMMAND, TRIBES_MBR_BEGIN, TRIBES_MBR_END};
pub use options::{ParseOptionsError, SendOptions};

/// Why a buffer could not be decoded. Cheap to build and compare: decoders on the
/// hot path return it by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends before the structure does. For a stream this only means
    /// "read more"; for a datagram or an embedded field it is a truncation.
    #[error("incomplete: {needed} more bytes needed")]
    Incomplete {
        /// Minimum number of further bytes needed before decoding can progress.
        needed: usize,
    },
    /// The leading magic (`TRIBES-B\x01\x00` or `FLT2002`) is not at the start.
    #[error("bad start marker for {what}")]
    BadStartMarker {
        /// The structure being decoded.
        what: &'static str,
    },
    /// The trailing magic (`TRIBES-E\x01\x00` or `TLF2003`) is not where the length says.
    #[error("bad end marker for {what}")]
    BadEndMarker {
        /// The structure being decoded.
        what: &'static str,
    },
    /// A length field is negative or larger than allowed.
    #[error("length of {field} is {len}, allowed 0..={max}")]
    LengthOutOfRange {
        /// The field whose length was read.
        field: &'static str,
        /// The value read from the wire.
        len: i64,
        /// The maximum accepted.
        max: usize,
    },
    /// A field's declared length runs past the end of its enclosing structure.
    #[error("{field} declares {declared} bytes but only {available} remain")]
    Truncated {
        /// The field whose length was read.
        field: &'static str,
        /// Bytes the field claims.
        declared: usize,
        /// Bytes left in the enclosing structure.
        available: usize,
    },
    /// Bytes are left over after the last field of a structure whose length is known.
    #[error("{extra} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// The structure being decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// A bounds-checked big-endian reader over a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                field,
                declared: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let s = self.take(field, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// Reads an i32 length prefix, checks it against `max` and the bytes left,
    /// and returns the range of the field's bytes within the buffer.
    pub(crate) fn len_prefixed(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<std::ops::Range<usize>, DecodeError> {
        let len = self.i32(field)?;
        let len = checked_len(field, len, max)?;
        let start = self.pos;
        self.take(field, len)?;
        Ok(start..start + len)
    }
}

/// Converts a length read from the wire into a `usize`, refusing negative values
/// and values above `max`.
pub(crate) fn checked_len(field: &'static str, len: i32, max: usize) -> Result<usize, DecodeError> {
    match usize::try_from(len) {
        Ok(l) if l <= max => Ok(l),
        _ => Err(DecodeError::LengthOutOfRange {
            field,
            len: i64::from(len),
            max,
        }),
    }
}
