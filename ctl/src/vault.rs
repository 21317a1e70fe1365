//! `claudemesh vault set|list|rm`: secrets kept on this machine, per mesh (the daemon's
//! `vault` seals and stores them). A value is read from stdin, a file or a prompt without
//! echo, never from argv: any user can read a running command's arguments
//! (`/proc/<pid>/cmdline`, `ps`), and shells keep them in their history.

use claudemesh_schema::ipc::vault::{
    VAULT_DELETE, VAULT_LIST, VAULT_SET, VaultDeleteParams, VaultDeleteResult, VaultListParams,
    VaultListResult, VaultSetParams, VaultSetResult,
};
use claudemesh_schema::vault::{MAX_VALUE, Secret};
use std::io::Read as _;
use std::path::Path;

use crate::cli::VaultAction;
use crate::exit::{Exit, Failure, Res};
use crate::output;
use crate::shared::call;

fn usage(msg: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, msg)
}

/// At most `MAX_VALUE + extra` bytes of `r`, as UTF-8 text; `what` names the source.
fn read_bounded(r: impl std::io::Read, extra: usize, what: &str) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    r.take((MAX_VALUE + extra + 1) as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("cannot read the value from {what}: {e}")))?;
    if bytes.len() > MAX_VALUE + extra {
        return Err(usage(format!(
            "the value in {what} is larger than {MAX_VALUE} bytes, the most a vault entry holds"
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        usage(format!(
            "the value in {what} is not UTF-8 text (encode a binary secret, e.g. with base64)"
        ))
    })
}

/// The value to store: from `--file` (its exact bytes), from stdin when it is `-` or not a
/// terminal (one trailing newline dropped, as `echo` adds one), else typed without echo.
/// Any other argument is refused, without repeating it.
fn value(name: &str, source: &[String], file: Option<&Path>) -> Result<Secret, Failure> {
    match source {
        [] => {}
        [dash] if dash == "-" => {}
        _ => {
            return Err(usage(
                "a vault value is never taken from the command line (other users can read a \
                 command's arguments while it runs, and shells keep them in their history): \
                 pipe it in (`… | claudemesh vault set NAME`), pass `-` to read stdin, use \
                 `--file F`, or run it on a terminal to type the value without echo",
            ));
        }
    }
    let v = if let Some(f) = file {
        let fh = std::fs::File::open(f)
            .map_err(|e| usage(format!("cannot read the value from {}: {e}", f.display())))?;
        read_bounded(fh, 0, &f.display().to_string())?
    } else if !source.is_empty() || !crate::prompt::interactive() {
        // Room for the "\r\n" that is dropped (in place: no copy of the value is left).
        let mut s = read_bounded(std::io::stdin(), 2, "stdin")?;
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        }
        s
    } else {
        crate::prompt::secret(&format!("value of {name} (not shown): "))?
    };
    if v.is_empty() {
        return Err(usage(if file.is_some() {
            "the file is empty; a vault entry needs a value"
        } else {
            "no value given (stdin was empty); pipe it in, or use --file F"
        }));
    }
    Ok(Secret::new(v))
}

pub(crate) async fn vault(action: VaultAction) -> Res {
    match action {
        VaultAction::Set {
            name,
            source,
            file,
            description,
            opts,
        } => {
            // The name first: a typo is reported before anyone types a secret.
            claudemesh_schema::vault::check_name(&name).map_err(|e| usage(e.to_string()))?;
            let value = value(&name, &source, file.as_deref())?;
            let r: VaultSetResult = call(
                VAULT_SET,
                VaultSetParams {
                    mesh: opts.mesh,
                    name,
                    value,
                    description,
                },
            )
            .await?;
            if opts.json {
                output::json("vault", &r);
            } else {
                say!(
                    "{} {} ({} bytes) in the vault of mesh {}; it stays on this machine",
                    if r.replaced { "replaced" } else { "stored" },
                    r.entry.name,
                    r.entry.size,
                    r.mesh_name
                );
            }
            Ok(())
        }
        VaultAction::List(opts) => {
            let r: VaultListResult = call(VAULT_LIST, VaultListParams { mesh: opts.mesh }).await?;
            if opts.json {
                output::json("vault", &r);
            } else if r.entries.is_empty() {
                say!(
                    "The vault of mesh {} is empty. Add a secret with `claudemesh vault set <name>` (the value from stdin).",
                    r.mesh_name
                );
            } else {
                output::table(
                    &["NAME", "SIZE", "UPDATED", "DESCRIPTION"],
                    r.entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.name.clone(),
                                crate::files::size(e.size),
                                output::ago(e.updated_at),
                                e.description.clone(),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(())
        }
        VaultAction::Rm { name, opts } => {
            let r: VaultDeleteResult = call(
                VAULT_DELETE,
                VaultDeleteParams {
                    mesh: opts.mesh,
                    name,
                },
            )
            .await?;
            if opts.json {
                output::json("vault", &r);
            } else {
                say!("deleted {} from the vault of mesh {}", r.name, r.mesh_name);
            }
            Ok(())
        }
    }
}
