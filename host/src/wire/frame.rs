//! `FLT2002 | len | data | TLF2003` framing (tribes.md §2.1) and ACKs (§2.4).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// Frame start marker.
pub const START_DATA: [u8; 7] = *b"FLT2002";
/// Frame end marker.
pub const END_DATA: [u8; 7] = *b"TLF2003";
/// Bytes a frame adds around its data: markers and the length.
pub const FRAME_OVERHEAD: usize = 18;
/// Default bound on a frame's data length. Tribes has none (§9.5); shoal
/// refuses anything larger before buffering it.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Payload of an ACK frame (`Constants.ACK_DATA`).
pub const ACK_PAYLOAD: [u8; 3] = [0x06, 0x02, 0x03];
/// Payload of a FAIL-ACK frame (`Constants.FAIL_ACK_DATA`).
pub const FAIL_ACK_PAYLOAD: [u8; 3] = [0x0b, 0x00, 0x05];
/// The complete 21-byte ACK frame.
pub const ACK_FRAME: [u8; 21] = *b"FLT2002\x00\x00\x00\x03\x06\x02\x03TLF2003";
/// The complete 21-byte FAIL-ACK frame.
pub const FAIL_ACK_FRAME: [u8; 21] = *b"FLT2002\x00\x00\x00\x03\x0b\x00\x05TLF2003";

/// What an acknowledgement frame said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// The message was received (or, with SYNC_ACK, processed without error).
    Ack,
    /// The receiver's processing failed (only with SYNC_ACK).
    FailAck,
}

impl AckKind {
    /// Classifies a frame's data; any other payload is not an acknowledgement
    /// (Tribes' sender ignores it and keeps waiting).
    pub fn from_payload(data: &[u8]) -> Option<Self> {
        match data {
            d if d == ACK_PAYLOAD => Some(Self::Ack),
            d if d == FAIL_ACK_PAYLOAD => Some(Self::FailAck),
            _ => None,
        }
    }

    /// The frame data of this acknowledgement (sealed with a cluster key).
    pub fn payload(self) -> &'static [u8; 3] {
        match self {
            Self::Ack => &ACK_PAYLOAD,
            Self::FailAck => &FAIL_ACK_PAYLOAD,
        }
    }

    /// The full frame to write for this acknowledgement.
    pub fn frame(self) -> &'static [u8; 21] {
        match self {
            Self::Ack => &ACK_FRAME,
            Self::FailAck => &FAIL_ACK_FRAME,
        }
    }
}

/// Appends a frame around `data` to `buf`.
pub fn encode_frame(data: &[u8], buf: &mut BytesMut) {
    buf.reserve(data.len() + FRAME_OVERHEAD);
    buf.put_slice(&START_DATA);
    buf.put_i32(data.len() as i32);
    buf.put_slice(data);
    buf.put_slice(&END_DATA);
}

/// Incremental decoder for a stream of pipelined frames.
///
/// Unlike Tribes (§2.3, §9.5–6) it refuses a declared length above its maximum at
/// once, and it reports garbage (a missing start or end marker) as an error so
/// the connection can be closed instead of stalling.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that accepts frames whose data is at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame: max_frame.min(i32::MAX as usize),
        }
    }

    /// The largest accepted data length.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Looks at the start of `buf` for one frame.
    ///
    /// Returns `Ok(Some(total_len))` when a complete frame of `total_len` bytes
    /// (markers included) is at the start, `Ok(None)` when more bytes are needed,
    /// and an error when the bytes cannot be the start of a valid frame.
    pub fn check(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let head = buf.len().min(START_DATA.len());
        if buf[..head] != START_DATA[..head] {
            return Err(DecodeError::BadStartMarker { what: "frame" });
        }
        if buf.len() < 11 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[7], buf[8], buf[9], buf[10]]);
        let len = super::checked_len("frame", len, self.max_frame)?;
        let total = len + FRAME_OVERHEAD;
        if buf.len() < total {
            return Ok(None);
        }
        if buf[11 + len..total] != END_DATA {
            return Err(DecodeError::BadEndMarker { what: "frame" });
        }
        Ok(Some(total))
    }

    /// Splits one complete frame off the front of `buf` and returns its data
    /// (without markers), or `Ok(None)` if the frame is not complete yet.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        match self.check(buf)? {
            None => Ok(None),
            Some(total) => {
                let mut frame = buf.split_to(total);
                frame.advance(11);
                frame.truncate(total - FRAME_OVERHEAD);
                Ok(Some(frame.freeze()))
            }
        }
    }

    /// How many bytes are still needed to complete the frame at the start of
    /// `buf`, if its header has been read (used to size reads).
    pub fn pending_len(&self, buf: &[u8]) -> Option<usize> {
        if buf.len() < 11 {
            return None;
        }
        let len = i32::from_be_bytes([buf[7], buf[8], buf[9], buf[10]]);
        let len = usize::try_from(len).ok()?.min(self.max_frame);
        (len + FRAME_OVERHEAD).checked_sub(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_ack_frames() {
        // tribes.md §2.4 [jar]
        let ack = hex::decode("464C5432303032 00000003 060203 544C4632303033".replace(' ', ""))
            .expect("hex");
        assert_eq!(ack.as_slice(), ACK_FRAME.as_slice());
        let fail = hex::decode("464C5432303032 00000003 0B0005 544C4632303033".replace(' ', ""))
            .expect("hex");
        assert_eq!(fail.as_slice(), FAIL_ACK_FRAME.as_slice());
        let mut b = BytesMut::new();
        encode_frame(&ACK_PAYLOAD, &mut b);
        assert_eq!(b.as_ref(), ACK_FRAME.as_slice());
        let d = FrameDecoder::default();
        let data = d.decode(&mut b).expect("ok").expect("complete");
        assert_eq!(AckKind::from_payload(&data), Some(AckKind::Ack));
        assert!(b.is_empty());
        assert_eq!(
            AckKind::from_payload(&FAIL_ACK_PAYLOAD),
            Some(AckKind::FailAck)
        );
        assert_eq!(AckKind::from_payload(b"xyz"), None);
    }

    #[test]
    fn pipelined_and_partial() {
        let d = FrameDecoder::default();
        let mut b = BytesMut::new();
        encode_frame(b"one", &mut b);
        encode_frame(b"two!", &mut b);
        let whole = b.clone();
        assert_eq!(d.decode(&mut b).expect("ok").as_deref(), Some(&b"one"[..]));
        assert_eq!(d.decode(&mut b).expect("ok").as_deref(), Some(&b"two!"[..]));
        assert_eq!(d.decode(&mut b).expect("ok"), None);
        for cut in 0..whole.len() {
            if cut == 21 {
                continue;
            }
            let mut part = BytesMut::from(&whole[..cut]);
            let first = d.decode(&mut part).expect("a prefix is never an error");
            assert_eq!(first.is_some(), cut >= 21, "cut {cut}");
        }
    }

    #[test]
    fn garbage_and_oversize() {
        let d = FrameDecoder::new(10);
        assert!(matches!(
            d.check(b"GET / HTTP/1.1"),
            Err(DecodeError::BadStartMarker { .. })
        ));
        assert!(matches!(
            d.check(b"FLX"),
            Err(DecodeError::BadStartMarker { .. })
        ));
        assert!(matches!(
            d.check(b"FLT2002\x00\x00\x00\x0b"),
            Err(DecodeError::LengthOutOfRange { .. })
        ));
        assert!(matches!(
            d.check(b"FLT2002\xff\xff\xff\xff"),
            Err(DecodeError::LengthOutOfRange { .. })
        ));
        assert!(matches!(
            d.check(b"FLT2002\x00\x00\x00\x01xTLF2004"),
            Err(DecodeError::BadEndMarker { .. })
        ));
    }
}
