//! Dataset preparation for sam (being built): chat templates, tokenisation,
//! loss masks, truncation, stable stratified splits.
//!
//! - [`cache`]: the tokenised cache that prep writes and the trainer reads.
//! - [`template`]: the model's chat template, rendered like transformers.
//! - [`encode`]: token ids and loss masks.
#![deny(missing_docs)]

pub mod cache;
pub mod encode;
pub mod template;

/// Errors of dataset preparation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The chat template does not compile or render, or raised an error.
    #[error("{0}")]
    Template(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
