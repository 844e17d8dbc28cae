//! Evaluation: loss and perplexity on a split, for the base model alone and
//! with its adapter, as the report the gate reads (`eval.json`).

use crate::error::{Error, Result, io_err, json_err};
use crate::loss::{indexed_sequences, mean_loss, sequence_nll};
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
    /// The base model alone (`None` when [`EvalConfig::variants`] left it
    /// out).
    pub base: Option<Score>,
    /// The base model with the adapter, when one is attached and
    /// [`EvalConfig::variants`] asked for it.
    pub adapter: Option<Score>,
    /// One entry per scored example, in the order given, when
    /// [`EvalConfig::per_example`] asked for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_example: Vec<ExampleScore>,
}

/// The summed negative log-likelihood of one example's trained-on tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleScore {
    /// The example's id.
    pub id: String,
    /// Its trained-on tokens (after cutting to [`EvalConfig::max_seq_len`]).
    pub tokens: usize,
    /// Summed NLL under the base model alone (nats), when scored.
    pub base_nll: Option<f64>,
    /// Summed NLL with the adapter (nats), when scored.
    pub adapter_nll: Option<f64>,
}

impl EvalReport {
    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(json_err(path))?;
        std::fs::write(path, text + "\n").map_err(io_err(path))
    }

    /// Relative loss change of the adapter over the base (negative: better),
    /// when both were scored.
    pub fn loss_delta(&self) -> Option<f64> {
        let (a, b) = (self.adapter?, self.base?);
        Some((a.loss - b.loss) / b.loss)
    }
}

/// Which variants of the model [`evaluate`] scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variants {
    /// The base model, and the adapter when one is attached.
    #[default]
    Both,
    /// The base model alone.
    Base,
    /// The adapter alone (an error when none is attached).
    Adapter,
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
    /// Which variants to score.
    pub variants: Variants,
    /// Also report each example's summed NLL ([`EvalReport::per_example`]).
    pub per_example: bool,
}

impl Default for EvalConfig {
    /// The `test` split, sequences up to 1024 tokens, one at a time, pad id
    /// 0, every example, base and adapter, no per-example scores.
    fn default() -> Self {
        Self {
            split: "test".into(),
            max_seq_len: 1024,
            batch_size: 1,
            pad_id: 0,
            max_examples: None,
            variants: Variants::Both,
            per_example: false,
        }
    }
}

/// Scores `examples` (cut to `cfg.max_seq_len`; those with no trained-on
/// token left are skipped) with the base model and, when the model carries
/// an adapter, with it (or only one of them, per [`EvalConfig::variants`]):
/// mean cross-entropy over the trained-on tokens and its perplexity, and on
/// request each example's summed NLL, without keeping gradients.
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
/// let cfg = EvalConfig { per_example: true, ..Default::default() };
/// let report = evaluate(&model, &[ex], &cfg)?;
/// assert_eq!((report.examples, report.tokens), (1, 3));
/// assert!(report.adapter.is_none(), "no adapter attached");
/// let base = report.base.unwrap();
/// assert!((report.per_example[0].base_nll.unwrap() / 3.0 - base.loss).abs() < 1e-4);
/// # Ok(()) }
/// ```
pub fn evaluate(model: &Decoder, examples: &[TokenizedExample], cfg: &EvalConfig) -> Result<EvalReport> {
    let examples = &examples[..examples.len().min(cfg.max_examples.unwrap_or(usize::MAX))];
    let (idx, seqs): (Vec<usize>, Vec<_>) = indexed_sequences(examples, cfg.max_seq_len).into_iter().unzip();
    let split = cfg.split.as_str();
    if seqs.is_empty() {
        return Err(Error::InvalidData(format!("the {split} split has nothing to score")));
    }
    let has_adapter = model.lora_config().is_some();
    let (want_base, want_adapter) = match cfg.variants {
        Variants::Both => (true, has_adapter),
        Variants::Base => (true, false),
        Variants::Adapter if has_adapter => (false, true),
        Variants::Adapter => {
            return Err(Error::InvalidData("evaluating the adapter, but the model carries none".into()));
        }
    };
    let (batch, pad_id) = (cfg.batch_size, cfg.pad_id);
    let tokens: usize = seqs.iter().map(|s| s.mask[1..].iter().filter(|&&m| m).count()).sum();
    let score = |mode: Mode<'_>| -> Result<(Score, Option<Vec<f64>>)> {
        if cfg.per_example {
            let nll = sequence_nll(model, &seqs, batch, pad_id, mode)?;
            Ok((Score::from_loss(nll.iter().sum::<f64>() / tokens as f64), Some(nll)))
        } else {
            Ok((Score::from_loss(mean_loss(model, &seqs, batch, pad_id, mode)?.0), None))
        }
    };
    let base = want_base.then(|| score(Mode::BASE)).transpose()?;
    let adapter = want_adapter.then(|| score(Mode::INFER)).transpose()?;
    let per_example = if cfg.per_example {
        let col = |v: &Option<(Score, Option<Vec<f64>>)>, i: usize| v.as_ref().and_then(|(_, n)| Some(n.as_ref()?[i]));
        seqs.iter()
            .zip(&idx)
            .enumerate()
            .map(|(i, (s, &e))| ExampleScore {
                id: examples[e].id.clone(),
                tokens: s.mask[1..].iter().filter(|&&m| m).count(),
                base_nll: col(&base, i),
                adapter_nll: col(&adapter, i),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(EvalReport {
        split: split.to_string(),
        examples: seqs.len(),
        tokens,
        base: base.map(|b| b.0),
        adapter: adapter.map(|a| a.0),
        per_example,
    })
}
