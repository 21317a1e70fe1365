//! Shared MCP tools: what a hosting daemon publishes about a local MCP server (a
//! [`crate::op::Op::RegisterMcp`] op in the shared log, so every member lists the catalog
//! offline), the boxed call and result that carry arguments and results end to end, and
//! the pure rules both ends apply: server and tool names, the `<server>__<tool>` names a
//! caller's MCP client sees, sizes and deadlines.
//!
//! The relay sees neither arguments nor results: a call is a message payload boxed to the
//! hosting daemon's session key, its result one boxed back to the caller's member.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::MessageId;
use crate::crypto::MemberKey;

/// Payload kind of a tool call, boxed to the hosting daemon's session (the body is a
/// [`CallBody`]); answered with a [`KIND_TOOL_RESULT`] payload. Never stored or shown.
pub const KIND_TOOL_CALL: &str = "tool_call";
/// Payload kind of the answer to a [`KIND_TOOL_CALL`]: a [`ResultBody`].
pub const KIND_TOOL_RESULT: &str = "tool_result";

/// Longest server name, in bytes.
pub const MAX_SERVER_NAME: usize = 32;
/// Longest tool name, in bytes, and longest `<server>__<tool>` name (what MCP clients
/// such as Claude Code accept).
pub const MAX_TOOL_NAME: usize = 64;
/// Most tools one registration lists (more are left out, and said so).
pub const MAX_TOOLS: usize = 128;
/// Most bytes of one tool's description kept.
pub const MAX_DESCRIPTION: usize = 2048;
/// Most bytes of one tool's input schema (as JSON).
pub const MAX_SCHEMA: usize = 16 * 1024;
/// Most bytes of a whole registration's tool list (as JSON): one op, well inside an
/// envelope.
pub const MAX_REGISTRATION: usize = 160 * 1024;
/// Most bytes of a call's arguments (as JSON).
pub const MAX_ARGUMENTS: usize = 96 * 1024;
/// Most bytes of a result carried in one answer (as JSON); a larger one goes as a file
/// shared with the caller alone ([`ResultBody::file`]).
pub const MAX_RESULT: usize = 192 * 1024;
/// Most bytes of a result at all (as JSON); a larger one is refused with
/// [`Refusal::TooLarge`].
pub const MAX_FILE_RESULT: usize = 8 << 20;
/// A call's deadline unless the caller gives one, ms.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;
/// Longest deadline a caller may ask for, ms.
pub const MAX_DEADLINE_MS: u64 = 300_000;
/// Most calls one hosting daemon runs at once (more wait for a slot within their deadline).
pub const MAX_RUNNING: usize = 32;

/// Why a name was refused; the text is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// Check a server name: 1–32 of `a-z`, `0-9` and `-`, starting with a letter or digit.
/// No `_`, so the first `__` of a qualified name always ends the server part.
pub fn check_server(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "server name {name:?} is not allowed: use 1 to {MAX_SERVER_NAME} of a-z, 0-9 and `-`, not starting with `-`"
        )))
    }
}

/// Whether a tool name (as a server lists it) can be offered to MCP clients: 1–64 of
/// ASCII letters, digits, `_` and `-`.
pub fn tool_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The name a caller's MCP client sees for `tool` of `server`: `<server>__<tool>`, or
/// `None` when that is not a valid tool name (too long, or a name no client takes).
pub fn qualified(server: &str, tool: &str) -> Option<String> {
    let q = format!("{server}__{tool}");
    (check_server(server).is_ok() && tool_name_ok(tool) && q.len() <= MAX_TOOL_NAME).then_some(q)
}

/// Split a `<server>__<tool>` name; `None` if it is not one.
pub fn split_qualified(name: &str) -> Option<(&str, &str)> {
    let (server, tool) = name.split_once("__")?;
    (check_server(server).is_ok() && tool_name_ok(tool)).then_some((server, tool))
}

/// One tool as its server lists it (`tools/list`), held to the limits above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's own name.
    pub name: String,
    /// Its description (from the hosting member's server: peer text).
    #[serde(default)]
    pub description: String,
    /// Its input JSON Schema (an object).
    #[serde(default = "empty_schema")]
    pub input_schema: Value,
}

fn empty_schema() -> Value {
    serde_json::json!({ "type": "object" })
}

/// Keep the tools of a `tools/list` answer that can be offered, within the limits: valid
/// names, object schemas of bounded size, descriptions cut to size, at most
/// [`MAX_TOOLS`] and [`MAX_REGISTRATION`] bytes in all. Returns them sorted by name, and
/// how many were left out.
pub fn admit(tools: Vec<ToolSpec>) -> (Vec<ToolSpec>, usize) {
    let total = tools.len();
    let mut kept: Vec<ToolSpec> = Vec::new();
    let mut bytes = 0usize;
    let mut sorted = tools;
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    for mut t in sorted {
        if !tool_name_ok(&t.name) || !t.input_schema.is_object() || kept.len() >= MAX_TOOLS {
            continue;
        }
        let schema_len = t.input_schema.to_string().len();
        if schema_len > MAX_SCHEMA {
            continue;
        }
        if t.description.len() > MAX_DESCRIPTION {
            let mut cut = MAX_DESCRIPTION;
            while !t.description.is_char_boundary(cut) {
                cut -= 1;
            }
            t.description.truncate(cut);
        }
        let size = t.name.len() + t.description.len() + schema_len + 64;
        if bytes + size > MAX_REGISTRATION {
            continue;
        }
        bytes += size;
        kept.push(t);
    }
    let left = total - kept.len();
    (kept, left)
}

/// Who may see and call a registered server (the hosting daemon enforces it on every
/// call, next to its `tools` grant and the server's tool allowlist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// Every member.
    #[default]
    Mesh,
    /// Sessions in a group (as their signed presence says; a discovery scope, since any
    /// session may join a group: the grant is the gate).
    Group {
        /// The group, without `@`.
        group: String,
    },
    /// These members only.
    Members {
        /// Their member keys.
        members: Vec<MemberKey>,
    },
}

impl Scope {
    /// As a user would write it: `mesh`, `@group`, or the members' fingerprints.
    pub fn label(&self) -> String {
        match self {
            Self::Mesh => "mesh".into(),
            Self::Group { group } => format!("@{group}"),
            Self::Members { members } => members
                .iter()
                .map(|m| m.short())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Whether a caller (its member, and the groups of the calling session) is inside.
    pub fn admits(&self, member: &MemberKey, groups: &[String]) -> bool {
        match self {
            Self::Mesh => true,
            Self::Group { group } => groups.iter().any(|g| crate::names::in_group(g, group)),
            Self::Members { members } => members.contains(member),
        }
    }
}

/// Body of a [`KIND_TOOL_CALL`] payload. The call's id is the envelope's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallBody {
    /// The registered server.
    pub server: String,
    /// The tool's own name.
    pub tool: String,
    /// Its arguments (an object).
    #[serde(default)]
    pub arguments: Value,
    /// How long after the payload's `sent_at` the caller waits, ms: a call that arrives
    /// later is not run.
    pub deadline_ms: u64,
    /// The calling session (its groups decide a group scope; the host checks it is a
    /// session of the calling member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<crate::SessionId>,
}

/// Why a hosting daemon did not run a call: a code only, so the caller words the error
/// and a host cannot put text of its choosing into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No server of that name is hosted by this daemon.
    NotHosted,
    /// The caller does not hold the `tools` grant here.
    NoGrant,
    /// The tool is not on the server's allowlist, or the caller is outside its scope.
    NotAllowed,
    /// The server is not running now (starting, restarting after a crash).
    Unavailable,
    /// The server did not answer within the deadline.
    Timeout,
    /// The result is over [`MAX_FILE_RESULT`] (or could not be shared as a file).
    TooLarge,
    /// The call arrived after its deadline (or was seen before: a replay).
    Stale,
    /// The server answered with a protocol error (the tool does not exist, bad arguments).
    Failed,
}

impl Refusal {
    /// The caller's wording.
    pub fn explain(&self) -> &'static str {
        match self {
            Self::NotHosted => "the host does not serve this server any more",
            Self::NoGrant => {
                "the host refused: you do not hold its `tools` grant (ask its owner to run `claudemesh grant <you> tools`)"
            }
            Self::NotAllowed => {
                "the host refused: this tool is not allowed for you (the server's allowlist or scope)"
            }
            Self::Unavailable => {
                "the host's server is not running now (starting or restarting); try again"
            }
            Self::Timeout => "the host's server did not answer in time",
            Self::TooLarge => "the result is too large to send back",
            Self::Stale => "the call reached the host after its deadline; not run",
            Self::Failed => {
                "the host's server refused the call (no such tool, or invalid arguments)"
            }
        }
    }
}

/// Body of a [`KIND_TOOL_RESULT`] payload: `error`, or `result` (the server's
/// `tools/call` result as it gave it: `content`, `isError`, `structuredContent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBody {
    /// The call this answers.
    pub of: MessageId,
    /// The refusal, if refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Refusal>,
    /// The server's protocol error text, with [`Refusal::Failed`] (peer text).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// A result over [`MAX_RESULT`]: its JSON in a file shared with the calling member
    /// alone (ephemeral), for the caller's daemon to fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<crate::ItemId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for (name, ok) in [
            ("files", true),
            ("my-server2", true),
            ("0day", true),
            ("", false),
            ("-x", false),
            ("My", false),
            ("a_b", false),
            ("a.b", false),
            ("a b", false),
            (&"x".repeat(32), true),
            (&"x".repeat(33), false),
        ] {
            assert_eq!(check_server(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn qualified_names_round_trip_and_stay_in_bounds() {
        for (server, tool, q) in [
            ("time", "get_current_time", Some("time__get_current_time")),
            ("a-b", "x__y", Some("a-b__x__y")),
            ("time", "bad name", None),
            ("time", "", None),
            ("Time", "x", None),
            (
                "s",
                &"t".repeat(61),
                Some(&*format!("s__{}", "t".repeat(61))),
            ),
            ("s", &"t".repeat(62), None),
        ] {
            assert_eq!(qualified(server, tool).as_deref(), q, "{server} {tool}");
            if let Some(q) = q {
                assert_eq!(split_qualified(q), Some((server, tool)));
            }
        }
        for name in ["send_message", "__x", "x__", "A__b", "a__b c"] {
            assert_eq!(split_qualified(name), None, "{name}");
        }
    }

    #[test]
    fn admit_keeps_what_can_be_offered() {
        let t = |name: &str, schema: Value| ToolSpec {
            name: name.into(),
            description: "d".repeat(3000),
            input_schema: schema,
        };
        let obj = serde_json::json!({"type": "object"});
        let (kept, left) = admit(vec![
            t("b", obj.clone()),
            t("a", obj.clone()),
            t("a", obj.clone()),
            t("bad name", obj.clone()),
            t("arr", serde_json::json!([1])),
            t("huge", serde_json::json!({"x": "y".repeat(MAX_SCHEMA)})),
        ]);
        let names: Vec<_> = kept.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(left, 4);
        assert!(kept.iter().all(|t| t.description.len() == MAX_DESCRIPTION));
        let many: Vec<_> = (0..200)
            .map(|i| t(&format!("t{i:03}"), obj.clone()))
            .collect();
        let (kept, left) = admit(many);
        assert!(kept.len() <= MAX_TOOLS);
        assert_eq!(kept.len() + left, 200);
        let bytes: usize = kept
            .iter()
            .map(|t| t.name.len() + t.description.len() + t.input_schema.to_string().len() + 64)
            .sum();
        assert!(bytes <= MAX_REGISTRATION);
    }

    #[test]
    fn scopes_admit_by_member_or_group() {
        let a = MemberKey([1; 32]);
        let b = MemberKey([2; 32]);
        let groups = vec!["dev/backend".to_string()];
        assert!(Scope::Mesh.admits(&a, &[]));
        assert!(
            Scope::Group {
                group: "dev".into()
            }
            .admits(&a, &groups)
        );
        assert!(
            !Scope::Group {
                group: "ops".into()
            }
            .admits(&a, &groups)
        );
        let only_b = Scope::Members { members: vec![b] };
        assert!(only_b.admits(&b, &[]));
        assert!(!only_b.admits(&a, &groups));
    }
}
