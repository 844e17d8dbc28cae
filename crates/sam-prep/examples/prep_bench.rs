//! Prep throughput on the Python peer's rows, as one JSON line.
//!
//! `cargo run --release -p sam-prep --example prep_bench -- [MODEL] [ROWS] [THREADS]`
//!
//! MODEL defaults to sam's test model. The timed work is what the Python
//! peer times: chat template, tokenisation, loss mask, truncation to 512 and
//! the split, for every row (no file writing).

use std::time::Instant;

use sam_prep::bench_rows::bench_examples;
use sam_prep::prepare::{Input, PrepConfig, Preparer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = match args.next() {
        Some(p) => p.into(),
        None => sam_models::require_test_model()?,
    };
    let n: usize = args.next().map_or(Ok(5000), |s| s.parse())?;
    let threads: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let model = sam_models::BaseModel::open(&model_path)?;
    let cfg = PrepConfig { threads, ..PrepConfig::default() };
    let prep = Preparer::new(&model, cfg)?;
    let input = Input { examples: bench_examples(n), sources: Vec::new() };
    let t = Instant::now();
    let prepared = prep.prepare(&input, |_| {})?;
    let secs = t.elapsed().as_secs_f64();
    let m = prepared.manifest();
    let tokens = m.sft_tokens.total;
    println!(
        "{}",
        serde_json::json!({
            "peer": format!("sam prep ({threads} thread{})", if threads == 1 { "" } else { "s" }),
            "rows": n,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "examples_per_s": (n as f64 / secs * 10.0).round() / 10.0,
            "tokens_per_s": (tokens as f64 / secs * 10.0).round() / 10.0,
            "tokens": tokens,
            "split": {"train": m.sft.train, "valid": m.sft.valid, "test": m.sft.test},
        })
    );
    Ok(())
}
