//! sam-trainer: LoRA fine-tuning of Llama and Qwen2 decoders on candle.
//!
//! Main types:
//! - [`Decoder`]: one configurable Llama/Qwen2 decoder whose projections are
//!   [`Linear`] layers that can carry LoRA adapters; loaded by
//!   [`load_model`] from a Hugging Face folder or a GGUF file.
//! - [`LoraConfig`]: rank, alpha, dropout, targets, layers, rsLoRA.
//!
//! ```no_run
//! use sam_trainer::{load_model, LoadOptions, LoraConfig, Mode};
//! # fn main() -> sam_trainer::Result<()> {
//! let mut model = load_model("model.gguf".as_ref(), &LoadOptions::default())?;
//! model.attach_lora(&LoraConfig::default(), 0)?;
//! let ids = candle_core::Tensor::new(&[[1u32, 2, 3]], model.device())?;
//! let logits = model.logits(&ids, Mode::INFER)?;
//! # let _ = logits; Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod adapter;
pub mod config;
pub mod error;
pub mod eval;
pub mod generate;
pub mod load;
pub mod lora;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod train;

pub use adapter::{AdapterFormat, load_adapter, save_adapter, save_hf_model};
pub use candle_core::{DType, Device};
pub use config::{Arch, ModelConfig};
pub use error::{Error, Result};
pub use eval::{EvalReport, Score, evaluate};
pub use generate::{GenerateConfig, generate};
pub use load::{LoadOptions, load_model, random_model, read_config};
pub use lora::{Layers, Linear, LoraConfig, Target};
pub use loss::{Batch, Sequence, mean_loss, nll_sum};
pub use model::{Decoder, KvCache, Mode};
pub use train::{
    Duration, EvalMetrics, NoopObserver, Observer, SftTrainer, StepMetrics, TrainConfig, TrainOutcome, Trainer,
    lora_gradients, train_sft,
};
