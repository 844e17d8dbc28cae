//! Collection and live capture of training examples for sam, with PII and
//! secret redaction, quality scoring and domain classification on the way
//! in: every example that reaches the store has passed all three.
//!
//! - [`DataSource`] is the seam for batch mining: `collect(since)` returns a
//!   [`Batch`] of new examples and the [`Cursor`] to resume from;
//!   [`collect_into`] runs a source incrementally against a
//!   [`sam_store::Store`], storing the examples and the cursor in one
//!   transaction. Sources: [`git::GitSource`] (commit messages from diffs),
//!   [`code::CodeSource`] (documented functions and types, both
//!   directions), [`docs::DocsSource`] (markdown sections as Q&A) and
//!   [`routing::RoutingSource`] (which model handles which task).
//! - [`capture::Capturer`] is the live API for the running assistant:
//!   escalations, corrections, preferred alternatives, positive feedback and
//!   distillation, batched and flushed by size and time, spooled to an
//!   append-only file when the store cannot be written;
//!   [`capture::BackgroundCapturer`] shares one between threads and flushes
//!   by time from a thread of its own.
//! - [`Pipeline`] redacts ([`redact::Redactor`]), scores
//!   ([`sam_schema::quality::assess`]) and classifies
//!   ([`domain::DomainClassifier`]) each example.
//!
//! ```
//! use sam_capture::{collect_into, docs::DocsSource, Pipeline};
//! use sam_store::prelude::*;
//! use sam_store::SqliteStore;
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(
//!     dir.path().join("README.md"),
//!     "# Deploy\n\n## Rollback\n\nRun `sam rollback` to restore the previous adapter; mail ops@corp.example first.\n",
//! )?;
//! let mut store = SqliteStore::open(dir.path().join("store.db"))?;
//! let mut docs = DocsSource::new([dir.path()], Default::default());
//! let report = collect_into(&mut docs, &mut store, &Pipeline::default())?;
//! assert_eq!(report.inserted, 1);
//! assert_eq!(report.redacted.total(), 1); // the email
//! // A second run finds nothing new.
//! assert_eq!(collect_into(&mut docs, &mut store, &Pipeline::default())?.collected, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod capture;
pub mod code;
pub mod docs;
pub mod domain;
mod error;
mod files;
pub mod git;
mod pipeline;
pub mod redact;
pub mod routing;
mod source;

pub use error::{CaptureError, Result};
pub use pipeline::{Pipeline, PipelineConfig, REDACTION_SKIPPED_KEY};
pub use source::{Batch, CollectReport, Cursor, DataSource, collect_into};
