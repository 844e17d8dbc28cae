//! Supervised fine-tuning of LoRA adapters: masked cross-entropy over the
//! trained-on tokens, run by the shared loop ([`crate::fit`]).
//!
//! Batches of `batch_size` right-padded sequences, `grad_accum`
//! micro-batches per optimiser step, the loss being the mean cross-entropy
//! over all trained-on tokens of the step.

use crate::error::{Error, Result};
use crate::fit::{Control, Objective, TrainOutcome, fit};
use crate::loss::{Batch, Sequence, mean_loss, nll_sum, sequences};
use crate::model::{Decoder, Mode};
use crate::observe::Observer;
use crate::settings::TrainConfig;
use candle_core::{Device, Tensor};
use sam_dataset::TokenizedExample;

/// The SFT loop on already-attached adapters (see [`Decoder::attach_lora`]),
/// with its runtime controls: stop requests, the memory guard, resuming from
/// a checkpoint. `train` and `valid` are tokenised examples (`valid` may be
/// empty).
pub fn train_sft_with(
    model: &mut Decoder,
    cfg: &TrainConfig,
    train: &[TokenizedExample],
    valid: &[TokenizedExample],
    observer: &mut dyn Observer,
    control: &mut Control<'_>,
) -> Result<TrainOutcome> {
    let (train_seqs, skipped) = sequences(train, cfg.batch.max_seq_len);
    let (valid_seqs, _) = sequences(valid, cfg.batch.max_seq_len);
    if train_seqs.is_empty() {
        return Err(Error::InvalidData("no training example has a trained-on token".into()));
    }
    let mut obj =
        SftObjective { train: train_seqs, valid: valid_seqs, batch: cfg.batch.batch_size, pad: cfg.batch.pad_id };
    fit(model, cfg, &mut obj, observer, control, skipped)
}

/// Masked cross-entropy on sequences.
struct SftObjective<'a> {
    train: Vec<Sequence<'a>>,
    valid: Vec<Sequence<'a>>,
    batch: usize,
    pad: u32,
}

impl Objective for SftObjective<'_> {
    type Micro = Batch;

    fn phase(&self) -> &'static str {
        "sft"
    }
    fn len(&self) -> usize {
        self.train.len()
    }
    fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for s in &self.train {
            h.update(&(s.ids.len() as u64).to_le_bytes());
            for id in s.ids {
                h.update(&id.to_le_bytes());
            }
            h.update(&s.mask.iter().map(|&m| u8::from(m)).collect::<Vec<_>>());
        }
        h.finalize().to_hex()[..16].to_string()
    }
    fn prepare(&self, idx: &[usize], dev: &Device) -> Result<Batch> {
        let seqs: Vec<Sequence<'_>> = idx.iter().map(|&i| self.train[i]).collect();
        Batch::new(&seqs, self.pad, dev)
    }
    fn count(&self, b: &Batch) -> (usize, usize) {
        (b.n_targets, b.n_tokens)
    }
    fn loss(&mut self, model: &Decoder, b: &Batch, units: f64, mode: Mode<'_>) -> Result<Option<Tensor>> {
        Ok(match nll_sum(model, b, mode)? {
            Some(nll) => Some((nll / units)?),
            None => None,
        })
    }
    fn validate(&self, model: &Decoder, _step: usize, _observer: &mut dyn Observer) -> Result<Option<f64>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        Ok(Some(mean_loss(model, &self.valid, self.batch, self.pad, Mode::INFER)?.0))
    }
}
