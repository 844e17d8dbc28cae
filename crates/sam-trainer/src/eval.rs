//! Evaluation: loss and perplexity on a split, for the base model alone and
//! with its adapter, as the report the gate reads (`eval.json`).

use crate::error::{Error, Result, io_err, json_err};
use crate::loss::{mean_loss, sequences};
use crate::model::{Decoder, Mode};
use sam_dataset::TokenizedExample;
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

/// How to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// The split's name, as recorded in the report (`test`, `valid`, a
    /// golden set's name).
    pub split: String,
    /// Longer examples are cut to this many tokens.
    pub max_seq_len: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Token used for padding.
    pub pad_id: u32,
    /// Score at most this many examples, the first ones (`None`: all).
    pub max_examples: Option<usize>,
}

impl Default for EvalConfig {
    /// The `test` split, sequences up to 1024 tokens, one at a time, pad id
    /// 0, every example.
    fn default() -> Self {
        Self { split: "test".into(), max_seq_len: 1024, batch_size: 1, pad_id: 0, max_examples: None }
    }
}

/// Scores `examples` (cut to `cfg.max_seq_len`) with the base model and,
/// when the model carries an adapter, with it: mean cross-entropy over the
/// trained-on tokens and its perplexity, without keeping gradients.
///
/// ```
/// use sam_trainer::{EvalConfig, LoadOptions, ModelConfig, TokenizedExample, evaluate, random_model};
/// # fn main() -> sam_trainer::Result<()> {
/// let model = random_model(ModelConfig::tiny(), &LoadOptions::default(), 0)?;
/// let ex = TokenizedExample {
///     id: "1".into(),
///     domain: "code".into(),
///     input_ids: vec![1, 40, 41, 42, 2],
///     loss_mask: vec![false, false, true, true, true],
/// };
/// let report = evaluate(&model, &[ex], &EvalConfig::default())?;
/// assert_eq!((report.examples, report.tokens), (1, 3));
/// assert!(report.adapter.is_none(), "no adapter attached");
/// # Ok(()) }
/// ```
pub fn evaluate(model: &Decoder, examples: &[TokenizedExample], cfg: &EvalConfig) -> Result<EvalReport> {
    let examples = &examples[..examples.len().min(cfg.max_examples.unwrap_or(usize::MAX))];
    let (seqs, _) = sequences(examples, cfg.max_seq_len);
    let split = cfg.split.as_str();
    if seqs.is_empty() {
        return Err(Error::InvalidData(format!("the {split} split has nothing to score")));
    }
    let (batch, pad_id) = (cfg.batch_size, cfg.pad_id);
    let (base, tokens) = mean_loss(model, &seqs, batch, pad_id, Mode::BASE)?;
    let adapter = if model.lora_config().is_some() {
        Some(Score::from_loss(mean_loss(model, &seqs, batch, pad_id, Mode::INFER)?.0))
    } else {
        None
    };
    Ok(EvalReport { split: split.to_string(), examples: seqs.len(), tokens, base: Score::from_loss(base), adapter })
}
