//! What a process spawned by Claude Code (the MCP shim, a hook) can learn about the Claude
//! Code session it runs under, from its environment and `/proc`: the session id, the
//! Claude Code process (the lease), the transcript, whether channel pushes can work, and
//! whether this is only a health check (`claude mcp list`).

use std::path::{Path, PathBuf};

/// `(comm, ppid, start time)` of a process, from `/proc` (Linux).
fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Does process `pid`'s environment (as it started) hold `key=value`? `None` if unreadable.
fn environ_has(pid: u32, key: &str, value: &str) -> Option<bool> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let want = format!("{key}={value}");
    Some(env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
}

/// The Claude Code process this one runs under: `(pid, start time)`. Claude Code hands its
/// session id to what it spawns, not to itself, so walking up past every ancestor that
/// carries our `CLAUDE_CODE_SESSION_ID` (the shell a hook runs in, say) ends at Claude
/// Code, whatever its process is called. Without the id: the nearest ancestor named like
/// Claude Code, else the parent.
fn claude_or_parent() -> Option<(u32, u64)> {
    let (_, parent, _) = proc_stat(std::process::id())?;
    if let Some(id) = session_id() {
        let mut pid = parent;
        for _ in 0..16 {
            let (_, ppid, start) = proc_stat(pid)?;
            match environ_has(pid, "CLAUDE_CODE_SESSION_ID", &id) {
                Some(true) if ppid > 1 => pid = ppid,
                Some(false) => return Some((pid, start)),
                _ => break,
            }
        }
    }
    let mut pid = parent;
    for _ in 0..8 {
        let (comm, ppid, start) = proc_stat(pid)?;
        if comm.to_lowercase().contains("claude") {
            return Some((pid, start));
        }
        if ppid <= 1 {
            break;
        }
        pid = ppid;
    }
    let (_, _, start) = proc_stat(parent)?;
    Some((parent, start))
}

/// The process this session lives in, `<pid>-<start time>`: its end ends the session.
/// `CLAUDEMESH_LEASE_PID` names it for a client that runs Claude Code under a wrapper;
/// otherwise it is the nearest Claude Code ancestor, else the parent.
pub fn process_key() -> Option<String> {
    if let Some(pid) = std::env::var("CLAUDEMESH_LEASE_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        return proc_stat(pid).map(|(_, _, start)| format!("{pid}-{start}"));
    }
    claude_or_parent().map(|(pid, start)| format!("{pid}-{start}"))
}

/// The Claude Code session id (`CLAUDE_CODE_SESSION_ID`, set for MCP servers and hooks).
pub fn session_id() -> Option<String> {
    std::env::var("CLAUDE_CODE_SESSION_ID")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 128)
}

/// The key of the session this process speaks for: `claude:<id>` under Claude Code,
/// `CLAUDEMESH_SESSION_KEY` when set, else the process.
pub fn client_key() -> String {
    if let Ok(k) = std::env::var("CLAUDEMESH_SESSION_KEY")
        && !k.trim().is_empty()
    {
        return k.trim().to_string();
    }
    if let Some(id) = session_id() {
        return format!("claude:{id}");
    }
    match process_key() {
        Some(p) => format!("process:{p}"),
        None => format!("process:{}", std::process::id()),
    }
}

/// Claude Code's project directory name for `cwd`: every character that is not an ASCII
/// letter or digit becomes `-`; longer than 200 characters, it is cut and suffixed with a
/// hash (Claude Code 2.1's rule).
pub fn project_slug(cwd: &str) -> String {
    const MAX: usize = 200;
    let units: Vec<u16> = cwd.encode_utf16().collect();
    let slug: String = cwd
        .chars()
        .flat_map(|c| {
            let n = c.len_utf16();
            let r = if c.is_ascii_alphanumeric() { c } else { '-' };
            std::iter::repeat_n(r, n)
        })
        .collect();
    if units.len() <= MAX {
        return slug;
    }
    let mut h: i32 = 0;
    for u in &units {
        h = (h << 5).wrapping_sub(h).wrapping_add(*u as i32);
    }
    let mut n = (h as i64).unsigned_abs();
    let mut b36 = String::new();
    loop {
        let d = (n % 36) as u32;
        b36.insert(0, std::char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    format!("{}-{b36}", slug.chars().take(MAX).collect::<String>())
}

/// Where Claude Code writes the transcript of session `id` started in `cwd`.
pub fn transcript_path(id: &str, cwd: &Path) -> Option<PathBuf> {
    let base = match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".claude"),
    };
    Some(
        base.join("projects")
            .join(project_slug(&cwd.display().to_string()))
            .join(format!("{id}.jsonl")),
    )
}

/// This session's transcript, when running under Claude Code.
pub fn transcript() -> Option<PathBuf> {
    let id = session_id()?;
    let cwd = std::env::var_os("CLAUDE_PROJECT_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())?;
    transcript_path(&id, &cwd)
}

/// Is the parent a `claude mcp …` command (a health check that lists or probes servers,
/// not a session)?
pub fn is_health_check() -> bool {
    let Some((_, parent, _)) = proc_stat(std::process::id()) else {
        return false;
    };
    let args = cmdline(parent);
    args.iter().skip(1).take(3).any(|a| a == "mcp")
        && !args
            .iter()
            .any(|a| a.starts_with("--dangerously") || a == "--channels")
}

/// Does `claudemesh launch --message-mode inbox|off` keep messages from being pushed into
/// this session (it reads them when it asks)?
pub fn messages_held() -> bool {
    std::env::var("CLAUDEMESH_MESSAGE_MODE").is_ok_and(|v| v == "inbox" || v == "off")
}

/// Can channel pushes reach this session's model? Claude Code takes them only in an
/// interactive session (not `-p`) started with the server in
/// `--dangerously-load-development-channels` (which `claudemesh launch` passes), and only
/// when its channels feature is on; whether it is, only its transcript will tell.
pub fn channels_possible(client_name: &str, client_declares: bool) -> bool {
    if client_declares {
        return true;
    }
    let forced = std::env::var("CLAUDEMESH_CHANNELS").is_ok_and(|v| v == "1");
    if client_name != "claude-code" {
        return forced;
    }
    let interactive = std::env::var("CLAUDE_CODE_ENTRYPOINT").is_ok_and(|v| v == "cli");
    if !interactive {
        return false;
    }
    if forced {
        return true;
    }
    let Some((_, parent, _)) = proc_stat(std::process::id()) else {
        return false;
    };
    cmdline(parent)
        .iter()
        .any(|a| a == "--dangerously-load-development-channels" || a == "--channels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_slugs_follow_claude_code() {
        assert_eq!(project_slug("/tmp/cc/work-1"), "-tmp-cc-work-1");
        assert_eq!(project_slug("/home/a.b/my_proj"), "-home-a-b-my-proj");
        let long = format!("/{}", "x".repeat(250));
        let s = project_slug(&long);
        assert!(s.starts_with(&format!("-{}", "x".repeat(199))), "{s}");
        assert_eq!(s.len(), 200 + 1 + s.rsplit('-').next().unwrap().len());
    }

    #[test]
    fn transcripts_live_under_the_claude_config_dir() {
        let p = transcript_path("abc", Path::new("/w/p")).unwrap();
        assert!(p.ends_with("projects/-w-p/abc.jsonl"), "{}", p.display());
    }
}
