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

/// B starts at zero, which makes A's gradient zero by construction: give B
/// small random values so every variable is expected to get a gradient.
pub(crate) fn randomise_b(model: &crate::model::Decoder) {
    for (k, (name, var)) in model.lora_vars().into_iter().enumerate() {
        if name.ends_with("lora_B") {
            // Deterministic pseudo-random values, so the test never flakes.
            let n: usize = var.dims().iter().product();
            let v: Vec<f32> = (0..n).map(|i| 0.05 * ((i * 7919 + k * 104_729) as f32 * 0.618).sin()).collect();
            var.set(&candle_core::Tensor::from_vec(v, var.dims(), var.device()).unwrap()).unwrap();
        }
    }
}
