//! Do two file globs match a common path? Used to decide whether file reservations
//! overlap. Patterns use `*` (any run of characters within one path segment), `?` (one
//! character other than `/`) and `**` (any run, across segments); everything else is
//! literal. The answer is exact for `?`, `*` and literals, and errs on the side of
//! "overlaps" where `*` meets `**`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Star,
    Deep,
}

fn tokens(p: &str) -> Vec<Tok> {
    let cs: Vec<char> = p.trim_start_matches("./").chars().collect();
    let mut out = Vec::with_capacity(cs.len());
    let mut i = 0;
    while i < cs.len() {
        match cs[i] {
            '*' if cs.get(i + 1) == Some(&'*') => {
                // `**/` also matches zero segments: fold the slash into the token.
                i += 2;
                if cs.get(i) == Some(&'/') {
                    i += 1;
                }
                if out.last() != Some(&Tok::Deep) {
                    out.push(Tok::Deep);
                }
                continue;
            }
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::One),
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    out
}

/// Whether some path matches both `a` and `b`.
pub(crate) fn overlap(a: &str, b: &str) -> bool {
    let (x, y) = (tokens(a), tokens(b));
    let mut seen = std::collections::HashSet::new();
    walk(&x, &y, 0, 0, &mut seen)
}

fn walk(
    x: &[Tok],
    y: &[Tok],
    i: usize,
    j: usize,
    seen: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if !seen.insert((i, j)) {
        return false;
    }
    match (x.get(i), y.get(j)) {
        (None, None) => true,
        // A wildcard run may match nothing.
        (Some(Tok::Star | Tok::Deep), _) if walk(x, y, i + 1, j, seen) => true,
        (_, Some(Tok::Star | Tok::Deep)) if walk(x, y, i, j + 1, seen) => true,
        (None, _) | (_, None) => false,
        (Some(&p), Some(&q)) => {
            // Or it absorbs one character the other side produces.
            let absorbs = |w: Tok, other: Tok| match (w, other) {
                (Tok::Deep, _) => true,
                (Tok::Star, Tok::Lit(c)) => c != '/',
                (Tok::Star, _) => true,
                _ => false,
            };
            if matches!(p, Tok::Star | Tok::Deep) && absorbs(p, q) && walk(x, y, i, j + 1, seen) {
                return true;
            }
            if matches!(q, Tok::Star | Tok::Deep) && absorbs(q, p) && walk(x, y, i + 1, j, seen) {
                return true;
            }
            let same = match (p, q) {
                (Tok::Lit(c), Tok::Lit(d)) => c == d,
                (Tok::Lit(c), Tok::One) | (Tok::One, Tok::Lit(c)) => c != '/',
                (Tok::One, Tok::One) => true,
                _ => false,
            };
            same && walk(x, y, i + 1, j + 1, seen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn literal_paths_overlap_only_when_equal() {
        assert!(overlap("src/main.rs", "src/main.rs"));
        assert!(overlap("./src/main.rs", "src/main.rs"));
        assert!(!overlap("src/main.rs", "src/lib.rs"));
    }

    #[test]
    fn stars_stay_within_a_segment() {
        assert!(overlap("src/*.rs", "src/main.rs"));
        assert!(!overlap("src/*.rs", "src/a/main.rs"));
        assert!(!overlap("src/*.rs", "src/*.md"));
        assert!(overlap("src/*.rs", "src/m*"));
        assert!(overlap("src/?ain.rs", "src/main.rs"));
    }

    #[test]
    fn double_stars_cross_segments() {
        assert!(overlap("src/**", "src/a/b/c.rs"));
        assert!(overlap("src/**/*.rs", "src/main.rs"));
        assert!(overlap("**/*.rs", "docs/x/y.rs"));
        assert!(!overlap("src/**", "docs/a.md"));
        assert!(!overlap("src/**/*.rs", "src/a/b.md"));
        assert!(overlap("src/**", "src/*/x.rs"));
    }
}
