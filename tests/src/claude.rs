//! The real Claude Code CLI, for tests and benchmarks: where `scripts/test` installed it
//! (npm `@anthropic-ai/claude-code`, pinned), a home directory prepared for it, print-mode
//! runs, and interactive sessions in a private tmux server.
//!
//! Everything stays on loopback: the model is a [`crate::model::ModelStub`]; print mode
//! runs with `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`; interactive runs (which need
//! Claude Code's feature flags, and those are off under that variable) send their other
//! traffic to a proxy address that refuses connections.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Claude Code version the tests pin (see `scripts/test`).
pub const VERSION: &str = "2.1.197";
/// The API key the stand-in accepts (Claude Code asks to approve a custom key once; the
/// prepared home has approved this one).
pub const API_KEY: &str = "sk-ant-test-claudemesh-0123456789abcdefghij";

/// The installed `claude` binary.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAUDEMESH_TEST_CLAUDE") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/claude-code/node_modules/.bin/claude");
    assert!(
        p.exists(),
        "Claude Code {VERSION} is not installed: run `bash scripts/test` (it installs it into target/claude-code)"
    );
    p
}

/// Prepare `home` for Claude Code: onboarding done, `workdir` trusted, the test key
/// approved, Bash allowed without asking. With `channels`, also what Claude Code reads
/// for its channels feature flag (`cachedGrowthBookFeatures.tengu_harbor`, normally
/// fetched from Anthropic): the one setting these tests make on Claude Code's behalf.
/// Keeps what is there (`claudemesh install` may have written it first).
pub fn prepare_home(home: &Path, workdir: &Path, channels: bool) {
    let cj_path = home.join(".claude.json");
    let mut cj: Value = std::fs::read_to_string(&cj_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    cj["hasCompletedOnboarding"] = json!(true);
    cj["customApiKeyResponses"] =
        json!({"approved": [&API_KEY[API_KEY.len() - 20..]], "rejected": []});
    cj["projects"][workdir.display().to_string()] = json!({"hasTrustDialogAccepted": true});
    cj["cachedGrowthBookFeatures"] = json!({"tengu_harbor": channels});
    std::fs::write(&cj_path, cj.to_string()).expect("write .claude.json");
    let st_path = home.join(".claude").join("settings.json");
    std::fs::create_dir_all(home.join(".claude")).expect("claude dir");
    let mut st: Value = std::fs::read_to_string(&st_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    st["permissions"] = json!({"allow": ["Bash"]});
    std::fs::write(&st_path, st.to_string()).expect("write settings.json");
}

/// The environment Claude Code runs with: `home`, the daemon's config directory, the
/// stand-in model, nothing else.
pub fn env(home: &Path, config_dir: &Path, model: &str) -> Vec<(String, String)> {
    let path = format!(
        "{}:{}",
        binary()
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    [
        ("PATH", path),
        ("HOME", home.display().to_string()),
        ("TERM", "xterm-256color".into()),
        ("LANG", "C.UTF-8".into()),
        ("CLAUDEMESH_CONFIG_DIR", config_dir.display().to_string()),
        ("CLAUDEMESH_NO_AUTOSTART", "1".into()),
        ("ANTHROPIC_BASE_URL", model.into()),
        ("ANTHROPIC_API_KEY", API_KEY.into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_ERROR_REPORTING", "1".into()),
        // Whatever does not go to the stand-in is refused on the spot.
        ("HTTPS_PROXY", "http://127.0.0.1:9".into()),
        ("HTTP_PROXY", "http://127.0.0.1:9".into()),
        ("NO_PROXY", "127.0.0.1,localhost".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `claude -p <args…>` in `workdir`, with `env`, offline; returns its output.
pub fn print(workdir: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.current_dir(workdir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .arg("-p")
        .args(args)
        .stdin(Stdio::null());
    cmd.output().expect("run claude")
}

/// Start `claude -p <args…>` in the background (see [`print`]).
pub fn spawn_print(workdir: &Path, env: &[(String, String)], args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(binary());
    cmd.current_dir(workdir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .arg("-p")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start claude")
}

/// Poll `cond` every 50 ms until it holds; panics with `what` after `secs`. For states no
/// event announces (a file a tool call creates, a terminal screen).
pub fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An interactive program in a private tmux server (its own socket, killed on drop).
#[derive(Debug)]
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Run `program args…` in `workdir` with exactly `env`, on a 200×50 screen.
    pub fn start(workdir: &Path, env: &[(String, String)], program: &Path, args: &[&str]) -> Self {
        let socket = format!(
            "claudemesh-test-{}-{}",
            std::process::id(),
            claudemesh_schema::now_ms()
        );
        let mut line = String::from("env -i");
        for (k, v) in env {
            line.push_str(&format!(" {k}={}", shell_quote(v)));
        }
        line.push(' ');
        line.push_str(&shell_quote(&program.display().to_string()));
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        // Keep the pane after the program exits, so its last screen can be read.
        line.push_str("; echo claudemesh-test-exited $?; sleep 600");
        let st = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "200",
                "-y",
                "50",
                "-c",
            ])
            .arg(workdir)
            .arg(line)
            .status()
            .expect("tmux (scripts/test installs it)");
        assert!(st.success(), "tmux did not start");
        Self { socket }
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the screen shows `text`.
    pub fn wait_for(&self, text: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let last = self.screen();
            if last.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {text:?}:\n{last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Type `text` (literally), then press Enter separately (typed fast, Enter would be
    /// taken as part of a paste).
    pub fn type_line(&self, text: &str) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t", "-l", text])
            .status()
            .expect("tmux send-keys");
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(300));
        self.key("Enter");
    }

    /// Press a key (`Enter`, `Escape`, …).
    pub fn key(&self, key: &str) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t", key])
            .status()
            .expect("tmux send-keys");
        assert!(st.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
