//! Text generation with a KV cache: greedy or sampled (temperature, top-p,
//! repetition penalty), stopping at end-of-sequence / end-of-turn tokens,
//! streaming each token to a callback.

use crate::error::Result;
use crate::model::{Decoder, KvCache, Mode};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateConfig {
    /// Most tokens to produce.
    pub max_new_tokens: usize,
    /// 0 (or below): greedy; otherwise logits are divided by it.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0: off).
    pub top_p: f64,
    /// Penalty on tokens already present (1.0: off), CTRL-style.
    pub repetition_penalty: f32,
    /// Sampling seed.
    pub seed: u64,
    /// Tokens that end generation (not emitted).
    pub stop_tokens: Vec<u32>,
    /// Apply the model's adapter, when it carries one (false: the base
    /// model alone).
    pub adapter: bool,
}

impl Default for GenerateConfig {
    /// Greedy, at most 256 tokens, no penalty, no stop tokens, adapter on.
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
            adapter: true,
        }
    }
}

fn pick(logits: &mut [f32], history: &[u32], cfg: &GenerateConfig, rng: &mut StdRng) -> u32 {
    if cfg.repetition_penalty != 1.0 {
        for &t in history {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / cfg.repetition_penalty } else { *l * cfg.repetition_penalty };
            }
        }
    }
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0);
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, (((l - max) as f64) / cfg.temperature).exp())).collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    if cfg.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p.1;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * total;
    for (id, p) in &probs {
        r -= p;
        if r <= 0.0 {
            return *id;
        }
    }
    probs.last().map(|p| p.0).unwrap_or_else(argmax)
}

/// Generates a continuation of `prompt`, calling `on_token` with each new
/// token as it is produced (return `false` from it to stop). Returns the
/// generated tokens without the stop token.
///
/// ```
/// use sam_trainer::{GenerateConfig, LoadOptions, ModelConfig, generate, random_model};
/// # fn main() -> sam_trainer::Result<()> {
/// let model = random_model(ModelConfig::tiny(), &LoadOptions::default(), 0)?;
/// let cfg = GenerateConfig { max_new_tokens: 5, ..Default::default() };
/// let mut streamed = Vec::new();
/// let ids = generate(&model, &[1, 40, 41], &cfg, |id| {
///     streamed.push(id);
///     true
/// })?;
/// assert_eq!(ids, streamed);
/// assert!(ids.len() <= 5);
/// # Ok(()) }
/// ```
pub fn generate(
    model: &Decoder,
    prompt: &[u32],
    cfg: &GenerateConfig,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let mode = if cfg.adapter { Mode::INFER } else { Mode::BASE };
    let mut cache = KvCache::new();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    let mut feed: Vec<u32> = prompt.to_vec();
    for _ in 0..cfg.max_new_tokens {
        let logits = model.next_logits(&feed, mode, &mut cache)?;
        let mut logits: Vec<f32> = logits.to_vec1()?;
        let next = pick(&mut logits, &history, cfg, &mut rng);
        if cfg.stop_tokens.contains(&next) {
            break;
        }
        out.push(next);
        history.push(next);
        if !on_token(next) {
            break;
        }
        feed = vec![next];
    }
    Ok(out)
}
