//! The channel message inside a frame (`ChannelData.getDataPackage`, tribes.md §2.2).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{END_DATA, FRAME_OVERHEAD, START_DATA};
use super::member::MAX_PACKET_LEN;
use super::{DecodeError, MemberPacket, Reader, SendOptions};

/// A unique id longer than this is refused (Tribes always sends 16 bytes).
const MAX_UNIQUE_ID: usize = 64;
/// Fixed bytes of a ChannelData besides id, address and message.
const FIXED_LEN: usize = 24;

/// One decoded channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelData {
    /// Send-option bits plus interceptor flags.
    pub options: SendOptions,
    /// Sender's wall clock (ms since the Unix epoch) when the message was sent.
    pub timestamp: i64,
    /// Message id (16 random bytes); fragments and replays keep it.
    pub unique_id: Bytes,
    /// The sender's member packet, as the sender described itself.
    pub sender: MemberPacket,
    /// The message body; raw bytes when `BYTE_MESSAGE` is set.
    pub message: Bytes,
}

/// The last sender address decoded, and its packet (decoded from a copy of
/// the address, so the cache never holds on to a receive buffer).
#[derive(Debug, Default)]
pub struct SenderCache {
    last: Option<(Bytes, MemberPacket)>,
}

impl SenderCache {
    fn get(&mut self, address: &[u8]) -> Result<MemberPacket, DecodeError> {
        if let Some((bytes, packet)) = &self.last
            && bytes.as_ref() == address
        {
            return Ok(packet.clone());
        }
        let own = Bytes::copy_from_slice(address);
        let packet = MemberPacket::decode_bytes(&own)?;
        self.last = Some((own, packet.clone()));
        Ok(packet)
    }
}

impl ChannelData {
    /// Decodes the data of one frame. `message` shares `data`'s storage.
    pub fn decode(data: &Bytes) -> Result<Self, DecodeError> {
        Self::decode_cached(data, &mut SenderCache::default())
    }

    /// As [`ChannelData::decode`], but the sender's member packet is
    /// decoded only when its bytes differ from those of the message decoded
    /// before with the same cache (a connection carries one sender's
    /// messages: decoding its address each time was 6 % of a busy
    /// receiver's CPU).
    pub fn decode_cached(data: &Bytes, cache: &mut SenderCache) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let options = SendOptions(r.i32("options")?);
        let timestamp = r.i64("timestamp")?;
        let unique_id = data.slice(r.len_prefixed("unique id", MAX_UNIQUE_ID)?);
        let address = r.len_prefixed("address", MAX_PACKET_LEN)?;
        let message = data.slice(r.len_prefixed("message", usize::MAX)?);
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                what: "channel data",
                extra: r.remaining(),
            });
        }
        let sender = cache.get(&data[address])?;
        Ok(Self {
            options,
            timestamp,
            unique_id,
            sender,
            message,
        })
    }

    /// Encodes this message as a complete frame.
    pub fn to_frame(&self) -> Bytes {
        let address = self.sender.to_bytes();
        let mut buf = BytesMut::new();
        encode_message_frame(
            &mut buf,
            self.options,
            self.timestamp,
            &self.unique_id,
            &address,
            &self.message,
        );
        buf.freeze()
    }
}

/// Length of the frame [`encode_message_frame`] writes.
pub fn message_frame_len(unique_id_len: usize, address_len: usize, message_len: usize) -> usize {
    FRAME_OVERHEAD + FIXED_LEN + unique_id_len + address_len + message_len
}

/// Appends a complete frame holding one ChannelData to `buf`. `address` is the
/// sender's encoded member packet (encoded once and reused by the sender).
pub fn encode_message_frame(
    buf: &mut BytesMut,
    options: SendOptions,
    timestamp: i64,
    unique_id: &[u8],
    address: &[u8],
    message: &[u8],
) {
    buf.reserve(message_frame_len(
        unique_id.len(),
        address.len(),
        message.len(),
    ));
    encode_message_head(buf, options, timestamp, unique_id, address, message.len());
    buf.put_slice(message);
    buf.put_slice(&END_DATA);
}

/// The bytes of a message frame that come before its body: the frame
/// header and the ChannelData fields up to the body length. A frame is this,
/// then the `message_len` body bytes, then [`MESSAGE_TRAILER`] — so a large
/// body can be written from its own buffer (`writev`) instead of copied.
pub fn encode_message_head(
    buf: &mut BytesMut,
    options: SendOptions,
    timestamp: i64,
    unique_id: &[u8],
    address: &[u8],
    message_len: usize,
) {
    let total = message_frame_len(unique_id.len(), address.len(), message_len);
    buf.put_slice(&START_DATA);
    buf.put_i32((total - FRAME_OVERHEAD) as i32);
    buf.put_i32(options.0);
    buf.put_i64(timestamp);
    buf.put_i32(unique_id.len() as i32);
    buf.put_slice(unique_id);
    buf.put_i32(address.len() as i32);
    buf.put_slice(address);
    buf.put_i32(message_len as i32);
}

/// What follows a message frame's body.
pub const MESSAGE_TRAILER: [u8; 7] = END_DATA;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameDecoder;

    /// Head + body + trailer is byte for byte the frame written in one piece.
    #[test]
    fn head_body_trailer_is_the_whole_frame() {
        let body = vec![0x5a; 70_000];
        let (id, addr) = ([9u8; 16], b"member-packet".to_vec());
        let o = SendOptions(7);
        let mut whole = BytesMut::new();
        encode_message_frame(&mut whole, o, 42, &id, &addr, &body);
        let mut parts = BytesMut::new();
        encode_message_head(&mut parts, o, 42, &id, &addr, body.len());
        parts.extend_from_slice(&body);
        parts.extend_from_slice(&MESSAGE_TRAILER);
        assert_eq!(whole, parts);
        assert_eq!(whole.len(), message_frame_len(16, addr.len(), body.len()));
    }

    /// Channel message 1 of captures/message-tcp: options 7, 32-byte payload, 167 bytes.
    const CAPTURED: &str = "464c54323030320000009500000007000001a201710cf5000000100a66a05c0b8640018d3a1874a5fc644c0000004d54\
        52494245532d420100000000350000000000000de300001004ffffffffffffffff047f00000100000000000000001c6d\
        1963610e45a1874703f82b0a3c03000000005452494245532d450100000000204142434445464748494a4b4c4d4e4f50\
        5152535455565758595a414243444546544c4632303033";
    /// TcpFailureDetector probe frame from the same capture: options 1, 64-byte TCP_FAIL_DETECT.
    const CAPTURED_PROBE: &str = "464c5432303032000000b500000001000001a20171061300000010ce2ba7913a224c95a98200b79d0c202d0000004d54\
        52494245532d42010000000035000000000000080500001004ffffffffffffffff047f00000100000000000000001c6d\
        1963610e45a1874703f82b0a3c03000000005452494245532d450100000000404fa77348798243c99f6f8980a15b0714\
        7dd9525bebf1439ab77ebe8f81671eb63715be87457e4ca8bf0a4d135338153255f694b73afa407891047dd77284c0d5\
        544c4632303033";

    /// A cache of the last sender never answers for another sender, nor
    /// for a malformed address.
    #[test]
    fn the_sender_cache_follows_the_sender() {
        let raw = hex::decode(CAPTURED).expect("hex");
        let mut buf = BytesMut::from(raw.as_slice());
        let data = FrameDecoder::default()
            .decode(&mut buf)
            .expect("valid")
            .expect("complete");
        let a = ChannelData::decode(&data).expect("decodes");
        let mut b = a.clone();
        b.sender.port = 4200;
        b.sender.unique_id = [3; 16];
        let frame_of = |cd: &ChannelData| {
            let mut f = BytesMut::from(cd.to_frame().as_ref());
            FrameDecoder::default()
                .decode(&mut f)
                .expect("valid")
                .expect("complete")
        };
        let mut cache = SenderCache::default();
        for want in [&a, &a, &b, &a, &b, &b] {
            let got = ChannelData::decode_cached(&frame_of(want), &mut cache).expect("decodes");
            assert_eq!(&got, want);
        }
        // a broken address after a good one is still an error
        let mut bad = frame_of(&a).to_vec();
        let at = bad
            .windows(4)
            .position(|w| w == b"TRIB")
            .expect("member packet");
        bad[at] = b'X';
        assert!(ChannelData::decode_cached(&Bytes::from(bad), &mut cache).is_err());
    }

    #[test]
    fn captured_tomcat_message_roundtrip() {
        let raw = hex::decode(CAPTURED).expect("hex");
        assert_eq!(raw.len(), 167);
        let mut buf = BytesMut::from(raw.as_slice());
        let data = FrameDecoder::default()
            .decode(&mut buf)
            .expect("valid")
            .expect("complete");
        let cd = ChannelData::decode(&data).expect("decodes");
        assert_eq!(cd.options, SendOptions(7));
        assert_eq!(cd.message.as_ref(), b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF");
        assert_eq!(cd.sender.port, 4100);
        assert_eq!(cd.unique_id.len(), 16);
        assert_eq!(cd.to_frame().as_ref(), raw.as_slice());
    }

    #[test]
    fn captured_tomcat_failure_detector_probe() {
        let raw = hex::decode(CAPTURED_PROBE).expect("hex");
        assert_eq!(raw.len(), 199);
        let data = Bytes::copy_from_slice(&raw[11..raw.len() - 7]);
        let cd = ChannelData::decode(&data).expect("decodes");
        assert_eq!(cd.options, SendOptions::BYTE_MESSAGE);
        assert_eq!(cd.message.len(), 64);
        assert_eq!(&cd.message[..4], &[0x4f, 0xa7, 0x73, 0x48]);
    }

    #[test]
    fn trailing_bytes_in_channel_data() {
        let raw = hex::decode(CAPTURED).expect("hex");
        let data = Bytes::copy_from_slice(&raw[11..raw.len() - 7]);
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(matches!(
            ChannelData::decode(&Bytes::from(longer)),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(ChannelData::decode(&data.slice(..data.len() - 1)).is_err());
    }
}
