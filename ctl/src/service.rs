//! `claudemesh service install|uninstall|status`: run the daemon as a user service — a
//! systemd user unit on Linux, a launchd agent on macOS — that starts at login and
//! restarts on failure. Install is idempotent (a file with the same content is left alone)
//! and uninstall removes exactly the file install wrote.
//!
//! `CLAUDEMESH_SERVICE_MANAGER=none` writes and removes the files without calling
//! `systemctl`/`launchctl` (for tests and for packaging into images).

use claudemesh_daemon::paths::{ServiceKind, service_file};
use std::path::Path;
use std::process::Command;

use crate::cli::ServiceAction;
use crate::exit::{Exit, Failure, Res};

/// The systemd user unit running `exe daemon run` for `config`.
pub(crate) fn systemd_unit(exe: &Path, config: &Path) -> String {
    format!(
        "[Unit]
Description=claudemesh daemon (mesh of coding-agent sessions)
Documentation=https://github.com/claudemesh/claudemesh
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart=\"{exe}\" daemon run
Environment=\"CLAUDEMESH_CONFIG_DIR={config}\"
Restart=on-failure
RestartSec=2
# The daemon logs to stderr (the journal) and to {config}/logs.
StandardOutput=journal
StandardError=journal
NoNewPrivileges=yes

[Install]
WantedBy=default.target
",
        exe = exe.display(),
        config = config.display(),
    )
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The launchd agent running `exe daemon run` for `config`.
pub(crate) fn launchd_plist(exe: &Path, config: &Path, logs: &Path) -> String {
    let (exe, config) = (
        xml(&exe.display().to_string()),
        xml(&config.display().to_string()),
    );
    let log = xml(&logs.join("daemon.launchd.log").display().to_string());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{label}</string>
    <key>ProgramArguments</key>
    <array>
        <string>{exe}</string>
        <string>daemon</string>
        <string>run</string>
    </array>
    <key>EnvironmentVariables</key>
    <dict>
        <key>CLAUDEMESH_CONFIG_DIR</key>
        <string>{config}</string>
    </dict>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ThrottleInterval</key>
    <integer>5</integer>
    <key>ProcessType</key>
    <string>Background</string>
    <key>StandardOutPath</key>
    <string>{log}</string>
    <key>StandardErrorPath</key>
    <string>{log}</string>
</dict>
</plist>
"#,
        label = claudemesh_daemon::paths::LAUNCHD_LABEL,
    )
}

pub(crate) fn manager_enabled() -> bool {
    std::env::var("CLAUDEMESH_SERVICE_MANAGER").map_or(true, |v| v != "none")
}

/// Can the service manager of `kind` run a user service here? (`Err` says why not.)
pub(crate) fn usable(kind: ServiceKind) -> Result<(), String> {
    match kind {
        // Answers only with a user instance and its bus (a login session, or lingering).
        ServiceKind::Systemd => manage("systemctl", &["--user", "show-environment"])
            .map(|_| ())
            .map_err(|e| format!("no usable systemd user session here ({e})")),
        ServiceKind::Launchd => manage("launchctl", &["print", &format!("gui/{}", uid())])
            .map(|_| ())
            .map_err(|e| format!("no usable launchd GUI session here ({e})")),
    }
}

/// The process id the service manager runs the daemon as, when it says.
fn service_pid(kind: ServiceKind) -> Option<u32> {
    match kind {
        ServiceKind::Systemd => manage(
            "systemctl",
            &[
                "--user",
                "show",
                "-p",
                "MainPID",
                "--value",
                claudemesh_daemon::paths::SYSTEMD_UNIT,
            ],
        )
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0),
        ServiceKind::Launchd => manage(
            "launchctl",
            &[
                "print",
                &format!("gui/{}/{}", uid(), claudemesh_daemon::paths::LAUNCHD_LABEL),
            ],
        )
        .ok()?
        .lines()
        .find_map(|l| l.trim().strip_prefix("pid = ")?.trim().parse().ok()),
    }
}

/// Wait until the service's daemon answers on the socket. A daemon started by hand in the
/// meantime (a hook or the MCP shim starts one when they find none) is not the service:
/// while the manager names another process, keep waiting.
async fn wait_for_daemon(
    paths: &claudemesh_daemon::Paths,
    kind: ServiceKind,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut other = None;
    loop {
        if let Ok(mut c) = claudemesh_daemon::Client::connect(&paths.socket).await
            && let Ok(h) = c
                .call::<claudemesh_schema::ipc::methods::HelloResult>(
                    claudemesh_schema::ipc::methods::HELLO,
                    (),
                )
                .await
        {
            match service_pid(kind) {
                Some(pid) if pid != h.pid => other = Some(h.pid),
                // The same process, or a manager that does not say: it answers.
                _ => return Ok(()),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match other {
                Some(pid) => format!(
                    "a daemon started by hand (pid {pid}) holds the socket, not the service's; stop it (`claudemesh daemon stop`) and install again"
                ),
                None => "its daemon did not answer within 20 s".into(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Run a service-manager command; `Err` says which and why it failed.
fn manage(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

fn kind_for(platform: Option<&str>) -> Result<ServiceKind, Failure> {
    match platform {
        Some("systemd") | Some("linux") => Ok(ServiceKind::Systemd),
        Some("launchd") | Some("macos") => Ok(ServiceKind::Launchd),
        Some(other) => Err(Failure::new(
            Exit::Usage,
            format!("unknown platform {other:?}: use systemd or launchd"),
        )),
        None => Ok(ServiceKind::native()),
    }
}

fn uid() -> String {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `claudemesh service install|uninstall|status`.
pub(crate) async fn run(action: ServiceAction) -> Res {
    match action {
        ServiceAction::Install(a) => install(a.platform, a.json).await,
        ServiceAction::Uninstall(a) => uninstall(a.platform).await,
        ServiceAction::Status(a) => status(a.platform, a.json).await,
    }
}

async fn install(platform: Option<String>, json: bool) -> Res {
    let kind = kind_for(platform.as_deref())?;
    let paths = crate::daemon::paths()?;
    // As invoked (not canonicalized): a package manager's stable symlink survives upgrades.
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(Exit::Error, format!("cannot find this program's path: {e}")))?;
    let config = std::path::absolute(&paths.dir).map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("cannot resolve {}: {e}", paths.dir.display()),
        )
    })?;
    let file = service_file(kind)
        .ok_or_else(|| Failure::new(Exit::Error, "cannot find your home directory (set HOME)"))?;
    let content = match kind {
        ServiceKind::Systemd => systemd_unit(&exe, &config),
        ServiceKind::Launchd => launchd_plist(&exe, &config, &config.join("logs")),
    };
    if let Ok(old) = std::fs::read_to_string(&file)
        && old != content
        && !old.contains(&claudemesh_daemon::paths::service_marker(kind, &config))
    {
        return Err(Failure::new(
            Exit::Conflict,
            format!(
                "{} runs the daemon of another config directory; uninstall it from there first",
                file.display()
            ),
        ));
    }
    let before = std::fs::read_to_string(&file).ok();
    let unchanged = before.as_deref() == Some(content.as_str());
    // Nothing is written and nothing stopped before the service manager is known to work:
    // without one (a container, an ssh session without a user bus) the daemon running now
    // is what everyone's link relies on.
    if manager_enabled()
        && !unchanged
        && let Err(why) = usable(kind)
    {
        return Err(Failure::new(
            Exit::Error,
            format!(
                "{why}; nothing was installed and the daemon keeps running as it is. {}",
                match kind {
                    ServiceKind::Systemd =>
                        "On a server, `loginctl enable-linger $USER` and a new login give you a systemd user session; until then `claudemesh up` keeps the daemon running",
                    ServiceKind::Launchd =>
                        "Run it from a logged-in macOS session (not over ssh without one); until then `claudemesh up` keeps the daemon running",
                }
            ),
        ));
    }
    if !unchanged {
        write_atomic(&file, &content)?;
    }
    // Unchanged: nothing to hand over or reload (a running service keeps running).
    if manager_enabled() && !unchanged {
        let restore = |why: String| {
            // Put things back as they were: the old file (or none), the daemon by hand.
            match &before {
                Some(old) => {
                    let _ = write_atomic(&file, old);
                }
                None => {
                    let _ = std::fs::remove_file(&file);
                }
            }
            why
        };
        let reload = match kind {
            ServiceKind::Systemd => manage("systemctl", &["--user", "daemon-reload"]),
            ServiceKind::Launchd => Ok(String::new()),
        };
        if let Err(e) = reload {
            return Err(Failure::new(
                Exit::Error,
                format!(
                    "{}; nothing was installed and the daemon keeps running as it is",
                    restore(e)
                ),
            ));
        }
        // A daemon started by hand holds the instance lock: hand over to the service.
        let was_running = match claudemesh_daemon::Client::connect(&paths.socket).await {
            Ok(mut c) => {
                let _: Result<serde_json::Value, _> =
                    c.call(claudemesh_schema::ipc::methods::SHUTDOWN, ()).await;
                crate::daemon::wait_stopped(&paths).await?;
                true
            }
            Err(_) => false,
        };
        let started = match kind {
            ServiceKind::Systemd => manage(
                "systemctl",
                &[
                    "--user",
                    "enable",
                    "--now",
                    claudemesh_daemon::paths::SYSTEMD_UNIT,
                ],
            )
            .map(|_| ()),
            ServiceKind::Launchd => {
                // An older version of the agent may be loaded: unload it first.
                let _ = manage(
                    "launchctl",
                    &[
                        "bootout",
                        &format!("gui/{}/{}", uid(), claudemesh_daemon::paths::LAUNCHD_LABEL),
                    ],
                );
                manage(
                    "launchctl",
                    &[
                        "bootstrap",
                        &format!("gui/{}", uid()),
                        &file.display().to_string(),
                    ],
                )
                .map(|_| ())
            }
        };
        // The service has taken over only once its daemon answers.
        let answered = match started {
            Ok(()) => wait_for_daemon(&paths, kind).await,
            Err(e) => Err(e),
        };
        if let Err(e) = answered {
            // Stop and disable what was started while its file is still there, then put
            // the old file (or none) back.
            match kind {
                ServiceKind::Systemd => {
                    let _ = manage(
                        "systemctl",
                        &[
                            "--user",
                            "disable",
                            "--now",
                            claudemesh_daemon::paths::SYSTEMD_UNIT,
                        ],
                    );
                }
                ServiceKind::Launchd => {
                    let _ = manage(
                        "launchctl",
                        &[
                            "bootout",
                            &format!("gui/{}/{}", uid(), claudemesh_daemon::paths::LAUNCHD_LABEL),
                        ],
                    );
                }
            }
            let why = restore(e);
            if kind == ServiceKind::Systemd {
                let _ = manage("systemctl", &["--user", "daemon-reload"]);
            }
            let back = if was_running {
                match crate::daemon::client(&paths).await {
                    Ok(_) => "the daemon was started again by hand",
                    Err(_) => "and the daemon could not be started again: run `claudemesh up`",
                }
            } else {
                "nothing else was changed"
            };
            return Err(Failure::new(
                Exit::Error,
                format!("the service did not take over ({why}); it was removed, {back}"),
            ));
        }
    }
    if json {
        crate::output::json(
            "service",
            serde_json::json!({"file": file, "changed": !unchanged}),
        );
    } else if unchanged {
        out!(
            "service already installed at {}; nothing changed",
            file.display()
        );
    } else if manager_enabled() {
        out!(
            "installed {}; the service runs the daemon now and at every login",
            file.display()
        );
    } else {
        out!(
            "installed {} (CLAUDEMESH_SERVICE_MANAGER=none: not started)",
            file.display()
        );
    }
    Ok(())
}

async fn uninstall(platform: Option<String>) -> Res {
    let kind = kind_for(platform.as_deref())?;
    let file = service_file(kind)
        .ok_or_else(|| Failure::new(Exit::Error, "cannot find your home directory (set HOME)"))?;
    if !file.exists() {
        out!(
            "no claudemesh service installed ({} does not exist)",
            file.display()
        );
        return Ok(());
    }
    let paths = crate::daemon::paths()?;
    let config = std::path::absolute(&paths.dir).unwrap_or(paths.dir.clone());
    let ours = std::fs::read_to_string(&file)
        .is_ok_and(|s| s.contains(&claudemesh_daemon::paths::service_marker(kind, &config)));
    if !ours {
        return Err(Failure::new(
            Exit::Conflict,
            format!(
                "{} runs the daemon of another config directory; uninstall it from there",
                file.display()
            ),
        ));
    }
    if manager_enabled() {
        let r = match kind {
            ServiceKind::Systemd => manage(
                "systemctl",
                &[
                    "--user",
                    "disable",
                    "--now",
                    claudemesh_daemon::paths::SYSTEMD_UNIT,
                ],
            ),
            ServiceKind::Launchd => manage(
                "launchctl",
                &[
                    "bootout",
                    &format!("gui/{}/{}", uid(), claudemesh_daemon::paths::LAUNCHD_LABEL),
                ],
            ),
        };
        if let Err(e) = r {
            out!("note: {e}");
        }
    }
    std::fs::remove_file(&file).map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("cannot remove {}: {e}", file.display()),
        )
    })?;
    if manager_enabled() && kind == ServiceKind::Systemd {
        let _ = manage("systemctl", &["--user", "daemon-reload"]);
    }
    out!("removed {}", file.display());
    Ok(())
}

async fn status(platform: Option<String>, json: bool) -> Res {
    let kind = kind_for(platform.as_deref())?;
    let file = service_file(kind);
    let installed = file.as_ref().is_some_and(|f| f.exists());
    let active = if installed && manager_enabled() {
        match kind {
            ServiceKind::Systemd => manage(
                "systemctl",
                &[
                    "--user",
                    "is-active",
                    claudemesh_daemon::paths::SYSTEMD_UNIT,
                ],
            )
            .ok(),
            ServiceKind::Launchd => manage(
                "launchctl",
                &[
                    "print",
                    &format!("gui/{}/{}", uid(), claudemesh_daemon::paths::LAUNCHD_LABEL),
                ],
            )
            .ok()
            .map(|_| "loaded".to_string()),
        }
    } else {
        None
    };
    if json {
        crate::output::json(
            "service",
            serde_json::json!({"installed": installed, "file": file, "state": active}),
        );
    } else if installed {
        out!(
            "installed: {} ({})",
            file.map(|f| f.display().to_string()).unwrap_or_default(),
            active.as_deref().unwrap_or("state unknown")
        );
    } else {
        out!("not installed; `claudemesh service install` runs the daemon as a user service");
    }
    Ok(())
}

fn write_atomic(file: &Path, content: &str) -> Res {
    let dir = file.parent().ok_or_else(|| {
        Failure::new(
            Exit::Error,
            format!("{} has no parent directory", file.display()),
        )
    })?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(Exit::Error, format!("cannot create {}: {e}", dir.display())))?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, content)
        .and_then(|_| std::fs::rename(&tmp, file))
        .map_err(|e| Failure::new(Exit::Error, format!("cannot write {}: {e}", file.display())))
}
