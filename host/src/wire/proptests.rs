//! Property tests: random, truncated, oversized or inconsistent input never
//! panics and yields a typed error; valid values round-trip.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::frame::{FRAME_OVERHEAD, encode_frame};
use super::*;

fn member_packet() -> impl Strategy<Value = MemberPacket> {
    (
        any::<i64>(),
        any::<i32>(),
        any::<i32>(),
        any::<i32>(),
        prop::collection::vec(any::<u8>(), 0..=16),
        prop::collection::vec(any::<u8>(), 0..12),
        prop::collection::vec(any::<u8>(), 0..40),
        any::<[u8; 16]>(),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(alive_ms, port, secure_port, udp_port, host, command, domain, unique_id, payload)| {
                MemberPacket {
                    alive_ms,
                    port,
                    secure_port,
                    udp_port,
                    host: host.into(),
                    command: command.into(),
                    domain: domain.into(),
                    unique_id,
                    payload: payload.into(),
                }
            },
        )
}

fn channel_data() -> impl Strategy<Value = ChannelData> {
    (
        any::<i32>(),
        any::<i64>(),
        prop::collection::vec(any::<u8>(), 0..=64),
        member_packet(),
        prop::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(o, timestamp, id, sender, msg)| ChannelData {
            options: SendOptions(o),
            timestamp,
            unique_id: id.into(),
            sender,
            message: msg.into(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn member_roundtrip(m in member_packet()) {
        let b = m.to_bytes();
        prop_assert_eq!(b.len(), m.encoded_len());
        prop_assert_eq!(MemberPacket::decode(&b), Ok(m));
    }

    #[test]
    fn member_random_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = MemberPacket::decode(&raw);
        let mut with_magic = TRIBES_MBR_BEGIN.to_vec();
        with_magic.extend_from_slice(&raw);
        let _ = MemberPacket::decode(&with_magic);
    }

    #[test]
    fn member_truncated_is_an_error(m in member_packet(), cut in any::<prop::sample::Index>()) {
        let b = m.to_bytes();
        let cut = cut.index(b.len());
        prop_assert!(MemberPacket::decode(&b[..cut]).is_err());
    }

    #[test]
    fn member_mutated_never_panics_and_is_consistent(
        m in member_packet(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut b = m.to_bytes().to_vec();
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        if let Ok(back) = MemberPacket::decode(&b) {
            // Whatever decodes must describe exactly the bytes it came from.
            let again = back.to_bytes();
            prop_assert_eq!(again.as_ref(), b.as_slice());
        }
    }

    #[test]
    fn channel_data_roundtrip(cd in channel_data()) {
        let frame = cd.to_frame();
        let mut buf = BytesMut::from(frame.as_ref());
        let data = FrameDecoder::default().decode(&mut buf).expect("valid").expect("complete");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(ChannelData::decode(&data), Ok(cd));
    }

    #[test]
    fn channel_data_random_or_truncated_never_panics(
        cd in channel_data(),
        raw in prop::collection::vec(any::<u8>(), 0..400),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = ChannelData::decode(&Bytes::from(raw));
        let frame = cd.to_frame();
        let data = frame.slice(11..frame.len() - 7);
        let cut = cut.index(data.len());
        prop_assert!(ChannelData::decode(&data.slice(..cut)).is_err());
    }

    #[test]
    fn frame_decoder_random_bytes(raw in prop::collection::vec(any::<u8>(), 0..200), max in 0usize..100) {
        let d = FrameDecoder::new(max);
        if let Ok(Some(n)) = d.check(&raw) {
            prop_assert!(n <= raw.len() && n >= FRAME_OVERHEAD);
        }
        let mut prefixed = b"FLT2002".to_vec();
        prefixed.extend_from_slice(&raw);
        let _ = d.check(&prefixed);
        let _ = d.pending_len(&prefixed);
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header(len in 1025i32..=i32::MAX) {
        let mut hdr = b"FLT2002".to_vec();
        hdr.extend_from_slice(&len.to_be_bytes());
        let d = FrameDecoder::new(1024);
        let refused = matches!(d.check(&hdr), Err(DecodeError::LengthOutOfRange { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn pipelined_frames_split_anywhere(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        chunk in 1usize..64,
    ) {
        let mut stream = BytesMut::new();
        for b in &bodies {
            encode_frame(b, &mut stream);
        }
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = d.decode(&mut buf).expect("valid stream") {
                out.push(f.to_vec());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, bodies);
    }
}
