//! Prep: the export rendered with the base model's chat template,
//! tokenised, truncated and split into `SamHome::dataset_dir`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sam_models::BaseModel;
use sam_prep::prepare::{Preparer, read_inputs, read_manifest};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stage::{Context, Flow, Stage};
use crate::stages::{ExportInfo, ExportStage};

/// The prep stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepInfo {
    /// The dataset folder.
    pub dir: PathBuf,
    /// BLAKE3 of its `manifest.json`.
    pub manifest_hash: String,
    /// The padding token id the dataset was prepared with.
    #[serde(default)]
    pub pad_id: u32,
    /// SFT rows: train, valid, test.
    pub sft: [u64; 3],
    /// Preference pairs: train, valid, test.
    pub preference: [u64; 3],
    /// Tokens of the SFT sequences.
    pub tokens: u64,
    /// Tokens trained on (assistant tokens).
    pub trained_tokens: u64,
    /// Examples truncated (kept, shortened).
    pub truncated: u64,
    /// Examples dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// The prep stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrepStage;

impl PrepStage {
    /// Its name.
    pub const NAME: &'static str = "prep";
}

impl Stage for PrepStage {
    type Output = PrepInfo;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<PrepInfo>> {
        let cfg = cx.config();
        let export: ExportInfo = cx.output(ExportStage::NAME)?;
        let dir = cfg.home.dataset_dir(cx.run_id());
        let base = BaseModel::open(&cfg.model)?;
        let input = read_inputs(&[export.path])?;
        let n = input.examples.len() as u64;
        let done = AtomicU64::new(0);
        let prepared = Preparer::new(&base, cfg.prep.clone())?.prepare(&input, |k| {
            done.fetch_add(k as u64, Ordering::Relaxed);
        })?;
        cx.events().progress(done.into_inner(), n);
        prepared.write(&dir)?;
        let file = read_manifest(&dir)?;
        let m = &file.manifest;
        let d = &m.drops;
        let dropped = [
            ("too_long", d.dropped_too_long),
            ("no_response", d.dropped_no_response),
            ("template_error", d.dropped_template_error),
            ("duplicate_id", d.duplicate_ids),
            ("bad_row", d.bad_rows),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_string(), n as u64))
        .collect();
        let info = PrepInfo {
            dir: dir.clone(),
            manifest_hash: file.hash.clone(),
            pad_id: m.pad_id,
            sft: [m.sft.train as u64, m.sft.valid as u64, m.sft.test as u64],
            preference: [m.preference.train as u64, m.preference.valid as u64, m.preference.test as u64],
            tokens: m.sft_tokens.total as u64,
            trained_tokens: m.sft_tokens.trained as u64,
            truncated: d.truncated as u64,
            dropped,
        };
        if info.sft[0] == 0 {
            return Err(Error::NoData(format!(
                "the dataset at {} has no SFT training rows: mine a repository (--repo PATH) or capture more",
                dir.display()
            )));
        }
        cx.share(base);
        Ok(Flow::Next(info))
    }
}
