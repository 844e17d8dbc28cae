//! The silent-gradient trap: every LoRA variable must receive a non-zero
//! gradient, and the analytic gradient must match finite differences (so a
//! custom op's backward is right, not merely present).

use super as common;
use crate::load::LoadOptions;
use crate::lora::{Layers, LoraConfig, Target};
use crate::loss::{Batch, Sequence};
use crate::model::{Decoder, Mode};
use candle_core::{Tensor, Var};

fn tiny() -> Decoder {
    load_model_at(&common::fixture("tiny_qwen2"))
}

fn load_model_at(p: &std::path::Path) -> Decoder {
    crate::load::load_model(p, &LoadOptions::default()).unwrap()
}

fn batch(model: &Decoder, seqs: &[(Vec<u32>, Vec<bool>)]) -> Batch {
    let s: Vec<Sequence<'_>> = seqs.iter().map(|(i, m)| Sequence { ids: i, mask: m }).collect();
    Batch::new(&s, 0, model.device()).unwrap()
}

fn loss(model: &Decoder, b: &Batch) -> Tensor {
    let nll = crate::loss::nll_sum(model, b, Mode::INFER).unwrap().unwrap();
    (nll / b.n_targets as f64).unwrap()
}

fn check_all_vars_get_gradients(model: &Decoder, b: &Batch) {
    let vars = model.lora_vars();
    assert!(!vars.is_empty());
    let grads = model.lora_gradients(&loss(model, b)).unwrap();
    for ((name, _), g) in vars.iter().zip(&grads) {
        let g = g.as_ref().unwrap_or_else(|| panic!("{name}: no gradient at all"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
    }
}

#[test]
fn every_lora_variable_gets_a_gradient_tiny_qwen2() {
    for checkpoint in [0, 1, 2] {
        every_lora_variable_gets_a_gradient_tiny(checkpoint);
    }
}

fn every_lora_variable_gets_a_gradient_tiny(checkpoint: usize) {
    let mut model = tiny();
    model.set_recompute_every(checkpoint);
    let cfg = LoraConfig { rank: 4, targets: Target::ALL.to_vec(), ..Default::default() };
    model.attach_lora(&cfg, 3).unwrap();
    common::randomise_b(&model);
    assert_eq!(model.lora_vars().len(), 2 * 2 * 7);
    // Two sequences of different length: padding and masking both in play.
    let b = batch(
        &model,
        &[
            (vec![1, 5, 9, 200, 31, 7, 7, 2], vec![false, false, false, true, true, true, true, true]),
            (vec![1, 44, 45, 46], vec![false, false, true, true]),
        ],
    );
    check_all_vars_get_gradients(&model, &b);
}

#[test]
fn every_lora_variable_gets_a_gradient_smollm2_last_layers() {
    let mut model = load_model_at(&common::test_model());
    model.set_recompute_every(1);
    let cfg = LoraConfig { rank: 2, targets: Target::ALL.to_vec(), layers: Layers::Last(2), ..Default::default() };
    model.attach_lora(&cfg, 1).unwrap();
    common::randomise_b(&model);
    assert_eq!(model.lora_vars().len(), 2 * 2 * 7);
    let ids: Vec<u32> = (0..24).map(|i| 100 + 37 * i).collect();
    let mask: Vec<bool> = (0..24).map(|i| i >= 8).collect();
    let b = batch(&model, &[(ids, mask)]);
    check_all_vars_get_gradients(&model, &b);
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

fn nudge(var: &Var, idx: usize, delta: f32) {
    let dims = var.dims().to_vec();
    let mut v: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    v[idx] += delta;
    var.set(&Tensor::from_vec(v, dims, var.device()).unwrap()).unwrap();
}

#[test]
fn lora_gradients_match_finite_differences() {
    for checkpoint in [0, 1, 2] {
        finite_differences(checkpoint);
    }
}

fn finite_differences(checkpoint: usize) {
    let mut model = tiny();
    model.set_recompute_every(checkpoint);
    let cfg = LoraConfig { rank: 4, targets: Target::ALL.to_vec(), ..Default::default() };
    model.attach_lora(&cfg, 5).unwrap();
    common::randomise_b(&model);
    let b = batch(
        &model,
        &[
            (vec![1, 5, 9, 200, 31, 7], vec![false, true, true, true, true, true]),
            (vec![3, 4, 250], vec![false, true, true]),
        ],
    );
    let grads = model.lora_gradients(&loss(&model, &b)).unwrap();
    let eps = 1e-2f32;
    let mut checked = 0;
    for ((name, var), g) in model.lora_vars().into_iter().zip(grads) {
        let g: Vec<f32> = g.unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // The largest-gradient entry of each variable: well above f32 noise.
        let (idx, &ga) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        nudge(&var, idx, eps);
        let up = scalar(&loss(&model, &b));
        nudge(&var, idx, -2.0 * eps);
        let down = scalar(&loss(&model, &b));
        nudge(&var, idx, eps);
        let fd = (up - down) / (2.0 * eps as f64);
        // Relative error, with an absolute floor for f32 noise on tiny gradients.
        let err = (fd - ga as f64).abs() / (ga.abs() as f64).max(5e-3);
        assert!(err < 0.05, "checkpoint {checkpoint}: {name}[{idx}]: analytic {ga} vs finite difference {fd}");
        checked += 1;
    }
    assert_eq!(checked, 28);
}
