//! `claudemesh install` / `uninstall`: register the MCP server in `~/.claude.json`, the hooks
//! (and, on request, a status line) in `~/.claude/settings.json`, and a short skill that
//! teaches Claude the CLI.
//!
//! Every edit is read-merge-write: other keys are kept as they are, the file is replaced
//! atomically, a timestamped backup is written first, and nothing is written when nothing
//! changes (so `install` twice is a no-op). `uninstall` removes exactly the entries `install`
//! adds (recognised by their `claudemesh` commands) and the containers they leave empty.

use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

use crate::cli::InstallArgs;
use crate::exit::{Exit, Failure, Res};

/// Hook events we register, with the `claudemesh hook` argument for each.
pub(crate) const HOOKS: &[(&str, &str)] = &[
    ("UserPromptSubmit", "user-prompt-submit"),
    ("PostToolUse", "post-tool-use"),
    ("Stop", "stop"),
    ("SessionStart", "session-start"),
    ("SessionEnd", "session-end"),
];

const SKILL: &str = include_str!("../assets/SKILL.md");
/// Does a status line command run ours?
fn is_our_status_line(v: &Value) -> bool {
    v["command"]
        .as_str()
        .is_some_and(|c| runs_claudemesh(c, "status-line"))
}

/// Where Claude Code keeps its configuration, under `home`.
#[derive(Debug, Clone)]
pub(crate) struct ClaudeFiles {
    pub(crate) claude_json: PathBuf,
    pub(crate) settings: PathBuf,
    pub(crate) skill: PathBuf,
}

impl ClaudeFiles {
    pub(crate) fn under(home: &Path) -> Self {
        Self {
            claude_json: home.join(".claude.json"),
            settings: home.join(".claude").join("settings.json"),
            skill: home
                .join(".claude")
                .join("skills")
                .join("claudemesh")
                .join("SKILL.md"),
        }
    }

    pub(crate) fn from_env() -> Result<Self, String> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or("HOME is not set; cannot find Claude Code's configuration")?;
        Ok(Self::under(Path::new(&home)))
    }
}

fn read_object(path: &Path) -> Result<Map<String, Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Ok(Map::new()),
        Ok(t) => match serde_json::from_str::<Value>(&t) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(format!(
                "{} is not a JSON object; fix it by hand, then run this again",
                path.display()
            )),
            Err(e) => Err(format!(
                "{} is not valid JSON ({e}); fix it by hand, then run this again",
                path.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Write `obj` to `path` if it differs from what is there: backup first, then atomic
/// replace. Returns whether the file changed.
fn write_if_changed(
    path: &Path,
    before: &Map<String, Value>,
    obj: &Map<String, Value>,
) -> Result<bool, String> {
    if before == obj {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        let stamp = claudemesh_schema::now_ms();
        let backup = PathBuf::from(format!("{}.bak-{stamp}", path.display()));
        std::fs::copy(path, &backup)
            .map_err(|e| format!("cannot back up {}: {e}", path.display()))?;
    }
    let text = serde_json::to_string_pretty(&Value::Object(obj.clone()))
        .map_err(|e| e.to_string())?
        + "\n";
    claudemesh_daemon::paths::write_atomic(path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

/// The program a command line runs (its first word, unquoted).
pub(crate) fn program(command: &str) -> &str {
    let c = command.trim_start();
    if let Some(rest) = c.strip_prefix('\'') {
        return rest.split('\'').next().unwrap_or("");
    }
    c.split_whitespace().next().unwrap_or("")
}

/// Does `command` run claudemesh (bare or by path) with `sub` as its first argument?
pub(crate) fn runs_claudemesh(command: &str, sub: &str) -> bool {
    let prog = program(command);
    let name = Path::new(prog).file_name().and_then(|n| n.to_str());
    let rest = command.trim_start();
    let rest = if rest.starts_with('\'') {
        rest.get(prog.len() + 2..).unwrap_or("")
    } else {
        rest.get(prog.len()..).unwrap_or("")
    };
    name == Some("claudemesh") && rest.split_whitespace().next() == Some(sub)
}

fn is_ours(group: &Value) -> bool {
    group["hooks"].as_array().is_some_and(|hs| {
        hs.iter().any(|h| {
            h["command"]
                .as_str()
                .is_some_and(|c| runs_claudemesh(c, "hook"))
        })
    })
}

/// The claudemesh binary to register: the running one, by the path on `PATH` when that is
/// the same file (a package manager's stable link survives upgrades), else its own path.
/// Claude Code runs MCP servers and hooks with its own `PATH`, so a bare `claudemesh`
/// would work only by luck.
pub(crate) fn binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot tell where this claudemesh binary is: {e}"))?;
    let real = std::fs::canonicalize(&exe).unwrap_or_else(|_| exe.clone());
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("claudemesh"))
            .find(|c| std::fs::canonicalize(c).is_ok_and(|r| r == real))
    });
    Ok(on_path.unwrap_or(real))
}

/// `path` as one word of a shell command line (hooks run under `sh -c`).
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What an install or uninstall changed, for the summary.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) notes: Vec<String>,
}

pub(crate) fn install(
    f: &ClaudeFiles,
    bin: &Path,
    hooks: bool,
    status_line: bool,
) -> Result<Changes, String> {
    let mut ch = Changes::default();
    let word = shell_word(bin);
    // MCP server.
    let before = read_object(&f.claude_json)?;
    let mut cj = before.clone();
    let servers = cj
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(servers) = servers.as_object_mut() else {
        return Err(format!(
            "`mcpServers` in {} is not an object; fix it by hand",
            f.claude_json.display()
        ));
    };
    servers.insert(
        "claudemesh".into(),
        json!({"command": bin.display().to_string(), "args": ["mcp"]}),
    );
    if write_if_changed(&f.claude_json, &before, &cj)? {
        ch.files.push(f.claude_json.clone());
    }
    // Hooks and status line.
    let before = read_object(&f.settings)?;
    let mut st = before.clone();
    if hooks {
        let h = st
            .entry("hooks")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(h) = h.as_object_mut() else {
            return Err(format!(
                "`hooks` in {} is not an object; fix it by hand",
                f.settings.display()
            ));
        };
        for (event, arg) in HOOKS {
            let list = h.entry(*event).or_insert_with(|| Value::Array(Vec::new()));
            let Some(list) = list.as_array_mut() else {
                return Err(format!(
                    "`hooks.{event}` in {} is not a list; fix it by hand",
                    f.settings.display()
                ));
            };
            // One entry of ours per event, pointing at this binary (a reinstall after a
            // move or an upgrade updates it in place).
            let entry = json!({"hooks": [{"type": "command", "command": format!("{word} hook {arg}"), "timeout": 10}]});
            match list.iter().position(is_ours) {
                Some(i) => {
                    list[i] = entry;
                    let mut n = 0;
                    list.retain(|g| {
                        let ours = is_ours(g);
                        n += usize::from(ours);
                        !ours || n == 1
                    });
                }
                None => list.push(entry),
            }
        }
    }
    if status_line {
        let ours = json!({"type": "command", "command": format!("{word} status-line")});
        match st.get("statusLine") {
            None => {
                st.insert("statusLine".into(), ours);
            }
            Some(v) if is_our_status_line(v) => {
                st.insert("statusLine".into(), ours);
            }
            Some(_) => ch.notes.push(
                "you already have a status line; left it alone (add `claudemesh status-line` to it yourself)".into(),
            ),
        }
    }
    if write_if_changed(&f.settings, &before, &st)? {
        ch.files.push(f.settings.clone());
    }
    // Skill.
    let current = std::fs::read_to_string(&f.skill).ok();
    if current.as_deref() != Some(SKILL) {
        if let Some(dir) = f.skill.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        claudemesh_daemon::paths::write_atomic(&f.skill, SKILL.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", f.skill.display()))?;
        ch.files.push(f.skill.clone());
    }
    Ok(ch)
}

pub(crate) fn uninstall(f: &ClaudeFiles) -> Result<Changes, String> {
    let mut ch = Changes::default();
    let before = read_object(&f.claude_json)?;
    let mut cj = before.clone();
    if let Some(Value::Object(servers)) = cj.get_mut("mcpServers") {
        servers.remove("claudemesh");
        if servers.is_empty() {
            cj.remove("mcpServers");
        }
    }
    if write_if_changed(&f.claude_json, &before, &cj)? {
        ch.files.push(f.claude_json.clone());
    }
    let before = read_object(&f.settings)?;
    let mut st = before.clone();
    if let Some(Value::Object(h)) = st.get_mut("hooks") {
        for (event, _) in HOOKS {
            if let Some(Value::Array(list)) = h.get_mut(*event) {
                list.retain(|g| !is_ours(g));
                if list.is_empty() {
                    h.remove(*event);
                }
            }
        }
        if h.is_empty() {
            st.remove("hooks");
        }
    }
    if st.get("statusLine").is_some_and(is_our_status_line) {
        st.remove("statusLine");
    }
    if write_if_changed(&f.settings, &before, &st)? {
        ch.files.push(f.settings.clone());
    }
    if f.skill.exists() {
        std::fs::remove_file(&f.skill)
            .map_err(|e| format!("cannot remove {}: {e}", f.skill.display()))?;
        if let Some(dir) = f.skill.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        ch.files.push(f.skill.clone());
    }
    Ok(ch)
}

/// `claudemesh install`: register with Claude Code for this user, saying what changed.
pub(crate) fn register(a: InstallArgs) -> Res {
    let f = ClaudeFiles::from_env().map_err(|e| Failure::new(Exit::Error, e))?;
    let bin = binary().map_err(|e| Failure::new(Exit::Error, e))?;
    let ch =
        install(&f, &bin, !a.no_hooks, a.status_line).map_err(|e| Failure::new(Exit::Error, e))?;
    if ch.files.is_empty() {
        out!("claudemesh is already installed for Claude Code; nothing changed.");
    } else {
        for p in &ch.files {
            out!("updated {}", p.display());
        }
        out!("Restart Claude Code (or start it with `claudemesh launch`) to load claudemesh.");
    }
    for n in &ch.notes {
        out!("note: {n}");
    }
    Ok(())
}

/// `claudemesh uninstall`: remove what `register` added, saying what changed.
pub(crate) fn unregister() -> Res {
    let f = ClaudeFiles::from_env().map_err(|e| Failure::new(Exit::Error, e))?;
    let ch = uninstall(&f).map_err(|e| Failure::new(Exit::Error, e))?;
    if ch.files.is_empty() {
        out!("claudemesh was not installed for Claude Code; nothing changed.");
    }
    for p in &ch.files {
        out!("updated {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backups(dir: &Path) -> usize {
        let mut n = 0;
        for d in [dir.to_path_buf(), dir.join(".claude")] {
            if let Ok(rd) = std::fs::read_dir(d) {
                n += rd
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().contains(".bak-"))
                    .count();
            }
        }
        n
    }

    #[test]
    fn install_merges_is_idempotent_and_uninstall_restores() {
        let home = tempfile::tempdir().unwrap();
        let f = ClaudeFiles::under(home.path());
        std::fs::create_dir_all(home.path().join(".claude")).unwrap();
        let claude_json = json!({"theme": "dark", "mcpServers": {"other": {"command": "x"}}});
        let settings = json!({
            "model": "opus",
            "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}]},
            "statusLine": {"type": "command", "command": "my-line"}
        });
        std::fs::write(&f.claude_json, claude_json.to_string()).unwrap();
        std::fs::write(&f.settings, settings.to_string()).unwrap();

        let bin = Path::new("/opt/claude mesh/bin/claudemesh");
        let ch = install(&f, bin, true, true).unwrap();
        assert_eq!(ch.files.len(), 3);
        assert_eq!(
            ch.notes.len(),
            1,
            "an existing status line is not clobbered"
        );
        let cj: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.claude_json).unwrap()).unwrap();
        assert_eq!(cj["theme"], "dark");
        assert_eq!(cj["mcpServers"]["other"]["command"], "x");
        assert_eq!(
            cj["mcpServers"]["claudemesh"],
            json!({"command": "/opt/claude mesh/bin/claudemesh", "args": ["mcp"]})
        );
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.settings).unwrap()).unwrap();
        assert_eq!(st["model"], "opus");
        assert_eq!(st["statusLine"]["command"], "my-line");
        assert_eq!(st["hooks"]["Stop"].as_array().unwrap().len(), 2);
        assert_eq!(
            st["hooks"]["UserPromptSubmit"][0]["hooks"][0]["command"],
            "'/opt/claude mesh/bin/claudemesh' hook user-prompt-submit"
        );
        assert_eq!(backups(home.path()), 2);

        let again = install(&f, bin, true, true).unwrap();
        assert!(again.files.is_empty(), "a second install changes nothing");
        assert_eq!(backups(home.path()), 2);

        // Installed again from elsewhere (an upgrade moved it): entries follow, no twins.
        let moved = Path::new("/usr/local/bin/claudemesh");
        install(&f, moved, true, true).unwrap();
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.settings).unwrap()).unwrap();
        assert_eq!(st["hooks"]["Stop"].as_array().unwrap().len(), 2);
        assert_eq!(
            st["hooks"]["Stop"][1]["hooks"][0]["command"],
            "/usr/local/bin/claudemesh hook stop"
        );

        uninstall(&f).unwrap();
        let cj2: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.claude_json).unwrap()).unwrap();
        let st2: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.settings).unwrap()).unwrap();
        assert_eq!(cj2, claude_json);
        assert_eq!(st2, settings);
        assert!(!f.skill.exists());
    }

    #[test]
    fn status_line_is_added_when_absent_and_removed_by_uninstall() {
        let home = tempfile::tempdir().unwrap();
        let f = ClaudeFiles::under(home.path());
        install(&f, Path::new("/bin/claudemesh"), false, true).unwrap();
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.settings).unwrap()).unwrap();
        assert_eq!(st["statusLine"]["command"], "/bin/claudemesh status-line");
        assert!(st.get("hooks").is_none(), "--no-hooks adds none");
        uninstall(&f).unwrap();
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(&f.settings).unwrap()).unwrap();
        assert_eq!(st, json!({}));
    }

    #[test]
    fn our_commands_are_recognised_bare_or_by_path() {
        assert!(runs_claudemesh("claudemesh hook stop", "hook"));
        assert!(runs_claudemesh("/x/y/claudemesh hook stop", "hook"));
        assert!(runs_claudemesh("'/a b/claudemesh' hook stop", "hook"));
        assert!(!runs_claudemesh("notclaudemesh hook stop", "hook"));
        assert!(!runs_claudemesh("claudemesh status-line", "hook"));
        assert!(!runs_claudemesh("notify-send done", "hook"));
    }

    #[test]
    fn broken_files_are_refused_untouched() {
        let home = tempfile::tempdir().unwrap();
        let f = ClaudeFiles::under(home.path());
        std::fs::write(&f.claude_json, "{not json").unwrap();
        let e = install(&f, Path::new("/bin/claudemesh"), true, false).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&f.claude_json).unwrap(),
            "{not json"
        );
    }
}
