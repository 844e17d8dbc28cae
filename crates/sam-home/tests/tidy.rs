//! Tidy check, in the manner of rust-analyzer's: only sam-home spells the
//! names of `SAM_HOME`'s files and folders ([`sam_home::OWNED_NAMES`]).
//! Everyone else asks `SamHome` for the path.
//!
//! What is read: every `.rs` file under a crate's or an example's `src/`,
//! and the tests of the crates that work on a whole `SAM_HOME` (the CLI,
//! the pipeline, the scheduler). Other tests, and unit tests (from a file's
//! `#[cfg(test)]` line on, and `tests.rs` module files), may name files in their own temporary
//! folders as they like. Comment lines (doc examples included) are passed
//! over. A string literal is flagged when it is one of the file names
//! (`store.db`), a `/`-separated path with one of the names as a part
//! (`runs/abc`), or a folder name used as a path (`home.join("runs")`,
//! `PathBuf::from("runs")`): a bare word like `runs` is also a command name
//! (`sam runs list`), a column header or a JSON key, and those are fine.

use std::path::{Path, PathBuf};

/// Calls whose string argument is a path.
const PATH_CALLS: &[&str] = &["join(", "from(", "new(", "push(", "with_file_name("];

/// Crates whose integration tests work on a whole SAM_HOME.
const HOME_TESTS: &[&str] = &["sam-cli", "sam-pipeline", "sam-scheduler", "sam-serve"];

#[test]
fn only_sam_home_spells_sam_home_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    let mut tests = Vec::new();
    for group in ["crates", "examples"] {
        for krate in std::fs::read_dir(root.join(group)).unwrap() {
            let krate = krate.unwrap().path();
            let name = krate.file_name().unwrap().to_string_lossy().into_owned();
            if name == "sam-home" {
                continue;
            }
            rs_files(&krate.join("src"), &mut files);
            if HOME_TESTS.contains(&name.as_str()) {
                rs_files(&krate.join("tests"), &mut tests);
            }
        }
    }
    assert!(files.len() > 50, "the workspace was not found from {}", root.display());
    let mut found = Vec::new();
    for file in files.iter().chain(&tests) {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, name) in offences(&text) {
            found.push(format!("{}:{line}: \"{name}\"", file.strip_prefix(&root).unwrap_or(file).display()));
        }
    }
    assert!(
        found.is_empty(),
        "these spell SAM_HOME names that only sam-home may know; use sam_home::SamHome's accessors:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_should_and_nothing_else() {
    let check = |text: &str, want: &[(usize, &str)]| {
        let got = offences(text);
        let got: Vec<(usize, &str)> = got.iter().map(|(l, n)| (*l, n.as_str())).collect();
        assert_eq!(got, want, "{text}");
    };
    check("let p = home.join(\"store.db\");", &[(1, "store.db")]);
    check(
        "let p = home.join(\"runs/abc\");\nlet q = PathBuf::from(\"pipeline\");",
        &[(1, "runs/abc"), (2, "pipeline")],
    );
    check("// home.join(\"store.db\")\n//! \"sam.toml\"", &[]);
    check("let s = \"a \\\"store.db\\\" b\"; let c = '\"'; let t = \"runs of five\";", &[]);
    check("let d = dir.join(\"adapter\").join(\"sft/adapter\"); get(\"/v1/runs/{id}\");", &[]);
    check("println!(\"{}\", \"exports\");", &[]);
    check("let p = format!(\"{}/exports/{id}\", h); p.push(\"models\");", &[(1, "{}/exports/{id}"), (1, "models")]);
    check("fn f() {}\n#[cfg(test)]\nmod tests { const P: &str = \"store.db\"; }", &[]);
    let test = "sam(&[\"runs\", \"list\"]); h.join(\"runs\"); h.join(\"runs/x\"); h.join(\"sam.toml\"); j[\"exports\"]";
    check(test, &[(1, "runs"), (1, "runs/x"), (1, "sam.toml")]);
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs") {
            out.push(p);
        }
    }
}

/// The string literals of `text` that name a SAM_HOME file or folder, with
/// their 1-based lines.
fn offences(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            // A file's unit tests (at its end) are tests.
            break;
        }
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (before, lit) in string_literals(line) {
            let owned = |s: &str| sam_home::OWNED_NAMES.contains(&s);
            let before = before.trim_end();
            let as_path = lit.contains('.') || PATH_CALLS.iter().any(|c| before.ends_with(c));
            // A relative path (`runs/abc`), not a URL or absolute path (`/v1/runs`).
            let relative_path = lit.contains('/') && !lit.starts_with('/') && lit.split('/').any(owned);
            if (owned(&lit) && as_path) || relative_path {
                out.push((i + 1, lit));
            }
        }
    }
    out
}

/// The `"..."` literals on one line: the text before each and its contents
/// (escapes kept as written; a literal running past the line is passed
/// over).
fn string_literals(line: &str) -> Vec<(String, String)> {
    let line = line.replace("'\"'", "' '").replace("'\\\"'", "' '");
    let mut out = Vec::new();
    let mut before = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            before.push(c);
            continue;
        }
        let mut lit = String::new();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    lit.push(c);
                    if let Some(n) = chars.next() {
                        lit.push(n);
                    }
                }
                '"' => {
                    closed = true;
                    break;
                }
                _ => lit.push(c),
            }
        }
        if closed {
            out.push((before.clone(), lit.clone()));
        }
        before.push('"');
        before.push_str(&lit);
        before.push('"');
    }
    out
}
