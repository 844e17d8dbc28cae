//! Masked next-token cross-entropy, computed only where it counts.
//!
//! `loss_mask[i]` marks token `i` as trained on, so position `i - 1`
//! predicts it. Only those positions go through the output head, in chunks,
//! so the `[tokens × vocab]` logits of prompt tokens are never built.

use crate::error::{Error, Result};
use crate::model::{Decoder, Mode};
use candle_core::Tensor;
use sam_dataset::TokenizedExample;

/// One example, cut to the length the model will see.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Per token: whether it is trained on.
    pub mask: &'a [bool],
}

/// A padded batch ready for the model.
#[derive(Debug)]
pub struct Batch {
    /// `[b, t]` token ids (right-padded).
    pub ids: Tensor,
    /// Flat row indices (`b * t + pos`) of positions whose next token counts.
    pub rows: Tensor,
    /// The token each of those rows must predict.
    pub targets: Tensor,
    /// Number of predicted tokens.
    pub n_targets: usize,
    /// Number of real (unpadded) tokens.
    pub n_tokens: usize,
}

impl Batch {
    /// Pads `seqs` on the right with `pad` and collects the loss positions.
    pub fn new(seqs: &[Sequence<'_>], pad: u32, dev: &candle_core::Device) -> Result<Self> {
        let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        if t == 0 {
            return Err(Error::InvalidData("empty batch".into()));
        }
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut n_tokens = 0;
        for (b, s) in seqs.iter().enumerate() {
            if s.ids.len() != s.mask.len() {
                return Err(Error::InvalidData(format!("{} ids but {} mask entries", s.ids.len(), s.mask.len())));
            }
            n_tokens += s.ids.len();
            ids.extend_from_slice(s.ids);
            ids.extend(std::iter::repeat_n(pad, t - s.ids.len()));
            for i in 1..s.ids.len() {
                if s.mask[i] {
                    rows.push((b * t + i - 1) as u32);
                    targets.push(s.ids[i]);
                }
            }
        }
        let n_targets = rows.len();
        Ok(Self {
            ids: Tensor::from_vec(ids, (seqs.len(), t), dev)?,
            rows: Tensor::from_vec(rows, n_targets, dev)?,
            targets: Tensor::from_vec(targets, n_targets, dev)?,
            n_targets,
            n_tokens,
        })
    }
}

/// Cuts examples to `max_len` and drops those with nothing left to learn.
pub fn sequences(examples: &[TokenizedExample], max_len: usize) -> (Vec<Sequence<'_>>, usize) {
    let kept = indexed_sequences(examples, max_len);
    let skipped = examples.len() - kept.len();
    (kept.into_iter().map(|(_, s)| s).collect(), skipped)
}

/// [`sequences`], each with the index of its example in `examples`.
pub(crate) fn indexed_sequences(examples: &[TokenizedExample], max_len: usize) -> Vec<(usize, Sequence<'_>)> {
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let n = ex.input_ids.len().min(ex.loss_mask.len()).min(max_len);
        let seq = Sequence { ids: &ex.input_ids[..n], mask: &ex.loss_mask[..n] };
        if n >= 2 && seq.mask[1..].iter().any(|&m| m) {
            out.push((i, seq));
        }
    }
    out
}

/// Sum of the negative log-likelihoods of the batch's targets (a scalar
/// tensor that backpropagates into the adapters), or `None` when the batch
/// has nothing to predict.
pub fn nll_sum(model: &Decoder, batch: &Batch, mode: Mode<'_>) -> Result<Option<Tensor>> {
    nll_sum_impl(model, batch, mode, true)
}

/// [`nll_sum`]; `grad` false when no gradient will be asked for.
fn nll_sum_impl(model: &Decoder, batch: &Batch, mode: Mode<'_>, grad: bool) -> Result<Option<Tensor>> {
    if batch.n_targets == 0 {
        return Ok(None);
    }
    Ok(Some(target_nll_impl(model, batch, mode, grad)?.sum_all()?))
}

/// The negative log-likelihood of each of the batch's targets (`[n_targets]`,
/// in [`Batch::rows`] order), differentiable into the adapters when `mode`
/// uses them. On the CPU the final norm, the output head and the
/// cross-entropy run fused, without keeping logits (DPO's per-sequence
/// log-probabilities are segment sums of this, [`segment_nll`]).
#[cfg(test)]
pub fn target_nll(model: &Decoder, batch: &Batch, mode: Mode<'_>) -> Result<Tensor> {
    target_nll_impl(model, batch, mode, true)
}

fn target_nll_impl(model: &Decoder, batch: &Batch, mode: Mode<'_>, grad: bool) -> Result<Tensor> {
    if batch.n_targets == 0 {
        return Ok(Tensor::zeros(0, candle_core::DType::F32, model.device())?);
    }
    model.target_nll(&batch.ids, &batch.rows, &batch.targets, mode, grad)
}

/// The summed NLL of each sequence of `batch` (`[sequences]`, in batch
/// order): the per-target NLL (without a backward graph when `grad` is
/// false: evaluation, DPO reference log-probabilities) summed per sequence by a `[sequences, targets]` 0/1 matrix product.
pub(crate) fn segment_nll(model: &Decoder, batch: &Batch, mode: Mode<'_>, grad: bool) -> Result<Tensor> {
    let (n, t) = batch.ids.dims2()?;
    let nll = target_nll_impl(model, batch, mode, grad)?.to_dtype(candle_core::DType::F32)?;
    let rows: Vec<u32> = batch.rows.to_vec1()?;
    let mut seg = vec![0f32; n * batch.n_targets];
    for (j, r) in rows.iter().enumerate() {
        seg[(*r as usize / t) * batch.n_targets + j] = 1.0;
    }
    let seg = Tensor::from_vec(seg, (n, batch.n_targets), model.device())?;
    Ok(seg.matmul(&nll.unsqueeze(1)?)?.squeeze(1)?)
}

/// The summed NLL of each of `seqs`, `batch` at a time, without gradients.
pub(crate) fn sequence_nll(
    model: &Decoder,
    seqs: &[Sequence<'_>],
    batch: usize,
    pad: u32,
    mode: Mode<'_>,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch.max(1)) {
        let b = Batch::new(chunk, pad, model.device())?;
        if b.n_targets == 0 {
            out.extend(std::iter::repeat_n(0.0, chunk.len()));
            continue;
        }
        let v: Vec<f32> = segment_nll(model, &b, mode, false)?.detach().to_vec1()?;
        out.extend(v.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Mean loss and token count over `seqs`, evaluated `batch` at a time
/// without keeping gradients (validation, test, reports).
pub fn mean_loss(
    model: &Decoder,
    seqs: &[Sequence<'_>],
    batch: usize,
    pad: u32,
    mode: Mode<'_>,
) -> Result<(f64, usize)> {
    let mut sum = 0f64;
    let mut n = 0usize;
    for chunk in seqs.chunks(batch.max(1)) {
        let b = Batch::new(chunk, pad, model.device())?;
        if let Some(l) = nll_sum_impl(model, &b, mode, false)? {
            sum += l.detach().to_scalar::<f32>()? as f64;
            n += b.n_targets;
        }
    }
    if n == 0 {
        return Err(Error::InvalidData("no trained-on tokens to evaluate".into()));
    }
    Ok((sum / n as f64, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_pads_and_shifts_the_mask() {
        let a = Sequence { ids: &[1, 2, 3, 4], mask: &[false, false, true, true] };
        let b = Sequence { ids: &[7, 8], mask: &[false, true] };
        let batch = Batch::new(&[a, b], 0, &candle_core::Device::Cpu).unwrap();
        assert_eq!(batch.ids.to_vec2::<u32>().unwrap(), vec![vec![1, 2, 3, 4], vec![7, 8, 0, 0]]);
        // Position i predicts token i + 1: rows 1, 2 of the first sequence
        // and row 4 (= 1 * 4 + 0) of the second.
        assert_eq!(batch.rows.to_vec1::<u32>().unwrap(), vec![1, 2, 4]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), vec![3, 4, 8]);
        assert_eq!((batch.n_targets, batch.n_tokens), (3, 6));
    }

    #[test]
    fn mismatched_mask_is_an_error() {
        let a = Sequence { ids: &[1, 2, 3], mask: &[false, true] };
        assert!(Batch::new(&[a], 0, &candle_core::Device::Cpu).is_err());
    }
}
