//! Hosted services (`claudemesh host …`, `claudemesh deploy …`): MCP servers deployed by a
//! member as a signed manifest op and run by member daemons that offered to host
//! (`host_offer`), so they serve the mesh without anyone's laptop.
//!
//! On the deployer: resolve the source (a local file is shared with the hosts through
//! the files feature), seal each `$vault:` value from its vault to each host member's
//! key, and write the manifest. On a host: a reconciler follows the folded manifests,
//! fetches each source into the service's directory (git outside the sandbox, package
//! installs inside it), opens the secrets, and hands the service to `mcp_host` to run in
//! the sandbox (`sandbox`), supervised and restarted like any hosted server. Of a
//! service's hosts, the first one up serves it (registers it in the catalog); the others
//! run it on standby and take over when it goes offline. Log lines go back to the
//! deployer boxed, on request.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::deploy::{
    self, EnvValue, KIND_DEPLOY_LOGS, LogsAsk, Manifest, SealedSecret, Source,
};
use claudemesh_schema::ipc::deploy::{
    DeployListResult, DeployLogsResult, DeployParams, DeploySchemaResult, HostInfo, HostSetParams,
    HostStatusResult, LocalRun, MeshParams, ScopeParams, ServiceHost, ServiceInfo, ServiceParams,
};
use claudemesh_schema::op::Op;
use claudemesh_schema::tools::{self, Refusal, ResultBody, ToolSpec};
use claudemesh_schema::{MeshId, MessageId, SessionId, now_ms};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::context::Daemon;
use crate::delivery::send::boxed_to_session;
use crate::error::Error;
use crate::mcp_client::{Deployed, Preparing, Spec};
use crate::mesh::{LinkCmd, MeshCtx, lock};
use crate::sandbox::{self, Sandbox};

/// How long a package install or clone may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a shared file source may take to reach a host.
const FILE_WAIT: Duration = Duration::from_secs(120);
/// How long the deployer waits for a host's log lines.
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of log lines in one answer.
const LOGS_BYTES: usize = 96 * 1024;
/// A log request sent this long ago (or this far ahead) is not answered.
const ASK_FRESH_MS: i64 = 60_000;

/// This machine's sandbox, probed once.
fn sandbox_here() -> &'static Result<String, String> {
    static S: OnceLock<Result<String, String>> = OnceLock::new();
    S.get_or_init(sandbox::probe)
}

/// A folded deployment.
#[derive(Debug, Clone)]
struct Deployment {
    manifest: Manifest,
    author: MemberKey,
    author_name: String,
    updated_at: i64,
}

/// A folded host offer.
#[derive(Debug, Clone)]
struct HostRow {
    member: MemberKey,
    name: String,
    session: SessionId,
    enabled: bool,
    sandbox: String,
}

/// Everything the rules read, in one snapshot.
struct View {
    deployments: Vec<Deployment>,
    hosts: Vec<HostRow>,
    presence: Vec<crate::store::PresenceRow>,
    /// Catalog registrations: name → (host session, registrant), hosted services only.
    serving: HashMap<String, (SessionId, MemberKey)>,
}

impl View {
    /// Whether `member`'s daemon hosts now: offered, and online (we are, if we offered).
    fn up(&self, m: &MeshCtx, member: &MemberKey) -> bool {
        let Some(h) = self.hosts.iter().find(|h| h.member == *member && h.enabled) else {
            return false;
        };
        if *member == m.member() {
            return h.session == m.keys.session && sandbox_here().is_ok();
        }
        self.presence
            .iter()
            .any(|p| p.session == h.session && p.member == *member && p.online)
    }

    fn serving_host(&self, m: &MeshCtx, manifest: &Manifest) -> Option<MemberKey> {
        deploy::serving(&manifest.hosts, |h| self.up(m, h))
    }

    fn host_name(&self, m: &MeshCtx, member: &MemberKey) -> String {
        let name = self
            .hosts
            .iter()
            .find(|h| h.member == *member)
            .map(|h| h.name.clone())
            .or_else(|| m.member_name(member).map(|(n, _)| n))
            .unwrap_or_default();
        crate::shared::query::by(name, &member.0)
    }
}

fn key(b: Vec<u8>) -> Option<MemberKey> {
    <[u8; 32]>::try_from(b).ok().map(MemberKey)
}

async fn view(d: &Daemon, mesh: MeshId) -> Result<View, Error> {
    Ok(d.store
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT manifest, author, author_name, updated_at FROM deployments
                 WHERE mesh = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut deployments = Vec::new();
            for row in rows {
                let (manifest, author, author_name, updated_at) = row?;
                if let (Ok(manifest), Some(author)) =
                    (serde_json::from_str::<Manifest>(&manifest), key(author))
                {
                    deployments.push(Deployment {
                        manifest,
                        author,
                        author_name,
                        updated_at,
                    });
                }
            }
            let mut stmt = c.prepare_cached(
                "SELECT member, member_name, session, enabled, sandbox FROM service_hosts
                 WHERE mesh = ?1 ORDER BY updated_at",
            )?;
            let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?;
            let mut hosts = Vec::new();
            for row in rows {
                let (member, name, session, enabled, sandbox) = row?;
                if let (Some(member), Some(session)) =
                    (key(member), SessionId::from_slice(&session))
                {
                    hosts.push(HostRow {
                        member,
                        name,
                        session,
                        enabled,
                        sandbox,
                    });
                }
            }
            let mut stmt = c.prepare_cached(
                "SELECT s.name, s.host, s.author FROM mcp_servers s
                 JOIN deployments d ON d.mesh = s.mesh AND d.name = s.name WHERE s.mesh = ?1",
            )?;
            let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            let mut serving = HashMap::new();
            for row in rows {
                let (name, host, author) = row?;
                if let (Some(host), Some(author)) = (SessionId::from_slice(&host), key(author)) {
                    serving.insert(name, (host, author));
                }
            }
            Ok(View {
                deployments,
                hosts,
                presence: crate::store::q_presence(c, mesh)?,
                serving,
            })
        })
        .await?)
}

// ---- this daemon as a host ----

/// `host_set`.
pub(crate) async fn host_set(d: &Arc<Daemon>, p: HostSetParams) -> Result<HostStatusResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let sandbox = match sandbox_here() {
        Ok(s) => s.clone(),
        Err(e) if p.enabled => {
            return Err(Error::invalid(format!(
                "this machine cannot host services: {e}"
            )));
        }
        Err(_) => String::new(),
    };
    crate::shared::oplog::write(
        d,
        &m,
        None,
        Op::HostOffer {
            enabled: p.enabled,
            sandbox,
        },
        None,
    )
    .await?;
    let mut st = host_status(
        d,
        MeshParams {
            mesh: Some(m.id.to_string()),
        },
    )
    .await?;
    // As written, even before the mesh's log has it in order.
    st.enabled = p.enabled;
    Ok(st)
}

/// `host_status`.
pub(crate) async fn host_status(d: &Arc<Daemon>, p: MeshParams) -> Result<HostStatusResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let v = view(d, m.id).await?;
    let me = m.member();
    let mut running: Vec<String> = lock(&d.hosted)
        .values()
        .filter(|h| h.mesh == m.id && h.spec.deployed.is_some())
        .map(|h| h.name.clone())
        .collect();
    running.sort();
    let (sandbox, sandbox_ok) = match sandbox_here() {
        Ok(s) => (s.clone(), true),
        Err(e) => (e.clone(), false),
    };
    Ok(HostStatusResult {
        mesh: m.id,
        enabled: v.hosts.iter().any(|h| h.member == me && h.enabled),
        sandbox,
        sandbox_ok,
        running,
        hosts: v
            .hosts
            .iter()
            .map(|h| HostInfo {
                name: v.host_name(&m, &h.member),
                fingerprint: h.member.fingerprint(),
                enabled: h.enabled,
                sandbox: h.sandbox.clone(),
                online: v.up(&m, &h.member) || (h.member == me),
                me: h.member == me,
            })
            .collect(),
    })
}

/// Follow the folded manifests for as long as the daemon runs: start, replace and stop
/// the services this daemon hosts, and register the ones it serves.
pub(crate) async fn run(d: Arc<Daemon>) {
    let mut changes = d.changes.subscribe();
    loop {
        for m in d.meshes() {
            if let Err(e) = reconcile(&d, &m).await {
                tracing::warn!(mesh = %m.id.short(), error = %e, "cannot follow the hosted services");
            }
        }
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
        // A burst of changes (an op page, presence) is one look.
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn reconcile(d: &Arc<Daemon>, m: &Arc<MeshCtx>) -> Result<(), Error> {
    // Most meshes deploy nothing: one cheap look, not the whole view, on every change
    // (changes come with every message).
    let runs_any = lock(&d.hosted)
        .values()
        .any(|h| h.mesh == m.id && h.spec.deployed.is_some())
        || lock(&d.preparing).keys().any(|(mesh, _)| *mesh == m.id);
    if !runs_any {
        let id = m.id;
        let any: bool = d
            .store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM deployments WHERE mesh = ?1)",
                    params![id.as_bytes()],
                    |r| r.get(0),
                )?)
            })
            .await?;
        if !any {
            return Ok(());
        }
    }
    let v = view(d, m.id).await?;
    let me = m.member();
    let hosting = v.up(m, &me);
    let want: HashMap<&str, &Deployment> = v
        .deployments
        .iter()
        .filter(|x| hosting && x.manifest.hosted_by(&me))
        .map(|x| (x.manifest.name.as_str(), x))
        .collect(); // Stop what is no longer ours to run. (An older version keeps serving until the new
    // one is ready: `prepare_and_start` swaps them.)
    let running: Vec<_> = lock(&d.hosted)
        .values()
        .filter(|h| h.mesh == m.id && h.spec.deployed.is_some())
        .cloned()
        .collect();
    for h in running {
        if want.contains_key(h.name.as_str()) {
            continue;
        }
        tracing::info!(service = %h.name, "stopping a hosted service (undeployed, moved, or hosting disabled)");
        crate::mcp_host::stop(d, &h).await;
        lock(&d.preparing).remove(&(m.id, h.name.clone()));
        if let Err(e) = crate::mcp_host::unpublish(d, m, &h.name).await {
            tracing::warn!(service = %h.name, error = %e, "cannot take a stopped service out of the catalog");
        }
    }
    lock(&d.preparing).retain(|(mesh, name), _| *mesh != m.id || want.contains_key(name.as_str()));
    // Start what is ours and not started at this version.
    for x in want.values() {
        let k = (m.id, x.manifest.name.clone());
        let started = lock(&d.preparing)
            .get(&k)
            .is_some_and(|p| p.version == x.manifest.version);
        if started {
            continue;
        }
        lock(&d.preparing).insert(
            k,
            Preparing {
                version: x.manifest.version,
                state: "fetching".into(),
                lines: Vec::new(),
            },
        );
        let (d2, m2, x2) = (d.clone(), m.clone(), (*x).clone());
        let span = tracing::info_span!("deploy", mesh = %m.id.short(), service = %x.manifest.name, version = x.manifest.version);
        use tracing::Instrument as _;
        d.tasks
            .spawn(async move { prepare_and_start(&d2, &m2, x2).await }.instrument(span));
    }
    // Register what we serve (a no-op when the catalog already says so: a new version's
    // tools or scope, a standby taking over), and take out registrations of ours for
    // services we no longer run (hosting disabled, or dropped from their hosts while down).
    for x in want.values() {
        if v.serving_host(m, &x.manifest) != Some(me) {
            continue;
        }
        let h = lock(&d.hosted)
            .get(&(m.id, x.manifest.name.clone()))
            .cloned();
        if let Some(h) = h
            && h.client().is_some()
            && h.spec.deployed.as_ref().map(|x| x.version) == Some(x.manifest.version)
        {
            let tools = h.tools();
            crate::mcp_host::register(d, m, &h, tools).await;
        }
    }
    for (name, (session, _)) in &v.serving {
        if *session == m.keys.session
            && !want.contains_key(name.as_str())
            && let Err(e) = crate::mcp_host::unpublish(d, m, name).await
        {
            tracing::warn!(service = %name, error = %e, "cannot take a service this daemon no longer runs out of the catalog");
        }
    }
    Ok(())
}

fn note(d: &Daemon, mesh: MeshId, name: &str, version: u64, state: &str, line: String) {
    if let Some(p) = lock(&d.preparing).get_mut(&(mesh, name.to_string()))
        && p.version == version
    {
        p.state = state.to_string();
        if p.lines.len() >= 200 {
            p.lines.remove(0);
        }
        p.lines.push(line);
    }
}

async fn prepare_and_start(d: &Arc<Daemon>, m: &Arc<MeshCtx>, x: Deployment) {
    let (name, version) = (x.manifest.name.clone(), x.manifest.version);
    note(
        d,
        m.id,
        &name,
        version,
        "fetching",
        format!("[claudemesh] fetching {}", x.manifest.source.label()),
    );
    match prepare(d, m, &x).await {
        Ok(spec) => {
            // Still wanted at this version (an update may have come meanwhile)?
            let current = lock(&d.preparing)
                .get(&(m.id, name.clone()))
                .is_some_and(|p| p.version == version);
            if !current {
                return;
            }
            note(
                d,
                m.id,
                &name,
                version,
                "started",
                "[claudemesh] source ready; starting".into(),
            );
            let old = lock(&d.hosted).get(&(m.id, name.clone())).cloned();
            if let Some(old) = old {
                crate::mcp_host::stop(d, &old).await;
            }
            let keep = spec
                .deployed
                .as_ref()
                .and_then(|dep| dep.sandbox.binds.last().cloned());
            crate::mcp_host::start(d, m, name, spec);
            clean_old_versions(d, m, &x.manifest, keep.as_deref());
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare a hosted service");
            note(
                d,
                m.id,
                &name,
                version,
                "failed",
                format!("[claudemesh] cannot start: {e}"),
            );
        }
    }
}

fn service_dir(d: &Daemon, m: &MeshCtx, name: &str) -> PathBuf {
    d.paths.dir.join("deploy").join(m.id.short()).join(name)
}

/// Once a version runs, every other version's directory goes (the service's home stays).
fn clean_old_versions(d: &Daemon, m: &MeshCtx, mf: &Manifest, keep: Option<&Path>) {
    if let Ok(rd) = std::fs::read_dir(service_dir(d, m, &mf.name)) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with('v') && Some(e.path().as_path()) != keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Fetch the source, open the secrets, and say how to run it.
///
/// Each preparation fetches into a directory of its own, made here and never before
/// reachable from a sandbox: a service (this version's earlier run, or another version's)
/// writes only its home and its own version's directory, so it cannot plant what the
/// host then acts on outside the sandbox (a `.git` whose hooks or config `git` would run,
/// a symlink a fetched file would be written through).
async fn prepare(d: &Arc<Daemon>, m: &Arc<MeshCtx>, x: &Deployment) -> Result<Spec, String> {
    let mf = &x.manifest;
    mf.check().map_err(|e| e.0)?;
    let dir = service_dir(d, m, &mf.name);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let vdir = dir.join(format!(
        "v{}.{}",
        mf.version,
        claudemesh_schema::ItemId::new()
    ));
    std::fs::create_dir(&vdir).map_err(|e| format!("cannot create {}: {e}", vdir.display()))?;
    let spec = prepare_in(d, m, mf, &vdir, &home).await;
    if spec.is_err() {
        let _ = std::fs::remove_dir_all(&vdir);
    }
    spec
}

async fn prepare_in(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    mf: &Manifest,
    vdir: &Path,
    home: &Path,
) -> Result<Spec, String> {
    let src = vdir.join("src");
    std::fs::create_dir(&src).map_err(|e| format!("cannot create {}: {e}", src.display()))?;
    let hide = hidden(d);
    let sb = |cwd: &Path, network: bool| Sandbox {
        binds: vec![home.to_path_buf(), vdir.to_path_buf()],
        cwd: cwd.to_path_buf(),
        hide: hide.clone(),
        network,
        memory: u64::from(mf.memory_mb) << 20,
    };
    let mut path = sandbox::SYSTEM_PATH.to_string();
    match &mf.source {
        Source::File { file, name } => fetch_file(d, m, *file, &src.join(name)).await?,
        Source::Git { url, commit } => {
            run_tool(
                Path::new("git"),
                &[
                    "clone".into(),
                    "--quiet".into(),
                    "--no-checkout".into(),
                    "--".into(),
                    url.clone(),
                    src.display().to_string(),
                ],
                vdir,
            )
            .await?;
            run_tool(
                Path::new("git"),
                &[
                    "-C".into(),
                    src.display().to_string(),
                    "-c".into(),
                    "advice.detachedHead=false".into(),
                    "checkout".into(),
                    "--quiet".into(),
                    "--detach".into(),
                    commit.clone(),
                ],
                vdir,
            )
            .await?;
        }
        Source::Npm { package, version } => {
            // Installed inside the sandbox (with network): install scripts run there.
            install(
                &sb(&src, true),
                home,
                &[
                    "npm".into(),
                    "install".into(),
                    "--no-audit".into(),
                    "--no-fund".into(),
                    "--loglevel=error".into(),
                    "--prefix".into(),
                    src.display().to_string(),
                    format!("{package}@{version}"),
                ],
            )
            .await?;
            path = format!("{}:{path}", src.join("node_modules/.bin").display());
        }
        Source::Pypi { package, version } => {
            let venv = vdir.join("venv");
            install(
                &sb(vdir, true),
                home,
                &[
                    "python3".into(),
                    "-m".into(),
                    "venv".into(),
                    venv.display().to_string(),
                ],
            )
            .await?;
            install(
                &sb(vdir, true),
                home,
                &[
                    venv.join("bin/pip").display().to_string(),
                    "install".into(),
                    "--quiet".into(),
                    "--disable-pip-version-check".into(),
                    format!("{package}=={version}"),
                ],
            )
            .await?;
            path = format!("{}:{path}", venv.join("bin").display());
        }
    }
    let mut env = base_env(home, &path);
    let mut secrets = Vec::new();
    for e in &mf.env {
        match &e.value {
            EnvValue::Plain { value } => env.push((e.key.clone(), value.clone())),
            EnvValue::Vault { name } => {
                let value = mf
                    .secrets
                    .iter()
                    .filter(|s| s.host == m.member() && s.name == *name)
                    .find_map(|s| deploy::open_secret(&m.keys.member, &m.id, &mf.name, s))
                    .ok_or_else(|| {
                        format!(
                            "the vault entry {name:?} was not sealed for this host; the deployer must deploy again naming it"
                        )
                    })?;
                secrets.push((e.key.clone(), name.clone(), value));
            }
        }
    }
    Ok(Spec {
        command: mf.command.clone(),
        cwd: None,
        env: Vec::new(),
        description: claudemesh_schema::names::one_line(&mf.description, 120),
        allow: mf.allow.clone(),
        scope: mf.scope.clone(),
        session: None,
        deployed: Some(Deployed {
            version: mf.version,
            sandbox: sb(&src, mf.network),
            env,
            secrets,
        }),
    })
}

/// What a service's sandbox hides besides the defaults: this daemon's directories and
/// the home of the user it runs as.
fn hidden(d: &Daemon) -> Vec<PathBuf> {
    let mut v = vec![d.paths.dir.clone()];
    if let Some(parent) = d.paths.socket.parent() {
        v.push(parent.to_path_buf());
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(home));
    }
    v
}

fn base_env(home: &Path, path: &str) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), path.to_string()),
        ("HOME".into(), home.display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// Run a fetching tool (git) outside the sandbox, quietly, within [`FETCH_TIMEOUT`].
async fn run_tool(program: &Path, args: &[String], cwd: &Path) -> Result<(), String> {
    output(tool_command(program, args, cwd), program).await
}

/// How [`run_tool`] runs `program`: with none of the host user's environment, so a
/// deployer's URL is fetched as nobody in particular: not with the host user's SSH keys
/// or agent, credential helpers, or git configuration (`url.*.insteadOf`, hooks).
fn tool_command(program: &Path, args: &[String], cwd: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", sandbox::SYSTEM_PATH)
        .env("HOME", "/nonexistent")
        .env("LANG", "C.UTF-8")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        // ssh reads the user's files from the password database, not $HOME.
        .env(
            "GIT_SSH_COMMAND",
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=none -o IdentityAgent=none",
        )
        // No transport helpers (`ext::`) even if a URL slipped through.
        .env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Run an install command inside the sandbox (with network), within [`FETCH_TIMEOUT`].
async fn install(sb: &Sandbox, home: &Path, command: &[String]) -> Result<(), String> {
    let argv = sandbox::wrap(sb, command)?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(base_env(home, sandbox::SYSTEM_PATH))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    output(cmd, Path::new(&command[0])).await
}

async fn output(mut cmd: tokio::process::Command, program: &Path) -> Result<(), String> {
    let name = program.display().to_string();
    let out = tokio::time::timeout(FETCH_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("{name} did not finish in {} s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    Err(format!(
        "{name} failed ({}): {}",
        out.status,
        claudemesh_schema::names::one_line(
            &tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
            400
        )
    ))
}

/// Fetch a shared file source, once its share op has reached us.
async fn fetch_file(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    file: claudemesh_schema::ItemId,
    out: &Path,
) -> Result<(), String> {
    let until = tokio::time::Instant::now() + FILE_WAIT;
    match crate::files::get_when_shared(d, m, file, out, until).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the service's file did not reach this host in time".into()),
        Err(e) => Err(format!("cannot fetch the service's file: {e}")),
    }
}

// ---- the deployer ----

fn find<'a>(v: &'a View, name: &str) -> Option<&'a Deployment> {
    v.deployments.iter().find(|x| x.manifest.name == name)
}

fn may_change(m: &MeshCtx, x: &Deployment) -> bool {
    x.author == m.member() || m.role().is_admin()
}

/// Resolve host selectors to enabled hosts, in the order given (none: every enabled host).
async fn resolve_hosts(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    v: &View,
    sel: &[String],
) -> Result<Vec<MemberKey>, Error> {
    let enabled: Vec<&HostRow> = v.hosts.iter().filter(|h| h.enabled).collect();
    if sel.is_empty() {
        if enabled.is_empty() {
            return Err(Error::not_found(
                "no member's daemon hosts services in this mesh; run `claudemesh host enable` on an always-on machine first",
            ));
        }
        return Ok(enabled
            .iter()
            .map(|h| h.member)
            .take(deploy::MAX_HOSTS)
            .collect());
    }
    let peers = crate::grants::peers(d, m).await?;
    let mut out = Vec::new();
    for s in sel
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let me = m.member();
        let key = if ["me", "self"].contains(&s) || me.fingerprint().starts_with(s) {
            me
        } else {
            let found: Vec<_> = peers.iter().filter(|p| p.selected_by(s)).collect();
            match found.as_slice() {
                [p] => p.key,
                [] => return Err(Error::not_found(format!("no member {s:?} in this mesh"))),
                _ => {
                    return Err(Error::ambiguous(format!(
                        "{s:?} names several members; use a fingerprint prefix"
                    )));
                }
            }
        };
        if !enabled.iter().any(|h| h.member == key) {
            return Err(Error::invalid(format!(
                "{s:?} does not host services (run `claudemesh host enable` on its machine); `claudemesh host status` lists the hosts"
            )));
        }
        if !out.contains(&key) {
            out.push(key);
        }
    }
    Ok(out)
}

fn split_package(spec: &str, sep: &str) -> Result<(String, String), Error> {
    // An npm scope starts with `@`: the version follows the last one.
    let at = if sep == "@" {
        spec.rfind('@').filter(|i| *i > 0)
    } else {
        spec.find(sep)
    };
    match at {
        Some(i) => Ok((spec[..i].to_string(), spec[i + sep.len()..].to_string())),
        None => Err(Error::invalid(format!(
            "give an exact version: `{spec}{sep}<version>`"
        ))),
    }
}

/// `deploy_add`: deploy a service, or (`update`) a new version of one.
pub(crate) async fn add(d: &Arc<Daemon>, p: DeployParams) -> Result<ServiceInfo, Error> {
    let m = d.select(p.mesh.as_deref())?;
    tools::check_server(&p.name).map_err(|e| Error::invalid(e.to_string()))?;
    let v = view(d, m.id).await?;
    let old = find(&v, &p.name).cloned();
    match (&old, p.update) {
        (None, true) => {
            return Err(Error::not_found(format!(
                "no service {:?} is deployed in this mesh (see `claudemesh deploy list`)",
                p.name
            )));
        }
        (Some(_), false) => {
            return Err(Error::conflict(format!(
                "a service {:?} is deployed already; `claudemesh deploy update {}` replaces it",
                p.name, p.name
            )));
        }
        (Some(x), true) if !may_change(&m, x) => {
            return Err(Error::forbidden(format!(
                "the service {:?} was deployed by {}; only they or an admin can change it",
                p.name,
                crate::shared::query::by(x.author_name.clone(), &x.author.0)
            )));
        }
        _ => {}
    }
    if old.is_none() {
        let (id, n) = (m.id, p.name.clone());
        let holder: Option<Vec<u8>> = d
            .store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT author FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
                    params![id.as_bytes(), n],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        if holder.is_some_and(|h| h.as_slice() != m.member().0.as_slice()) && !m.role().is_admin() {
            return Err(Error::conflict(format!(
                "another member shares a server named {:?}; choose another name",
                p.name
            )));
        }
    }
    let hosts = match (&old, p.hosts.is_empty()) {
        (Some(x), true) => x.manifest.hosts.clone(),
        _ => resolve_hosts(d, &m, &v, &p.hosts).await?,
    };
    let given = [
        p.file.is_some(),
        p.git.is_some(),
        p.npm.is_some(),
        p.pypi.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(Error::invalid(
            "give one source: --file, --git (with --commit), --npm or --pypi",
        ));
    }
    let source = if let Some(path) = &p.file {
        let path = PathBuf::from(path);
        if !path.is_absolute() || !path.is_file() {
            return Err(Error::invalid(format!(
                "{} is not a file (give an absolute path)",
                path.display()
            )));
        }
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        // The file is shared once every check passed; its id then replaces this one.
        Source::File {
            file: claudemesh_schema::ItemId::new(),
            name: file_name,
        }
    } else if let Some(url) = &p.git {
        let Some(commit) = p.commit.clone().filter(|c| !c.is_empty()) else {
            return Err(Error::invalid(
                "give the commit to run with --commit (a branch could change under the manifest)",
            ));
        };
        Source::Git {
            url: url.clone(),
            commit,
        }
    } else if let (Some(commit), Some(Source::Git { url, .. })) =
        (&p.commit, old.as_ref().map(|x| &x.manifest.source))
    {
        // Another commit of the same repository.
        Source::Git {
            url: url.clone(),
            commit: commit.clone(),
        }
    } else if p.commit.is_some() {
        return Err(Error::invalid(
            "--commit goes with --git (or updates a service deployed from git)",
        ));
    } else if let Some(spec) = &p.npm {
        let (package, version) = split_package(spec, "@")?;
        Source::Npm { package, version }
    } else if let Some(spec) = &p.pypi {
        let (package, version) = split_package(spec, "==")?;
        Source::Pypi { package, version }
    } else if let Some(x) = &old {
        x.manifest.source.clone()
    } else {
        return Err(Error::invalid(
            "give the service's source: --file PATH, --git URL --commit SHA, --npm PKG@VERSION or --pypi PKG==VERSION",
        ));
    };
    source.check().map_err(|e| Error::invalid(e.0))?;
    let command = if !p.command.is_empty() {
        p.command.clone()
    } else if let Some(x) = &old {
        x.manifest.command.clone()
    } else if let Some(c) = source.default_command() {
        vec![c]
    } else {
        return Err(Error::invalid(
            "give the service's command after `--`, e.g. `-- python3 server.py`",
        ));
    };
    let env = match (&p.env, &old) {
        (Some(e), _) => e
            .iter()
            .map(|s| deploy::parse_env(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid(e.0))?,
        (None, Some(x)) => x.manifest.env.clone(),
        (None, None) => Vec::new(),
    };
    let scope = match (&p.scope, &old) {
        (Some(s), _) => crate::mcp_host::parse_scope(d, &m, Some(s)).await?,
        (None, Some(x)) => x.manifest.scope.clone(),
        (None, None) => tools::Scope::Mesh,
    };
    let mut manifest = Manifest {
        name: p.name.clone(),
        version: old.as_ref().map_or(1, |x| x.manifest.version + 1),
        description: p
            .description
            .clone()
            .or_else(|| old.as_ref().map(|x| x.manifest.description.clone()))
            .unwrap_or_default(),
        source,
        command,
        env,
        secrets: Vec::new(),
        memory_mb: p
            .memory_mb
            .or_else(|| old.as_ref().map(|x| x.manifest.memory_mb))
            .unwrap_or(deploy::DEFAULT_MEMORY_MB),
        network: p
            .network
            .or_else(|| old.as_ref().map(|x| x.manifest.network))
            .unwrap_or(false),
        scope,
        allow: p
            .allow
            .clone()
            .or_else(|| old.as_ref().map(|x| x.manifest.allow.clone()))
            .unwrap_or_default(),
        hosts,
    };
    // Checked before anything leaves: a file shared for a manifest the fold refuses
    // would be shared for nothing.
    manifest.check().map_err(|e| Error::invalid(e.0))?;
    manifest.secrets = seal_all(d, &m, &manifest).await?;
    if let (Some(path), Source::File { file, .. }) = (&p.file, &mut manifest.source) {
        *file = share_source(d, &m, &manifest.hosts, &manifest.name, path).await?;
    }
    manifest.check().map_err(|e| Error::invalid(e.0))?;
    write_manifest(d, &m, manifest).await
}

/// Write a manifest and say how the service stands: as folded once the relay ordered it
/// (within the usual wait), else as written (queued while the link is down).
async fn write_manifest(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    manifest: Manifest,
) -> Result<ServiceInfo, Error> {
    let name = manifest.name.clone();
    let version = manifest.version;
    let w = crate::shared::oplog::write(
        d,
        m,
        None,
        Op::DeployMcp {
            manifest: manifest.clone(),
        },
        None,
    )
    .await?;
    let v = view(d, m.id).await?;
    match find(&v, &name) {
        Some(x) if x.manifest.version >= version => {
            let mut s = service_info(d, m, &v, x);
            s.tools = tool_specs(d, m.id, &name).await?.len();
            Ok(s)
        }
        _ if w.seq.is_some() => Err(Error::conflict(format!(
            "the service {name:?} was not deployed: the mesh's log refused it (another member holds the name, or a newer version came first)"
        ))),
        _ => {
            let x = Deployment {
                manifest,
                author: m.member(),
                author_name: m.name(),
                updated_at: now_ms(),
            };
            let mut s = service_info(d, m, &v, &x);
            s.status = "queued".into();
            Ok(s)
        }
    }
}

/// Seal each `$vault:` value the manifest references to each of its hosts.
async fn seal_all(d: &Daemon, m: &MeshCtx, mf: &Manifest) -> Result<Vec<SealedSecret>, Error> {
    let mut out = Vec::new();
    for name in mf.vault_names() {
        let value = crate::vault::read_secret(d, &m.id, name)
            .await
            .map_err(|e| {
                Error::not_found(format!("{e} (`claudemesh vault set {name}` stores it)"))
            })?;
        for host in &mf.hosts {
            out.push(
                deploy::seal_secret(&m.keys.member, host, &m.id, &mf.name, name, &value)
                    .map_err(|_| Error::invalid(format!("cannot seal {name:?} to a host's key")))?,
            );
        }
    }
    Ok(out)
}

/// Share a file source with the service's hosts.
async fn share_source(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    hosts: &[MemberKey],
    service: &str,
    path: &str,
) -> Result<claudemesh_schema::ItemId, Error> {
    // Shared with the one host, or with the mesh when several host it (a share names one
    // reader or group).
    let to = match hosts {
        [one] if *one != m.member() => Some(one.fingerprint()),
        _ => None,
    };
    let shared = crate::files::share(
        d,
        claudemesh_schema::ipc::files::FileShareParams {
            mesh: Some(m.id.to_string()),
            session: None,
            path: path.to_string(),
            to,
            tags: vec!["deploy".into(), service.to_string()],
            ephemeral: false,
            ttl_secs: None,
            name: None,
        },
    )
    .await?;
    Ok(shared.file)
}

/// `deploy_scope`: a new version with another scope.
pub(crate) async fn scope(d: &Arc<Daemon>, p: ScopeParams) -> Result<ServiceInfo, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let v = view(d, m.id).await?;
    let x = changeable(&m, &v, &p.name)?;
    let mut manifest = x.manifest.clone();
    manifest.scope = crate::mcp_host::parse_scope(d, &m, Some(&p.scope)).await?;
    manifest.version += 1;
    write_manifest(d, &m, manifest).await
}

fn changeable<'a>(m: &MeshCtx, v: &'a View, name: &str) -> Result<&'a Deployment, Error> {
    let x = find(v, name).ok_or_else(|| {
        Error::not_found(format!(
            "no service {name:?} is deployed in this mesh (see `claudemesh deploy list`)"
        ))
    })?;
    if !may_change(m, x) {
        return Err(Error::forbidden(format!(
            "the service {name:?} was deployed by {}; only they or an admin can change it",
            crate::shared::query::by(x.author_name.clone(), &x.author.0)
        )));
    }
    Ok(x)
}

/// `deploy_remove`.
pub(crate) async fn remove(d: &Arc<Daemon>, p: ServiceParams) -> Result<(), Error> {
    let m = d.select(p.mesh.as_deref())?;
    let v = view(d, m.id).await?;
    changeable(&m, &v, &p.name)?;
    crate::shared::oplog::write(
        d,
        &m,
        None,
        Op::UndeployMcp {
            name: p.name.clone(),
        },
        None,
    )
    .await?;
    Ok(())
}

fn service_info(d: &Daemon, m: &MeshCtx, v: &View, x: &Deployment) -> ServiceInfo {
    let mf = &x.manifest;
    let serving = v.serving.get(&mf.name);
    let me = m.member();
    let registrant_up = serving.is_some_and(|(session, who)| {
        *session == m.keys.session
            || v.presence
                .iter()
                .any(|p| p.session == *session && p.member == *who && p.online)
    });
    let status = match serving {
        Some(_) if registrant_up => "running",
        _ if v.serving_host(m, mf).is_some() => "starting",
        _ => "offline",
    };
    let local = {
        let k = (m.id, mf.name.clone());
        let h = lock(&d.hosted).get(&k).cloned();
        match h {
            Some(h) if h.spec.deployed.is_some() => {
                let info = h.info(m.name());
                Some(LocalRun {
                    state: info.state,
                    restarts: info.restarts,
                    last_error: info.last_error,
                })
            }
            _ => lock(&d.preparing).get(&k).map(|p| LocalRun {
                state: p.state.clone(),
                restarts: 0,
                last_error: p
                    .lines
                    .last()
                    .filter(|_| p.state == "failed")
                    .cloned()
                    .unwrap_or_default(),
            }),
        }
    };
    ServiceInfo {
        mesh: m.id,
        name: mf.name.clone(),
        version: mf.version,
        description: mf.description.clone(),
        source: mf.source.label(),
        command: mf.command.clone(),
        env: mf
            .env
            .iter()
            .map(|e| match &e.value {
                EnvValue::Plain { value } => format!("{}={value}", e.key),
                EnvValue::Vault { name } => format!("{}=$vault:{name}", e.key),
            })
            .collect(),
        network: mf.network,
        memory_mb: mf.memory_mb,
        scope: mf.scope.label(),
        deployer: crate::shared::query::by(x.author_name.clone(), &x.author.0),
        hosts: mf
            .hosts
            .iter()
            .map(|h| ServiceHost {
                name: v.host_name(m, h),
                fingerprint: h.fingerprint(),
                online: *h == me || v.up(m, h),
                serving: serving.is_some_and(|(_, who)| who == h),
            })
            .collect(),
        status: status.into(),
        tools: 0,
        updated_at: x.updated_at,
        local,
    }
}

async fn tool_specs(d: &Daemon, mesh: MeshId, name: &str) -> Result<Vec<ToolSpec>, Error> {
    let n = name.to_string();
    let t: Option<String> = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT tools FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
                params![mesh.as_bytes(), n],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await?;
    Ok(t.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// `deploy_list`.
pub(crate) async fn list(d: &Arc<Daemon>, p: MeshParams) -> Result<DeployListResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let v = view(d, m.id).await?;
    let mut services = Vec::new();
    for x in &v.deployments {
        let mut s = service_info(d, &m, &v, x);
        s.tools = tool_specs(d, m.id, &x.manifest.name).await?.len();
        services.push(s);
    }
    Ok(DeployListResult {
        mesh: m.id,
        services,
    })
}

/// `deploy_schema`.
pub(crate) async fn schema(d: &Arc<Daemon>, p: ServiceParams) -> Result<DeploySchemaResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let v = view(d, m.id).await?;
    if find(&v, &p.name).is_none() {
        return Err(Error::not_found(format!(
            "no service {:?} is deployed in this mesh (see `claudemesh deploy list`)",
            p.name
        )));
    }
    Ok(DeploySchemaResult {
        tools: tool_specs(d, m.id, &p.name).await?,
        name: p.name,
    })
}

// ---- logs ----

/// The lines this daemon has for a service it hosts.
fn local_logs(d: &Daemon, m: &MeshCtx, name: &str, lines: u32) -> Option<Value> {
    let n = lines.clamp(1, deploy::MAX_LOG_LINES) as usize;
    let k = (m.id, name.to_string());
    let prep = lock(&d.preparing).get(&k).cloned();
    let h = lock(&d.hosted).get(&k).cloned();
    let (state, restarts, mut all) = match (&h, &prep) {
        (Some(h), _) if h.spec.deployed.is_some() => {
            let info = h.info(m.name());
            let mut all = prep.map(|p| p.lines).unwrap_or_default();
            all.extend(lock(&h.logs).iter().cloned());
            (info.state, info.restarts, all)
        }
        (_, Some(p)) => (p.state.clone(), 0, p.lines.clone()),
        _ => return None,
    };
    let skip = all.len().saturating_sub(n);
    all.drain(..skip);
    // An answer is one envelope: the newest lines that fit.
    let mut bytes = 0usize;
    let keep = all
        .iter()
        .rev()
        .take_while(|l| {
            bytes += l.len() + 8;
            bytes <= LOGS_BYTES
        })
        .count();
    let skip = all.len() - keep;
    all.drain(..skip);
    Some(json!({ "state": state, "restarts": restarts, "lines": all }))
}

/// `deploy_logs`: from the host serving it, else any other of its hosts that answers.
pub(crate) async fn logs(d: &Arc<Daemon>, p: ServiceParams) -> Result<DeployLogsResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let v = view(d, m.id).await?;
    let x = find(&v, &p.name).ok_or_else(|| {
        Error::not_found(format!(
            "no service {:?} is deployed in this mesh (see `claudemesh deploy list`)",
            p.name
        ))
    })?;
    let me = m.member();
    if !may_change(&m, x) && !x.manifest.hosted_by(&me) {
        return Err(Error::forbidden(format!(
            "only the deployer of {:?} ({}), an admin or its hosts read its logs",
            p.name,
            crate::shared::query::by(x.author_name.clone(), &x.author.0)
        )));
    }
    let lines = p.lines.unwrap_or(200);
    let mut order: Vec<MemberKey> = Vec::new();
    if let Some((_, who)) = v.serving.get(&p.name) {
        order.push(*who);
    }
    for h in &x.manifest.hosts {
        if !order.contains(h) {
            order.push(*h);
        }
    }
    let mut why = String::from("none of its hosts is online");
    for host in order {
        let answer = if host == me {
            local_logs(d, &m, &p.name, lines)
        } else {
            match ask_logs(&m, &v, &host, &p.name, lines).await {
                Ok(a) => Some(a),
                Err(e) => {
                    why = e;
                    None
                }
            }
        };
        if let Some(a) = answer {
            return Ok(DeployLogsResult {
                name: p.name.clone(),
                host: v.host_name(&m, &host),
                state: a.get("state").and_then(Value::as_str).unwrap_or("").into(),
                restarts: a.get("restarts").and_then(Value::as_u64).unwrap_or(0) as u32,
                lines: a
                    .get("lines")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    Err(Error::relay(format!("no logs for {:?}: {why}", p.name)))
}

async fn ask_logs(
    m: &Arc<MeshCtx>,
    v: &View,
    host: &MemberKey,
    name: &str,
    lines: u32,
) -> Result<Value, String> {
    let Some(h) = v.hosts.iter().find(|h| h.member == *host) else {
        return Err("its host never offered to host".into());
    };
    let Some(p) = v
        .presence
        .iter()
        .find(|p| p.session == h.session && p.member == *host && p.online)
    else {
        return Err(format!("its host {} is offline", v.host_name(m, host)));
    };
    if !m.link.connected() {
        return Err("the relay link is down".into());
    }
    let ask = LogsAsk {
        name: name.to_string(),
        lines,
    };
    let body = serde_json::to_string(&ask).map_err(|e| e.to_string())?;
    let (id, frame) = boxed_to_session(
        m,
        m.keys.session,
        h.session,
        &p.session_key,
        KIND_DEPLOY_LOGS,
        body,
    )
    .ok_or("cannot seal the request")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    lock(&m.tool_calls).insert(id, (*host, tx));
    struct Forget(Arc<MeshCtx>, MessageId);
    impl Drop for Forget {
        fn drop(&mut self) {
            lock(&self.0.tool_calls).remove(&self.1);
        }
    }
    let _forget = Forget(m.clone(), id);
    m.link
        .tx
        .send(LinkCmd::Send(id, bytes::Bytes::from(frame), None))
        .await
        .map_err(|_| "the relay link stopped".to_string())?;
    match tokio::time::timeout(LOGS_TIMEOUT, rx).await {
        Ok(Ok(ResultBody {
            result: Some(r),
            error: None,
            ..
        })) => Ok(r),
        Ok(Ok(ResultBody { error: Some(e), .. })) => Err(match e {
            Refusal::NotAllowed => {
                "its host refused (only the deployer, an admin or a host reads the logs)".into()
            }
            Refusal::NotHosted => "its host does not run it".into(),
            other => other.explain().into(),
        }),
        Ok(_) => Err("its host answered nothing".into()),
        Err(_) => Err(format!(
            "its host {} did not answer within {} s",
            v.host_name(m, host),
            LOGS_TIMEOUT.as_secs()
        )),
    }
}

/// A member asks for a service's logs: answer if it may read them (the deployer, an
/// admin, another host), boxed back to the asking daemon's session.
pub(crate) async fn serve_logs(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    from: MemberKey,
    from_session: SessionId,
    id: MessageId,
    sent_at: i64,
    ask: LogsAsk,
) {
    let now = now_ms();
    if (now - sent_at).abs() > ASK_FRESH_MS {
        return;
    }
    let Ok(v) = view(d, m.id).await else {
        return;
    };
    let x = find(&v, &ask.name);
    let admin = lock(&m.roster)
        .roster
        .role(&from)
        .is_some_and(|r| r.is_admin());
    let result = match x {
        None => Err(Refusal::NotHosted),
        Some(x) if !(x.author == from || admin || x.manifest.hosted_by(&from)) => {
            tracing::warn!(service = %ask.name, from = %from.short(), "a log request from a member that may not read them; refused");
            Err(Refusal::NotAllowed)
        }
        Some(_) => local_logs(d, m, &ask.name, ask.lines).ok_or(Refusal::NotHosted),
    };
    let body = match result {
        Ok(r) => ResultBody {
            of: id,
            error: None,
            detail: String::new(),
            result: Some(r),
            file: None,
        },
        Err(e) => ResultBody {
            of: id,
            error: Some(e),
            detail: String::new(),
            result: None,
            file: None,
        },
    };
    let Some(caller) = v
        .presence
        .iter()
        .find(|p| p.session == from_session && p.member == from)
    else {
        return;
    };
    let Ok(json) = serde_json::to_string(&body) else {
        return;
    };
    let Some((rid, frame)) = boxed_to_session(
        m,
        m.keys.session,
        from_session,
        &caller.session_key,
        tools::KIND_TOOL_RESULT,
        json,
    ) else {
        return;
    };
    let _ = m
        .link
        .tx
        .send(LinkCmd::Send(rid, bytes::Bytes::from(frame), None))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deployer's URL is fetched with none of the host user's environment: what `git`
    /// would find through it (the SSH agent, `$HOME`'s configuration and credentials,
    /// the daemon's own settings) is not there.
    #[tokio::test]
    async fn git_runs_with_none_of_the_host_users_environment() {
        let env = Path::new("/usr/bin/env");
        if !env.exists() {
            return;
        }
        let out = tool_command(env, &[], Path::new("/"))
            .output()
            .await
            .expect("env runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        let allowed = [
            "PATH",
            "HOME",
            "LANG",
            "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL",
            "GIT_TERMINAL_PROMPT",
            "GIT_ASKPASS",
            "SSH_ASKPASS",
            "GIT_SSH_COMMAND",
            "GIT_ALLOW_PROTOCOL",
        ];
        for k in &keys {
            assert!(allowed.contains(k), "{k} reached git: {text}");
        }
        assert!(text.contains("HOME=/nonexistent\n"), "{text}");
        assert!(text.contains("GIT_CONFIG_GLOBAL=/dev/null\n"), "{text}");
    }
}
