//! The transcript watcher: follows the Claude Code transcript of every hosted session that
//! has one, and turns what Claude Code records there into delivery evidence (a push was
//! queued; a message was in a context the model answered) and a status (working while the
//! session's turn runs, idle when it ends; the `jsonl` source of the status engine).
//!
//! One actor for all sessions: `notify` watches the transcripts' directories (a file may
//! not exist until the session's first prompt); a one-second tick re-reads every file from
//! its offset, so a missed or unsupported file event costs a second, never a message.

mod parse;

use claudemesh_schema::{MeshId, SessionId};
use std::collections::HashMap;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use claudemesh_schema::message::DeliveryPath;
use parse::{Event, Tracker};

use crate::context::{Daemon, TranscriptCmd};

/// Most bytes read from one file per pass (a long transcript is caught up over passes).
const CHUNK: usize = 4 << 20;
/// Longest line kept while waiting for its end.
const MAX_LINE: usize = 16 << 20;
/// How long a transcript is still read after its session ended.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Followed {
    mesh: MeshId,
    session: SessionId,
    offset: u64,
    partial: Vec<u8>,
    tracker: Tracker,
    /// The file has been read to its end once: from here on, lines are news (statuses
    /// and queue entries count only then).
    caught_up: bool,
    /// The session ended: stop following at this time.
    until: Option<tokio::time::Instant>,
}

/// Run until the daemon stops.
pub(crate) async fn run(d: Arc<Daemon>, mut rx: mpsc::UnboundedReceiver<TranscriptCmd>) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        // Only writes and new files: our own reads raise access events, and following
        // those would read forever.
        if let Ok(ev) = r
            && matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            )
        {
            for p in ev.paths {
                let _ = ev_tx.send(p);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; transcripts are read once a second");
            None
        }
    };
    let mut files: HashMap<PathBuf, Followed> = HashMap::new();
    let mut dirs: HashMap<PathBuf, bool> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            cmd = rx.recv() => match cmd {
                None => return,
                Some(TranscriptCmd::Follow { mesh, session, path }) => {
                    files.retain(|p, f| !(f.mesh == mesh && f.session == session) || *p == path);
                    if let Some(f) = files.get_mut(&path) {
                        f.until = None;
                    } else {
                        files.insert(path.clone(), Followed {
                            mesh,
                            session,
                            offset: 0,
                            partial: Vec::new(),
                            tracker: Tracker::default(),
                            caught_up: false,
                            until: None,
                        });
                        if let Some(dir) = path.parent() {
                            dirs.entry(dir.to_path_buf()).or_insert(false);
                        }
                        watch_dirs(&mut watcher, &mut dirs);
                    }
                    read_and_apply(&d, &mut files, &path).await;
                }
                Some(TranscriptCmd::Forget { mesh, session }) => {
                    // A session ends as its process exits, around when Claude Code writes
                    // the last answer: keep reading a little longer before letting go.
                    let until = tokio::time::Instant::now() + LINGER;
                    for f in files.values_mut().filter(|f| f.mesh == mesh && f.session == session) {
                        f.until = Some(until);
                    }
                }
            },
            p = ev_rx.recv() => {
                let Some(p) = p else { continue };
                if files.contains_key(&p) {
                    read_and_apply(&d, &mut files, &p).await;
                }
            }
            _ = tick.tick() => {
                watch_dirs(&mut watcher, &mut dirs);
                let paths: Vec<PathBuf> = files.keys().cloned().collect();
                for p in paths {
                    read_and_apply(&d, &mut files, &p).await;
                }
                let now = tokio::time::Instant::now();
                let gone: Vec<(MeshId, SessionId)> = files
                    .values()
                    .filter(|f| f.until.is_some_and(|u| u <= now))
                    .map(|f| (f.mesh, f.session))
                    .collect();
                files.retain(|_, f| f.until.is_none_or(|u| u > now));
                for (mesh, session) in gone {
                    crate::sessions::released(&d, mesh, session).await;
                }
            }
        }
    }
}

/// Watch every directory not watched yet (one that does not exist yet is tried again).
fn watch_dirs(watcher: &mut Option<notify::RecommendedWatcher>, dirs: &mut HashMap<PathBuf, bool>) {
    use notify::Watcher as _;
    let Some(w) = watcher.as_mut() else { return };
    for (dir, on) in dirs.iter_mut().filter(|(_, on)| !**on) {
        if w.watch(dir, notify::RecursiveMode::NonRecursive).is_ok() {
            *on = true;
        }
    }
}

/// Read what was appended to `path` and act on it.
async fn read_and_apply(d: &Arc<Daemon>, files: &mut HashMap<PathBuf, Followed>, path: &Path) {
    loop {
        let Some(f) = files.get_mut(path) else { return };
        let (lines, more) = match read_lines(path, f) {
            Ok(x) => x,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // Not written yet: everything it will hold is news.
                    f.caught_up = true;
                } else {
                    tracing::debug!(path = %path.display(), error = %e, "cannot read transcript");
                }
                return;
            }
        };
        let (mesh, session, news) = (f.mesh, f.session, f.caught_up);
        let mut events = Vec::new();
        for line in &lines {
            events.extend(f.tracker.feed(line));
        }
        if !more {
            f.caught_up = true;
        }
        for ev in events {
            apply(d, mesh, session, ev, news).await;
        }
        if !more {
            return;
        }
    }
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Complete lines appended since the last read, and whether more is waiting.
fn read_lines(path: &Path, f: &mut Followed) -> std::io::Result<(Vec<String>, bool)> {
    // Only a regular file: a FIFO or a device named by a client would block or never end.
    // Opened without blocking, then checked on the open file (no swap in between).
    let mut file = open_nonblocking(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let len = file.metadata()?.len();
    if len < f.offset {
        // Rewritten from scratch: start over, reading what is there as history.
        f.offset = 0;
        f.partial.clear();
        f.tracker = Tracker::default();
        f.caught_up = false;
    }
    if len == f.offset {
        return Ok((Vec::new(), false));
    }
    file.seek(std::io::SeekFrom::Start(f.offset))?;
    let mut buf = Vec::new();
    let n = file.take(CHUNK as u64).read_to_end(&mut buf)?;
    f.offset += n as u64;
    let more = f.offset < len;
    let mut data = std::mem::take(&mut f.partial);
    data.extend_from_slice(&buf);
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            lines.push(String::from_utf8_lossy(&data[start..i]).into_owned());
            start = i + 1;
        }
    }
    if data.len() - start <= MAX_LINE {
        f.partial = data[start..].to_vec();
    }
    Ok((lines, more))
}

async fn apply(d: &Arc<Daemon>, mesh: MeshId, session: SessionId, ev: Event, news: bool) {
    match ev {
        // A queue entry from before we followed the file belongs to a process that may be
        // gone with its queue; only news counts.
        Event::Accepted(ids) if news => {
            crate::delivery::inbox::accepted(d, mesh, session, ids, DeliveryPath::Channel).await;
        }
        Event::Accepted(_) => {}
        Event::InConversation(ids, via) => {
            crate::delivery::inbox::accepted(d, mesh, session, ids, via).await;
        }
        Event::Confirmed(ids, via) => {
            crate::delivery::inbox::confirmed(d, mesh, session, ids, via).await;
        }
        Event::Status(s) if news => crate::sessions::transcript_status(d, mesh, session, s).await,
        Event::Status(_) => {}
    }
}
