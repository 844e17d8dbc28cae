//! Adapter registry and deployment for sam.
//!
//! **Not built yet.** This crate will hold the registry of adapter versions
//! under `SAM_HOME/registry/`, the `Gate` trait (threshold, comparison and
//! regression gates that judge a candidate adapter against production), atomic
//! promotion, a canary split and rollback to the previous production adapter.
#![deny(missing_docs)]
