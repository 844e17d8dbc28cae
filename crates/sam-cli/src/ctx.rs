//! What every command shares: where SAM_HOME is, output mode, logging.

use std::path::PathBuf;

/// Shared state handed to every command.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The sam home folder (`--home`, else `$SAM_HOME`, else `~/.sam`).
    pub home: PathBuf,
    /// Print JSON instead of human-readable output.
    pub json: bool,
}

impl Ctx {
    pub fn new(home: Option<PathBuf>, json: bool) -> anyhow::Result<Self> {
        let home = match home {
            Some(h) => h,
            None => default_home()?,
        };
        Ok(Self { home, json })
    }

    /// Path of the store database.
    #[allow(dead_code)]
    pub fn store_path(&self) -> PathBuf {
        self.home.join("store.db")
    }
}

fn default_home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("SAM_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow::anyhow!("neither SAM_HOME nor HOME is set: pass --home DIR"))?;
    Ok(PathBuf::from(home).join(".sam"))
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
