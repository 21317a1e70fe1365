//! The QUIC framing (`claudemesh_relay::transport::codec`: 4-byte big-endian length, at
//! most `MAX_FRAME`), fed as a stream arrives: in chunks whose sizes come from the input.
//!
//! Input: byte 0 gives `k = byte % 8` chunk sizes, the next `k` bytes are the sizes
//! (each `byte + 1`, used in turn), the rest is the stream (all at once when `k` is 0).
//! Never a panic; every frame is at most `MAX_FRAME`; the frames with their prefixes are
//! exactly the start of the stream; the decoder yields every complete frame, and fails
//! only on a length over `MAX_FRAME`.
#![no_main]

use bytes::BytesMut;
use claudemesh_schema::wire::MAX_FRAME;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn announced(stream: &[u8], at: usize) -> Option<usize> {
    let h = stream.get(at..at + 4)?;
    Some(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = (k as usize % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    let mut codec = claudemesh_relay::transport::codec();
    let mut buf = BytesMut::new();
    // Bytes of the stream accounted for by decoded frames (prefix + body).
    let mut consumed = 0usize;
    let mut fed = 0usize;
    let mut turn = 0usize;
    let mut failed = false;
    let check = |frame: &[u8], consumed: &mut usize| {
        assert!(frame.len() <= MAX_FRAME, "a frame of {} bytes", frame.len());
        assert_eq!(
            announced(stream, *consumed),
            Some(frame.len()),
            "the frame's length is not the prefix at {consumed}"
        );
        let body = &stream[*consumed + 4..*consumed + 4 + frame.len()];
        assert_eq!(frame, body, "the frame is not the bytes after its prefix");
        *consumed += 4 + frame.len();
    };
    'feed: while fed < stream.len() {
        let n = if sizes.is_empty() {
            stream.len()
        } else {
            sizes[turn % sizes.len()] as usize + 1
        };
        turn += 1;
        let end = (fed + n).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame, &mut consumed),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    if failed {
        // Only an announced length over the limit is an error.
        let len = announced(stream, consumed).expect("an error without a whole prefix");
        assert!(len > MAX_FRAME, "refused a frame of {len} bytes");
        return;
    }
    // Everything fed: no complete frame is left undecoded.
    if let Some(len) = announced(stream, consumed) {
        assert!(
            consumed + 4 + len > stream.len(),
            "a complete frame of {len} bytes at {consumed} was not decoded"
        );
    }
    // End of stream: what remains is a truncated frame (an error) or nothing.
    match codec.decode_eof(&mut buf) {
        Ok(Some(frame)) => panic!("a frame of {} bytes appeared at end of stream", frame.len()),
        // tokio-util ends cleanly when only a whole prefix is left (it has taken the prefix
        // out of the buffer and sees no bytes remaining): a peer that closes there loses
        // nothing it sent whole.
        Ok(None) => assert!(
            consumed == stream.len() || stream.len() - consumed == 4,
            "{} bytes left over without an error",
            stream.len() - consumed
        ),
        Err(_) => assert!(
            consumed < stream.len(),
            "an end-of-stream error with nothing left"
        ),
    }
});
