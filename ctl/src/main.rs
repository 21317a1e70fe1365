//! `claudemesh`: parse the command line, run the command (`commands` says which function
//! does), and exit with its code (`exit`).

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

/// Print a line to stdout that only confirms what was done (silent with `--quiet`).
macro_rules! say {
    ($($t:tt)*) => {
        $crate::output::say(&format!($($t)*))
    };
}

/// Print a line to stderr, ignoring a closed pipe.
macro_rules! note {
    ($($t:tt)*) => {
        $crate::output::note(&format!($($t)*))
    };
}

mod backup;
mod cache;
mod claude;
mod cli;
mod commands;
mod complete;
mod daemon;
// Hosted services (issue 16, tier 2).
mod deploy;
mod doctor;
mod exit;
mod files;
mod install;
mod invites;
mod meshes;
mod messaging;
// Peer folders (issue 15).
mod output;
mod peer_files;
mod peers;
mod prompt;
mod relay;
mod service;
mod shared;
mod stdin;
mod templates;
mod tools;
mod trust;
// The vault (issue 16).
mod vault;
mod welcome;

use std::process::ExitCode;

use crate::exit::Exit;

fn main() -> ExitCode {
    // The one TLS provider of this process (see AGENTS.md: ring only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    complete::answer_if_asked();
    let cli = cli::parse();
    output::set_quiet(cli.quiet);
    match commands::run(cli.command) {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            if !f.message.is_empty() {
                output::error(&f.message);
            }
            f.code.into()
        }
    }
}
