//! How a command ends: its exit code (the README's list, which scripts rely on) and the
//! message printed with it. The only place that maps daemon errors to exit codes.

use claudemesh_daemon::client::ClientError;
use claudemesh_relay::admission::TokenError;
use claudemesh_relay::cli::CliError as RelayCliError;
use claudemesh_schema::ipc::codes;

/// An exit code of `claudemesh`. The numbers are a contract (README, `--help`): never
/// renumber one; add new ones at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    DaemonUnavailable = 3,
    NotFound = 4,
    Ambiguous = 5,
    RelayUnreachable = 6,
    InviteRefused = 7,
    NotAllowed = 8,
    TimedOut = 9,
    Conflict = 10,
}

// `ALL` lists every code in order; the codes are contiguous, so a variant missing from it
// makes the lengths differ and fails the build.
const _: () = assert!(Exit::ALL.len() == Exit::Conflict as usize + 1);

impl Exit {
    /// Every exit code, in numeric order.
    pub(crate) const ALL: [Exit; 11] = [
        Exit::Ok,
        Exit::Error,
        Exit::Usage,
        Exit::DaemonUnavailable,
        Exit::NotFound,
        Exit::Ambiguous,
        Exit::RelayUnreachable,
        Exit::InviteRefused,
        Exit::NotAllowed,
        Exit::TimedOut,
        Exit::Conflict,
    ];

    /// The number the process exits with.
    pub(crate) const fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, as the help text and the README say it.
    pub(crate) const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Error => "error",
            Exit::Usage => "bad usage or argument",
            Exit::DaemonUnavailable => "daemon unavailable",
            Exit::NotFound => "not found",
            Exit::Ambiguous => "ambiguous name",
            Exit::RelayUnreachable => "relay unreachable",
            Exit::InviteRefused => "invite refused",
            Exit::NotAllowed => "not allowed",
            Exit::TimedOut => "timed out",
            Exit::Conflict => "conflict",
        }
    }

    /// The exit code for an error code the daemon answered with.
    pub(crate) fn for_rpc(code: i32) -> Exit {
        match code {
            codes::NOT_FOUND => Exit::NotFound,
            codes::AMBIGUOUS => Exit::Ambiguous,
            codes::RELAY_UNAVAILABLE => Exit::RelayUnreachable,
            codes::INVITE_REFUSED => Exit::InviteRefused,
            codes::FORBIDDEN => Exit::NotAllowed,
            codes::TIMEOUT => Exit::TimedOut,
            codes::CONFLICT => Exit::Conflict,
            codes::INVALID_ARGUMENT | codes::INVALID_PARAMS => Exit::Usage,
            _ => Exit::Error,
        }
    }

    /// The exit code for a failure to talk to the daemon (or an error it answered with).
    pub(crate) fn for_client_error(e: &ClientError) -> Exit {
        match e {
            ClientError::NotRunning { .. }
            | ClientError::Start(_)
            | ClientError::Foreign { .. } => Exit::DaemonUnavailable,
            ClientError::Rpc { code, .. } => Exit::for_rpc(*code),
            // A broken connection or answer, and variants added to the daemon later.
            _ => Exit::Error,
        }
    }

    /// The exit code for a failed `claudemesh relay`: a bad config file, flag combination
    /// or token argument is a usage error, an unknown token id not found; anything else (a
    /// port in use, a broken certificate) an error.
    pub(crate) fn for_relay_error(e: &RelayCliError) -> Exit {
        match e {
            RelayCliError::Config(_) | RelayCliError::Token(TokenError::Invalid(_)) => Exit::Usage,
            RelayCliError::Token(TokenError::UnknownId(_)) => Exit::NotFound,
            _ => Exit::Error,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e.code())
    }
}

/// The `--help` footer listing every exit code: "Exit codes: 0 ok, 1 error, …".
pub(crate) fn help() -> String {
    let list: Vec<String> = Exit::ALL
        .iter()
        .map(|e| format!("{} {}", e.code(), e.meaning()))
        .collect();
    format!("Exit codes: {}.", list.join(", "))
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: Exit,
    /// Printed as `error: <message>` on stderr; empty when the command already said why.
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::new(Exit::for_client_error(&e), e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::new(Exit::Error, format!("{e:#}"))
    }
}

/// What every command returns.
pub(crate) type Res = Result<(), Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_their_position_in_all() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(e.code()), i, "{e:?}");
        }
    }

    #[test]
    fn help_lists_every_code_as_before() {
        // The text `--help` printed before it was generated; scripts and docs quote it.
        assert_eq!(
            help(),
            "Exit codes: 0 ok, 1 error, 2 bad usage or argument, 3 daemon unavailable, \
             4 not found, 5 ambiguous name, 6 relay unreachable, 7 invite refused, \
             8 not allowed, 9 timed out, 10 conflict."
        );
    }

    #[test]
    fn readme_documents_the_same_codes() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let start = readme
            .find("**Exit codes:**")
            .expect("README lists exit codes");
        let end = start + readme[start..].find("\n\n").expect("paragraph end");
        let words = readme[start..end].split_whitespace().collect::<Vec<_>>();
        let documented = words.join(" ");
        let listed: Vec<String> = Exit::ALL
            .iter()
            .map(|e| format!("{} {}", e.code(), e.meaning()))
            .collect();
        assert_eq!(
            documented,
            format!("**Exit codes:** {}.", listed.join(" · "))
        );
    }

    #[test]
    fn rpc_codes_map_to_exit_codes() {
        let table = [
            (codes::NOT_FOUND, Exit::NotFound),
            (codes::AMBIGUOUS, Exit::Ambiguous),
            (codes::INVALID_ARGUMENT, Exit::Usage),
            (codes::INVALID_PARAMS, Exit::Usage),
            (codes::RELAY_UNAVAILABLE, Exit::RelayUnreachable),
            (codes::INVITE_REFUSED, Exit::InviteRefused),
            (codes::FORBIDDEN, Exit::NotAllowed),
            (codes::TIMEOUT, Exit::TimedOut),
            (codes::CONFLICT, Exit::Conflict),
            (codes::PARSE, Exit::Error),
            (codes::INVALID_REQUEST, Exit::Error),
            (codes::METHOD_NOT_FOUND, Exit::Error),
            (codes::INTERNAL, Exit::Error),
            (4242, Exit::Error),
        ];
        for (code, exit) in table {
            let e = ClientError::Rpc {
                code,
                message: "m".into(),
            };
            assert_eq!(Exit::for_client_error(&e), exit, "rpc code {code}");
            assert_eq!(Failure::from(e).code, exit, "rpc code {code}");
        }
    }

    #[test]
    fn connection_failures_map_to_exit_codes() {
        let table = [
            (
                ClientError::NotRunning {
                    socket: "/s".into(),
                },
                Exit::DaemonUnavailable,
            ),
            (ClientError::Start("x".into()), Exit::DaemonUnavailable),
            (ClientError::Io("x".into()), Exit::Error),
            (ClientError::Protocol("x".into()), Exit::Error),
        ];
        for (e, exit) in table {
            let what = format!("{e:?}");
            assert_eq!(Failure::from(e).code, exit, "{what}");
        }
    }

    #[test]
    fn relay_failures_map_to_exit_codes() {
        use claudemesh_relay::config::ConfigError;
        let table = [
            (
                RelayCliError::Config(ConfigError::Invalid("x".into())),
                Exit::Usage,
            ),
            (
                RelayCliError::Output(std::io::ErrorKind::BrokenPipe.into()),
                Exit::Error,
            ),
            (
                RelayCliError::DataDir {
                    path: "/d".into(),
                    source: std::io::ErrorKind::PermissionDenied.into(),
                },
                Exit::Error,
            ),
            (
                RelayCliError::Token(TokenError::Invalid("--uses must be at least 1".into())),
                Exit::Usage,
            ),
            (
                RelayCliError::Token(TokenError::UnknownId("AAAAAAAA".into())),
                Exit::NotFound,
            ),
        ];
        for (e, exit) in table {
            assert_eq!(Exit::for_relay_error(&e), exit, "{e}");
        }
    }

    #[test]
    fn a_failure_keeps_the_daemon_message() {
        let f = Failure::from(ClientError::Rpc {
            code: codes::NOT_FOUND,
            message: "no peer called \"bob\"".into(),
        });
        assert_eq!(f.message, "no peer called \"bob\"");
    }
}
