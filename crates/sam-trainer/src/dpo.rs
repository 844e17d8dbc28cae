//! Direct Preference Optimisation (DPO) of LoRA adapters on preference pairs.
//!
//! The loss of a pair with prompt `x`, chosen answer `y_w` and rejected
//! answer `y_l` is built on the log-ratio difference
//! `h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))`,
//! log-probabilities being summed over the response tokens only:
//! - [`DpoLoss::Sigmoid`]: `−(1−ε)·log σ(β·h) − ε·log σ(−β·h)` (ε: label
//!   smoothing, the "conservative DPO" of Mitchell 2023; ε = 0 is plain DPO);
//! - [`DpoLoss::Ipo`]: `(h − 1/(2β))²`;
//! - [`DpoLoss::Hinge`]: `max(0, 1 − β·h)`.
//!
//! Rewards are `β·(log π − log π_ref)` for each answer; the margin is
//! chosen − rejected, the accuracy the fraction of pairs whose margin is
//! positive.
//!
//! The reference policy is never a second copy of the weights: its
//! log-probabilities are computed once per pair before training, without
//! gradients, either with the adapter switched off ([`Reference::Base`]) or
//! with the adapter the model carries when training starts
//! ([`Reference::Initial`]: continuing from a production or SFT adapter),
//! and kept beside the pairs, so each step runs the policy only. Chosen and
//! rejected answers of a micro-batch go through the model as one batch.

use crate::error::{Error, Result};
use crate::fit::{Control, Objective, TrainOutcome, fit};
use crate::loss::{Batch, Sequence, segment_nll};
use crate::model::{Decoder, Mode};
use crate::observe::{Observer, PreferenceMetrics, PreferenceStats};
use crate::settings::TrainConfig;
use candle_core::{DType, Device, Tensor};
use sam_dataset::TokenizedPair;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shape of the preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `−log σ(β·h)` (with optional label smoothing): the DPO paper's loss.
    #[default]
    Sigmoid,
    /// Identity preference optimisation: `(h − 1/(2β))²`.
    Ipo,
    /// `max(0, 1 − β·h)` (SLiC-style hinge).
    Hinge,
}

/// Which policy the log-ratios are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// The base model with the adapter switched off.
    #[default]
    Base,
    /// The model as it is when training starts, adapter included (an
    /// earlier adapter loaded or trained before DPO).
    Initial,
}

/// DPO settings on top of [`TrainConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// Strength of the KL constraint to the reference (β).
    pub beta: f64,
    /// Loss variant.
    pub loss: DpoLoss,
    /// Probability that a pair's labels are flipped (conservative DPO);
    /// only used by [`DpoLoss::Sigmoid`]. In `[0, 0.5)`.
    pub label_smoothing: f64,
    /// Reference policy.
    pub reference: Reference,
}

impl Default for DpoConfig {
    /// β = 0.1, sigmoid loss, no label smoothing, the base model as reference.
    fn default() -> Self {
        Self { beta: 0.1, loss: DpoLoss::Sigmoid, label_smoothing: 0.0, reference: Reference::Base }
    }
}

impl DpoConfig {
    /// Checks the values' ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::InvalidConfig(format!("DPO beta must be > 0, got {}", self.beta)));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::InvalidConfig(format!(
                "DPO label smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            )));
        }
        Ok(())
    }
}

/// Per-pair log-probabilities (`[n]` tensors) of the policy and the reference.
#[derive(Debug, Clone)]
pub struct PairLogps {
    /// `log π(y_w|x)`.
    pub policy_chosen: Tensor,
    /// `log π(y_l|x)`.
    pub policy_rejected: Tensor,
    /// `log π_ref(y_w|x)` (no gradient).
    pub ref_chosen: Tensor,
    /// `log π_ref(y_l|x)` (no gradient).
    pub ref_rejected: Tensor,
}

/// The loss and rewards of a set of pairs.
#[derive(Debug, Clone)]
pub struct DpoOutput {
    /// Per-pair loss, `[n]` (differentiable in the policy log-probs).
    pub losses: Tensor,
    /// Per-pair reward of the chosen answer, `β·(log π − log π_ref)`, `[n]`, detached.
    pub chosen_rewards: Tensor,
    /// Per-pair reward of the rejected answer, `[n]`, detached.
    pub rejected_rewards: Tensor,
}

/// `log σ(x)`, numerically stable and differentiable:
/// `min(x, 0) − log(1 + exp(−|x|))`.
fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let min0 = (x - x.relu()?)?;
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    min0 - soft
}

/// The per-pair DPO loss and the rewards (see the module docs for the formulas).
pub fn dpo_loss(logps: &PairLogps, cfg: &DpoConfig) -> Result<DpoOutput> {
    cfg.validate()?;
    let chosen_ratio = (&logps.policy_chosen - logps.ref_chosen.detach())?;
    let rejected_ratio = (&logps.policy_rejected - logps.ref_rejected.detach())?;
    let h = (&chosen_ratio - &rejected_ratio)?;
    let beta = cfg.beta;
    let losses = match cfg.loss {
        DpoLoss::Sigmoid => {
            let bh = (&h * beta)?;
            let pos = (log_sigmoid(&bh)? * -(1.0 - cfg.label_smoothing))?;
            if cfg.label_smoothing > 0.0 { (pos - (log_sigmoid(&bh.neg()?)? * cfg.label_smoothing)?)? } else { pos }
        }
        DpoLoss::Ipo => (h - 1.0 / (2.0 * beta))?.sqr()?,
        DpoLoss::Hinge => (h * -beta)?.affine(1.0, 1.0)?.relu()?,
    };
    Ok(DpoOutput {
        losses,
        chosen_rewards: (chosen_ratio.detach() * beta)?,
        rejected_rewards: (rejected_ratio.detach() * beta)?,
    })
}

impl PreferenceStats {
    /// Sums of the per-pair values of `out` (call [`Self::finish`] after
    /// accumulating every batch).
    fn add(&mut self, out: &DpoOutput) -> Result<()> {
        let l: Vec<f32> = out.losses.detach().to_dtype(DType::F32)?.to_vec1()?;
        let c: Vec<f32> = out.chosen_rewards.to_dtype(DType::F32)?.to_vec1()?;
        let r: Vec<f32> = out.rejected_rewards.to_dtype(DType::F32)?.to_vec1()?;
        for i in 0..l.len() {
            self.pairs += 1;
            self.loss += l[i] as f64;
            self.reward_chosen += c[i] as f64;
            self.reward_rejected += r[i] as f64;
            self.margin += (c[i] - r[i]) as f64;
            self.accuracy += f64::from(u8::from(c[i] > r[i]));
        }
        Ok(())
    }

    fn finish(mut self) -> Self {
        let n = self.pairs.max(1) as f64;
        self.loss /= n;
        self.reward_chosen /= n;
        self.reward_rejected /= n;
        self.margin /= n;
        self.accuracy /= n;
        self
    }

    /// The statistics of one [`DpoOutput`].
    #[cfg(test)]
    pub(crate) fn of(out: &DpoOutput) -> Result<Self> {
        let mut s = Self::default();
        s.add(out)?;
        Ok(s.finish())
    }
}

/// A pair cut to the model's length, as two masked sequences.
#[derive(Debug, Clone)]
pub struct PairSeqs {
    chosen: (Vec<u32>, Vec<bool>),
    rejected: (Vec<u32>, Vec<bool>),
}

impl PairSeqs {
    /// Prompt + response, the response masked in, cut to `max_len` tokens;
    /// `None` when either response has no token left.
    pub fn new(pair: &TokenizedPair, max_len: usize) -> Option<Self> {
        let seq = |resp: &[u32]| -> Option<(Vec<u32>, Vec<bool>)> {
            let mut ids: Vec<u32> = pair.prompt_ids.iter().chain(resp).copied().collect();
            let mut mask: Vec<bool> = (0..ids.len()).map(|i| i >= pair.prompt_ids.len()).collect();
            ids.truncate(max_len);
            mask.truncate(max_len);
            (ids.len() >= 2 && mask[1..].iter().any(|&m| m)).then_some((ids, mask))
        };
        Some(Self { chosen: seq(&pair.chosen_ids)?, rejected: seq(&pair.rejected_ids)? })
    }

    /// The chosen sequence.
    pub fn chosen(&self) -> Sequence<'_> {
        Sequence { ids: &self.chosen.0, mask: &self.chosen.1 }
    }

    /// The rejected sequence.
    pub fn rejected(&self) -> Sequence<'_> {
        Sequence { ids: &self.rejected.0, mask: &self.rejected.1 }
    }
}

/// Cuts `pairs` to `max_len`; returns the usable ones and how many were dropped.
pub fn pair_sequences(pairs: &[TokenizedPair], max_len: usize) -> (Vec<PairSeqs>, usize) {
    let out: Vec<PairSeqs> = pairs.iter().filter_map(|p| PairSeqs::new(p, max_len)).collect();
    let skipped = pairs.len() - out.len();
    (out, skipped)
}

/// Summed log-probabilities of the masked-in tokens of each of `seqs`
/// (`[seqs.len()]`, differentiable into the adapters when `mode` uses them),
/// in one forward pass over the padded batch.
#[cfg(test)]
pub(crate) fn sequence_logps(model: &Decoder, seqs: &[Sequence<'_>], pad: u32, mode: Mode<'_>) -> Result<Tensor> {
    sequence_logps_impl(model, seqs, pad, mode, true)
}

fn sequence_logps_impl(model: &Decoder, seqs: &[Sequence<'_>], pad: u32, mode: Mode<'_>, grad: bool) -> Result<Tensor> {
    let batch = Batch::new(seqs, pad, model.device())?;
    if seqs.iter().any(|s| s.mask.iter().skip(1).all(|&m| !m)) {
        return Err(Error::InvalidData("a sequence has no response token".into()));
    }
    // Per-target NLL through the fused norm + head + cross-entropy (no
    // logits kept), then segment sums.
    Ok(segment_nll(model, &batch, mode, grad)?.neg()?)
}

/// Policy log-probabilities of `pairs`: chosen and rejected answers in one
/// forward pass. Returns `(chosen, rejected)`, each `[pairs.len()]`.
#[cfg(test)]
pub(crate) fn pair_logps(model: &Decoder, pairs: &[&PairSeqs], pad: u32, mode: Mode<'_>) -> Result<(Tensor, Tensor)> {
    pair_logps_impl(model, pairs, pad, mode, true)
}

fn pair_logps_impl(
    model: &Decoder,
    pairs: &[&PairSeqs],
    pad: u32,
    mode: Mode<'_>,
    grad: bool,
) -> Result<(Tensor, Tensor)> {
    let seqs: Vec<Sequence<'_>> = pairs.iter().map(|p| p.chosen()).chain(pairs.iter().map(|p| p.rejected())).collect();
    let all = sequence_logps_impl(model, &seqs, pad, mode, grad)?;
    let n = pairs.len();
    Ok((all.narrow(0, 0, n)?, all.narrow(0, n, n)?))
}

/// Reference log-probabilities of every pair, `(chosen, rejected)`, in the
/// order of `pairs`, computed `batch` pairs at a time without gradients.
pub fn reference_logps(
    model: &Decoder,
    pairs: &[PairSeqs],
    batch: usize,
    pad: u32,
    reference: Reference,
) -> Result<Vec<(f32, f32)>> {
    let mode = match reference {
        Reference::Base => Mode::BASE,
        Reference::Initial => Mode::INFER,
    };
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let refs: Vec<&PairSeqs> = chunk.iter().collect();
        let (c, r) = pair_logps_impl(model, &refs, pad, mode, false)?;
        let c: Vec<f32> = c.detach().to_vec1()?;
        let r: Vec<f32> = r.detach().to_vec1()?;
        out.extend(c.into_iter().zip(r));
    }
    Ok(out)
}

/// Loss and rewards of `idx` pairs under the current policy.
#[allow(clippy::too_many_arguments)]
fn batch_output(
    model: &Decoder,
    pairs: &[PairSeqs],
    refs: &[(f32, f32)],
    idx: &[usize],
    pad: u32,
    mode: Mode<'_>,
    dpo: &DpoConfig,
    grad: bool,
) -> Result<DpoOutput> {
    let sel: Vec<&PairSeqs> = idx.iter().map(|&i| &pairs[i]).collect();
    let (policy_chosen, policy_rejected) = pair_logps_impl(model, &sel, pad, mode, grad)?;
    let dev = model.device();
    let ref_chosen = Tensor::from_vec(idx.iter().map(|&i| refs[i].0).collect::<Vec<_>>(), idx.len(), dev)?;
    let ref_rejected = Tensor::from_vec(idx.iter().map(|&i| refs[i].1).collect::<Vec<_>>(), idx.len(), dev)?;
    dpo_loss(&PairLogps { policy_chosen, policy_rejected, ref_chosen, ref_rejected }, dpo)
}

/// Preference statistics of `pairs` under the current policy (adapter on,
/// no dropout), against the reference log-probs `refs`.
pub fn evaluate_pairs(
    model: &Decoder,
    pairs: &[PairSeqs],
    refs: &[(f32, f32)],
    batch: usize,
    pad: u32,
    dpo: &DpoConfig,
) -> Result<PreferenceStats> {
    if pairs.len() != refs.len() {
        return Err(Error::InvalidData(format!("{} pairs but {} reference log-probs", pairs.len(), refs.len())));
    }
    let mut stats = PreferenceStats::default();
    let all: Vec<usize> = (0..pairs.len()).collect();
    for idx in all.chunks(batch.max(1)) {
        stats.add(&batch_output(model, pairs, refs, idx, pad, Mode::INFER, dpo, false)?)?;
    }
    Ok(stats.finish())
}

/// The DPO loop on already-attached adapters (see [`Decoder::attach_lora`]).
/// `cfg.batch_size` counts pairs (each runs two sequences); the reference
/// log-probs are computed first, per `dpo.reference`. `valid` may be empty;
/// the best adapter (lowest validation DPO loss) is left on the model.
/// Validations are reported to [`Observer::on_eval`] with the DPO loss (and
/// `perplexity` set to `exp(loss)`, which has no meaning here) and, with the
/// rewards, to [`Observer::on_preference`].
#[cfg(test)]
pub(crate) fn train_dpo(
    model: &mut Decoder,
    cfg: &TrainConfig,
    dpo: &DpoConfig,
    train: &[TokenizedPair],
    valid: &[TokenizedPair],
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    train_dpo_with(model, cfg, dpo, train, valid, observer, &mut Control::default(), None)
}

/// [`train_dpo`] with runtime controls (stop requests, memory guard,
/// resuming from a checkpoint) and a folder caching the reference
/// log-probabilities (`reference_cache`, usually the prepared dataset's
/// `cache/`): they are computed once per pair set, reference policy and
/// model, and read back by later runs and by a resumed one. On resume the
/// model must carry the adapter the run *started* from until the reference
/// log-probs are known; the checkpoint's values replace it afterwards.
#[allow(clippy::too_many_arguments)]
pub fn train_dpo_with(
    model: &mut Decoder,
    cfg: &TrainConfig,
    dpo: &DpoConfig,
    train: &[TokenizedPair],
    valid: &[TokenizedPair],
    observer: &mut dyn Observer,
    control: &mut Control<'_>,
    reference_cache: Option<&Path>,
) -> Result<TrainOutcome> {
    dpo.validate()?;
    if cfg.batch.batch_size == 0 || cfg.batch.grad_accum == 0 {
        return Err(Error::InvalidConfig("batch size and accumulation must be ≥ 1".into()));
    }
    if model.lora_vars().is_empty() {
        return Err(Error::InvalidConfig("no adapters attached".into()));
    }
    model.set_recompute_every(cfg.compute.recompute_every);
    let (train_pairs, skipped) = pair_sequences(train, cfg.batch.max_seq_len);
    let (valid_pairs, _) = pair_sequences(valid, cfg.batch.max_seq_len);
    if train_pairs.is_empty() {
        return Err(Error::InvalidData("no preference pair has a response token within max_seq_len".into()));
    }
    let (train_refs, valid_refs) = cached_reference_logps(
        model,
        &train_pairs,
        &valid_pairs,
        cfg.batch.batch_size,
        cfg.batch.pad_id,
        dpo.reference,
        reference_cache,
    )?;
    let mut obj = DpoObjective {
        train: train_pairs,
        valid: valid_pairs,
        train_refs,
        valid_refs,
        dpo,
        batch: cfg.batch.batch_size,
        pad: cfg.batch.pad_id,
        stats: PreferenceStats::default(),
    };
    fit(model, cfg, &mut obj, observer, control, skipped)
}

/// Reference `(chosen, rejected)` log-probs, one per pair.
type RefLogps = Vec<(f32, f32)>;

/// The reference log-probs of the training and validation pairs, from
/// `cache` when it holds them for this model, reference and data, else
/// computed (and written there).
fn cached_reference_logps(
    model: &Decoder,
    train: &[PairSeqs],
    valid: &[PairSeqs],
    batch: usize,
    pad: u32,
    reference: Reference,
    cache: Option<&Path>,
) -> Result<(RefLogps, RefLogps)> {
    let compute = || -> Result<_> {
        Ok((
            reference_logps(model, train, batch, pad, reference)?,
            reference_logps(model, valid, batch, pad, reference)?,
        ))
    };
    let Some(dir) = cache else {
        return compute();
    };
    let key = reference_key(model, train, valid, batch, pad, reference)?;
    let path = dir.join(format!("dpo-reference-{key}.safetensors"));
    let to_vec = |t: &Tensor| -> Result<Vec<(f32, f32)>> {
        let rows: Vec<Vec<f32>> = t.to_vec2()?;
        Ok(rows.into_iter().map(|r| (r[0], r[1])).collect())
    };
    if path.is_file()
        && let Ok(map) = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        && let (Some(t), Some(v)) = (map.get("train"), map.get("valid"))
    {
        let (t, v) = (to_vec(t)?, to_vec(v)?);
        if t.len() == train.len() && v.len() == valid.len() {
            tracing::debug!(path = %path.display(), "reference log-probs read from the cache");
            return Ok((t, v));
        }
    }
    let (t, v) = compute()?;
    let as_tensor = |x: &[(f32, f32)]| -> Result<Tensor> {
        let flat: Vec<f32> = x.iter().flat_map(|(a, b)| [*a, *b]).collect();
        Ok(Tensor::from_vec(flat, (x.len(), 2), &candle_core::Device::Cpu)?)
    };
    let map: std::collections::HashMap<String, Tensor> =
        [("train".to_string(), as_tensor(&t)?), ("valid".to_string(), as_tensor(&v)?)].into_iter().collect();
    // A cache that cannot be written only costs time next run.
    let written = sam_home::atomic::write_via(
        &path,
        |e| Error::Io { path: path.clone(), source: e },
        |tmp| Ok(candle_core::safetensors::save(&map, tmp)?),
    );
    if let Err(e) = written {
        tracing::warn!("could not cache the DPO reference log-probs: {e}");
    }
    Ok((t, v))
}

/// What the reference log-probs depend on: the model, the reference policy
/// (and its adapter's values), the pairs as cut, the padding and batching.
fn reference_key(
    model: &Decoder,
    train: &[PairSeqs],
    valid: &[PairSeqs],
    batch: usize,
    pad: u32,
    reference: Reference,
) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(model.fingerprint()?.as_bytes());
    h.update(&[reference as u8]);
    if reference == Reference::Initial {
        for (name, v) in model.lora_vars() {
            h.update(name.as_bytes());
            for x in v.as_tensor().flatten_all()?.to_vec1::<f32>()? {
                h.update(&x.to_le_bytes());
            }
        }
    }
    h.update(&(batch as u64).to_le_bytes());
    h.update(&pad.to_le_bytes());
    for (split, pairs) in [(0u8, train), (1, valid)] {
        h.update(&[split]);
        h.update(pair_fingerprint(pairs).as_bytes());
    }
    Ok(h.finalize().to_hex()[..24].to_string())
}

fn pair_fingerprint(pairs: &[PairSeqs]) -> String {
    let mut h = blake3::Hasher::new();
    for p in pairs {
        for s in [p.chosen(), p.rejected()] {
            h.update(&(s.ids.len() as u64).to_le_bytes());
            for id in s.ids {
                h.update(&id.to_le_bytes());
            }
            h.update(&s.mask.iter().map(|&m| u8::from(m)).collect::<Vec<_>>());
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

/// The DPO loss on pairs against precomputed reference log-probs.
struct DpoObjective<'a> {
    train: Vec<PairSeqs>,
    valid: Vec<PairSeqs>,
    train_refs: Vec<(f32, f32)>,
    valid_refs: Vec<(f32, f32)>,
    dpo: &'a DpoConfig,
    batch: usize,
    pad: u32,
    /// The current step's training statistics.
    stats: PreferenceStats,
}

impl Objective for DpoObjective<'_> {
    type Micro = Vec<usize>;

    fn phase(&self) -> &'static str {
        "dpo"
    }
    fn len(&self) -> usize {
        self.train.len()
    }
    fn fingerprint(&self) -> String {
        pair_fingerprint(&self.train)
    }
    fn prepare(&self, idx: &[usize], _dev: &Device) -> Result<Vec<usize>> {
        Ok(idx.to_vec())
    }
    fn count(&self, idx: &Vec<usize>) -> (usize, usize) {
        let tokens = idx.iter().map(|&i| self.train[i].chosen.0.len() + self.train[i].rejected.0.len()).sum();
        (idx.len(), tokens)
    }
    fn loss(&mut self, model: &Decoder, idx: &Vec<usize>, units: f64, mode: Mode<'_>) -> Result<Option<Tensor>> {
        let out = batch_output(model, &self.train, &self.train_refs, idx, self.pad, mode, self.dpo, true)?;
        self.stats.add(&out)?;
        Ok(Some((out.losses.sum_all()? / units)?))
    }
    fn end_step(&mut self, step: usize, observer: &mut dyn Observer) -> Result<()> {
        let stats = std::mem::take(&mut self.stats).finish();
        observer.on_preference(&PreferenceMetrics { step, split: "train", stats });
        Ok(())
    }
    fn validate(&self, model: &Decoder, step: usize, observer: &mut dyn Observer) -> Result<Option<f64>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let stats = evaluate_pairs(model, &self.valid, &self.valid_refs, self.batch, self.pad, self.dpo)?;
        observer.on_preference(&PreferenceMetrics { step, split: "valid", stats });
        Ok(Some(stats.loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::f64::consts::LN_2;

    fn logps(pc: &[f32], pr: &[f32], rc: &[f32], rr: &[f32]) -> PairLogps {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        PairLogps { policy_chosen: t(pc), policy_rejected: t(pr), ref_chosen: t(rc), ref_rejected: t(rr) }
    }

    fn close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < tol, "{got:?} vs {want:?}");
        }
    }

    // Pair 1: chosen ratio −10 − (−12) = 2, rejected ratio −15 − (−14) = −1,
    //   h = 3. Pair 2: chosen ratio −20 − (−18) = −2, rejected −9 − (−10) = 1,
    //   h = −3. Pair 3: policy = reference, h = 0.
    fn fixed() -> PairLogps {
        logps(&[-10.0, -20.0, -5.0], &[-15.0, -9.0, -6.0], &[-12.0, -18.0, -5.0], &[-14.0, -10.0, -6.0])
    }

    #[test]
    fn sigmoid_loss_and_rewards_match_hand_computed_values() {
        let cfg = DpoConfig { beta: 0.5, ..Default::default() };
        let out = dpo_loss(&fixed(), &cfg).unwrap();
        // −log σ(1.5) = log(1 + e^−1.5) = 0.201413; −log σ(−1.5) = 1.701413;
        // −log σ(0) = ln 2 = 0.693147.
        close(&out.losses.to_vec1::<f32>().unwrap(), &[0.201413, 1.701413, LN_2], 1e-5);
        close(&out.chosen_rewards.to_vec1::<f32>().unwrap(), &[1.0, -1.0, 0.0], 1e-6);
        close(&out.rejected_rewards.to_vec1::<f32>().unwrap(), &[-0.5, 0.5, 0.0], 1e-6);
        let s = PreferenceStats::of(&out).unwrap();
        assert_eq!(s.pairs, 3);
        assert!((s.loss - (0.201413 + 1.701413 + LN_2) / 3.0).abs() < 1e-5, "{s:?}");
        assert!((s.margin - (1.5 - 1.5 + 0.0) / 3.0).abs() < 1e-6, "{s:?}");
        assert!((s.reward_chosen - 0.0).abs() < 1e-6 && (s.reward_rejected - 0.0).abs() < 1e-6, "{s:?}");
        // Only the first pair prefers the chosen answer (a tie is not a win).
        assert!((s.accuracy - 1.0 / 3.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn label_smoothing_mixes_both_directions() {
        let cfg = DpoConfig { beta: 0.5, label_smoothing: 0.1, ..Default::default() };
        let out = dpo_loss(&fixed(), &cfg).unwrap();
        // 0.9 · 0.201413 + 0.1 · 1.701413 = 0.351413, and mirrored.
        // 0.9 · 1.701413 + 0.1 · 0.201413 = 1.551413; ln 2 unchanged.
        close(&out.losses.to_vec1::<f32>().unwrap(), &[0.351413, 1.551413, LN_2], 1e-5);
    }

    #[test]
    fn ipo_and_hinge_match_hand_computed_values() {
        let ipo = DpoConfig { beta: 0.5, loss: DpoLoss::Ipo, ..Default::default() };
        // (h − 1/(2·0.5))² = (h − 1)²: 4, 16, 1.
        close(&dpo_loss(&fixed(), &ipo).unwrap().losses.to_vec1::<f32>().unwrap(), &[4.0, 16.0, 1.0], 1e-5);
        let hinge = DpoConfig { beta: 0.5, loss: DpoLoss::Hinge, ..Default::default() };
        // max(0, 1 − 0.5·h): 0, 2.5, 1.
        close(&dpo_loss(&fixed(), &hinge).unwrap().losses.to_vec1::<f32>().unwrap(), &[0.0, 2.5, 1.0], 1e-6);
    }

    #[test]
    fn log_sigmoid_is_stable_at_large_inputs() {
        let x = Tensor::new(&[-200f32, 200.0, 0.0], &Device::Cpu).unwrap();
        close(&log_sigmoid(&x).unwrap().to_vec1::<f32>().unwrap(), &[-200.0, 0.0, -LN_2], 1e-5);
    }

    #[test]
    fn sigmoid_gradient_is_beta_times_one_minus_sigma() {
        // d/dπ_c of −log σ(β·h) = −β · σ(−β·h); with h = 3, β = 0.5: −0.5 · σ(−1.5).
        let pc = candle_core::Var::new(&[-10f32], &Device::Cpu).unwrap();
        let d = &Device::Cpu;
        let lp = PairLogps {
            policy_chosen: pc.as_tensor().clone(),
            policy_rejected: Tensor::new(&[-15f32], d).unwrap(),
            ref_chosen: Tensor::new(&[-12f32], d).unwrap(),
            ref_rejected: Tensor::new(&[-14f32], d).unwrap(),
        };
        let out = dpo_loss(&lp, &DpoConfig { beta: 0.5, ..Default::default() }).unwrap();
        let g = out.losses.sum_all().unwrap().backward().unwrap();
        let got = g.get(pc.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let want = -0.5 / (1.0 + 1.5f64.exp());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(DpoConfig { beta: 0.0, ..Default::default() }.validate().is_err());
        assert!(DpoConfig { label_smoothing: 0.5, ..Default::default() }.validate().is_err());
        assert!(DpoConfig::default().validate().is_ok());
    }

    #[test]
    fn pairs_mask_the_prompt_and_drop_cut_responses() {
        let pair = TokenizedPair {
            id: "p".into(),
            domain: "d".into(),
            prompt_ids: vec![1, 2, 3],
            chosen_ids: vec![4, 5],
            rejected_ids: vec![6],
        };
        let s = PairSeqs::new(&pair, 16).unwrap();
        assert_eq!(s.chosen().ids, &[1, 2, 3, 4, 5]);
        assert_eq!(s.chosen().mask, &[false, false, false, true, true]);
        assert_eq!(s.rejected().mask, &[false, false, false, true]);
        assert!(PairSeqs::new(&pair, 3).is_none());
        assert_eq!(pair_sequences(&[pair.clone(), pair], 4).0.len(), 2);
    }
}
