//! `sam`: turn a coding assistant's own history into better models.
//!
//! The binary is thin: it parses the command line, picks the command and calls
//! into the library crates. Each group of commands lives in its own module
//! under `cmd/`, owning its clap types and its `run` function; this file only
//! joins them.

mod cmd;
mod config;
mod ctx;
mod samples;

use clap::{Parser, Subcommand};

/// sam — collect, clean, prepare and train LoRA adapters from your coding
/// assistant's own history, on your own machine.
///
/// Everything lives under SAM_HOME (default ~/.sam): the store (store.db),
/// prepared datasets, training runs and adapters.
#[derive(Parser, Debug)]
#[command(name = "sam", version, about, long_about, propagate_version = true)]
struct Cli {
    /// Home folder for sam's data [default: $SAM_HOME, else ~/.sam]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<std::path::PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG also works
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Print machine-readable JSON instead of tables (where a command has output)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    #[command(flatten)]
    Store(cmd::store::StoreCommand),
    #[command(flatten)]
    Capture(cmd::capture::CaptureCommand),
    #[command(flatten)]
    Prep(cmd::prep::PrepCommand),
    #[command(flatten)]
    Run(cmd::run::RunCommand),
    #[command(flatten)]
    Train(cmd::train::TrainCommand),
    #[command(flatten)]
    Runs(cmd::runs::RunsCommand),
    #[command(flatten)]
    Schedule(cmd::schedule::ScheduleCommand),
    #[command(flatten)]
    Serve(cmd::serve::ServeCommand),
    #[command(flatten)]
    Deploy(cmd::deploy::DeployCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Commands::Serve(_)) {
        quiet_on_closed_pipe();
    }
    ctx::init_tracing(cli.verbose);
    let ctx = match ctx::Ctx::new(cli.home, cli.json) {
        Ok(c) => c,
        Err(e) => return ctx::report(e),
    };
    let res = match cli.command {
        Commands::Store(c) => cmd::store::run(c, &ctx),
        Commands::Capture(c) => cmd::capture::run(c, &ctx),
        Commands::Prep(c) => cmd::prep::run(c, &ctx),
        Commands::Run(c) => cmd::run::run(c, &ctx),
        Commands::Train(c) => cmd::train::run(c, &ctx),
        Commands::Runs(c) => cmd::runs::run(c, &ctx),
        Commands::Schedule(c) => cmd::schedule::run(c, &ctx),
        Commands::Serve(c) => cmd::serve::run(c, &ctx),
        Commands::Deploy(c) => cmd::deploy::run(c, &ctx),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => ctx::report(e),
    }
}

/// A reader that goes away (`sam runs list | head -3`) ends the command
/// quietly, as it ends `ls` or `git log`, instead of a panic in `println!`:
/// Rust ignores SIGPIPE by default, so the default action is put back.
/// `sam serve` keeps ignoring it: a client that hangs up must not stop the
/// server.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any
    // thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
