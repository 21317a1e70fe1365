//! Reads of shared state. They take a plain connection, so they answer from the local
//! SQLite file at once, with or without a relay (and, for the CLI, without a daemon).

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

/// Keys equal to `key`, or starting with `prefix`, with own pending writes on top.
pub(crate) fn q_state(
    conn: &Connection,
    mesh: MeshId,
    key: Option<&str>,
    prefix: Option<&str>,
    hidden: &Hidden,
) -> Result<Vec<StateEntry>> {
    let wanted = |k: &str| key.is_none_or(|x| x == k) && prefix.is_none_or(|p| k.starts_with(p));
    let mut out: BTreeMap<String, StateEntry> = BTreeMap::new();
    // One key is a primary-key lookup (its own statement, so the planner uses the index);
    // a prefix scans from the prefix on.
    let h = hidden.sql("author");
    let mut stmt = match key {
        Some(_) => conn.prepare_cached(&format!(
            "SELECT key, value, author_name, updated_at, author FROM state_kv
             WHERE mesh = ?1 AND key = ?2 AND ?3 IS NULL{h}"
        ))?,
        None => conn.prepare_cached(&format!(
            "SELECT key, value, author_name, updated_at, author FROM state_kv
             WHERE mesh = ?1 AND ?2 IS NULL AND key >= COALESCE(?3, '')
               AND (?3 IS NULL OR substr(key, 1, length(?3)) = ?3){h}
             ORDER BY key"
        ))?,
    };
    let rows = stmt.query_map(params![mesh.as_bytes(), key, prefix], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            by(r.get(2)?, &r.get::<_, Vec<u8>>(4)?),
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (k, v, by, at) = row?;
        if !wanted(&k) {
            continue;
        }
        let value = serde_json::from_str(&v).map_err(|_| StoreError::Corrupt("state value"))?;
        out.insert(
            k.clone(),
            StateEntry {
                key: k,
                value,
                updated_by: by,
                updated_at: at,
                pending: false,
            },
        );
    }
    for b in q_pending(conn, mesh)? {
        if let Op::SetState { key: k, value } = b.op
            && wanted(&k)
        {
            if value.is_null() {
                out.remove(&k);
            } else {
                out.insert(
                    k.clone(),
                    StateEntry {
                        key: k,
                        value,
                        updated_by: b.name,
                        updated_at: b.at,
                        pending: true,
                    },
                );
            }
        }
    }
    Ok(out.into_values().collect())
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

/// Memories matching `query` (best first) or, with no words, the newest; only those
/// carrying every tag in `tags`.
pub(crate) fn q_recall(
    conn: &Connection,
    mesh: MeshId,
    query: &str,
    tags: &[String],
    limit: u32,
    hidden: &Hidden,
) -> Result<Vec<Memory>> {
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
        ))
    };
    let rows: Vec<_> = match fts_query(query) {
        Some(q) => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT m.id, m.text, m.tags, m.author_name, m.created_at, m.seq,
                        -bm25(memories_fts) AS score, m.author
                 FROM memories_fts JOIN memories m ON m.n = memories_fts.rowid
                 WHERE memories_fts MATCH ?1 AND m.mesh = ?2 AND {tag_filter}{h}
                 ORDER BY bm25(memories_fts) LIMIT ?4"
            ))?;
            stmt.query_map(params![q, mesh.as_bytes(), tags, limit], row)?
                .collect::<rusqlite::Result<_>>()?
        }
        None => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT m.id, m.text, m.tags, m.author_name, m.created_at, m.seq, 0.0, m.author
                 FROM memories m WHERE ?1 IS NULL AND m.mesh = ?2 AND {tag_filter}{h}
                 ORDER BY m.created_at DESC, m.n DESC LIMIT ?4"
            ))?;
            stmt.query_map(
                params![Option::<String>::None, mesh.as_bytes(), tags, limit],
                row,
            )?
            .collect::<rusqlite::Result<_>>()?
        }
    };
    rows.into_iter()
        .map(|(id, text, tags, author, created_at, seq, score)| {
            Ok(Memory {
                id: item(id)?,
                text,
                tags: json_list(&tags),
                author,
                created_at,
                score,
                pending: seq.is_none(),
            })
        })
        .collect()
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

/// Tasks, newest first, filtered by status and by assignee (or suggested assignee).
pub(crate) fn q_tasks(
    conn: &Connection,
    mesh: MeshId,
    status: Option<&str>,
    assignee: Option<&str>,
    hidden: &Hidden,
) -> Result<Vec<Task>> {
    let h = hidden.sql("author");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TASK_COLS} FROM tasks WHERE mesh = ?1
           AND (?2 IS NULL OR status = ?2)
           AND (?3 IS NULL OR assignee_name = ?3 OR (assignee_name IS NULL AND suggested = ?3)){h}
         ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt.query_map(params![mesh.as_bytes(), status, assignee], task_row)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, mut t) = row?;
        t.id = item(id)?;
        out.push(t);
    }
    Ok(out)
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

/// Reservations, oldest first; with `all`, also released, expired and refused ones.
pub(crate) fn q_reservations(
    conn: &Connection,
    mesh: MeshId,
    all: bool,
    now: i64,
) -> Result<Vec<Reservation>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, author_name, session, patterns, exclusive, reason, created_at, expires_at,
                status, conflict, author
         FROM reservations WHERE mesh = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
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
    let mut out = Vec::new();
    for row in rows {
        let (id, holder, session, patterns, exclusive, reason, created_at, expires_at, st, c) =
            row?;
        let status = if st == "active" && expires_at <= now {
            "expired".to_string()
        } else {
            st
        };
        if !all && status != "active" {
            continue;
        }
        out.push(Reservation {
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
        });
    }
    Ok(out)
}

/// Contexts, newest first, optionally only those mentioning `q` (case-insensitive).
pub(crate) fn q_contexts(
    conn: &Connection,
    mesh: MeshId,
    q: Option<&str>,
    hidden: &Hidden,
) -> Result<Vec<Context>> {
    let h = hidden.sql("author");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, author_name, summary, files_read, key_findings, tags, created_at, seq, author
         FROM contexts WHERE mesh = ?1
           AND (?2 IS NULL OR instr(lower(summary || ' ' || files_read || ' ' || key_findings
                || ' ' || tags), lower(?2)) > 0){h}
         ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt.query_map(params![mesh.as_bytes(), q], |r| {
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
    let mut out = Vec::new();
    for row in rows {
        let (id, author, summary, files, findings, tags, created_at, seq) = row?;
        out.push(Context {
            id: item(id)?,
            author,
            summary,
            files_read: json_list(&files),
            key_findings: json_list(&findings),
            tags: json_list(&tags),
            created_at,
            pending: seq.is_none(),
        });
    }
    Ok(out)
}

/// Skills by name: one (`name`), or those mentioning `q`, or all.
pub(crate) fn q_skills(
    conn: &Connection,
    mesh: MeshId,
    name: Option<&str>,
    q: Option<&str>,
    hidden: &Hidden,
) -> Result<Vec<Skill>> {
    let h = hidden.sql("author");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT name, description, instructions, tags, when_to_use, author_name, updated_at, author
         FROM skills WHERE mesh = ?1 AND (?2 IS NULL OR name = ?2)
           AND (?3 IS NULL OR instr(lower(name || ' ' || description || ' ' || tags || ' '
                || when_to_use), lower(?3)) > 0){h}
         ORDER BY name"
    ))?;
    let rows = stmt.query_map(params![mesh.as_bytes(), name, q], |r| {
        Ok(Skill {
            name: r.get(0)?,
            description: r.get(1)?,
            instructions: r.get(2)?,
            tags: json_list(&r.get::<_, String>(3)?),
            when_to_use: r.get(4)?,
            author: by(r.get(5)?, &r.get::<_, Vec<u8>>(7)?),
            updated_at: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Items per folded table (pending own items included), the applied head, and own writes
/// not yet sequenced: cheap counts for `status` and `mesh_info`.
pub(crate) fn q_counts(
    conn: &Connection,
    mesh: MeshId,
) -> Result<(BTreeMap<String, u64>, u64, u64)> {
    let mut counts = BTreeMap::new();
    for (table, _) in TABLES {
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
