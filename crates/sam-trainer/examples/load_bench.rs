//! Resident memory after loading a model, against its file size: the load
//! benchmark of quantized files (`docs/benchmarks.md`).
//!
//! ```text
//! cargo run --release -p sam-trainer --example load_bench -- MODEL [auto|f32|bf16]
//! ```
//!
//! MODEL is a GGUF file or a Hugging Face / mlx folder; `auto` (default)
//! keeps quantized weights quantized. Prints one JSON line: file bytes,
//! resident bytes before and after loading (VmRSS) and at the peak (VmHWM), the
//! weights' own bytes, their ratios to the file size, and the load time.

use sam_trainer::{WeightType, load_model};
use std::time::Instant;

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(args.get(1).ok_or("usage: load_bench MODEL [auto|f32|bf16]")?);
    let weights = match args.get(2).map(String::as_str).unwrap_or("auto") {
        "auto" => WeightType::Auto,
        "f32" => WeightType::F32,
        "bf16" => WeightType::Bf16,
        other => return Err(format!("unknown weights `{other}`").into()),
    };
    let file_bytes: u64 = if path.is_dir() {
        std::fs::read_dir(&path)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    } else {
        std::fs::metadata(&path)?.len()
    };
    let before = status_kb("VmRSS:") * 1024;
    let t0 = Instant::now();
    let model = load_model(&path, &weights.load_options())?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss = status_kb("VmRSS:") * 1024;
    let peak = status_kb("VmHWM:") * 1024;
    let r = |x: u64| (x as f64 / file_bytes as f64 * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "model": path.display().to_string(),
            "weights": format!("{weights:?}").to_lowercase(),
            "file_bytes": file_bytes,
            "rss_before_bytes": before,
            "rss_after_load_bytes": rss,
            "peak_rss_bytes": peak,
            "weight_bytes": model.weight_bytes(),
            "rss_over_file": r(rss),
            "rss_increase_over_file": r(rss.saturating_sub(before)),
            "peak_over_file": r(peak),
            "load_s": (load_s * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
