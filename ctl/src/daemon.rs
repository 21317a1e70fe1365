//! `claudemesh daemon start|stop|status|run`, and how every other command reaches the
//! daemon: its paths, a client that starts it when needed, waiting for it to stop.

use claudemesh_daemon::Paths;
use claudemesh_daemon::client::{
    Client, ClientError, autostart_disabled, connect_or_start, start_daemon,
};
use claudemesh_schema::ipc::methods::{self as m, HelloResult, StatusResult};
use std::io::Write as _;
use std::time::Duration;

use crate::cli::{DaemonAction, JsonArg};
use crate::commands::{block_on, server_runtime};
use crate::exit::{Exit, Failure, Res};
use crate::output;

pub(crate) fn run(action: DaemonAction) -> Res {
    match action {
        DaemonAction::Start => block_on(start()),
        DaemonAction::Stop => block_on(stop()),
        DaemonAction::Status(a) => block_on(status(a)),
        DaemonAction::Run { notify_ready } => foreground(notify_ready),
    }
}

/// Where this user's daemon keeps its files and socket (`CLAUDEMESH_CONFIG_DIR`), once it
/// is known to be readable: a directory that cannot be read would otherwise look like a
/// machine with no mesh (every file in it "missing").
pub(crate) fn paths() -> Result<Paths, Failure> {
    let p = Paths::from_env().map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    if let Some(why) = unreadable(&p) {
        return Err(Failure::new(Exit::Error, why));
    }
    Ok(p)
}

/// What is wrong with the config directory, if it exists but cannot be read (a directory
/// not yet made is fine: the first `up` makes it).
pub(crate) fn unreadable(p: &Paths) -> Option<String> {
    match std::fs::read_dir(&p.dir) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!(
            "cannot read the config directory {dir} ({e}); it holds your keys and meshes, so \
             nothing can be told about them. Make it a directory you own, mode 0700: \
             chmod 700 {dir} (or point CLAUDEMESH_CONFIG_DIR elsewhere)",
            dir = p.dir.display()
        )),
    }
}

/// A connection to the daemon, starting it first when it is not running (unless
/// `CLAUDEMESH_NO_AUTOSTART` says not to).
pub(crate) async fn client(p: &Paths) -> Result<Client, Failure> {
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::DaemonUnavailable,
            format!("cannot find the claudemesh executable: {e}"),
        )
    })?;
    Ok(connect_or_start(p, &exe).await?)
}

/// After answering from the local store with the daemon down: start it in the background
/// (without waiting) so the next command finds it running.
pub(crate) fn start_in_background(p: &Paths) {
    if autostart_disabled() || !p.db().exists() {
        return;
    }
    if let Ok(exe) = std::env::current_exe()
        && claudemesh_daemon::client::spawn_detached(p, &exe).is_ok()
    {
        note!("(the daemon was not running; starting it in the background)");
    }
}

/// Wait until the daemon of `p` has released its instance lock (it has fully exited its
/// run loop), polling the lock file.
pub(crate) async fn wait_stopped(p: &Paths) -> Res {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p.lock())
            && f.try_lock().is_ok()
        {
            return Ok(());
        }
        if !p.lock().exists() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::new(
                Exit::Error,
                "the daemon did not stop within 15 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start() -> Res {
    let p = paths()?;
    if let Ok(mut c) = Client::connect(&p.socket).await {
        let h: HelloResult = c.call(m::HELLO, ()).await?;
        out!("daemon already running (pid {})", h.pid);
        return Ok(());
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(Exit::DaemonUnavailable, e.to_string()))?;
    start_daemon(&p, &exe).await?;
    let mut c = Client::connect(&p.socket).await?;
    let h: HelloResult = c.call(m::HELLO, ()).await?;
    out!("daemon started (pid {})", h.pid);
    Ok(())
}

async fn stop() -> Res {
    let p = paths()?;
    match Client::connect(&p.socket).await {
        Ok(mut c) => {
            let _: serde_json::Value = c.call(m::SHUTDOWN, ()).await?;
            wait_stopped(&p).await?;
            out!("daemon stopped");
        }
        Err(ClientError::NotRunning { .. }) => out!("daemon not running"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn status(a: JsonArg) -> Res {
    let p = paths()?;
    match Client::connect(&p.socket).await {
        Ok(mut c) => {
            let s: StatusResult = c.call(m::STATUS, ()).await?;
            if a.json {
                output::json(
                    "status",
                    serde_json::json!({"running": true, "pid": s.pid, "version": s.version, "uptime_ms": s.uptime_ms, "socket": s.socket, "config_dir": s.config_dir}),
                );
            } else {
                out!(
                    "daemon running (pid {}, up {}, socket {})",
                    s.pid,
                    output::span(s.uptime_ms),
                    s.socket
                );
            }
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            if a.json {
                output::json(
                    "status",
                    serde_json::json!({"running": false, "config_dir": p.dir.display().to_string()}),
                );
            } else {
                out!("daemon not running");
            }
            Err(Failure::new(Exit::DaemonUnavailable, String::new()))
        }
        Err(e) => Err(e.into()),
    }
}

/// `claudemesh daemon run`: the daemon in the foreground until SIGTERM/SIGINT or a
/// `shutdown` call. With `--notify-ready` (`daemon start` spawning it) the outcome goes to
/// stdout, which the parent reads: `ready <pid>` or `error: …`.
fn foreground(notify_ready: bool) -> Res {
    let paths =
        Paths::from_env().map_err(|e| Failure::new(Exit::DaemonUnavailable, e.to_string()))?;
    let _guard = init_logging(&paths, !notify_ready);
    server_runtime()?.block_on(async move {
        let h = match claudemesh_daemon::start(paths).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "daemon failed to start");
                if notify_ready {
                    out!("error: {e}");
                    return Err(Failure::new(Exit::DaemonUnavailable, String::new()));
                }
                return Err(Failure::new(Exit::DaemonUnavailable, e.to_string()));
            }
        };
        if notify_ready {
            out!("ready {}", std::process::id());
            let _ = std::io::stdout().flush();
        }
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = h.stopped() => {}
        }
        h.shutdown().await;
        Ok(())
    })
}

/// Logs to daily files under the config directory (a week kept) and, run by hand, stderr.
fn init_logging(
    paths: &Paths,
    to_stderr: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // Logs name peers and meshes: this user's only, like everything the daemon writes.
    claudemesh_daemon::paths::private_umask();
    let _ = claudemesh_daemon::paths::ensure_private_dir(&paths.logs());
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("daemon")
        .filename_suffix("log")
        .max_log_files(7)
        .build(paths.logs())
        .ok();
    let (file_layer, guard) = match appender {
        Some(a) => {
            let (nb, guard) = tracing_appender::non_blocking(a);
            (
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(nb)
                        .with_filter(filter()),
                ),
                Some(guard),
            )
        }
        None => (None, None),
    };
    // Colour only for a person at a terminal: a service manager's journal or a file
    // redirect gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let stderr_layer = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
    guard
}

/// SIGTERM (service managers, `kill`) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
