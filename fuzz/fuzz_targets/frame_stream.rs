//! The streaming frame decoder (`FLT2002 | len | data | TLF2003`).
//!
//! Input: one byte choosing the decoder's maximum frame length, one byte
//! seeding the chunk sizes, then the stream. The stream is fed whole, one
//! byte at a time, and in pseudo-random chunks of 1 to 64 bytes, decoding
//! every complete frame after each chunk, as the receiver does.
//!
//! Checks: never panics; the three chunkings give the same frames and the
//! same final error (or the same bytes left over); the frames re-encoded
//! are exactly the bytes consumed; no frame is over the maximum; while a
//! frame is incomplete with its header read, `pending_len` says how many
//! bytes it still needs, and that is right.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shoal::wire::frame::{FRAME_OVERHEAD, encode_frame};
use shoal::wire::{AckKind, DEFAULT_MAX_FRAME_BYTES, FrameDecoder};

#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Bytes>,
    /// The error that ended the stream, if any.
    error: Option<shoal::wire::DecodeError>,
    /// Bytes left in the buffer at the end (when there was no error).
    left: usize,
}

fn run(d: &FrameDecoder, stream: &[u8], mut chunk: impl FnMut() -> usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() <= d.max_frame(), "frame over the maximum");
                    let _ = AckKind::from_payload(&f);
                    frames.push(f);
                }
                Ok(None) => {
                    if buf.len() >= 11 {
                        let len = u32::from_be_bytes([buf[7], buf[8], buf[9], buf[10]]) as usize;
                        let need = d.pending_len(&buf);
                        assert_eq!(need, Some(len + FRAME_OVERHEAD - buf.len()));
                        assert!(need.is_some_and(|n| n > 0));
                    }
                    break;
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error),
                        left: 0,
                    };
                }
            }
        }
        if rest.is_empty() {
            break;
        }
        let n = chunk().clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    Outcome {
        frames,
        error: None,
        left: buf.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [max, seed, stream @ ..] = data else {
        return;
    };
    let d = match *max {
        255 => FrameDecoder::new(usize::MAX),
        m if m % 2 == 0 => FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
        m => FrameDecoder::new(usize::from(m) * 2),
    };
    let whole = run(&d, stream, || stream.len());
    let bytewise = run(&d, stream, || 1);
    let mut x = u32::from(*seed) | 0x100;
    let chunked = run(&d, stream, || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x % 64) as usize + 1
    });
    assert_eq!(whole, bytewise, "byte-by-byte feeding differs");
    assert_eq!(whole, chunked, "chunked feeding differs");
    let mut again = BytesMut::new();
    for f in &whole.frames {
        encode_frame(f, &mut again);
    }
    assert_eq!(
        &stream[..again.len()],
        again.as_ref(),
        "frames differ from the bytes"
    );
    if whole.error.is_none() {
        assert_eq!(again.len() + whole.left, stream.len());
    }
});
