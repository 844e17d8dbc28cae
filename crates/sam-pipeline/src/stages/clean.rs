//! Clean: validate new examples into tiers, remove examples asking the same
//! question and near-duplicates.

use sam_store::prelude::*;
use sam_store::{Filter, ValidateOptions, ValidateReport};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::stage::{Context, Flow, Stage};

/// The clean stage's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanReport {
    /// The validation pass (examples validated, tiers, failed checks).
    pub validation: ValidateReport,
    /// Examples removed because another asked the same question (same input
    /// hash), keeping the best.
    pub same_question_removed: u64,
    /// Near-duplicates removed (MinHash), keeping the best.
    pub near_duplicates_removed: u64,
    /// Examples in the store after cleaning.
    pub store_total: u64,
}

/// The clean stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct CleanStage;

impl CleanStage {
    /// Its name.
    pub const NAME: &'static str = "clean";
}

impl Stage for CleanStage {
    type Output = CleanReport;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<CleanReport>> {
        let cfg = cx.config();
        let opts = ValidateOptions { quality: cfg.cleaning.quality.clone(), all: false };
        let (store, events) = cx.store_and_events();
        let validation = store.validate(&opts, &mut |done, total| events.progress(done, total))?;
        let same_question_removed = store.dedup(false)?.removed;
        let near_duplicates_removed = match &cfg.near_dup {
            Some(near) => store.dedup_near(near, true)?.removed,
            None => 0,
        };
        let store_total = store.count(&Filter::default())?;
        Ok(Flow::Next(CleanReport { validation, same_question_removed, near_duplicates_removed, store_total }))
    }
}
