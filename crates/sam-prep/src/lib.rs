//! Dataset preparation for sam: the model's own chat template, its real
//! tokenizer, loss masks, truncation and stable stratified splits.
//!
//! Input is a store export or any JSONL files of examples
//! ([`prepare::read_inputs`]); output is a dataset folder that sam's trainer
//! reads through [`cache::PreparedData`] and that `mlx_lm.lora --data DIR`
//! reads unchanged. Main pieces:
//!
//! - [`template::ChatTemplate`]: the model's Jinja chat template rendered as
//!   transformers renders it (the same token ids as `apply_chat_template`
//!   over the templates of Llama 2/3, Mistral, Gemma, Phi-3, Qwen, DeepSeek,
//!   Command-R, gpt-oss, SmolLM, Granite, LFM2 and GLM).
//! - [`encode::Encoder`]: rendering + tokenisation + per-token loss masks
//!   (every assistant turn and its end-of-turn token), from the template's
//!   `{% generation %}` markers or inferred, and an error when neither works.
//! - [`fast_bpe::FastBpe`]: the same ids as the `tokenizers` crate for
//!   GPT-2-style byte-level BPE, several times faster (prep's hot path).
//! - [`split::SplitRatios`]: the stable id-hash split.
//! - [`prepare::Preparer`]: the whole pipeline, writing JSONL splits, the
//!   token [`cache`] and `manifest.json`.
//! - [`trl::write`]: the same examples and splits in the forms Hugging Face
//!   TRL's `SFTTrainer` and `DPOTrainer` read (`sam export --format trl`).
//!
//! Prep reads exports and files, never the store's database.
//!
//! ```
//! use sam_prep::template::{ChatTemplate, CHATML_TEMPLATE, TemplateTokens};
//! use sam_prep::split::SplitRatios;
//! use sam_schema::Message;
//!
//! let t = ChatTemplate::new(CHATML_TEMPLATE, TemplateTokens::default())?;
//! let text = t.render(&[Message::user("Hi")], true)?;
//! assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
//! // A split depends on the example's id only.
//! let r = SplitRatios::default();
//! assert_eq!(r.split_of("ex-1"), r.split_of("ex-1"));
//! # Ok::<(), sam_prep::Error>(())
//! ```
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bench_rows;
pub mod cache;
pub mod encode;
pub mod fast_bpe;
pub mod prepare;
pub mod split;
pub mod template;
pub mod trl;

use std::path::PathBuf;

/// Errors of dataset preparation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The chat template does not compile or render, or raised an error
    /// (the template's own message, as `raise_exception` gave it).
    #[error("{0}")]
    Template(String),
    /// The template rendered the conversation, but sam cannot tell which
    /// part of the text is an assistant turn (the reason).
    #[error("{0}")]
    Unmaskable(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the token cache failed.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// The model's files could not be read.
    #[error(transparent)]
    Model(#[from] sam_models::Error),
}
