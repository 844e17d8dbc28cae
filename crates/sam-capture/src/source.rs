//! The [`DataSource`] seam and the loop that feeds a source into a store.

use std::collections::BTreeMap;

use sam_schema::Example;
use sam_store::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pipeline::Pipeline;
use crate::redact::RedactionReport;

/// Where a source resumes: an opaque string that the source writes and reads
/// back (git: the last commit id per repository and branch; file sources: the
/// modification time and hash of each file). The store keeps it per source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor(pub String);

impl Cursor {
    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What one [`DataSource::collect`] call found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The new examples (not yet redacted or scored: [`collect_into`] does that).
    pub examples: Vec<Example>,
    /// Where the next collection resumes; `None` keeps the previous cursor.
    pub cursor: Option<Cursor>,
    /// Items passed over, counted by reason (`merge`, `bot`, `huge_diff`, …).
    pub skipped: BTreeMap<String, usize>,
}

impl Batch {
    /// Count one skipped item.
    pub fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }
}

/// A source of examples that can be mined incrementally.
///
/// `collect` returns what is new since `since` (everything when `None`), and
/// the cursor to pass next time. A source must be deterministic: the same
/// input and cursor give the same examples, so that an interrupted run can be
/// repeated.
pub trait DataSource {
    /// The source's name: the key of its cursor in the store and the
    /// `source` of its examples (`git`, `code`, `docs`, `routing`).
    fn name(&self) -> &str;

    /// Collect the examples that are new since `since`.
    fn collect(&mut self, since: Option<Cursor>) -> Result<Batch>;
}

/// What [`collect_into`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CollectReport {
    /// The source.
    pub source: String,
    /// Examples the source offered.
    pub collected: usize,
    /// New examples stored.
    pub inserted: u64,
    /// Examples already in the store.
    pub duplicates: u64,
    /// Examples the store refused.
    pub rejected: u64,
    /// Items the source passed over, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// What redaction replaced, by kind (never the values).
    pub redacted: RedactionReport,
}

/// Run one source incrementally: read its cursor from the store, collect,
/// redact and score every example, and store the examples together with the
/// new cursor in one transaction (so a crash never skips or repeats work).
pub fn collect_into(source: &mut dyn DataSource, store: &mut dyn Store, pipeline: &Pipeline) -> Result<CollectReport> {
    let name = source.name().to_string();
    let since = store.cursor(&name)?.map(Cursor);
    let batch = source.collect(since)?;
    let mut redacted = RedactionReport::default();
    let examples: Vec<Example> = batch
        .examples
        .into_iter()
        .map(|ex| {
            let (ex, r) = pipeline.prepare(ex);
            redacted.merge(&r);
            ex
        })
        .collect();
    let report = match &batch.cursor {
        Some(c) => store.insert_with_cursor(&examples, &name, c.as_str())?,
        None => store.insert(&examples)?,
    };
    Ok(CollectReport {
        source: name,
        collected: examples.len(),
        inserted: report.inserted,
        duplicates: report.duplicates,
        rejected: report.rejected,
        skipped: batch.skipped,
        redacted,
    })
}
