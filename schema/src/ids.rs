//! Identifiers. All are UUIDs on the wire (hyphenated strings in JSON, 16 bytes in
//! signatures and SQLite).
//!
//! Message ids are UUIDv7 (time-ordered, so stores index them in arrival order); the others
//! are random UUIDv4, so that their first 8 hex digits are a usable short prefix.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($name:ident, $doc:literal, $new:expr) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self($new)
            }

            /// The id's 16 bytes, as signed and stored.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// From 16 stored bytes.
            pub fn from_bytes(b: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(b))
            }

            /// From a stored byte slice; `None` unless it is exactly 16 bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                Uuid::from_slice(b).ok().map(Self)
            }

            /// 8 hex digits for display: the first 8, or for time-ordered (v7) ids the
            /// last 8, which are random.
            pub fn short(&self) -> String {
                let s = self.0.simple().to_string();
                if self.0.get_version_num() == 7 {
                    s[24..].to_string()
                } else {
                    s[..8].to_string()
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    MeshId,
    "A mesh: one group of members sharing a mesh key.",
    Uuid::new_v4()
);
uuid_id!(
    SessionId,
    "A session: one peer (a Claude Code session, or a daemon's own CLI session).",
    Uuid::new_v4()
);
uuid_id!(
    MessageId,
    "One message, unique across hops; every hop dedupes by it.",
    Uuid::now_v7()
);
uuid_id!(InviteId, "One invite capability.", Uuid::new_v4());
uuid_id!(
    OpId,
    "One op of a mesh's shared-state log; the relay dedupes appends by it.",
    Uuid::now_v7()
);
uuid_id!(
    ItemId,
    "One shared item: a memory, task, file reservation, context or reminder.",
    Uuid::new_v4()
);
uuid_id!(
    ClaimId,
    "One claim of an invite, pending an admin's answer.",
    Uuid::new_v4()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let id = MeshId::new();
        let back: MeshId = id.to_string().parse().unwrap();
        assert_eq!(id, back);
        assert_eq!(id.short().len(), 8);
        assert!(id.to_string().starts_with(&id.short()));
        let m = MessageId::new();
        assert!(m.to_string().ends_with(&m.short()));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
    }

    #[test]
    fn message_ids_are_time_ordered() {
        let a = MessageId::new();
        let b = MessageId::new();
        assert!(a < b || a.0.get_version_num() == 7);
        assert_eq!(a.0.get_version_num(), 7);
    }
}
