//! The learning tests, each a short training job on the real test model
//! through the public way in ([`Job`]):
//! - SFT teaches an invented fact with a fixed answer format (fixture from
//!   `scripts/make_learning_fixture.py`): validation loss must fall by at
//!   least half, and greedy generation with the adapter must give the taught
//!   answer to a question phrased unlike any training one, while the base
//!   does not;
//! - DPO teaches a consistent style preference — answers that lead with
//!   "In short:" are chosen over the same answers without it: on held-out
//!   questions (of other kinds than most training ones) the reward accuracy
//!   must exceed 0.8, the mean margin must grow, and greedy generation with
//!   the adapter must lead with the preferred phrase more often than the
//!   base model does.

mod common;

use sam_dataset::{Split, TokenizedPair, preference_cache_path, sft_cache_path, write_preference, write_sft};
use sam_trainer::{
    BatchConfig, ComputeConfig, Decoder, DpoConfig, Duration, EvalMetrics, GenerateConfig, Job, JobControl, JobMode,
    JobSpec, LoadOptions, LoraConfig, ModelSource, Observer, OptimConfig, PreferenceMetrics, Reference, StepMetrics,
    Target, TrainConfig, generate, load_model,
};

/// A job on the test model over the prepared folder `data`, without
/// periodic checkpoints or a final evaluation.
fn job(dir: &std::path::Path, data: &std::path::Path, mode: JobMode, train: TrainConfig, dpo: DpoConfig) -> Job {
    let mut spec = JobSpec::new(ModelSource::from(common::test_model()), data, mode);
    spec.train = train;
    spec.dpo = dpo;
    spec.eval_examples = None;
    Job::create(dir, "run", spec).unwrap()
}

#[derive(Default)]
struct SftLog {
    losses: Vec<f64>,
    evals: Vec<f64>,
}

impl Observer for SftLog {
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

    let gen_cfg = GenerateConfig { max_new_tokens: answer.len() + 2, stop_tokens: eos.clone(), ..Default::default() };
    let base_cfg = GenerateConfig { adapter: false, ..gen_cfg.clone() };
    let expected = &answer[..answer.len() - 1]; // without <|im_end|>
    let base_out = {
        let base = load_model(&common::test_model(), &LoadOptions::default()).unwrap();
        generate(&base, &prompt, &gen_cfg, |_| true).unwrap()
    };
    assert_ne!(base_out.as_slice(), expected, "the base model already knows the answer");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_sft(&sft_cache_path(&data, Split::Train), &train).unwrap();
    write_sft(&sft_cache_path(&data, Split::Valid), &valid).unwrap();
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec(), ..Default::default() },
        optim: OptimConfig { lr: 1e-3, warmup_steps: Some(2), ..Default::default() },
        batch: BatchConfig { batch_size: 4, grad_accum: 1, pad_id: eos[1], ..Default::default() },
        duration: Duration::Iters(12),
        eval_every: 6,
        // The model is small: keep activations rather than recompute them.
        compute: ComputeConfig { recompute_every: 0 },
        seed: 7,
        ..Default::default()
    };
    let job = job(&tmp.path().join("runs"), &data, JobMode::Sft, cfg, DpoConfig::default());
    let mut log = SftLog::default();
    let started = std::time::Instant::now();
    let done = job.run(&mut log, JobControl::default()).unwrap();
    let out = done.sft.clone().unwrap();
    eprintln!("trained in {:.1}s: {out:?}", started.elapsed().as_secs_f64());

    let initial = out.initial_val_loss.unwrap();
    let best = out.best_val_loss.unwrap();
    assert!(best <= initial / 2.0, "validation loss fell from {initial:.4} only to {best:.4}");
    let model = done.model.unwrap();
    let tuned = generate(&model, &prompt, &gen_cfg, |_| true).unwrap();
    assert_eq!(tuned.as_slice(), expected, "the adapter did not give the taught answer");
    // The adapter switched off is the base again.
    let off = generate(&model, &prompt, &base_cfg, |_| true).unwrap();
    assert_eq!(off, base_out);
}

const MARKER: &str = "In short:";

const TRAIN: &[(&str, &str)] = &[
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Japan?", "Tokyo."),
    ("How many legs does a spider have?", "Eight."),
    ("What color is grass?", "Green."),
    ("What is 2 plus 3?", "5."),
    ("Which planet is closest to the Sun?", "Mercury."),
    ("What do bees make?", "Honey."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("What is frozen water called?", "Ice."),
    ("How many days are in a week?", "Seven."),
    ("What gas do plants take in?", "Carbon dioxide."),
    ("What is the capital of Italy?", "Rome."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("What is the opposite of hot?", "Cold."),
    ("In which continent is Kenya?", "Africa."),
];

const HELD_OUT: &[(&str, &str)] = &[
    ("What is the capital of Spain?", "Madrid."),
    ("How many wheels does a bicycle have?", "Two."),
    ("What do cows drink?", "Water."),
    ("What is 10 minus 4?", "6."),
    ("Which metal is liquid at room temperature?", "Mercury."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("How many hours are in a day?", "24."),
    ("What is the tallest animal?", "The giraffe."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("What is the boiling point of water in Celsius?", "100 degrees."),
];

struct Tok(sam_models::BaseModel);

impl Tok {
    fn ids(&self, text: &str) -> Vec<u32> {
        let t = self.0.tokenizer().expect("the GGUF has a tokenizer");
        t.encode(text, false).unwrap().get_ids().to_vec()
    }

    fn prompt(&self, q: &str) -> Vec<u32> {
        self.ids(&format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"))
    }

    fn pairs(&self, qa: &[(&str, &str)]) -> Vec<TokenizedPair> {
        qa.iter()
            .enumerate()
            .map(|(i, (q, a))| TokenizedPair {
                id: format!("q{i}"),
                domain: "style".into(),
                prompt_ids: self.prompt(q),
                chosen_ids: self.ids(&format!("{MARKER} {a}<|im_end|>")),
                rejected_ids: self.ids(&format!("{a}<|im_end|>")),
            })
            .collect()
    }
}

#[derive(Default)]
struct DpoLog {
    valid: Vec<PreferenceMetrics>,
}

impl Observer for DpoLog {
    fn on_step(&mut self, m: &StepMetrics) {
        eprintln!("step {:>2}/{} loss {:.4} lr {:.2e} |g| {:.3}", m.step, m.total_steps, m.loss, m.lr, m.grad_norm);
    }
    fn on_preference(&mut self, m: &PreferenceMetrics) {
        let s = &m.stats;
        eprintln!(
            "  {} after step {}: loss {:.4} chosen {:+.3} rejected {:+.3} margin {:+.3} acc {:.2}",
            m.split, m.step, s.loss, s.reward_chosen, s.reward_rejected, s.margin, s.accuracy
        );
        if m.split == "valid" {
            self.valid.push(m.clone());
        }
    }
}

/// How many of `prompts` the greedy continuation starts with `marker`.
fn leads_with(model: &Decoder, prompts: &[Vec<u32>], marker: &[u32], adapter: bool) -> usize {
    let cfg = GenerateConfig { max_new_tokens: marker.len(), adapter, ..Default::default() };
    prompts.iter().filter(|p| generate(model, p, &cfg, |_| true).unwrap().as_slice() == marker).count()
}

#[test]
fn dpo_teaches_a_style_preference() {
    let path = common::test_model();
    let tok = Tok(sam_models::BaseModel::open(&path).unwrap());
    let train = tok.pairs(TRAIN);
    let valid = tok.pairs(HELD_OUT);
    let eot = tok.ids("<|im_end|>");
    assert_eq!(eot.len(), 1, "<|im_end|> is one special token");
    let marker = tok.ids(MARKER);

    let prompts: Vec<Vec<u32>> = valid.iter().map(|p| p.prompt_ids.clone()).collect();
    let base_leads = {
        let base = load_model(&path, &LoadOptions::default()).unwrap();
        leads_with(&base, &prompts, &marker, false)
    };

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_preference(&preference_cache_path(&data, Split::Train), &train).unwrap();
    write_preference(&preference_cache_path(&data, Split::Valid), &valid).unwrap();
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec(), ..Default::default() },
        optim: OptimConfig { lr: 2e-3, warmup_steps: Some(1), ..Default::default() },
        batch: BatchConfig { batch_size: 4, grad_accum: 1, pad_id: eot[0], ..Default::default() },
        duration: Duration::Iters(8),
        eval_every: 0,
        compute: ComputeConfig { recompute_every: 0 },
        seed: 7,
        ..Default::default()
    };
    let dpo_cfg = DpoConfig { beta: 0.1, reference: Reference::Base, ..Default::default() };
    let job = job(&tmp.path().join("runs"), &data, JobMode::Dpo, cfg, dpo_cfg);
    let mut log = DpoLog::default();
    let started = std::time::Instant::now();
    let done = job.run(&mut log, JobControl::default()).unwrap();
    let out = done.dpo.clone().unwrap();
    eprintln!("trained in {:.1}s: {out:?}", started.elapsed().as_secs_f64());

    // Validation runs before training and after the last step (the adapter left on the model).
    assert_eq!(log.valid.iter().map(|m| m.step).collect::<Vec<_>>(), vec![0, out.steps]);
    let (first, after) = (log.valid[0].stats, log.valid[1].stats);
    eprintln!("held-out before: {first:?}\nheld-out after:  {after:?}");
    assert!(after.accuracy > 0.8, "held-out reward accuracy {:.2}", after.accuracy);
    assert!(after.margin > first.margin + 0.5, "mean margin {:+.3} → {:+.3}", first.margin, after.margin);
    assert!(after.loss < first.loss, "held-out loss {:.4} → {:.4}", first.loss, after.loss);

    let model = done.model.unwrap();
    let tuned_leads = leads_with(&model, &prompts, &marker, true);
    eprintln!(
        "greedy answers leading with {MARKER:?}: base {base_leads}/{n}, adapter {tuned_leads}/{n}",
        n = prompts.len()
    );
    assert!(tuned_leads > base_leads, "generation did not shift: base {base_leads}, adapter {tuned_leads}");
    assert!(tuned_leads * 2 > prompts.len(), "only {tuned_leads} of {} lead with the chosen style", prompts.len());
    // The adapter switched off is the base again.
    assert_eq!(leads_with(&model, &prompts, &marker, false), base_leads);
}
