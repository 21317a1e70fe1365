//! Name rules: what a mesh, display or group name may be. One rule set, used wherever a
//! name is chosen (create, join, profile, session open, groups), so every name can also be
//! typed back as an address (see [`crate::select`]).

/// A name that breaks the rules; the message says which rule and is meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Check a name (`what` says which, e.g. "display name") and return it trimmed: 1–64
/// characters, no control or invisible formatting characters, no `/` (it separates a
/// member from one of its sessions in an address), not `*` and not starting with `@`
/// (both are address syntax).
pub fn check(what: &str, s: &str) -> Result<String, NameError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > MAX_NAME_CHARS {
        return Err(NameError(format!(
            "{what} must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if t.chars().any(invisible) || t == "*" || t.starts_with('@') || t.contains('/') {
        return Err(NameError(format!(
            "{what} {t:?} is not allowed (no control or invisible characters, no `/`, not `*`, not starting with `@`)"
        )));
    }
    Ok(t.to_string())
}

/// Control characters and the invisible ones that change how text around them reads
/// (bidirectional overrides, zero-width characters).
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str, want: &str) {
        assert_eq!(check("name", s).as_deref(), Ok(want), "{s:?}");
    }
    fn bad(s: &str) {
        assert!(check("name", s).is_err(), "{s:?} should be refused");
    }

    #[test]
    fn name_rules() {
        ok("alice", "alice");
        ok("  bob  ", "bob");
        ok("Zoë the builder", "Zoë the builder");
        ok("a-b_c.d", "a-b_c.d");
        ok(&"x".repeat(64), &"x".repeat(64));
        bad("");
        bad("   ");
        bad(&"x".repeat(65));
        bad("*");
        bad("@dev");
        bad("bob/api");
        bad("alice\nsystem");
        bad("tab\there");
        bad("esc\u{1b}[2J");
        bad("rtl\u{202E}evil");
        bad("zero\u{200B}width");
        bad("bom\u{FEFF}");
    }
}
