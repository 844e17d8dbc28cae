//! Helpers shared by the CLI's integration tests: run `sam` on a home, and
//! a small prepared dataset for the test model.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `sam ARGS` on `home`, with no input.
pub fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sam"));
    c.args(args).env("SAM_HOME", home).env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

/// Run `sam ARGS` on `home`.
pub fn sam(home: &Path, args: &[&str]) -> Output {
    cmd(home, args).output().unwrap()
}

/// Run `sam ARGS` on `home`; its stdout, or a panic with both outputs.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = sam(home, args);
    assert!(
        out.status.success(),
        "sam {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A small prepared dataset (SFT rows and preference pairs) for the test model.
pub fn prepared(home: &Path, model: &str) -> PathBuf {
    let rows: Vec<String> = (0..48)
        .map(|i| match i % 3 {
            0 => format!(
                r#"{{"instruction":"Summarise commit {i}","output":"Fix bug number {i} in the parser","domain":"git"}}"#
            ),
            1 => format!(
                r#"{{"messages":[{{"role":"user","content":"What does f{i} return?"}},{{"role":"assistant","content":"It returns {i} plus one."}}],"domain":"code"}}"#
            ),
            _ => format!(
                r#"{{"prompt":"Explain item {i}","chosen":"In short: item {i} is a number.","rejected":"No.","domain":"docs"}}"#
            ),
        })
        .collect();
    let input = home.join("rows.jsonl");
    std::fs::write(&input, rows.join("\n") + "\n").unwrap();
    let dir = home.join("data");
    let args = ["prep", "--model", model, "--from", input.to_str().unwrap(), "--out", dir.to_str().unwrap()];
    ok(home, &[&args[..], &["--max-seq-len", "64", "--split", "80,10,10"]].concat());
    dir
}

/// `HOME/new.jsonl` with `n` distinct instruction examples about a made-up
/// crate (none a near-duplicate of another), for `sam ingest`.
pub fn distinct_examples(home: &Path, n: usize) -> PathBuf {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("What does `cache_op_{i}` do in the cachey crate?"),
                "output": format!("`cache_op_{i}` returns entry number {i} of the cache; expired entries are skipped, and the call never blocks."),
                "domain": "code",
            })
            .to_string()
        })
        .collect();
    let data = home.join("new.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    data
}
