//! Using sam-prep alone: hand-written JSONL examples (any of the forms sam
//! reads) become a dataset folder for a base model — its chat template, its
//! tokenizer, loss masks, splits, the token cache and `manifest.json`.
//!
//! ```text
//! cargo run -p example-prep-only [-- MODEL]   # default: the test model
//! ```

use sam_models::BaseModel;
use sam_prep::prepare::{PrepConfig, Preparer, read_inputs};

const ROWS: &str = r#"{"instruction":"Write the commit message for this change.","input":"src/cache.rs: +fn clear(&mut self) -> usize","output":"Add Cache::clear, which reports how many entries it removed"}
{"messages":[{"role":"user","content":"How do I undo `git add` for one file?"},{"role":"assistant","content":"`git restore --staged FILE` unstages it and keeps your changes."}]}
{"prompt":"Name a variable holding the number of retries.","chosen":"`max_retries`","rejected":"`x`"}
{"text":"fn main() { println!(\"hello\"); }"}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model_path = match std::env::args_os().nth(1) {
        Some(p) => p.into(),
        None => sam_models::require_test_model()?,
    };
    let model = BaseModel::open(&model_path)?;
    let dir = tempfile::tempdir()?;
    let input_path = dir.path().join("examples.jsonl");
    std::fs::write(&input_path, ROWS)?;

    let input = read_inputs(&[input_path])?;
    let prep = Preparer::new(&model, PrepConfig { max_seq_len: 256, ..Default::default() })?;
    let out = dir.path().join("dataset");
    let manifest = prep.prepare(&input, |_| {})?.write(&out)?;
    println!("model {} · template {} · tokenizer {}", model.name(), manifest.template, manifest.tokenizer);
    println!(
        "sft rows {} · preference pairs {} · tokens {} ({} trained on)",
        manifest.sft.train + manifest.sft.valid + manifest.sft.test,
        manifest.preference.train + manifest.preference.valid + manifest.preference.test,
        manifest.sft_tokens.total,
        manifest.sft_tokens.trained
    );
    println!("files: {}", manifest.files.join(", "));
    assert_eq!(manifest.sft.train + manifest.sft.valid + manifest.sft.test, 3);
    assert_eq!(manifest.preference.train + manifest.preference.valid + manifest.preference.test, 1);
    Ok(())
}
