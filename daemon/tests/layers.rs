//! The daemon's modules import downward only (ARCHITECTURE.md, "Code map"):
//!
//! `daemon` → `link`, `rpc`, `transcript` → domain (`delivery`, `hooks`, `sessions`,
//! `peers`, `status`, `stats`, `recovery`, `files`, `membership`, `joining`, `grants`,
//! `shared`, `reminders`, `peer_files`, `mcp_host`, `tools`, `vault`, `deploy`) → `context`,
//! `error` →
//! `mesh`, `mcp_client`, `sandbox` → `store`, `keys`, `paths`, `config`, `client`.
//!
//! Read from the sources: every `crate::…` and `super::…` path, and every use of a child
//! module, is an edge. Edges go to a lower layer, or within a layer without a cycle; only
//! `rpc` (and the `error` mapping it uses) knows JSON-RPC codes.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn layer(module: &str) -> u8 {
    let top = module.split("::").next().unwrap_or("");
    match top {
        "daemon" => 5,
        "link" | "rpc" | "transcript" => 4,
        "delivery" | "hooks" | "sessions" | "peers" | "status" | "membership" | "joining"
        | "grants" | "shared" | "reminders" | "stats" | "recovery" | "files" => 3,
        // Peer folders.
        "peer_files" => 3,
        // Shared MCP tools.
        "mcp_host" | "tools" => 3,
        // The vault.
        "vault" => 3,
        // Hosted services.
        "deploy" => 3,
        "context" | "error" => 2,
        "mesh" | "mcp_client" | "sandbox" => 1,
        "store" | "keys" | "paths" | "config" | "client" => 0,
        other => {
            panic!("module {other:?} has no layer: add it to this test and to ARCHITECTURE.md")
        }
    }
}

/// Module path of a source file (`delivery/inbox.rs` → `delivery::inbox`).
fn module_of(rel: &Path) -> String {
    let s = rel.with_extension("").display().to_string();
    let s = s.strip_suffix("/mod").unwrap_or(&s).to_string();
    s.replace('/', "::")
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::b::c` references in `code` after `prefix` (`crate::` or `super::`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|p| !p.is_empty()).collect());
    }
    out
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut texts = BTreeMap::new();
    for f in &files {
        let m = module_of(f.strip_prefix(&src).unwrap());
        if m == "lib" {
            continue;
        }
        texts.insert(m, code(&std::fs::read_to_string(f).unwrap()));
    }
    let modules: BTreeSet<String> = texts.keys().cloned().collect();
    let resolve = |parts: &[&str]| -> Option<String> {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|c| modules.contains(c))
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &texts {
        let mut out = BTreeSet::new();
        for p in paths_after(text, "crate::") {
            if let Some(t) = resolve(&p) {
                out.insert(t);
            }
        }
        let parent: Vec<&str> = m.split("::").collect();
        let parent = &parent[..parent.len() - 1];
        for p in paths_after(text, "super::") {
            let full: Vec<&str> = parent.iter().copied().chain(p).collect();
            if let Some(t) = resolve(&full) {
                out.insert(t);
            }
        }
        // A parent using its child modules by name (`oplog::write`).
        for child in modules.iter().filter(|c| {
            c.strip_prefix(&format!("{m}::"))
                .is_some_and(|rest| !rest.contains("::"))
        }) {
            let name = child.rsplit("::").next().unwrap();
            if text.contains(&format!("{name}::")) {
                out.insert(child.clone());
            }
        }
        out.retain(|t| t != m && !m.starts_with(&format!("{t}::")));
        edges.insert(m.clone(), out);
    }
    edges
}

#[test]
fn daemon_modules_import_downward_only() {
    let edges = edges();
    let mut up = Vec::new();
    for (m, out) in &edges {
        for t in out {
            if layer(t) > layer(m) {
                up.push(format!(
                    "{m} (layer {}) -> {t} (layer {})",
                    layer(m),
                    layer(t)
                ));
            }
        }
    }
    assert!(up.is_empty(), "imports that run up:\n{}", up.join("\n"));
}

#[test]
fn daemon_modules_have_no_import_cycle() {
    let edges = edges();
    // Depth-first search for a back edge; `context` is the one shared struct everything
    // receives, so edges into it are not followed.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for t in edges.get(m).into_iter().flatten() {
            if t == "context" {
                continue;
            }
            if let Some(c) = visit(t, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(c) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn only_rpc_knows_json_rpc_codes() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut hits = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().display().to_string();
            if rel == "rpc.rs" || rel == "error.rs" || rel == "client.rs" {
                continue;
            }
            let text = code(&std::fs::read_to_string(&p).unwrap());
            if text.contains("codes::") {
                hits.push(rel);
            }
        }
    }
    assert!(
        hits.is_empty(),
        "JSON-RPC codes outside rpc/error: {hits:?}"
    );
}

/// Every task the daemon starts is tracked (shutdown waits for it) and carries the span
/// of the code that started it: `Daemon::spawn` or the tracker, never a bare
/// `tokio::spawn` (the daemon's one, for the socket server, keeps its handle).
#[test]
fn every_task_is_tracked() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut hits = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().display().to_string();
            let text = code(&std::fs::read_to_string(&p).unwrap());
            let n = text.matches("tokio::spawn(").count()
                + text.matches("task::spawn(").count()
                + text.matches("rt.spawn(").count();
            let allowed = usize::from(rel == "daemon.rs");
            if n > allowed {
                hits.push(rel);
            }
        }
    }
    assert!(hits.is_empty(), "untracked spawns in {hits:?}");
}
