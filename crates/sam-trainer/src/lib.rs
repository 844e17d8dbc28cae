//! sam-trainer: LoRA fine-tuning (SFT and DPO) of Llama and Qwen2 decoders
//! on the CPU with candle, plus evaluation, generation and adapters in
//! PEFT's or mlx-lm's layout.
//!
//! It reads a base model (a Hugging Face folder, an mlx-lm folder or a GGUF
//! file) and a prepared dataset (the token cache sam-prep writes), and writes run
//! folders: adapters, checkpoints, metrics, evaluation reports. It never
//! opens a database.
//!
//! The ways in:
//! - **Train**: a [`JobSpec`] (model, data, [`JobMode`] — SFT, DPO or SFT
//!   then DPO —, a [`TrainConfig`] and a [`DpoConfig`]) run by a [`Job`] in
//!   its own folder. [`Job::run`] starts it, or continues it exactly where it
//!   stopped (after a stop request, a crash or a kill), and reports to an
//!   [`Observer`]; it returns a [`JobOutcome`] with the model and its final
//!   adapter.
//! - **Evaluate**: [`evaluate`] with an [`EvalConfig`] → [`EvalReport`]
//!   (loss and perplexity, base model and adapter).
//! - **Generate**: [`generate`] with a [`GenerateConfig`].
//! - **Adapters**: [`save_adapter`] / [`load_adapter`] ([`AdapterFormat`]:
//!   PEFT or mlx-lm), [`Decoder::merge_lora`] and [`save_hf_model`] to fuse.
//! - **Models**: [`load_model`] ([`LoadOptions`]) gives a [`Decoder`];
//!   [`random_model`] builds one of any [`ModelConfig`] shape;
//!   [`ModelSource`] names either for a job.
//! - **Memory**: [`StepShape::estimate`] gives a step's peak memory
//!   ([`MemoryEstimate`]) from the model's shape and the settings;
//!   [`StepShape::choose`] the fastest recomputation setting that fits
//!   ([`RecomputeChoice`], for [`ComputeConfig::recompute_every`]);
//!   [`weight_bytes`] reads quantized weights' stored size from a model file.
//!
//! A quantized base — an mlx-lm quantized folder (affine, 2–8 bits, with a
//! quantized embedding and tied or separate head) or a GGUF in Q4_0, Q4_1,
//! Q8_0, Q4_K, Q5_K or Q6_K — stays quantized in memory by default
//! ([`LoadOptions::keep_quantized`], [`WeightType::Auto`]): QLoRA-style,
//! every product dequantizes a bounded tile of rows into f32, and the LoRA
//! weights, their gradients and the AdamW moments are f32. Training,
//! evaluation and generation read the same quantized weights; an adapter
//! trained on an mlx 4-bit folder is what mlx-lm loads on top of it
//! (`docs/mlx-quantized-check.md`).
//!
//! ```
//! use sam_trainer::{
//!     Duration, EvalConfig, GenerateConfig, Job, JobControl, JobMode, JobSpec, ModelConfig, ModelSource,
//!     NoopObserver, Split, TokenizedExample, evaluate, generate,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! // A prepared dataset: what `sam prep` (sam-prep) writes, here by hand.
//! let data = tmp.path().join("dataset");
//! let examples: Vec<TokenizedExample> = (0..4)
//!     .map(|i| TokenizedExample {
//!         id: format!("ex{i}"),
//!         domain: "code".into(),
//!         input_ids: vec![1, 10 + i, 20 + i, 30, 31, 2],
//!         loss_mask: vec![false, false, false, true, true, true],
//!     })
//!     .collect();
//! sam_dataset::write_sft(&sam_dataset::sft_cache_path(&data, Split::Train), &examples)?;
//!
//! // Two SFT steps on a tiny random model, in the run folder runs/first.
//! let mut spec = JobSpec::new(ModelSource::random(ModelConfig::tiny(), 0), &data, JobMode::Sft);
//! spec.train.duration = Duration::Iters(2);
//! spec.train.optim.lr = 1e-2;
//! let job = Job::create(&tmp.path().join("runs"), "first", spec)?;
//! let outcome = job.run(&mut NoopObserver, JobControl::default())?;
//! assert_eq!(outcome.sft.as_ref().map(|o| o.steps), Some(2));
//! assert!(outcome.adapter_dir.join("adapter_model.safetensors").is_file());
//!
//! // The model comes back with its adapter: evaluate it and generate.
//! let model = outcome.model.expect("a completed job returns its model");
//! let report = evaluate(&model, &examples, &EvalConfig::default())?;
//! assert!(report.adapter.is_some());
//! let ids = generate(&model, &[1, 10], &GenerateConfig { max_new_tokens: 3, ..Default::default() }, |_| true)?;
//! assert!(ids.len() <= 3);
//! # Ok(()) }
//! ```
//!
//! Inside, one optimisation loop serves SFT and DPO (seeded data order
//! replayed on resume, AdamW on a warmup + cosine schedule, clipping,
//! validation keeping the best adapter, checkpoints, a memory guard between
//! steps), and on the CPU each decoder layer and the loss head run as fused
//! graph nodes with a hand-written backward; see `docs/architecture.md`.
#![deny(missing_docs)]

mod adapter;
mod checkpoint;
mod config;
mod dpo;
mod error;
mod eval;
mod fit;
mod forward;
mod frozen;
mod fused;
mod generate;
mod job;
mod layer;
mod load;
mod lora;
mod loss;
mod memory;
mod model;
mod observe;
mod ops;
mod optim;
mod plain;
mod quant;
mod settings;
mod sft;

pub use adapter::{AdapterFormat, load_adapter, save_adapter, save_hf_model};
pub use candle_core::{DType, Device};
pub use checkpoint::{Checkpoint, LoopState};
pub use config::{Arch, ModelConfig};
pub use dpo::{DpoConfig, DpoLoss, Reference};
pub use error::{Error, Result};
pub use eval::{EvalConfig, EvalReport, ExampleScore, Score, Variants, evaluate};
pub use fit::TrainOutcome;
pub use generate::{GenerateConfig, generate};
pub use job::{Job, JobControl, JobMode, JobOutcome, JobSpec, WeightType};
pub use load::{LoadOptions, ModelSource, load_model, random_model, read_config};
pub use lora::{Layers, LoraConfig, Target};
pub use memory::{MemoryEstimate, RecomputeChoice, StepShape, fits, weight_bytes};
pub use model::{Decoder, KvCache, Mode};
pub use observe::{EvalMetrics, NoopObserver, Observer, PreferenceMetrics, PreferenceStats, StepMetrics};
pub use sam_dataset::{PreparedData, Split, TokenizedExample, TokenizedPair};
pub use sam_runs::RunStatus;
pub use settings::{BatchConfig, ComputeConfig, Duration, OptimConfig, OutputConfig, TrainConfig};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tidy;
