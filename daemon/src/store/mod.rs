//! The daemon's SQLite store: the machine's copy of every joined mesh.
//!
//! Writes go through the single writer thread (group commit, `synchronous=FULL`, so an
//! acknowledged `send` survives power loss); reads run on a small pool of reader threads with
//! read-only connections, so `peers` and `inbox` never wait behind writes nor block the async
//! runtime. The `q_*` read functions take a plain connection so the CLI can answer from the
//! file with the daemon down.

//!
//! One module per table group: `meshes` (and roster), `presence`, `inbox`, `messages`
//! (outbox, sent), `sessions`, `invites` (and claims), `grants`. The store imports nothing
//! from the rest of the daemon.

use claudemesh_relay::sqlite::{self, Durability, Readers, SqliteError, Writer};
use claudemesh_schema::migrations;
use rusqlite::Connection;
use std::path::Path;

/// Reader threads (the machine has few cores; reads are short).
const READERS: usize = 2;

mod grants;
mod inbox;
mod invites;
mod meshes;
mod messages;
mod presence;
mod sessions;

pub(crate) use grants::{Grant, q_grants};
pub(crate) use inbox::{
    InboxRow, Reader, Unread, insert_inbox_rows, q_history, q_pushable, q_received_at,
    q_recent_received, q_taken, q_unread,
};
pub(crate) use invites::{q_claims, q_invites};
pub use meshes::{MeshRow, q_meshes};
pub(crate) use meshes::{q_roster, q_setting};
pub use messages::q_counts;
pub use messages::q_recent_ids;
pub(crate) use messages::{
    SentStages, id_for_send_key, q_outbox, q_sent_by_id, q_sent_find, q_sent_recent,
};
pub(crate) use presence::{PresenceRow, q_pins, q_presence, q_presence_of};
pub(crate) use sessions::{SessionRow, q_aliases, q_sessions};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    /// A row does not parse.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(SqliteError::Query(e))
    }
}

/// Result alias.
pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// A row mapper's way to say a column does not parse (see [`unwrap_corrupt`]).
pub(crate) fn corrupt(what: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        Box::new(StoreError::Corrupt(what)),
    )
}

/// Turn a row-mapper error made by [`corrupt`] back into [`StoreError::Corrupt`].
pub(crate) fn unwrap_corrupt(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::FromSqlConversionFailure(_, _, inner) = &e
        && let Some(StoreError::Corrupt(what)) = inner.downcast_ref::<StoreError>()
    {
        return StoreError::Corrupt(what);
    }
    StoreError::from(e)
}

pub(crate) fn blob32(v: Vec<u8>, what: &'static str) -> Result<[u8; 32]> {
    v.try_into().map_err(|_| StoreError::Corrupt(what))
}

pub(crate) fn id16<T>(v: Vec<u8>, f: impl Fn(&[u8]) -> Option<T>, what: &'static str) -> Result<T> {
    f(&v).ok_or(StoreError::Corrupt(what))
}

pub(crate) fn parse<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T> {
    s.parse().map_err(|_| StoreError::Corrupt(what))
}

/// The store.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    writer: Writer,
    readers: Readers,
}

impl Store {
    /// Open (creating and migrating) the store at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let conn = sqlite::open(path, migrations::DAEMON, Durability::Full)?;
        let readers = Readers::spawn(path, READERS, "daemon-read")?;
        let (writer, _t) = Writer::spawn(conn, "daemon-store")
            .map_err(|e| SqliteError::Commit(format!("cannot start store thread: {e}")))?;
        Ok(Self { writer, readers })
    }

    /// Run a read on a reader thread (never on the async threads).
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.readers.read(f).await?
    }

    /// Run a write and wait for its commit.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        Ok(self.writer.call(f).await?)
    }

    /// Queue a write without waiting; `done` runs on the writer thread after the commit,
    /// in submission order. It must be quick and must not block.
    pub(crate) async fn write_then<R, F, D>(&self, f: F, done: D) -> Result<()>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
        D: FnOnce(Result<R>) + Send + 'static,
    {
        self.writer
            .call_then(f, move |r| done(r.map_err(StoreError::from)))
            .await?;
        Ok(())
    }

    /// Wait until everything queued so far is committed.
    pub(crate) async fn flush(&self) -> Result<()> {
        self.write(|_| Ok(())).await
    }
}

/// Open the store file read-only (for the CLI when the daemon is down).
pub fn open_readonly(path: &Path) -> Result<Connection> {
    Ok(sqlite::open_reader(path)?)
}
