//! Supervised fine-tuning of LoRA adapters, behind the [`Trainer`] seam.
//!
//! The loop (shared with DPO, see [`crate::fit`]): shuffle (seeded) →
//! batches of `batch_size` right-padded sequences → `grad_accum`
//! micro-batches per optimiser step, the loss being the mean cross-entropy
//! over all trained-on tokens of the step → global gradient-norm clipping →
//! AdamW with warmup + cosine schedule. Validation every `eval_every` steps
//! keeps the best adapter (and stops early after `patience` evaluations
//! without improvement, when set). With `out_dir` and `save_every`, full
//! checkpoints (adapter, optimizer moments, data position) let
//! [`train_sft_with`] continue a run exactly.

use crate::adapter::AdapterFormat;
use crate::error::{Error, Result};
use crate::fit::{Control, Objective, fit};
use crate::lora::LoraConfig;
use crate::loss::{Batch, Sequence, mean_loss, nll_sum};
use crate::model::{Decoder, Mode};
use candle_core::{Device, Tensor};
use sam_prep::cache::{PreparedData, Split, TokenizedExample};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duration {
    /// This many optimiser steps.
    Iters(usize),
    /// This many passes over the training split.
    Epochs(usize),
}

/// Everything an SFT run needs besides the model and the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Adapter shape.
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine floor).
    pub min_lr_ratio: f64,
    /// Warmup steps; `None`: 5% of the run (at least 1).
    pub warmup_steps: Option<usize>,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Longer examples are cut to this many tokens.
    pub max_seq_len: usize,
    /// Run length.
    pub duration: Duration,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Stop after this many validations without improvement.
    pub patience: Option<usize>,
    /// Seed of adapter initialisation, shuffling and dropout.
    pub seed: u64,
    /// Token used for padding (never trained on).
    pub pad_id: u32,
    /// Run folder: the best adapter goes to `OUT/adapter`, checkpoints to
    /// `OUT/checkpoints/<phase>-step-N`. `None`: keep everything in memory.
    pub out_dir: Option<PathBuf>,
    /// Save a checkpoint (adapter, optimizer state, data position) every
    /// this many steps (0: only when stopped).
    pub save_every: usize,
    /// Recompute every N-th adapted layer in the backward pass instead of
    /// keeping its activations (0: keep everything; 1: every layer, a
    /// fraction of the memory for about a third more compute). Ignored while
    /// LoRA dropout is active.
    pub checkpoint_every: usize,
    /// Layout of written adapters (checkpoints are always in PEFT's).
    #[serde(default = "default_format")]
    pub adapter_format: AdapterFormat,
    /// Recorded as the adapter's base model.
    pub base_model: Option<String>,
}

fn default_format() -> AdapterFormat {
    AdapterFormat::Peft
}

impl Default for TrainConfig {
    /// Sized for an 8 GB laptop: batch 1 with 4 accumulation steps, rank 8
    /// on q and v, sequences up to 1024 tokens, 1000 steps, learning rate
    /// 2e-4 (LoRA tolerates larger rates than full fine-tuning), every 2nd
    /// layer recomputed in the backward pass (about 1.2× PyTorch + PEFT's
    /// speed at 0.4× its memory on the test model; see docs/benchmarks.md).
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            lr: 2e-4,
            min_lr_ratio: 0.1,
            warmup_steps: None,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            batch_size: 1,
            grad_accum: 4,
            max_seq_len: 1024,
            duration: Duration::Iters(1000),
            eval_every: 100,
            patience: None,
            seed: 0,
            pad_id: 0,
            out_dir: None,
            save_every: 0,
            checkpoint_every: 2,
            adapter_format: AdapterFormat::Peft,
            base_model: None,
        }
    }
}

/// Metrics of one optimiser step.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Step number, from 1.
    pub step: usize,
    /// Total steps planned.
    pub total_steps: usize,
    /// Mean training loss over the step's trained-on tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (unpadded) processed this step.
    pub tokens: usize,
    /// Throughput of this step.
    pub tokens_per_s: f64,
    /// Wall seconds of this step.
    pub step_s: f64,
    /// Tokens trained on since the run started (across resumes).
    pub tokens_seen: u64,
    /// Training seconds since the run started (across resumes, pauses not counted).
    pub elapsed_s: f64,
}

/// A validation result.
#[derive(Debug, Clone, Serialize)]
pub struct EvalMetrics {
    /// Step after which it ran (0: before training).
    pub step: usize,
    /// Mean validation loss.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Whether this is the best so far.
    pub best: bool,
}

/// Receives progress from a [`Trainer`]. Every method has an empty default.
pub trait Observer {
    /// A job's phase (`sft` or `dpo`) is about to start or continue (called
    /// by [`crate::Job`] before the phase's [`Self::on_start`]).
    fn on_phase(&mut self, _phase: &'static str) {}
    /// Training is about to start.
    fn on_start(&mut self, _total_steps: usize, _train_examples: usize) {}
    /// An optimiser step finished.
    fn on_step(&mut self, _m: &StepMetrics) {}
    /// The run continues from a checkpoint after `step` (called right after
    /// [`Self::on_start`]).
    fn on_resumed(&mut self, _step: usize) {}
    /// A validation finished.
    fn on_eval(&mut self, _m: &EvalMetrics) {}
    /// An adapter or a checkpoint was written (the folder says which).
    fn on_checkpoint(&mut self, _step: usize, _dir: &std::path::Path) {}
    /// Preference metrics of a DPO step or validation (see [`crate::dpo`]).
    fn on_preference(&mut self, _m: &crate::dpo::PreferenceMetrics) {}
    /// The memory guard paused or resumed training between steps.
    fn on_memory(&mut self, _e: &sam_runs::GuardEvent) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Training loss of the last step.
    pub final_train_loss: f64,
    /// Validation loss before training (`None` without a validation split).
    pub initial_val_loss: Option<f64>,
    /// Best validation loss seen.
    pub best_val_loss: Option<f64>,
    /// Step of the best validation loss (its adapter is on the model).
    pub best_step: Option<usize>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether a stop request ended the run before its last step (a
    /// checkpoint holds where it stopped; the best adapter is not put back).
    pub stopped: bool,
    /// The step of the checkpoint this run continued from.
    pub resumed_from: Option<usize>,
    /// Mean throughput over the run (this process's part of it, when resumed).
    pub tokens_per_s: f64,
    /// Where the best adapter was written, when `out_dir` was set.
    pub adapter_dir: Option<PathBuf>,
    /// Training examples skipped (nothing to learn after truncation).
    pub skipped_examples: usize,
}

/// A training method (SFT now, DPO next) over a prepared dataset.
pub trait Trainer {
    /// Trains adapters on `data`, reporting to `observer`.
    fn train(&mut self, cfg: &TrainConfig, data: &PreparedData, observer: &mut dyn Observer) -> Result<TrainOutcome>;
}

/// Supervised fine-tuning of LoRA adapters on a model.
#[derive(Debug)]
pub struct SftTrainer<'m> {
    model: &'m mut Decoder,
}

impl<'m> SftTrainer<'m> {
    /// Trains adapters on `model` (attached by `train` per the config).
    pub fn new(model: &'m mut Decoder) -> Self {
        Self { model }
    }
}

impl Trainer for SftTrainer<'_> {
    fn train(&mut self, cfg: &TrainConfig, data: &PreparedData, observer: &mut dyn Observer) -> Result<TrainOutcome> {
        let load = |s| data.sft(s).map_err(|e| Error::InvalidData(format!("prepared data: {e}")));
        let train = load(Split::Train)?;
        let valid = load(Split::Valid)?;
        self.model.attach_lora(&cfg.lora, cfg.seed)?;
        train_sft(self.model, cfg, &train, &valid, observer)
    }
}

/// Cuts examples to `max_len` and drops those with nothing left to learn.
pub fn sequences(examples: &[TokenizedExample], max_len: usize) -> (Vec<Sequence<'_>>, usize) {
    let mut out = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for ex in examples {
        let n = ex.input_ids.len().min(ex.loss_mask.len()).min(max_len);
        let seq = Sequence { ids: &ex.input_ids[..n], mask: &ex.loss_mask[..n] };
        if n >= 2 && seq.mask[1..].iter().any(|&m| m) {
            out.push(seq);
        } else {
            skipped += 1;
        }
    }
    (out, skipped)
}

/// The SFT loop on already-attached adapters (see [`Decoder::attach_lora`]).
/// `train` and `valid` are tokenised examples (`valid` may be empty).
pub fn train_sft(
    model: &mut Decoder,
    cfg: &TrainConfig,
    train: &[TokenizedExample],
    valid: &[TokenizedExample],
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    train_sft_with(model, cfg, train, valid, observer, &mut Control::default())
}

/// [`train_sft`] with runtime controls: stop requests, the memory guard,
/// and resuming from a checkpoint.
pub fn train_sft_with(
    model: &mut Decoder,
    cfg: &TrainConfig,
    train: &[TokenizedExample],
    valid: &[TokenizedExample],
    observer: &mut dyn Observer,
    control: &mut Control<'_>,
) -> Result<TrainOutcome> {
    let (train_seqs, skipped) = sequences(train, cfg.max_seq_len);
    let (valid_seqs, _) = sequences(valid, cfg.max_seq_len);
    if train_seqs.is_empty() {
        return Err(Error::InvalidData("no training example has a trained-on token".into()));
    }
    let mut obj = SftObjective { train: train_seqs, valid: valid_seqs, batch: cfg.batch_size, pad: cfg.pad_id };
    fit(model, cfg, &mut obj, observer, control, skipped)
}

/// Masked cross-entropy on sequences.
struct SftObjective<'a> {
    train: Vec<Sequence<'a>>,
    valid: Vec<Sequence<'a>>,
    batch: usize,
    pad: u32,
}

impl Objective for SftObjective<'_> {
    type Micro = Batch;

    fn phase(&self) -> &'static str {
        "sft"
    }
    fn len(&self) -> usize {
        self.train.len()
    }
    fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for s in &self.train {
            h.update(&(s.ids.len() as u64).to_le_bytes());
            for id in s.ids {
                h.update(&id.to_le_bytes());
            }
            h.update(&s.mask.iter().map(|&m| u8::from(m)).collect::<Vec<_>>());
        }
        h.finalize().to_hex()[..16].to_string()
    }
    fn prepare(&self, idx: &[usize], dev: &Device) -> Result<Batch> {
        let seqs: Vec<Sequence<'_>> = idx.iter().map(|&i| self.train[i]).collect();
        Batch::new(&seqs, self.pad, dev)
    }
    fn count(&self, b: &Batch) -> (usize, usize) {
        (b.n_targets, b.n_tokens)
    }
    fn loss(&mut self, model: &Decoder, b: &Batch, units: f64, mode: Mode<'_>) -> Result<Option<Tensor>> {
        Ok(match nll_sum(model, b, mode)? {
            Some(nll) => Some((nll / units)?),
            None => None,
        })
    }
    fn validate(&self, model: &Decoder, _step: usize, _observer: &mut dyn Observer) -> Result<Option<f64>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        Ok(Some(mean_loss(model, &self.valid, self.batch, self.pad, Mode::INFER)?.0))
    }
}

/// Backpropagates `loss` and returns the gradient of every LoRA variable of
/// `model`, in [`Decoder::lora_vars`] order (`None`: no gradient reached it),
/// including those produced inside checkpointed layers.
pub fn lora_gradients(model: &Decoder, loss: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let gs = loss.backward()?;
    let mut side = model.take_checkpoint_grads();
    Ok(model
        .lora_vars()
        .into_iter()
        .map(|(_, v)| gs.get(v.as_tensor()).cloned().or_else(|| side.remove(&v.as_tensor().id())))
        .collect())
}
