//! Logit parity against Hugging Face transformers (fixtures made by
//! `scripts/make_logits_fixture.py`): the SmolLM2 test model from its GGUF
//! and a tiny random Qwen2 with biases, both in f32.

mod common;

use candle_core::{DType, Tensor};
use sam_trainer::{LoadOptions, Mode, load_model};

const TOL: f32 = 1e-2;

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap()
}

fn logsumexp(v: &[f32]) -> f64 {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

fn sam_logits(model: &sam_trainer::Decoder, ids: &[u32]) -> Vec<Vec<f32>> {
    let t = Tensor::from_slice(ids, (1, ids.len()), model.device()).unwrap();
    let l = model.logits(&t, Mode::INFER).unwrap();
    l.squeeze(0).unwrap().to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

#[test]
fn smollm2_gguf_logits_match_transformers() {
    let model = load_model(&common::test_model(), &LoadOptions::default()).unwrap();
    let fx = common::json("smollm2_logits.json");
    let stride = fx["stride"].as_u64().unwrap() as usize;
    let mut worst = 0f32;
    for (pi, p) in fx["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = common::ids(&p["input_ids"]);
        let ours = sam_logits(&model, &ids);
        let theirs = p["positions"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (t, (row, refpos)) in ours.iter().zip(theirs).enumerate() {
            assert_eq!(row.len(), fx["vocab_size"].as_u64().unwrap() as usize);
            let am = refpos["argmax"].as_u64().unwrap() as usize;
            assert_eq!(argmax(row), am, "prompt {pi} position {t}: argmax differs");
            let mut diff = 0f32;
            for (id, v) in common::ids(&refpos["top_ids"]).iter().zip(common::floats(&refpos["top_values"])) {
                diff = diff.max((row[*id as usize] - v).abs());
            }
            for (k, v) in common::floats(&refpos["strided"]).iter().enumerate() {
                diff = diff.max((row[k * stride] - v).abs());
            }
            let lse = (logsumexp(row) - refpos["logsumexp"].as_f64().unwrap()).abs() as f32;
            diff = diff.max(lse);
            assert!(diff < TOL, "prompt {pi} position {t}: max abs diff {diff}");
            worst = worst.max(diff);
        }
    }
    eprintln!("smollm2 parity: max abs diff {worst:e}");
}

#[test]
fn tiny_qwen2_logits_match_transformers() {
    let model = load_model(&common::fixture("tiny_qwen2"), &LoadOptions::default()).unwrap();
    assert!(model.config().attention_bias);
    assert!(!model.config().tie_word_embeddings);
    let fx = common::json("tiny_qwen2_logits.json");
    let mut worst = 0f32;
    for p in fx["prompts"].as_array().unwrap() {
        let ids = common::ids(&p["input_ids"]);
        let ours = sam_logits(&model, &ids);
        for (t, (row, refrow)) in ours.iter().zip(p["logits"].as_array().unwrap()).enumerate() {
            let refrow = common::floats(refrow);
            assert_eq!(argmax(row), argmax(&refrow), "position {t}: argmax differs");
            for (a, b) in row.iter().zip(&refrow) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    eprintln!("tiny qwen2 parity: max abs diff {worst:e}");
    assert!(worst < TOL, "max abs diff {worst}");
}

#[test]
fn bf16_base_weights_stay_close_to_f32() {
    let dir = common::fixture("tiny_qwen2");
    let f = load_model(&dir, &LoadOptions::default()).unwrap();
    let opts = LoadOptions { dtype: DType::BF16, ..Default::default() };
    let h = load_model(&dir, &opts).unwrap();
    let ids = [5u32, 17, 200, 3, 99];
    let a = sam_logits(&f, &ids);
    let b = sam_logits(&h, &ids);
    let mut worst = 0f32;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        worst = worst.max((x - y).abs());
    }
    assert!(worst < 0.1, "bf16 drifted by {worst}");
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let model = load_model(&common::fixture("tiny_qwen2"), &LoadOptions::default()).unwrap();
    let ids = [5u32, 17, 200, 3, 99, 42, 7];
    let full = sam_logits(&model, &ids);
    let mut cache = sam_trainer::KvCache::new();
    let first = model.next_logits(&ids[..4], Mode::INFER, &mut cache).unwrap();
    let mut steps = vec![first.to_vec1::<f32>().unwrap()];
    for &id in &ids[4..] {
        steps.push(model.next_logits(&[id], Mode::INFER, &mut cache).unwrap().to_vec1().unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    for (k, row) in steps.iter().enumerate() {
        let refrow = &full[3 + k];
        let d = row.iter().zip(refrow).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "cached step {k} differs by {d}");
    }
}
