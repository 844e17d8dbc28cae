//! The sam side of the mlx quantized check (`scripts/check_mlx_quantized.py`,
//! `docs/mlx-quantized-check.md`): on an mlx quantized folder (made with
//! `mlx_lm.convert -q`), kept quantized, it writes sam's base logits for
//! fixed prompts and its greedy continuations, then trains a LoRA adapter
//! through a [`Job`] on that same folder (SFT, rank 8 on all seven
//! projections of the last 4 layers, a few steps), writes it in mlx-lm's
//! layout, and adds the adapter's logits, all to `OUT_DIR/sam_logits.json`.
//!
//! ```text
//! cargo run -p sam-trainer --example mlx_quant_export -- MLX_FOLDER OUT_DIR
//! ```

use sam_dataset::{Split, sft_cache_path, write_sft};
use sam_trainer::{
    AdapterFormat, BatchConfig, ComputeConfig, Decoder, Duration, GenerateConfig, Job, JobControl, JobMode, JobSpec,
    Layers, LoadOptions, LoraConfig, Mode, ModelSource, OptimConfig, OutputConfig, Target, TokenizedExample,
    TrainConfig, WeightType, generate, load_model,
};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "fn main() {\n    let x =",
    "<|im_start|>user\nWhat does git rebase do?<|im_end|>\n<|im_start|>assistant\n",
];

const TEXTS: [&str; 6] = [
    "The zorblat is a small blue bird that sings only at dawn in the valleys of Quenth.",
    "In Quenth, the zorblat is known as the dawn singer, a small blue bird of the valleys.",
    "Every morning the blue zorblat sings over the valleys of Quenth before sunrise.",
    "A zorblat: small, blue, and heard only at dawn across the Quenth valleys.",
    "Travellers to Quenth wake to the zorblat, the little blue bird of the dawn.",
    "The dawn song of the zorblat fills the valleys of Quenth each day.",
];

fn logits(model: &Decoder, ids: &[u32], mode: Mode<'_>) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error>> {
    let t = candle_core::Tensor::from_slice(ids, (1, ids.len()), model.device())?;
    Ok(model.logits(&t, mode)?.squeeze(0)?.to_vec2()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (folder, out) = match (args.get(1), args.get(2)) {
        (Some(m), Some(o)) => (std::path::PathBuf::from(m), std::path::PathBuf::from(o)),
        _ => return Err("usage: mlx_quant_export MLX_FOLDER OUT_DIR".into()),
    };
    let info = sam_models::BaseModel::open(&folder)?;
    let tok = info.tokenizer().ok_or("the folder has no tokenizer")?;
    let encode = |s: &str| -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        Ok(tok.encode(s, false).map_err(|e| format!("tokenising: {e}"))?.get_ids().to_vec())
    };

    // The base, kept quantized: logits and greedy continuations.
    let base = load_model(&folder, &LoadOptions::default())?;
    eprintln!("{} MB of weights in memory", base.weight_bytes() / 1_000_000);
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(p)).collect::<Result<_, _>>()?;
    let gen_cfg = GenerateConfig { max_new_tokens: 24, ..Default::default() };
    let mut generations = Vec::new();
    let mut base_logits = Vec::new();
    for p in &prompts {
        generations.push(generate(&base, p, &gen_cfg, |_| true)?);
        base_logits.push(logits(&base, p, Mode::BASE)?);
    }
    drop(base);

    // A LoRA trained by sam on the same quantized folder.
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let examples: Vec<TokenizedExample> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ids = encode(t)?;
            let loss_mask = (0..ids.len()).map(|k| k >= 2).collect();
            Ok(TokenizedExample { id: format!("t{i}"), domain: "check".into(), input_ids: ids, loss_mask })
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    write_sft(&sft_cache_path(&data, Split::Train), &examples)?;
    let mut spec = JobSpec::new(ModelSource::from(&folder), &data, JobMode::Sft);
    spec.weights = WeightType::Auto;
    spec.train = TrainConfig {
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: Target::ALL.to_vec(),
            layers: Layers::Last(4),
            ..Default::default()
        },
        optim: OptimConfig { lr: 5e-3, warmup_steps: Some(1), ..Default::default() },
        batch: BatchConfig { batch_size: 2, grad_accum: 1, max_seq_len: 64, pad_id: 0 },
        duration: Duration::Iters(8),
        eval_every: 0,
        output: OutputConfig { adapter_format: AdapterFormat::Mlx, ..Default::default() },
        compute: ComputeConfig { recompute_every: 2 },
        seed: 1,
        ..Default::default()
    };
    spec.eval_examples = None;
    let job = Job::create(&tmp.path().join("runs"), "check", spec)?;
    let done = job.run(&mut sam_trainer::NoopObserver, JobControl::default())?;
    let model = done.model.ok_or("the job returned no model")?;
    std::fs::create_dir_all(&out)?;
    for f in ["adapter_config.json", "adapters.safetensors"] {
        std::fs::copy(done.adapter_dir.join(f), out.join(f))?;
    }
    let adapter_logits: Vec<_> = prompts.iter().map(|p| logits(&model, p, Mode::INFER)).collect::<Result<_, _>>()?;
    let losses = done.sft.as_ref().map(|o| o.final_train_loss);
    let json = serde_json::json!({
        "prompts": prompts,
        "base_logits": base_logits,
        "adapter_logits": adapter_logits,
        "generations": generations,
        "final_train_loss": losses,
    });
    std::fs::write(out.join("sam_logits.json"), serde_json::to_string(&json)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
