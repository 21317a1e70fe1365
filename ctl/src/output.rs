//! Presentation: human-readable tables and lines, and `--json` with `schema_version`.

use claudemesh_schema::ipc::SCHEMA_VERSION;
use claudemesh_schema::ipc::methods::{
    InboxMessage, InviteInfo, JoinStage, MeshInfo, MeshPeers, MeshStatus, PendingClaim,
    PendingJoin, StatusResult,
};
use claudemesh_schema::ipc::shared::{Memory, Reminder, Reservation, StateEntry, Task};
use claudemesh_schema::{names, now_ms, render};
use serde::Serialize;
use serde_json::Value;

use crate::exit::Exit;

/// Write one line to stdout. A reader that went away (`| head -1`) ends this process with
/// exit 0: the output it wanted is out, and a CLI must not panic on a closed pipe.
pub(crate) fn line(s: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{s}").and_then(|_| out.flush()).is_err() {
        std::process::exit(Exit::Ok.code().into());
    }
}

/// Write bytes to stdout as they are, ending quietly on a closed pipe (see [`line`]).
pub(crate) fn raw(b: &[u8]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if out.write_all(b).and_then(|_| out.flush()).is_err() {
        std::process::exit(Exit::Ok.code().into());
    }
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--quiet`: no confirmations, hints or progress; data asked for and errors still print.
pub(crate) fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A confirmation of what a command did ("set k", "sent to bob"): silent with `--quiet`.
pub(crate) fn say(s: &str) {
    if !quiet() {
        line(s);
    }
}

/// Write one line to stderr (a hint or progress), ignoring errors (nobody to tell);
/// silent with `--quiet`.
pub(crate) fn note(s: &str) {
    use std::io::Write as _;
    if !quiet() {
        let _ = writeln!(std::io::stderr().lock(), "{s}");
    }
}

/// An error for the person at the terminal: `error:` in red when stderr is one (and
/// `NO_COLOR` is unset). Printed even with `--quiet`.
pub(crate) fn error(s: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let prefix = if colour(&std::io::stderr()) {
        "\x1b[31merror:\x1b[0m"
    } else {
        "error:"
    };
    let _ = writeln!(err, "{prefix} {s}");
}

/// Colour for this stream: a terminal, `NO_COLOR` unset, `TERM` not `dumb`.
pub(crate) fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// `text` in bold red on a colour terminal (stdout), as it is otherwise.
fn urgent(text: &str) -> String {
    if colour(&std::io::stdout()) {
        format!("\x1b[1;31m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A line on stderr while something slow runs ("waiting for an admin…"), on a terminal
/// only and not with `--quiet`; it says how long it has waited and is wiped when dropped.
pub(crate) struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(what: &str) -> Self {
        Self::watching(what, || None)
    }

    /// Like [`Progress::start`], with the line's text from `poll` (asked every half
    /// second; `None` keeps the last text).
    pub(crate) fn watching(
        what: &str,
        mut poll: impl FnMut() -> Option<String> + Send + 'static,
    ) -> Self {
        if quiet() || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Self {
                stop: None,
                thread: None,
            };
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let mut what = what.to_string();
        let thread = std::thread::spawn(move || {
            use std::io::Write as _;
            let started = std::time::Instant::now();
            let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut i = 0;
            loop {
                if i % 4 == 0
                    && let Some(w) = poll()
                {
                    what = w;
                }
                let _ = write!(
                    std::io::stderr().lock(),
                    "\r{} {what} ({}s)\x1b[K",
                    frames[i % frames.len()],
                    started.elapsed().as_secs()
                );
                i += 1;
                match stopped.recv_timeout(std::time::Duration::from_millis(120)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Print `v` as JSON with `schema_version`; lists are wrapped as `{key: [...]}`.
pub(crate) fn json(key: &str, v: impl Serialize) {
    let mut out = serde_json::Map::new();
    out.insert("schema_version".into(), Value::from(SCHEMA_VERSION));
    match serde_json::to_value(v).unwrap_or(Value::Null) {
        Value::Object(m) => out.extend(m),
        other => {
            out.insert(key.into(), other);
        }
    }
    out!("{}", Value::Object(out));
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
pub(crate) fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = ((now_ms() - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A duration like "2h 5m" from ms.
pub(crate) fn span(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    }
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    Table::stdout(header).page(rows);
}

/// Columns a cell takes on a terminal (wide characters take two, combining ones none).
fn width(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(s)
}

/// `s` cut to at most `max` columns, with `…` when something was cut.
fn cut(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// The width of the terminal stdout writes to; `None` when it is not one (a pipe or a
/// file gets every cell whole).
fn terminal_width() -> Option<usize> {
    let out = std::io::stdout();
    if !std::io::IsTerminal::is_terminal(&out) {
        return None;
    }
    rustix::termios::tcgetwinsize(&out)
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|&w| w > 0)
}

/// A table as lines: columns aligned by display width, the last column cut to fit
/// `columns` when given (on a terminal, a long summary must not wrap into the next row).
#[cfg(test)]
fn table_lines(header: &[&str], rows: Vec<Vec<String>>, columns: Option<usize>) -> Vec<String> {
    let mut t = Table::new(header, columns);
    t.lines(rows)
}

/// A table printed page by page as the pages of a list arrive: the header with the first
/// page, each column as wide as its widest cell so far (a later page with wider cells
/// widens the column from there on, so a long list never waits to be measured whole).
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    widths: Vec<usize>,
    columns: Option<usize>,
    started: bool,
}

impl Table {
    fn new(header: &[&str], columns: Option<usize>) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            widths: header.iter().map(|h| width(h)).collect(),
            columns,
            started: false,
        }
    }

    /// A table for stdout (cut to the terminal's width on one).
    pub(crate) fn stdout(header: &[&str]) -> Self {
        Self::new(header, terminal_width())
    }

    /// Print one page of rows.
    pub(crate) fn page(&mut self, rows: Vec<Vec<String>>) {
        let lines = self.lines(rows);
        if !lines.is_empty() {
            raw((lines.join("\n") + "\n").as_bytes());
        }
    }

    fn lines(&mut self, rows: Vec<Vec<String>>) -> Vec<String> {
        // Cells hold peers' text (names, values, titles): each is one line without controls,
        // so no cell can move the cursor, write the clipboard or start a row of its own.
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| r.iter().map(|c| names::one_line(c, 1000)).collect())
            .collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = self.widths.get_mut(i) {
                    *w = (*w).max(width(c));
                }
            }
        }
        let (widths, columns) = (&self.widths, self.columns);
        let line = |cells: &[String]| {
            let mut s = String::from("  ");
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    match columns {
                        Some(cols) => s.push_str(&cut(c, cols.saturating_sub(width(&s)).max(8))),
                        None => s.push_str(c),
                    }
                } else {
                    s.push_str(c);
                    let w = widths.get(i).copied().unwrap_or(0);
                    s.push_str(&" ".repeat(w.saturating_sub(width(c)) + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = Vec::with_capacity(rows.len() + 1);
        if !self.started {
            self.started = true;
            out.push(line(&self.header));
        }
        out.extend(rows.iter().map(|r| line(r)));
        out
    }
}

/// A `--json` list written page by page: the first page's object with its list opened,
/// then each page's items, then the close. The whole is the one JSON object a list gave
/// before paging (`schema_version`, its fields, the full list; no `next_cursor`), and it
/// stays one line.
#[derive(Debug)]
pub(crate) struct JsonList {
    key: &'static str,
    open: bool,
    any: bool,
}

impl JsonList {
    /// A list whose items are under `key` of each page.
    pub(crate) fn new(key: &'static str) -> Self {
        Self {
            key,
            open: false,
            any: false,
        }
    }

    /// Write one page (a result object holding `key`).
    pub(crate) fn page(&mut self, page: impl Serialize) {
        let mut m = match serde_json::to_value(page) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let items = match m.remove(self.key) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        m.remove("next_cursor");
        let mut buf = String::new();
        if !self.open {
            self.open = true;
            let mut head = serde_json::Map::new();
            head.insert("schema_version".into(), Value::from(SCHEMA_VERSION));
            head.extend(m);
            // The object without its closing brace (it holds `schema_version`, so a comma
            // follows), then the list's key and the list opened.
            let head = Value::Object(head).to_string();
            buf.push_str(head.strip_suffix('}').unwrap_or(&head));
            buf.push(',');
            buf.push_str(&Value::from(self.key).to_string());
            buf.push_str(":[");
        }
        for item in items {
            if self.any {
                buf.push(',');
            }
            self.any = true;
            buf.push_str(&item.to_string());
        }
        raw(buf.as_bytes());
    }

    /// Close the list and the object.
    pub(crate) fn end(self) {
        if !self.open {
            raw(format!(
                "{{\"schema_version\":{SCHEMA_VERSION},{}:[",
                Value::from(self.key)
            )
            .as_bytes());
        }
        raw(b"]}\n");
    }
}

/// Shared-state items per kind, the kinds that have any ("memories 3").
fn shared_counts(shared: &std::collections::BTreeMap<String, u64>) -> Vec<String> {
    shared
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect()
}

/// Text from peers, as one line without controls (names were checked on receipt; rows
/// cached by older versions were not).
fn clean(s: &str) -> String {
    names::one_line(s, 280)
}

/// A member key's fingerprint, as `verify` shows it.
fn fingerprint(member_b64: &str) -> String {
    claudemesh_schema::crypto::MemberKey::from_b64(member_b64)
        .map(|k| k.short_fingerprint())
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn peers(meshes: &[MeshPeers], daemon_down: bool) {
    if meshes.is_empty() {
        out!(
            "You have not joined any mesh yet. Run `claudemesh up` or `claudemesh join <invite>`."
        );
        return;
    }
    for m in meshes {
        let how = if daemon_down {
            " (cached: the daemon is not running)"
        } else if m.cached {
            " (cached: the relay is unreachable; showing last known state)"
        } else {
            ""
        };
        out!("{}{how}", m.name);
        if m.peers.is_empty() {
            out!("  no other peers yet; `claudemesh invite` makes an invite link");
            continue;
        }
        let rows = m
            .peers
            .iter()
            .map(|p| {
                // A person is their name; a session of theirs is `person/label`, which is
                // also how to address it.
                let name = if p.kind == "cli" || p.member_name.is_empty() {
                    clean(&p.name)
                } else {
                    format!("{}/{}", clean(&p.member_name), clean(&p.name))
                };
                // A peer whose announced name broke the name rules is shown by its key.
                let name = if name.is_empty() || name == "/" {
                    "(unnamed)".to_string()
                } else {
                    name
                };
                // A name another key was first seen with is flagged, and explained below.
                let name = if p.name_first_seen_with.is_some() {
                    format!("{name} (!)")
                } else {
                    name
                };
                // A member that changed its name says what it was first seen as.
                let name = match &p.renamed_from {
                    Some(was) => format!("{name} (was {})", clean(was)),
                    None => name,
                };
                vec![
                    format!("{name}{}", if p.me { " (you)" } else { "" }),
                    format!(
                        "{}{}",
                        fingerprint(&p.member),
                        if p.confirmed { " ✔" } else { "" }
                    ),
                    p.id.short(),
                    if p.online {
                        p.status.as_str().to_string()
                    } else {
                        "offline".into()
                    },
                    if p.online && !m.cached {
                        "now".into()
                    } else {
                        ago(p.last_seen)
                    },
                    clean(&p.hostname),
                    p.groups
                        .iter()
                        .map(|g| format!("@{}", clean(g)))
                        .collect::<Vec<_>>()
                        .join(","),
                    if p.reservations.is_empty() {
                        clean(&p.summary)
                    } else {
                        clean(&format!(
                            "{} [editing {}]",
                            p.summary,
                            p.reservations.join(" ")
                        ))
                    },
                ]
            })
            .collect();
        table(
            &[
                "NAME", "KEY", "ID", "STATUS", "SEEN", "HOST", "GROUPS", "SUMMARY",
            ],
            rows,
        );
        let mut warned = std::collections::BTreeSet::new();
        for p in &m.peers {
            if let Some(first) = &p.name_first_seen_with
                && warned.insert((p.member.clone(), first.clone()))
            {
                let person = clean(if p.member_name.is_empty() {
                    &p.name
                } else {
                    &p.member_name
                });
                let key = fingerprint(&p.member);
                out!(
                    "  (!) {person} [key {key}] is not the {person} first seen here (key {first}): an impostor, or two people sharing a name. Check with `claudemesh verify {key}`."
                );
            }
        }
    }
}

pub(crate) fn inbox(msgs: &[InboxMessage]) {
    if msgs.is_empty() {
        out!("No new messages.");
        return;
    }
    messages(msgs);
}

/// `history`: messages read or not, oldest first.
pub(crate) fn history(msgs: &[InboxMessage]) {
    if msgs.is_empty() {
        out!("No messages yet.");
        return;
    }
    messages(msgs);
}

fn messages(msgs: &[InboxMessage]) {
    for m in msgs {
        let marker = match m.priority.as_str() {
            "now" => format!(" {}", urgent("[now]")),
            "low" => " [low]".to_string(),
            _ => String::new(),
        };
        let to = if m.to.starts_with('@') || m.to == "*" {
            format!(" → {}", m.to)
        } else {
            String::new()
        };
        let head = format!(
            "{} [key {}] ({}{to}, {}){marker}:",
            clean(&render::sender(m)),
            render::fingerprint(m),
            clean(&m.mesh_name),
            ago(m.sent_at),
        );
        for l in message_lines(&head, &names::body(&m.body)) {
            out!("{l}");
        }
    }
}

/// A message under its header: a one-line body on the header's line, a longer one
/// indented below it, so a line of the body never reads as a message of its own.
fn message_lines(head: &str, body: &str) -> Vec<String> {
    if !body.contains('\n') {
        return vec![format!("{head} {body}")];
    }
    std::iter::once(head.to_string())
        .chain(
            body.lines()
                .map(|l| format!("    {l}").trim_end().to_string()),
        )
        .collect()
}

pub(crate) fn mesh_list(meshes: &[MeshInfo]) {
    if meshes.is_empty() {
        out!(
            "You have not joined any mesh yet. Run `claudemesh up` or `claudemesh join <invite>`."
        );
        return;
    }
    let rows = meshes
        .iter()
        .map(|m| {
            vec![
                if m.default {
                    format!("{} (default)", m.name)
                } else {
                    m.name.clone()
                },
                m.mesh.short(),
                m.role.as_str().to_string(),
                m.display_name.clone(),
                m.relay.clone(),
            ]
        })
        .collect();
    table(&["MESH", "ID", "ROLE", "YOU", "RELAY"], rows);
}

fn link_text(m: &MeshStatus) -> String {
    use claudemesh_schema::ipc::methods::LinkState;
    match m.link {
        LinkState::Connected => match (&m.last_drop, m.links) {
            (Some(why), n) if n > 1 => format!(
                "connected ({}; reconnected {} time{}, last after: {why})",
                m.transport.as_deref().unwrap_or("?"),
                n - 1,
                if n == 2 { "" } else { "s" }
            ),
            _ => format!("connected ({})", m.transport.as_deref().unwrap_or("?")),
        },
        LinkState::Connecting => match &m.last_error {
            Some(e) => format!("reconnecting — last error: {e}"),
            None => "connecting".into(),
        },
        LinkState::Offline => "offline".into(),
    }
}

pub(crate) fn status(s: &StatusResult) {
    out!(
        "daemon running (pid {}, version {}, up {})",
        s.pid,
        s.version,
        span(s.uptime_ms)
    );
    out!("  config: {}", s.config_dir);
    if let (Some(public), Some(listen)) = (&s.embedded_relay, &s.embedded_relay_listen) {
        out!("  relay: listening on {listen}; invites name {public}");
    }
    if s.meshes.is_empty() && s.joins.is_empty() {
        out!("No meshes yet. Run `claudemesh up` or `claudemesh join <invite>`.");
    }
    for j in &s.joins {
        for l in pending_join(j) {
            out!("{l}");
        }
    }
    for m in &s.meshes {
        out!("{} via {}: {}", m.name, m.relay, link_text(m));
        out!(
            "  peers online: {}   unread: {}   waiting to send: {}{}",
            m.peers_online,
            m.unread,
            m.outbox,
            m.clock_skew_ms
                .filter(|s| s.abs() > 2000)
                .map(|s| format!("   clock skew: {} s", s / 1000))
                .unwrap_or_default()
        );
        let items = shared_counts(&m.shared);
        out!(
            "  shared log: seq {}{}{}",
            m.log_seq,
            if m.log_pending > 0 {
                format!(", {} own writes pending", m.log_pending)
            } else {
                String::new()
            },
            if items.is_empty() {
                String::new()
            } else {
                format!("   ({})", items.join(", "))
            }
        );
    }
}

/// A join waiting for an admin (or refused), as `status` and `join` show it: one line of
/// where it stands, then what identifies the claim (the admin sees the same name and
/// fingerprint), then the last error.
pub(crate) fn pending_join(j: &PendingJoin) -> Vec<String> {
    let what = match j.stage {
        JoinStage::Connecting => "pending: reaching the invite's relay".to_string(),
        JoinStage::Waiting if j.admins_online.unwrap_or(0) == 0 => {
            "pending; you will be admitted when an admin is online".to_string()
        }
        JoinStage::Waiting => "pending: an admin is online and answering".to_string(),
        JoinStage::Approval => format!(
            "pending: waiting for an admin to approve it (`claudemesh invite approve {}` on their machine)",
            j.claim
                .map(|c| c.short())
                .unwrap_or_else(|| "<claim>".into())
        ),
        JoinStage::Refused => "refused; nothing was joined".to_string(),
    };
    let mut out = vec![
        format!("join via {}: {what}", j.relay),
        format!(
            "  as {} with key fingerprint {}   asked {}{}",
            names::one_line(&j.name, 64),
            j.fingerprint,
            ago(j.since),
            j.kept_until
                .map(|t| format!(
                    "   kept at the relay for {}",
                    span((t - now_ms()).max(0) as u64)
                ))
                .unwrap_or_default()
        ),
    ];
    if let Some(e) = &j.error {
        let label = if j.stage == JoinStage::Refused {
            "why"
        } else {
            "last error"
        };
        out.push(format!("  {label}: {}", names::one_line(e, 400)));
    }
    out
}

/// `claudemesh info`.
pub(crate) fn mesh_overview(meshes: &[claudemesh_schema::ipc::methods::MeshOverview]) {
    use claudemesh_schema::ipc::methods::LinkState;
    if meshes.is_empty() {
        out!("No meshes yet. Run `claudemesh up` or `claudemesh <invite-link>`.");
    }
    for (i, m) in meshes.iter().enumerate() {
        if i > 0 {
            out!();
        }
        let link = match m.link {
            LinkState::Connected => {
                format!("connected over {}", m.transport.as_deref().unwrap_or("?"))
            }
            LinkState::Connecting => match &m.last_error {
                Some(e) => format!("reconnecting, last error: {}", clean(e)),
                None => "connecting".into(),
            },
            LinkState::Offline => "offline".into(),
        };
        out!("{} (relay {}, {link})", clean(&m.mesh.name), m.mesh.relay);
        out!(
            "  you: {} [key {}], {}{}",
            clean(&m.mesh.display_name),
            m.fingerprint,
            m.mesh.role.as_str(),
            if m.your_groups.is_empty() {
                String::new()
            } else {
                format!(
                    ", in {}",
                    m.your_groups
                        .iter()
                        .map(|g| format!("@{}", clean(g)))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        );
        out!(
            "  members: {} ({} online)",
            m.members.len(),
            m.members.iter().filter(|x| x.online).count()
        );
        table(
            &["NAME", "KEY", "ROLE", "ONLINE", "SESSIONS"],
            m.members
                .iter()
                .map(|x| {
                    vec![
                        if x.name.is_empty() {
                            "(unnamed)".into()
                        } else if x.me {
                            format!("{} (you)", x.name)
                        } else {
                            x.name.clone()
                        },
                        x.fingerprint.clone(),
                        x.role.as_str().to_string(),
                        if x.online { "yes" } else { "no" }.into(),
                        x.sessions.to_string(),
                    ]
                })
                .collect(),
        );
        if !m.groups.is_empty() {
            out!("  groups:");
            for g in &m.groups {
                out!(
                    "    @{}: {}",
                    clean(&g.name),
                    g.members
                        .iter()
                        .map(|n| clean(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let items = shared_counts(&m.shared);
        out!(
            "  shared: {}{}",
            if items.is_empty() {
                "nothing yet".to_string()
            } else {
                items.join(", ")
            },
            if m.state_keys.is_empty() {
                String::new()
            } else {
                format!(
                    "; keys: {}",
                    m.state_keys
                        .iter()
                        .map(|k| clean(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        out!(
            "  log seq {}{}; {} unread, {} waiting to send",
            m.log_seq,
            if m.log_pending > 0 {
                format!(" ({} own writes pending)", m.log_pending)
            } else {
                String::new()
            },
            m.unread,
            m.outbox
        );
    }
}

/// `mesh stats`: one row per session, ours first; counts as each session's daemon keeps
/// them (from when the session opened).
pub(crate) fn mesh_stats(r: &claudemesh_schema::ipc::methods::MeshStatsResult) {
    let dash = || "-".to_string();
    table(
        &[
            "NAME",
            "KEY",
            "ONLINE",
            "UP",
            "MSGS IN",
            "MSGS OUT",
            "TOOL CALLS",
            "ERRORS",
            "NOTE",
        ],
        r.peers
            .iter()
            .map(|p| {
                let name = match (p.name.is_empty(), p.me) {
                    (true, _) => "(unnamed)".to_string(),
                    (false, true) => format!("{} (you)", clean(&p.name)),
                    (false, false) => clean(&p.name),
                };
                let mut row = vec![
                    name,
                    p.fingerprint.clone(),
                    if p.online { "yes" } else { "no" }.into(),
                ];
                match &p.usage {
                    Some(u) => row.extend([
                        span(u.uptime_ms),
                        u.messages_in.to_string(),
                        u.messages_out.to_string(),
                        u.tool_calls.to_string(),
                        u.tool_errors.to_string(),
                    ]),
                    None => row.extend(std::iter::repeat_with(dash).take(5)),
                }
                row.push(clean(&p.note));
                row
            })
            .collect(),
    );
    let items = shared_counts(&r.shared);
    out!(
        "shared state: {} (log at {}{})",
        if items.is_empty() {
            "empty".to_string()
        } else {
            items.join(", ")
        },
        r.log_seq,
        if r.log_pending > 0 {
            format!(", {} own writes pending", r.log_pending)
        } else {
            String::new()
        }
    );
}

pub(crate) fn invite(i: &InviteInfo) {
    if let Some(link) = &i.invite {
        out!("{link}");
    }
    note!(
        "Invite {} to {} as {}: {} use(s), expires in {}{}.",
        i.id.short(),
        i.mesh_name,
        i.role.as_str(),
        i.max_uses,
        span((i.expires_at - now_ms()).max(0) as u64),
        if i.approve {
            ", each join needs your approval (`claudemesh invite pending`)"
        } else {
            ""
        }
    );
    note!("The link holds no key: joining needs your daemon online to admit the newcomer.");
}

pub(crate) fn invite_list(list: &[InviteInfo]) {
    if list.is_empty() {
        out!("No invites minted on this machine.");
        return;
    }
    let rows = list
        .iter()
        .map(|i| {
            let state = if i.revoked {
                "revoked".to_string()
            } else if i.expires_at < now_ms() {
                "expired".into()
            } else if i.uses >= i.max_uses {
                "used up".into()
            } else {
                format!("expires in {}", span((i.expires_at - now_ms()) as u64))
            };
            vec![
                i.id.short(),
                i.mesh_name.clone(),
                i.role.as_str().into(),
                format!("{}/{}", i.uses, i.max_uses),
                state,
                if i.approve {
                    "approve".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table(&["ID", "MESH", "ROLE", "USES", "STATE", "MODE"], rows);
}

pub(crate) fn claims(list: &[PendingClaim]) {
    if list.is_empty() {
        out!("No join requests are waiting.");
        return;
    }
    let rows = list
        .iter()
        .map(|c| {
            vec![
                c.claim[..8.min(c.claim.len())].to_string(),
                c.mesh_name.clone(),
                c.name.clone().unwrap_or_else(|| "(no name given)".into()),
                c.fingerprint.clone(),
                ago(c.at),
            ]
        })
        .collect();
    table(&["CLAIM", "MESH", "NAME", "KEY FINGERPRINT", "ASKED"], rows);
    out!(
        "Check the fingerprint with the person (their `claudemesh status` shows it) before approving."
    );
    out!(
        "Approve with `claudemesh invite approve <claim>`, or deny with `claudemesh invite deny <claim>`."
    );
}

/// How each list reads when it is empty, and its table's header.
pub(crate) const STATE_EMPTY: &str =
    "No shared state yet. Set a key with `claudemesh state set <key> <value>`.";
pub(crate) const STATE_HEADER: &[&str] = &["KEY", "VALUE", "BY", "WHEN"];
pub(crate) const TASKS_EMPTY: &str = "No tasks. Create one with `claudemesh task create <title>`.";
pub(crate) const TASKS_HEADER: &[&str] = &["ID", "STATUS", "PRIORITY", "ASSIGNEE", "TITLE"];
pub(crate) const RESERVATIONS_EMPTY: &str = "No file reservations.";
pub(crate) const RESERVATIONS_HEADER: &[&str] =
    &["ID", "HOLDER", "FILES", "KIND", "STATUS", "REASON"];
pub(crate) const REMINDERS_EMPTY: &str =
    "No reminders scheduled. Schedule one with `claudemesh remind <message> --in 30m`.";
pub(crate) const REMINDERS_HEADER: &[&str] = &["ID", "TO", "WHEN", "FIRED", "MESSAGE"];
pub(crate) const MEMORIES_EMPTY: &str = "No memories match.";

/// Table rows of shared keys.
pub(crate) fn state_rows(entries: &[StateEntry]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            let v = match &e.value {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            vec![
                e.key.clone(),
                v,
                e.updated_by.clone(),
                if e.pending {
                    "pending".into()
                } else {
                    ago(e.updated_at)
                },
            ]
        })
        .collect()
}

/// One line per memory.
pub(crate) fn memories(list: &[Memory]) {
    let mut lines = String::new();
    for m in list {
        let tags = if m.tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", m.tags.join(", "))
        };
        let pending = if m.pending { " (pending)" } else { "" };
        lines.push_str(&format!(
            "{}  {}{}  — {}, {}{pending}\n",
            m.id.short(),
            names::one_line(&m.text, 2000),
            clean(&tags),
            clean(&m.author),
            ago(m.created_at)
        ));
    }
    raw(lines.as_bytes());
}

/// Table rows of tasks.
pub(crate) fn task_rows(list: &[Task]) -> Vec<Vec<String>> {
    list.iter()
        .map(|t| {
            vec![
                t.id.short(),
                if t.pending {
                    format!("{} (pending)", t.status)
                } else {
                    t.status.clone()
                },
                t.priority.clone(),
                t.assignee
                    .clone()
                    .or_else(|| t.suggested.clone().map(|s| format!("({s})")))
                    .unwrap_or_default(),
                t.title.clone(),
            ]
        })
        .collect()
}

/// Table rows of reservations.
pub(crate) fn reservation_rows(list: &[Reservation]) -> Vec<Vec<String>> {
    list.iter()
        .map(|r| {
            let until = (r.expires_at - now_ms()).max(0) as u64;
            vec![
                r.id.short(),
                r.holder.clone(),
                r.patterns.join(" "),
                if r.exclusive { "exclusive" } else { "shared" }.into(),
                if r.status == "active" {
                    format!("{} left", span(until))
                } else {
                    r.status.clone()
                },
                r.reason.clone(),
            ]
        })
        .collect()
}

/// Table rows of reminders.
pub(crate) fn reminder_rows(list: &[Reminder]) -> Vec<Vec<String>> {
    list.iter()
        .map(|r| {
            let when = match (&r.cron, r.next_due) {
                (Some(c), Some(n)) => format!(
                    "cron \"{c}\", next in {}",
                    span((n - now_ms()).max(0) as u64)
                ),
                (None, Some(n)) => format!("in {}", span((n - now_ms()).max(0) as u64)),
                _ => r.status.clone(),
            };
            vec![
                r.id.short(),
                if r.to.is_empty() {
                    "me".into()
                } else {
                    r.to.clone()
                },
                when,
                r.fired.to_string(),
                r.message.clone(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_display_width_and_the_last_is_cut_to_the_terminal() {
        let rows = vec![
            vec!["日本語".to_string(), "a".to_string(), "short".to_string()],
            vec!["ab".to_string(), "bb".to_string(), "x".repeat(100)],
        ];
        let lines = table_lines(&["NAME", "K", "SUMMARY"], rows.clone(), None);
        // The third column starts at the same display column on every line.
        let starts: Vec<usize> = lines
            .iter()
            .map(|l| {
                let i = l.rfind("  ").unwrap() + 2;
                width(&l[..i])
            })
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
        assert!(lines[2].ends_with(&"x".repeat(100)), "a pipe gets it whole");
        let cut = table_lines(&["NAME", "K", "SUMMARY"], rows, Some(40));
        assert!(cut.iter().all(|l| width(l) <= 40), "{cut:#?}");
        assert!(cut[2].ends_with('…'));
    }

    #[test]
    fn a_multi_line_body_is_indented_under_its_header() {
        assert_eq!(message_lines("ann:", "hi"), vec!["ann: hi"]);
        assert_eq!(
            message_lines("ann:", "one\n- bob: forged\n"),
            vec!["ann:", "    one", "    - bob: forged"]
        );
    }
}
