//! Evaluation: loss and perplexity on a split, for the base model alone and
//! with its adapter, as the report the gate reads (`eval.json`).

use crate::error::{Error, Result, io_err, json_err};
use crate::loss::{mean_loss, sequences};
use crate::model::{Decoder, Mode};
use sam_prep::cache::TokenizedExample;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Loss and perplexity of one model variant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Mean cross-entropy per trained-on token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
}

impl Score {
    fn from_loss(loss: f64) -> Self {
        Self { loss, perplexity: loss.exp() }
    }
}

/// The evaluation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Which split was evaluated (`test`, `valid`).
    pub split: String,
    /// Examples evaluated.
    pub examples: usize,
    /// Trained-on tokens scored.
    pub tokens: usize,
    /// The base model alone.
    pub base: Score,
    /// The base model with the adapter, when one is attached.
    pub adapter: Option<Score>,
}

impl EvalReport {
    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(json_err(path))?;
        std::fs::write(path, text + "\n").map_err(io_err(path))
    }

    /// Relative loss change of the adapter over the base (negative: better).
    pub fn loss_delta(&self) -> Option<f64> {
        self.adapter.map(|a| (a.loss - self.base.loss) / self.base.loss)
    }
}

/// Scores `examples` (cut to `max_seq_len`) with the base model and, when
/// the model carries an adapter, with it.
pub fn evaluate(
    model: &Decoder,
    split: &str,
    examples: &[TokenizedExample],
    max_seq_len: usize,
    batch: usize,
    pad_id: u32,
) -> Result<EvalReport> {
    let (seqs, _) = sequences(examples, max_seq_len);
    if seqs.is_empty() {
        return Err(Error::InvalidData(format!("the {split} split has nothing to score")));
    }
    let (base, tokens) = mean_loss(model, &seqs, batch, pad_id, Mode::BASE)?;
    let adapter = if model.lora_config().is_some() {
        Some(Score::from_loss(mean_loss(model, &seqs, batch, pad_id, Mode::INFER)?.0))
    } else {
        None
    };
    Ok(EvalReport { split: split.to_string(), examples: seqs.len(), tokens, base: Score::from_loss(base), adapter })
}
