//! Reads of shared state. They take a plain connection, so they answer from the local
//! SQLite file at once, with or without a relay (and, for the CLI, without a daemon).

use claudemesh_schema::ipc::page::Page;
use claudemesh_schema::ipc::shared::{
    Context, DigestResult, Memory, Reservation, Skill, StateEntry, Task,
};
use claudemesh_schema::op::{Op, OpBody};
use claudemesh_schema::{ItemId, MeshId, SessionId};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

use crate::store::{Result, StoreError};

/// An author as shown: the name its op claimed, and the member key that signed it (the
/// one part no other member can take; see [`claudemesh_schema::render::keyed`]).
pub(crate) fn by(name: String, key: &[u8]) -> String {
    match <[u8; 32]>::try_from(key) {
        Ok(k) => claudemesh_schema::render::keyed(&name, &claudemesh_schema::crypto::MemberKey(k)),
        Err(_) => name,
    }
}

/// Tables folded from the log, with the columns that order them.
pub(crate) const TABLES: &[(&str, &str)] = &[
    ("state_kv", "key"),
    ("memories", "id"),
    ("tasks", "id"),
    ("reservations", "id"),
    ("contexts", "id"),
    ("skills", "name"),
    ("reminders", "id"),
    ("key_epochs", "epoch"),
    ("mesh_relay", "mesh"),
    ("files", "id"),
    ("file_keys", "file, n"),
    ("mcp_servers", "name"),
];

/// Members whose writes this daemon does not show its sessions (grants: `state-write`
/// revoked, or blocked). The log and the fold are unchanged; only reads here filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hidden(Vec<String>);

impl Hidden {
    pub(crate) fn new(
        members: impl IntoIterator<Item = claudemesh_schema::crypto::MemberKey>,
    ) -> Self {
        Self(
            members
                .into_iter()
                .map(|m| claudemesh_schema::crypto::hex(&m.0).to_uppercase())
                .collect(),
        )
    }

    /// ` AND hex(col) NOT IN (…)`, or nothing. Hex digits only: safe to splice into SQL.
    fn sql(&self, col: &str) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let list: Vec<String> = self.0.iter().map(|h| format!("'{h}'")).collect();
        format!(" AND hex({col}) NOT IN ({})", list.join(", "))
    }
}

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn item(v: Vec<u8>) -> Result<ItemId> {
    ItemId::from_slice(&v).ok_or(StoreError::Corrupt("item id"))
}

/// Own writes not yet sequenced, oldest first.
pub(crate) fn q_pending(conn: &Connection, mesh: MeshId) -> Result<Vec<OpBody>> {
    let mut stmt = conn.prepare_cached("SELECT body FROM op_outbox WHERE mesh = ?1 ORDER BY n")?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(b) = serde_json::from_str::<OpBody>(&row?) {
            out.push(b);
        }
    }
    Ok(out)
}

/// A page of keys: `key` exactly, or those starting with `prefix`, in key order after
/// `after` (the last key of the previous page), with own pending writes on top.
///
/// The folded rows are read lazily in key order from the lower bound (a primary-key range,
/// so a page costs what it holds, not what the table holds) and merged with the pending
/// overlay, which is small: the outbox of one daemon.
pub(crate) fn q_state(
    conn: &Connection,
    mesh: MeshId,
    key: Option<&str>,
    prefix: Option<&str>,
    hidden: &Hidden,
    after: Option<&str>,
    page: &Page,
) -> Result<(Vec<StateEntry>, Option<String>)> {
    let range = key.or(prefix).unwrap_or("");
    let exact = key.is_some();
    // Keys with the prefix form one run starting at it: the scan starts at the prefix or
    // just after the cursor, whichever is later, and stops at the first key out of it.
    let (lower, strict) = match after {
        Some(a) if a >= range => (a, true),
        _ => (range, false),
    };
    let in_range = |k: &str| {
        if exact {
            k == range
        } else {
            k.starts_with(range)
        }
    };
    let past = |k: &str| if strict { k > lower } else { k >= lower };
    let wanted = |k: &str| in_range(k) && past(k);

    // Own writes not yet sequenced, in write order: the last one per key stands.
    let mut overlay: BTreeMap<String, Option<StateEntry>> = BTreeMap::new();
    for b in q_pending(conn, mesh)? {
        if let Op::SetState { key: k, value } = b.op
            && wanted(&k)
        {
            let e = (!value.is_null()).then(|| StateEntry {
                key: k.clone(),
                value,
                updated_by: b.name,
                updated_at: b.at,
                pending: true,
            });
            overlay.insert(k, e);
        }
    }
    let mut overlay = overlay.into_iter().peekable();

    let h = hidden.sql("author");
    let cmp = if strict { ">" } else { ">=" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT key, value, author_name, updated_at, author FROM state_kv
         WHERE mesh = ?1 AND key {cmp} ?2{h} ORDER BY key"
    ))?;
    let mut rows = stmt.query(params![mesh.as_bytes(), lower])?;
    let mut next_row = || -> Result<Option<StateEntry>> {
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let k: String = r.get(0)?;
        if !in_range(&k) {
            return Ok(None);
        }
        let value = serde_json::from_str(&r.get::<_, String>(1)?)
            .map_err(|_| StoreError::Corrupt("state value"))?;
        Ok(Some(StateEntry {
            key: k,
            value,
            updated_by: by(r.get(2)?, &r.get::<_, Vec<u8>>(4)?),
            updated_at: r.get(3)?,
            pending: false,
        }))
    };
    let mut pager = page.pager();
    let mut row = next_row()?;
    loop {
        // The smaller key of the next row and the next pending write; a pending write
        // replaces the row of its key (or hides it, for a delete).
        let pending_first = match (&row, overlay.peek()) {
            (None, None) => break,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(r), Some((k, _))) => k.as_str() <= r.key.as_str(),
        };
        let entry = if pending_first {
            let Some((k, e)) = overlay.next() else { break };
            if row.as_ref().is_some_and(|r| r.key == k) {
                row = next_row()?;
            }
            e
        } else {
            let e = row.take();
            row = next_row()?;
            e
        };
        if let Some(e) = entry
            && !pager.push(e)
        {
            break;
        }
    }
    Ok(pager.finish(|e| e.key.clone()))
}

/// Turn words into an FTS5 query: each word a quoted term (stemmed by the index's porter
/// tokenizer, so `deploys` finds `deploy`), any of them matching; bm25 ranks memories
/// matching more and rarer words first.
fn fts_query(q: &str) -> Option<String> {
    let words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .take(32)
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" OR "))
}

/// Where a recall page ends: the last memory's rank (bm25, lower is better) or creation
/// time, and its local row number as the tie-break.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) enum RecallAt {
    /// After this bm25 rank and row, with a query.
    Rank(f64, i64),
    /// Older than this creation time and row, without one.
    Newest(i64, i64),
}

/// Memories matching `query` (best first) or, with no words, the newest; only those
/// carrying every tag in `tags`; at most `limit`, after `after`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn q_recall(
    conn: &Connection,
    mesh: MeshId,
    query: &str,
    tags: &[String],
    limit: u32,
    hidden: &Hidden,
    after: Option<RecallAt>,
) -> Result<(Vec<Memory>, Option<String>)> {
    let h = hidden.sql("m.author");
    let tags = serde_json::to_string(tags).unwrap_or_else(|_| "[]".into());
    // Memories this daemon has forgotten, not yet sequenced: already gone for its sessions.
    let forgotten = Hidden(
        q_pending(conn, mesh)?
            .into_iter()
            .filter_map(|b| match b.op {
                Op::Forget { memory } => {
                    Some(claudemesh_schema::crypto::hex(memory.as_bytes()).to_uppercase())
                }
                _ => None,
            })
            .collect(),
    );
    let h = format!("{h}{}", forgotten.sql("m.id"));
    let tag_filter = "NOT EXISTS (SELECT 1 FROM json_each(?3) t
                       WHERE t.value NOT IN (SELECT value FROM json_each(m.tags)))";
    let row = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            by(r.get(3)?, &r.get::<_, Vec<u8>>(7)?),
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, f64>(6)?,
            r.get::<_, i64>(8)?,
        ))
    };
    // One more than the limit: it tells whether another page follows.
    let fetch = i64::from(limit) + 1;
    let rows: Vec<_> = match fts_query(query) {
        Some(q) => {
            let (rank, n) = match after {
                Some(RecallAt::Rank(r, n)) => (Some(r), n),
                _ => (None, 0),
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT * FROM (
                   SELECT m.id, m.text, m.tags, m.author_name, m.created_at, m.seq,
                          bm25(memories_fts) AS rank, m.author, m.n
                   FROM memories_fts JOIN memories m ON m.n = memories_fts.rowid
                   WHERE memories_fts MATCH ?1 AND m.mesh = ?2 AND {tag_filter}{h})
                 WHERE ?5 IS NULL OR rank > ?5 OR (rank = ?5 AND n > ?6)
                 ORDER BY rank, n LIMIT ?4"
            ))?;
            stmt.query_map(params![q, mesh.as_bytes(), tags, fetch, rank, n], row)?
                .collect::<rusqlite::Result<_>>()?
        }
        None => {
            let mut stmt;
            let rows = match after {
                Some(RecallAt::Newest(at, n)) => {
                    stmt = conn.prepare_cached(&format!(
                        "SELECT m.id, m.text, m.tags, m.author_name, m.created_at, m.seq, 0.0,
                                m.author, m.n
                         FROM memories m WHERE ?1 IS NULL AND m.mesh = ?2 AND {tag_filter}{h}
                           AND m.created_at <= ?5 AND (m.created_at < ?5 OR m.n < ?6)
                         ORDER BY m.created_at DESC, m.n DESC LIMIT ?4"
                    ))?;
                    stmt.query_map(
                        params![Option::<String>::None, mesh.as_bytes(), tags, fetch, at, n],
                        row,
                    )?
                }
                _ => {
                    stmt = conn.prepare_cached(&format!(
                        "SELECT m.id, m.text, m.tags, m.author_name, m.created_at, m.seq, 0.0,
                                m.author, m.n
                         FROM memories m WHERE ?1 IS NULL AND m.mesh = ?2 AND {tag_filter}{h}
                         ORDER BY m.created_at DESC, m.n DESC LIMIT ?4"
                    ))?;
                    stmt.query_map(
                        params![Option::<String>::None, mesh.as_bytes(), tags, fetch],
                        row,
                    )?
                }
            };
            rows.collect::<rusqlite::Result<_>>()?
        }
    };
    let ranked = fts_query(query).is_some();
    let mut pager = Page::first(limit).pager();
    for (id, text, tags, author, created_at, seq, rank, n) in rows {
        let m = Memory {
            id: item(id)?,
            text,
            tags: json_list(&tags),
            author,
            created_at,
            // bm25 is lower for better matches; the score is higher for them.
            score: if ranked { -rank } else { 0.0 },
            pending: seq.is_none(),
        };
        let at = if ranked {
            RecallAt::Rank(rank, n)
        } else {
            RecallAt::Newest(created_at, n)
        };
        if !pager.push((at, m)) {
            break;
        }
    }
    let (items, next) = pager.finish(|(at, _)| *at);
    Ok((items.into_iter().map(|(_, m)| m).collect(), next))
}

const TASK_COLS: &str = "id, title, body, priority, tags, status, assignee_name, assignee,
    suggested, result, author_name, created_at, updated_at, seq, author, assignee_member";

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, Task)> {
    let assignee_id: Option<Vec<u8>> = r.get(7)?;
    Ok((
        r.get(0)?,
        Task {
            id: ItemId::from_bytes([0; 16]),
            title: r.get(1)?,
            body: r.get(2)?,
            priority: r.get(3)?,
            tags: json_list(&r.get::<_, String>(4)?),
            status: r.get(5)?,
            assignee: r.get::<_, Option<String>>(6)?.map(|n| {
                match r.get::<_, Option<Vec<u8>>>(15) {
                    Ok(Some(k)) => by(n.clone(), &k),
                    _ => n,
                }
            }),
            assignee_id: assignee_id.and_then(|v| SessionId::from_slice(&v)),
            suggested: r.get(8)?,
            result: r.get(9)?,
            created_by: by(r.get(10)?, &r.get::<_, Vec<u8>>(14)?),
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            pending: r.get::<_, Option<i64>>(13)?.is_none(),
        },
    ))
}

/// A page of tasks, newest first (creation time, then id), filtered by status and by
/// assignee (or suggested assignee); after `after`, the last (creation time, id) given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn q_tasks(
    conn: &Connection,
    mesh: MeshId,
    status: Option<&str>,
    assignee: Option<&str>,
    hidden: &Hidden,
    after: Option<(i64, ItemId)>,
    page: &Page,
) -> Result<(Vec<Task>, Option<String>)> {
    let h = hidden.sql("author");
    // The cursor is a range on the `tasks_newest` index, so a page reads only its rows.
    let resume = if after.is_some() {
        " AND created_at <= ?4 AND (created_at < ?4 OR id > ?5)"
    } else {
        " AND ?4 IS NULL AND ?5 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TASK_COLS} FROM tasks WHERE mesh = ?1
           AND (?2 IS NULL OR status = ?2)
           AND (?3 IS NULL OR assignee_name = ?3 OR (assignee_name IS NULL AND suggested = ?3)){h}
           {resume}
         ORDER BY created_at DESC, id"
    ))?;
    let (at, id) = after.map(|(a, i)| (a, i.as_bytes().to_vec())).unzip();
    let rows = stmt.query_map(params![mesh.as_bytes(), status, assignee, at, id], task_row)?;
    let mut pager = page.pager();
    for row in rows {
        let (id, mut t) = row?;
        t.id = item(id)?;
        if !pager.push(t) {
            break;
        }
    }
    Ok(pager.finish(|t| (t.created_at, t.id)))
}

/// One task.
pub(crate) fn q_task(conn: &Connection, mesh: MeshId, id: ItemId) -> Result<Option<Task>> {
    let r = conn
        .prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE mesh = ?1 AND id = ?2"
        ))?
        .query_row(params![mesh.as_bytes(), id.as_bytes()], task_row)
        .optional()?;
    Ok(r.map(|(_, mut t)| {
        t.id = id;
        t
    }))
}

/// Ids in `table` of `mesh` whose hex form starts with `prefix` (hyphens ignored).
pub(crate) fn q_ids_like(
    conn: &Connection,
    table: &'static str,
    mesh: MeshId,
    prefix: &str,
) -> Result<Vec<ItemId>> {
    let p: String = prefix
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    if p.is_empty() || !p.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id FROM {table} WHERE mesh = ?1 AND hex(id) LIKE ?2 || '%' LIMIT 2"
    ))?;
    let rows = stmt.query_map(params![mesh.as_bytes(), p], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|r| item(r?)).collect()
}

/// Last applied sequence and chain hash.
pub(crate) fn q_head(conn: &Connection, mesh: MeshId) -> Result<Option<(u64, [u8; 32])>> {
    let r = conn
        .prepare_cached("SELECT seq, hash FROM op_heads WHERE mesh = ?1")?
        .query_row(params![mesh.as_bytes()], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    match r {
        None => Ok(None),
        Some((seq, h)) => {
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| StoreError::Corrupt("op chain hash"))?;
            Ok(Some((seq, h)))
        }
    }
}

/// A hash of every sequenced row of the folded tables, and their counts. Equal on every
/// member that applied the same log.
pub(crate) fn q_digest(conn: &Connection, mesh: MeshId) -> Result<DigestResult> {
    let mut h = blake3::Hasher::new();
    let mut counts = BTreeMap::new();
    for (table, order) in TABLES {
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM {table} WHERE mesh = ?1 AND seq IS NOT NULL ORDER BY {order}"
        ))?;
        // `memories.n` is a local rowid, not state.
        let skip: Vec<usize> = stmt
            .column_names()
            .iter()
            .enumerate()
            .filter(|(_, n)| **n == "n")
            .map(|(i, _)| i)
            .collect();
        let ncols = stmt.column_count();
        let mut rows = stmt.query(params![mesh.as_bytes()])?;
        let mut n = 0u64;
        h.update(table.as_bytes());
        while let Some(r) = rows.next()? {
            n += 1;
            for i in (0..ncols).filter(|i| !skip.contains(i)) {
                match r.get_ref(i)? {
                    ValueRef::Null => h.update(&[0]),
                    ValueRef::Integer(v) => h.update(&[1]).update(&v.to_le_bytes()),
                    ValueRef::Real(v) => h.update(&[2]).update(&v.to_le_bytes()),
                    ValueRef::Text(t) => h
                        .update(&[3])
                        .update(&(t.len() as u64).to_le_bytes())
                        .update(t),
                    ValueRef::Blob(b) => h
                        .update(&[4])
                        .update(&(b.len() as u64).to_le_bytes())
                        .update(b),
                };
            }
        }
        counts.insert((*table).to_string(), n);
    }
    // The roster floor decides how later ops fold: part of the state.
    let floor: Option<i64> = conn
        .query_row(
            "SELECT roster_floor FROM op_heads WHERE mesh = ?1",
            params![mesh.as_bytes()],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    h.update(b"roster_floor");
    match floor {
        None => h.update(&[0]),
        Some(f) => h.update(&[1]).update(&f.to_le_bytes()),
    };
    let pending: i64 = conn.query_row(
        "SELECT count(*) FROM op_outbox WHERE mesh = ?1",
        params![mesh.as_bytes()],
        |r| r.get(0),
    )?;
    Ok(DigestResult {
        mesh,
        seq: q_head(conn, mesh)?.map(|x| x.0).unwrap_or(0),
        digest: h.finalize().to_hex().to_string(),
        pending: pending as u64,
        counts,
    })
}

/// A page of reservations, oldest first (creation time, then id); with `all`, also
/// released, expired and refused ones.
pub(crate) fn q_reservations(
    conn: &Connection,
    mesh: MeshId,
    all: bool,
    now: i64,
    after: Option<(i64, ItemId)>,
    page: &Page,
) -> Result<(Vec<Reservation>, Option<String>)> {
    let resume = if after.is_some() {
        " AND created_at >= ?3 AND (created_at > ?3 OR id > ?4)"
    } else {
        " AND ?3 IS NULL AND ?4 IS NULL"
    };
    // Lapsed ones are filtered here, not after the page is cut, so a page is never short
    // for having held them.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, author_name, session, patterns, exclusive, reason, created_at, expires_at,
                status, conflict, author
         FROM reservations WHERE mesh = ?1
           AND (?2 OR (status = 'active' AND expires_at > ?5)){resume}
         ORDER BY created_at, id"
    ))?;
    let (at, id) = after.map(|(a, i)| (a, i.as_bytes().to_vec())).unzip();
    let rows = stmt.query_map(params![mesh.as_bytes(), all, at, id, now], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            by(r.get(1)?, &r.get::<_, Vec<u8>>(10)?),
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, Option<String>>(9)?,
        ))
    })?;
    let mut pager = page.pager();
    for row in rows {
        let (id, holder, session, patterns, exclusive, reason, created_at, expires_at, st, c) =
            row?;
        let status = if st == "active" && expires_at <= now {
            "expired".to_string()
        } else {
            st
        };
        let r = Reservation {
            id: item(id)?,
            holder,
            holder_id: SessionId::from_slice(&session).ok_or(StoreError::Corrupt("session id"))?,
            patterns: json_list(&patterns),
            exclusive,
            reason,
            created_at,
            expires_at,
            status,
            conflict: c,
        };
        if !pager.push(r) {
            break;
        }
    }
    Ok(pager.finish(|r| (r.created_at, r.id)))
}

/// A page of contexts, newest first (creation time, then id), optionally only those
/// mentioning `q` (case-insensitive).
pub(crate) fn q_contexts(
    conn: &Connection,
    mesh: MeshId,
    q: Option<&str>,
    hidden: &Hidden,
    after: Option<(i64, ItemId)>,
    page: &Page,
) -> Result<(Vec<Context>, Option<String>)> {
    let h = hidden.sql("author");
    let resume = if after.is_some() {
        " AND created_at <= ?3 AND (created_at < ?3 OR id > ?4)"
    } else {
        " AND ?3 IS NULL AND ?4 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, author_name, summary, files_read, key_findings, tags, created_at, seq, author
         FROM contexts WHERE mesh = ?1
           AND (?2 IS NULL OR instr(lower(summary || ' ' || files_read || ' ' || key_findings
                || ' ' || tags), lower(?2)) > 0){h}{resume}
         ORDER BY created_at DESC, id"
    ))?;
    let (at, id) = after.map(|(a, i)| (a, i.as_bytes().to_vec())).unzip();
    let rows = stmt.query_map(params![mesh.as_bytes(), q, at, id], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            by(r.get(1)?, &r.get::<_, Vec<u8>>(8)?),
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    let mut pager = page.pager();
    for row in rows {
        let (id, author, summary, files, findings, tags, created_at, seq) = row?;
        let c = Context {
            id: item(id)?,
            author,
            summary,
            files_read: json_list(&files),
            key_findings: json_list(&findings),
            tags: json_list(&tags),
            created_at,
            pending: seq.is_none(),
        };
        if !pager.push(c) {
            break;
        }
    }
    Ok(pager.finish(|c| (c.created_at, c.id)))
}

/// A page of skills by name, after `after`: one (`name`), or those mentioning `q`, or all.
pub(crate) fn q_skills(
    conn: &Connection,
    mesh: MeshId,
    name: Option<&str>,
    q: Option<&str>,
    hidden: &Hidden,
    after: Option<&str>,
    page: &Page,
) -> Result<(Vec<Skill>, Option<String>)> {
    let h = hidden.sql("author");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT name, description, instructions, tags, when_to_use, author_name, updated_at, author
         FROM skills WHERE mesh = ?1 AND (?2 IS NULL OR name = ?2)
           AND (?3 IS NULL OR instr(lower(name || ' ' || description || ' ' || tags || ' '
                || when_to_use), lower(?3)) > 0){h}
           AND name > ?4
         ORDER BY name"
    ))?;
    let rows = stmt.query_map(
        params![mesh.as_bytes(), name, q, after.unwrap_or("")],
        |r| {
            Ok(Skill {
                name: r.get(0)?,
                description: r.get(1)?,
                instructions: r.get(2)?,
                tags: json_list(&r.get::<_, String>(3)?),
                when_to_use: r.get(4)?,
                author: by(r.get(5)?, &r.get::<_, Vec<u8>>(7)?),
                updated_at: r.get(6)?,
            })
        },
    )?;
    let mut pager = page.pager();
    for row in rows {
        if !pager.push(row?) {
            break;
        }
    }
    Ok(pager.finish(|s| s.name.clone()))
}

/// Items per folded table (pending own items included), the applied head, and own writes
/// not yet sequenced: cheap counts for `status` and `mesh_info`.
pub(crate) fn q_counts(
    conn: &Connection,
    mesh: MeshId,
) -> Result<(BTreeMap<String, u64>, u64, u64)> {
    let mut counts = BTreeMap::new();
    for (table, _) in TABLES {
        // Key boxes are part of their file, not items of their own.
        if *table == "file_keys" {
            continue;
        }
        let live = match *table {
            "reservations" => " AND status = 'active'",
            "reminders" => " AND status = 'scheduled'",
            "tasks" => " AND status != 'done'",
            _ => "",
        };
        let n: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {table} WHERE mesh = ?1{live}"),
            params![mesh.as_bytes()],
            |r| r.get(0),
        )?;
        let name = if *table == "state_kv" { "state" } else { table };
        counts.insert(name.to_string(), n as u64);
    }
    let pending: i64 = conn.query_row(
        "SELECT count(*) FROM op_outbox WHERE mesh = ?1",
        params![mesh.as_bytes()],
        |r| r.get(0),
    )?;
    let head = q_head(conn, mesh)?.map(|h| h.0).unwrap_or(0);
    Ok((counts, head, pending as u64))
}
