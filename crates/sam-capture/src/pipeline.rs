//! What every example passes before it reaches the store: redaction, then
//! quality scoring, then domain classification.
//!
//! Redaction is skipped only when someone vouches for the data, and the
//! example then says so in `metadata.redaction` (`"skipped: …"`): its source
//! is in [`RedactionConfig::allow_sources`], or the caller asked for it
//! ([`Pipeline::prepare_unredacted`], what `sam ingest --no-redact` does).

use sam_schema::Example;
use sam_schema::quality::{QualityConfig, assess};
use serde::{Deserialize, Serialize};

use crate::domain::{DomainClassifier, DomainConfig};
use crate::redact::{RedactionConfig, RedactionReport, Redactor};

/// Settings of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    /// Redaction settings.
    pub redaction: RedactionConfig,
    /// Quality thresholds.
    pub quality: QualityConfig,
    /// Domain rules.
    pub domains: DomainConfig,
}

/// Redacts, scores and classifies examples.
///
/// ```
/// use sam_capture::Pipeline;
/// use sam_schema::{Content, Example, Tier};
///
/// let p = Pipeline::default();
/// let ex = Example::new(Content::Instruction {
///     instruction: "Who maintains the billing service?".into(),
///     input: String::new(),
///     output: "Ask jane.doe@corp.example, she owns it since the last reorg.".into(),
/// })
/// .with_source("feedback");
/// let (ex, report) = p.prepare(ex);
/// assert!(ex.content.output_texts()[0].contains("<EMAIL>"));
/// assert_eq!(report.total(), 1);
/// assert_eq!(ex.tier, Tier::Gold);
/// assert_eq!(ex.domain, "general");
/// ```
#[derive(Debug)]
pub struct Pipeline {
    redactor: Redactor,
    quality: QualityConfig,
    domains: DomainClassifier,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new(PipelineConfig::default())
    }
}

/// The metadata key that records a skipped redaction.
pub const REDACTION_SKIPPED_KEY: &str = "redaction";

impl Pipeline {
    /// A pipeline with these settings.
    ///
    /// # Panics
    ///
    /// When the redaction settings are invalid (see [`Pipeline::try_new`]).
    pub fn new(cfg: PipelineConfig) -> Self {
        Self::try_new(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A pipeline with these settings, or an error naming the invalid one
    /// (an `allow_patterns` entry that is not a regular expression).
    pub fn try_new(cfg: PipelineConfig) -> crate::Result<Self> {
        Ok(Self {
            redactor: Redactor::try_new(cfg.redaction)?,
            quality: cfg.quality,
            domains: DomainClassifier::new(cfg.domains),
        })
    }

    /// The redactor in use.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Redact every text of `ex`, then score it (quality, tier, reasons in
    /// `metadata.quality_reasons`) and give it a domain. An id that was the
    /// hash of the unredacted content is replaced by the new content's hash.
    /// An example of a source in `allow_sources` is not redacted, and says
    /// so in `metadata.redaction`.
    pub fn prepare(&self, mut ex: Example) -> (Example, RedactionReport) {
        if self.redactor.config().source_allowed(&ex.source) {
            return (self.prepare_unredacted(ex, "allowlisted source"), RedactionReport::default());
        }
        let derived_id = ex.id == ex.content.content_hash().short();
        let report = self.redactor.redact_example(&mut ex);
        if derived_id {
            ex.id = ex.content.content_hash().short();
        }
        if !report.is_empty() {
            let counts: serde_json::Map<String, serde_json::Value> =
                report.counts.iter().map(|(k, n)| (k.to_string(), (*n).into())).collect();
            ex.metadata.insert("redacted".into(), counts.into());
        }
        (self.score(ex).0, report)
    }

    /// Score and classify `ex` as [`prepare`](Self::prepare) does, without
    /// redacting it, for data the user vouches for; `metadata.redaction`
    /// records `"skipped: <why>"`.
    ///
    /// ```
    /// use sam_capture::Pipeline;
    /// use sam_schema::{Content, Example};
    ///
    /// let ex = Example::new(Content::Completion { text: "Write to ana@corp.example about the 2.0 release.".into() });
    /// let ex = Pipeline::default().prepare_unredacted(ex, "sam ingest --no-redact");
    /// assert!(ex.content.output_texts()[0].contains("ana@corp.example"));
    /// assert_eq!(ex.metadata["redaction"], "skipped: sam ingest --no-redact");
    /// ```
    pub fn prepare_unredacted(&self, mut ex: Example, why: &str) -> Example {
        ex.metadata.insert(REDACTION_SKIPPED_KEY.into(), format!("skipped: {why}").into());
        self.score(ex).0
    }

    fn score(&self, mut ex: Example) -> (Example, RedactionReport) {
        let a = assess(&ex.content, &self.quality);
        ex.quality = Some(a.score);
        ex.tier = a.tier;
        if !a.findings.is_empty() {
            ex.metadata.insert("quality_reasons".into(), a.reasons().into());
        }
        ex.domain = self.domains.classify(&ex);
        (ex, RedactionReport::default())
    }
}
