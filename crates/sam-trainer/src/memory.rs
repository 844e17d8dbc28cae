//! How much memory a training step needs, and how much to recompute to fit.
//!
//! [`StepShape::estimate`] adds up the peak of one SFT micro-batch on the
//! fused CPU path from the model's shape and the run's settings:
//!
//! - the frozen weights as loaded (matrices in their stored type, norms and
//!   biases in f32);
//! - the LoRA matrices, their gradients and AdamW's two moments;
//! - per *kept* adapted layer, what its backward reads (the fused layer's
//!   saved buffers: the two normed inputs, the attention input, q, k, v,
//!   the attention probabilities `[batch · heads · t · t]`, the MLP's gate
//!   and up, each adapter's `x · A`), and per *recomputed* layer only its
//!   input, which the graph keeps for every adapted layer;
//! - the working set on top of that: the larger of the loss head's blocks
//!   (its logits in blocks of at most 100 MB, the normed rows and their
//!   gradients) and the top layer's backward (its gradients, plus the
//!   saved buffers it recomputes);
//! - a fixed allowance for the rest of the process (code, thread stacks,
//!   tokenizer, allocator slack), calibrated on measured peaks.
//!
//! [`StepShape::choose`] then takes the fastest setting whose estimate fits
//! the memory available with a margin ([`fits`]): keep every activation
//! (`recompute_every` 0) if it fits, else recompute as few layers as fits
//! (every N-th for the largest N), else every layer.
//!
//! The estimate was held against measured peak RSS (`step_bench`, see
//! docs/benchmarks.md): within 4% on the test model (128 and 512 tokens,
//! every setting) and within 0.5% on the Qwen2.5-Coder-1.5B shape (kept,
//! every 2nd layer); a test keeps it within 12% of a short real run's peak.
//! It assumes a loss on every position, so it is up to one head block (100
//! MB) high where only responses are trained on (7% on the test model's
//! DPO step). It describes the fused path, which training takes on the
//! CPU; LoRA dropout runs the plain candle ops, which keep more.
//!
//! ```
//! use sam_trainer::{LoraConfig, ModelConfig, StepShape, WeightType};
//!
//! let model = ModelConfig::qwen2_5_coder_1_5b();
//! let lora = LoraConfig::default(); // rank 8 on q and v, every layer
//! let shape = StepShape { model: &model, weights: WeightType::F32, lora: &lora, batch: 1, seq: 512, weight_bytes: None };
//! let kept = shape.estimate(0);
//! assert!(kept.total() > shape.estimate(2).total());
//! // 24 GB free: keep the activations; 8.5 GB free: recompute some layers.
//! assert_eq!(shape.choose(24_000_000_000).recompute_every, 0);
//! let small = shape.choose(8_500_000_000);
//! assert!(small.recompute_every > 0 && small.fits);
//! ```

use crate::config::ModelConfig;
use crate::error::{Result, io_err};
use crate::job::WeightType;
use crate::lora::{LoraConfig, Target};
use candle_core::quantized::{GgmlDType, gguf_file};
use serde::Serialize;
use std::path::Path;

/// Most bytes of logits the fused loss head holds at once (the fused
/// head's block size).
const HEAD_BYTES: u64 = 100 << 20;

/// What the process holds besides the model and the step: code, thread
/// stacks, the tokenizer and data, the allocator's slack. Calibrated on
/// measured peaks of `step_bench` (docs/benchmarks.md).
const RUNTIME_BYTES: u64 = 60 << 20;

/// Copies of each LoRA matrix during a step: the variable, its gradient,
/// the gradients summed over micro-batches, AdamW's two moments.
const LORA_COPIES: u64 = 5;

/// Memory kept free on top of the estimate: a tenth of it (the estimate's
/// error on measured runs is a few percent) plus 512 MB for the rest of the
/// machine (the memory guard resumes a paused run at 0.5 GB available).
pub fn fits(estimate: u64, available: u64) -> bool {
    estimate + estimate / 10 + MARGIN_BYTES <= available
}

/// The fixed part of [`fits`]'s margin.
const MARGIN_BYTES: u64 = 512_000_000;

/// The shape of one training micro-batch: the model, how its weights are
/// stored, the adapters, and the token grid (`batch` sequences of `seq`
/// tokens; DPO trains chosen and rejected together, so twice its batch).
#[derive(Debug, Clone, Copy)]
pub struct StepShape<'a> {
    /// The model's shape.
    pub model: &'a ModelConfig,
    /// Storage type of the frozen weights.
    pub weights: WeightType,
    /// The adapters.
    pub lora: &'a LoraConfig,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence (the longest in a batch: shorter ones are padded).
    pub seq: usize,
    /// Bytes of the frozen weights as loaded, when read from the model file
    /// ([`weight_bytes`]: quantized weights kept quantized count at their
    /// stored size); `None`: from the shape, dense in `weights`' type.
    pub weight_bytes: Option<u64>,
}

/// Bytes the frozen weights of the model at `path` (a GGUF file or a
/// safetensors folder) take once loaded as `weights`. With
/// [`WeightType::Auto`] quantized tensors stay as stored — GGUF blocks,
/// mlx's packed integers with their scales and biases — and dense ones are
/// held in f32; with `F32` or `Bf16` everything is dense, so `None`: the
/// shape says it ([`StepShape::estimate`]).
pub fn weight_bytes(path: &Path, weights: WeightType) -> Result<Option<u64>> {
    if weights != WeightType::Auto {
        return Ok(None);
    }
    let mut total = 0u64;
    if path.is_dir() {
        let files = crate::load::safetensor_files(path)?;
        // SAFETY: read-only maps of the model's files, only for their headers' shapes and sizes.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files)? };
        let tensors = st.tensors();
        let packed: std::collections::HashSet<&str> = tensors
            .iter()
            .filter(|(_, v)| v.dtype() == safetensors::Dtype::U32)
            .filter_map(|(n, _)| n.strip_suffix(".weight"))
            .collect();
        for (name, view) in &tensors {
            let module = name.strip_suffix(".scales").or_else(|| name.strip_suffix(".biases"));
            let quantized = view.dtype() == safetensors::Dtype::U32 || module.is_some_and(|m| packed.contains(m));
            let elems: usize = view.shape().iter().product();
            total += if quantized { view.data().len() as u64 } else { 4 * elems as u64 };
        }
    } else {
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        let content = gguf_file::Content::read(&mut f)?;
        for info in content.tensor_infos.values() {
            let elems = info.shape.elem_count() as u64;
            total += match info.ggml_dtype {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => 4 * elems,
                q => elems / q.block_size() as u64 * q.type_size() as u64,
            };
        }
    }
    Ok(Some(total))
}

/// The estimated peak memory of a training step, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// The setting estimated (0: every activation kept).
    pub recompute_every: usize,
    /// Adapted layers whose activations are kept for the backward.
    pub layers_kept: usize,
    /// Adapted layers recomputed in the backward.
    pub layers_recomputed: usize,
    /// Frozen weights as loaded.
    pub weights: u64,
    /// LoRA matrices, gradients and optimiser moments.
    pub adapters: u64,
    /// Activations kept through the forward for the backward.
    pub activations: u64,
    /// Working buffers of the loss head or the top layer's backward,
    /// whichever is larger.
    pub working: u64,
    /// The rest of the process.
    pub runtime: u64,
}

impl MemoryEstimate {
    /// The estimated peak: the sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights + self.adapters + self.activations + self.working + self.runtime
    }
}

/// The setting [`StepShape::choose`] picked, with what it was based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecomputeChoice {
    /// Recompute every N-th adapted layer (0: keep every activation).
    pub recompute_every: usize,
    /// Its estimate.
    pub estimate: MemoryEstimate,
    /// The memory available it was chosen for, in bytes.
    pub available: u64,
    /// Whether the estimate fits that with the margin; false when even
    /// recomputing every layer does not (then `recompute_every` is 1).
    pub fits: bool,
}

impl StepShape<'_> {
    /// The adapted layers, lowest first.
    fn adapted(&self) -> Vec<usize> {
        self.lora.layers.indices(self.model.num_layers)
    }

    /// The estimated peak of one training micro-batch with every
    /// `recompute_every`-th adapted layer recomputed (0: none).
    pub fn estimate(&self, recompute_every: usize) -> MemoryEstimate {
        let c = self.model;
        let (h, inter, vocab) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
        let (dq, dkv) = ((c.num_heads * c.head_dim) as u64, (c.num_kv_heads * c.head_dim) as u64);
        let (b, t) = (self.batch.max(1) as u64, self.seq.max(1) as u64);
        let n = b * t;
        let f32b = 4u64;

        // Dense matrices as held; quantized ones kept quantized (`Auto`)
        // are counted by `stored_weights` when the caller read their size.
        let wb = match self.weights {
            WeightType::Auto | WeightType::F32 => 4,
            WeightType::Bf16 => 2,
        };
        let per_layer_matrices = 2 * h * dq + 2 * h * dkv + 3 * h * inter;
        let per_layer_f32 = 2 * h + if c.attention_bias { dq + 2 * dkv } else { 0 };
        let head = if c.tie_word_embeddings { 0 } else { vocab * h };
        let weights = self.weight_bytes.unwrap_or(
            wb * (vocab * h + head + c.num_layers as u64 * per_layer_matrices)
                + f32b * (c.num_layers as u64 * per_layer_f32 + h),
        );

        let dims = |t: Target| -> (u64, u64) {
            match t {
                Target::Q => (h, dq),
                Target::K | Target::V => (h, dkv),
                Target::O => (dq, h),
                Target::Gate | Target::Up => (h, inter),
                Target::Down => (inter, h),
            }
        };
        let r = self.lora.rank as u64;
        let targets = &self.lora.targets;
        let lora_per_layer: u64 = targets.iter().map(|&t| r * (dims(t).0 + dims(t).1)).sum();
        let adapted = self.adapted();
        let adapters = LORA_COPIES * f32b * lora_per_layer * adapted.len() as u64;

        // What a kept layer's forward saves for its backward (fused/layer.rs's `Saved`).
        let xa = r * targets.len() as u64;
        let ao = if targets.contains(&Target::O) { dq } else { 0 };
        let saved = f32b * (n * (3 * h + dq + 2 * dkv + 2 * inter + 2 + xa + ao) + b * c.num_heads as u64 * t * t);
        // Each adapted layer's input stays in the graph; so do the last
        // layer's output and the loss rows taken from it.
        let input = f32b * n * h;
        let lowest = adapted.first().copied();
        let recomputed = |li: usize| {
            recompute_every > 0 && lowest.is_some_and(|lo| li >= lo && (li - lo).is_multiple_of(recompute_every))
        };
        let layers_recomputed = adapted.iter().filter(|&&li| recomputed(li)).count();
        let layers_kept = adapted.len() - layers_recomputed;
        let activations = layers_kept as u64 * saved + (adapted.len() as u64 + 2) * input;

        // The loss head: its logits in blocks, the normed rows and their
        // gradient, the kept gradient and its copy for the backward.
        let rows = (HEAD_BYTES / (f32b * vocab)).max(16).min(n);
        let head_work = f32b * (rows * vocab + 5 * n * h);
        // The top layer's backward: its gradients (of the MLP, the residual,
        // attention, q/k/v, the input), plus its saved buffers when recomputed.
        let top_recomputed = adapted.last().is_some_and(|&li| recomputed(li));
        let layer_work = f32b * n * (2 * inter + 5 * h + 2 * dq + 2 * dkv) + if top_recomputed { saved } else { 0 };
        let working = if adapted.is_empty() { head_work } else { head_work.max(layer_work) };

        MemoryEstimate {
            recompute_every,
            layers_kept,
            layers_recomputed,
            weights,
            adapters,
            activations,
            working,
            runtime: RUNTIME_BYTES,
        }
    }

    /// The fastest setting whose estimate [`fits`] in `available` bytes:
    /// every activation kept, else as few layers recomputed as fit (every
    /// N-th for the largest such N), else every layer recomputed (with
    /// `fits` false).
    pub fn choose(&self, available: u64) -> RecomputeChoice {
        let n = self.adapted().len();
        let candidates = std::iter::once(0).chain((1..=n.max(1)).rev());
        let mut last = None;
        for every in candidates {
            let estimate = self.estimate(every);
            // Several N recompute as many layers; the first (largest) is enough.
            if last.is_some_and(|l: MemoryEstimate| l.layers_recomputed == estimate.layers_recomputed) {
                continue;
            }
            last = Some(estimate);
            if fits(estimate.total(), available) {
                return RecomputeChoice { recompute_every: every, estimate, available, fits: true };
            }
        }
        RecomputeChoice { recompute_every: 1, estimate: self.estimate(1), available, fits: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::Layers;

    fn shape<'a>(model: &'a ModelConfig, lora: &'a LoraConfig, seq: usize) -> StepShape<'a> {
        StepShape { model, weights: WeightType::F32, lora, batch: 1, seq, weight_bytes: None }
    }

    #[test]
    fn more_recomputation_needs_less_memory_and_the_choice_is_the_fastest_that_fits() {
        let m = ModelConfig::qwen2_5_coder_1_5b();
        let lora = LoraConfig::default();
        let s = shape(&m, &lora, 512);
        let kept = s.estimate(0);
        assert_eq!((kept.layers_kept, kept.layers_recomputed), (28, 0));
        let half = s.estimate(2);
        assert_eq!((half.layers_kept, half.layers_recomputed), (14, 14));
        let all = s.estimate(1);
        assert_eq!(all.layers_kept, 0);
        assert!(kept.total() > half.total() && half.total() > all.total());
        // The weights alone: 1.54 billion f32 values.
        assert!((6_100_000_000..6_300_000_000).contains(&kept.weights), "{kept:?}");
        let bf16 = StepShape { weights: WeightType::Bf16, ..s }.estimate(0);
        assert!(bf16.weights < kept.weights * 51 / 100 + 10_000_000);

        // Plenty of room: keep everything. Just less than that: recompute one layer.
        assert_eq!(s.choose(64_000_000_000).recompute_every, 0);
        let tight = kept.total() + kept.total() / 10 + MARGIN_BYTES - 1;
        let c = s.choose(tight);
        assert!(c.fits && c.estimate.layers_recomputed == 1 && c.recompute_every == 28, "{c:?}");
        // Between: the chosen setting fits, and the next faster one does not.
        let mid = (kept.total() + all.total()) / 2 + MARGIN_BYTES;
        let c = s.choose(mid);
        assert!(c.fits && fits(c.estimate.total(), mid), "{c:?}");
        let faster = (c.recompute_every + 1..=28)
            .map(|e| s.estimate(e))
            .find(|e| e.layers_recomputed < c.estimate.layers_recomputed);
        assert!(faster.is_some_and(|e| !fits(e.total(), mid)), "{c:?} {faster:?}");
        // No room at all: the least memory, flagged as not fitting.
        let c = s.choose(1_000_000_000);
        assert_eq!((c.recompute_every, c.fits), (1, false));
    }

    #[test]
    fn longer_sequences_and_fewer_adapted_layers() {
        let m = ModelConfig::qwen2_5_coder_1_5b();
        let lora = LoraConfig::default();
        // Attention probabilities grow with t²: seq 4096 cannot keep everything in 21 GB.
        assert_eq!(shape(&m, &lora, 512).choose(21_000_000_000).recompute_every, 0);
        assert!(shape(&m, &lora, 4096).choose(21_000_000_000).recompute_every > 0);
        // Adapters on the last 4 layers: only those keep activations.
        let last4 = LoraConfig { layers: Layers::Last(4), ..LoraConfig::default() };
        let e = shape(&m, &last4, 512).estimate(0);
        assert_eq!((e.layers_kept, e.layers_recomputed), (4, 0));
        assert!(e.activations < shape(&m, &lora, 512).estimate(0).activations / 5);
    }
}
