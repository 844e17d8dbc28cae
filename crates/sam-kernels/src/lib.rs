//! sam-kernels: CPU compute kernels for sam's training path.
//!
//! For now: [`profile`], a span profiler that times the parts of a training
//! step (on with `SAM_PROFILE=1`).
//!
//! ```
//! let _s = sam_kernels::profile::span("step");
//! ```
#![deny(missing_docs)]

pub mod profile;
