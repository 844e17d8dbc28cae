//! The learning test: a short LoRA run on the real test model teaches an
//! invented fact with a fixed answer format (fixture from
//! `scripts/make_learning_fixture.py`). Validation loss must fall by at least
//! half, and greedy generation with the adapter must give the taught answer
//! to a question phrased unlike any training one, while the base does not.

mod common;

use sam_trainer::{
    Duration, EvalMetrics, GenerateConfig, LoadOptions, LoraConfig, Mode, Observer, StepMetrics, Target, TrainConfig,
    generate, load_model, train_sft,
};

#[derive(Default)]
struct Log {
    losses: Vec<f64>,
    evals: Vec<f64>,
}

impl Observer for Log {
    fn on_step(&mut self, m: &StepMetrics) {
        eprintln!(
            "step {:>3}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s",
            m.step, m.total_steps, m.loss, m.lr, m.grad_norm, m.tokens_per_s
        );
        self.losses.push(m.loss);
    }
    fn on_eval(&mut self, m: &EvalMetrics) {
        eprintln!("eval after step {}: loss {:.4}", m.step, m.loss);
        self.evals.push(m.loss);
    }
}

#[test]
fn lora_sft_teaches_an_invented_fact() {
    let fx = common::json("learning.json");
    let train = common::examples(&fx["train"]);
    let valid = common::examples(&fx["valid"]);
    let prompt = common::ids(&fx["probe"]["prompt_ids"]);
    let answer = common::ids(&fx["probe"]["answer_ids"]);
    let eos = common::ids(&fx["eos_ids"]);

    let mut model = load_model(&common::test_model(), &LoadOptions::default()).unwrap();
    let gen_cfg = GenerateConfig { max_new_tokens: answer.len() + 2, stop_tokens: eos.clone(), ..Default::default() };
    let expected = &answer[..answer.len() - 1]; // without <|im_end|>
    let base_out = generate(&model, &prompt, &gen_cfg, Mode::BASE, |_| true).unwrap();
    assert_ne!(base_out.as_slice(), expected, "the base model already knows the answer");

    let cfg = TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec(), ..Default::default() },
        lr: 1e-3,
        batch_size: 4,
        grad_accum: 1,
        duration: Duration::Iters(12),
        warmup_steps: Some(2),
        eval_every: 6,
        // The model is small: keep activations rather than recompute them.
        checkpoint_every: 0,
        seed: 7,
        pad_id: eos[1],
        ..Default::default()
    };
    model.attach_lora(&cfg.lora, cfg.seed).unwrap();
    let mut log = Log::default();
    let started = std::time::Instant::now();
    let out = train_sft(&mut model, &cfg, &train, &valid, &mut log).unwrap();
    eprintln!("trained in {:.1}s: {out:?}", started.elapsed().as_secs_f64());

    let initial = out.initial_val_loss.unwrap();
    let best = out.best_val_loss.unwrap();
    assert!(best <= initial / 2.0, "validation loss fell from {initial:.4} only to {best:.4}");
    let tuned = generate(&model, &prompt, &gen_cfg, Mode::INFER, |_| true).unwrap();
    assert_eq!(tuned.as_slice(), expected, "the adapter did not give the taught answer");
    // The adapter switched off is the base again.
    let off = generate(&model, &prompt, &gen_cfg, Mode::BASE, |_| true).unwrap();
    assert_eq!(off, base_out);
}
