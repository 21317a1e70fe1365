//! `claudemesh`: parse the command line, then either run the daemon in the foreground
//! (`claudemesh daemon run`) or act as a client of it. Behaviour lives in `commands`.

/// Print a line to stdout; a closed pipe (`claudemesh … | head -1`) ends the process
/// quietly instead of panicking.
macro_rules! out {
    () => {
        $crate::output::line("")
    };
    ($($t:tt)*) => {
        $crate::output::line(&format!($($t)*))
    };
}

/// Print a line to stderr, ignoring a closed pipe.
macro_rules! note {
    ($($t:tt)*) => {
        $crate::output::note(&format!($($t)*))
    };
}

mod backup;
mod claude;
mod cli;
mod commands;
mod doctor;
mod exit;
mod install;
mod output;
mod service;
mod shared;

use clap::Parser as _;
use std::io::Write as _;
use std::process::ExitCode;

use crate::exit::Exit;

fn init_daemon_logging(
    paths: &claudemesh_daemon::Paths,
    to_stderr: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
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
    let stderr_layer = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
    guard
}

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

fn daemon_run(notify_ready: bool) -> ExitCode {
    let paths = match claudemesh_daemon::Paths::from_env() {
        Ok(p) => p,
        Err(e) => {
            note!("error: {e}");
            return Exit::DaemonUnavailable.into();
        }
    };
    let _guard = init_daemon_logging(&paths, !notify_ready);
    let Some(rt) = runtime(true) else {
        return Exit::Error.into();
    };
    rt.block_on(async move {
        let h = match claudemesh_daemon::start(paths).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "daemon failed to start");
                if notify_ready {
                    out!("error: {e}");
                } else {
                    note!("error: {e}");
                }
                return Exit::DaemonUnavailable.into();
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
        Exit::Ok.into()
    })
}

/// A tokio runtime: multi-threaded (2 workers) for servers, current-thread for commands.
fn runtime(multi: bool) -> Option<tokio::runtime::Runtime> {
    let mut b = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    match b.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            note!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `claudemesh mcp`: stdout carries only MCP frames; logs go to stderr, quiet by default.
fn mcp_run() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let paths = match claudemesh_daemon::Paths::from_env() {
        Ok(p) => p,
        Err(e) => {
            note!("error: {e}");
            return Exit::DaemonUnavailable.into();
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            note!("error: cannot find the claudemesh executable: {e}");
            return Exit::DaemonUnavailable.into();
        }
    };
    let Some(rt) = runtime(false) else {
        return Exit::Error.into();
    };
    match rt.block_on(claudemesh_mcp_shim::run(paths, exe)) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            note!("error: {e}");
            Exit::Error.into()
        }
    }
}

/// `claudemesh relay`: the same command line and behaviour as `claudemesh-relay`.
fn relay_run(a: claudemesh_relay::cli::RelayArgs) -> ExitCode {
    let Some(rt) = runtime(true) else {
        return Exit::Error.into();
    };
    match rt.block_on(claudemesh_relay::cli::run(a)) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            note!("error: {e}");
            Exit::for_relay_error(&e).into()
        }
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Flag-first invocations (`claudemesh --resume X`) mean `claudemesh launch …`.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(first) = argv.get(1).and_then(|a| a.to_str())
        && first.starts_with('-')
        && !matches!(first, "-h" | "--help" | "-V" | "--version")
    {
        let rest: Vec<_> = argv.drain(1..).collect();
        argv.push("launch".into());
        // Our own launch flags stay ours; everything else goes to `claude`.
        let mut passthrough = Vec::new();
        let mut it = rest.into_iter();
        while let Some(a) = it.next() {
            let s = a.to_string_lossy().to_string();
            let ours = ["--name", "--groups", "--mesh", "--role"];
            if s == "-y" || s == "--yes" {
                argv.push(a);
            } else if ours.contains(&s.as_str()) {
                argv.push(a);
                if let Some(v) = it.next() {
                    argv.push(v);
                }
            } else if ours.iter().any(|o| s.starts_with(&format!("{o}="))) {
                argv.push(a);
            } else {
                passthrough.push(a);
            }
        }
        argv.push("--".into());
        argv.extend(passthrough);
    }
    let cli = cli::Cli::parse_from(argv);
    if let cli::Command::Daemon {
        action: cli::DaemonAction::Run { notify_ready },
    } = cli.command
    {
        return daemon_run(notify_ready);
    }
    let command = match cli.command {
        cli::Command::Relay(args) => return relay_run(args),
        cli::Command::Mcp => return mcp_run(),
        other => other,
    };
    let Some(rt) = runtime(false) else {
        return Exit::Error.into();
    };
    match rt.block_on(commands::run(command)) {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            if !f.message.is_empty() {
                note!("error: {}", f.message);
            }
            f.code.into()
        }
    }
}
