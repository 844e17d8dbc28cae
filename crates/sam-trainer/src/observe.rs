//! What a training run reports while it runs: the [`Observer`] and the
//! metrics it receives.

use serde::{Deserialize, Serialize};

/// Metrics of one optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Receives progress from a training run. Every method has an empty default.
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
    /// Preference metrics of a DPO step or validation.
    fn on_preference(&mut self, _m: &PreferenceMetrics) {}
    /// The memory guard paused or resumed training between steps.
    fn on_memory(&mut self, _e: &sam_runs::GuardEvent) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// Summary of a set of pairs: mean loss, rewards, margin and accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PreferenceStats {
    /// Pairs summarised.
    pub pairs: usize,
    /// Mean loss.
    pub loss: f64,
    /// Mean chosen reward.
    pub reward_chosen: f64,
    /// Mean rejected reward.
    pub reward_rejected: f64,
    /// Mean reward margin (chosen − rejected).
    pub margin: f64,
    /// Fraction of pairs whose chosen reward is above the rejected one.
    pub accuracy: f64,
}

/// Preference metrics of one optimiser step or one validation.
#[derive(Debug, Clone, Serialize)]
pub struct PreferenceMetrics {
    /// Step after which they were measured (0: before training).
    pub step: usize,
    /// `train` (the step's pairs) or `valid`.
    pub split: &'static str,
    /// Loss, rewards, margin and accuracy.
    pub stats: PreferenceStats,
}
