//! Peer folders: `share-dir` (share a folder of this machine, read-only; `list`, `rm`)
//! and `peer-file` (`ls`, `cat` a member's shared folder, end to end through the relay).

use claudemesh_schema::ipc::peer_files::{
    self as pf, PeerFileListResult, PeerFileParams, PeerFileReadResult, ShareDirListParams,
    ShareDirParams, ShareDirRmParams, SharedDirsResult,
};
use claudemesh_schema::names;

use crate::cli::{PeerFileAction, ShareDirAction, ShareDirArgs};
use crate::daemon::{client, paths};
use crate::exit::{Exit, Failure, Res};
use crate::output;

/// A folder as the daemon records it: absolute (the daemon's working directory is not
/// ours). The daemon resolves symlinks and checks it again.
fn absolute(p: &std::path::Path) -> Result<String, Failure> {
    let abs = std::path::absolute(p)
        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", p.display())))?;
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::new(Exit::Usage, format!("{} is not valid UTF-8", abs.display())))
}

pub(crate) async fn share_dir(a: ShareDirArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let (r, json): (SharedDirsResult, bool) = match a.action {
        Some(ShareDirAction::List(opts)) => (
            c.call(pf::SHARE_DIR_LIST, ShareDirListParams { mesh: opts.mesh })
                .await?,
            opts.json,
        ),
        Some(ShareDirAction::Rm { path, opts }) => {
            let r = c
                .call(
                    pf::SHARE_DIR_RM,
                    ShareDirRmParams {
                        mesh: opts.mesh,
                        path: absolute(&path)?,
                    },
                )
                .await?;
            if !opts.json {
                say!("no longer shared: {}", path.display());
            }
            (r, opts.json)
        }
        None => {
            let Some(path) = a.path else {
                return Err(Failure::new(
                    Exit::Usage,
                    "name the folder to share: `claudemesh share-dir <path>` (or `share-dir list`)",
                ));
            };
            // `--read-only` is the only mode there is; accepted so scripts can say it.
            let _ = a.read_only;
            let r: SharedDirsResult = c
                .call(
                    pf::SHARE_DIR,
                    ShareDirParams {
                        mesh: a.opts.mesh,
                        path: absolute(&path)?,
                        to: a.to,
                    },
                )
                .await?;
            if !a.opts.json {
                say!(
                    "shared (read-only): {}; peers read it as `<your name> {}/…` (`claudemesh peer-file ls`)",
                    path.display(),
                    r.shares
                        .iter()
                        .find(|s| std::path::Path::new(&s.path)
                            == std::fs::canonicalize(&path).unwrap_or_default())
                        .map_or("?", |s| s.name.as_str())
                );
            }
            (r, a.opts.json)
        }
    };
    if json {
        output::json("shares", &r);
        return Ok(());
    }
    if r.shares.is_empty() {
        out!("No folders shared (`claudemesh share-dir <path>` shares one).");
    }
    for s in &r.shares {
        let who = if s.to.is_empty() {
            "every member with file-read".to_string()
        } else {
            s.to.join(", ")
        };
        out!(
            "{}  {}  (mesh {}, read-only, for {who})",
            s.name,
            s.path,
            s.mesh_name
        );
    }
    Ok(())
}

pub(crate) async fn peer_file(a: PeerFileAction) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    match a {
        PeerFileAction::Ls {
            peer,
            dir,
            timeout,
            opts,
        } => {
            let r: PeerFileListResult = c
                .call(
                    pf::PEER_FILE_LIST,
                    PeerFileParams {
                        mesh: opts.mesh,
                        peer,
                        path: dir.unwrap_or_default(),
                        wait_ms: Some(timeout.saturating_mul(1000)),
                    },
                )
                .await?;
            if opts.json {
                output::json("entries", &r);
                return Ok(());
            }
            if r.entries.is_empty() {
                out!(
                    "{}",
                    if r.path.is_empty() {
                        "It shares no folder with you."
                    } else {
                        "Empty."
                    }
                );
            }
            // Names come from the peer: one line each, no terminal escapes.
            for e in &r.entries {
                let name = names::one_line(&e.path, 1024);
                match e.kind.as_str() {
                    "file" => out!("{name}  {} bytes", e.size),
                    "dir" => out!("{name}/"),
                    k => out!("{name}  ({})", names::one_line(k, 16)),
                }
            }
            if r.truncated {
                note!("(more entries or deeper ones were left out; list a subfolder)");
            }
        }
        PeerFileAction::Cat {
            peer,
            path,
            timeout,
            mesh,
        } => {
            let r: PeerFileReadResult = c
                .call(
                    pf::PEER_FILE_READ,
                    PeerFileParams {
                        mesh,
                        peer,
                        path,
                        wait_ms: Some(timeout.saturating_mul(1000)),
                    },
                )
                .await?;
            let bytes = if r.encoding == "base64" {
                claudemesh_schema::encoding::unb64(&r.content).map_err(|e| {
                    Failure::new(Exit::Error, format!("the answer is not valid base64: {e}"))
                })?
            } else {
                r.content.into_bytes()
            };
            output::raw(&bytes);
        }
    }
    Ok(())
}
