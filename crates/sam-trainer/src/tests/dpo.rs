//! DPO on the tiny Qwen2 fixture: per-sequence log-probs agree with the SFT
//! loss, every LoRA variable gets a gradient from the DPO loss, the
//! reference policies behave as documented, and a short run raises the
//! training pairs' margin.

use super as common;
use crate::dpo::{self, DpoConfig, DpoLoss, PairSeqs, Reference, train_dpo};
use crate::load::LoadOptions;
use crate::lora::{LoraConfig, Target};
use crate::loss::{Batch, Sequence};
use crate::model::{Decoder, Mode};
use crate::observe::{Observer, PreferenceMetrics};
use crate::settings::{BatchConfig, ComputeConfig, Duration, OptimConfig, TrainConfig};
use candle_core::Tensor;
use sam_dataset::TokenizedPair;

fn tiny() -> Decoder {
    crate::load::load_model(&common::fixture("tiny_qwen2"), &LoadOptions::default()).unwrap()
}

fn pair(id: usize, prompt: Vec<u32>, chosen: Vec<u32>, rejected: Vec<u32>) -> TokenizedPair {
    TokenizedPair {
        id: format!("p{id}"),
        domain: "test".into(),
        prompt_ids: prompt,
        chosen_ids: chosen,
        rejected_ids: rejected,
    }
}

/// Pairs of unequal lengths (padding in play); chosen answers end in 77, rejected ones in 99.
fn pairs() -> Vec<TokenizedPair> {
    (0..6u32)
        .map(|i| {
            let prompt: Vec<u32> = (0..(3 + i % 3)).map(|k| 10 + 13 * i + k).collect();
            pair(i as usize, prompt, vec![40 + i, 77, 2], vec![99, 50 + i, 60 + i, 99, 2])
        })
        .collect()
}

fn attach(model: &mut Decoder) {
    let cfg = LoraConfig { rank: 4, targets: Target::ALL.to_vec(), ..Default::default() };
    model.attach_lora(&cfg, 3).unwrap();
}

#[test]
fn sequence_logps_are_the_negated_per_sequence_nll() {
    let mut model = tiny();
    attach(&mut model);
    common::randomise_b(&model);
    let seqs: Vec<PairSeqs> = pairs().iter().map(|p| PairSeqs::new(p, 64).unwrap()).collect();
    let all: Vec<Sequence<'_>> = seqs.iter().flat_map(|p| [p.chosen(), p.rejected()]).collect();
    let batched: Vec<f32> = dpo::sequence_logps(&model, &all, 0, Mode::INFER).unwrap().to_vec1().unwrap();
    for (s, got) in all.iter().zip(&batched) {
        let b = Batch::new(&[*s], 0, model.device()).unwrap();
        let nll = crate::loss::nll_sum(&model, &b, Mode::INFER).unwrap().unwrap().to_scalar::<f32>().unwrap();
        assert!((got + nll).abs() < 1e-3 * nll.abs().max(1.0), "batched {got} vs alone {}", -nll);
        assert!(*got < 0.0);
    }
}

#[test]
fn every_lora_variable_gets_a_gradient_from_the_dpo_loss() {
    for checkpoint in [0, 1] {
        let mut model = tiny();
        model.set_recompute_every(checkpoint);
        attach(&mut model);
        common::randomise_b(&model);
        let seqs: Vec<PairSeqs> = pairs().iter().map(|p| PairSeqs::new(p, 64).unwrap()).collect();
        let refs = dpo::reference_logps(&model, &seqs, 2, 0, Reference::Base).unwrap();
        let sel: Vec<&PairSeqs> = seqs.iter().take(3).collect();
        let (pc, pr) = dpo::pair_logps(&model, &sel, 0, Mode::INFER).unwrap();
        let d = model.device();
        let lp = dpo::PairLogps {
            policy_chosen: pc,
            policy_rejected: pr,
            ref_chosen: Tensor::new(refs[..3].iter().map(|r| r.0).collect::<Vec<_>>(), d).unwrap(),
            ref_rejected: Tensor::new(refs[..3].iter().map(|r| r.1).collect::<Vec<_>>(), d).unwrap(),
        };
        for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo] {
            let out = dpo::dpo_loss(&lp, &DpoConfig { loss, ..Default::default() }).unwrap();
            let l = out.losses.sum_all().unwrap();
            let grads = model.lora_gradients(&l).unwrap();
            for ((name, _), g) in model.lora_vars().iter().zip(&grads) {
                let g = g.as_ref().unwrap_or_else(|| panic!("{name}: no gradient (checkpoint {checkpoint})"));
                let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm {n} (checkpoint {checkpoint}, {loss:?})");
            }
        }
    }
}

#[test]
fn the_initial_reference_gives_zero_rewards_and_the_base_does_not() {
    let mut model = tiny();
    attach(&mut model);
    common::randomise_b(&model);
    let seqs: Vec<PairSeqs> = pairs().iter().map(|p| PairSeqs::new(p, 64).unwrap()).collect();
    let cfg = DpoConfig::default();
    let initial = dpo::reference_logps(&model, &seqs, 4, 0, Reference::Initial).unwrap();
    let s = dpo::evaluate_pairs(&model, &seqs, &initial, 4, 0, &cfg).unwrap();
    assert!(s.margin.abs() < 1e-5 && s.reward_chosen.abs() < 1e-5, "{s:?}");
    assert!((s.loss - std::f64::consts::LN_2).abs() < 1e-5, "{s:?}");
    let base = dpo::reference_logps(&model, &seqs, 4, 0, Reference::Base).unwrap();
    let s = dpo::evaluate_pairs(&model, &seqs, &base, 4, 0, &cfg).unwrap();
    assert!(s.reward_chosen.abs() > 1e-4, "the adapter changes the policy: {s:?}");
}

#[derive(Default)]
struct Log {
    train: Vec<f64>,
    valid: Vec<(usize, f64, f64)>,
}

impl Observer for Log {
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        match m.split {
            "train" => self.train.push(m.stats.loss),
            _ => self.valid.push((m.step, m.stats.margin, m.stats.accuracy)),
        }
    }
}

#[test]
fn a_short_run_raises_the_margin() {
    let mut model = tiny();
    attach(&mut model);
    let data = pairs();
    let cfg = TrainConfig {
        optim: OptimConfig { lr: 1e-2, warmup_steps: Some(1), ..Default::default() },
        batch: BatchConfig { batch_size: 3, grad_accum: 1, ..Default::default() },
        duration: Duration::Iters(10),
        eval_every: 5,
        compute: ComputeConfig { recompute_every: 0 },
        ..Default::default()
    };
    let dpo_cfg = DpoConfig { beta: 0.5, ..Default::default() };
    let mut log = Log::default();
    // Validate on the training pairs: this checks the loop optimises, not generalisation.
    let out = train_dpo(&mut model, &cfg, &dpo_cfg, &data, &data, &mut log).unwrap();
    assert_eq!(out.steps, 10);
    assert_eq!(log.train.len(), 10);
    assert_eq!(log.valid.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 5, 10]);
    let (first, last) = (log.valid[0], *log.valid.last().unwrap());
    assert!(first.1.abs() < 1e-6, "a fresh adapter starts at the reference: {first:?}");
    assert!(last.1 > first.1 + 0.1, "margin {:.4} → {:.4}", first.1, last.1);
    assert!((last.2 - 1.0).abs() < 1e-9, "accuracy {}", last.2);
    assert!(out.best_val_loss.unwrap() < out.initial_val_loss.unwrap());
}
