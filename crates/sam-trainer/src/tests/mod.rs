//! The crate's tests that need its internals (gradients, DPO's pieces, the
//! loops on token slices), on the tiny Qwen2 fixture and the real test
//! model, with the helpers they share.
#![allow(dead_code)]

mod dpo;
mod gradients;
mod quantized;

// The helpers are the integration tests' own, in one file.
#[path = "../../tests/common/mod.rs"]
mod common;
pub use common::*;
