//! The DPO learning test: a short run on the real test model teaches a
//! consistent style preference — answers that lead with "In short:" are
//! chosen over the same answers without it. On held-out questions (of other
//! kinds than most training ones) the reward accuracy must exceed 0.8, the
//! mean margin must grow, and greedy generation with the adapter must lead
//! with the preferred phrase more often than the base model does.

mod common;

use sam_prep::cache::TokenizedPair;
use sam_trainer::{
    DpoConfig, Duration, GenerateConfig, LoadOptions, LoraConfig, Mode, Observer, PreferenceMetrics, Reference,
    StepMetrics, Target, TrainConfig, generate, load_model, train_dpo,
};

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
struct Log {
    valid: Vec<PreferenceMetrics>,
}

impl Observer for Log {
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
fn leads_with(model: &sam_trainer::Decoder, prompts: &[Vec<u32>], marker: &[u32], mode: Mode<'_>) -> usize {
    let cfg = GenerateConfig { max_new_tokens: marker.len(), ..Default::default() };
    prompts.iter().filter(|p| generate(model, p, &cfg, mode, |_| true).unwrap().as_slice() == marker).count()
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

    let mut model = load_model(&path, &LoadOptions::default()).unwrap();
    let prompts: Vec<Vec<u32>> = valid.iter().map(|p| p.prompt_ids.clone()).collect();
    let base_leads = leads_with(&model, &prompts, &marker, Mode::BASE);

    let cfg = TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec(), ..Default::default() },
        lr: 2e-3,
        batch_size: 4,
        grad_accum: 1,
        duration: Duration::Iters(8),
        warmup_steps: Some(1),
        eval_every: 0,
        checkpoint_every: 0,
        seed: 7,
        pad_id: eot[0],
        ..Default::default()
    };
    let dpo_cfg = DpoConfig { beta: 0.1, reference: Reference::Base, ..Default::default() };
    model.attach_lora(&cfg.lora, cfg.seed).unwrap();
    let mut log = Log::default();
    let started = std::time::Instant::now();
    let out = train_dpo(&mut model, &cfg, &dpo_cfg, &train, &valid, &mut log).unwrap();
    eprintln!("trained in {:.1}s: {out:?}", started.elapsed().as_secs_f64());

    // Validation runs before training and after the last step (the adapter left on the model).
    assert_eq!(log.valid.iter().map(|m| m.step).collect::<Vec<_>>(), vec![0, out.steps]);
    let (first, after) = (log.valid[0].stats, log.valid[1].stats);
    eprintln!("held-out before: {first:?}\nheld-out after:  {after:?}");
    assert!(after.accuracy > 0.8, "held-out reward accuracy {:.2}", after.accuracy);
    assert!(after.margin > first.margin + 0.5, "mean margin {:+.3} → {:+.3}", first.margin, after.margin);
    assert!(after.loss < first.loss, "held-out loss {:.4} → {:.4}", first.loss, after.loss);

    let tuned_leads = leads_with(&model, &prompts, &marker, Mode::INFER);
    eprintln!(
        "greedy answers leading with {MARKER:?}: base {base_leads}/{n}, adapter {tuned_leads}/{n}",
        n = prompts.len()
    );
    assert!(tuned_leads > base_leads, "generation did not shift: base {base_leads}, adapter {tuned_leads}");
    assert!(tuned_leads * 2 > prompts.len(), "only {tuned_leads} of {} lead with the chosen style", prompts.len());
    // The adapter switched off is the base again.
    assert_eq!(leads_with(&model, &prompts, &marker, Mode::BASE), base_leads);
}
