//! Evaluate: test loss and perplexity of the base model and of the adapter
//! on the held-out test split (the validation split when the test split is
//! empty; nothing, with a warning, when both are), written to the run
//! folder's `eval.json`.

use sam_prep::cache::{PreparedData, Split};
use sam_runs::RunDir;
use sam_trainer::{EvalConfig, EvalReport, LoadOptions};

use crate::error::Result;
use crate::event::Warning;
use crate::stage::{Context, Flow, Stage};
use crate::stages::train::TrainedModel;
use crate::stages::{PrepInfo, PrepStage, TrainInfo, TrainStage};

/// The evaluate stage; its output is the trainer's [`EvalReport`].
#[derive(Debug, Default, Clone, Copy)]
pub struct EvaluateStage;

impl EvaluateStage {
    /// Its name.
    pub const NAME: &'static str = "evaluate";
}

impl Stage for EvaluateStage {
    type Output = EvalReport;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<EvalReport>> {
        let cfg = cx.config();
        let prep: PrepInfo = cx.output(PrepStage::NAME)?;
        let train: TrainInfo = cx.output(TrainStage::NAME)?;
        let model = match cx.take_shared::<TrainedModel>() {
            Some(TrainedModel(m)) => m,
            None => {
                let mut m = sam_trainer::load_model(&cfg.model, &LoadOptions::default())?;
                sam_trainer::load_adapter(&mut m, &train.adapter_dir)?;
                m
            }
        };
        let data = PreparedData::open(&prep.dir)?;
        let mut examples = data.sft(Split::Test)?;
        let mut split = Split::Test;
        if examples.is_empty() {
            split = Split::Valid;
            examples = data.sft(split)?;
            if examples.is_empty() {
                // A store this small holds nothing out: nothing to score
                // (and nothing to gate on: the register stage ends the run).
                cx.events().warn(Warning::NothingHeldOut);
                let report = EvalReport {
                    split: Split::Test.name().into(),
                    examples: 0,
                    tokens: 0,
                    base: None,
                    adapter: None,
                    per_example: Vec::new(),
                };
                report.write(&RunDir::open(&train.run_dir)?.eval_path())?;
                return Ok(Flow::Next(report));
            }
            cx.events().warn(Warning::EvaluatedOn { split: split.name().to_string() });
        }
        let eval = EvalConfig {
            split: split.name().into(),
            max_seq_len: cfg.train.batch.max_seq_len,
            pad_id: prep.pad_id,
            max_examples: cfg.max_eval_examples,
            ..EvalConfig::default()
        };
        let report = sam_trainer::evaluate(&model, &examples, &eval)?;
        report.write(&RunDir::open(&train.run_dir)?.eval_path())?;
        Ok(Flow::Next(report))
    }
}
