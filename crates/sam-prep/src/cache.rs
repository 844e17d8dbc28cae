//! The tokenised cache: what prep writes and the trainer reads. It lives in
//! its own crate, [`sam_dataset`] (so that readers need no template engine),
//! and is re-exported here as it always was.

pub use sam_dataset::*;
