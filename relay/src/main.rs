//! `claudemesh-relay`: parse flags, load the config, run the relay until SIGTERM/SIGINT.
//! Everything else lives in the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use claudemesh_relay::{Relay, RelayConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The claudemesh relay: routes and stores end-to-end encrypted envelopes between
/// claudemesh daemons. It never sees plaintext or mesh keys.
#[derive(Debug, Parser)]
#[command(name = "claudemesh-relay", version, about, long_about = None)]
struct Cli {
    /// TOML config file (see `claudemesh-relay config default`).
    #[arg(long, short, env = "CLAUDEMESH_RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Listen address (UDP for QUIC and TCP for TLS/WebSocket, same port).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Data directory (relay.db, certificate).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Disable the QUIC listener.
    #[arg(long, global = true)]
    no_quic: bool,
    /// Disable the WebSocket listener.
    #[arg(long, global = true)]
    no_websocket: bool,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    /// Also serve /metrics (Prometheus) over plain HTTP on this address.
    #[arg(long, global = true)]
    metrics_listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Print the certificate fingerprint clients pin (generating the certificate if needed).
    Fingerprint,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration as TOML.
    Default,
}

fn load(cli: &Cli) -> anyhow::Result<RelayConfig> {
    let mut cfg = match &cli.config {
        Some(p) => RelayConfig::from_file(p)?,
        None => RelayConfig::default(),
    };
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = d.clone();
    }
    if cli.no_quic {
        cfg.quic = false;
    }
    if cli.no_websocket {
        cfg.websocket = false;
    }
    if cli.log_json {
        cfg.log_json = true;
    }
    if cli.metrics_listen.is_some() {
        cfg.metrics_listen = cli.metrics_listen;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!("{}", RelayConfig::default_toml());
            return Ok(());
        }
        Some(Command::Fingerprint) => {
            let cfg = load(&cli)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
            let id = claudemesh_relay::tls::Identity::load_or_generate(
                &cfg.data_dir,
                cfg.cert.as_deref(),
                cfg.key.as_deref(),
            )?;
            println!("{}", claudemesh_schema::encoding::b64(&id.fingerprint));
            return Ok(());
        }
        Some(Command::Run) | None => {}
    }
    let cfg = load(&cli)?;
    init_tracing(cfg.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let relay = Relay::bind(cfg).await?;
        eprintln!(
            "claudemesh-relay listening on {} (fingerprint {})",
            relay.local_addr(),
            claudemesh_schema::encoding::b64(&relay.fingerprint())
        );
        let token = tokio_util::sync::CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            t2.cancel();
        });
        relay.run(token).await?;
        Ok(())
    })
}
