//! IPC shapes of hosted services (see [`crate::deploy`]): this daemon as a host
//! (`host_*`), and services deployed to the mesh's hosts (`deploy_*`).

use serde::{Deserialize, Serialize};

use crate::ids::MeshId;
use crate::tools::ToolSpec;

/// `host_set`: offer (or stop offering) this daemon as a host of services.
pub const HOST_SET: &str = "host_set";
/// `host_status`: the mesh's hosts, and whether this machine can sandbox services.
pub const HOST_STATUS: &str = "host_status";
/// `deploy_add`: deploy a service (or, with `update`, a new version of one).
pub const DEPLOY_ADD: &str = "deploy_add";
/// `deploy_list`: the mesh's deployed services, with host, status, scope, tool count.
pub const DEPLOY_LIST: &str = "deploy_list";
/// `deploy_logs`: a service's last log lines, from the host that runs it.
pub const DEPLOY_LOGS: &str = "deploy_logs";
/// `deploy_remove`: take a service down everywhere.
pub const DEPLOY_REMOVE: &str = "deploy_remove";
/// `deploy_scope`: change who may call a service (a new version of its manifest).
pub const DEPLOY_SCOPE: &str = "deploy_scope";
/// `deploy_schema`: a service's tools with their input schemas.
pub const DEPLOY_SCHEMA: &str = "deploy_schema";

/// `host_set` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostSetParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Offer (true) or withdraw (false).
    pub enabled: bool,
}

/// `host_status` parameters (and `deploy_list`'s).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MeshParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
}

/// A member daemon offering to host services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    /// The member, as shown.
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Whether it accepts services.
    pub enabled: bool,
    /// Its sandbox, as it says.
    pub sandbox: String,
    /// Whether its daemon is online now.
    pub online: bool,
    /// This machine's own member.
    pub me: bool,
}

/// `host_status` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostStatusResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Whether this daemon hosts services for the mesh.
    pub enabled: bool,
    /// This machine's sandbox (`bubblewrap …`), or why there is none.
    pub sandbox: String,
    /// Whether this machine can run services (a working sandbox).
    pub sandbox_ok: bool,
    /// Services this daemon runs now.
    pub running: Vec<String>,
    /// Every host of the mesh.
    pub hosts: Vec<HostInfo>,
}

/// `deploy_add` parameters. Exactly one source: `file`, `git` (+ `commit`), `npm` or
/// `pypi`. With `update`, what is not given is kept from the current version.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The service's name.
    pub name: String,
    /// A local file (absolute path) to share and run.
    #[serde(default)]
    pub file: Option<String>,
    /// A git URL.
    #[serde(default)]
    pub git: Option<String>,
    /// The git commit.
    #[serde(default)]
    pub commit: Option<String>,
    /// An npm package, `name@version`.
    #[serde(default)]
    pub npm: Option<String>,
    /// A PyPI package, `name==version`.
    #[serde(default)]
    pub pypi: Option<String>,
    /// The command (default for a package: its name).
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment, `KEY=VALUE` or `KEY=$vault:NAME`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// May it open network sockets.
    #[serde(default)]
    pub network: Option<bool>,
    /// Memory limit, MiB.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// `mesh`, `@group`, or member selectors separated by commas.
    #[serde(default)]
    pub scope: Option<String>,
    /// Tool allowlist.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Hosts (member selectors), in order of preference; default: every enabled host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// One line for the catalog.
    #[serde(default)]
    pub description: Option<String>,
    /// A new version of a service deployed before.
    #[serde(default)]
    pub update: bool,
}

/// One host of a deployed service, as the asking daemon sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceHost {
    /// The member, as shown.
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Online now.
    pub online: bool,
    /// It is the one serving calls (the catalog points at it).
    pub serving: bool,
}

/// A deployed service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceInfo {
    /// The mesh.
    pub mesh: MeshId,
    /// Name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// Description.
    pub description: String,
    /// Its source, as written.
    pub source: String,
    /// Its command.
    pub command: Vec<String>,
    /// Its environment, values shown for plain entries and as `$vault:NAME` for secrets.
    pub env: Vec<String>,
    /// Network allowed.
    pub network: bool,
    /// Memory limit, MiB.
    pub memory_mb: u32,
    /// Scope, as written.
    pub scope: String,
    /// Who deployed it.
    pub deployer: String,
    /// Its hosts, in order of preference.
    pub hosts: Vec<ServiceHost>,
    /// `running`, `starting` (deployed, not yet serving), `offline` (no host online).
    pub status: String,
    /// Tools it offers.
    pub tools: usize,
    /// When this version was deployed, unix ms.
    pub updated_at: i64,
    /// On this daemon, when it hosts it: its local state (`running`, `restarting`, …),
    /// restarts and last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRun>,
}

/// How a service runs on this daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalRun {
    /// State.
    pub state: String,
    /// Restarts so far.
    pub restarts: u32,
    /// The last error, if any.
    pub last_error: String,
}

/// `deploy_list` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployListResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Its services.
    pub services: Vec<ServiceInfo>,
}

/// `deploy_logs`, `deploy_remove`, `deploy_schema` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The service.
    pub name: String,
    /// `deploy_logs`: how many of the last lines (default 200).
    #[serde(default)]
    pub lines: Option<u32>,
}

/// `deploy_scope` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScopeParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The service.
    pub name: String,
    /// `mesh`, `@group`, or member selectors separated by commas.
    pub scope: String,
}

/// `deploy_logs` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployLogsResult {
    /// The service.
    pub name: String,
    /// The host that answered.
    pub host: String,
    /// Its state there.
    pub state: String,
    /// Restarts there.
    pub restarts: u32,
    /// The last lines (the service's stderr and what the host said about it; vault
    /// values the service printed are masked).
    pub lines: Vec<String>,
}

/// `deploy_schema` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploySchemaResult {
    /// The service.
    pub name: String,
    /// Its tools.
    pub tools: Vec<ToolSpec>,
}
