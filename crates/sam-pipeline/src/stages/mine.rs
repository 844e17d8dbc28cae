//! Mine: the repositories' git history, markdown docs and documented code
//! (incrementally, through sam-capture's sources) and the configured
//! captures, fed through `Capturer` as live ones are.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sam_capture::capture::{CaptureConfig, Capturer, FlushReport};
use sam_capture::code::CodeSource;
use sam_capture::docs::DocsSource;
use sam_capture::git::GitSource;
use sam_capture::redact::RedactionReport;
use sam_capture::{DataSource, Pipeline, collect_into};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stage::{Context, Flow, Stage};

/// What one source gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The source (`git`, `docs`, `code`, `captures`).
    pub source: String,
    /// Examples it offered.
    pub collected: u64,
    /// New examples stored.
    pub inserted: u64,
    /// Examples the store already had.
    pub duplicates: u64,
    /// Examples the store refused as invalid (quarantined).
    pub rejected: u64,
    /// Items the source passed over, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// The mine stage's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MineReport {
    /// The repositories mined.
    pub repos: Vec<PathBuf>,
    /// One entry per source.
    pub sources: Vec<SourceReport>,
    /// What redaction replaced, by kind, over all sources.
    pub redacted: RedactionReport,
}

impl MineReport {
    /// New examples stored, over all sources.
    pub fn inserted(&self) -> u64 {
        self.sources.iter().map(|s| s.inserted).sum()
    }
}

/// The mine stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct MineStage;

impl MineStage {
    /// Its name.
    pub const NAME: &'static str = "mine";
}

impl Stage for MineStage {
    type Output = MineReport;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Result<Flow<MineReport>> {
        let cfg = cx.config();
        let pipeline = Pipeline::new(cfg.cleaning.clone());
        let mut report = MineReport { repos: cfg.repos.clone(), ..Default::default() };
        let mut sources: Vec<Box<dyn DataSource>> = Vec::new();
        if !cfg.repos.is_empty() {
            sources.push(Box::new(GitSource::new(cfg.repos.clone(), cfg.git.clone())));
            sources.push(Box::new(DocsSource::new(cfg.repos.clone(), cfg.docs.clone())));
            sources.push(Box::new(CodeSource::new(cfg.repos.clone(), cfg.code.clone())));
        }
        let n = sources.len() as u64 + u64::from(!cfg.captures.is_empty());
        for (i, src) in sources.iter_mut().enumerate() {
            let (store, events) = cx.store_and_events();
            events.progress(i as u64, n);
            let r = collect_into(src.as_mut(), store, &pipeline)?;
            report.redacted.merge(&r.redacted);
            report.sources.push(SourceReport {
                source: r.source,
                collected: r.collected as u64,
                inserted: r.inserted,
                duplicates: r.duplicates,
                rejected: r.rejected,
                skipped: r.skipped.into_iter().map(|(k, v)| (k, v as u64)).collect(),
            });
        }
        if !cfg.captures.is_empty() {
            cx.events().progress(sources.len() as u64, n);
            let (sr, redacted) = capture(cx, pipeline)?;
            report.redacted.merge(&redacted);
            report.sources.push(sr);
        }
        Ok(Flow::Next(report))
    }
}

/// Feed the configured captures through a [`Capturer`], in one batch.
fn capture(cx: &mut Context<'_>, pipeline: Pipeline) -> Result<(SourceReport, RedactionReport)> {
    let cfg = cx.config();
    let events = &cfg.captures;
    let capture_cfg =
        CaptureConfig { max_batch: events.len().max(1), spool: Some(cfg.home.capture_spool()), ..Default::default() };
    let mut capturer = Capturer::new(cx.store(), pipeline, capture_cfg);
    let mut sr = SourceReport { source: "captures".into(), collected: events.len() as u64, ..Default::default() };
    let absorb = |f: FlushReport, sr: &mut SourceReport| -> Result<()> {
        if let Some(e) = f.error {
            return Err(Error::NoData(format!("the captures could not be stored ({e}); they wait in the spool")));
        }
        sr.inserted += f.stored;
        sr.duplicates += f.duplicates;
        sr.rejected += f.rejected;
        Ok(())
    };
    for ev in events.iter().cloned() {
        if let Some(f) = capturer.capture(ev)? {
            absorb(f, &mut sr)?;
        }
    }
    absorb(capturer.flush()?, &mut sr)?;
    Ok((sr, capturer.redacted().clone()))
}
