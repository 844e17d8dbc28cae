//! The optimisation loop shared by SFT and DPO, with checkpoints, exact
//! resume, a memory guard and stop requests.
//!
//! Each step draws `grad_accum` micro-batches from a seeded order (reshuffled
//! every epoch), sums their gradients (each micro-batch's loss divided by
//! the whole step's token or pair count), clips the global norm and takes
//! one AdamW step on the warmup + cosine schedule. Validation every
//! `eval_every` steps keeps the best adapter. What differs between SFT and
//! DPO is the [`Objective`]: how a micro-batch becomes a loss and how
//! validation is scored.
//!
//! Between steps the loop waits for memory ([`Control::memory`]) and checks
//! [`Control::stop`]; a stop writes a checkpoint and returns with
//! [`TrainOutcome::stopped`] set. A non-finite loss or gradient norm ends the
//! loop with [`Error::Diverged`] before anything is written from the bad
//! weights.

use crate::adapter::save_adapter;
use crate::checkpoint::{self, Checkpoint, LoopState};
use crate::error::{Error, Result};
use crate::lora::DropoutRng;
use crate::model::{Decoder, Mode};
use crate::observe::{EvalMetrics, Observer, StepMetrics};
use crate::optim::{AdamW, clip_grad_norm, lr_at};
use crate::settings::{Duration, TrainConfig};
use candle_core::{Device, Tensor};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use sam_runs::MemoryGuard;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Runtime controls of a training loop: what is not part of its
/// configuration (and so not part of what makes a resumed run equal to an
/// uninterrupted one).
#[derive(Default)]
pub struct Control<'a> {
    /// Asked between steps; `true` stops the run after the step in progress,
    /// with a checkpoint (e.g. set by a SIGINT/SIGTERM handler, or a stop
    /// request in the run folder).
    pub stop: Option<&'a dyn Fn() -> bool>,
    /// Pauses between steps while available memory is low.
    pub memory: Option<&'a mut MemoryGuard>,
    /// Continue from this checkpoint instead of starting afresh. The model
    /// must carry an adapter of the same shape (its values are replaced).
    pub resume: Option<Checkpoint>,
    /// Periodic checkpoints kept per phase besides the best one (0: all).
    pub keep_checkpoints: usize,
    /// Run folder: the best adapter goes to `OUT/adapter`, checkpoints to
    /// `OUT/checkpoints/<phase>-step-N`. `None`: keep everything in memory.
    pub out_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stop", &self.stop.is_some())
            .field("memory", &self.memory)
            .field("resume", &self.resume.as_ref().map(|c| &c.dir))
            .field("keep_checkpoints", &self.keep_checkpoints)
            .field("out_dir", &self.out_dir)
            .finish()
    }
}

impl Control<'_> {
    fn should_stop(&self) -> bool {
        self.stop.is_some_and(|f| f())
    }
}

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
    /// Where the best adapter was written, when the run had a folder.
    pub adapter_dir: Option<PathBuf>,
    /// Training examples skipped (nothing to learn after truncation).
    pub skipped_examples: usize,
}

/// What the loop optimises: SFT on sequences, DPO on pairs.
pub(crate) trait Objective {
    /// A prepared micro-batch.
    type Micro;
    /// `sft` or `dpo`: names checkpoints and metrics.
    fn phase(&self) -> &'static str;
    /// Number of training items (sequences or pairs).
    fn len(&self) -> usize;
    /// A stable fingerprint of the training items.
    fn fingerprint(&self) -> String;
    /// Builds the micro-batch of items `idx`.
    fn prepare(&self, idx: &[usize], dev: &Device) -> Result<Self::Micro>;
    /// `(loss units, unpadded tokens)` of a micro-batch: the step's loss is
    /// the sum of per-unit losses divided by the step's units.
    fn count(&self, m: &Self::Micro) -> (usize, usize);
    /// The micro-batch's summed loss divided by `units` (differentiable), or
    /// `None` when it has nothing to learn.
    fn loss(&mut self, model: &Decoder, m: &Self::Micro, units: f64, mode: Mode<'_>) -> Result<Option<Tensor>>;
    /// After a step's micro-batches (DPO reports its rewards here).
    fn end_step(&mut self, _step: usize, _observer: &mut dyn Observer) -> Result<()> {
        Ok(())
    }
    /// Validation loss after `step` (`None`: no validation data).
    fn validate(&self, model: &Decoder, step: usize, observer: &mut dyn Observer) -> Result<Option<f64>>;
}

/// The seeded data order: one shuffle per epoch from one generator, so the
/// order after `k` shuffles is replayed by shuffling `k` times.
struct DataOrder {
    n: usize,
    batch: usize,
    rng: StdRng,
    order: Vec<usize>,
    cursor: usize,
    shuffles: usize,
}

impl DataOrder {
    fn new(n: usize, batch: usize, seed: u64) -> Self {
        Self { n, batch, rng: StdRng::seed_from_u64(seed), order: Vec::new(), cursor: 0, shuffles: 0 }
    }

    fn shuffle(&mut self) {
        self.order = (0..self.n).collect();
        self.order.shuffle(&mut self.rng);
        self.cursor = 0;
        self.shuffles += 1;
    }

    fn replay(&mut self, shuffles: usize, cursor: usize) {
        for _ in 0..shuffles {
            self.shuffle();
        }
        self.cursor = cursor;
    }

    fn next(&mut self) -> Vec<usize> {
        if self.cursor >= self.order.len() {
            self.shuffle();
        }
        let end = (self.cursor + self.batch).min(self.order.len());
        let b = self.order[self.cursor..end].to_vec();
        self.cursor = end;
        b
    }
}

/// Dropout seed of `step`: a fixed function of the run's seed and the step.
fn dropout_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_add(2).wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn finite(step: usize, what: &str, v: f64) -> Result<f64> {
    if v.is_finite() { Ok(v) } else { Err(Error::Diverged { step, what: format!("{what} {v}") }) }
}

/// Runs (or continues) the loop of `obj` on the model's attached adapters.
pub(crate) fn fit<O: Objective>(
    model: &mut Decoder,
    cfg: &TrainConfig,
    obj: &mut O,
    observer: &mut dyn Observer,
    control: &mut Control<'_>,
    skipped: usize,
) -> Result<TrainOutcome> {
    if cfg.batch.batch_size == 0 || cfg.batch.grad_accum == 0 {
        return Err(Error::InvalidConfig("batch size and accumulation must be ≥ 1".into()));
    }
    let named = model.lora_vars();
    if named.is_empty() {
        return Err(Error::InvalidConfig("no adapters attached".into()));
    }
    let vars: Vec<_> = named.iter().map(|(_, v)| v.clone()).collect();
    model.set_recompute_every(cfg.compute.recompute_every);
    let n = obj.len();
    let phase = obj.phase();
    let batches_per_epoch = n.div_ceil(cfg.batch.batch_size);
    let total = match cfg.duration {
        Duration::Iters(k) => k,
        Duration::Epochs(e) => (e * batches_per_epoch).div_ceil(cfg.batch.grad_accum),
    }
    .max(1);
    let warmup = cfg.optim.warmup_steps.unwrap_or((total / 20).max(1)).min(total);
    let mut opt = AdamW::new(vars.clone(), cfg.optim.weight_decay)?;
    let mut order = DataOrder::new(n, cfg.batch.batch_size, cfg.seed.wrapping_add(1));
    let dropout = DropoutRng::new(dropout_seed(cfg.seed, 0));
    let mode = Mode { adapter: true, dropout: Some(&dropout) };
    let dev = model.device().clone();
    let out_dir = control.out_dir.clone();
    let ckpt_root = out_dir.as_ref().map(|o| o.join("checkpoints"));
    let save = |model: &Decoder, dir: &Path| -> Result<()> {
        sam_home::atomic::write_dir(
            dir,
            |e| Error::Io { path: dir.to_path_buf(), source: e },
            |tmp| save_adapter(model, tmp, cfg.output.adapter_format, cfg.output.base_model.as_deref()),
        )
    };
    let snapshot = |vars: &[candle_core::Var]| -> Result<Vec<Tensor>> {
        Ok(vars.iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    };

    let mut best: Option<Vec<Tensor>> = None;
    let resumed_from;
    let mut st = match control.resume.take() {
        Some(ck) => {
            let s = &ck.state;
            let mismatch = |why: String| Error::Checkpoint { path: ck.dir.clone(), why };
            if s.phase != phase {
                return Err(mismatch(format!("it is a {} checkpoint, this is a {phase} run", s.phase)));
            }
            if s.train_items != n || s.data_fingerprint != obj.fingerprint() {
                return Err(mismatch(format!(
                    "it was trained on other data ({} items, this run has {n})",
                    s.train_items
                )));
            }
            if s.total_steps != total || s.seed != cfg.seed || s.warmup_steps != warmup {
                return Err(mismatch(format!(
                    "it plans {} steps (warmup {}, seed {}), this run {total} (warmup {warmup}, seed {})",
                    s.total_steps, s.warmup_steps, s.seed, cfg.seed
                )));
            }
            best = checkpoint::restore(model, &mut opt, &ck)?;
            if s.best_step.is_some() && best.is_none() {
                return Err(mismatch("best.safetensors is missing".into()));
            }
            order.replay(s.shuffles, s.cursor);
            resumed_from = Some(s.step);
            observer.on_start(total, n);
            observer.on_resumed(s.step);
            ck.state
        }
        None => {
            resumed_from = None;
            observer.on_start(total, n);
            let initial = obj.validate(model, 0, observer)?.map(|l| finite(0, "validation loss", l)).transpose()?;
            if let Some(l) = initial {
                observer.on_eval(&EvalMetrics { step: 0, loss: l, perplexity: l.exp(), best: false });
            }
            LoopState {
                phase: phase.to_string(),
                step: 0,
                total_steps: total,
                warmup_steps: warmup,
                seed: cfg.seed,
                train_items: n,
                data_fingerprint: obj.fingerprint(),
                shuffles: 0,
                cursor: 0,
                optimizer_steps: 0,
                best_loss: None,
                best_step: None,
                since_best: 0,
                initial_val_loss: initial,
                tokens_seen: 0,
                last_loss: None,
                elapsed_s: 0.0,
                stopped_early: false,
            }
        }
    };
    let elapsed_before = st.elapsed_s;
    let tokens_before = st.tokens_seen;
    let mut paused = std::time::Duration::ZERO;
    let started = Instant::now();
    let active = |paused: std::time::Duration| (started.elapsed().saturating_sub(paused)).as_secs_f64();
    let mut last_ckpt: Option<usize> = resumed_from;
    let mut stopped = false;
    let keep = control.keep_checkpoints;
    let write_ckpt = |model: &Decoder, opt: &AdamW, st: &LoopState, best: &Option<Vec<Tensor>>| -> Result<_> {
        match &ckpt_root {
            Some(root) => Ok(Some(checkpoint::write(
                root,
                model,
                opt,
                st,
                best.as_deref(),
                cfg.output.base_model.as_deref(),
                keep,
            )?)),
            None => Ok(None),
        }
    };

    while st.step < total && !st.stopped_early {
        if let Some(guard) = control.memory.as_deref_mut() {
            let t = Instant::now();
            guard.wait_for_room(&mut |e| observer.on_memory(&e));
            paused += t.elapsed();
        }
        if control.should_stop() {
            stopped = true;
            break;
        }
        let step = st.step + 1;
        let t0 = Instant::now();
        dropout.reseed(dropout_seed(cfg.seed, step));
        let micro: Vec<O::Micro> =
            (0..cfg.batch.grad_accum).map(|_| obj.prepare(&order.next(), &dev)).collect::<Result<_>>()?;
        let (units, tokens) = micro.iter().map(|m| obj.count(m)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let mut grads: Vec<Tensor> =
            vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
        let mut loss_sum = 0f64;
        for m in &micro {
            let Some(loss) = obj.loss(model, m, units.max(1) as f64, mode)? else {
                continue;
            };
            let gs = model.lora_gradients(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            for (acc, g) in grads.iter_mut().zip(gs) {
                if let Some(g) = g {
                    *acc = (&*acc + g)?;
                }
            }
        }
        obj.end_step(step, observer)?;
        finite(step, "training loss", loss_sum)?;
        let grad_norm = finite(step, "gradient norm", clip_grad_norm(&mut grads, cfg.optim.max_grad_norm)?)?;
        let lr = lr_at(step, total, warmup, cfg.optim.lr, cfg.optim.min_lr_ratio);
        opt.step(&grads, lr)?;
        let dt = t0.elapsed().as_secs_f64();
        st.step = step;
        st.shuffles = order.shuffles;
        st.cursor = order.cursor;
        st.optimizer_steps = opt.steps();
        st.tokens_seen += tokens as u64;
        st.last_loss = Some(loss_sum);
        st.elapsed_s = elapsed_before + active(paused);
        observer.on_step(&StepMetrics {
            step,
            total_steps: total,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            step_s: dt,
            tokens_seen: st.tokens_seen,
            elapsed_s: st.elapsed_s,
        });

        let eval_now = (cfg.eval_every > 0 && step % cfg.eval_every == 0) || step == total;
        if eval_now && let Some(l) = obj.validate(model, step, observer)? {
            let l = finite(step, "validation loss", l)?;
            let improved = st.best_loss.is_none_or(|b| l < b);
            observer.on_eval(&EvalMetrics { step, loss: l, perplexity: l.exp(), best: improved });
            if improved {
                best = Some(snapshot(&vars)?);
                st.best_loss = Some(l);
                st.best_step = Some(step);
                st.since_best = 0;
                if let Some(out) = &out_dir {
                    let dir = out.join("adapter");
                    save(model, &dir)?;
                    observer.on_checkpoint(step, &dir);
                }
            } else {
                st.since_best += 1;
                st.stopped_early = cfg.patience.is_some_and(|p| st.since_best >= p);
            }
        }
        if cfg.output.save_every > 0
            && step % cfg.output.save_every == 0
            && let Some(dir) = write_ckpt(model, &opt, &st, &best)?
        {
            last_ckpt = Some(step);
            observer.on_checkpoint(step, &dir);
        }
        if control.should_stop() && st.step < total && !st.stopped_early {
            stopped = true;
            break;
        }
    }
    st.elapsed_s = elapsed_before + active(paused);
    if stopped {
        if st.step > 0
            && last_ckpt != Some(st.step)
            && let Some(dir) = write_ckpt(model, &opt, &st, &best)?
        {
            observer.on_checkpoint(st.step, &dir);
        }
    } else if let Some(values) = &best {
        // Leave the best adapter on the model.
        for (v, t) in vars.iter().zip(values) {
            v.set(t)?;
        }
    } else if let Some(out) = &out_dir {
        // No validation: the last adapter is the result.
        save(model, &out.join("adapter"))?;
        observer.on_checkpoint(st.step, &out.join("adapter"));
    }
    let trained_s = (st.elapsed_s - elapsed_before).max(1e-9);
    Ok(TrainOutcome {
        steps: st.step,
        final_train_loss: st.last_loss.unwrap_or(f64::NAN),
        initial_val_loss: st.initial_val_loss,
        best_val_loss: st.best_loss,
        best_step: st.best_step,
        stopped_early: st.stopped_early,
        stopped,
        resumed_from,
        tokens_per_s: (st.tokens_seen - tokens_before) as f64 / trained_s,
        adapter_dir: out_dir.as_ref().map(|o| o.join("adapter")),
        skipped_examples: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_order_continues_the_same_sequence() {
        let mut a = DataOrder::new(7, 3, 11);
        let whole: Vec<Vec<usize>> = (0..9).map(|_| a.next()).collect();
        // Stop after every possible batch, replay, continue: same batches.
        for cut in 0..whole.len() {
            let mut b = DataOrder::new(7, 3, 11);
            for _ in 0..cut {
                b.next();
            }
            let mut c = DataOrder::new(7, 3, 11);
            c.replay(b.shuffles, b.cursor);
            let rest: Vec<Vec<usize>> = (cut..whole.len()).map(|_| c.next()).collect();
            assert_eq!(rest, whole[cut..], "cut after {cut} batches");
        }
        // Each epoch is a permutation (the last batch of an epoch is short).
        let mut epoch: Vec<usize> = whole[..3].concat();
        epoch.sort();
        assert_eq!(epoch, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn dropout_seeds_differ_per_step_and_repeat_per_seed() {
        assert_ne!(dropout_seed(0, 1), dropout_seed(0, 2));
        assert_eq!(dropout_seed(5, 9), dropout_seed(5, 9));
    }
}
