//! Dataset preparation for sam (being built): chat templates, tokenisation,
//! loss masks, truncation, stable stratified splits.
//!
//! - [`cache`]: the tokenised cache that prep writes and the trainer reads.
#![deny(missing_docs)]

pub mod cache;
