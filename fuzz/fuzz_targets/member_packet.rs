//! The member packet decoder (heartbeats, and the sender of every message).
//!
//! Checks: never panics; `decode` and `decode_bytes` agree; a packet that
//! decodes re-encodes to exactly the input (the decoder is strict: one
//! encoding per packet) and is valid for encoding; its payload goes through
//! the chain-fingerprint decoder too (where shoal reads it).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shoal::wire::{MemberPacket, fingerprint};

fuzz_target!(|data: &[u8]| {
    let copied = MemberPacket::decode(data);
    let shared = MemberPacket::decode_bytes(&Bytes::copy_from_slice(data));
    assert_eq!(copied, shared);
    let Ok(m) = copied else { return };
    assert_eq!(m.encoded_len(), data.len());
    assert!(m.validate_for_encoding().is_ok());
    assert_eq!(m.to_bytes().as_ref(), data, "re-encoding differs");
    let _ = (m.ip(), m.is_shutdown());
    let _ = fingerprint::decode_all(&m.payload);
});
