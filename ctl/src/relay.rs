//! `claudemesh relay`: the relay library's own command line (shared with the
//! `claudemesh-relay` binary), on this binary's server runtime.

use claudemesh_relay::cli::RelayArgs;

use crate::commands::server_runtime;
use crate::exit::{Exit, Failure, Res};

pub(crate) fn run(a: RelayArgs) -> Res {
    server_runtime()?
        .block_on(claudemesh_relay::cli::run(a))
        .map_err(|e| Failure::new(Exit::for_relay_error(&e), e.to_string()))
}
