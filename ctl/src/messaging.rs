//! Talking: `send`, `inbox`, and `sent` (how far a message got).

use claudemesh_schema::ipc::methods::{
    self as m, InboxParams, InboxResult, SendParams, SendResult, Stage,
};
use claudemesh_schema::message::Priority;

use crate::cli::{BodyArgs, InboxArgs, ReplyArgs, SendArgs, SentArgs};
use crate::daemon::{client, paths};
use crate::exit::{Exit, Failure, Res};
use crate::output;

/// The text and priority a `send` or `reply` gives.
fn body(b: BodyArgs) -> Result<(String, Priority), Failure> {
    let priority: Priority = b
        .priority
        .parse()
        .map_err(|e: String| Failure::new(Exit::Usage, e))?;
    let text = match &b.file {
        Some(f) => crate::stdin::file(f)?,
        None => crate::stdin::message(b.message)?,
    };
    Ok((text, priority))
}

pub(crate) async fn send(a: SendArgs) -> Res {
    let (text, priority) = body(a.body)?;
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: SendResult = c
        .call(
            m::SEND,
            SendParams {
                to: a.to.clone(),
                body: text,
                priority,
                mesh: a.mesh,
                session: None,
                wait_ms: None,
                id: a.id,
            },
        )
        .await?;
    said(&a.to, &r, a.json.json);
    Ok(())
}

/// `reply <id>`: to the session that sent that message, in its mesh.
pub(crate) async fn reply(a: ReplyArgs) -> Res {
    let (text, priority) = body(a.body)?;
    let p = paths()?;
    let mut c = client(&p).await?;
    let h: InboxResult = c
        .call(
            m::INBOX,
            InboxParams {
                all: true,
                peek: true,
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await?;
    let want = a.id.trim().to_lowercase().replace('-', "");
    let mut hits: Vec<&m::InboxMessage> = h
        .messages
        .iter()
        .filter(|msg| {
            let hex = claudemesh_schema::crypto::hex(msg.id.as_bytes());
            !want.is_empty() && (hex.starts_with(&want) || msg.id.short().starts_with(&want))
        })
        .collect();
    // A message is (mesh, id): ids are unique only within a mesh, and a broadcast is one
    // row per local session.
    hits.sort_by_key(|msg| (msg.mesh, msg.id));
    hits.dedup_by_key(|msg| (msg.mesh, msg.id));
    let msg = match hits.as_slice() {
        [one] => *one,
        [] => {
            return Err(Failure::new(
                Exit::NotFound,
                format!(
                    "no message {:?} among those you received; `claudemesh history` lists them",
                    a.id
                ),
            ));
        }
        _ => {
            return Err(Failure::new(
                Exit::Ambiguous,
                format!("several messages match {:?}; give more of the id", a.id),
            ));
        }
    };
    let r: SendResult = c
        .call(
            m::SEND,
            SendParams {
                to: msg.from_id.to_string(),
                body: text,
                priority,
                mesh: Some(msg.mesh.to_string()),
                session: None,
                wait_ms: None,
                id: None,
            },
        )
        .await?;
    let who = if msg.from_name.is_empty() {
        msg.from_id.short()
    } else {
        msg.from_name.clone()
    };
    said(&who, &r, a.json.json);
    Ok(())
}

/// What a send reached, as `send` and `reply` say it.
fn said(to: &str, r: &SendResult, json: bool) {
    if json {
        output::json("result", r);
    } else if r.duplicate {
        say!(
            "already sent to {} under this --id: nothing sent again; it is {} (id {})",
            r.recipients.join(", "),
            r.stage.as_str(),
            r.id.short()
        );
    } else {
        let who = if r.recipients.is_empty() {
            to.to_string()
        } else {
            r.recipients.join(", ")
        };
        match r.stage {
            Stage::Queued => say!(
                "queued for {who}: the relay is not reachable right now; it will be sent when the link returns (id {})",
                r.id.short()
            ),
            // Relayed to someone not there: say so, and that it is not lost.
            Stage::Relayed if !r.offline.is_empty() && r.offline.len() == r.recipients.len() => {
                say!(
                    "{} offline: the relay keeps the message, and it reaches them when they are back (id {})",
                    offline(&r.offline),
                    r.id.short()
                )
            }
            Stage::Relayed => {
                say!("sent to {who} (relayed, id {})", r.id.short());
                if !r.offline.is_empty() {
                    say!(
                        "{} offline: it reaches them when they are back",
                        offline(&r.offline)
                    );
                }
            }
            Stage::Delivered | Stage::Surfaced | Stage::Read => {
                say!("delivered to {who} (id {})", r.id.short())
            }
        }
    }
}

/// A full id given as an option.
fn full_id<T: std::str::FromStr>(what: &str, s: Option<&str>) -> Result<Option<T>, Failure> {
    s.map(|s| {
        s.parse().map_err(|_| {
            Failure::new(
                Exit::Usage,
                format!(
                    "{what} needs a full id (as `peers` or `inbox --json` print it), got {s:?}"
                ),
            )
        })
    })
    .transpose()
}

/// How long one `inbox --follow` request waits before asking again.
const FOLLOW_WAIT_MS: u64 = 60_000;

pub(crate) async fn inbox(a: InboxArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let session = full_id("--session", a.session.as_deref())?;
    let mut after: Option<claudemesh_schema::MessageId> = full_id("--after", a.after.as_deref())?;
    // Messages become read only once they are printed: a reader killed before it got
    // them (or a daemon killed before it answered) finds them unread again.
    let confirm = !a.peek && !a.all;
    loop {
        let wait_ms = if a.follow {
            Some(FOLLOW_WAIT_MS)
        } else {
            a.wait.map(|s| s.saturating_mul(1000))
        };
        let r: InboxResult = c
            .call(
                m::INBOX,
                InboxParams {
                    session,
                    after,
                    mesh: a.mesh.clone(),
                    wait_ms,
                    peek: a.peek,
                    limit: a.limit,
                    confirm,
                    all: a.all,
                },
            )
            .await?;
        if a.follow {
            // One JSON object per message, one line each, as they come.
            for msg in &r.messages {
                if a.json.json {
                    out!("{}", serde_json::to_string(msg).unwrap_or_default());
                } else {
                    output::inbox(std::slice::from_ref(msg));
                }
            }
        } else if a.json.json {
            output::json("messages", &r)
        } else if a.all {
            output::history(&r.messages)
        } else {
            output::inbox(&r.messages)
        }
        if confirm {
            confirm_read(&mut c, &r.messages).await?;
        }
        if !a.follow {
            return Ok(());
        }
        if a.peek
            && let Some(last) = r.messages.last()
        {
            after = Some(last.id);
        }
    }
}

/// Tell the daemon the messages printed are read (per session they were delivered to).
async fn confirm_read(
    c: &mut claudemesh_daemon::client::Client,
    msgs: &[claudemesh_schema::ipc::methods::InboxMessage],
) -> Res {
    let mut by_session: std::collections::BTreeMap<_, Vec<_>> = Default::default();
    for msg in msgs {
        by_session.entry(msg.session).or_default().push(msg.id);
    }
    for (session, ids) in by_session {
        let _: serde_json::Value = c
            .call(
                m::MARK_READ,
                m::MarkReadParams {
                    session,
                    ids,
                    surfaced: true,
                },
            )
            .await?;
    }
    Ok(())
}

pub(crate) async fn sent(a: SentArgs) -> Res {
    let SentArgs {
        id,
        limit,
        wait_for,
        timeout,
        json,
    } = a;
    let p = paths()?;
    let mut c = client(&p).await?;
    let Some(id) = id else {
        if wait_for.is_some() {
            return Err(Failure::new(
                Exit::Usage,
                "--wait-for needs a message id: `claudemesh sent <id> --wait-for read`",
            ));
        }
        let r: m::SentListResult = c
            .call(m::SENT_LIST, m::SentListParams { limit: Some(limit) })
            .await?;
        if json {
            output::json("messages", &r);
        } else if r.messages.is_empty() {
            out!("You have not sent anything yet.");
        } else {
            output::table(
                &["ID", "TO", "SENT", "STAGE"],
                r.messages
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.short(),
                            s.to.clone(),
                            output::ago(s.queued_at),
                            s.stage.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        return Ok(());
    };
    let want: Option<Stage> = wait_for
        .as_deref()
        .map(|w| serde_json::from_value(serde_json::Value::String(w.into())))
        .transpose()
        .map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
    let r: m::MessageStatusResult = c
        .call(
            m::MESSAGE_STATUS,
            m::MessageStatusParams {
                id,
                wait_for: want,
                wait_ms: want.map(|_| timeout.saturating_mul(1000)),
            },
        )
        .await?;
    if json {
        output::json("message", &r);
    } else {
        out!("{} to {}: {}", r.id.short(), r.to, r.stage);
    }
    match want {
        Some(w) if r.stage < w => Err(Failure::new(
            Exit::TimedOut,
            format!("the message did not get to {w} within {timeout} s"),
        )),
        _ => Ok(()),
    }
}

/// "bob [key …] is" / "bob [key …] and carol [key …] are".
fn offline(names: &[String]) -> String {
    match names {
        [one] => format!("{one} is"),
        more => format!("{} are", more.join(", ")),
    }
}
