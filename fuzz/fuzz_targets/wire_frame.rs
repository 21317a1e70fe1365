//! Relay frames from arbitrary bytes, as both ends read them: `wire::decode` as a
//! `ClientFrame` (what the relay reads) and as a `RelayFrame` (what a daemon reads). Never
//! a panic; a frame that decodes encodes again and decodes to an equal value.
#![no_main]

use claudemesh_schema::wire::{self, ClientFrame, FrameError, RelayFrame};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(frame) = wire::decode::<T>(data) else {
        return;
    };
    let bytes = match wire::encode(&frame) {
        Ok(b) => b,
        // A frame just under the limit may grow when defaults are written out.
        Err(FrameError::TooLarge { .. }) => return,
        Err(e) => panic!("a decoded frame does not encode: {e}"),
    };
    let again: T = wire::decode(&bytes)
        .unwrap_or_else(|e| panic!("an encoded frame does not decode: {e}: {bytes:?}"));
    assert_eq!(again, frame, "the frame changed in a round trip");
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientFrame>(data);
    round_trip::<RelayFrame>(data);
});
