//! Training settings: what a run does, apart from the model and the data.

use crate::adapter::AdapterFormat;
use crate::lora::LoraConfig;
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
