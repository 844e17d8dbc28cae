//! Store commands: init, ingest, validate, dedup, export, stats.

use crate::ctx::Ctx;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Create SAM_HOME with a default sam.toml and an empty store
    Init,
}

pub fn run(cmd: StoreCommand, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Init => {
            std::fs::create_dir_all(&ctx.home)?;
            println!("initialised {}", ctx.home.display());
            Ok(())
        }
    }
}
