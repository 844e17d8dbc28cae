//! sam-deploy: the adapter registry, validation gates, atomic promotion,
//! canary routing and rollback.
//!
//! An adapter becomes a [`Version`] in a slot of the [`Registry`] (one slot
//! per base model, under `SAM_HOME/registry/`): immutable, content-hashed,
//! with its base model's fingerprint, dataset manifest hash, training run,
//! configuration, evaluation report and tags. Aliases move: `production`,
//! `previous`, `canary` and user-defined ones, all of a slot's in one file
//! replaced atomically, every move in an append-only history.
//!
//! Main types:
//! - [`Registry`]: slots ([`Slot`], each with its golden set), registration
//!   with a shape check against the slot's base ([`shape`]), [`Registry::judge`],
//!   [`Registry::promote`], [`Registry::rollback`], [`Registry::start_canary`],
//!   [`Registry::decide_canary`], [`Registry::resolve`] (what the running
//!   assistant loads), [`Registry::export`] (PEFT or mlx-lm layout),
//!   [`Registry::history`].
//! - [`Gate`] (one required method, [`Gate::judge`]) returning a [`Verdict`]
//!   with reasons and numbers, and the built-in gates of [`gate`], composed
//!   by [`AllOf`] ([`gate::standard`]).
//! - [`Evaluator`]: what gates score through; [`ModelEvaluator`] runs the
//!   base model with sam-trainer (loss, preference log-probs, generation).
//! - [`canary`]: sticky MurmurHash3 bucketing and the feedback decision.
//! - [`DeployConfig`]: the `[deploy]` section of `sam.toml`.
//!
//! sam-deploy judges and moves adapters; it does not train, and it does not
//! open the store (feedback counts are handed to it).
//!
//! ```
//! use sam_deploy::{canary, Judgements, CanarySettings, CanaryDecision};
//! // Sticky routing: a key's bucket depends only on the slot and the key.
//! assert_eq!(canary::bucket("default", "alice"), canary::bucket("default", "alice"));
//! // 18 of 20 canary answers rated good, 36 of 40 for production: promote.
//! let d = canary::decide(
//!     Judgements { good: 18, bad: 2 },
//!     Judgements { good: 36, bad: 4 },
//!     &CanarySettings::default(),
//! );
//! assert!(matches!(d, CanaryDecision::Promote { .. }));
//! ```
//!
//! Registering and promoting (the gate needs the base model):
//!
//! ```no_run
//! use sam_deploy::{gate, Approval, EvalOptions, ModelEvaluator, Registration, Registry};
//! # fn main() -> sam_deploy::Result<()> {
//! let reg = Registry::open("/home/me/.sam/registry")?;
//! let (v, _new) = reg.register("default", &Registration::from_run("runs/2026-12-01-1200".as_ref())?)?;
//! let slot = reg.slot("default")?;
//! let mut ev = ModelEvaluator::load(&slot.base.path, EvalOptions::default())?;
//! let settings = gate::GateSettings::default();
//! let data = reg.trial_data(&v, None, &settings.prompts)?;
//! let verdict = reg.judge(&v, &gate::standard(&settings), &mut ev, &data)?;
//! if verdict.verdict.pass {
//!     reg.promote(&v, &Approval::Verdict(verdict))?;
//! }
//! let r = reg.resolve("default", Some("session-7"))?;
//! println!("load {:?} on {}", r.adapter_dir, r.base_model.display());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod canary;
pub mod config;
pub mod error;
pub mod eval;
mod fsx;
pub mod gate;
pub mod registry;
pub mod shape;

pub use canary::{CanaryDecision, CanarySettings, Judgements};
pub use config::DeployConfig;
pub use error::{Error, Result};
pub use eval::{Answer, EvalOptions, Evaluator, ModelEvaluator, Score, Subject};
pub use gate::{AllOf, Gate, GateSettings, Reason, Trial, TrialData, Verdict};
pub use registry::{
    Action, Aliases, Approval, BaseRef, CanaryState, HistoryEntry, Registration, Registry, Resolution, Slot,
    VerdictRecord, Version,
};
