//! Snapshots of the fold: capture the sequenced rows of every folded table right after an
//! op, and load them in place of replaying the log before it.
//!
//! A snapshot comes from another member, so loading treats it as input: only the folded
//! tables, only their real columns, the mesh column forced to this mesh, all in one
//! transaction with the new chain base.

use claudemesh_schema::MeshId;
use claudemesh_schema::encoding::{b64, unb64};
use claudemesh_schema::op::{SnapshotBody, SnapshotTable};
use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::{Transaction, params};
use serde_json::{Value, json};

use super::query::TABLES;

fn columns(tx: &Transaction<'_>, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare(&format!("PRAGMA table_info({table})"))?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // `memories.n` is a local rowid (the FTS index keys on it), not state.
    Ok(cols.into_iter().filter(|c| c != "n").collect())
}

fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!({ "i": i }),
        ValueRef::Real(r) => json!({ "r": r }),
        ValueRef::Text(t) => json!({ "t": String::from_utf8_lossy(t) }),
        ValueRef::Blob(b) => json!({ "b": b64(b) }),
    }
}

fn from_json(v: &Value) -> Option<Sql> {
    if v.is_null() {
        return Some(Sql::Null);
    }
    let o = v.as_object()?;
    if let Some(i) = o.get("i") {
        return i.as_i64().map(Sql::Integer);
    }
    if let Some(r) = o.get("r") {
        return r.as_f64().map(Sql::Real);
    }
    if let Some(t) = o.get("t") {
        return t.as_str().map(|s| Sql::Text(s.to_string()));
    }
    o.get("b")?
        .as_str()
        .and_then(|s| unb64(s).ok())
        .map(Sql::Blob)
}

/// The sequenced rows of every folded table of `mesh`, as of now (inside the transaction
/// that applied `seq`).
pub(crate) fn capture(
    tx: &Transaction<'_>,
    mesh: MeshId,
    seq: u64,
    hash: [u8; 32],
    roster_floor: Option<u64>,
) -> rusqlite::Result<SnapshotBody> {
    let mut tables = Vec::new();
    for (table, order) in TABLES {
        let cols = columns(tx, table)?;
        let mut stmt = tx.prepare(&format!(
            "SELECT {} FROM {table} WHERE mesh = ?1 AND seq IS NOT NULL ORDER BY {order}",
            cols.join(", ")
        ))?;
        let mut rows = stmt.query(params![mesh.as_bytes()])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(cols.len());
            for i in 0..cols.len() {
                row.push(to_json(r.get_ref(i)?));
            }
            out.push(row);
        }
        tables.push(SnapshotTable {
            name: (*table).to_string(),
            columns: cols,
            rows: out,
        });
    }
    Ok(SnapshotBody {
        mesh,
        seq,
        hash,
        tables,
        roster_floor,
    })
}

/// Why a snapshot cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("snapshot is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Replace the sequenced rows of `mesh` with the snapshot's, and restart the chain from it.
/// Own writes not yet sequenced stay.
pub(crate) fn load(
    tx: &Transaction<'_>,
    mesh: MeshId,
    body: &SnapshotBody,
) -> Result<(), LoadError> {
    let bad = |m: String| LoadError::Malformed(m);
    // Every folded row of this mesh goes, own pending ones too (they come back when their
    // ops are sequenced): plain deletes keep the FTS index in step.
    for (table, _) in TABLES {
        tx.execute(
            &format!("DELETE FROM {table} WHERE mesh = ?1"),
            params![mesh.as_bytes()],
        )?;
    }
    for t in &body.tables {
        if !TABLES.iter().any(|(name, _)| *name == t.name) {
            // Written by a newer version: what this one does not fold, it cannot load.
            tracing::warn!(table = %t.name, "snapshot table unknown to this version; skipped");
            continue;
        }
        let real = columns(tx, &t.name)?;
        if let Some(c) = t.columns.iter().find(|c| !real.contains(c)) {
            return Err(bad(format!("unknown column {c:?} in {}", t.name)));
        }
        let Some(mesh_col) = t.columns.iter().position(|c| c == "mesh") else {
            return Err(bad(format!("{} has no mesh column", t.name)));
        };
        let Some(seq_col) = t.columns.iter().position(|c| c == "seq") else {
            return Err(bad(format!("{} has no seq column", t.name)));
        };
        let sql = format!(
            "INSERT OR REPLACE INTO {} ({}) VALUES ({})",
            t.name,
            t.columns.join(", "),
            vec!["?"; t.columns.len()].join(", ")
        );
        let mut stmt = tx.prepare(&sql)?;
        for row in &t.rows {
            if row.len() != t.columns.len() {
                return Err(bad(format!("a row of {} has the wrong width", t.name)));
            }
            let mut vals = Vec::with_capacity(row.len());
            for v in row {
                vals.push(from_json(v).ok_or_else(|| bad(format!("bad value in {}", t.name)))?);
            }
            vals[mesh_col] = Sql::Blob(mesh.as_bytes().to_vec());
            if !matches!(vals[seq_col], Sql::Integer(s) if s > 0 && s as u64 <= body.seq) {
                return Err(bad(format!("a row of {} has no valid seq", t.name)));
            }
            stmt.execute(rusqlite::params_from_iter(vals))?;
        }
    }
    tx.execute(
        "DELETE FROM op_log WHERE mesh = ?1 AND seq <= ?2",
        params![mesh.as_bytes(), body.seq as i64],
    )?;
    tx.execute(
        "INSERT INTO op_heads (mesh, seq, hash, base_seq, base_hash, roster_floor)
         VALUES (?1, ?2, ?3, ?2, ?3, ?4)
         ON CONFLICT (mesh) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
           base_seq = excluded.base_seq, base_hash = excluded.base_hash,
           roster_floor = excluded.roster_floor",
        params![
            mesh.as_bytes(),
            body.seq as i64,
            body.hash,
            body.roster_floor.map(|f| f.min(i64::MAX as u64) as i64)
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudemesh_relay::sqlite::{self, Durability};

    fn body(name: &str, columns: &[&str], row: Vec<Value>) -> SnapshotBody {
        SnapshotBody {
            mesh: MeshId::new(),
            seq: 3,
            hash: [1; 32],
            tables: vec![SnapshotTable {
                name: name.into(),
                columns: columns.iter().map(|c| c.to_string()).collect(),
                rows: vec![row],
            }],
            roster_floor: None,
        }
    }

    #[test]
    fn a_snapshot_cannot_name_other_tables_or_columns_or_other_meshes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sqlite::open(
            &dir.path().join("d.db"),
            claudemesh_schema::migrations::DAEMON,
            Durability::Normal,
        )
        .unwrap();
        let tx = c.transaction().unwrap();
        let mesh = MeshId::new();
        // A table this version does not fold is skipped, never written.
        load(&tx, mesh, &body("op_outbox", &["mesh"], vec![Value::Null])).unwrap();
        for (b, want) in [
            (
                body(
                    "state_kv",
                    &["mesh", "key) VALUES (1); DROP TABLE x; --"],
                    vec![],
                ),
                "unknown column",
            ),
            (
                body("state_kv", &["key"], vec![json!({"t": "k"})]),
                "no mesh column",
            ),
            (
                body("state_kv", &["mesh", "seq"], vec![Value::Null]),
                "wrong width",
            ),
            (
                body(
                    "state_kv",
                    &["mesh", "seq"],
                    vec![Value::Null, json!({"x": 1})],
                ),
                "bad value",
            ),
            (
                body("state_kv", &["mesh", "seq"], vec![Value::Null, Value::Null]),
                "no valid seq",
            ),
            (
                body(
                    "state_kv",
                    &["mesh", "seq"],
                    vec![Value::Null, json!({"i": 99})],
                ),
                "no valid seq",
            ),
        ] {
            let e = load(&tx, mesh, &b).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        // Rows land in this mesh whatever mesh they name.
        let b = body(
            "state_kv",
            &[
                "mesh",
                "key",
                "value",
                "author",
                "author_name",
                "updated_at",
                "seq",
            ],
            vec![
                json!({"b": b64(MeshId::new().as_bytes())}),
                json!({"t": "k"}),
                json!({"t": "1"}),
                json!({"b": b64(&[0; 32])}),
                json!({"t": "ann"}),
                json!({"i": 5}),
                json!({"i": 3}),
            ],
        );
        load(&tx, mesh, &b).unwrap();
        let n: i64 = tx
            .query_row(
                "SELECT count(*) FROM state_kv WHERE mesh = ?1",
                params![mesh.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}
