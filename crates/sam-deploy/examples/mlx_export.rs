//! Writes what `scripts/check_mlx_export.py` checks: an adapter registered
//! in a fresh registry, promoted, and exported by `Registry::export` in
//! mlx-lm's layout, with sam's logits for fixed token ids with the
//! registered adapter and without (`sam_logits.json` in the export folder).
//!
//! The adapter: LoRA rank 4 (alpha 8) on every projection of the test
//! model's last 4 layers, B random and non-zero, registered in PEFT's
//! layout, so the export converts it (transposed tensors, mlx-lm names and
//! `lora_parameters`).
//!
//! ```text
//! cargo run --release -p sam-deploy --example mlx_export -- MODEL OUT_DIR
//! ```

use candle_core::Tensor;
use sam_deploy::{Approval, BaseRef, Registration, Registry};
use sam_trainer::{
    AdapterFormat, Layers, LoadOptions, LoraConfig, Mode, Target, load_adapter, load_model, save_adapter,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model_path, out) = match (args.get(1), args.get(2)) {
        (Some(m), Some(o)) => (std::path::PathBuf::from(m), std::path::PathBuf::from(o)),
        _ => return Err("usage: mlx_export MODEL OUT_DIR".into()),
    };
    let _ = std::fs::remove_dir_all(&out);
    let mut model = load_model(&model_path, &LoadOptions::default())?;
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
        layers: Layers::Last(4),
        ..Default::default()
    };
    model.attach_lora(&cfg, 7)?;
    for (name, var) in model.lora_vars() {
        if name.ends_with("lora_B") {
            var.set(&Tensor::randn(0f32, 0.05, var.dims(), var.device())?)?;
        }
    }
    let source = out.join("trained-peft");
    save_adapter(&model, &source, AdapterFormat::Peft, Some(&model_path.display().to_string()))?;

    let reg = Registry::open(out.join("home/registry"))?;
    let base = BaseRef {
        id: "SmolLM2-135M-Instruct".into(),
        path: model_path.clone(),
        fingerprint: model.fingerprint()?,
        config: model.config().clone(),
    };
    reg.create_slot("default", base, &[], "none")?;
    let (v, _) = reg.register("default", &Registration::folder(&source))?;
    reg.promote(&v, &Approval::Forced("mlx export check".into()))?;
    let prod = reg.resolve("default", None)?;
    let export = out.join("export");
    let files = reg.export(&v, AdapterFormat::Mlx, &export)?;

    // sam's logits with the adapter as the registry holds it.
    model.detach_lora();
    load_adapter(&mut model, prod.adapter_dir.as_deref().ok_or("nothing in production")?)?;
    let ids: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 28, 7018, 411, 407, 27023];
    let t = Tensor::from_slice(&ids, (1, ids.len()), model.device())?;
    let with: Vec<Vec<f32>> = model.logits(&t, Mode::INFER)?.squeeze(0)?.to_vec2()?;
    let base: Vec<Vec<f32>> = model.logits(&t, Mode::BASE)?.squeeze(0)?.to_vec2()?;
    let json = serde_json::json!({ "version": v.id, "input_ids": ids, "logits": with, "base_logits": base });
    std::fs::write(export.join("sam_logits.json"), serde_json::to_string(&json)?)?;
    println!("exported version {} to {}: {:?}", v.id, export.display(), files);
    Ok(())
}
