//! Questions asked on a terminal: yes/no confirmations, and secrets typed without echo.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use crate::exit::{Exit, Failure};

fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read the answer: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Ask `question` on stderr; true only for an answer starting with y (the default is no).
pub(crate) fn yes(question: &str) -> Result<bool, Failure> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let a = read_line()?;
    Ok(a.trim().to_lowercase().starts_with('y'))
}

/// Is stdin a terminal (someone who can be asked)?
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Read a secret from stdin after `prompt` (on stderr). On a terminal, what is typed is
/// not echoed (and echo comes back even when reading fails); elsewhere, the first line.
pub(crate) fn secret(prompt: &str) -> Result<String, Failure> {
    if !interactive() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        return read_line();
    }
    let stdin = std::io::stdin();
    let saved = rustix::termios::tcgetattr(&stdin).map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("cannot turn off echo on the terminal: {e}"),
        )
    })?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet).map_err(
        |e| {
            Failure::new(
                Exit::Error,
                format!("cannot turn off echo on the terminal: {e}"),
            )
        },
    )?;
    // The prompt only once echo is off: what is typed after it never shows.
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let line = read_line();
    let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
    // The newline the user typed was not echoed either.
    eprintln!();
    line
}
