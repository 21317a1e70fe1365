//! SQLite plumbing shared by the relay and the daemon stores: opening with the right
//! pragmas, migrations tracked by `PRAGMA user_version`, and the single writer thread with
//! group commit.
//!
//! rusqlite is synchronous, so every write goes through one dedicated thread that owns the
//! only writable connection ([`Writer`]). It takes every job waiting in its queue, runs each
//! in its own savepoint inside one transaction, commits once, and only then reports each
//! job's result: a caller that sees `Ok` knows its write is committed (durable on power
//! loss with [`Durability::Full`], on process crash with [`Durability::Normal`]). Because
//! the queue is FIFO, a job's completion also implies every earlier job is committed.

use rusqlite::{Connection, OpenFlags, Transaction};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `synchronous=FULL`: a committed write survives power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a committed write survives a process crash.
    Normal,
}

/// A store could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// Opening or configuring the database file failed.
    #[error("failed to open database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A migration failed.
    #[error("failed to migrate database {path} to version {version}: {source}")]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The version being applied.
        version: usize,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The database is newer than this build.
    #[error(
        "database {path} has schema version {found}, newer than this build ({known}); \
         upgrade claudemesh"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: usize,
        /// Ours.
        known: usize,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] rusqlite::Error),
    /// The commit of a batch failed (disk full, I/O error); nothing in it was written.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The writer thread is gone (store closed).
    #[error("the database writer has stopped")]
    Closed,
}

fn configure(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each job of a batch runs in a savepoint; its statement journal stays in memory
    // instead of a temporary file the kernel must write (it was a fifth of the writer's
    // time under load).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(128);
    stable_plans(conn)?;
    Ok(())
}

/// Plans that do not depend on bound values (the query planner stability guarantee).
/// Without it SQLite marks a statement whose plan a bound value could change (any
/// `LIMIT ?`, say) for recompiling at every new binding, so a cached statement was
/// parsed and planned again on each use: a third of the daemon's time at 15,000 msg/s.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Open (creating if needed) a writable database, configure it and apply `migrations`.
pub fn open(
    path: &Path,
    migrations: &[&str],
    durability: Durability,
) -> Result<Connection, SqliteError> {
    let err = |source| SqliteError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(err)?;
    configure(&conn, durability).map_err(err)?;
    migrate(&mut conn, path, migrations)?;
    Ok(conn)
}

/// Open an extra read-only connection (WAL lets it read while the writer writes).
pub fn open_reader(path: &Path) -> Result<Connection, SqliteError> {
    let err = |source| SqliteError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    // Every query of a hot path stays prepared (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(128);
    stable_plans(&conn).map_err(err)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), SqliteError> {
    let current: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|source| SqliteError::Open {
            path: path.to_path_buf(),
            source,
        })? as usize;
    if current > migrations.len() {
        return Err(SqliteError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known: migrations.len(),
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(current) {
        let version = i + 1;
        let err = |source| SqliteError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A queued write: run with the batch's transaction, or told why it could not run (then it
/// reports failure to its caller; no job is ever dropped silently).
type Job = Box<dyn FnOnce(Result<&Transaction<'_>, String>) -> (bool, Completion) + Send>;

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

/// Handle to the writer thread. Cloneable; the thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Start the writer thread owning `conn`.
    pub fn spawn(
        mut conn: Connection,
        name: &str,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut said = None;
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    run_batch(&mut conn, batch, &mut said);
                }
            })?;
        Ok((Self { tx }, handle))
    }

    /// Run `f` in the writer's next transaction and return its result once committed.
    pub async fn call<R, F>(&self, f: F) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<R, SqliteError>>();
        self.call_then(f, move |r| {
            let _ = done_tx.send(r);
        })
        .await?;
        done_rx.await.map_err(|_| SqliteError::Closed)?
    }

    /// Queue `f`; once its transaction commits (or fails), `done` runs on the writer thread
    /// with the result. `done` must be quick and must not block.
    pub async fn call_then<R, F, D>(&self, f: F, done: D) -> Result<(), SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
        D: FnOnce(Result<R, SqliteError>) + Send + 'static,
    {
        let job: Job = Box::new(move |tx| {
            let tx = match tx {
                Ok(tx) => tx,
                Err(e) => {
                    let c: Completion = Box::new(move |_| done(Err(SqliteError::Commit(e))));
                    return (false, c);
                }
            };
            let res = f(tx);
            let ok = res.is_ok();
            let c: Completion = Box::new(move |commit: Result<(), String>| {
                done(match (res, commit) {
                    (Ok(r), Ok(())) => Ok(r),
                    (Err(e), _) => Err(SqliteError::Query(e)),
                    (Ok(_), Err(e)) => Err(SqliteError::Commit(e)),
                });
            });
            (ok, c)
        });
        self.tx.send(job).await.map_err(|_| SqliteError::Closed)
    }

    /// Queue `f` without waiting for it; failures are logged.
    pub async fn submit<F>(&self, what: &'static str, f: F) -> Result<(), SqliteError>
    where
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    {
        let job: Job = Box::new(move |tx| {
            let tx = match tx {
                Ok(tx) => tx,
                Err(e) => {
                    tracing::warn!(what, error = %e, "store write not run");
                    let c: Completion = Box::new(|_| {});
                    return (false, c);
                }
            };
            let res = f(tx);
            let ok = res.is_ok();
            let c: Completion = Box::new(move |commit: Result<(), String>| {
                if let Err(e) = res {
                    tracing::warn!(what, error = %e, "store write failed");
                } else if let Err(e) = commit {
                    tracing::warn!(what, error = %e, "store commit failed");
                }
            });
            (ok, c)
        });
        self.tx.send(job).await.map_err(|_| SqliteError::Closed)
    }
}

/// A read to run on one of the reader threads.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// A fixed pool of reader threads, each with its own read-only connection: reads never
/// block the async runtime's workers, never spawn a thread each, and at most `n` run at
/// once (the rest wait in a bounded queue).
#[derive(Clone)]
pub struct Readers {
    tx: mpsc::Sender<ReadJob>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readers")
    }
}

impl Readers {
    /// Start `n` reader threads on the database at `path`.
    pub fn spawn(path: &Path, n: usize, name: &str) -> Result<Self, SqliteError> {
        let (tx, rx) = mpsc::channel::<ReadJob>(1024);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n.max(1) {
            let conn = open_reader(path)?;
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        // One thread waits for the next job at a time; the others run theirs.
                        let job = {
                            let mut g = rx.lock().unwrap_or_else(|p| p.into_inner());
                            g.blocking_recv()
                        };
                        match job {
                            Some(j) => j(&conn),
                            None => return,
                        }
                    }
                })
                .map_err(|e| SqliteError::Commit(format!("cannot start a reader thread: {e}")))?;
        }
        Ok(Self { tx })
    }

    /// Run `f` on a reader connection and return its result.
    pub async fn read<R, F>(&self, f: F) -> Result<R, SqliteError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> R + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<R>();
        let job: ReadJob = Box::new(move |c| {
            let _ = done_tx.send(f(c));
        });
        self.tx.send(job).await.map_err(|_| SqliteError::Closed)?;
        done_rx.await.map_err(|_| SqliteError::Closed)
    }
}

/// Commit failures are said at most once a minute (a full disk fails most batches until
/// space is freed; each caller hears its own failure): `said` is when one was last said.
fn run_batch(conn: &mut Connection, batch: Vec<Job>, said: &mut Option<std::time::Instant>) {
    let mut completions = Vec::with_capacity(batch.len());
    // IMMEDIATE: take the write lock up front (waiting for it under the busy timeout). A
    // deferred batch that read first would fail at once with SQLITE_BUSY when another
    // connection (`claudemesh-relay token create`, the relay's token check) committed in
    // between.
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            if say_now(said) {
                tracing::error!(error = %e, "cannot begin a store transaction (said at most once a minute)");
            }
            let msg = format!("cannot begin a transaction: {e}");
            for job in batch {
                let (_, c) = job(Err(msg.clone()));
                c(Err(msg.clone()));
            }
            return;
        }
    };
    for job in batch {
        // Each job in its own savepoint, so one failing job does not undo the others.
        if let Err(e) = run_cached(&tx, &["SAVEPOINT job"]) {
            let msg = format!("cannot open a savepoint: {e}");
            let (_, c) = job(Err(msg.clone()));
            completions.push(c);
            continue;
        }
        let (ok, completion) = job(Ok(&tx));
        let end: &[&str] = if ok {
            &["RELEASE job"]
        } else {
            &["ROLLBACK TO job", "RELEASE job"]
        };
        if let Err(e) = run_cached(&tx, end) {
            tracing::error!(error = %e, "savepoint failed");
        }
        completions.push(completion);
    }
    let commit = tx.commit().map_err(|e| e.to_string());
    if let Err(e) = &commit {
        if say_now(said) {
            tracing::error!(error = %e, "store commit failed; writes in this batch are not durable (said at most once a minute)");
        } else {
            tracing::debug!(error = %e, "store commit failed again");
        }
    }
    for c in completions {
        c(commit.clone());
    }
}

/// Whether a failure is to be said now: none was in the last minute.
fn say_now(said: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    if said.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
        return false;
    }
    *said = Some(now);
    true
}

/// Run statements kept prepared (the savepoints around every job are parsed once).
fn run_cached(tx: &Transaction<'_>, sql: &[&str]) -> rusqlite::Result<()> {
    for q in sql {
        tx.prepare_cached(q)?.execute([])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{StatementStatus, params};

    #[test]
    fn a_cached_statement_is_not_planned_again_for_new_bound_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = open(
            &path,
            &["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);"],
            Durability::Normal,
        )
        .unwrap();
        for k in 0..50 {
            w.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])
                .unwrap();
        }
        for conn in [&w, &open_reader(&path).unwrap()] {
            for limit in 1..20 {
                let mut stmt = conn
                    .prepare_cached("SELECT k FROM t WHERE k > ?1 ORDER BY k LIMIT ?2")
                    .unwrap();
                let n = stmt
                    .query_map(params![limit, limit], |r| r.get::<_, i64>(0))
                    .unwrap()
                    .count();
                assert_eq!(n, limit as usize);
                assert_eq!(
                    stmt.get_status(StatementStatus::RePrepare),
                    0,
                    "re-planned for LIMIT {limit}"
                );
            }
        }
    }
}
