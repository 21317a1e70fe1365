//! The relay's command line, one definition for both ways to start a relay: the
//! `claudemesh-relay` binary and `claudemesh relay`. Both parse [`RelayArgs`] and call
//! [`run`], so their flags, subcommands and behaviour cannot drift apart again.
//!
//! Flags override the config file; the result is validated before anything starts.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, NewToken, TokenError};
use crate::config::{AdmissionMode, ConfigError, RelayConfig, StoreKind};
use crate::server::{Relay, RelayError};
use crate::sqlite::Durability;
use crate::tls::{Identity, TlsError};

/// The claudemesh relay: routes and stores end-to-end encrypted envelopes between
/// claudemesh daemons. It never sees plaintext or mesh keys.
#[derive(Debug, Parser)]
#[command(name = "claudemesh-relay", version, about, long_about = None)]
pub struct RelayCli {
    /// Flags and subcommand.
    #[command(flatten)]
    pub args: RelayArgs,
}

/// Flags and subcommand of a relay. The flags are global so they may follow the
/// subcommand (`claudemesh-relay fingerprint --data-dir d`).
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// TOML config file (`claudemesh-relay config default` prints every setting).
    #[arg(long, short, env = "CLAUDEMESH_RELAY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Listen address (UDP for QUIC, TCP for TLS/WebSocket, same port). Default 0.0.0.0:7900.
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// Data directory (relay.db, certificate). Default ./relay-data.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Keep state in a NATS JetStream cluster (`nats`) instead of SQLite (`sqlite`).
    #[arg(long, global = true)]
    pub store: Option<StoreArg>,
    /// A NATS server of the cluster, with `--store nats` (repeat for more). Credentials
    /// belong in the config file or CLAUDEMESH_NATS_URL, not here.
    #[arg(
        long = "nats-url",
        env = "CLAUDEMESH_NATS_URL",
        value_delimiter = ',',
        global = true
    )]
    pub nats_url: Vec<String>,
    /// Disable the QUIC listener.
    #[arg(long, global = true)]
    pub no_quic: bool,
    /// Disable the WebSocket listener.
    #[arg(long, global = true)]
    pub no_websocket: bool,
    /// Store no file chunks (members serve them to each other).
    #[arg(long, global = true)]
    pub no_blob_storage: bool,
    /// full (acknowledged envelopes survive power loss) or normal (they survive a crash).
    #[arg(long, global = true)]
    pub durability: Option<DurabilityArg>,
    /// Append every received frame to this file (debugging).
    #[arg(long, hide = true, global = true)]
    pub frame_log: Option<PathBuf>,
    /// Also serve /metrics (Prometheus) over plain HTTP on this address.
    #[arg(long, global = true)]
    pub metrics_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Print `ready <addr> <fingerprint>` on stdout once listening (for supervisors, tests).
    #[arg(long, hide = true, global = true)]
    pub notify_ready: bool,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<RelayCommand>,
}

/// `--store`: where the relay keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    // One SQLite file in the data directory.
    Sqlite,
    // A NATS JetStream cluster shared by several relay nodes.
    Nats,
}

/// `--durability`: how far an acknowledged envelope survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    // Plain comments: doc comments would turn `--help`'s value list into a table.
    // `synchronous=FULL`.
    Full,
    // `synchronous=NORMAL`.
    Normal,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Full => Durability::Full,
            DurabilityArg::Normal => Durability::Normal,
        }
    }
}

/// A relay subcommand.
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Run the relay (the default).
    Run,
    /// Print the certificate fingerprint clients pin (generating the certificate if needed).
    Fingerprint,
    /// Configuration helpers.
    Config {
        /// Which helper.
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Mesh-creation tokens, for `admission = "token"` (safe while the relay runs).
    Token {
        /// What to do with them.
        #[command(subcommand)]
        what: TokenCommand,
    },
}

/// A `token` action.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token and print it on stdout, once (the relay keeps only its hash).
    Create {
        /// How many meshes it may create.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 30m, 12h, 7d, 2w… or never.
        #[arg(long, default_value = "7d", value_parser = parse_expiry)]
        expires: Expiry,
        /// Who or what it is for (shown by `token list`).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List tokens: id, uses left, expiry, status and note (never the token).
    List,
    /// Revoke a token: no mesh is created with it from now on.
    Revoke {
        /// Its id, as `token list` shows it (ids may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

/// `--expires`: seconds from now, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry(pub Option<u64>);

/// Parse "30s", "15m", "12h", "7d", "2w" (a bare number is seconds) or "never".
fn parse_expiry(s: &str) -> Result<Expiry, String> {
    let s = s.trim();
    if s == "never" {
        return Ok(Expiry(None));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 30m, 12h, 7d, or never)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use s, m, h, d or w, or never)"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(0) => Err("--expires must be more than 0 (or never)".into()),
        Some(secs) if secs <= 10 * 365 * 86_400 => Ok(Expiry(Some(secs))),
        _ => Err("--expires is at most 10 years (or never)".into()),
    }
}

/// What a `token` command prints: `stdout` (for `create` the token alone on one line, so
/// `TOKEN=$(claudemesh-relay token create)` works) and a note for stderr.
#[derive(Debug)]
pub struct TokenOutput {
    /// For stdout.
    pub stdout: String,
    /// For stderr.
    pub note: Option<String>,
}

/// A `config` helper.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration as TOML.
    Default,
}

/// A relay command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The config file or the flags are invalid: a usage error, nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create relay data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The relay could not start, or failed while running.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// Stdout could not be written (the fingerprint, the defaults, the ready line).
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
    /// A `token` command failed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl RelayArgs {
    /// The config file (or the defaults) with the flags applied on top, validated.
    pub fn config(&self) -> Result<RelayConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(p) => RelayConfig::from_file(p)?,
            None => RelayConfig::default(),
        };
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        match self.store {
            Some(StoreArg::Sqlite) => cfg.store = StoreKind::Sqlite,
            Some(StoreArg::Nats) => cfg.store = StoreKind::Nats,
            None => {}
        }
        if !self.nats_url.is_empty() {
            cfg.nats_urls = self.nats_url.clone();
        }
        // Flags only switch listeners off: the file's `false` is not undone by no flag.
        cfg.quic &= !self.no_quic;
        cfg.websocket &= !self.no_websocket;
        cfg.blob_storage &= !self.no_blob_storage;
        if let Some(d) = self.durability {
            cfg.durability = d.into();
        }
        if self.frame_log.is_some() {
            cfg.frame_log = self.frame_log.clone();
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen;
        }
        cfg.log_json |= self.log_json;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Do what the command line asks: print the default config, print the fingerprint, manage
/// creation tokens, or run the relay until SIGTERM or Ctrl-C. Runs on the caller's tokio runtime (multi-threaded:
/// the relay spawns its listeners), so each binary sizes it.
pub async fn run(args: RelayArgs) -> Result<(), CliError> {
    match &args.command {
        Some(RelayCommand::Config {
            what: ConfigCommand::Default,
        }) => return print(&RelayConfig::default_toml()),
        Some(RelayCommand::Fingerprint) => return fingerprint(&args.config()?),
        Some(RelayCommand::Token { what }) => {
            let out = token(&args.config()?, what).await?;
            if let Some(note) = out.note {
                let _ = writeln!(std::io::stderr(), "{note}");
            }
            return print(&out.stdout);
        }
        Some(RelayCommand::Run) | None => {}
    }
    let cfg = args.config()?;
    init_tracing(cfg.log_json);
    match cfg.store {
        StoreKind::Sqlite => serve(Relay::bind(cfg).await?, args.notify_ready).await,
        StoreKind::Nats => serve(Relay::bind_cluster(cfg).await?, args.notify_ready).await,
    }
}

async fn serve<S: crate::store::Store>(
    relay: Relay<S>,
    notify_ready: bool,
) -> Result<(), CliError> {
    let fp = claudemesh_schema::encoding::b64(&relay.fingerprint());
    if notify_ready {
        print(&format!("ready {} {fp}\n", relay.local_addr()))?;
    } else {
        // Nobody to tell when stderr is gone; the relay serves regardless.
        let _ = writeln!(
            std::io::stderr(),
            "claudemesh relay listening on {} (fingerprint {fp})",
            relay.local_addr()
        );
    }
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    relay.run(token).await?;
    Ok(())
}

fn fingerprint(cfg: &RelayConfig) -> Result<(), CliError> {
    crate::durable::create_dir_all(&cfg.data_dir).map_err(|source| CliError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let id = Identity::load_or_generate(&cfg.data_dir, cfg.cert.as_deref(), cfg.key.as_deref())?;
    print(&format!(
        "{}\n",
        claudemesh_schema::encoding::b64(&id.fingerprint)
    ))
}

/// Run a `token` command against the relay database of `cfg` or, with `store = "nats"`,
/// the relay cluster's token bucket (every node's).
pub async fn token(cfg: &RelayConfig, what: &TokenCommand) -> Result<TokenOutput, CliError> {
    let db = cfg.data_dir.join("relay.db");
    let now = claudemesh_schema::now_ms();
    let cluster = match cfg.store {
        StoreKind::Sqlite => None,
        StoreKind::Nats => {
            // The client waits for NATS for ever (a relay node rides out an outage); a
            // command gives up and says so.
            let open = async {
                let client = crate::cluster::connect(&cfg.nats_urls).await?;
                crate::cluster::tokens::ClusterTokens::open(
                    client,
                    &cfg.nats_prefix,
                    cfg.nats_replicas,
                )
                .await
            };
            match tokio::time::timeout(std::time::Duration::from_secs(20), open).await {
                Ok(t) => Some(t.map_err(TokenError::from)?),
                Err(_) => {
                    return Err(TokenError::Cluster(crate::cluster::ClusterError::Connect {
                        url: cfg
                            .nats_urls
                            .iter()
                            .map(|u| crate::cluster::redacted(u))
                            .collect::<Vec<_>>()
                            .join(","),
                        detail: "no NATS server answered within 20 s; check nats_urls and that the cluster is up".into(),
                    })
                    .into());
                }
            }
        }
    };
    match what {
        TokenCommand::Create {
            uses,
            expires,
            note,
        } => {
            let new = NewToken {
                uses: *uses,
                expires_in_secs: expires.0,
                note: note.clone(),
            };
            let issued = match &cluster {
                Some(t) => admission::issue_on(t, &new).await?,
                None => {
                    crate::durable::create_dir_all(&cfg.data_dir).map_err(|source| {
                        CliError::DataDir {
                            path: cfg.data_dir.clone(),
                            source,
                        }
                    })?;
                    admission::issue(&db, cfg.durability, &new)?
                }
            };
            let i = &issued.info;
            let mut note = format!(
                "Creation token {} ({}, {}): shown only now, the relay keeps its hash. \
                 Hand it over privately; `claudemesh create` reads it from \
                 CLAUDEMESH_CREATE_TOKEN or --token-file.",
                i.id,
                plural(i.max_uses, "mesh", "meshes"),
                expiry(i.expires_at, now)
            );
            if cfg.admission != AdmissionMode::Token {
                note.push_str(&format!(
                    "\nNote: this config's admission is \"{}\"; tokens are asked for only with \
                     admission = \"token\".",
                    cfg.admission.as_str()
                ));
            }
            Ok(TokenOutput {
                stdout: format!("{}\n", issued.token.expose()),
                note: Some(note),
            })
        }
        TokenCommand::List => {
            let list = match &cluster {
                Some(t) => admission::list_on(t).await?,
                None => admission::list(&db)?,
            };
            if list.is_empty() {
                return Ok(TokenOutput {
                    stdout: String::new(),
                    note: Some(
                        "No creation tokens. Issue one with `claudemesh-relay token create`."
                            .into(),
                    ),
                });
            }
            let mut out = format!(
                "{:<10} {:<9} {:<16} {:<8} NOTE\n",
                "ID", "LEFT", "EXPIRES", "STATUS"
            );
            for t in &list {
                out.push_str(&format!(
                    "{:<10} {:<9} {:<16} {:<8} {}\n",
                    t.id,
                    format!("{}/{}", t.left(), t.max_uses),
                    expiry(t.expires_at, now),
                    t.status(now),
                    t.note
                ));
            }
            Ok(TokenOutput {
                stdout: out,
                note: None,
            })
        }
        TokenCommand::Revoke { id } => {
            let t = match &cluster {
                Some(t) => admission::revoke_on(t, id).await?,
                None => admission::revoke(&db, id)?,
            };
            Ok(TokenOutput {
                stdout: String::new(),
                note: Some(format!(
                    "Creation token {} revoked ({} of {} used); no mesh is created with it from now on.",
                    t.id, t.uses, t.max_uses
                )),
            })
        }
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "expires in 6d 23h", "expired 2h ago", "never expires".
fn expiry(at: Option<i64>, now: i64) -> String {
    match at {
        None => "never expires".into(),
        Some(at) if at > now => format!("expires in {}", span((at - now) as u64)),
        Some(at) => format!("expired {} ago", span((now - at) as u64)),
    }
}

fn span(ms: u64) -> String {
    let m = ms.div_ceil(60_000);
    let (d, h, m) = (m / 1440, m / 60 % 24, m % 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, h) => format!("{h}h {m}m"),
        (d, 0) => format!("{d}d"),
        (d, h) => format!("{d}d {h}h"),
    }
}

fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

/// Logs go to stderr, filtered by `CLAUDEMESH_LOG` (default `info`). A subscriber already
/// set (by an embedding process) is kept.
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a service manager's journal or a file
    // redirect gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// SIGTERM (service managers) or Ctrl-C.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> RelayArgs {
        RelayCli::try_parse_from(std::iter::once("claudemesh-relay").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        RelayCli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_defaults() {
        let cfg = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "d",
            "--no-quic",
            "--no-blob-storage",
            "--durability",
            "normal",
            "--frame-log",
            "f",
            "--metrics-listen",
            "127.0.0.1:2",
            "--log-json",
        ])
        .config()
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("d"));
        assert!(!cfg.quic && cfg.websocket);
        assert!(!cfg.blob_storage);
        assert_eq!(cfg.durability, Durability::Normal);
        assert_eq!(cfg.frame_log, Some(PathBuf::from("f")));
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:2".parse().unwrap()));
        assert!(cfg.log_json);
    }

    #[test]
    fn flags_may_follow_the_subcommand() {
        let a = parse(&["fingerprint", "--data-dir", "d"]);
        assert!(matches!(a.command, Some(RelayCommand::Fingerprint)));
        assert_eq!(a.data_dir, Some(PathBuf::from("d")));
    }

    #[test]
    fn token_commands_issue_list_and_revoke_without_ever_listing_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("relay-data");
        let d = d.to_str().unwrap();
        let run = |args: &[&str]| {
            let a = parse(&[args, &["--data-dir", d]].concat());
            let Some(RelayCommand::Token { what }) = &a.command else {
                panic!("not a token command: {args:?}")
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(token(&a.config().unwrap(), what))
        };
        let made = run(&["token", "create", "--uses", "3", "--note", "for ada"]).unwrap();
        let tok = made.stdout.trim().to_string();
        assert!(tok.starts_with("cmrt_") && !tok.contains(char::is_whitespace));
        let note = made.note.unwrap();
        assert!(
            note.contains("3 meshes") && note.contains("expires in 7d"),
            "{note}"
        );
        assert!(note.contains("admission is \"open\""), "{note}");
        let id = &tok[5..13];
        let list = run(&["token", "list"]).unwrap().stdout;
        assert!(
            list.contains(id) && list.contains("3/3") && list.contains("for ada"),
            "{list}"
        );
        assert!(!list.contains(&tok[5..]), "list never shows the token");
        run(&["token", "create", "--expires", "never"]).unwrap();
        assert!(
            run(&["token", "list"])
                .unwrap()
                .stdout
                .contains("never expires")
        );
        run(&["token", "revoke", id]).unwrap();
        assert!(run(&["token", "list"]).unwrap().stdout.contains("revoked"));
        assert!(matches!(
            run(&["token", "revoke", "AAAAAAAA"]),
            Err(CliError::Token(TokenError::UnknownId(_)))
        ));
    }

    #[test]
    fn a_token_id_may_start_with_a_hyphen() {
        // Ids are base64url: one in 64 starts with `-`.
        let a = parse(&["token", "revoke", "-Pq3x", "--data-dir", "/tmp/x"]);
        let Some(RelayCommand::Token { what }) = a.command else {
            panic!("not a token command")
        };
        assert!(
            matches!(&what, TokenCommand::Revoke { id } if id == "-Pq3x"),
            "{what:?}"
        );
    }

    #[test]
    fn token_expiry_parses_durations_and_never() {
        assert_eq!(parse_expiry("7d"), Ok(Expiry(Some(7 * 86_400))));
        assert_eq!(parse_expiry("90"), Ok(Expiry(Some(90))));
        assert_eq!(parse_expiry("never"), Ok(Expiry(None)));
        for bad in ["", "0", "7y", "-1d", "99999w"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_listener_at_all_is_a_config_error() {
        let e = parse(&["--no-quic", "--no-websocket"])
            .config()
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
    }
}
