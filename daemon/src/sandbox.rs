//! The sandbox hosted services run in: bubblewrap (Debian's `bubblewrap`) with the root
//! file system read-only, the home directories, `/tmp`, `/run` and this daemon's own
//! directory hidden behind empty tmpfs mounts, the service's home and the directory of
//! the version it runs the only writable places (never the service's directory above
//! them, where the host prepares other versions outside the sandbox), its own PID, IPC
//! and UTS namespaces, no network but a loopback of its own unless the manifest allows
//! it, and `prlimit` limits (memory, open files, processes, no core files). Without a working `bwrap` a daemon refuses to host: it never runs a service
//! unsandboxed.
//!
//! The environment is not passed on `bwrap`'s command line (`--setenv` would show vault
//! values in `ps`): the wrapper's own environment is cleared and set to the service's,
//! which `bwrap` hands on.

use std::path::{Path, PathBuf};

/// Where `bwrap` and `prlimit` are looked for.
const BWRAP: &[&str] = &["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"];
const PRLIMIT: &[&str] = &["/usr/bin/prlimit", "/bin/prlimit"];

/// Most processes (and threads) a sandboxed service runs at once.
const MAX_PROCS: u32 = 1024;

/// The system's command search path inside the sandbox (before the service's own).
pub(crate) const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn find(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// One sandboxed run.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    /// Bound read-write, each at its own path: the service's home and the directory of
    /// the version it runs. Nothing the host later works on outside the sandbox (a
    /// version being fetched, a git repository it runs `git` in) may be among them.
    pub(crate) binds: Vec<PathBuf>,
    /// Where the command runs (inside one of `binds`).
    pub(crate) cwd: PathBuf,
    /// Hidden behind empty tmpfs mounts besides the defaults (the daemon's own
    /// directories, the host user's home).
    pub(crate) hide: Vec<PathBuf>,
    /// Open network sockets to the world (else: a loopback of its own).
    pub(crate) network: bool,
    /// Memory limit (data segment), bytes.
    pub(crate) memory: u64,
}

/// This machine's sandbox: its version, or why it cannot run one (checked by running
/// `true` in it, since user namespaces may be disabled).
pub(crate) fn probe() -> Result<String, String> {
    let Some(bwrap) = find(BWRAP) else {
        return Err(
            "bubblewrap is not installed (install the `bubblewrap` package to host services)"
                .into(),
        );
    };
    if find(PRLIMIT).is_none() {
        return Err("prlimit is not installed (util-linux)".into());
    }
    let version = std::process::Command::new(&bwrap)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let ok = std::process::Command::new(&bwrap)
        .args([
            "--unshare-all",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--",
            "/bin/true",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    match ok {
        Ok(o) if o.status.success() => Ok(if version.is_empty() {
            "bubblewrap".into()
        } else {
            version
        }),
        Ok(o) => Err(format!(
            "bubblewrap cannot create a sandbox here: {}",
            claudemesh_schema::names::one_line(&String::from_utf8_lossy(&o.stderr), 200)
        )),
        Err(e) => Err(format!("cannot run bubblewrap: {e}")),
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The command line that runs `command` in the sandbox.
pub(crate) fn wrap(sb: &Sandbox, command: &[String]) -> Result<Vec<String>, String> {
    let bwrap = find(BWRAP).ok_or("bubblewrap is not installed")?;
    let prlimit = find(PRLIMIT).ok_or("prlimit is not installed")?;
    let mut v: Vec<String> = vec![
        s(&bwrap),
        "--die-with-parent".into(),
        "--new-session".into(),
        "--unshare-all".into(),
    ];
    if sb.network {
        v.push("--share-net".into());
    }
    v.extend(
        ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
            .iter()
            .map(|a| a.to_string()),
    );
    let mut hide: Vec<PathBuf> = [
        "/tmp", "/var/tmp", "/home", "/root", "/run", "/mnt", "/media",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.is_dir())
    .collect();
    // Never the root or a top-level system directory (a home of `/` would hide it all).
    hide.extend(
        sb.hide
            .iter()
            .filter(|p| p.is_dir() && p.components().count() > 2)
            .cloned(),
    );
    // A parent before its children, so a child's tmpfs is not covered by its parent's.
    hide.sort();
    hide.dedup();
    for h in &hide {
        v.extend(["--tmpfs".into(), s(h)]);
    }
    if sb.network {
        // The resolver's files, where /run held them.
        for f in ["/etc/resolv.conf"] {
            if let Ok(real) = std::fs::canonicalize(f)
                && real.starts_with("/run")
            {
                v.extend(["--ro-bind".into(), s(&real), s(&real)]);
            }
        }
    }
    for b in &sb.binds {
        v.extend(["--bind".into(), s(b), s(b)]);
    }
    v.extend([
        "--chdir".into(),
        s(&sb.cwd),
        "--".into(),
        s(&prlimit),
        format!("--data={}", sb.memory),
        "--nofile=1024".into(),
        // A fork bomb stops here: counted in the sandbox's own user namespace.
        format!("--nproc={MAX_PROCS}"),
        "--core=0".into(),
        "--".into(),
    ]);
    v.extend(command.iter().cloned());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_directory_is_bound_after_everything_hidden() {
        if find(BWRAP).is_none() || find(PRLIMIT).is_none() {
            return;
        }
        let sb = Sandbox {
            binds: vec![
                PathBuf::from("/tmp/x/svc/home"),
                PathBuf::from("/tmp/x/svc/v1.a/src"),
            ],
            cwd: PathBuf::from("/tmp/x/svc/v1.a/src"),
            hide: vec![PathBuf::from("/"), PathBuf::from("/usr")],
            network: false,
            memory: 1 << 29,
        };
        let v = wrap(&sb, &["python3".into(), "s.py".into()]).expect("wrap");
        let bind = v.iter().position(|a| a == "--bind").expect("bind");
        let last_tmpfs = v.iter().rposition(|a| a == "--tmpfs").expect("tmpfs");
        assert!(bind > last_tmpfs);
        // Only what it was given is writable: never the service's directory above them.
        let bound: Vec<&str> = v
            .windows(2)
            .filter(|w| w[0] == "--bind")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(bound, ["/tmp/x/svc/home", "/tmp/x/svc/v1.a/src"]);
        assert!(v.iter().any(|a| a == &format!("--nproc={MAX_PROCS}")));
        assert!(!v.iter().any(|a| a == "--share-net"));
        assert!(v.iter().any(|a| a == "--unshare-all"));
        assert!(
            !v.windows(2)
                .any(|w| w[0] == "--tmpfs" && (w[1] == "/" || w[1] == "/usr"))
        );
        assert_eq!(&v[v.len() - 2..], ["python3", "s.py"]);
        let net = wrap(
            &Sandbox {
                network: true,
                ..sb
            },
            &["x".into()],
        )
        .expect("wrap");
        assert!(net.iter().any(|a| a == "--share-net"));
    }
}
