//! The user guides' worked examples, run: every ```sh block of a guide in
//! `docs/guide/`, in order, as one bash script (`set -euo pipefail`) in a
//! fresh folder with a fresh SAM_HOME and this build's `sam` first on PATH.
//! A block whose info string says `sh no-run` is shown to readers but not
//! run (a daemon left running, a path on the reader's machine).
//!
//! `$SAM_TEST_MODEL` is the base model the examples train on (the test
//! model; `scripts/test.sh` sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn guide_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/guide")
}

/// The script of a guide: its runnable shell blocks, in order.
fn script(markdown: &str) -> String {
    let mut out = String::from("set -euo pipefail\n");
    let mut in_block = false;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (in_block, fence) {
            (false, Some(info)) => {
                let words: Vec<&str> = info.split_whitespace().collect();
                if words.first() == Some(&"sh") && !words.contains(&"no-run") {
                    in_block = true;
                } else if !info.trim().is_empty() {
                    // Another language's block: skip to its end.
                    in_block = false;
                }
            }
            (true, Some(_)) => in_block = false,
            (true, None) => {
                out.push_str(line);
                out.push('\n');
            }
            (false, None) => {}
        }
    }
    out
}

fn check(name: &str) {
    let path = guide_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let script = script(&text);
    assert!(script.lines().count() > 1, "{name} has no ```sh block to run");
    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_sam")).parent().unwrap().to_path_buf();
    let path_var = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path_var)
        .env("SAM_HOME", dir.path().join("sam-home"))
        .env("SAM_TEST_MODEL", &model)
        .env("HOME", dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the worked example of docs/guide/{name} failed ({}):\n--- script\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const GUIDES: &[&str] = &["collect.md", "store.md", "prep.md", "train.md", "deploy.md", "schedule.md", "serve.md"];

#[test]
fn every_guide_is_run_here() {
    let mut found: Vec<String> = std::fs::read_dir(guide_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".md") && n != "README.md")
        .collect();
    found.sort();
    let mut listed: Vec<String> = GUIDES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "add the guide to GUIDES and give it a test");
}

#[test]
fn script_takes_sh_blocks_only() {
    let md =
        "text\n```sh\necho a\n```\n```text\nnot run\n```\n```sh no-run\nsam schedule start\n```\n```sh\necho b\n```\n";
    assert_eq!(script(md), "set -euo pipefail\necho a\necho b\n");
}

#[test]
fn collect_guide() {
    check("collect.md");
}

#[test]
fn store_guide() {
    check("store.md");
}

#[test]
fn prep_guide() {
    check("prep.md");
}

#[test]
fn train_guide() {
    check("train.md");
}

#[test]
fn deploy_guide() {
    check("deploy.md");
}

#[test]
fn schedule_guide() {
    check("schedule.md");
}

#[test]
fn serve_guide() {
    check("serve.md");
}
