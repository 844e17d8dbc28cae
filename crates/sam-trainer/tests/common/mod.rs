//! Helpers shared by the integration tests (and the crate's own unit tests,
//! which include this file).
#![allow(dead_code)]

use std::path::PathBuf;

/// The test model: `$SAM_TEST_MODEL`, else the fetched SmolLM2 GGUF. Panics
/// with the fix when it is missing (tests never skip silently).
pub fn test_model() -> PathBuf {
    let p = sam_models::default_test_model();
    assert!(
        p.is_file(),
        "test model {} is missing: run scripts/fetch-test-model.sh (or set SAM_TEST_MODEL)",
        p.display()
    );
    p
}

/// A file under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Reads a JSON fixture.
pub fn json(name: &str) -> serde_json::Value {
    let p = fixture(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("fixture is valid JSON")
}

/// `[u32]` from a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer") as u32).collect()
}

/// `[f32]` from a JSON array.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// Tokenised examples from a fixture array of `{input_ids, loss_mask}`.
pub fn examples(v: &serde_json::Value) -> Vec<sam_dataset::TokenizedExample> {
    v.as_array()
        .expect("array")
        .iter()
        .enumerate()
        .map(|(i, e)| sam_dataset::TokenizedExample {
            id: format!("ex{i}"),
            domain: "test".into(),
            input_ids: ids(&e["input_ids"]),
            loss_mask: e["loss_mask"].as_array().expect("array").iter().map(|b| b.as_bool().expect("bool")).collect(),
        })
        .collect()
}
