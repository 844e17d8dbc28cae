//! The quantized paths equal dequantize-then-f32: for every supported
//! format, a model whose matrices (embeddings included) are kept quantized
//! gives the loss and every LoRA gradient of the same model with those
//! matrices dequantized to f32 — through the fused path, the plain path,
//! and KV-cached generation.

use crate::config::{Arch, ModelConfig};
use crate::frozen::Frozen;
use crate::load::{LoadOptions, random_model};
use crate::lora::{LoraConfig, Target};
use crate::loss::{Batch, Sequence, nll_sum};
use crate::model::{Decoder, KvCache, Mode};
use crate::quant::QMatrix;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};

/// Columns are multiples of 256 so that every format's blocks fit.
fn shape() -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen2,
        vocab_size: 72,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        attention_bias: true,
        tie_word_embeddings: true,
        max_position_embeddings: 256,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

#[derive(Debug, Clone, Copy)]
enum Fmt {
    Ggml(GgmlDType),
    Mlx(usize),
}

fn quantize(w: &Frozen, f: Fmt) -> Frozen {
    let t = w.to_f32().unwrap();
    let (rows, cols) = t.dims2().unwrap();
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    Frozen::from(match f {
        Fmt::Ggml(d) => QMatrix::quantize_ggml(&v, rows, cols, d).unwrap(),
        Fmt::Mlx(bits) => QMatrix::quantize_mlx(&v, rows, cols, bits, 64).unwrap(),
    })
}

/// The random model with every matrix quantized in `f`, and adapters on
/// every projection with non-zero B.
fn quantized(f: Fmt) -> Decoder {
    let mut m = random_model(shape(), &LoadOptions::default(), 5).unwrap();
    m.embed = quantize(&m.embed, f);
    for l in &mut m.layers {
        for t in Target::ALL {
            let q = quantize(l.linear(t).weight(), f);
            l.linear_mut(t).set_weight(q);
        }
    }
    attach(&mut m);
    m
}

fn attach(m: &mut Decoder) {
    m.attach_lora(&LoraConfig { rank: 4, targets: Target::ALL.to_vec(), ..Default::default() }, 9).unwrap();
    for (k, (name, var)) in m.lora_vars().into_iter().enumerate() {
        if name.ends_with("lora_B") {
            let n: usize = var.dims().iter().product();
            let v: Vec<f32> = (0..n).map(|i| 0.05 * ((i * 7919 + k * 104_729) as f32 * 0.618).sin()).collect();
            var.set(&Tensor::from_vec(v, var.dims(), var.device()).unwrap()).unwrap();
        }
    }
}

/// The same model dequantized, with the same adapter values.
fn dense_twin(q: &Decoder) -> Decoder {
    let mut d =
        Decoder::from_parts(q.config().clone(), q.embed.clone(), q.layers.clone(), q.norm.clone(), q.lm_head.clone())
            .dequantized(DType::F32)
            .unwrap();
    d.detach_lora();
    attach(&mut d);
    d
}

fn loss_and_grads(m: &Decoder, b: &Batch) -> (f32, Vec<Vec<f32>>) {
    let loss = nll_sum(m, b, Mode::INFER).unwrap().unwrap();
    let g = m.lora_gradients(&loss).unwrap();
    let g = g.into_iter().map(|g| g.unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
    (loss.to_scalar().unwrap(), g)
}

fn close(what: &str, got: &(f32, Vec<Vec<f32>>), want: &(f32, Vec<Vec<f32>>)) {
    assert!((got.0 - want.0).abs() <= 1e-5 * want.0.abs(), "{what}: loss {} vs {}", got.0, want.0);
    assert_eq!(got.1.len(), want.1.len());
    for (i, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
        let scale = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(scale > 0.0 && worst <= 1e-4 * scale, "{what} var {i}: {worst} of {scale}");
    }
}

#[test]
fn every_format_trains_and_generates_like_its_dequantized_twin() {
    let formats = [
        Fmt::Ggml(GgmlDType::Q4_0),
        Fmt::Ggml(GgmlDType::Q4_1),
        Fmt::Ggml(GgmlDType::Q5_0),
        Fmt::Ggml(GgmlDType::Q5_1),
        Fmt::Ggml(GgmlDType::Q8_0),
        Fmt::Ggml(GgmlDType::Q2K),
        Fmt::Ggml(GgmlDType::Q3K),
        Fmt::Ggml(GgmlDType::Q4K),
        Fmt::Ggml(GgmlDType::Q5K),
        Fmt::Ggml(GgmlDType::Q6K),
        Fmt::Mlx(2),
        Fmt::Mlx(3),
        Fmt::Mlx(4),
        Fmt::Mlx(5),
        Fmt::Mlx(6),
        Fmt::Mlx(8),
    ];
    let ids: Vec<u32> = (0..90).map(|i| (i * 37 + 5) % 72).collect();
    let mask: Vec<bool> = (0..90).map(|i| i % 3 != 0).collect();
    let seqs = [Sequence { ids: &ids, mask: &mask }, Sequence { ids: &ids[..50], mask: &mask[..50] }];
    for f in formats {
        let mut q = quantized(f);
        let mut d = dense_twin(&q);
        assert!(q.weight_bytes() * 2 < d.weight_bytes(), "{f:?}: kept quantized");
        let b = Batch::new(&seqs, 0, q.device()).unwrap();
        for recompute in [0, 1] {
            q.set_recompute_every(recompute);
            d.set_recompute_every(recompute);
            close(&format!("{f:?} fused, recompute {recompute}"), &loss_and_grads(&q, &b), &loss_and_grads(&d, &b));
        }
        q.set_fused(false);
        d.set_fused(false);
        close(&format!("{f:?} plain"), &loss_and_grads(&q, &b), &loss_and_grads(&d, &b));
        // Generation: KV-cached next-token logits.
        let (mut cq, mut cd) = (KvCache::new(), KvCache::new());
        for step in [&ids[..6], &ids[6..7], &ids[7..8]] {
            let a: Vec<f32> = q.next_logits(step, Mode::INFER, &mut cq).unwrap().to_vec1().unwrap();
            let e: Vec<f32> = d.next_logits(step, Mode::INFER, &mut cd).unwrap().to_vec1().unwrap();
            let worst = a.iter().zip(&e).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst < 1e-4, "{f:?}: cached logits differ by {worst}");
        }
    }
}

/// An mlx folder as `mlx_lm.convert -q` writes it — `uint32` weights with
/// f16 `scales` and `biases`, `quantization` in `config.json` with a
/// per-module override (8 bits for one projection) and a module left dense
/// (`lm_head: false`) — loads to exactly its quantized matrices; with
/// `keep_quantized` off, to the same values in f32.
#[test]
fn an_mlx_folder_loads_as_stored() {
    use crate::quant::Half;
    let src = super::fixture("tiny_qwen2");
    let dense = crate::load::load_model(&src, &LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let eight = "model.layers.1.mlp.down_proj";
    cfg["quantization"] =
        serde_json::json!({"group_size": 32, "bits": 4, eight: {"group_size": 32, "bits": 8}, "lm_head": false});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let mut files: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = Vec::new();
    let half_bytes = |h: &Half| -> Vec<u8> {
        match h {
            Half::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            _ => unreachable!("the test quantizer keeps f16"),
        }
    };
    let mut expect: Vec<(String, Frozen)> = Vec::new();
    for (name, t) in dense.named_weights().unwrap() {
        let module = name.strip_suffix(".weight").unwrap_or(&name).to_string();
        let quantize = t.rank() == 2 && module != "lm_head";
        if !quantize {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            files.push((
                name.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::F32,
                t.dims().to_vec(),
            ));
            continue;
        }
        let bits = if module == eight { 8 } else { 4 };
        let (rows, cols) = t.dims2().unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let q = QMatrix::quantize_mlx(&v, rows, cols, bits, 32).unwrap();
        let (packed, s, b) = q.mlx_parts().unwrap();
        files.push((name.clone(), packed.to_vec(), safetensors::Dtype::U32, vec![rows, cols * bits / 32]));
        files.push((format!("{module}.scales"), half_bytes(s), safetensors::Dtype::F16, vec![rows, cols / 32]));
        files.push((format!("{module}.biases"), half_bytes(b), safetensors::Dtype::F16, vec![rows, cols / 32]));
        expect.push((name, Frozen::from(q)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = files
        .iter()
        .map(|(n, bytes, dt, shape)| {
            (n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();

    let kept = crate::load::load_model(dir.path(), &LoadOptions::default()).unwrap();
    assert!(matches!(kept.embed, Frozen::Quant(_)), "embeddings kept quantized");
    assert!(matches!(kept.lm_head, Some(Frozen::Dense(_))), "lm_head: false stays dense");
    let by_name: std::collections::HashMap<String, Tensor> = kept.named_weights().unwrap().into_iter().collect();
    for (name, q) in &expect {
        let want: Vec<f32> = q.to_f32().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<f32> = by_name[name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, want, "{name}");
    }
    let widened =
        crate::load::load_model(dir.path(), &LoadOptions { keep_quantized: false, ..Default::default() }).unwrap();
    assert!(matches!(widened.embed, Frozen::Dense(_)));
    let ids = Tensor::new(&[[3u32, 77, 12, 190, 5]], kept.device()).unwrap();
    let a: Vec<f32> = kept.logits(&ids, Mode::BASE).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = widened.logits(&ids, Mode::BASE).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let worst = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst < 1e-5, "kept vs widened logits: {worst}");
    // 4 bits lose little on this model: the logits stay near the f32 ones.
    let c: Vec<f32> = dense.logits(&ids, Mode::BASE).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let drift = a.iter().zip(&c).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(drift > 0.0 && drift < 0.5, "4-bit drift {drift}");
}
