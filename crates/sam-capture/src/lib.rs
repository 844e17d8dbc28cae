//! sam-capture (being built).
#![deny(missing_docs)]

pub mod redact;
