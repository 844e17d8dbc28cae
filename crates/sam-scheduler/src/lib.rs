//! Persistent periodic jobs for sam, and the one pipeline they drive.
//!
//! **Not built yet.** This crate will hold:
//! - the scheduler: jobs (mining, deduplication, quality check, export) with
//!   intervals and free-memory requirements, state and history kept under
//!   `SAM_HOME/scheduler/`, a lock file so only one instance runs;
//! - the pipeline shared by `sam run` and the scheduler's trigger: mine →
//!   validate + dedup → export → prep → train → evaluate → gate → deploy;
//! - the trigger "enough new data since the last training run → run the
//!   pipeline".
#![deny(missing_docs)]
