//! What every example passes before it reaches the store: redaction, then
//! quality scoring, then domain classification.

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

impl Pipeline {
    /// A pipeline with these settings.
    pub fn new(cfg: PipelineConfig) -> Self {
        Self {
            redactor: Redactor::new(cfg.redaction),
            quality: cfg.quality,
            domains: DomainClassifier::new(cfg.domains),
        }
    }

    /// The redactor in use.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Redact every text of `ex`, then score it (quality, tier, reasons in
    /// `metadata.quality_reasons`) and give it a domain. An id that was the
    /// hash of the unredacted content is replaced by the new content's hash.
    pub fn prepare(&self, mut ex: Example) -> (Example, RedactionReport) {
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
        let a = assess(&ex.content, &self.quality);
        ex.quality = Some(a.score);
        ex.tier = a.tier;
        if !a.findings.is_empty() {
            ex.metadata.insert("quality_reasons".into(), a.reasons().into());
        }
        ex.domain = self.domains.classify(&ex);
        (ex, report)
    }
}
