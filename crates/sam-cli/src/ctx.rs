//! What every command shares: where SAM_HOME is, output mode, logging.

use std::path::PathBuf;

use sam_home::SamHome;

/// Shared state handed to every command.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The sam home folder (`--home`, else `$SAM_HOME`, else `~/.sam`).
    pub home: SamHome,
    /// Print JSON instead of human-readable output.
    pub json: bool,
}

impl Ctx {
    pub fn new(home: Option<PathBuf>, json: bool) -> anyhow::Result<Self> {
        Ok(Self { home: SamHome::resolve(home)?, json })
    }

    /// Create the home folder when it is missing.
    pub fn create_home(&self) -> anyhow::Result<()> {
        let root = self.home.root();
        std::fs::create_dir_all(root).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", root.display()))
    }
}

pub fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().try_init();
}

/// Print an error chain the way cargo does and return a failing exit code.
pub fn report(e: anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    std::process::ExitCode::FAILURE
}
