//! The ChannelData decoder (the message inside a frame), with and without
//! the sender cache.
//!
//! Checks: never panics; `decode`, `decode_cached` with a fresh cache, with
//! the same cache again (the cached path) and with a cache holding another
//! sender (a captured Tomcat message) all give the same result; a message
//! that decodes re-encodes to a frame of the announced length whose data is
//! exactly the input; its body goes through the session message decoder
//! (where shoal reads it).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shoal::session::wire::Msg;
use shoal::wire::{ChannelData, FrameDecoder, SenderCache, message_frame_len};

/// Channel message 1 of the Tomcat capture (frame data, markers stripped).
const TOMCAT: &[u8] = include_bytes!("../corpus-seed/channel_data/tomcat-message-1");

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let plain = ChannelData::decode(&data);
    let mut cache = SenderCache::default();
    assert_eq!(ChannelData::decode_cached(&data, &mut cache), plain);
    assert_eq!(ChannelData::decode_cached(&data, &mut cache), plain);
    let mut other = SenderCache::default();
    assert!(ChannelData::decode_cached(&Bytes::from_static(TOMCAT), &mut other).is_ok());
    assert_eq!(ChannelData::decode_cached(&data, &mut other), plain);
    // and the cache still answers for the first sender
    assert!(ChannelData::decode_cached(&Bytes::from_static(TOMCAT), &mut cache).is_ok());
    let Ok(cd) = plain else { return };
    let frame = cd.to_frame();
    assert_eq!(
        frame.len(),
        message_frame_len(
            cd.unique_id.len(),
            cd.sender.encoded_len(),
            cd.message.len()
        )
    );
    let mut buf = BytesMut::from(frame.as_ref());
    let inner = FrameDecoder::new(usize::MAX)
        .decode(&mut buf)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    assert!(buf.is_empty());
    assert_eq!(inner, data, "re-encoding differs");
    let _ = Msg::decode(&cd.message);
});
