//! Tidy checks on the crate's own source: no import circle between its
//! modules (nor between the submodules of a folder module), counting every
//! `crate::…` (or, inside a folder, `super::…`) path outside comments and
//! test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it refers to.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of `text` without comments and without its test module.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Identifiers that follow `prefix` (`crate::` or `super::`) in `code`.
fn refs(code: &str, prefix: &str) -> BTreeSet<String> {
    code.match_indices(prefix)
        .filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(i, _)| code[i + prefix.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
        .filter(|m: &String| !m.is_empty())
        .collect()
}

/// The modules of folder `dir` (files `x.rs` and folders `x/`), with the
/// references each makes through `prefix`, restricted to those modules.
fn graph(dir: &Path, prefix: &str, skip: &[&str]) -> Graph {
    let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        if p.is_dir() {
            let all: Vec<_> = walk(&p);
            files.entry(name).or_default().extend(all);
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.entry(name).or_default().push(p);
        }
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    files
        .into_iter()
        .map(|(m, paths)| {
            let mut to = BTreeSet::new();
            for p in paths {
                let text = code(&std::fs::read_to_string(&p).unwrap());
                to.extend(refs(&text, prefix).into_iter().filter(|r| names.contains(r) && *r != m));
            }
            (m, to)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// A cycle of `g`, if it has one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(g: &Graph, m: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for n in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, n, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_import_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top = graph(&src, "crate::", &["lib", "tidy"]);
    assert!(top.contains_key("model") && top["model"].contains("fused"), "the scan sees the modules: {top:?}");
    assert_eq!(cycle(&top), None, "module circle in {top:?}");
    for e in std::fs::read_dir(&src).unwrap() {
        let dir = e.unwrap().path();
        if dir.is_dir() {
            let sub = graph(&dir, "super::", &["mod"]);
            assert_eq!(cycle(&sub), None, "module circle inside {}: {sub:?}", dir.display());
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| -> Graph {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert!(cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).is_some());
    assert_eq!(refs("use crate::fit::{x}; crate::model::Decoder; mycrate::no", "crate::").len(), 2);
}
