//! How bytes are written in JSON: unpadded base64url, everywhere.
//!
//! One encoding for keys, signatures, nonces and ciphertexts keeps the protocol easy to
//! implement from other languages (`PROTOCOL.md` §2).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serializer};

/// Encode bytes as unpadded base64url.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode unpadded base64url (padding is tolerated).
pub fn unb64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
}

/// Decode exactly `N` bytes of base64url.
pub fn unb64_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let v = unb64(s).ok()?;
    v.try_into().ok()
}

/// serde adapter for `Vec<u8>` fields: `#[serde(with = "crate::encoding::bytes")]`.
pub mod bytes {
    use super::*;

    /// Serialize as base64url.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64(v))
    }

    /// Deserialize from base64url.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        unb64(&s).map_err(serde::de::Error::custom)
    }
}

/// serde adapter for `Option<Vec<u8>>` fields (with `default` and
/// `skip_serializing_if = "Option::is_none"`).
pub mod opt_bytes {
    use super::*;

    /// Serialize as base64url (only called for `Some`).
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&b64(b)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from base64url.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| unb64(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// serde adapter for fixed-size `[u8; N]` fields.
pub mod array {
    use super::*;

    /// Serialize as base64url.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64(v))
    }

    /// Deserialize from base64url, requiring exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        unb64_array::<N>(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("expected {N} bytes of base64url")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding_tolerance() {
        let data = [0u8, 1, 2, 250, 251, 252, 253];
        let s = b64(&data);
        assert!(!s.contains('='));
        assert_eq!(unb64(&s).unwrap(), data);
        assert_eq!(unb64("AAE=").unwrap(), vec![0, 1]);
        assert!(unb64_array::<3>(&b64(&[1, 2])).is_none());
    }
}
