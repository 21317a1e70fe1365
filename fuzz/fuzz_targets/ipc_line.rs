//! Local IPC lines from arbitrary bytes, parsed the way each side of the daemon socket does
//! it: split as `LinesCodec` splits (at `\n`, one trailing `\r` dropped, a line that is not
//! UTF-8 ends the connection); the daemon reads a `Request` and then its `params` into the
//! method's parameter type (`null` read as `{}`); a client reads an `Incoming` (a response
//! or a notification). Never a panic; what parses encodes and parses back to the same JSON.
#![no_main]

use claudemesh_fuzz::same_json;
use claudemesh_schema::ipc::{self, Incoming, Notification, Request, Response};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `t` survives encode → decode as the same JSON.
fn stable<T: Serialize + DeserializeOwned>(t: &T, what: &str) {
    let line = serde_json::to_string(t).unwrap_or_else(|e| panic!("{what} does not encode: {e}"));
    let again: T =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what} does not parse back: {e}"));
    let (a, b) = (
        serde_json::to_value(t).expect("encodes"),
        serde_json::to_value(&again).expect("encodes"),
    );
    assert!(
        same_json(&a, &b),
        "{what} changed in a round trip: {a} → {b}"
    );
}

fn params<T: Serialize + DeserializeOwned>(p: &Value, what: &str) {
    let p = if p.is_null() {
        Value::Object(Default::default())
    } else {
        p.clone()
    };
    if let Ok(t) = serde_json::from_value::<T>(p) {
        stable(&t, what);
    }
}

macro_rules! all_params {
    ($p:expr, $($t:path),* $(,)?) => {
        $(params::<$t>($p, stringify!($t));)*
    };
}

fn request(line: &str) {
    let Ok(req) = serde_json::from_str::<Request>(line) else {
        return;
    };
    stable(&req, "Request");
    use ipc::claude as c;
    use ipc::methods as m;
    use ipc::shared as s;
    use ipc::trust as t;
    all_params!(
        &req.params,
        m::MarkReadParams,
        m::SessionUpdateParams,
        m::SubscribeParams,
        m::MessageStatusParams,
        m::SessionOpenParams,
        m::SessionCloseParams,
        m::WaitParams,
        m::HelloParams,
        m::CreateParams,
        m::InviteParams,
        m::InviteRevokeParams,
        m::ClaimDecideParams,
        m::JoinParams,
        m::PeersParams,
        m::MeshParams,
        m::SendParams,
        m::InboxParams,
        m::ProfileParams,
        c::HookParams,
        s::StateSetParams,
        s::StateQuery,
        s::RememberParams,
        s::RecallParams,
        s::ItemParams,
        s::TaskCreateParams,
        s::TaskListParams,
        s::LinkPauseParams,
        s::ReserveParams,
        s::ReservationQuery,
        s::ShareContextParams,
        s::ContextQuery,
        s::ShareSkillParams,
        s::SkillQuery,
        s::ScheduleParams,
        s::ScheduledQuery,
        s::ClockParams,
        s::WatchParams,
        t::VerifyParams,
        t::GrantParams,
    );
}

fn incoming(line: &str) {
    if let Ok(i) = serde_json::from_str::<Incoming>(line) {
        stable(&i, "Incoming");
    }
    if let Ok(r) = serde_json::from_str::<Response>(line) {
        stable(&r, "Response");
    }
    if let Ok(n) = serde_json::from_str::<Notification>(line) {
        stable(&n, "Notification");
    }
}

fuzz_target!(|data: &[u8]| {
    for raw in data.split(|b| *b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        request(line);
        incoming(line);
    }
});
