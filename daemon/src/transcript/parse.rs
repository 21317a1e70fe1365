//! Reading a Claude Code transcript (`~/.claude/projects/<slug>/<session id>.jsonl`, one
//! JSON object per line, appended as the session goes): what it proves about our
//! messages, and what it says about the session's status. Pure: lines in, events out.
//!
//! What the lines prove (Claude Code 2.1, recorded in `fixtures/`):
//! - `queue-operation` / `enqueue` whose `content` is our `<channel … message_id=…>` tag:
//!   Claude Code took the push into its queue. It is not in the model's context yet.
//! - a `user` entry with that tag (a channel message starting a turn), an `attachment` of
//!   type `queued_command` with it (a push injected mid-turn), or any entry carrying a hook
//!   block header ([`render::hook_block_ids`]): the text is in the conversation.
//! - the next `assistant` entry (not a sidechain's): a model answered a request that held
//!   everything before it. Only this confirms a message as surfaced.

use claudemesh_schema::MessageId;
use claudemesh_schema::message::{DeliveryPath, PeerStatus};
use claudemesh_schema::render;
use serde_json::Value;

/// The path that put a message into the conversation.
pub(crate) type Via = DeliveryPath;

/// What a run of transcript lines established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Claude Code queued these pushed messages.
    Accepted(Vec<MessageId>),
    /// These messages entered the conversation (a request with them is on its way).
    InConversation(Vec<MessageId>, Via),
    /// These messages were in a context a model answered.
    Confirmed(Vec<MessageId>, Via),
    /// The session is working (a prompt, a tool call) or idle (its turn ended).
    Status(PeerStatus),
}

/// Follows one transcript: messages seen in the conversation wait for the next answer.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pending: Vec<(MessageId, Via)>,
    /// Entries an answer came after, by uuid: the `parentUuid` chain of each answer seen.
    /// Claude Code writes entries asynchronously, and on a loaded machine a turn's answer
    /// can land in the file before the prompt and hook context it answered; an entry
    /// arriving later whose uuid is here was answered already.
    answered: std::collections::VecDeque<String>,
}

/// Answered entries remembered (a few turns' worth).
const ANSWERED: usize = 256;

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

impl Tracker {
    /// Take one line; returns what it established (usually nothing).
    pub(crate) fn feed(&mut self, line: &str) -> Vec<Event> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // Answered already (see `answered`): then so is its parent.
        let uuid = v["uuid"].as_str().unwrap_or("");
        let answered = !uuid.is_empty() && self.answered.iter().any(|u| u == uuid);
        if answered && let Some(parent) = v["parentUuid"].as_str() {
            self.remember_answered(parent);
        }
        match v["type"].as_str() {
            Some("queue-operation") => {
                if v["operation"] == "enqueue"
                    && let Some(id) = v["content"].as_str().and_then(render::channel_tag_id)
                {
                    out.push(Event::Accepted(vec![id]));
                }
            }
            Some("assistant") => {
                if v["isSidechain"] == true {
                    return out;
                }
                if let Some(parent) = v["parentUuid"].as_str() {
                    self.remember_answered(parent);
                }
                let mut ch = Vec::new();
                let mut hk = Vec::new();
                for (id, via) in self.pending.drain(..) {
                    match via {
                        DeliveryPath::Channel => ch.push(id),
                        // Only channel pushes and hook context are looked for here.
                        DeliveryPath::Hooks | DeliveryPath::Pull => hk.push(id),
                    }
                }
                if !ch.is_empty() {
                    out.push(Event::Confirmed(ch, DeliveryPath::Channel));
                }
                if !hk.is_empty() {
                    out.push(Event::Confirmed(hk, DeliveryPath::Hooks));
                }
                let msg = &v["message"];
                let tool = msg["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use"));
                if tool {
                    out.push(Event::Status(PeerStatus::Working));
                } else if msg["stop_reason"] == "end_turn" {
                    out.push(Event::Status(PeerStatus::Idle));
                }
            }
            Some("system") if v["subtype"] == "turn_duration" => {
                out.push(Event::Status(PeerStatus::Idle));
            }
            Some("user") | Some("attachment") => {
                if v["isSidechain"] == true {
                    return out;
                }
                // Only the entries Claude Code writes for our paths count, never what a
                // tool returned or a message said: a channel message starting a turn, one
                // injected mid-turn, a hook's context, a Stop hook's reason.
                let channel = v["origin"]["kind"] == "channel"
                    || v["attachment"]["origin"]["kind"] == "channel";
                let mut ch_texts = Vec::new();
                let mut hook_texts = Vec::new();
                match (v["type"].as_str(), v["attachment"]["type"].as_str()) {
                    (Some("user"), _) if channel => {
                        strings(&v["message"]["content"], &mut ch_texts)
                    }
                    (Some("user"), _) if v["isMeta"] == true => {
                        let mut texts = Vec::new();
                        strings(&v["message"]["content"], &mut texts);
                        hook_texts.extend(
                            texts
                                .into_iter()
                                .filter_map(|t| t.strip_prefix("Stop hook feedback:\n")),
                        );
                    }
                    (_, Some("queued_command")) if channel => {
                        strings(&v["attachment"]["prompt"], &mut ch_texts)
                    }
                    (_, Some("hook_additional_context")) => {
                        strings(&v["attachment"]["content"], &mut hook_texts)
                    }
                    _ => {}
                }
                let mut ch = Vec::new();
                let mut hk = Vec::new();
                for t in ch_texts {
                    if let Some(id) = render::channel_tag_id(t)
                        && self.push(id, DeliveryPath::Channel)
                    {
                        ch.push(id);
                    }
                }
                for t in hook_texts {
                    if !t.starts_with("Messages from your claudemesh peers ") {
                        continue;
                    }
                    for id in render::hook_block_ids(t) {
                        if self.push(id, DeliveryPath::Hooks) {
                            hk.push(id);
                        }
                    }
                }
                let found = !ch.is_empty() || !hk.is_empty();
                if !ch.is_empty() {
                    out.push(Event::InConversation(ch.clone(), DeliveryPath::Channel));
                }
                if !hk.is_empty() {
                    out.push(Event::InConversation(hk.clone(), DeliveryPath::Hooks));
                }
                // Written after the answer to the request that held it: confirmed now.
                if answered && found {
                    self.pending
                        .retain(|(id, _)| !ch.contains(id) && !hk.contains(id));
                    if !ch.is_empty() {
                        out.push(Event::Confirmed(ch, DeliveryPath::Channel));
                    }
                    if !hk.is_empty() {
                        out.push(Event::Confirmed(hk, DeliveryPath::Hooks));
                    }
                }
                let tool_result = v["message"]["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
                if v["type"] == "user" && (found || tool_result || v["isMeta"] != true) {
                    out.push(Event::Status(PeerStatus::Working));
                }
            }
            _ => {}
        }
        out
    }

    fn remember_answered(&mut self, uuid: &str) {
        if uuid.is_empty() || self.answered.iter().any(|u| u == uuid) {
            return;
        }
        if self.answered.len() == ANSWERED {
            self.answered.pop_front();
        }
        self.answered.push_back(uuid.to_string());
    }

    /// Wait for an answer to confirm `id`; false if it already waits.
    fn push(&mut self, id: MessageId, via: Via) -> bool {
        if self.pending.iter().any(|(x, _)| *x == id) {
            return false;
        }
        self.pending.push((id, via));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> MessageId {
        MessageId(uuid::Uuid::from_u128(n))
    }

    fn run(text: &str) -> Vec<Event> {
        let mut t = Tracker::default();
        text.lines().flat_map(|l| t.feed(l)).collect()
    }

    fn proofs(events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| !matches!(e, Event::Status(_) | Event::InConversation(..)))
            .cloned()
            .collect()
    }

    /// A real interactive session (Claude Code 2.1.197): a push while idle, one during a
    /// tool call, one while the model streamed its answer, and two during another tool
    /// call. Each is accepted when it arrives and confirmed only by the answer after it
    /// entered the conversation.
    #[test]
    fn channel_pushes_are_accepted_on_arrival_and_confirmed_by_the_next_answer() {
        let ev = run(include_str!("fixtures/interactive-channel.jsonl"));
        assert_eq!(
            proofs(&ev),
            vec![
                Event::Accepted(vec![id(1)]),
                Event::Confirmed(vec![id(1)], DeliveryPath::Channel),
                Event::Accepted(vec![id(2)]),
                Event::Confirmed(vec![id(2)], DeliveryPath::Channel),
                // Arrived while the answer streamed: queued until the turn ended, then a
                // turn of its own.
                Event::Accepted(vec![id(3)]),
                Event::Confirmed(vec![id(3)], DeliveryPath::Channel),
                Event::Accepted(vec![id(4)]),
                Event::Accepted(vec![id(5)]),
                Event::Confirmed(vec![id(4), id(5)], DeliveryPath::Channel),
            ]
        );
        // Each confirmation follows the message's entry into the conversation.
        let entered: Vec<&Event> = ev
            .iter()
            .filter(|e| matches!(e, Event::InConversation(..)))
            .collect();
        assert_eq!(entered.len(), 5, "one per message: {entered:?}");
        // Status: working on prompts and tool calls, idle when a turn ends.
        let st: Vec<PeerStatus> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Status(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(st.first(), Some(&PeerStatus::Working));
        assert_eq!(st.last(), Some(&PeerStatus::Idle));
        assert!(st.contains(&PeerStatus::Idle));
    }

    /// A print-mode session with hooks: no channel, no turn markers; tool use is working,
    /// the final answer idle.
    #[test]
    fn print_mode_turns_show_working_then_idle() {
        let ev = run(include_str!("fixtures/print-tooluse.jsonl"));
        assert!(proofs(&ev).is_empty(), "{ev:?}");
        assert!(ev.contains(&Event::Status(PeerStatus::Working)));
        assert_eq!(ev.last(), Some(&Event::Status(PeerStatus::Idle)));
    }

    /// A tool result (a file the model read) or a channel message's body that looks like
    /// our markers proves nothing.
    #[test]
    fn lookalike_markers_outside_our_entries_prove_nothing() {
        let other = id(9);
        let header = format!(
            "Messages from your claudemesh peers {} {other}]",
            render::MARKER
        );
        let tag = format!("<channel source=\"claudemesh\" message_id=\"{other}\">\nx\n</channel>");
        let tool = serde_json::json!({"type": "user", "isSidechain": false,
            "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                "content": format!("{header}\n{tag}")}]}});
        let real = id(10);
        let channel = serde_json::json!({"type": "user", "isSidechain": false, "isMeta": true,
            "origin": {"kind": "channel", "server": "claudemesh"},
            "message": {"role": "user", "content": format!(
                "<channel source=\"claudemesh\" message_id=\"{real}\">\nalice: hi\n{header}\n</channel>")}});
        let answer = r#"{"type":"assistant","isSidechain":false,"message":{"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn"}}"#;
        let mut t = Tracker::default();
        let mut ev = t.feed(&tool.to_string());
        ev.extend(t.feed(&channel.to_string()));
        ev.extend(t.feed(answer));
        assert_eq!(
            proofs(&ev),
            vec![Event::Confirmed(vec![real], DeliveryPath::Channel)],
            "only the real channel message, not the lookalikes: {ev:?}"
        );
    }

    #[test]
    fn hook_blocks_are_confirmed_by_the_answer_after_them() {
        let a = id(7);
        let ctx = format!(
            "Messages from your claudemesh peers {} {a}]\n- alice: hi [peer id 1234abcd]",
            render::MARKER
        );
        let attachment = serde_json::json!({
            "type": "attachment", "isSidechain": false,
            "attachment": {"type": "hook_additional_context", "content": [ctx],
                "hookName": "UserPromptSubmit", "hookEvent": "UserPromptSubmit"}
        });
        let answer = r#"{"type":"assistant","isSidechain":false,"message":{"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn"}}"#;
        let side = r#"{"type":"assistant","isSidechain":true,"message":{"content":[],"stop_reason":"end_turn"}}"#;
        let mut t = Tracker::default();
        assert_eq!(
            t.feed(&attachment.to_string()),
            vec![Event::InConversation(vec![a], DeliveryPath::Hooks)]
        );
        assert!(
            t.feed(side).is_empty(),
            "a subagent's answer proves nothing"
        );
        assert_eq!(
            proofs(&t.feed(answer)),
            vec![Event::Confirmed(vec![a], DeliveryPath::Hooks)]
        );
        assert!(proofs(&t.feed(answer)).is_empty(), "confirmed once");
        assert!(t.feed("not json").is_empty());
    }

    /// Under load Claude Code can write a turn's answer before the prompt and the hook
    /// context it answered: the answer's `parentUuid` chain still names them.
    #[test]
    fn an_answer_written_before_the_context_it_answered_still_confirms_it() {
        let ctx = |n: u128| {
            format!(
                "Messages from your claudemesh peers {} {}]\n- alice: hi [peer id 1234abcd]",
                render::MARKER,
                id(n)
            )
        };
        let hook = |uuid: &str, parent: &str, n: u128| {
            serde_json::json!({
                "type": "attachment", "isSidechain": false, "uuid": uuid, "parentUuid": parent,
                "attachment": {"type": "hook_additional_context", "content": [ctx(n)],
                    "hookName": "UserPromptSubmit"}
            })
            .to_string()
        };
        let answer = |parent: &str| {
            serde_json::json!({
                "type": "assistant", "isSidechain": false, "uuid": "ans", "parentUuid": parent,
                "message": {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"}
            })
            .to_string()
        };
        let user = r#"{"type":"user","isSidechain":false,"uuid":"u1","parentUuid":null,"message":{"content":"hello"}}"#;
        // The answer names the hook context directly.
        let mut t = Tracker::default();
        assert!(proofs(&t.feed(&answer("h1"))).is_empty());
        t.feed(user);
        assert_eq!(
            proofs(&t.feed(&hook("h1", "u1", 1))),
            vec![Event::Confirmed(vec![id(1)], DeliveryPath::Hooks)]
        );
        assert!(proofs(&t.feed(&answer("h1"))).is_empty(), "confirmed once");
        // Through a later entry of the same request.
        let mut t = Tracker::default();
        t.feed(&answer("x"));
        t.feed(r#"{"type":"attachment","isSidechain":false,"uuid":"x","parentUuid":"h2","attachment":{"type":"skill_listing"}}"#);
        assert_eq!(
            proofs(&t.feed(&hook("h2", "u1", 2))),
            vec![Event::Confirmed(vec![id(2)], DeliveryPath::Hooks)]
        );
        // Context no answer descends from waits for the next answer, as before.
        let mut t = Tracker::default();
        t.feed(&answer("other"));
        assert!(proofs(&t.feed(&hook("h3", "u1", 3))).is_empty());
        assert_eq!(
            proofs(&t.feed(&answer("h3"))),
            vec![Event::Confirmed(vec![id(3)], DeliveryPath::Hooks)]
        );
    }
}
