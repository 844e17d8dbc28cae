//! Register, gate, promote: the trained adapter goes into the registry
//! (`sam_deploy`) as a version of the base model's slot, is judged by the
//! standard gate against the slot's production (the base model at first),
//! and, when the gate passes, is promoted — or put on canary traffic, per
//! [`Rollout`]. A refusal is a normal end: production stays as it was and
//! the verdict's reasons are in the output (and the registry's history).
//!
//! With [`PipelineConfig::deploy`](crate::PipelineConfig::deploy) unset
//! (`sam run --no-deploy`, `[pipeline] deploy = false`) the register stage
//! ends the run after evaluation, as a complete run. So it does when the
//! dataset's test split holds fewer than
//! [`DeploySettings::min_test_examples`]: nothing is registered or judged
//! ([`Registered::NotGated`]), an outcome like a refusal, and the next run
//! waits for new data.
//!
//! An adapter that is in place already (the same data and settings trained
//! again give the same content, hence the same version) is not judged
//! against itself: the gate stage outputs `None` and the promote stage
//! [`Decision::Unchanged`].

use std::path::PathBuf;

use sam_deploy::registry::{self, BASE};
use sam_deploy::{
    Approval, BaseRef, CanarySettings, DeployConfig, EvalOptions, HistoryEntry, ModelEvaluator, Registration, Registry,
    Verdict, VerdictRecord, Version,
};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::stage::{Context, Flow, Stage};
use crate::stages::{PrepInfo, PrepStage, TrainInfo, TrainStage};
use crate::state::Outcome;

/// What the pipeline does with an adapter the gate passes (`[deploy] rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollout {
    /// Put it into production (the old production becomes `previous`).
    Promote,
    /// Start a canary at `[deploy.canary] percent` of the traffic.
    Canary,
}

/// The deploy stages' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploySettings {
    /// The slot when the base model has none yet, the gate's thresholds,
    /// the canary's settings (`[deploy]`).
    pub config: DeployConfig,
    /// Promote or canary.
    pub rollout: Rollout,
    /// The fewest held-out test examples an adapter is gated on
    /// (`[pipeline] min_test_examples`); with fewer nothing is registered.
    pub min_test_examples: usize,
}

impl Default for DeploySettings {
    fn default() -> Self {
        Self { config: DeployConfig::default(), rollout: Rollout::Promote, min_test_examples: 2 }
    }
}

/// The register stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Registered {
    /// Deployment is off: the run ended after evaluation.
    Off,
    /// Too few held-out test examples to judge the adapter by: nothing was
    /// registered or gated; the run ended (as complete: the next run waits
    /// for new data).
    NotGated(NotGated),
    /// The adapter is a version of the slot.
    Version(RegisterInfo),
}

impl Registered {
    /// The registration, when there is one.
    pub fn version(&self) -> Option<&RegisterInfo> {
        match self {
            Registered::Version(r) => Some(r),
            _ => None,
        }
    }
}

/// Why an adapter was not gated: the dataset's held-out test split is too small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotGated {
    /// Test examples in the dataset.
    pub test_examples: u64,
    /// The fewest the gate judges on (`[pipeline] min_test_examples`).
    pub need: u64,
    /// SFT rows of the dataset: train, valid, test.
    pub sft: [u64; 3],
}

/// The register stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterInfo {
    /// The slot (one per base model).
    pub slot: String,
    /// The version's id.
    pub version: String,
    /// Its number within the slot (#1, #2, …).
    pub number: u64,
    /// False when the same adapter was registered before (an interrupted run).
    pub new: bool,
    /// The slot was created by this run (the first run on a fresh home).
    pub created_slot: bool,
    /// Examples in the slot's golden set.
    pub golden_examples: u64,
    /// The registered copy of the adapter.
    pub adapter_dir: PathBuf,
}

/// The gate stage's output: the verdict as the registry stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateInfo {
    /// The version judged.
    pub version: String,
    /// What it was judged against: production's version id, or `base`.
    pub against: String,
    /// Whether it passed.
    pub pass: bool,
    /// The failing reasons in one line (`passed` when it passed).
    pub summary: String,
    /// The verdict: each gate's pass, reasons and numbers.
    pub verdict: Verdict,
    /// When (Unix seconds).
    pub at: i64,
    /// The held-out test split it was judged on.
    pub test_source: Option<PathBuf>,
    /// Test examples scored (at most `max_eval_examples`).
    pub test_examples: u64,
}

impl GateInfo {
    fn record(&self) -> VerdictRecord {
        VerdictRecord {
            version: self.version.clone(),
            against: self.against.clone(),
            at: self.at,
            test_source: self.test_source.clone(),
            verdict: self.verdict.clone(),
        }
    }

    /// Candidate and production test loss (`beats_production`'s numbers).
    pub fn test_loss(&self) -> Option<(f64, f64)> {
        let leaf = self.verdict.leaves().into_iter().find(|l| l.gate == "beats_production")?;
        Some((*leaf.numbers.get("production_loss")?, *leaf.numbers.get("candidate_loss")?))
    }
}

/// What the promote stage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The version went into production.
    Promoted,
    /// The version went on canary traffic.
    Canary,
    /// The gate refused it: nothing moved.
    Refused,
    /// It was in production (or on the canary) already: the same adapter
    /// trained again, or an interrupted run that had moved it before it
    /// could record so.
    Unchanged,
}

/// The promote stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromoteInfo {
    /// What happened.
    pub decision: Decision,
    /// The slot.
    pub slot: String,
    /// The version judged.
    pub version: String,
    /// Production after the stage: a version id, or `base`.
    pub production: String,
    /// Production before it.
    pub previous: String,
    /// The canary's share of the traffic, when there is a canary.
    pub canary_percent: Option<f64>,
    /// The adapter folder the assistant loads now (`sam deploy which`);
    /// `None`: the base model alone.
    pub load: Option<PathBuf>,
    /// The base model.
    pub base_model: PathBuf,
    /// The registry history entry of the move, when something moved.
    pub entry: Option<HistoryEntry>,
}

/// The base model's evaluator, loaded once per invocation and handed from
/// the register stage to the gate.
struct Evaluator(ModelEvaluator);

fn settings(cx: &Context<'_>) -> DeploySettings {
    cx.config().deploy.clone().unwrap_or_default()
}

fn registry(cx: &Context<'_>) -> Result<Registry> {
    Ok(Registry::open(cx.home().registry_dir())?)
}

/// The base model's evaluator this invocation loaded, or a fresh one.
fn take_evaluator(cx: &mut Context<'_>) -> Result<ModelEvaluator> {
    if let Some(Evaluator(ev)) = cx.take_shared::<Evaluator>() {
        return Ok(ev);
    }
    let opts = EvalOptions { max_seq_len: settings(cx).config.max_seq_len, ..Default::default() };
    Ok(ModelEvaluator::load(&cx.config().model, opts)?)
}

fn version(reg: &Registry, r: &RegisterInfo) -> Result<Version> {
    Ok(reg.find(&r.version, Some(&r.slot))?)
}

/// The register stage: the trained adapter becomes a version of the base
/// model's slot (created, with the dataset's test split as its golden set,
/// on the first run).
#[derive(Debug, Default, Clone, Copy)]
pub struct RegisterStage;

impl RegisterStage {
    /// Its name.
    pub const NAME: &'static str = "register";
}

impl Stage for RegisterStage {
    type Output = Registered;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<Registered>> {
        if cx.config().deploy.is_none() {
            return Ok(Flow::End(Registered::Off, Outcome::Trained));
        }
        let cfg = cx.config();
        let d = settings(cx);
        d.config.validate()?;
        let prep: PrepInfo = cx.output(PrepStage::NAME)?;
        let need = d.min_test_examples.max(1) as u64;
        if prep.sft[2] < need {
            let short = NotGated { test_examples: prep.sft[2], need, sft: prep.sft };
            return Ok(Flow::End(Registered::NotGated(short), Outcome::Trained));
        }
        let train: TrainInfo = cx.output(TrainStage::NAME)?;
        let mut r = Registration::from_run(&train.run_dir)?;
        r.model = Some(cfg.model.clone());
        r.dataset = Some(prep.dir.clone());
        r.tags.insert("pipeline_run".into(), cx.run_id().to_string());
        let reg = registry(cx)?;
        let (slot, created_slot) = match reg.slot_for(&r, &d.config.default_slot)? {
            Some(s) => (s, false),
            None => {
                let mut golden = registry::golden_from_dataset(&prep.dir)?;
                if let Some(n) = cfg.max_eval_examples {
                    golden.truncate(n.max(1));
                }
                let mut ev = take_evaluator(cx)?;
                let base = BaseRef::of(&cfg.model, &mut ev)?;
                cx.share(Evaluator(ev));
                let source = format!("test split of {}", prep.dir.display());
                (reg.create_slot(&d.config.default_slot, base, &golden, &source)?, true)
            }
        };
        let (v, new) = reg.register(&slot.name, &r)?;
        let adapter_dir = reg.adapter_dir(&v);
        Ok(Flow::Next(Registered::Version(RegisterInfo {
            slot: slot.name.clone(),
            version: v.id,
            number: v.number,
            new,
            created_slot,
            golden_examples: slot.golden.examples as u64,
            adapter_dir,
        })))
    }
}

/// The registration of this run (an error when the register stage did not
/// register one).
fn registration(cx: &Context<'_>) -> Result<RegisterInfo> {
    let r: Registered = cx.output(RegisterStage::NAME)?;
    match r {
        Registered::Version(r) => Ok(r),
        _ => Err(crate::Error::MissingOutput(RegisterStage::NAME.into())),
    }
}

/// Whether `v` is in place already: in production, or on the canary when
/// the rollout is a canary.
fn in_place(aliases: &sam_deploy::Aliases, v: &Version, rollout: Rollout) -> bool {
    let on_canary = aliases.canary.as_ref().is_some_and(|c| c.version == v.id);
    aliases.production() == Some(v.id.as_str()) || (rollout == Rollout::Canary && on_canary)
}

/// The gate stage: the standard gate (`sam_deploy::gate::standard`) judges
/// the version against the slot's production on the held-out test split
/// (at most `max_eval_examples` of it), the golden set, the held-out
/// preference pairs and the generation check. The verdict is stored in the
/// registry either way. A version in place already (production, or the
/// canary of a canary rollout) is not judged against itself: the output is
/// `None`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GateStage;

impl GateStage {
    /// Its name.
    pub const NAME: &'static str = "gate";
}

impl Stage for GateStage {
    /// `None`: the version is in place already; not judged.
    type Output = Option<GateInfo>;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<Option<GateInfo>>> {
        let r = registration(cx)?;
        let d = settings(cx);
        let max = cx.config().max_eval_examples;
        let reg = registry(cx)?;
        let v = version(&reg, &r)?;
        if in_place(&reg.aliases(&r.slot)?, &v, d.rollout) {
            return Ok(Flow::Next(None));
        }
        let mut data = reg.trial_data(&v, None, &d.config.gate.prompts)?;
        if let Some(n) = max {
            data.test.truncate(n.max(1));
            data.pairs.truncate(n.max(1));
        }
        let gate = sam_deploy::gate::standard(&d.config.gate);
        let mut ev = take_evaluator(cx)?;
        let rec = reg.judge(&v, &gate, &mut ev, &data)?;
        Ok(Flow::Next(Some(GateInfo {
            version: rec.version,
            against: rec.against,
            pass: rec.verdict.pass,
            summary: rec.verdict.summary(),
            verdict: rec.verdict,
            at: rec.at,
            test_source: rec.test_source,
            test_examples: data.test.len() as u64,
        })))
    }
}

/// The promote stage: a passing version is promoted or put on the canary
/// ([`Rollout`]); a refused one moves nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct PromoteStage;

impl PromoteStage {
    /// Its name.
    pub const NAME: &'static str = "promote";
}

impl Stage for PromoteStage {
    type Output = PromoteInfo;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<PromoteInfo>> {
        let r = registration(cx)?;
        let gate: Option<GateInfo> = cx.output(GateStage::NAME)?;
        let d = settings(cx);
        let reg = registry(cx)?;
        let v = version(&reg, &r)?;
        let before = reg.aliases(&r.slot)?;
        let previous = before.production().unwrap_or(BASE).to_string();
        let (decision, entry) = match gate {
            _ if in_place(&before, &v, d.rollout) => (Decision::Unchanged, None),
            // Not judged (in place when the gate looked) and moved since: nothing to approve it by.
            None => (Decision::Refused, None),
            Some(gate) if !gate.pass => (Decision::Refused, None),
            Some(gate) => {
                let approval = Approval::Verdict(gate.record());
                match d.rollout {
                    Rollout::Promote => (Decision::Promoted, Some(reg.promote(&v, &approval)?)),
                    Rollout::Canary => {
                        let CanarySettings { percent, .. } = d.config.canary;
                        (Decision::Canary, Some(reg.start_canary(&v, percent, &approval)?))
                    }
                }
            }
        };
        let after = reg.aliases(&r.slot)?;
        let now = reg.resolve(&r.slot, None)?;
        Ok(Flow::Next(PromoteInfo {
            decision,
            slot: r.slot,
            version: v.id,
            production: after.production().unwrap_or(BASE).to_string(),
            previous,
            canary_percent: after.canary.as_ref().map(|c| c.percent),
            load: now.adapter_dir,
            base_model: now.base_model,
            entry,
        }))
    }
}

/// The deploy stages' outputs together, for the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The registration.
    pub register: RegisterInfo,
    /// The verdict (`None`: the run did not get there, or the version was
    /// in place already and not judged against itself).
    pub gate: Option<GateInfo>,
    /// The rollout.
    pub promote: Option<PromoteInfo>,
}
