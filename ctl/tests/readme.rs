#![allow(clippy::unwrap_used)]
//! The README's Quick start and "another machine" recipes, run as written: the `sh` blocks
//! of its Quick start section are read from `README.md` when the test runs (so an edit to
//! the README is what gets tested), each run by `sh -e` on the machine its first comment
//! names (`# on the other machine` is the second config directory; every other block the
//! first), in one shared working directory (the file the recipe hands over).
//!
//! What is replaced, and why: `cargo run -p claudemesh --` becomes `claudemesh` (this
//! build's binary, first on `PATH`); `bash scripts/…` lines are left out (they run this
//! suite); the port 7900 becomes a free one (also as the first machine's default, in its
//! `config.toml`: the Quick start's `up` takes no port); `<your-host>` becomes `localhost`
//! (so the invite carries a name, not the listen address; `127.0.0.1` where `localhost`
//! means IPv6 first, which the recipe's IPv4 wildcard would not answer). `0.0.0.0` stays:
//! moving the relay from `127.0.0.1:7900` to `0.0.0.0:7900` on the same port is the
//! recipe, so the relay listens on every interface for the seconds the test runs; every
//! connection the test makes is to loopback.

use std::net::ToSocketAddrs as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// One `sh` block of the README, and the machine it runs on.
#[derive(Debug)]
struct Block {
    other_machine: bool,
    script: String,
}

/// The `sh` blocks between the `## Quick start` heading and the next `## ` heading.
fn quick_start_blocks(readme: &str) -> Vec<Block> {
    let start = readme
        .find("\n## Quick start")
        .expect("README.md has a Quick start section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "```sh" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let other_machine = body
            .first()
            .is_some_and(|l| l.trim_start().starts_with("# on the other machine"));
        blocks.push(Block {
            other_machine,
            script: body.join("\n"),
        });
    }
    blocks
}

/// The block as this test runs it (see the module comment).
fn adapt(script: &str, port: u16, host: &str) -> String {
    script
        .lines()
        .filter(|l| !l.trim_start().starts_with("bash scripts/"))
        .map(|l| {
            l.replace("cargo run -p claudemesh --", "claudemesh")
                .replace("7900", &port.to_string())
                .replace("<your-host>", host)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A machine: its config directory and display name.
struct Machine {
    dir: PathBuf,
    name: &'static str,
}

impl Machine {
    fn command(&self, work: &Path) -> Command {
        let bin_dir = bin().parent().unwrap();
        let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .unwrap();
        let mut cmd = Command::new("sh");
        cmd.current_dir(work)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.dir)
            .env("CLAUDEMESH_CONFIG_DIR", &self.dir)
            .env("CLAUDEMESH_DISPLAY_NAME", self.name)
            .env("CLAUDEMESH_SERVICE_MANAGER", "none")
            .env("CLAUDEMESH_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, work: &Path, script: &str) -> Output {
        self.command(work).args(["-ec", script]).output().unwrap()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The recipe starts daemons in the background; stop them whatever happened.
        if let Some(work) = self.dir.parent() {
            let _ = self.run(work, "claudemesh down");
        }
    }
}

/// A port free for TCP and UDP on every interface right now.
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn the_readme_quick_start_and_other_machine_recipes_work_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let blocks = quick_start_blocks(&readme);
    assert!(
        blocks.iter().any(|b| b.other_machine) && blocks.iter().any(|b| !b.other_machine),
        "the Quick start shows both machines: {blocks:?}"
    );
    let work = tempfile::tempdir().unwrap();
    let v4_first = ("localhost", 0)
        .to_socket_addrs()
        .unwrap()
        .next()
        .is_some_and(|a| a.is_ipv4());
    let host = if v4_first { "localhost" } else { "127.0.0.1" };
    let port = free_port();
    let this = Machine {
        dir: work.path().join("this"),
        name: "alice",
    };
    let other = Machine {
        dir: work.path().join("other"),
        name: "bob",
    };
    for m in [&this, &other] {
        std::fs::create_dir_all(&m.dir).unwrap();
    }
    // What the Quick start's `up` would use on a fresh machine, on another port (the
    // reconnect pause kept short, as for every test daemon).
    std::fs::write(
        this.dir.join("config.toml"),
        format!("[relay]\nlisten = \"127.0.0.1:{port}\"\n\n[link]\nmax_backoff_ms = 400\n"),
    )
    .unwrap();
    std::fs::write(
        other.dir.join("config.toml"),
        "[link]\nmax_backoff_ms = 400\n",
    )
    .unwrap();

    let mut transcript = String::new();
    let mut here = String::new();
    for b in &blocks {
        let (m, name) = if b.other_machine {
            (&other, "the other machine")
        } else {
            (&this, "this machine")
        };
        let script = adapt(&b.script, port, host);
        let out = m.run(work.path(), &script);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !b.other_machine {
            here.push_str(&stdout);
        }
        transcript.push_str(&format!(
            "--- on {name}:\n{script}\n--- stdout:\n{stdout}--- stderr:\n{stderr}"
        ));
        assert!(
            out.status.success(),
            "a README block failed ({:?}):\n{transcript}",
            out.status.code()
        );
    }
    // The invite named the public address, the other machine joined, and its message
    // arrived here.
    let link = std::fs::read_to_string(work.path().join("link.txt")).unwrap();
    assert!(
        link.trim()
            .starts_with(&format!("claudemesh://join/{host}:{port}/")),
        "{link}\n{transcript}"
    );
    assert!(
        here.contains("hello from the other machine"),
        "the message did not arrive here:\n{transcript}"
    );
    let joined = other.run(work.path(), "claudemesh list --json");
    let v: serde_json::Value = serde_json::from_slice(&joined.stdout).unwrap();
    assert_eq!(v["meshes"][0]["name"], "personal", "{v}");
    assert_eq!(
        v["meshes"][0]["relay"],
        format!("{host}:{port}").as_str(),
        "{v}"
    );
}
