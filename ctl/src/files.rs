//! `claudemesh file …`: share, get, list, status, grant, rm. The daemon seals, stores
//! and fetches; this resolves paths against the working directory and prints.

use claudemesh_schema::ipc::files::{
    FILE_DELETE, FILE_GET, FILE_GRANT, FILE_LIST, FILE_SHARE, FILE_STATUS, FILE_TRANSFERS,
    FileDeleteResult, FileGetParams, FileGetResult, FileGrantParams, FileGrantResult, FileInfo,
    FileListParams, FileListResult, FileParams, FileShareParams, FileShareResult, FileStatusResult,
    FileTransfersResult,
};
use std::path::{Path, PathBuf};

use crate::cli::FileAction;
use crate::daemon::paths;
use crate::exit::{Exit, Failure, Res};
use crate::output;
use crate::shared::call;

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot resolve {}: {e}", p.display())))
}

/// `1.5 MiB`.
pub(crate) fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress line for the transfer of `path`, read from the daemon while it runs:
/// "storing big.bin 12.0 MiB of 48.0 MiB (25%)".
fn progress(what: String, path: String) -> output::Progress {
    let mut rt: Option<(tokio::runtime::Runtime, claudemesh_daemon::client::Client)> = None;
    output::Progress::watching(&what, move || {
        if rt.is_none() {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let p = paths().ok()?;
            let c = r
                .block_on(claudemesh_daemon::client::Client::connect(&p.socket))
                .ok()?;
            rt = Some((r, c));
        }
        let (r, c) = rt.as_mut()?;
        let t: FileTransfersResult = r
            .block_on(c.call(FILE_TRANSFERS, serde_json::json!({})))
            .ok()?;
        let t = t
            .transfers
            .into_iter()
            .find(|t| t.path == path || Path::new(&t.path).parent() == Some(Path::new(&path)))?;
        let pct = (t.done * 100).checked_div(t.total).unwrap_or(100);
        let name = Path::new(&t.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some(format!(
            "{} {name} {} of {} ({pct}%)",
            t.phase,
            size(t.done),
            size(t.total)
        ))
    })
}

fn tags(s: Option<String>) -> Vec<String> {
    s.unwrap_or_default()
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

const HEADER: &[&str] = &["ID", "NAME", "SIZE", "FROM", "TO", "TAGS"];

fn rows(files: &[FileInfo]) -> Vec<Vec<String>> {
    files
        .iter()
        .map(|f| {
            vec![
                f.id.short(),
                f.name
                    .clone()
                    .unwrap_or_else(|| "(not shared with you)".into()),
                f.size.map(size).unwrap_or_default(),
                f.author.clone(),
                if f.to.is_empty() {
                    "*".into()
                } else {
                    f.to.clone()
                },
                f.tags.join(","),
            ]
        })
        .collect()
}

pub(crate) async fn file(action: FileAction) -> Res {
    match action {
        FileAction::Share {
            path,
            to,
            tags: t,
            ephemeral,
            ttl,
            name,
            opts,
        } => {
            let path = absolute(&path)?;
            let ttl_secs = ttl.as_deref().map(crate::cli::parse_duration).transpose()?;
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let fname = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let progress = progress(
                format!("sharing {fname} ({})", size(len)),
                path.to_string_lossy().into_owned(),
            );
            let r: FileShareResult = call(
                FILE_SHARE,
                FileShareParams {
                    mesh: opts.mesh,
                    session: None,
                    path: path.to_string_lossy().into_owned(),
                    to,
                    tags: tags(t),
                    ephemeral,
                    ttl_secs,
                    name,
                },
            )
            .await?;
            drop(progress);
            if opts.json {
                output::json("file", &r);
            } else {
                let stored = if r.stored == "relay" {
                    "chunks at the relay"
                } else {
                    "served by this machine's daemon (the relay stores no files)"
                };
                out!(
                    "shared {} {} ({}, {} chunks) with {}; {stored}",
                    r.file.short(),
                    r.name,
                    size(r.size),
                    r.chunks,
                    r.to.join(", ")
                );
                if r.seq.is_none() {
                    say!("pending: announced when the relay link is up");
                }
            }
            Ok(())
        }
        FileAction::Get {
            id,
            output: out_path,
            force,
            opts,
        } => {
            let target = match out_path {
                Some(o) => absolute(&o)?,
                None => absolute(Path::new("."))?,
            };
            // The daemon saves into a directory under the file's name: the progress of
            // whichever transfer writes under `target`.
            let progress = progress(
                format!("fetching {id}"),
                target.to_string_lossy().into_owned(),
            );
            let r: FileGetResult = call(
                FILE_GET,
                FileGetParams {
                    mesh: opts.mesh,
                    file: id,
                    out: Some(target.to_string_lossy().into_owned()),
                    force,
                },
            )
            .await?;
            drop(progress);
            if opts.json {
                output::json("file", &r);
            } else {
                out!(
                    "saved {} ({}) to {}; BLAKE3 checked ({} chunks from the relay, {} from peers, {} here already)",
                    r.name,
                    size(r.size),
                    r.path.clone().unwrap_or_default(),
                    r.from_relay,
                    r.from_peers,
                    r.from_cache
                );
            }
            Ok(())
        }
        FileAction::List {
            tags: t,
            author,
            mine,
            readable,
            opts,
        } => {
            let r: FileListResult = call(
                FILE_LIST,
                FileListParams {
                    mesh: opts.mesh,
                    tags: tags(t),
                    author,
                    scope: Some(
                        if mine {
                            "mine"
                        } else if readable {
                            "for_me"
                        } else {
                            "all"
                        }
                        .into(),
                    ),
                },
            )
            .await?;
            if opts.json {
                output::json("files", &r.files);
            } else if r.files.is_empty() {
                say!("No files shared. Share one with `claudemesh file share <path>`.");
            } else {
                output::table(HEADER, rows(&r.files));
            }
            Ok(())
        }
        FileAction::Status(a) => {
            let r: FileStatusResult = call(
                FILE_STATUS,
                FileParams {
                    mesh: a.opts.mesh,
                    session: None,
                    file: a.id,
                },
            )
            .await?;
            if a.opts.json {
                output::json("status", &r);
            } else {
                let f = &r.file;
                out!(
                    "{} {} ({}) shared by {}",
                    f.id.short(),
                    f.name
                        .clone()
                        .unwrap_or_else(|| "(not shared with you)".into()),
                    f.size.map(size).unwrap_or_else(|| "size unknown".into()),
                    f.author
                );
                out!("readers: {}", r.readers.join(", "));
                if !f.mine {
                    out!("fetched: known to the member who shared it");
                } else if r.fetched.is_empty() {
                    out!("fetched: nobody yet");
                } else {
                    for x in &r.fetched {
                        out!("fetched by {} {}", x.who, output::ago(x.at));
                    }
                }
            }
            Ok(())
        }
        FileAction::Rm(a) => {
            let r: FileDeleteResult = call(
                FILE_DELETE,
                FileParams {
                    mesh: a.opts.mesh,
                    session: None,
                    file: a.id,
                },
            )
            .await?;
            if a.opts.json {
                output::json("result", &r);
            } else {
                say!("deleted file {}", r.file.short());
            }
            Ok(())
        }
        FileAction::Grant { id, to, opts } => {
            let r: FileGrantResult = call(
                FILE_GRANT,
                FileGrantParams {
                    mesh: opts.mesh,
                    session: None,
                    file: id,
                    to,
                },
            )
            .await?;
            if opts.json {
                output::json("result", &r);
            } else {
                say!(
                    "granted file {} to {} (they can fetch it now; a grant cannot be taken back)",
                    r.file.short(),
                    r.granted.join(", ")
                );
            }
            Ok(())
        }
    }
}
