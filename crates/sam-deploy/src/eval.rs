//! Scoring adapters: the [`Evaluator`] trait the gates call, and
//! [`ModelEvaluator`], the one that runs the base model with sam-trainer.
//!
//! Every score of a gate comes from one evaluator in one process: the
//! candidate and production are scored on the same tokens by the same loaded
//! base model, with their adapters swapped in turn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sam_models::BaseModel;
use sam_prep::cache::{TokenizedExample, TokenizedPair};
use sam_prep::template::ChatTemplate;
use sam_schema::Message;
use sam_trainer::{Decoder, EvalConfig, EvalReport, GenerateConfig, LoadOptions, ModelConfig, Variants};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What is scored: the base model alone, or the base model with an adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// What reports call it: a version id, or `base`.
    pub label: String,
    /// A key that changes whenever the adapter's bytes do (a version's
    /// content hash; `base` for the base model); scores are cached by it.
    pub key: String,
    /// The adapter folder (`None`: the base model alone).
    pub adapter: Option<PathBuf>,
}

impl Subject {
    /// The base model alone.
    pub fn base() -> Self {
        Self { label: "base".into(), key: "base".into(), adapter: None }
    }

    /// The base model with the adapter in `dir`.
    pub fn adapter(label: impl Into<String>, key: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self { label: label.into(), key: key.into(), adapter: Some(dir.into()) }
    }

    /// Whether this is the base model alone.
    pub fn is_base(&self) -> bool {
        self.adapter.is_none()
    }
}

/// Loss and perplexity of one subject on one set of examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Mean cross-entropy per scored token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Examples scored.
    pub examples: usize,
}

/// One generated answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The answer's token ids (without the stop token).
    pub ids: Vec<u32>,
    /// The answer as text, special tokens left out.
    pub text: String,
    /// The answer as text with special tokens written out.
    pub raw: String,
    /// Special (added) tokens the answer contains, other than stop tokens.
    pub special_tokens: Vec<String>,
    /// Whether it ended on a stop token (`false`: it ran to the token limit).
    pub stopped: bool,
    /// Mean negative log-likelihood of the answer's tokens under the base
    /// model alone (nats per token): how plausible the text is as language,
    /// whatever the adapter made of it. `None` for an empty answer.
    pub base_loss: Option<f64>,
}

/// Scores adapters for the gates. Implemented by [`ModelEvaluator`]; a gate
/// may be handed any other (a remote scorer, a recorded one in tests of the
/// gates' logic).
pub trait Evaluator {
    /// The configuration of the loaded base model (for shape checks).
    fn model_config(&self) -> &ModelConfig;

    /// The fingerprint of the loaded base model's files (sam-models'
    /// `BaseModel::fingerprint`: its configuration and the head of each
    /// weight file). It names the model on disk, so it is the same whatever
    /// dtype the evaluator computes in and however the trainer holds the
    /// weights (widened to f32, kept quantized), and a slot stays usable
    /// when either changes.
    fn fingerprint(&mut self) -> Result<String>;

    /// Loads the subject's adapter onto the base model (an error when it
    /// does not fit).
    fn check(&mut self, subject: &Subject) -> Result<()>;

    /// Mean loss over the masked-in tokens of `examples`.
    fn score(&mut self, subject: &Subject, examples: &[TokenizedExample]) -> Result<Score>;

    /// Summed log-probabilities `(chosen, rejected)` of each pair's answers.
    fn pair_logps(&mut self, subject: &Subject, pairs: &[TokenizedPair]) -> Result<Vec<(f64, f64)>>;

    /// A greedy answer to a user message (rendered with the model's chat
    /// template), at most `max_new_tokens` long.
    fn answer(&mut self, subject: &Subject, prompt: &str, max_new_tokens: usize) -> Result<Answer>;
}

/// Settings of [`ModelEvaluator`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Longer examples are cut to this many tokens.
    pub max_seq_len: usize,
    /// Sequences per forward pass.
    pub batch: usize,
    /// Storage type of the frozen weights.
    pub dtype: sam_trainer::DType,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { max_seq_len: 1024, batch: 4, dtype: sam_trainer::DType::F32 }
    }
}

/// The evaluator that runs the base model with sam-trainer: loads it once,
/// swaps adapters in and out, caches scores by subject and example set.
pub struct ModelEvaluator {
    model: Decoder,
    info: BaseModel,
    template: ChatTemplate,
    pad: u32,
    stop: Vec<u32>,
    opts: EvalOptions,
    /// The key of the adapter on the model now.
    loaded: Option<String>,
    memo: HashMap<(String, String), Score>,
    fingerprint: Option<String>,
}

impl std::fmt::Debug for ModelEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEvaluator").field("model", &self.info.name()).field("loaded", &self.loaded).finish()
    }
}

fn digest_examples(examples: &[TokenizedExample]) -> String {
    let mut h = blake3::Hasher::new();
    for e in examples {
        h.update(&(e.input_ids.len() as u64).to_le_bytes());
        for (&t, &m) in e.input_ids.iter().zip(&e.loss_mask) {
            h.update(&t.to_le_bytes());
            h.update(&[u8::from(m)]);
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

impl ModelEvaluator {
    /// Loads the base model at `path` (a Hugging Face folder or a GGUF file).
    pub fn load(path: &Path, opts: EvalOptions) -> Result<Self> {
        let info = BaseModel::open(path).map_err(|e| Error::Eval(format!("{}: {e}", path.display())))?;
        if info.tokenizer().is_none() {
            return Err(Error::Eval(format!("{}: the model has no tokenizer", path.display())));
        }
        let (template, _) = ChatTemplate::for_model(&info)?;
        let model = sam_trainer::load_model(path, &LoadOptions { dtype: opts.dtype, ..Default::default() })?;
        let sp = info.special_tokens();
        let pad = sp.pad.as_ref().or(sp.eos.as_ref()).map(|t| t.id).unwrap_or(0);
        let mut stop = sp.stop_ids.clone();
        stop.extend(model.config().eos_token_ids.iter().copied());
        stop.sort_unstable();
        stop.dedup();
        Ok(Self { model, info, template, pad, stop, opts, loaded: None, memo: HashMap::new(), fingerprint: None })
    }

    /// The base model's files, read (tokenizer, template, special tokens).
    pub fn base_model(&self) -> &BaseModel {
        &self.info
    }

    /// The loaded model (with whatever adapter was used last).
    pub fn model(&self) -> &Decoder {
        &self.model
    }

    /// The padding token id used for batches.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Puts the subject's adapter on the model (when it has one); returns
    /// the variant that scores it.
    fn select(&mut self, s: &Subject) -> Result<Variants> {
        let Some(dir) = &s.adapter else { return Ok(Variants::Base) };
        if self.loaded.as_deref() != Some(s.key.as_str()) {
            self.loaded = None;
            sam_trainer::load_adapter(&mut self.model, dir)
                .map_err(|e| Error::InvalidAdapter(format!("{}: {e}", dir.display())))?;
            self.loaded = Some(s.key.clone());
        }
        Ok(Variants::Adapter)
    }

    /// Whether `e` keeps a scored token once cut to `max_seq_len` (what
    /// sam-trainer's evaluation counts).
    fn scorable(&self, e: &TokenizedExample) -> bool {
        let n = e.input_ids.len().min(e.loss_mask.len()).min(self.opts.max_seq_len);
        n >= 2 && e.loss_mask[1..n].iter().any(|&m| m)
    }

    /// sam-trainer's evaluation of `examples` with one variant.
    fn evaluate(&self, examples: &[TokenizedExample], variants: Variants, per_example: bool) -> Result<EvalReport> {
        let cfg = EvalConfig {
            split: "gate".into(),
            max_seq_len: self.opts.max_seq_len,
            batch_size: self.opts.batch,
            pad_id: self.pad,
            max_examples: None,
            variants,
            per_example,
        };
        Ok(sam_trainer::evaluate(&self.model, examples, &cfg)?)
    }

    fn tokenizer(&self) -> &sam_models::Tokenizer {
        self.info.tokenizer().expect("checked at load")
    }
}

impl Evaluator for ModelEvaluator {
    fn model_config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn fingerprint(&mut self) -> Result<String> {
        if self.fingerprint.is_none() {
            let fp = self.info.fingerprint().map_err(|e| Error::Eval(format!("fingerprinting the base model: {e}")))?;
            self.fingerprint = Some(fp);
        }
        Ok(self.fingerprint.clone().unwrap_or_default())
    }

    fn check(&mut self, subject: &Subject) -> Result<()> {
        self.select(subject).map(|_| ())
    }

    fn score(&mut self, subject: &Subject, examples: &[TokenizedExample]) -> Result<Score> {
        let memo_key = (subject.key.clone(), digest_examples(examples));
        if let Some(s) = self.memo.get(&memo_key) {
            return Ok(*s);
        }
        let variants = self.select(subject)?;
        if !examples.iter().any(|e| self.scorable(e)) {
            return Err(Error::Eval("no example with a scored token".into()));
        }
        let r = self.evaluate(examples, variants, false)?;
        let loss = r.adapter.or(r.base).map(|s| s.loss).unwrap_or(f64::NAN);
        let s = Score { loss, perplexity: loss.exp(), tokens: r.tokens, examples: r.examples };
        self.memo.insert(memo_key, s);
        Ok(s)
    }

    fn pair_logps(&mut self, subject: &Subject, pairs: &[TokenizedPair]) -> Result<Vec<(f64, f64)>> {
        let variants = self.select(subject)?;
        // Each answer after its prompt, the answer trained on: its summed
        // NLL is minus its log-probability.
        let seq = |p: &TokenizedPair, side: &str, answer: &[u32]| TokenizedExample {
            id: format!("{}\u{0}{side}", p.id),
            domain: p.domain.clone(),
            input_ids: p.prompt_ids.iter().chain(answer).copied().collect(),
            loss_mask: (0..p.prompt_ids.len() + answer.len()).map(|i| i >= p.prompt_ids.len()).collect(),
        };
        let examples: Vec<TokenizedExample> =
            pairs.iter().flat_map(|p| [seq(p, "chosen", &p.chosen_ids), seq(p, "rejected", &p.rejected_ids)]).collect();
        if !examples.iter().any(|e| self.scorable(e)) {
            return Ok(Vec::new());
        }
        let r = self.evaluate(&examples, variants, true)?;
        let logp: HashMap<&str, f64> =
            r.per_example.iter().filter_map(|e| Some((e.id.as_str(), -(e.adapter_nll.or(e.base_nll)?)))).collect();
        // A pair counts when both its answers kept a token (as in DPO).
        Ok(pairs
            .iter()
            .filter_map(|p| {
                let c = logp.get(format!("{}\u{0}chosen", p.id).as_str())?;
                let r = logp.get(format!("{}\u{0}rejected", p.id).as_str())?;
                Some((*c, *r))
            })
            .collect())
    }

    fn answer(&mut self, subject: &Subject, prompt: &str, max_new_tokens: usize) -> Result<Answer> {
        let variants = self.select(subject)?;
        let text = self.template.render(&[Message::user(prompt)], true)?;
        let enc = self.tokenizer().encode(text.as_str(), false).map_err(|e| Error::Eval(format!("tokenising: {e}")))?;
        let prompt_ids = enc.get_ids().to_vec();
        let cfg = GenerateConfig {
            max_new_tokens,
            stop_tokens: self.stop.clone(),
            adapter: variants == Variants::Adapter,
            ..Default::default()
        };
        let ids = sam_trainer::generate(&self.model, &prompt_ids, &cfg, |_| true)?;
        let stopped = ids.len() < max_new_tokens;
        let tok = self.tokenizer();
        let decode = |skip: bool| tok.decode(&ids, skip).map_err(|e| Error::Eval(format!("decoding: {e}")));
        let (text, raw) = (decode(true)?, decode(false)?);
        let special: Vec<String> = ids
            .iter()
            .filter(|id| !self.stop.contains(id))
            .filter_map(|&id| {
                let t = tok.id_to_token(id)?;
                tok.get_added_vocabulary().is_special_token(&t).then_some(t)
            })
            .collect();
        let base_loss = if ids.is_empty() {
            None
        } else {
            let answer = TokenizedExample {
                id: "answer".into(),
                domain: String::new(),
                input_ids: prompt_ids.iter().chain(&ids).copied().collect(),
                loss_mask: (0..prompt_ids.len() + ids.len()).map(|i| i >= prompt_ids.len()).collect(),
            };
            // The whole answer is scored, however long the prompt.
            let cfg = EvalConfig {
                max_seq_len: usize::MAX,
                batch_size: 1,
                pad_id: self.pad,
                variants: Variants::Base,
                ..EvalConfig::default()
            };
            sam_trainer::evaluate(&self.model, std::slice::from_ref(&answer), &cfg)?.base.map(|s| s.loss)
        };
        Ok(Answer { ids, text, raw, special_tokens: special, stopped, base_loss })
    }
}
