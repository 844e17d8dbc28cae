//! sam-trainer: LoRA fine-tuning of Llama and Qwen2 decoders on candle, with
//! evaluation, generation and adapters in PEFT's (or mlx-lm's) layout.
//!
//! It reads a base model (a Hugging Face folder or a GGUF file) and a
//! prepared dataset (`sam_prep::cache`), and writes run folders: adapters,
//! metrics, evaluation reports. It never opens the store.
//!
//! Main types:
//! - [`Decoder`]: one configurable Llama/Qwen2 decoder (RMSNorm, rotary,
//!   grouped-query attention, SwiGLU, Qwen2's q/k/v biases, tied or separate
//!   head, KV cache) whose projections are [`Linear`] layers that can carry
//!   LoRA adapters. Loaded by [`load_model`]; frozen weights are plain
//!   tensors (f32 or bf16), never trainable variables.
//! - [`LoraConfig`] / [`Target`] / [`Layers`]: rank, alpha, dropout, target
//!   modules, which layers, rsLoRA.
//! - [`Trainer`] (implemented by [`SftTrainer`] and [`DpoTrainer`]) with
//!   [`TrainConfig`], reporting to an [`Observer`]; [`train_sft`] and
//!   [`train_dpo`] are the loops on token slices, [`train_sft_with`] and
//!   [`train_dpo_with`] the same with a [`Control`] (stop requests, memory
//!   guard, resume from a [`Checkpoint`]). Both run one loop ([`fit`]).
//! - [`Job`] ([`job`]): a training run in its own folder under
//!   `SAM_HOME/runs/<id>/` — SFT, DPO or SFT then DPO from one [`JobSpec`],
//!   checkpoints (adapter, AdamW moments, data position), exact resume,
//!   status, metrics, events and `loss.svg` through `sam_runs`.
//! - [`save_adapter`] / [`load_adapter`] ([`AdapterFormat`]), [`Decoder::merge_lora`]
//!   and [`save_hf_model`] for `sam fuse`.
//! - [`evaluate`] → [`EvalReport`]; [`generate()`] with [`GenerateConfig`].
//! - [`ops`]: custom ops with their own backward (candle's fused ops cut
//!   gradients silently, and its matmul backward computes frozen weights'
//!   gradients too).
//!
//! ```no_run
//! use sam_prep::cache::TokenizedExample;
//! use sam_trainer::{load_model, train_sft, LoadOptions, Mode, NoopObserver, TrainConfig};
//! # fn main() -> sam_trainer::Result<()> {
//! let mut model = load_model("model.gguf".as_ref(), &LoadOptions::default())?;
//! let cfg = TrainConfig::default();
//! model.attach_lora(&cfg.lora, cfg.seed)?;
//! let train = vec![TokenizedExample {
//!     id: "1".into(),
//!     domain: "code".into(),
//!     input_ids: vec![1, 2, 3, 4],
//!     loss_mask: vec![false, false, true, true],
//! }];
//! let outcome = train_sft(&mut model, &cfg, &train, &[], &mut NoopObserver)?;
//! let ids = sam_trainer::generate(&model, &[1, 2], &Default::default(), Mode::INFER, |_| true)?;
//! # let _ = (outcome, ids); Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod dpo;
pub mod error;
pub mod eval;
pub mod fit;
mod forward;
mod fused;
pub mod generate;
pub mod job;
mod layer;
pub mod load;
pub mod lora;
pub mod loss;
pub mod model;
pub mod observe;
pub mod ops;
pub mod optim;
mod plain;
pub mod settings;
pub mod sft;

pub use adapter::{AdapterFormat, load_adapter, save_adapter, save_hf_model};
pub use candle_core::{DType, Device};
pub use checkpoint::{Checkpoint, LoopState};
pub use config::{Arch, ModelConfig};
pub use dpo::{DpoConfig, DpoLoss, DpoTrainer, Reference, train_dpo, train_dpo_with};
pub use error::{Error, Result};
pub use eval::{EvalReport, Score, evaluate};
pub use fit::{Control, TrainOutcome, Trainer};
pub use generate::{GenerateConfig, generate};
pub use job::{Job, JobControl, JobMode, JobOutcome, JobSpec, WeightType};
pub use load::{LoadOptions, load_model, random_model, read_config};
pub use lora::{Layers, Linear, LoraConfig, Target};
pub use loss::{Batch, Sequence, mean_loss, nll_sum};
pub use model::{Decoder, KvCache, Mode};
pub use observe::{EvalMetrics, NoopObserver, Observer, PreferenceMetrics, PreferenceStats, StepMetrics};
pub use settings::{Duration, TrainConfig};
pub use sft::{SftTrainer, lora_gradients, train_sft, train_sft_with};

#[cfg(test)]
mod tidy;
