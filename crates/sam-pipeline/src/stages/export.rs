//! Export: the quality-filtered examples to `SamHome::pipeline_export`,
//! recorded in the store's export history. An export identical to the one
//! the last complete run trained on ends the run: nothing new.

use std::path::PathBuf;

use sam_store::Filter;
use sam_store::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stage::{Context, Flow, Stage};
use crate::state::Outcome;

/// The export stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// Its number in the store's export history.
    pub id: i64,
    /// The file.
    pub path: PathBuf,
    /// Rows exported (the configured tiers).
    pub rows: u64,
    /// Examples left out for their tier (too low a score).
    pub left_out_low_quality: u64,
    /// BLAKE3 of the file.
    pub hash: String,
}

/// The export stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStage;

impl ExportStage {
    /// Its name.
    pub const NAME: &'static str = "export";
}

impl Stage for ExportStage {
    type Output = ExportInfo;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<ExportInfo>> {
        let cfg = cx.config();
        let filter = Filter::default().tiers(cfg.export_tiers.iter().copied());
        let path = cfg.home.pipeline_export(cx.run_id());
        let store = cx.store();
        let rec = store.export(&filter, &path, Default::default())?;
        let total = store.count(&Filter::default())?;
        if rec.rows == 0 {
            return Err(Error::NoData(format!(
                "the store holds {total} examples and none is in the exported tiers: mine a repository with history and docs (--repo PATH) or capture more"
            )));
        }
        let info = ExportInfo {
            id: rec.id,
            path: rec.path,
            rows: rec.rows,
            left_out_low_quality: total.saturating_sub(rec.rows),
            hash: rec.hash,
        };
        let last = cx.baseline::<ExportInfo>(Self::NAME);
        if last.is_some_and(|l| l.hash == info.hash) && !cx.force() {
            return Ok(Flow::End(info, Outcome::NothingNew));
        }
        Ok(Flow::Next(info))
    }
}
