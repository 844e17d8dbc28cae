//! Using sam-deploy alone, inside another program: the program trains (or
//! is handed) a LoRA adapter, and sam's registry decides whether it goes
//! into production — no `sam` command, no store.
//!
//! 1. A registry under a folder of the program's choosing, with one slot for
//!    the base model and a golden set (a prepared dataset's test split).
//! 2. Two candidates registered as immutable versions: an adapter trained
//!    for a few steps, and a copy of it whose LoRA B matrices are zero (it
//!    changes nothing, so it cannot beat the base).
//! 3. The standard gate judges each against production; the refused one
//!    moves nothing, the passing one is promoted over the base model.
//! 4. `resolve` names the folder the running assistant loads.
//!
//! ```text
//! cargo run -p example-deploy-only [-- ADAPTER_DIR DATASET_DIR [MODEL]]
//! ```
//!
//! With an adapter folder (PEFT or mlx-lm layout, trained anywhere) and the
//! prepared dataset whose test split it never saw, it judges that adapter
//! instead of training one.

use std::path::{Path, PathBuf};

use sam_deploy::registry::{self, BaseRef};
use sam_deploy::{Approval, EvalOptions, GateSettings, ModelEvaluator, Registration, Registry, VerdictRecord, gate};
use sam_prep::cache::PreparedData;
use sam_trainer::{BatchConfig, ComputeConfig, Duration, Job, JobControl, JobMode, JobSpec, OptimConfig, TrainConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const MAX_SEQ_LEN: usize = 64;

fn main() -> Res<()> {
    let mut args = std::env::args_os().skip(1);
    let given: Option<(PathBuf, PathBuf)> = match (args.next(), args.next()) {
        (Some(a), Some(d)) => Some((a.into(), d.into())),
        (None, _) => None,
        (Some(_), None) => return Err("usage: example-deploy-only [ADAPTER_DIR DATASET_DIR [MODEL]]".into()),
    };
    let model: PathBuf = match args.next() {
        Some(p) => p.into(),
        None => sam_models::require_test_model()?,
    };
    let tmp = tempfile::tempdir()?;
    let (adapter, data) = match given {
        Some(g) => g,
        None => {
            let data = tiny_dataset(&model, &tmp.path().join("dataset"))?;
            (train(&model, &data, &tmp.path().join("trained"))?, data)
        }
    };

    // 1. The registry, and a slot for the base model with its golden set.
    let reg = Registry::open(tmp.path().join("adapters"))?;
    let mut ev = ModelEvaluator::load(&model, EvalOptions { max_seq_len: MAX_SEQ_LEN, ..Default::default() })?;
    let golden = registry::golden_from_dataset(&data)?;
    let slot = reg.create_slot("assistant", BaseRef::of(&model, &mut ev)?, &golden, "the dataset's test split")?;
    println!("slot {} on {} (golden set: {} examples)", slot.name, slot.base.id, slot.golden.examples);

    // 2. Candidates: the adapter, and one that changes nothing.
    let zero = tmp.path().join("zero");
    zero_copy(&adapter, &zero)?;
    let settings = GateSettings { max_new_tokens: 16, ..GateSettings::default() };
    let gates = gate::standard(&settings);
    for (name, dir) in [("unchanged", &zero), ("trained", &adapter)] {
        let r = Registration { dataset: Some(data.clone()), ..Registration::folder(dir) };
        let (v, _) = reg.register(&slot.name, &r)?;
        // 3. The gate against production (the base model while nothing is in it).
        let trial = reg.trial_data(&v, None, &settings.prompts)?;
        let rec = reg.judge(&v, &gates, &mut ev, &trial)?;
        show(name, &rec);
        if rec.verdict.pass {
            let e = reg.promote(&v, &Approval::Verdict(rec))?;
            println!("  promoted: production {} → {}", e.from.as_deref().unwrap_or("base"), v.id);
        } else {
            let production = reg.aliases(&slot.name)?.production().map(String::from);
            println!("  refused: production stays {}", production.as_deref().unwrap_or("base"));
        }
    }

    // 4. What the assistant loads, and the slot's record of it all.
    let r = reg.resolve(&slot.name, None)?;
    match &r.adapter_dir {
        Some(d) => println!("load {} with the adapter in {}", r.base_model.display(), d.display()),
        None => println!("load {} alone: nothing passed the gate", r.base_model.display()),
    }
    for e in reg.history(&slot.name)? {
        println!("  #{} {:?} {}", e.seq, e.action, e.why);
    }
    Ok(())
}

/// The verdict, its reasons and the test-split numbers.
fn show(name: &str, rec: &VerdictRecord) {
    let v = &rec.verdict;
    println!("{name} ({}): {} against {}", rec.version, if v.pass { "PASS" } else { "REFUSED" }, rec.against);
    for leaf in v.leaves() {
        for reason in &leaf.reasons {
            println!("  {} {:<20} {reason}", if leaf.pass { "ok" } else { "no" }, leaf.gate);
        }
    }
    let n = |k: &str| v.numbers.get(&format!("beats_production.{k}")).copied();
    if let (Some(p), Some(c)) = (n("production_loss"), n("candidate_loss")) {
        println!("  test loss {p:.4} → {c:.4}");
    }
}

/// A few steps of LoRA SFT on the dataset's training split, saved in PEFT's layout.
fn train(model_path: &Path, data_dir: &Path, out: &Path) -> Res<PathBuf> {
    PreparedData::open(data_dir)?;
    let info = sam_models::BaseModel::open(model_path)?;
    let mut spec = JobSpec::new(model_path, data_dir, JobMode::Sft);
    spec.train = TrainConfig {
        optim: OptimConfig { lr: 2e-3, ..OptimConfig::default() },
        batch: BatchConfig {
            batch_size: 2,
            grad_accum: 1,
            max_seq_len: MAX_SEQ_LEN,
            pad_id: info.special_tokens().eos.as_ref().map_or(0, |t| t.id),
        },
        duration: Duration::Iters(6),
        eval_every: 0,
        compute: ComputeConfig { recompute_every: 0 },
        ..spec.train
    };
    spec.train.lora.rank = 4;
    spec.train.lora.alpha = 8.0;
    spec.eval_examples = None;
    let outcome = Job::create_at(out, spec)?.run(&mut sam_trainer::NoopObserver, JobControl::default())?;
    println!("trained {} steps", outcome.sft.as_ref().map_or(0, |o| o.steps));
    Ok(outcome.adapter_dir)
}

/// A copy of a PEFT adapter with every LoRA B matrix zero.
fn zero_copy(from: &Path, to: &Path) -> Res<()> {
    std::fs::create_dir_all(to)?;
    std::fs::copy(from.join("adapter_config.json"), to.join("adapter_config.json"))?;
    let mut t = candle_core::safetensors::load(from.join("adapter_model.safetensors"), &candle_core::Device::Cpu)?;
    for (name, x) in t.iter_mut() {
        if name.contains("lora_B") {
            *x = x.zeros_like()?;
        }
    }
    candle_core::safetensors::save(&t, to.join("adapter_model.safetensors"))?;
    Ok(())
}

/// Questions and answers of one project, prepared for the model: the
/// training split teaches them, the test split checks them.
fn tiny_dataset(model: &Path, out: &Path) -> Res<PathBuf> {
    use sam_prep::prepare::{PrepConfig, Preparer, read_inputs};
    let mut rows = String::new();
    for i in 0..24 {
        let q = format!("Which module of the billing service handles invoice {i}?");
        let a = format!("Invoice {i} is handled by billing::invoices::batch_{}, which retries twice.", i % 4);
        rows.push_str(&format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":{q:?}}},{{\"role\":\"assistant\",\"content\":{a:?}}}]}}\n"
        ));
    }
    for i in 0..6 {
        rows.push_str(&format!(
            "{{\"prompt\":\"Which module handles refund {i}?\",\"chosen\":\"billing::refunds::batch_{}\",\"rejected\":\"I don't know.\"}}\n",
            i % 4
        ));
    }
    std::fs::create_dir_all(out)?;
    let input = out.with_extension("jsonl");
    std::fs::write(&input, rows)?;
    let base = sam_models::BaseModel::open(model)?;
    let cfg = PrepConfig { max_seq_len: MAX_SEQ_LEN, split: "70,0,30".parse()?, ..Default::default() };
    Preparer::new(&base, cfg)?.prepare(&read_inputs(&[input])?, |_| {})?.write(out)?;
    Ok(out.to_path_buf())
}
