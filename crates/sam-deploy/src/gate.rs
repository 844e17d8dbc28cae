//! Gates: whether a candidate adapter may replace production.
//!
//! A [`Gate`] has one required method, [`Gate::judge`]: it compares a
//! candidate with the slot's production (or with the base model when
//! nothing is in production) and returns a [`Verdict`] — pass or not, the
//! reasons, and the numbers behind them. Gates compose: [`AllOf`] passes
//! when every part passes, and keeps every part's verdict, so a refusal
//! names all of its reasons at once.
//!
//! The built-in gates ([`standard`] puts them together from
//! [`GateSettings`]):
//!
//! | gate | passes when |
//! |---|---|
//! | [`WellFormed`] | the adapter loads on the slot's base (same fingerprint), its tensors fit the base's shapes and are finite |
//! | [`BeatsProduction`] | its loss on the held-out test split is below production's by at least the margin (loss and perplexity of both, in one process, on the same tokens) |
//! | [`GoldenSet`] | its loss on the slot's golden set is at most production's plus the tolerance |
//! | [`PreferenceWinRate`] | on held-out preference pairs, its log-probability margin (chosen − rejected) beats production's on at least the given share of pairs (skipped without pairs) |
//! | [`GenerationCheck`] | its greedy answers to a few fixed prompts are not empty, not looping, leak no chat-template markers and read as language |

use std::collections::BTreeMap;
use std::path::PathBuf;

use sam_prep::cache::{TokenizedExample, TokenizedPair};
use sam_trainer::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::eval::{Evaluator, Subject};
use crate::{Error, Result};

/// What a gate judges: a candidate against a baseline, with the data to do it.
#[derive(Debug, Clone)]
pub struct Trial<'a> {
    /// The slot's name.
    pub slot: &'a str,
    /// The candidate adapter.
    pub candidate: Subject,
    /// Production (or the base model when nothing is in production).
    pub baseline: Subject,
    /// The slot's base model: configuration and fingerprint.
    pub base_config: &'a ModelConfig,
    /// The fingerprint the slot was created with.
    pub base_fingerprint: &'a str,
    /// Held-out examples and prompts.
    pub data: &'a TrialData,
}

/// The held-out data of a trial.
#[derive(Debug, Clone, Default)]
pub struct TrialData {
    /// The candidate's held-out test split (SFT examples).
    pub test: Vec<TokenizedExample>,
    /// Where the test split comes from (a dataset folder), for reports.
    pub test_source: Option<PathBuf>,
    /// Held-out preference pairs (may be empty).
    pub pairs: Vec<TokenizedPair>,
    /// The slot's golden set.
    pub golden: Vec<TokenizedExample>,
    /// Prompts of the generation check.
    pub prompts: Vec<String>,
}

/// Why a gate passed or refused, as data (its `Display` is the sentence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The adapter's files or shapes are wrong.
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// The adapter is well-formed and fits the slot's base.
    WellFormed {
        /// LoRA modules in the adapter.
        modules: usize,
    },
    /// The evaluator's base model is not the slot's.
    BaseMismatch {
        /// The slot's fingerprint.
        expected: String,
        /// The loaded model's.
        found: String,
    },
    /// There is no held-out test split to compare on.
    NoTestSplit,
    /// The candidate beats the baseline by at least the margin.
    Beats {
        /// What it was compared with (a version id, or `base`).
        baseline: String,
        /// Relative loss improvement.
        improvement: f64,
        /// The margin.
        margin: f64,
    },
    /// The candidate does not beat the baseline by the margin.
    NotBetter {
        /// What it was compared with.
        baseline: String,
        /// Candidate's test loss.
        candidate_loss: f64,
        /// Baseline's test loss.
        baseline_loss: f64,
        /// Relative loss improvement (negative: worse).
        improvement: f64,
        /// The margin.
        margin: f64,
    },
    /// No regression on the golden set.
    GoldenOk {
        /// Relative loss change (positive: worse).
        change: f64,
        /// The tolerance.
        tolerance: f64,
    },
    /// The candidate is worse on the golden set than the tolerance allows.
    GoldenRegression {
        /// What it was compared with.
        baseline: String,
        /// Candidate's golden-set loss.
        candidate_loss: f64,
        /// Baseline's golden-set loss.
        baseline_loss: f64,
        /// Relative loss change.
        change: f64,
        /// The tolerance.
        tolerance: f64,
    },
    /// The slot has no golden set.
    NoGoldenSet,
    /// No held-out preference pairs: the win-rate gate does not apply.
    NoPairs,
    /// Preference win-rate against the baseline.
    WinRate {
        /// Share of pairs won.
        rate: f64,
        /// Share needed.
        min: f64,
        /// Pairs compared.
        pairs: usize,
    },
    /// An answer was empty.
    EmptyAnswer {
        /// The prompt.
        prompt: String,
    },
    /// An answer repeats itself.
    Looping {
        /// The prompt.
        prompt: String,
        /// Share of the answer's 4-token sequences seen earlier in it.
        repeated: f64,
        /// The most allowed.
        max: f64,
    },
    /// An answer contains chat-template markers.
    TemplateLeak {
        /// The prompt.
        prompt: String,
        /// The marker found.
        marker: String,
    },
    /// An answer does not read as language (the base model finds it very
    /// unlikely).
    Babble {
        /// The prompt.
        prompt: String,
        /// Mean NLL of the answer under the base model.
        loss: f64,
        /// The most allowed.
        max: f64,
    },
    /// Every answer passed.
    AnswersOk {
        /// Prompts answered.
        prompts: usize,
    },
    /// Promoted without a gate (`--force`).
    Forced,
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

fn who(baseline: &str) -> String {
    if baseline == "base" { "production (the base model)".into() } else { format!("production ({baseline})") }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Malformed { detail } => write!(f, "malformed adapter: {detail}"),
            Reason::WellFormed { modules } => write!(f, "well-formed: {modules} LoRA modules fit the slot's base"),
            Reason::BaseMismatch { expected, found } => write!(
                f,
                "the base model loaded (fingerprint {found}) is not the slot's (fingerprint {expected}): its files \
                 changed since the slot was made, or an older sam made the slot with another kind of fingerprint \
                 (make a new slot for this model: `sam deploy slot NAME --model PATH --golden-from DATASET`)"
            ),
            Reason::NoTestSplit => {
                write!(f, "no held-out test split to compare on (register with a dataset, or pass --data)")
            }
            Reason::Beats { baseline, improvement, margin } => write!(
                f,
                "beats {} by {:.1}% test loss (margin {:.1}%)",
                who(baseline),
                improvement * 100.0,
                margin * 100.0
            ),
            Reason::NotBetter { baseline, candidate_loss, baseline_loss, improvement, margin } => write!(
                f,
                "does not beat production by the margin: test loss {candidate_loss:.4} vs {baseline_loss:.4} of {} ({:+.2}%, needs {:.1}% better)",
                who(baseline),
                -improvement * 100.0,
                margin * 100.0
            ),
            Reason::GoldenOk { change, tolerance } => write!(
                f,
                "no regression on the golden set ({:+.2}% loss, tolerance {:.1}%)",
                change * 100.0,
                tolerance * 100.0
            ),
            Reason::GoldenRegression { baseline, candidate_loss, baseline_loss, change, tolerance } => write!(
                f,
                "regression on the golden set: loss {candidate_loss:.4} vs {baseline_loss:.4} of {} ({:+.1}%, tolerance {:.1}%)",
                who(baseline),
                change * 100.0,
                tolerance * 100.0
            ),
            Reason::NoGoldenSet => write!(f, "the slot has no golden set"),
            Reason::NoPairs => write!(f, "no held-out preference pairs: win-rate not measured"),
            Reason::WinRate { rate, min, pairs } => {
                write!(f, "preference win-rate {:.1}% over {pairs} pairs (needs {:.1}%)", rate * 100.0, min * 100.0)
            }
            Reason::EmptyAnswer { prompt } => write!(f, "generation check: empty answer to \"{}\"", short(prompt)),
            Reason::Looping { prompt, repeated, max } => write!(
                f,
                "generation check: the answer to \"{}\" loops ({:.0}% repeated, at most {:.0}%)",
                short(prompt),
                repeated * 100.0,
                max * 100.0
            ),
            Reason::TemplateLeak { prompt, marker } => {
                write!(f, "generation check: the answer to \"{}\" leaks the template marker {marker}", short(prompt))
            }
            Reason::Babble { prompt, loss, max } => write!(
                f,
                "generation check: the answer to \"{}\" does not read as language (base-model loss {loss:.2}, at most {max:.2})",
                short(prompt)
            ),
            Reason::AnswersOk { prompts } => write!(f, "generation check: {prompts} answers look sane"),
            Reason::Forced => write!(f, "forced: the gate was skipped"),
        }
    }
}

/// A gate's judgement: pass or not, why, and the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The gate's name.
    pub gate: String,
    /// Whether the candidate passes.
    pub pass: bool,
    /// The gate did not apply (no data for it); a skipped gate passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Why (for a composite: its failing parts' reasons, or all of them when it passes).
    pub reasons: Vec<Reason>,
    /// The measurements (`candidate_loss`, `production_perplexity`, …).
    pub numbers: BTreeMap<String, f64>,
    /// The parts' verdicts, for a composite gate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Verdict>,
}

impl Verdict {
    /// A verdict of `gate`.
    pub fn new(gate: impl Into<String>, pass: bool) -> Self {
        Self {
            gate: gate.into(),
            pass,
            skipped: false,
            reasons: Vec::new(),
            numbers: BTreeMap::new(),
            parts: Vec::new(),
        }
    }

    fn reason(mut self, r: Reason) -> Self {
        self.reasons.push(r);
        self
    }

    fn number(mut self, k: &str, v: f64) -> Self {
        self.numbers.insert(k.to_string(), v);
        self
    }

    /// The reasons of every failing gate, depth first.
    pub fn failures(&self) -> Vec<&Reason> {
        if self.parts.is_empty() {
            return if self.pass { Vec::new() } else { self.reasons.iter().collect() };
        }
        self.parts.iter().flat_map(|p| p.failures()).collect()
    }

    /// Every gate's verdict without parts (the leaves), depth first.
    pub fn leaves(&self) -> Vec<&Verdict> {
        if self.parts.is_empty() { vec![self] } else { self.parts.iter().flat_map(|p| p.leaves()).collect() }
    }

    /// The failing reasons joined into one line.
    pub fn summary(&self) -> String {
        let f = self.failures();
        if f.is_empty() { "passed".into() } else { f.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ") }
    }
}

/// Judges a candidate adapter against production.
pub trait Gate {
    /// Compares `trial.candidate` with `trial.baseline`, scoring through `ev`.
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict>;
}

/// Passes when every part passes; runs every part, so a refusal lists all
/// of its reasons.
pub struct AllOf(pub Vec<Box<dyn Gate>>);

impl std::fmt::Debug for AllOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AllOf({} gates)", self.0.len())
    }
}

impl Gate for AllOf {
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict> {
        let mut v = Verdict::new("all", true);
        for g in &self.0 {
            let part = g.judge(trial, ev)?;
            v.pass &= part.pass;
            for (k, x) in &part.numbers {
                v.numbers.insert(format!("{}.{k}", part.gate), *x);
            }
            v.parts.push(part);
        }
        v.reasons = if v.pass {
            v.parts.iter().flat_map(|p| p.reasons.clone()).collect()
        } else {
            v.failures().into_iter().cloned().collect()
        };
        Ok(v)
    }
}

/// The adapter's tensors fit the slot's base, are finite, and load on the
/// evaluator's model, which must be the slot's base (same fingerprint).
#[derive(Debug, Clone, Default)]
pub struct WellFormed;

impl Gate for WellFormed {
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict> {
        let v = Verdict::new("well_formed", false);
        let found = ev.fingerprint()?;
        if found != trial.base_fingerprint {
            return Ok(v.reason(Reason::BaseMismatch { expected: trial.base_fingerprint.to_string(), found }));
        }
        let Some(dir) = &trial.candidate.adapter else {
            return Ok(v.reason(Reason::Malformed { detail: "the candidate has no adapter".into() }));
        };
        let info = match crate::shape::check_adapter(dir, trial.base_config) {
            Ok(i) => i,
            Err(e) => return Ok(v.reason(Reason::Malformed { detail: e.to_string() })),
        };
        if let Some(bad) = info.non_finite {
            return Ok(v.reason(Reason::Malformed { detail: format!("tensor {bad} has non-finite values") }));
        }
        if let Err(e) = ev.check(&trial.candidate) {
            return Ok(v.reason(Reason::Malformed { detail: e.to_string() }));
        }
        let mut v = v.reason(Reason::WellFormed { modules: info.modules }).number("modules", info.modules as f64);
        v.pass = true;
        Ok(v.number("rank", info.rank as f64))
    }
}

/// The candidate's test loss is below the baseline's by at least `margin`
/// (relative: 0.01 = 1%).
#[derive(Debug, Clone)]
pub struct BeatsProduction {
    /// Relative loss improvement needed.
    pub margin: f64,
}

impl Gate for BeatsProduction {
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict> {
        let v = Verdict::new("beats_production", false);
        if trial.data.test.is_empty() {
            return Ok(v.reason(Reason::NoTestSplit));
        }
        let c = ev.score(&trial.candidate, &trial.data.test)?;
        let b = ev.score(&trial.baseline, &trial.data.test)?;
        let improvement = (b.loss - c.loss) / b.loss;
        let mut v = v
            .number("candidate_loss", c.loss)
            .number("candidate_perplexity", c.perplexity)
            .number("production_loss", b.loss)
            .number("production_perplexity", b.perplexity)
            .number("improvement", improvement)
            .number("margin", self.margin)
            .number("tokens", c.tokens as f64)
            .number("examples", c.examples as f64);
        // Perplexity is exp(loss), so it improves exactly when loss does;
        // both are reported, the margin is on loss.
        if improvement.is_finite() && improvement >= self.margin {
            v.pass = true;
            Ok(v.reason(Reason::Beats { baseline: trial.baseline.label.clone(), improvement, margin: self.margin }))
        } else {
            Ok(v.reason(Reason::NotBetter {
                baseline: trial.baseline.label.clone(),
                candidate_loss: c.loss,
                baseline_loss: b.loss,
                improvement,
                margin: self.margin,
            }))
        }
    }
}

/// The candidate's loss on the slot's golden set is at most the baseline's
/// times `1 + tolerance`.
#[derive(Debug, Clone)]
pub struct GoldenSet {
    /// Relative loss increase allowed.
    pub tolerance: f64,
}

impl Gate for GoldenSet {
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict> {
        let v = Verdict::new("golden_set", false);
        if trial.data.golden.is_empty() {
            return Ok(v.reason(Reason::NoGoldenSet));
        }
        let c = ev.score(&trial.candidate, &trial.data.golden)?;
        let b = ev.score(&trial.baseline, &trial.data.golden)?;
        let change = (c.loss - b.loss) / b.loss;
        let mut v = v
            .number("candidate_loss", c.loss)
            .number("candidate_perplexity", c.perplexity)
            .number("production_loss", b.loss)
            .number("production_perplexity", b.perplexity)
            .number("change", change)
            .number("tolerance", self.tolerance)
            .number("examples", c.examples as f64);
        if change.is_finite() && change <= self.tolerance {
            v.pass = true;
            Ok(v.reason(Reason::GoldenOk { change, tolerance: self.tolerance }))
        } else {
            Ok(v.reason(Reason::GoldenRegression {
                baseline: trial.baseline.label.clone(),
                candidate_loss: c.loss,
                baseline_loss: b.loss,
                change,
                tolerance: self.tolerance,
            }))
        }
    }
}

/// On held-out preference pairs, the share of pairs where the candidate's
/// log-probability margin (chosen − rejected) is above the baseline's is at
/// least `min_win_rate` (a tie counts half). Skipped (passes) without pairs.
#[derive(Debug, Clone)]
pub struct PreferenceWinRate {
    /// Share of pairs to win (0.5: at least as often as not).
    pub min_win_rate: f64,
}

impl Gate for PreferenceWinRate {
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict> {
        let mut v = Verdict::new("preference_win_rate", true);
        if trial.data.pairs.is_empty() {
            v.skipped = true;
            return Ok(v.reason(Reason::NoPairs));
        }
        let c = ev.pair_logps(&trial.candidate, &trial.data.pairs)?;
        let b = ev.pair_logps(&trial.baseline, &trial.data.pairs)?;
        if c.is_empty() || c.len() != b.len() {
            v.skipped = true;
            return Ok(v.reason(Reason::NoPairs));
        }
        // A pair where both margins agree (to 1e-4 nats) is a tie: half a win.
        let score = |c: &(f64, f64), b: &(f64, f64)| {
            let d = (c.0 - c.1) - (b.0 - b.1);
            if d.abs() < 1e-4 {
                0.5
            } else if d > 0.0 {
                1.0
            } else {
                0.0
            }
        };
        let rate = c.iter().zip(&b).map(|(c, b)| score(c, b)).sum::<f64>() / c.len() as f64;
        let mean = |x: &[(f64, f64)]| x.iter().map(|p| p.0 - p.1).sum::<f64>() / x.len() as f64;
        v.pass = rate >= self.min_win_rate;
        Ok(v.number("win_rate", rate)
            .number("min_win_rate", self.min_win_rate)
            .number("pairs", c.len() as f64)
            .number("candidate_margin", mean(&c))
            .number("production_margin", mean(&b))
            .reason(Reason::WinRate { rate, min: self.min_win_rate, pairs: c.len() }))
    }
}

/// Greedy answers to fixed prompts must be non-empty, not loop, leak no
/// template markers and read as language to the base model.
#[derive(Debug, Clone)]
pub struct GenerationCheck {
    /// Most tokens per answer.
    pub max_new_tokens: usize,
    /// Most share of an answer's 4-token sequences that may repeat an
    /// earlier one.
    pub max_repeated: f64,
    /// Highest mean NLL (nats per token) of an answer under the base model.
    pub max_base_loss: f64,
    /// Text that must not appear in an answer (chat-template markers).
    pub markers: Vec<String>,
}

impl Default for GenerationCheck {
    fn default() -> Self {
        Self { max_new_tokens: 32, max_repeated: 0.5, max_base_loss: 3.0, markers: default_markers() }
    }
}

/// Chat-template markers of the common templates (ChatML, Llama 2 and 3,
/// Alpaca-style headers).
pub fn default_markers() -> Vec<String> {
    ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "[INST]", "### Instruction:"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Share of an answer's 4-grams that occurred earlier in it.
pub fn repeated_fraction(ids: &[u32]) -> f64 {
    const N: usize = 4;
    if ids.len() < 2 * N {
        // Too short to loop, unless it is one token over and over.
        return if ids.len() >= 4 && ids.iter().all(|&t| t == ids[0]) { 1.0 } else { 0.0 };
    }
    let mut seen = std::collections::HashSet::new();
    let grams = ids.len() - N + 1;
    let mut repeats = 0;
    for w in ids.windows(N) {
        if !seen.insert(w) {
            repeats += 1;
        }
    }
    repeats as f64 / grams as f64
}

impl Gate for GenerationCheck {
    fn judge(&self, trial: &Trial<'_>, ev: &mut dyn Evaluator) -> Result<Verdict> {
        let mut v = Verdict::new("generation", true);
        if trial.data.prompts.is_empty() {
            v.skipped = true;
            return Ok(v);
        }
        let mut worst_rep = 0f64;
        let mut worst_loss = 0f64;
        for p in &trial.data.prompts {
            let a = ev.answer(&trial.candidate, p, self.max_new_tokens)?;
            let prompt = p.clone();
            let rep = repeated_fraction(&a.ids);
            worst_rep = worst_rep.max(rep);
            if a.text.trim().is_empty() {
                v.reasons.push(Reason::EmptyAnswer { prompt });
                continue;
            }
            let leak = a.special_tokens.first().cloned().or_else(|| {
                self.markers.iter().find(|m| a.raw.contains(m.as_str()) || a.text.contains(m.as_str())).cloned()
            });
            if let Some(marker) = leak {
                v.reasons.push(Reason::TemplateLeak { prompt: prompt.clone(), marker });
            }
            if rep > self.max_repeated {
                v.reasons.push(Reason::Looping { prompt: prompt.clone(), repeated: rep, max: self.max_repeated });
            }
            if let Some(l) = a.base_loss {
                worst_loss = worst_loss.max(l);
                if l.is_nan() || l > self.max_base_loss {
                    v.reasons.push(Reason::Babble { prompt, loss: l, max: self.max_base_loss });
                }
            }
        }
        v.pass = v.reasons.is_empty();
        if v.pass {
            v.reasons.push(Reason::AnswersOk { prompts: trial.data.prompts.len() });
        }
        Ok(v.number("prompts", trial.data.prompts.len() as f64)
            .number("max_repeated", worst_rep)
            .number("max_base_loss", worst_loss))
    }
}

/// Thresholds of the built-in gates (`[deploy.gate]` in `sam.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateSettings {
    /// Relative test-loss improvement over production needed to promote.
    pub margin: f64,
    /// Relative golden-set loss increase tolerated.
    pub golden_tolerance: f64,
    /// Share of held-out preference pairs the candidate must win.
    pub min_win_rate: f64,
    /// Prompts of the generation check.
    pub prompts: Vec<String>,
    /// Most tokens per generated answer.
    pub max_new_tokens: usize,
    /// Most share of repeated 4-token sequences in an answer.
    pub max_repeated: f64,
    /// Highest base-model loss (nats per token) of an answer.
    pub max_answer_loss: f64,
}

impl Default for GateSettings {
    fn default() -> Self {
        let g = GenerationCheck::default();
        Self {
            margin: 0.01,
            golden_tolerance: 0.02,
            min_win_rate: 0.5,
            prompts: vec![
                "What does `git status` show?".into(),
                "Write a Python function that returns the sum of a list.".into(),
                "What is a unit test?".into(),
            ],
            max_new_tokens: g.max_new_tokens,
            max_repeated: g.max_repeated,
            max_answer_loss: g.max_base_loss,
        }
    }
}

impl GateSettings {
    /// Checks the thresholds.
    pub fn validate(&self) -> Result<()> {
        let ok = self.margin.is_finite()
            && self.golden_tolerance.is_finite()
            && self.golden_tolerance >= 0.0
            && (0.0..=1.0).contains(&self.min_win_rate)
            && (0.0..=1.0).contains(&self.max_repeated)
            && self.max_answer_loss > 0.0;
        if ok { Ok(()) } else { Err(Error::Config(format!("gate thresholds out of range: {self:?}"))) }
    }
}

/// The built-in gates, all of them, with `s`'s thresholds.
pub fn standard(s: &GateSettings) -> AllOf {
    AllOf(vec![
        Box::new(WellFormed),
        Box::new(BeatsProduction { margin: s.margin }),
        Box::new(GoldenSet { tolerance: s.golden_tolerance }),
        Box::new(PreferenceWinRate { min_win_rate: s.min_win_rate }),
        Box::new(GenerationCheck {
            max_new_tokens: s.max_new_tokens,
            max_repeated: s.max_repeated,
            max_base_loss: s.max_answer_loss,
            markers: default_markers(),
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_measure() {
        let cases: &[(&[u32], f64)] = &[
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.0),
            (&[7, 7, 7, 7, 7], 1.0),
            (&[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2], 7.0 / 9.0),
        ];
        for (ids, want) in cases {
            assert!((repeated_fraction(ids) - want).abs() < 1e-9, "{ids:?}: {}", repeated_fraction(ids));
        }
    }

    #[test]
    fn not_better_names_the_margin() {
        let r = Reason::NotBetter {
            baseline: "base".into(),
            candidate_loss: 2.0,
            baseline_loss: 2.0,
            improvement: 0.0,
            margin: 0.01,
        };
        assert!(r.to_string().contains("does not beat production by the margin"), "{r}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "not_better");
        assert_eq!(serde_json::from_value::<Reason>(json).unwrap(), r);
    }
}
