//! Supervised fine-tuning of LoRA adapters, behind the [`Trainer`] seam.
//!
//! The loop: shuffle (seeded) → batches of `batch_size` right-padded
//! sequences → `grad_accum` micro-batches per optimiser step, the loss being
//! the mean cross-entropy over all trained-on tokens of the step → global
//! gradient-norm clipping → AdamW with warmup + cosine schedule. Validation
//! every `eval_every` steps keeps the best adapter (and stops early after
//! `patience` evaluations without improvement, when set).

use crate::adapter::{AdapterFormat, save_adapter};
use crate::error::{Error, Result};
use crate::lora::{DropoutRng, LoraConfig};
use crate::loss::{Batch, Sequence, mean_loss, nll_sum};
use crate::model::{Decoder, Mode};
use crate::optim::{AdamW, clip_grad_norm, lr_at};
use candle_core::Tensor;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use sam_prep::cache::{PreparedData, Split, TokenizedExample};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

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
    /// Run folder: the best adapter goes to `OUT/adapter`, periodic ones to
    /// `OUT/checkpoints/step-N`. `None`: keep everything in memory.
    pub out_dir: Option<PathBuf>,
    /// Save a checkpoint every this many steps (0: never).
    pub save_every: usize,
    /// Recompute every N-th adapted layer in the backward pass instead of
    /// keeping its activations (0: keep everything; 1: every layer, a
    /// fraction of the memory for about a third more compute). Ignored while
    /// LoRA dropout is active.
    pub checkpoint_every: usize,
    /// Layout of written adapters.
    #[serde(skip, default = "default_format")]
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
    /// 2e-4 (LoRA tolerates larger rates than full fine-tuning).
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
            checkpoint_every: 1,
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
    /// Seconds since training started.
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
    /// Training is about to start.
    fn on_start(&mut self, _total_steps: usize, _train_examples: usize) {}
    /// An optimiser step finished.
    fn on_step(&mut self, _m: &StepMetrics) {}
    /// A validation finished.
    fn on_eval(&mut self, _m: &EvalMetrics) {}
    /// An adapter was written.
    fn on_checkpoint(&mut self, _step: usize, _dir: &std::path::Path) {}
    /// Preference metrics of a DPO step or validation (see [`crate::dpo`]).
    fn on_preference(&mut self, _m: &crate::dpo::PreferenceMetrics) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
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
    /// Mean throughput over the run.
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
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return Err(Error::InvalidConfig("batch size and accumulation must be ≥ 1".into()));
    }
    let named = model.lora_vars();
    if named.is_empty() {
        return Err(Error::InvalidConfig("no adapters attached".into()));
    }
    let vars: Vec<_> = named.iter().map(|(_, v)| v.clone()).collect();
    model.set_checkpointing(cfg.checkpoint_every);
    let (train_seqs, skipped) = sequences(train, cfg.max_seq_len);
    let (valid_seqs, _) = sequences(valid, cfg.max_seq_len);
    if train_seqs.is_empty() {
        return Err(Error::InvalidData("no training example has a trained-on token".into()));
    }
    let batches_per_epoch = train_seqs.len().div_ceil(cfg.batch_size);
    let total = match cfg.duration {
        Duration::Iters(n) => n,
        Duration::Epochs(e) => (e * batches_per_epoch).div_ceil(cfg.grad_accum),
    }
    .max(1);
    let warmup = cfg.warmup_steps.unwrap_or((total / 20).max(1)).min(total);
    let mut opt = AdamW::new(vars.clone(), cfg.weight_decay)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let dropout = DropoutRng::new(cfg.seed.wrapping_add(2));
    let mode = Mode { adapter: true, dropout: Some(&dropout) };
    let dev = model.device().clone();
    observer.on_start(total, train_seqs.len());

    let mut order: Vec<usize> = Vec::new();
    let mut cursor = 0;
    let mut next_batch = |rng: &mut StdRng| -> Vec<Sequence<'_>> {
        if cursor >= order.len() {
            order = (0..train_seqs.len()).collect();
            order.shuffle(rng);
            cursor = 0;
        }
        let end = (cursor + cfg.batch_size).min(order.len());
        let b = order[cursor..end].iter().map(|&i| train_seqs[i]).collect();
        cursor = end;
        b
    };

    let evaluate = |model: &Decoder| -> Result<Option<f64>> {
        if valid_seqs.is_empty() {
            return Ok(None);
        }
        Ok(Some(mean_loss(model, &valid_seqs, cfg.batch_size, cfg.pad_id, Mode::INFER)?.0))
    };
    let snapshot = |vars: &[candle_core::Var]| -> Result<Vec<Tensor>> {
        Ok(vars.iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    };

    let initial_val = evaluate(model)?;
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    if let Some(l) = initial_val {
        observer.on_eval(&EvalMetrics { step: 0, loss: l, perplexity: l.exp(), best: false });
    }
    let save = |model: &Decoder, dir: &std::path::Path| {
        save_adapter(model, dir, cfg.adapter_format, cfg.base_model.as_deref())
    };
    let started = Instant::now();
    let mut total_tokens = 0usize;
    let mut last_loss = f64::NAN;
    let mut since_best = 0usize;
    let mut stopped_early = false;
    let mut steps_done = 0;
    for step in 1..=total {
        let t0 = Instant::now();
        let micro: Vec<Batch> =
            (0..cfg.grad_accum).map(|_| Batch::new(&next_batch(&mut rng), cfg.pad_id, &dev)).collect::<Result<_>>()?;
        let n_targets: usize = micro.iter().map(|b| b.n_targets).sum();
        let tokens: usize = micro.iter().map(|b| b.n_tokens).sum();
        let mut grads: Vec<Tensor> =
            vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
        let mut loss_sum = 0f64;
        for b in &micro {
            let Some(nll) = nll_sum(model, b, mode)? else {
                continue;
            };
            let loss = (nll / n_targets as f64)?;
            let gs = lora_gradients(model, &loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            for (acc, g) in grads.iter_mut().zip(gs) {
                if let Some(g) = g {
                    *acc = (&*acc + g)?;
                }
            }
        }
        if !loss_sum.is_finite() {
            return Err(Error::Diverged { step, loss: loss_sum as f32 });
        }
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let lr = lr_at(step, total, warmup, cfg.lr, cfg.min_lr_ratio);
        opt.step(&grads, lr)?;
        let dt = t0.elapsed().as_secs_f64();
        total_tokens += tokens;
        last_loss = loss_sum;
        steps_done = step;
        observer.on_step(&StepMetrics {
            step,
            total_steps: total,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        });

        let eval_now = (cfg.eval_every > 0 && step % cfg.eval_every == 0) || step == total;
        if eval_now && let Some(l) = evaluate(model)? {
            let improved = best.as_ref().is_none_or(|(b, _, _)| l < *b);
            observer.on_eval(&EvalMetrics { step, loss: l, perplexity: l.exp(), best: improved });
            if improved {
                best = Some((l, step, snapshot(&vars)?));
                since_best = 0;
                if let Some(out) = &cfg.out_dir {
                    let dir = out.join("adapter");
                    save(model, &dir)?;
                    observer.on_checkpoint(step, &dir);
                }
            } else {
                since_best += 1;
                if cfg.patience.is_some_and(|p| since_best >= p) {
                    stopped_early = true;
                }
            }
        }
        if cfg.save_every > 0
            && step % cfg.save_every == 0
            && let Some(out) = &cfg.out_dir
        {
            let dir = out.join("checkpoints").join(format!("step-{step}"));
            save(model, &dir)?;
            observer.on_checkpoint(step, &dir);
        }
        if stopped_early {
            break;
        }
    }
    // Leave the best adapter on the model (the last one without validation).
    let mut adapter_dir = None;
    if let Some((_, _, values)) = &best {
        for (v, t) in vars.iter().zip(values) {
            v.set(t)?;
        }
    } else if let Some(out) = &cfg.out_dir {
        save(model, &out.join("adapter"))?;
        observer.on_checkpoint(steps_done, &out.join("adapter"));
    }
    if let Some(out) = &cfg.out_dir {
        adapter_dir = Some(out.join("adapter"));
    }
    Ok(TrainOutcome {
        steps: steps_done,
        final_train_loss: last_loss,
        initial_val_loss: initial_val,
        best_val_loss: best.as_ref().map(|b| b.0),
        best_step: best.as_ref().map(|b| b.1),
        stopped_early,
        tokens_per_s: total_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        adapter_dir,
        skipped_examples: skipped,
    })
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
