//! Writes an adapter for the PEFT and mlx-lm checks
//! (`scripts/check_peft_adapter.py`, `scripts/check_mlx_adapter.py`):
//! LoRA on every target module of the test model's last 4 layers with
//! random non-zero B, plus sam's logits for fixed token ids with the adapter
//! (`sam_logits.json`) so Python can compare. The layout is PEFT's unless
//! the third argument is `mlx`.
//!
//! ```text
//! cargo run --release -p sam-trainer --example peft_export -- MODEL OUT_DIR [peft|mlx]
//! ```

use candle_core::Tensor;
use sam_trainer::{AdapterFormat, Layers, LoadOptions, LoraConfig, Mode, Target, load_model, save_adapter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model_path, out) = match (args.get(1), args.get(2)) {
        (Some(m), Some(o)) => (m, std::path::PathBuf::from(o)),
        _ => return Err("usage: peft_export MODEL OUT_DIR [peft|mlx]".into()),
    };
    let format = match args.get(3).map(String::as_str) {
        None | Some("peft") => AdapterFormat::Peft,
        Some("mlx") => AdapterFormat::Mlx,
        Some(other) => return Err(format!("unknown format `{other}` (expected peft or mlx)").into()),
    };
    let mut model = load_model(model_path.as_ref(), &LoadOptions::default())?;
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
        layers: Layers::Last(4),
        ..Default::default()
    };
    model.attach_lora(&cfg, 42)?;
    for (name, var) in model.lora_vars() {
        if name.ends_with("lora_B") {
            var.set(&Tensor::randn(0f32, 0.05, var.dims(), var.device())?)?;
        }
    }
    save_adapter(&model, &out, format, Some(model_path))?;
    let ids: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 28, 7018, 411, 407, 27023];
    let t = Tensor::from_slice(&ids, (1, ids.len()), model.device())?;
    let with: Vec<Vec<f32>> = model.logits(&t, Mode::INFER)?.squeeze(0)?.to_vec2()?;
    let base: Vec<Vec<f32>> = model.logits(&t, Mode::BASE)?.squeeze(0)?.to_vec2()?;
    let json = serde_json::json!({ "input_ids": ids, "logits": with, "base_logits": base });
    std::fs::write(out.join("sam_logits.json"), serde_json::to_string(&json)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
