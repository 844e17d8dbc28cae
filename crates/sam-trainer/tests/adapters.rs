//! Adapters on disk: PEFT and mlx-lm layouts round-trip to the same logits;
//! merging (fuse) equals applying the adapter; evaluation sees the adapter.

mod common;

use candle_core::Tensor;
use sam_trainer::{
    AdapterFormat, Decoder, Layers, LoadOptions, LoraConfig, Mode, Target, load_adapter, load_model, save_adapter,
    save_hf_model,
};

fn tiny() -> Decoder {
    load_model(&common::fixture("tiny_qwen2"), &LoadOptions::default()).unwrap()
}

fn with_adapter(cfg: &LoraConfig) -> Decoder {
    let mut m = tiny();
    m.attach_lora(cfg, 11).unwrap();
    for (name, var) in m.lora_vars() {
        if name.ends_with("lora_B") {
            var.set(&Tensor::randn(0f32, 0.05, var.dims(), var.device()).unwrap()).unwrap();
        }
    }
    m
}

fn logits(m: &Decoder, mode: Mode<'_>) -> Vec<f32> {
    let ids = Tensor::new(&[[3u32, 77, 12, 190, 5, 5, 61]], m.device()).unwrap();
    m.logits(&ids, mode).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cfg(layers: Layers, rslora: bool) -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 6.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        layers,
        rslora,
        ..Default::default()
    }
}

fn check_round_trip(format: AdapterFormat, c: LoraConfig) {
    let m = with_adapter(&c);
    let want = logits(&m, Mode::INFER);
    assert!(max_diff(&want, &logits(&m, Mode::BASE)) > 1e-3, "adapter has no effect");
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m, dir.path(), format, Some("tiny")).unwrap();
    let mut fresh = tiny();
    let loaded = load_adapter(&mut fresh, dir.path()).unwrap();
    assert_eq!(loaded.rank, c.rank);
    assert_eq!(loaded.layers, c.layers);
    assert_eq!(loaded.targets, c.targets);
    assert!((loaded.scale() - c.scale()).abs() < 1e-9);
    let got = logits(&fresh, Mode::INFER);
    assert!(max_diff(&want, &got) < 1e-5, "{format:?}: {}", max_diff(&want, &got));
}

#[test]
fn peft_round_trip() {
    check_round_trip(AdapterFormat::Peft, cfg(Layers::All, false));
    check_round_trip(AdapterFormat::Peft, cfg(Layers::Last(1), true));
}

#[test]
fn mlx_round_trip() {
    check_round_trip(AdapterFormat::Mlx, cfg(Layers::All, false));
    check_round_trip(AdapterFormat::Mlx, cfg(Layers::Last(1), false));
}

#[test]
fn peft_keys_and_shapes_follow_peft() {
    let m = with_adapter(&cfg(Layers::All, false));
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m, dir.path(), AdapterFormat::Peft, None).unwrap();
    let t = candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let a = &t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &t["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims(), &[3, 64]);
    assert_eq!(b.dims(), &[64, 3]);
    assert_eq!(t.len(), 2 * 3 * 2);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(c["peft_type"], "LORA");
    assert_eq!(c["r"], 3);
    assert_eq!(c["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
}

#[test]
fn mlx_tensors_are_transposed() {
    let m = with_adapter(&cfg(Layers::All, false));
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&m, dir.path(), AdapterFormat::Mlx, None).unwrap();
    let t = candle_core::safetensors::load(dir.path().join("adapters.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["model.layers.0.self_attn.q_proj.lora_a"].dims(), &[64, 3]);
    assert_eq!(t["model.layers.0.mlp.down_proj.lora_b"].dims(), &[3, 64]);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(c["lora_parameters"]["rank"], 3);
    assert_eq!(c["lora_parameters"]["scale"], 2.0);
}

#[test]
fn fused_model_equals_base_plus_adapter() {
    let mut m = with_adapter(&cfg(Layers::All, false));
    let want = logits(&m, Mode::INFER);
    m.merge_lora().unwrap();
    assert!(m.lora_vars().is_empty());
    assert!(max_diff(&want, &logits(&m, Mode::INFER)) < 1e-4);
    let dir = tempfile::tempdir().unwrap();
    save_hf_model(&m, dir.path()).unwrap();
    let reloaded = load_model(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.config(), m.config());
    assert!(max_diff(&want, &logits(&reloaded, Mode::INFER)) < 1e-4);
}

#[test]
fn evaluation_reports_base_and_adapter() {
    let m = with_adapter(&cfg(Layers::All, false));
    let ex = sam_dataset::TokenizedExample {
        id: "a".into(),
        domain: "d".into(),
        input_ids: vec![1, 2, 3, 4, 5, 6],
        loss_mask: vec![false, false, true, true, true, true],
    };
    let cfg = sam_trainer::EvalConfig { max_seq_len: 512, batch_size: 2, ..Default::default() };
    let r = sam_trainer::evaluate(&m, &[ex.clone(), ex.clone()], &cfg).unwrap();
    assert_eq!(r.examples, 2);
    assert_eq!(r.tokens, 8);
    let (a, base) = (r.adapter.unwrap(), r.base.unwrap());
    assert!((base.perplexity - base.loss.exp()).abs() < 1e-9);
    assert!((a.loss - base.loss).abs() > 1e-4);
    // One variant at a time, with each example's summed NLL: the same
    // figures, and the per-example sums add up to the mean.
    let one = |variants| {
        let cfg = sam_trainer::EvalConfig { variants, per_example: true, ..cfg.clone() };
        sam_trainer::evaluate(&m, &[ex.clone(), ex.clone()], &cfg).unwrap()
    };
    let only_a = one(sam_trainer::Variants::Adapter);
    assert!(only_a.base.is_none());
    assert!((only_a.adapter.unwrap().loss - a.loss).abs() < 1e-5);
    let sums: Vec<f64> = only_a.per_example.iter().map(|e| e.adapter_nll.unwrap()).collect();
    assert_eq!(only_a.per_example.iter().map(|e| e.tokens).sum::<usize>(), 8);
    assert!((sums.iter().sum::<f64>() / 8.0 - a.loss).abs() < 1e-5, "{sums:?}");
    let only_b = one(sam_trainer::Variants::Base);
    assert!(only_b.adapter.is_none() && only_b.per_example[1].adapter_nll.is_none());
    assert!((only_b.base.unwrap().loss - base.loss).abs() < 1e-5);
}

/// A Hugging Face folder whose weights are split over several
/// `model-0000k-of-0000n.safetensors` shards (with the index file
/// transformers writes), or stored in bf16/f16, loads to the same model.
#[test]
fn sharded_and_half_precision_folders_load_the_same_model() {
    use candle_core::DType;
    use std::collections::HashMap;
    let m = tiny();
    let want = logits(&m, Mode::BASE);
    let src = tempfile::tempdir().unwrap();
    save_hf_model(&m, src.path()).unwrap();
    let all = candle_core::safetensors::load(src.path().join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let config = std::fs::read(src.path().join("config.json")).unwrap();

    let sharded = tempfile::tempdir().unwrap();
    std::fs::write(sharded.path().join("config.json"), &config).unwrap();
    let mut index = serde_json::Map::new();
    let shards = 3;
    for k in 0..shards {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
        let part: HashMap<String, Tensor> =
            names.iter().skip(k).step_by(shards).map(|n| ((*n).clone(), all[*n].clone())).collect();
        for n in part.keys() {
            index.insert(n.clone(), file.clone().into());
        }
        candle_core::safetensors::save(&part, sharded.path().join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": index});
    std::fs::write(sharded.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let got = load_model(sharded.path(), &LoadOptions::default()).unwrap();
    assert_eq!(max_diff(&want, &logits(&got, Mode::BASE)), 0.0, "sharded folder");

    for (dt, tol) in [(DType::BF16, 0.1), (DType::F16, 0.02)] {
        let half = tempfile::tempdir().unwrap();
        std::fs::write(half.path().join("config.json"), &config).unwrap();
        let conv: HashMap<String, Tensor> = all.iter().map(|(k, t)| (k.clone(), t.to_dtype(dt).unwrap())).collect();
        candle_core::safetensors::save(&conv, half.path().join("model.safetensors")).unwrap();
        // Stored in half precision, widened to f32 on load (or kept in bf16 on request).
        for opts in [LoadOptions::default(), LoadOptions { dtype: DType::BF16, ..Default::default() }] {
            let got = load_model(half.path(), &opts).unwrap();
            let d = max_diff(&want, &logits(&got, Mode::BASE));
            assert!(d < tol, "{dt:?} file, {:?} weights: max |Δ| {d}", opts.dtype);
        }
    }
}
