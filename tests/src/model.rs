//! A scripted stand-in for the Anthropic Messages API on loopback, for driving the real
//! Claude Code CLI in tests: it records every request body (exactly what the model would
//! have seen) and answers with streamed SSE events.
//!
//! The script, for `POST /v1/messages`:
//! - a request without tools (titles, summaries) gets a short text;
//! - a last user message holding a `tool_result` gets the text `done`;
//! - a last user message with `RUN:<command>` (to the end of its line) gets a `Bash`
//!   tool call running it; one with `CALL:<tool> <json>` a call of that tool with that
//!   input;
//! - anything else gets the text `ok`.
//!
//! `HEAD`/`GET` and other paths answer `200 {}`; `count_tokens` answers a count.

use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival, unix ms.
    pub at: i64,
    /// Path with query.
    pub path: String,
    /// The JSON body.
    pub body: Value,
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<Recorded>,
}

/// The running stand-in (it stops when the test process ends).
#[derive(Debug, Clone)]
pub struct ModelStub {
    /// Where it listens (`http://…` for `ANTHROPIC_BASE_URL`).
    pub addr: SocketAddr,
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl ModelStub {
    /// Listen on a free loopback port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind model stub");
        let addr = listener.local_addr().expect("stub addr");
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let l3 = l2.clone();
                std::thread::spawn(move || serve(conn, &l3));
            }
        });
        Self { addr, log }
    }

    /// `ANTHROPIC_BASE_URL` for Claude Code.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `/v1/messages` request so far (model turns and side queries).
    pub fn requests(&self) -> Vec<Recorded> {
        self.log
            .0
            .lock()
            .map(|l| l.requests.clone())
            .unwrap_or_default()
    }

    /// The model turns so far (requests that offer tools).
    pub fn turns(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.body["tools"].as_array().is_some_and(|t| !t.is_empty()))
            .collect()
    }

    /// Wait until a model turn's input contains `text`; returns that request.
    pub fn wait_for_text(&self, text: &str, secs: u64) -> Recorded {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let (m, cv) = &*self.log;
        let mut g = m.lock().expect("stub log");
        loop {
            if let Some(r) = g.requests.iter().find(|r| {
                r.body["tools"].as_array().is_some_and(|t| !t.is_empty())
                    && r.body.to_string().contains(text)
            }) {
                return r.clone();
            }
            let now = std::time::Instant::now();
            assert!(
                now < deadline,
                "no model input contained {text:?} within {secs} s"
            );
            g = cv.wait_timeout(g, deadline - now).expect("stub log").0;
        }
    }
}

/// How many times `text` occurs in a request's input (its messages and system prompt).
pub fn occurrences(r: &Recorded, text: &str) -> usize {
    let input = json!([r.body["system"], r.body["messages"]]).to_string();
    input.matches(text).count()
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A tool call to answer with: `Bash` running a command, or any tool with its input.
enum Call {
    Bash(String),
    Tool(String, Value),
}

/// What to answer: `(tool call, text)`.
fn decide(body: &Value) -> (Option<Call>, String) {
    let tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    if !tools {
        return (None, "claudemesh test".into());
    }
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .cloned()
        .unwrap_or(Value::Null);
    let content = &last_user["content"];
    if content
        .as_array()
        .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    {
        return (None, "done".into());
    }
    let text = text_of(content);
    if let Some(pos) = text.rfind("CALL:") {
        let line = text[pos + 5..].lines().next().unwrap_or("").trim();
        if let Some((name, input)) = line.split_once(' ')
            && let Ok(input) = serde_json::from_str::<Value>(input)
        {
            return (Some(Call::Tool(name.to_string(), input)), String::new());
        }
    }
    if let Some(pos) = text.rfind("RUN:") {
        let cmd = text[pos + 4..]
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if !cmd.is_empty() {
            return (Some(Call::Bash(cmd)), String::new());
        }
    }
    (None, "ok".into())
}

fn sse(n: usize, model: &str, tool: Option<Call>, text: String) -> Vec<u8> {
    let usage = json!({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let (block, delta, stop) = match tool {
        Some(Call::Bash(cmd)) => (
            json!({"type": "tool_use", "id": format!("toolu_stub_{n:04}"), "name": "Bash", "input": {}}),
            json!({"type": "input_json_delta", "partial_json": json!({"command": cmd, "description": "test tool call"}).to_string()}),
            "tool_use",
        ),
        Some(Call::Tool(name, input)) => (
            json!({"type": "tool_use", "id": format!("toolu_stub_{n:04}"), "name": name, "input": {}}),
            json!({"type": "input_json_delta", "partial_json": input.to_string()}),
            "tool_use",
        ),
        None => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": text}),
            "end_turn",
        ),
    };
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": format!("msg_stub_{n:04}"), "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let mut out = Vec::new();
    for (e, d) in events {
        out.extend_from_slice(format!("event: {e}\ndata: {d}\n\n").as_bytes());
    }
    out
}

fn respond(w: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nrequest-id: req_stub\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

/// One keep-alive connection.
fn serve(conn: TcpStream, log: &Arc<(Mutex<Log>, Condvar)>) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut raw = vec![0u8; len];
        if r.read_exact(&mut raw).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let ok = if method == "POST"
            && path
                .split('?')
                .next()
                .is_some_and(|p| p.ends_with("/v1/messages"))
        {
            let n = {
                let (m, cv) = &**log;
                let mut g = m.lock().expect("stub log");
                g.requests.push(Recorded {
                    at: claudemesh_schema::now_ms(),
                    path: path.clone(),
                    body: body.clone(),
                });
                cv.notify_all();
                g.requests.len()
            };
            let (tool, text) = decide(&body);
            let model = body["model"].as_str().unwrap_or("claude-stub").to_string();
            respond(
                &mut w,
                "200 OK",
                "text/event-stream",
                &sse(n, &model, tool, text),
            )
        } else if path.contains("count_tokens") {
            respond(
                &mut w,
                "200 OK",
                "application/json",
                br#"{"input_tokens":1}"#,
            )
        } else if method == "HEAD" {
            write!(w, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").and_then(|_| w.flush())
        } else {
            respond(&mut w, "200 OK", "application/json", b"{}")
        };
        if ok.is_err() {
            return;
        }
    }
}
