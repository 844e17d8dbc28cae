//! `sam prep`, run as a user runs it: the built binary under a temporary
//! SAM_HOME, on the test model.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn sam(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam"))
        .args(args)
        .env("SAM_HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = sam(home, args);
    assert!(out.status.success(), "sam {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_rows(path: &Path, n: usize) {
    let rows: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"instruction":"Summarise commit {i}","output":"Fix bug number {i} in the parser","domain":"git"}}"#),
            1 => format!(
                r#"{{"messages":[{{"role":"user","content":"What does f{i} return?"}},{{"role":"assistant","content":"It returns {i} plus one."}}],"domain":"code"}}"#
            ),
            _ => format!(r#"{{"prompt":"Explain item {i}","chosen":"A clear explanation of {i}.","rejected":"No.","domain":"docs"}}"#),
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}

#[test]
fn prep_from_files_and_from_the_latest_export() {
    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = model.to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let rows = h.join("rows.jsonl");
    write_rows(&rows, 90);

    // No --from and no store: a clear error.
    let out = sam(h, &["prep", "--model", model]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"), "{}", String::from_utf8_lossy(&out.stderr));

    // From a file, with options.
    let dir = h.join("ds1");
    let json = ok(
        h,
        &[
            "--json",
            "prep",
            "--model",
            model,
            "--from",
            rows.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--max-seq-len",
            "256",
            "--split",
            "80,10,10",
            "--system",
            "You are SAM.",
        ],
    );
    let m: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(m["max_seq_len"], 256);
    assert_eq!(m["system_prompt"], "You are SAM.");
    assert_eq!(m["split_ratios"]["train"], 80.0);
    let sft = &m["sft"];
    let n_sft = sft["train"].as_u64().unwrap() + sft["valid"].as_u64().unwrap() + sft["test"].as_u64().unwrap();
    assert_eq!(n_sft, 60);
    assert!(dir.join("train.jsonl").is_file() && dir.join("preference/train.jsonl").is_file());
    assert!(dir.join("cache/sft-train.bin").is_file());

    // From the store's latest export (the default input); the human summary.
    ok(h, &["init"]);
    ok(h, &["ingest", rows.to_str().unwrap()]);
    ok(h, &["export", "--tier", "gold,silver,bronze,unverified"]);
    let out = sam(h, &["prep", "--model", model]);
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{err}");
    assert!(text.contains("prepared") && text.contains("domain git"), "{text}");
    // The template named, and the inferred spans said (SmolLM2's template has no markers).
    assert!(text.contains("the model's own, chatml format (blake3 "), "{text}");
    assert!(err.contains("no {% generation %} markers"), "{err}");
    let sets: Vec<_> = std::fs::read_dir(sam_home::SamHome::new(h).datasets_dir()).unwrap().collect();
    assert_eq!(sets.len(), 1);
}
