//! Hosted services (tier 2 of shared tools): an MCP server deployed to member daemons
//! that opted in as hosts (`claudemesh host enable`), so it runs without anyone's
//! laptop. A deploy is a signed manifest op ([`crate::op::Op::DeployMcp`]) saying where
//! the code comes from, how to run it, its limits, its environment (plain values and
//! `$vault:` references, each secret sealed by the deployer to each host member's key)
//! and who may call it. Hosts run it sandboxed and serve its tools like any shared server
//! ([`crate::tools`]).
//!
//! The rules here are pure: what a manifest may hold, checked the same by the deployer,
//! by every daemon's fold and by the host before it runs anything.

use serde::{Deserialize, Serialize};

use crate::ItemId;
use crate::crypto::MemberKey;
use crate::encoding;
use crate::tools::Scope;

/// Payload kind of a request for a hosted service's log lines, boxed to the hosting
/// daemon's session (the body is a [`LogsAsk`]); answered with a
/// [`crate::tools::KIND_TOOL_RESULT`] whose result is `{"lines": [...], ...}`.
pub const KIND_DEPLOY_LOGS: &str = "deploy_logs";

/// Most arguments of a service's command.
pub const MAX_ARGS: usize = 64;
/// Longest argument, bytes.
pub const MAX_ARG: usize = 4096;
/// Most environment entries.
pub const MAX_ENV: usize = 64;
/// Longest plain environment value, bytes.
pub const MAX_ENV_VALUE: usize = 16 * 1024;
/// Longest sealed secret, bytes (a vault value is at most 64 KiB).
pub const MAX_SEALED: usize = 64 * 1024 + 64;
/// Most hosts one service names.
pub const MAX_HOSTS: usize = 8;
/// Memory limit unless the deployer gives one, MiB.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Smallest and largest memory limits, MiB.
pub const MIN_MEMORY_MB: u32 = 32;
/// Largest memory limit, MiB.
pub const MAX_MEMORY_MB: u32 = 64 * 1024;
/// Most log lines one [`LogsAsk`] gets back.
pub const MAX_LOG_LINES: u32 = 500;

/// Why a manifest was refused; the text is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn err(s: impl Into<String>) -> ManifestError {
    ManifestError(s.into())
}

/// Where a service's code comes from. The host fetches it before the first start (and
/// again for a new version), outside the sandbox; the service itself runs inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A file shared in the mesh (the files feature), placed in the service's directory
    /// under `name`.
    File {
        /// The shared file.
        file: ItemId,
        /// Its name in the service's directory.
        name: String,
    },
    /// A git repository at one commit.
    Git {
        /// Clone URL (`https://`, `http://`, `ssh://` or `git://`).
        url: String,
        /// The commit (hex, 7 to 64 digits).
        commit: String,
    },
    /// An npm package at one version, installed with `npm install`.
    Npm {
        /// The package.
        package: String,
        /// Its version.
        version: String,
    },
    /// A PyPI package at one version, installed into a virtualenv with `pip`.
    Pypi {
        /// The package.
        package: String,
        /// Its version.
        version: String,
    },
}

impl Source {
    /// As a user would write it.
    pub fn label(&self) -> String {
        match self {
            Self::File { file, name } => format!("file {name} ({})", file.short()),
            Self::Git { url, commit } => {
                format!("git {url} @ {}", &commit[..commit.len().min(12)])
            }
            Self::Npm { package, version } => format!("npm {package}@{version}"),
            Self::Pypi { package, version } => format!("pypi {package}=={version}"),
        }
    }

    /// Check what the host will hand to `git`, `npm` and `pip`: nothing that could be
    /// taken for an option, a transport helper (`ext::`) or a path outside the service.
    pub fn check(&self) -> Result<(), ManifestError> {
        match self {
            Self::File { name, .. } => {
                let ok = !name.is_empty()
                    && name.len() <= 128
                    && name != "."
                    && name != ".."
                    && !name.starts_with('-')
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(err(format!(
                        "the file name {name:?} is not allowed: 1 to 128 of A-Z, a-z, 0-9, `.`, `_`, `-`"
                    )));
                }
            }
            Self::Git { url, commit } => {
                // Not a repository on the host's own disk (`file://`, a path): the host
                // fetches outside the sandbox, with its user's rights to read it.
                let scheme_ok = ["https://", "http://", "ssh://", "git://"]
                    .iter()
                    .any(|s| url.starts_with(s));
                if !scheme_ok
                    || url.len() > 2048
                    || url.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(err(format!(
                        "the git URL {url:?} is not allowed: use https://, http://, ssh:// or git:// (a repository on the host's own disk is refused)"
                    )));
                }
                if !(7..=64).contains(&commit.len())
                    || !commit.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(err(format!(
                        "the commit {commit:?} is not a commit id (7 to 64 hex digits); a branch name would let the code change under the manifest"
                    )));
                }
            }
            Self::Npm { package, version } | Self::Pypi { package, version } => {
                let npm = matches!(self, Self::Npm { .. });
                let pkg_ok = !package.is_empty()
                    && package.len() <= 214
                    && !package.starts_with('-')
                    && !package.starts_with('.')
                    && package.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || b"._-".contains(&b)
                            || (npm && b"@/".contains(&b))
                    })
                    && (!npm || package.matches('/').count() <= 1);
                if !pkg_ok {
                    return Err(err(format!("the package name {package:?} is not allowed")));
                }
                if version.is_empty()
                    || version.len() > 64
                    || version.starts_with('-')
                    || !version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(&b))
                {
                    return Err(err(format!(
                        "the version {version:?} is not an exact version (e.g. 1.4.2)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The command a package runs when the deployer gives none: its name (without an npm
    /// scope).
    pub fn default_command(&self) -> Option<String> {
        match self {
            Self::Npm { package, .. } => package.rsplit('/').next().map(str::to_string),
            Self::Pypi { package, .. } => Some(package.clone()),
            _ => None,
        }
    }
}

/// An environment value: plain text in the manifest (every member reads it), or a vault
/// entry of the deployer's, sealed to each host in [`Manifest::secrets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnvValue {
    /// Plain text.
    Plain {
        /// The value.
        value: String,
    },
    /// `$vault:<name>`: the deployer's vault entry.
    Vault {
        /// The entry's name.
        name: String,
    },
}

/// One environment entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvEntry {
    /// Variable name.
    pub key: String,
    /// Its value.
    pub value: EnvValue,
}

/// Parse a `KEY=VALUE` entry as a user writes it: a value `$vault:<name>` names a vault
/// entry.
pub fn parse_env(entry: &str) -> Result<EnvEntry, ManifestError> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(err(format!(
            "environment entries are KEY=VALUE or KEY=$vault:NAME; {:?} is not",
            entry.chars().take(40).collect::<String>()
        )));
    };
    let value = match value.strip_prefix("$vault:") {
        Some(name) => EnvValue::Vault {
            name: name.to_string(),
        },
        None => EnvValue::Plain {
            value: value.to_string(),
        },
    };
    let e = EnvEntry {
        key: key.to_string(),
        value,
    };
    check_env(&e)?;
    Ok(e)
}

/// Variables a service may not set: the host sets them, or they would change how the
/// sandbox's own wrappers (started outside it, with the service's environment) run.
fn env_reserved(k: &str) -> bool {
    k.starts_with("LD_")
        || k.starts_with("MALLOC_")
        || k.starts_with("GLIBC_")
        || k.starts_with("CLAUDEMESH_")
        || [
            "PATH",
            "HOME",
            "GCONV_PATH",
            "GETCONF_DIR",
            "HOSTALIASES",
            "LOCALDOMAIN",
            "LOCPATH",
            "NIS_PATH",
            "NLSPATH",
            "RESOLV_HOST_CONF",
            "RES_OPTIONS",
            "TMPDIR",
            "TZDIR",
        ]
        .contains(&k)
}

fn check_env(e: &EnvEntry) -> Result<(), ManifestError> {
    let k = &e.key;
    if env_reserved(k) {
        return Err(err(format!(
            "{k} cannot be set for a hosted service (the host sets it, or it would reach the sandbox's own wrappers)"
        )));
    }
    let key_ok = !k.is_empty()
        && k.len() <= 128
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !key_ok {
        return Err(err(format!(
            "the environment name {k:?} is not allowed: letters, digits and `_`, not starting with a digit"
        )));
    }
    match &e.value {
        EnvValue::Plain { value } if value.len() > MAX_ENV_VALUE || value.contains('\0') => {
            Err(err(format!(
                "the value of {k} is over {MAX_ENV_VALUE} bytes or holds a NUL"
            )))
        }
        EnvValue::Vault { name } => {
            crate::vault::check_name(name).map_err(|e| err(format!("{k}=$vault:{name}: {e}")))
        }
        EnvValue::Plain { .. } => Ok(()),
    }
}

/// A vault value sealed by the deployer's member key to one host member's key
/// (`crypto_box`): only that host opens it, and only as a box from the manifest's author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The host member it is for.
    pub host: MemberKey,
    /// The member that sealed it (the manifest's writer: its deployer, or an admin).
    pub by: MemberKey,
    /// The vault entry's name.
    pub name: String,
    /// The box.
    #[serde(with = "encoding::bytes")]
    pub sealed: Vec<u8>,
}

/// A service manifest: the body of a [`crate::op::Op::DeployMcp`] op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The service's name; also the shared server's name in the catalog
    /// ([`crate::tools::check_server`]).
    pub name: String,
    /// Its version: each update is newer (the fold keeps the newest).
    pub version: u64,
    /// One line for the catalog.
    #[serde(default)]
    pub description: String,
    /// Where its code comes from.
    pub source: Source,
    /// The command and its arguments, run in the service's directory without a shell.
    pub command: Vec<String>,
    /// Its environment.
    #[serde(default)]
    pub env: Vec<EnvEntry>,
    /// The `$vault:` values, sealed to each host.
    #[serde(default)]
    pub secrets: Vec<SealedSecret>,
    /// Memory limit, MiB.
    pub memory_mb: u32,
    /// Whether it may open network sockets (else it has a loopback of its own only).
    #[serde(default)]
    pub network: bool,
    /// Who may see and call it.
    #[serde(default)]
    pub scope: Scope,
    /// Only these tools are offered (empty: all it lists).
    #[serde(default)]
    pub allow: Vec<String>,
    /// The member daemons that run it, in order of preference: the first one online
    /// serves it, the others stand by.
    pub hosts: Vec<MemberKey>,
}

impl Manifest {
    /// Check everything a host will act on; the same on every daemon.
    pub fn check(&self) -> Result<(), ManifestError> {
        crate::tools::check_server(&self.name).map_err(|e| err(e.0))?;
        self.source.check()?;
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            return Err(err("give the service's command (after `--`)"));
        }
        if self.command.len() > MAX_ARGS
            || self
                .command
                .iter()
                .any(|a| a.len() > MAX_ARG || a.contains('\0'))
        {
            return Err(err(format!(
                "the command has more than {MAX_ARGS} arguments, one over {MAX_ARG} bytes, or a NUL"
            )));
        }
        if self.env.len() > MAX_ENV {
            return Err(err(format!("more than {MAX_ENV} environment entries")));
        }
        for (i, e) in self.env.iter().enumerate() {
            check_env(e)?;
            if self.env[..i].iter().any(|o| o.key == e.key) {
                return Err(err(format!("{} is set twice", e.key)));
            }
        }
        if self.hosts.is_empty() || self.hosts.len() > MAX_HOSTS {
            return Err(err(format!("name 1 to {MAX_HOSTS} hosts")));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if self.hosts[..i].contains(h) {
                return Err(err("a host is named twice"));
            }
        }
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&self.memory_mb) {
            return Err(err(format!(
                "the memory limit is {MIN_MEMORY_MB} to {MAX_MEMORY_MB} MiB"
            )));
        }
        if self.secrets.len() > MAX_ENV * MAX_HOSTS
            || self.secrets.iter().any(|s| s.sealed.len() > MAX_SEALED)
        {
            return Err(err("too many or too large sealed secrets"));
        }
        if self.allow.len() > crate::tools::MAX_TOOLS
            || self.allow.iter().any(|t| !crate::tools::tool_name_ok(t))
        {
            return Err(err("the tool allowlist holds an invalid tool name"));
        }
        if self.description.len() > 512 {
            return Err(err("the description is over 512 bytes"));
        }
        Ok(())
    }

    /// Check who sealed its secrets: every box must be from `writer` (the member writing
    /// this manifest) or `holder` (the member holding the name, when another one, an
    /// admin, writes it). A box names its sealer and is bound only to the mesh, the
    /// service's name and the entry, so without this anyone who takes a freed name could
    /// copy a former deployer's boxes out of the log and run their own command with the
    /// former deployer's secrets.
    pub fn check_sealers(
        &self,
        writer: &MemberKey,
        holder: Option<&MemberKey>,
    ) -> Result<(), ManifestError> {
        match self
            .secrets
            .iter()
            .find(|s| s.by != *writer && Some(&s.by) != holder)
        {
            Some(s) => Err(err(format!(
                "the secret {:?} was sealed by another member ({}); a manifest carries only its writer's secrets",
                s.name,
                s.by.fingerprint()
            ))),
            None => Ok(()),
        }
    }

    /// The vault entries it references.
    pub fn vault_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .env
            .iter()
            .filter_map(|e| match &e.value {
                EnvValue::Vault { name } => Some(name.as_str()),
                EnvValue::Plain { .. } => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether `member` is one of its hosts.
    pub fn hosted_by(&self, member: &MemberKey) -> bool {
        self.hosts.contains(member)
    }
}

/// Which host serves a service: the first of its hosts (in the manifest's order of
/// preference) that is `up` (online, hosting enabled); the others stand by.
pub fn serving(hosts: &[MemberKey], up: impl Fn(&MemberKey) -> bool) -> Option<MemberKey> {
    hosts.iter().find(|h| up(h)).copied()
}

/// Additional data bound into a sealed secret: the mesh, the service and the entry, so a
/// box cannot be moved to another service or variable of the same author.
pub fn secret_ad(mesh: &crate::MeshId, service: &str, name: &str) -> Vec<u8> {
    crate::crypto::Canonical::new("claudemesh/deploy-secret/v1")
        .fixed(mesh.as_bytes())
        .var(service.as_bytes())
        .var(name.as_bytes())
        .into_bytes()
}

/// Seal a vault value for one host: a box from the deployer's member key to the host
/// member's, over the value prefixed with [`secret_ad`].
pub fn seal_secret(
    from: &crate::crypto::MemberSecret,
    host: &MemberKey,
    mesh: &crate::MeshId,
    service: &str,
    name: &str,
    value: &str,
) -> Result<SealedSecret, crate::crypto::CryptoError> {
    let b = crate::crypto::BoxKey::new(&from.box_secret(), &host.box_public()?);
    let mut plain = zeroize::Zeroizing::new(secret_ad(mesh, service, name));
    plain.extend_from_slice(value.as_bytes());
    Ok(SealedSecret {
        host: *host,
        by: from.public(),
        name: name.to_string(),
        sealed: b.seal(&plain)?,
    })
}

/// Open a secret sealed for us (`me`, a host) by the member it names; `None` unless it
/// opens and is bound to this mesh, service and entry. (Which boxes a manifest holds is
/// its writer's choice, and only the holder of the name or an admin writes one.)
pub fn open_secret(
    me: &crate::crypto::MemberSecret,
    mesh: &crate::MeshId,
    service: &str,
    s: &SealedSecret,
) -> Option<zeroize::Zeroizing<String>> {
    if s.host != me.public() {
        return None;
    }
    let b = crate::crypto::BoxKey::new(&me.box_secret(), &s.by.box_public().ok()?);
    let plain = zeroize::Zeroizing::new(b.open(&s.sealed).ok()?);
    let ad = secret_ad(mesh, service, &s.name);
    let rest = plain.strip_prefix(ad.as_slice())?;
    Some(zeroize::Zeroizing::new(
        String::from_utf8(rest.to_vec()).ok()?,
    ))
}

/// Body of a [`KIND_DEPLOY_LOGS`] payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsAsk {
    /// The service.
    pub name: String,
    /// How many of the last lines.
    pub lines: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "probe".into(),
            version: 1,
            description: String::new(),
            source: Source::Git {
                url: "https://example.org/x.git".into(),
                commit: "0123abcd".into(),
            },
            command: vec!["python3".into(), "server.py".into()],
            env: vec![],
            secrets: vec![],
            memory_mb: DEFAULT_MEMORY_MB,
            network: false,
            scope: Scope::Mesh,
            allow: vec![],
            hosts: vec![MemberKey([1; 32])],
        }
    }

    #[test]
    fn sources_refuse_what_tools_would_take_for_options_or_helpers() {
        let git = |url: &str, commit: &str| Source::Git {
            url: url.into(),
            commit: commit.into(),
        };
        let npm = |p: &str, v: &str| Source::Npm {
            package: p.into(),
            version: v.into(),
        };
        let pypi = |p: &str, v: &str| Source::Pypi {
            package: p.into(),
            version: v.into(),
        };
        let file = |n: &str| Source::File {
            file: ItemId::new(),
            name: n.into(),
        };
        for (s, ok) in [
            (git("https://h/x.git", "0123abc"), true),
            (git("git://127.0.0.1:9418/x", &"a".repeat(40)), true),
            (git("file:///srv/x", &"a".repeat(40)), false),
            (git("/srv/x", "0123abc"), false),
            (git("ext::sh -c touch% /tmp/pwned", "0123abc"), false),
            (git("--upload-pack=touch /tmp/x", "0123abc"), false),
            (git("https://h/x.git", "main"), false),
            (git("https://h/x.git", "012"), false),
            (git("https://h/x y.git", "0123abc"), false),
            (npm("@scope/pkg", "1.2.3"), true),
            (npm("pkg", "1.2.3-beta.1"), true),
            (npm("--global", "1.0.0"), false),
            (npm("a/b/c", "1.0.0"), false),
            (npm("pkg", "^1.0"), false),
            (npm("pkg", ""), false),
            (pypi("mcp-server-time", "2026.10.19"), true),
            (pypi("mcp_server", "1.0+local"), true),
            (pypi("x", ">=1"), false),
            (pypi("x @ https://evil", "1"), false),
            (file("server.py"), true),
            (file("../server.py"), false),
            (file("a/b.py"), false),
            (file(".."), false),
            (file("-rf"), false),
        ] {
            assert_eq!(s.check().is_ok(), ok, "{s:?}");
        }
    }

    #[test]
    fn env_entries_parse_plain_and_vault_values() {
        let e = parse_env("TOKEN=$vault:gh-token").expect("vault");
        assert_eq!(
            e.value,
            EnvValue::Vault {
                name: "gh-token".into()
            }
        );
        let e = parse_env("MODE=a=b").expect("plain");
        assert_eq!(
            e.value,
            EnvValue::Plain {
                value: "a=b".into()
            }
        );
        for bad in [
            "NOVALUE",
            "=x",
            "1X=y",
            "A-B=c",
            "T=$vault:",
            "T=$vault:bad name",
            "LD_PRELOAD=/x.so",
            "PATH=/evil",
            "GCONV_PATH=/x",
            "CLAUDEMESH_LOG=trace",
        ] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_are_held_to_their_limits() {
        assert!(manifest().check().is_ok());
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("no command", Box::new(|m| m.command.clear())),
            ("bad name", Box::new(|m| m.name = "Bad_Name".into())),
            ("no hosts", Box::new(|m| m.hosts.clear())),
            ("host twice", Box::new(|m| m.hosts.push(MemberKey([1; 32])))),
            ("tiny memory", Box::new(|m| m.memory_mb = 1)),
            (
                "env twice",
                Box::new(|m| {
                    let e = parse_env("A=1").expect("env");
                    m.env = vec![e.clone(), e];
                }),
            ),
            (
                "nul in argument",
                Box::new(|m| m.command.push("a\0b".into())),
            ),
            ("bad allow", Box::new(|m| m.allow.push("bad name".into()))),
        ];
        for (what, f) in cases {
            let mut m = manifest();
            f(&mut m);
            assert!(m.check().is_err(), "{what}");
        }
        let mut m = manifest();
        m.env = vec![
            parse_env("B=$vault:b").expect("env"),
            parse_env("A=$vault:a").expect("env"),
            parse_env("C=$vault:a").expect("env"),
            parse_env("D=plain").expect("env"),
        ];
        assert_eq!(m.vault_names(), ["a", "b"]);
    }

    #[test]
    fn a_sealed_secret_opens_for_its_host_from_its_author_for_its_service_only() {
        use crate::crypto::MemberSecret;
        let (author, host, other) = (
            MemberSecret::generate(),
            MemberSecret::generate(),
            MemberSecret::generate(),
        );
        let mesh = crate::MeshId::new();
        let s =
            seal_secret(&author, &host.public(), &mesh, "probe", "tok", "s3cret").expect("seal");
        let open = |me: &MemberSecret, from: &MemberSecret, mesh, svc: &str, s: &SealedSecret| {
            let s = SealedSecret {
                by: from.public(),
                ..s.clone()
            };
            open_secret(me, mesh, svc, &s).map(|v| v.to_string())
        };
        assert_eq!(
            open(&host, &author, &mesh, "probe", &s).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            open(&other, &author, &mesh, "probe", &s),
            None,
            "another host"
        );
        assert_eq!(
            open(&host, &other, &mesh, "probe", &s),
            None,
            "another author"
        );
        assert_eq!(
            open(&host, &author, &mesh, "other", &s),
            None,
            "another service"
        );
        let renamed = SealedSecret {
            name: "tok2".into(),
            ..s.clone()
        };
        assert_eq!(
            open(&host, &author, &mesh, "probe", &renamed),
            None,
            "another entry"
        );
        assert_eq!(
            open(&host, &author, &crate::MeshId::new(), "probe", &s),
            None,
            "another mesh"
        );
    }

    #[test]
    fn a_manifest_carries_only_its_writers_or_its_holders_sealed_secrets() {
        let (bob, carol, admin) = (MemberKey([2; 32]), MemberKey([3; 32]), MemberKey([4; 32]));
        let sealed_by = |by: MemberKey| SealedSecret {
            host: MemberKey([1; 32]),
            by,
            name: "tok".into(),
            sealed: vec![0; 48],
        };
        let with = |by: &[MemberKey]| Manifest {
            secrets: by.iter().map(|b| sealed_by(*b)).collect(),
            ..manifest()
        };
        for (m, writer, holder, ok, what) in [
            (with(&[]), carol, None, true, "no secrets"),
            (with(&[bob]), bob, None, true, "a first deploy, own box"),
            (with(&[bob]), bob, Some(bob), true, "an update, own box"),
            (
                with(&[bob]),
                admin,
                Some(bob),
                true,
                "an admin's update keeps the holder's",
            ),
            (
                with(&[admin, bob]),
                admin,
                Some(bob),
                true,
                "an admin adds its own",
            ),
            (
                with(&[bob]),
                carol,
                None,
                false,
                "a freed name taken with bob's box",
            ),
            (
                with(&[carol, bob]),
                carol,
                Some(carol),
                false,
                "bob's box among carol's",
            ),
            (
                with(&[bob]),
                admin,
                Some(carol),
                false,
                "a third member's box",
            ),
        ] {
            assert_eq!(
                m.check_sealers(&writer, holder.as_ref()).is_ok(),
                ok,
                "{what}"
            );
        }
    }

    #[test]
    fn the_first_host_up_serves() {
        let (a, b, c) = (MemberKey([1; 32]), MemberKey([2; 32]), MemberKey([3; 32]));
        let hosts = [a, b, c];
        for (up, serving_host) in [
            (vec![a, b, c], Some(a)),
            (vec![b, c], Some(b)),
            (vec![c], Some(c)),
            (vec![], None),
        ] {
            assert_eq!(serving(&hosts, |h| up.contains(h)), serving_host);
        }
    }

    #[test]
    fn package_sources_default_to_their_command() {
        let s = Source::Npm {
            package: "@modelcontextprotocol/server-everything".into(),
            version: "1.0.0".into(),
        };
        assert_eq!(s.default_command().as_deref(), Some("server-everything"));
        let s = Source::Pypi {
            package: "mcp-server-time".into(),
            version: "1".into(),
        };
        assert_eq!(s.default_command().as_deref(), Some("mcp-server-time"));
    }
}
