//! `claudemesh-relay`: parse the flags and run the relay. The command line and what it does
//! live in the library (`cli`), shared with `claudemesh relay`.

use clap::Parser as _;
use claudemesh_relay::cli::RelayCli;

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = RelayCli::parse();
    // All cores: a standalone relay is the machine's main job.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(claudemesh_relay::cli::run(cli.args))?;
    Ok(())
}
