//! One module per group of commands. Each owns its clap types (a
//! `#[derive(Subcommand)]` enum flattened into the top level) and a
//! `run(cmd, &Ctx)` function that calls into the library crates.

pub mod capture;
pub mod deploy;
pub mod prep;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod serve;
pub mod store;
pub mod train;
