//! Training settings: what a run does, apart from the model and the data,
//! grouped by concern — the optimiser ([`OptimConfig`]), batching
//! ([`BatchConfig`]), what is written ([`OutputConfig`]) and the
//! memory/compute trade-off ([`ComputeConfig`]) — around the adapter's
//! shape, the run's length, validation and seed.
//!
//! On disk (a run's `config.json`) the groups are flattened into one object,
//! so run folders written before the split still resume; the old name of
//! [`ComputeConfig::recompute_every`], `checkpoint_every`, is still read.

use crate::adapter::AdapterFormat;
use crate::lora::LoraConfig;
use serde::{Deserialize, Serialize};

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duration {
    /// This many optimiser steps.
    Iters(usize),
    /// This many passes over the training split.
    Epochs(usize),
}

/// The optimiser: AdamW on a linear-warmup + cosine schedule, with global
/// gradient-norm clipping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimConfig {
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
}

impl Default for OptimConfig {
    /// Learning rate 2e-4 (LoRA tolerates larger rates than full
    /// fine-tuning) decaying to a tenth, 5% warmup, weight decay 0.01,
    /// gradients clipped to norm 1.
    fn default() -> Self {
        Self { lr: 2e-4, min_lr_ratio: 0.1, warmup_steps: None, weight_decay: 0.01, max_grad_norm: 1.0 }
    }
}

/// How examples become optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    /// Sequences (DPO: pairs) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Longer examples are cut to this many tokens.
    pub max_seq_len: usize,
    /// Token used for padding (never trained on).
    pub pad_id: u32,
}

impl Default for BatchConfig {
    /// Batch 1 with 4 accumulation steps, sequences up to 1024 tokens, pad id 0.
    fn default() -> Self {
        Self { batch_size: 1, grad_accum: 4, max_seq_len: 1024, pad_id: 0 }
    }
}

/// What a run writes besides its metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputConfig {
    /// Save a checkpoint (adapter, optimizer state, data position) every
    /// this many steps (0: only when stopped).
    pub save_every: usize,
    /// Layout of written adapters (checkpoints are always in PEFT's).
    pub adapter_format: AdapterFormat,
    /// Recorded as the adapter's base model.
    pub base_model: Option<String>,
}

impl Default for OutputConfig {
    /// No periodic checkpoints, PEFT layout, no base model name.
    fn default() -> Self {
        Self { save_every: 0, adapter_format: AdapterFormat::Peft, base_model: None }
    }
}

/// The memory/compute trade-off of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComputeConfig {
    /// Recompute every N-th adapted layer in the backward pass instead of
    /// keeping its activations (0: keep everything, fastest; 1: every
    /// layer, a fraction of the memory for about a third more compute; 2:
    /// in between). Ignored while LoRA dropout is active.
    #[serde(alias = "checkpoint_every")]
    pub recompute_every: usize,
}

impl Default for ComputeConfig {
    /// Every 2nd layer recomputed: about 1.2× PyTorch + PEFT's speed at
    /// 0.4× its memory on the test model (see docs/benchmarks.md).
    fn default() -> Self {
        Self { recompute_every: 2 }
    }
}

/// Everything a training phase needs besides the model and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Adapter shape.
    pub lora: LoraConfig,
    /// Run length.
    pub duration: Duration,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Stop after this many validations without improvement.
    pub patience: Option<usize>,
    /// Seed of adapter initialisation, shuffling and dropout.
    pub seed: u64,
    /// The optimiser.
    #[serde(flatten)]
    pub optim: OptimConfig,
    /// Batching.
    #[serde(flatten)]
    pub batch: BatchConfig,
    /// What is written.
    #[serde(flatten)]
    pub output: OutputConfig,
    /// Memory against compute.
    #[serde(flatten)]
    pub compute: ComputeConfig,
}

impl Default for TrainConfig {
    /// Sized for an 8 GB laptop: rank 8 on q and v, 1000 steps, validation
    /// every 100, and the groups' defaults (batch 1 × 4 accumulation steps,
    /// learning rate 2e-4, every 2nd layer recomputed).
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            duration: Duration::Iters(1000),
            eval_every: 100,
            patience: None,
            seed: 0,
            optim: OptimConfig::default(),
            batch: BatchConfig::default(),
            output: OutputConfig::default(),
            compute: ComputeConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run folder's `config.json` from before the split (flat, with
    /// `checkpoint_every` and `out_dir`) still reads, to the same values.
    #[test]
    fn flat_configs_of_older_runs_still_read() {
        let old = serde_json::json!({
            "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q", "v"], "layers": "all", "rslora": false},
            "lr": 0.001, "min_lr_ratio": 0.1, "warmup_steps": 1, "weight_decay": 0.01, "max_grad_norm": 1.0,
            "batch_size": 2, "grad_accum": 2, "max_seq_len": 96, "duration": {"iters": 4}, "eval_every": 2,
            "patience": null, "seed": 3, "pad_id": 7, "out_dir": "/tmp/runs/x", "save_every": 3,
            "checkpoint_every": 1, "adapter_format": "peft", "base_model": "m.gguf"
        });
        let cfg: TrainConfig = serde_json::from_value(old).unwrap();
        assert_eq!(cfg.optim.lr, 1e-3);
        assert_eq!(cfg.optim.warmup_steps, Some(1));
        assert_eq!(cfg.batch, BatchConfig { batch_size: 2, grad_accum: 2, max_seq_len: 96, pad_id: 7 });
        assert_eq!(cfg.output.save_every, 3);
        assert_eq!(cfg.output.base_model.as_deref(), Some("m.gguf"));
        assert_eq!(cfg.compute.recompute_every, 1);
        assert_eq!((cfg.duration, cfg.eval_every, cfg.seed), (Duration::Iters(4), 2, 3));
        // Written back flat, under the new name, and read again unchanged.
        let text = serde_json::to_value(&cfg).unwrap();
        assert_eq!(text["recompute_every"], 1);
        assert!(text.get("optim").is_none() && text.get("checkpoint_every").is_none());
        assert_eq!(serde_json::from_value::<TrainConfig>(text).unwrap(), cfg);
    }
}
