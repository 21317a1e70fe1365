//! Addresses: the one rule set that turns what a user types (`bob`, `bob/api`, `3f2a`,
//! `@dev`, `*`) into recipients, used by `send`, `wait`, `grant`/`block`/`verify` and the
//! MCP tools alike.
//!
//! A **name addresses a person** (a member): `send bob` reaches bob wherever bob is, and
//! bob's daemon picks the session (see `ARCHITECTURE.md`, "Delivery to a person"). A
//! session is reached exactly by `member/session` (its label or id prefix), by an id
//! prefix of at least 4 hex digits, or by a label that only one session carries.
//!
//! Rules, in order, for a plain word `w`:
//! 1. `w` is 4+ hex digits (dashes ignored) and prefixes session ids: those sessions.
//! 2. `w` is a member's name (case-insensitive): that member. Two members of that name are
//!    ambiguous: names are not unique, and guessing would hand one person's mail to
//!    another.
//! 3. `w` is a session's label: that session; several labels of one member that differ
//!    only in being online resolve to the online one.
//! 4. `w` is 4+ characters prefixing a member key (base64url): that member.
//! 5. `w` uniquely prefixes a member name, else a session label.

use crate::crypto::MemberKey;
use crate::ids::SessionId;

/// What an address asks for, before it is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `*`: everyone.
    All,
    /// `@group` (lowercased, without the `@`).
    Group(String),
    /// `member/session`.
    MemberSession {
        /// The member part.
        member: String,
        /// The session part (a label or an id prefix).
        session: String,
    },
    /// A plain word (name, label, id or key prefix).
    Word(String),
}

impl Selector {
    /// Parse an address as typed.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        // `@all` is upstream's spelling of `*` (no group may be called `all`).
        if s == "*" || s.eq_ignore_ascii_case("@all") {
            return Self::All;
        }
        if let Some(g) = s.strip_prefix('@') {
            return Self::Group(g.trim().to_lowercase());
        }
        if let Some((m, sess)) = s.split_once('/')
            && !m.trim().is_empty()
            && !sess.trim().is_empty()
        {
            return Self::MemberSession {
                member: m.trim().to_string(),
                session: sess.trim().to_string(),
            };
        }
        Self::Word(s.to_string())
    }
}

/// One session as the selector sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The session.
    pub session: SessionId,
    /// Its member.
    pub member: MemberKey,
    /// The member's display name (the person).
    pub member_name: &'a str,
    /// The session's own label (for a member's daemon session, its member name).
    pub label: &'a str,
    /// Groups the session is in.
    pub groups: &'a [String],
    /// Online as last known.
    pub online: bool,
    /// Shown in listings and broadcasts.
    pub visible: bool,
}

/// What an address matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Everyone.
    All,
    /// A group: these sessions (indexes into the candidates).
    Group(Vec<usize>),
    /// One member (a person); its daemon chooses the session.
    Member(MemberKey),
    /// One session (index into the candidates).
    Session(usize),
    /// Nothing matched.
    None,
    /// Several things matched (indexes of the sessions involved).
    Ambiguous(Vec<usize>),
}

/// The known name closest to `word` that a typo could explain (case-insensitive edit
/// distance at most 1, or 2 for words of 6 characters and more), for "did you mean".
pub fn suggest<'a>(word: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w: Vec<char> = word.to_lowercase().chars().collect();
    if w.is_empty() {
        return None;
    }
    let limit = if w.len() >= 6 { 2 } else { 1 };
    names
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            (
                distance(&w, &n.to_lowercase().chars().collect::<Vec<_>>()),
                n,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, n)| (*d, n.len()))
        .map(|(_, n)| n)
}

/// Levenshtein distance, with a swap of two neighbours counting as one edit.
fn distance(a: &[char], b: &[char]) -> usize {
    let mut prev2: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

fn hex_prefix(s: &str) -> Option<String> {
    let h = s.to_lowercase().replace('-', "");
    (h.len() >= 4 && h.chars().all(|c| c.is_ascii_hexdigit())).then_some(h)
}

fn session_hex(c: &Candidate<'_>) -> String {
    c.session.0.simple().to_string()
}

/// Distinct members among `idx`.
fn members_of(c: &[Candidate<'_>], idx: &[usize]) -> Vec<MemberKey> {
    let mut out: Vec<MemberKey> = Vec::new();
    for &i in idx {
        if !out.contains(&c[i].member) {
            out.push(c[i].member);
        }
    }
    out
}

/// One session among `idx`, preferring the online ones when all belong to one member.
fn one_session(c: &[Candidate<'_>], idx: Vec<usize>) -> Pick {
    match idx.len() {
        0 => Pick::None,
        1 => Pick::Session(idx[0]),
        _ => {
            if members_of(c, &idx).len() == 1 {
                let online: Vec<usize> = idx.iter().copied().filter(|&i| c[i].online).collect();
                if online.len() == 1 {
                    return Pick::Session(online[0]);
                }
            }
            Pick::Ambiguous(idx)
        }
    }
}

fn by_member_name(c: &[Candidate<'_>], name: &str) -> Vec<usize> {
    let n = name.to_lowercase();
    (0..c.len())
        .filter(|&i| c[i].member_name.to_lowercase() == n)
        .collect()
}

/// Match `sel` against `candidates` (the sender's own session already left out).
pub fn pick(sel: &Selector, candidates: &[Candidate<'_>]) -> Pick {
    let c = candidates;
    match sel {
        Selector::All => Pick::All,
        Selector::Group(g) => {
            let idx: Vec<usize> = (0..c.len())
                // `@dev` reaches `@dev/backend` too.
                .filter(|&i| {
                    c[i].visible
                        && c[i]
                            .groups
                            .iter()
                            .any(|x| crate::names::in_group(&x.to_lowercase(), g))
                })
                .collect();
            if idx.is_empty() {
                Pick::None
            } else {
                Pick::Group(idx)
            }
        }
        Selector::MemberSession { member, session } => {
            let mut idx = by_member_name(c, member);
            if idx.is_empty() && member.len() >= 4 {
                idx = (0..c.len())
                    .filter(|&i| c[i].member.to_b64().starts_with(member.as_str()))
                    .collect();
            }
            let members = members_of(c, &idx);
            if members.len() > 1 {
                return Pick::Ambiguous(idx);
            }
            let s = session.to_lowercase();
            let mut hit: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| c[i].label.to_lowercase() == s)
                .collect();
            if hit.is_empty()
                && let Some(h) = hex_prefix(session)
            {
                hit = idx
                    .iter()
                    .copied()
                    .filter(|&i| session_hex(&c[i]).starts_with(&h))
                    .collect();
            }
            one_session(c, hit)
        }
        Selector::Word(w) => {
            if let Some(h) = hex_prefix(w) {
                let idx: Vec<usize> = (0..c.len())
                    .filter(|&i| session_hex(&c[i]).starts_with(&h))
                    .collect();
                match idx.len() {
                    0 => {}
                    1 => return Pick::Session(idx[0]),
                    _ => return Pick::Ambiguous(idx),
                }
            }
            let idx = by_member_name(c, w);
            match members_of(c, &idx).as_slice() {
                [] => {}
                [one] => return Pick::Member(*one),
                _ => return Pick::Ambiguous(idx),
            }
            let lw = w.to_lowercase();
            let idx: Vec<usize> = (0..c.len())
                .filter(|&i| c[i].label.to_lowercase() == lw)
                .collect();
            if !idx.is_empty() {
                return one_session(c, idx);
            }
            if w.len() >= 4 {
                // A member key prefix, or a prefix of its fingerprint as `peers` and
                // `verify` show it (`a1b2-c3d4`).
                let lw = w.to_lowercase();
                let idx: Vec<usize> = (0..c.len())
                    .filter(|&i| {
                        c[i].member.to_b64().starts_with(w.as_str())
                            || (lw.contains('-') && c[i].member.fingerprint().starts_with(&lw))
                    })
                    .collect();
                match members_of(c, &idx).as_slice() {
                    [] => {}
                    [one] => return Pick::Member(*one),
                    _ => return Pick::Ambiguous(idx),
                }
            }
            let idx: Vec<usize> = (0..c.len())
                .filter(|&i| c[i].member_name.to_lowercase().starts_with(&lw))
                .collect();
            match members_of(c, &idx).as_slice() {
                [] => {}
                [one] => return Pick::Member(*one),
                _ => return Pick::Ambiguous(idx),
            }
            let idx: Vec<usize> = (0..c.len())
                .filter(|&i| c[i].label.to_lowercase().starts_with(&lw))
                .collect();
            one_session(c, idx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> MemberKey {
        MemberKey([n; 32])
    }

    fn sid(hex: &str) -> SessionId {
        let full = format!("{hex:0<32}");
        SessionId(uuid::Uuid::parse_str(&full).unwrap())
    }

    /// (session hex, member byte, member name, label, online, groups)
    type Row = (
        &'static str,
        u8,
        &'static str,
        &'static str,
        bool,
        &'static [&'static str],
    );

    const PEERS: &[Row] = &[
        ("aaaa1111", 1, "bob", "bob", true, &[]), // bob's daemon (CLI)
        ("bbbb2222", 1, "bob", "api", true, &["dev"]), // bob's Claude session "api"
        ("bbbb3333", 1, "bob", "web", false, &["dev"]), // bob's closed session "web"
        ("cccc4444", 2, "carol", "carol", true, &[]),
        ("dddd5555", 3, "dave", "dave", true, &[]),
        ("eeee6666", 4, "dave", "dave", false, &[]), // a second member named dave
        ("ffff7777", 2, "carol", "api", true, &["ops", "dev/backend"]), // carol also has an "api"
        ("abcd8888", 5, "erin", "notes", true, &[]),
        ("abcd9999", 5, "erin", "notes", false, &[]), // erin's old "notes" session
    ];

    fn check(addr: &str, want: &str) {
        let groups: Vec<Vec<String>> = PEERS
            .iter()
            .map(|r| r.5.iter().map(|g| g.to_string()).collect())
            .collect();
        let c: Vec<Candidate<'_>> = PEERS
            .iter()
            .zip(&groups)
            .map(|(r, g)| Candidate {
                session: sid(r.0),
                member: key(r.1),
                member_name: r.2,
                label: r.3,
                groups: g,
                online: r.4,
                visible: true,
            })
            .collect();
        let got = match pick(&Selector::parse(addr), &c) {
            Pick::All => "all".to_string(),
            Pick::None => "none".to_string(),
            Pick::Member(k) => format!("member {}", k.0[0]),
            Pick::Session(i) => format!("session {}", PEERS[i].0),
            Pick::Group(v) => format!(
                "group {}",
                v.iter().map(|&i| PEERS[i].0).collect::<Vec<_>>().join(",")
            ),
            Pick::Ambiguous(v) => format!(
                "ambiguous {}",
                v.iter().map(|&i| PEERS[i].0).collect::<Vec<_>>().join(",")
            ),
        };
        assert_eq!(got, want, "address {addr:?}");
    }

    #[test]
    fn a_fingerprint_prefix_names_its_member() {
        let carol = key(2).fingerprint();
        check(&carol[..9], "member 2");
        check(&carol, "member 2");
    }

    #[test]
    fn selector_rules() {
        check("*", "all");
        check("@all", "all");
        check("@ALL", "all");
        // A group reaches its subgroups; a subgroup only itself.
        check("@dev", "group bbbb2222,bbbb3333,ffff7777");
        check("@DEV", "group bbbb2222,bbbb3333,ffff7777");
        check("@dev/backend", "group ffff7777");
        check("@dev/back", "none");
        check("@de", "none");
        check("@nobody", "none");
        // A name is the person, whatever sessions they have open.
        check("bob", "member 1");
        check("BOB", "member 1");
        check("carol", "member 2");
        // member/session reaches one session, by label or id prefix.
        check("bob/api", "session bbbb2222");
        check("bob/web", "session bbbb3333");
        check("carol/api", "session ffff7777");
        check("bob/bbbb3", "session bbbb3333");
        check("bob/nope", "none");
        check("zed/api", "none");
        // An id prefix of 4+ hex digits is one session, or ambiguous.
        check("cccc", "session cccc4444");
        check("cccc-44", "session cccc4444");
        check("abcd", "ambiguous abcd8888,abcd9999");
        check("abcd8", "session abcd8888");
        // Two members of one name: ambiguous, never a guess.
        check("dave", "ambiguous dddd5555,eeee6666");
        check("dave/dave", "ambiguous dddd5555,eeee6666");
        // A label two members carry is ambiguous; one member's labels prefer online.
        check("api", "ambiguous bbbb2222,ffff7777");
        check("web", "session bbbb3333");
        check("notes", "session abcd8888");
        // Unique prefixes of a name, then of a label.
        check("car", "member 2");
        check("er", "member 5");
        check("not", "session abcd8888");
        check("we", "session bbbb3333");
        check("d", "ambiguous dddd5555,eeee6666");
        check("xyz", "none");
        // Member key prefix (base64url of [1; 32] starts with "AQEB").
        check("AQEB", "member 1");
    }

    #[test]
    fn parse_forms() {
        assert_eq!(Selector::parse(" * "), Selector::All);
        assert_eq!(Selector::parse("@Ops"), Selector::Group("ops".into()));
        assert_eq!(
            Selector::parse("bob/api"),
            Selector::MemberSession {
                member: "bob".into(),
                session: "api".into()
            }
        );
        assert_eq!(Selector::parse("bob/"), Selector::Word("bob/".into()));
        assert_eq!(Selector::parse("bob"), Selector::Word("bob".into()));
    }

    #[test]
    fn a_typo_suggests_the_name_it_most_likely_meant() {
        let names = ["alice", "bob", "carol-backend", "Dave"];
        // (typed, suggested)
        let table: &[(&str, Option<&str>)] = &[
            ("alcie", Some("alice")),
            ("alic", Some("alice")),
            ("bbo", Some("bob")),
            ("dave", Some("Dave")),
            ("carol-bakend", Some("carol-backend")),
            ("zed", None),
            ("al", None),
            ("", None),
        ];
        for &(typed, want) in table {
            assert_eq!(suggest(typed, names), want, "{typed:?}");
        }
    }
}
