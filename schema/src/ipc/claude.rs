//! Claude Code glue over the local socket: the `hook` call every Claude Code hook makes.

use serde::{Deserialize, Serialize};

use crate::ids::SessionId;

/// `hook`: a Claude Code hook fired. The daemon opens (or finds) the session, records
/// what the hook saw, and answers with what to put into the model's context.
pub const HOOK: &str = "hook";

/// Which hook fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookEvent {
    /// A session started, resumed or was cleared.
    SessionStart,
    /// A prompt is about to be submitted (typed, or a channel message starting a turn).
    UserPromptSubmit,
    /// A tool call finished (mid-turn).
    PostToolUse,
    /// The turn is about to end.
    Stop,
    /// The session ends (Claude Code exits, or `/clear` starts a new conversation).
    SessionEnd,
}

impl HookEvent {
    /// From the argument of `claudemesh hook <event>`.
    pub fn from_arg(s: &str) -> Option<Self> {
        Some(match s {
            "session-start" => Self::SessionStart,
            "user-prompt-submit" => Self::UserPromptSubmit,
            "post-tool-use" => Self::PostToolUse,
            "stop" => Self::Stop,
            "session-end" => Self::SessionEnd,
            _ => return None,
        })
    }

    /// Claude Code's name of the event (`hookEventName`).
    pub fn claude_name(self) -> &'static str {
        match self {
            Self::SessionStart => "SessionStart",
            Self::UserPromptSubmit => "UserPromptSubmit",
            Self::PostToolUse => "PostToolUse",
            Self::Stop => "Stop",
            Self::SessionEnd => "SessionEnd",
        }
    }
}

/// `hook` parameters: what the hook's input and environment say.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookParams {
    /// The event.
    pub event: HookEvent,
    /// Claude Code's session id (`session_id`).
    #[serde(default)]
    pub claude_session: Option<String>,
    /// The session's transcript (`transcript_path`).
    #[serde(default)]
    pub transcript: Option<String>,
    /// Working directory (`cwd`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// The prompt being submitted (`UserPromptSubmit`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Why the session ends (`SessionEnd`: `clear`, `logout`, `prompt_input_exit`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// The Claude Code process, `<pid>-<start time>`.
    #[serde(default)]
    pub process: Option<String>,
    /// `CLAUDEMESH_DISPLAY_NAME`: the session's label.
    #[serde(default)]
    pub name: Option<String>,
    /// `CLAUDEMESH_MESH`.
    #[serde(default)]
    pub mesh: Option<String>,
    /// `CLAUDEMESH_ROLE`.
    #[serde(default)]
    pub role: Option<String>,
    /// `CLAUDEMESH_GROUPS`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `CLAUDEMESH_MESSAGE_MODE` (`claudemesh launch --message-mode`): `inbox` shows no
    /// message, only how many wait for `check_messages`; `off` shows nothing; absent or
    /// `push` shows them.
    #[serde(default)]
    pub message_mode: Option<String>,
}

/// `hook` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HookResult {
    /// The session the hook speaks for (none when no mesh is joined).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// Text for the model's context (`additionalContext`).
    #[serde(default)]
    pub context: Option<String>,
    /// For `Stop`: keep the turn going with this text (`decision: block`).
    #[serde(default)]
    pub block: Option<String>,
}
