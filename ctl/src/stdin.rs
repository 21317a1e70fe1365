//! Arguments that may come from stdin instead of argv (`-`): invite links hold a secret and
//! message bodies are private, and argv is readable by every user (`/proc/<pid>/cmdline`)
//! for as long as the command runs.

use std::io::Read as _;

use crate::exit::{Exit, Failure};

/// Most bytes read from stdin for one argument (a message's limit, with room to say so).
const MAX_STDIN: u64 = 1024 * 1024;

/// `arg`, or what stdin holds when `arg` is `-`.
pub(crate) fn or_stdin(arg: String, what: &str) -> Result<String, Failure> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut s = String::new();
    std::io::stdin()
        .take(MAX_STDIN)
        .read_to_string(&mut s)
        .map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("cannot read the {what} from stdin: {e}"),
            )
        })?;
    if s.trim().is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            format!("no {what} on stdin (`-` reads it from there)"),
        ));
    }
    Ok(s)
}

/// A message given as words, or as `-` (stdin, one trailing newline dropped).
pub(crate) fn message(words: Vec<String>) -> Result<String, Failure> {
    match words.as_slice() {
        [one] if one == "-" => {
            let s = or_stdin("-".into(), "message")?;
            Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
        }
        _ => Ok(words.join(" ")),
    }
}

/// A message's text from a file (`send --file`): UTF-8, bounded like stdin.
pub(crate) fn file(path: &std::path::Path) -> Result<String, Failure> {
    let cannot = |e: String| {
        Failure::new(
            Exit::Usage,
            format!("cannot read the message from {}: {e}", path.display()),
        )
    };
    let f = std::fs::File::open(path).map_err(|e| cannot(e.to_string()))?;
    if let Ok(meta) = f.metadata()
        && meta.len() > claudemesh_daemon::MAX_BODY as u64
    {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "{} is {} bytes; a message holds at most {} (send a summary, or split it)",
                path.display(),
                meta.len(),
                claudemesh_daemon::MAX_BODY
            ),
        ));
    }
    let mut bytes = Vec::new();
    f.take(MAX_STDIN)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot(e.to_string()))?;
    let s = String::from_utf8(bytes).map_err(|_| cannot("it is not UTF-8 text".into()))?;
    if s.trim().is_empty() {
        return Err(cannot("it is empty".into()));
    }
    Ok(s)
}
