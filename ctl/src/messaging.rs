//! Talking: `send`, `inbox`, and `sent` (how far a message got).

use claudemesh_schema::ipc::methods::{
    self as m, InboxParams, InboxResult, SendParams, SendResult, Stage,
};
use claudemesh_schema::message::Priority;

use crate::cli::{InboxArgs, SendArgs, SentArgs};
use crate::daemon::{client, paths};
use crate::exit::{Exit, Failure, Res};
use crate::output;

pub(crate) async fn send(a: SendArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let priority: Priority = a
        .priority
        .parse()
        .map_err(|e: String| Failure::new(Exit::Usage, e))?;
    let r: SendResult = c
        .call(
            m::SEND,
            SendParams {
                to: a.to.clone(),
                body: crate::stdin::message(a.message)?,
                priority,
                mesh: a.mesh,
                session: None,
                wait_ms: None,
            },
        )
        .await?;
    if a.json.json {
        output::json("result", &r);
    } else {
        let who = if r.recipients.is_empty() {
            a.to.clone()
        } else {
            r.recipients.join(", ")
        };
        match r.stage {
            Stage::Queued => out!(
                "queued for {who}: the relay is not reachable right now; it will be sent when the link returns (id {})",
                r.id.short()
            ),
            Stage::Relayed => out!("sent to {who} (relayed, id {})", r.id.short()),
            Stage::Delivered | Stage::Surfaced | Stage::Read => {
                out!("delivered to {who} (id {})", r.id.short())
            }
        }
    }
    Ok(())
}

pub(crate) async fn inbox(a: InboxArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: InboxResult = c
        .call(
            m::INBOX,
            InboxParams {
                session: match a.session.as_deref() {
                    Some(s) => Some(s.parse().map_err(|_| {
                        Failure::new(
                            Exit::Usage,
                            format!("--session needs a full session id, got {s:?}"),
                        )
                    })?),
                    None => None,
                },
                after: match a.after.as_deref() {
                    Some(s) => Some(s.parse().map_err(|_| {
                        Failure::new(
                            Exit::Usage,
                            format!("--after needs a full message id, got {s:?}"),
                        )
                    })?),
                    None => None,
                },
                mesh: a.mesh,
                wait_ms: a.wait.map(|s| s.saturating_mul(1000)),
                peek: a.peek,
                limit: a.limit,
            },
        )
        .await?;
    if a.json.json {
        output::json("messages", &r)
    } else {
        output::inbox(&r.messages)
    }
    Ok(())
}

pub(crate) async fn sent(a: SentArgs) -> Res {
    let SentArgs {
        id,
        wait_for,
        timeout,
        json,
    } = a;
    let p = paths()?;
    let mut c = client(&p).await?;
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
        out!("{} to {}: {:?}", r.id.short(), r.to, r.stage);
    }
    match want {
        Some(w) if r.stage < w => Err(Failure::new(
            Exit::TimedOut,
            format!("the message did not get to {w:?} within {timeout} s"),
        )),
        _ => Ok(()),
    }
}
