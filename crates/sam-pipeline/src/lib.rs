//! sam's one pipeline: what `sam run` and the scheduler's "enough new data"
//! trigger both call.
//!
//! The pipeline is a list of [`stage::Stage`]s — values with a name and a
//! typed, serde output — run by one driver, [`stage::Pipeline::run`], that
//! owns resuming, skipping, the state file and the events. The standard list
//! ([`stage::Pipeline::standard`], [`stages`]):
//!
//! 1. **mine** the configured git repositories (history, markdown docs,
//!    documented code, incrementally) and feed the configured captures
//!    through `sam_capture::capture::Capturer`, so that redaction, scoring
//!    and domains apply to them as to live ones;
//! 2. **clean**: validate new examples into tiers, remove same-question and
//!    near duplicates;
//! 3. **export** the configured tiers (recorded in the store's export
//!    history); an export identical to the one the last complete run
//!    trained on ends the run with [`Outcome::NothingNew`];
//! 4. **prep** the export for the base model (`sam_prep`);
//! 5. **train** a LoRA adapter as a `sam_trainer::Job` in its run folder
//!    (SFT, then DPO from the SFT adapter when the dataset has preference
//!    pairs), recorded in the store's training runs;
//! 6. **evaluate** base and adapter on the held-out test split;
//! 7. **report**: the training run recorded as evaluated;
//! 8. **register** the adapter in the registry (`sam_deploy`) as a version
//!    of the base model's slot, created on the first run;
//! 9. **gate**: the standard gate judges it against production (the base
//!    model at first);
//! 10. **promote** it, or start a canary ([`stages::Rollout`]), when the
//!     gate passes; a refusal moves nothing and is a normal end.
//!     [`PipelineConfig::deploy`] `None` ends the run after evaluation; so
//!     does a test split too small to gate on ([`stages::Registered::NotGated`],
//!     [`Summary::not_gated`]). An adapter in place already is left as it
//!     is, not judged against itself ([`stages::Decision::Unchanged`]).
//!
//! [`PipelineConfig::stop`] stops a run at the next safe point (before the
//! next stage, or after a training step with a checkpoint) with
//! [`Error::Stopped`]; the next run continues there.
//!
//! Main types: [`PipelineConfig`] (from `sam.toml`'s sections with
//! [`PipelineConfig::from_config`]), [`event::Event`] (what a run emits, as
//! data: stage started / progress / finished with its output, training steps,
//! validations, warnings, the final [`Summary`]), [`PipelineState`] (kept in
//! `SamHome::pipeline_state`, rewritten atomically after every stage). Every
//! run appends its events to `SamHome::pipeline_events`; an
//! [`event::EventReader`] replays or follows them from another process.
//!
//! ```no_run
//! use sam_pipeline::{Outcome, PipelineConfig, event::Event};
//!
//! let mut cfg = PipelineConfig::new("/tmp/sam-home", "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
//! cfg.repos.push(".".into());
//! let mut steps = 0;
//! let summary = sam_pipeline::run(&cfg, &mut |e: &Event| {
//!     if let Event::TrainStep { .. } = e {
//!         steps += 1;
//!     }
//! })?;
//! if summary.outcome == Outcome::Trained {
//!     let eval = summary.eval.unwrap();
//!     let (base, adapter) = (eval.base.unwrap(), eval.adapter.unwrap());
//!     println!("{steps} steps; test loss: base {:.3}, adapter {:.3}", base.loss, adapter.loss);
//! }
//! # Ok::<(), sam_pipeline::Error>(())
//! ```
#![deny(missing_docs)]

pub mod config;
mod error;
pub mod event;
pub mod stage;
pub mod stages;
mod state;
mod summary;

pub use config::{DpoSettings, PipelineConfig, settings};
pub use error::{Error, Result};
pub use event::{Event, EventReader, EventSink, NoEvents};
pub use stage::{Flow, Pipeline, Stage};
pub use state::{Outcome, PipelineState, StageRecord};
pub use summary::{Paths, Summary};

/// Run the standard pipeline ([`Pipeline::standard`]), continuing an
/// interrupted run when there is one.
///
/// A run that finds nothing new (the export's hash equals the one the last
/// complete run trained on) stops after the export with
/// [`Outcome::NothingNew`] and trains nothing, unless `cfg.force` is set.
pub fn run(cfg: &PipelineConfig, events: &mut dyn EventSink) -> Result<Summary> {
    Pipeline::standard().run(cfg, events)
}
