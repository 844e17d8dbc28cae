//! `sam serve`: the HTTP API (capture, statistics, runs) and the dashboard,
//! for an assistant that is not written in Rust.

use std::io::Write;

use clap::{Args, Subcommand};
use sam_serve::{Server, Settings, Token};

use crate::config::Config;
use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum ServeCommand {
    /// Serve the HTTP API and the dashboard (loopback only by default)
    ///
    /// The assistant posts its events to /v1/capture/KIND (escalation,
    /// correction, preference, feedback, distill) with `Authorization: Bearer <token>` (the
    /// token is generated into SAM_HOME, mode 0600; `sam serve token` prints
    /// it). A 201 answer means the capture is in the store or in the fsynced
    /// spool. The dashboard at / shows the store, the pipeline and training
    /// runs (live) and the registry, and needs no token; the API is described at /v1/openapi.json.
    /// Ctrl-C or SIGTERM stops the server after the requests in flight.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    action: Option<ServeAction>,
    /// IP address to listen on [default: [serve] bind in sam.toml, else 127.0.0.1]
    #[arg(long, value_name = "IP")]
    bind: Option<String>,
    /// Port to listen on, 0 for any free one [default: [serve] port, else 8765]
    #[arg(long, short, value_name = "N")]
    port: Option<u16>,
    /// Allow an address other machines can reach (anyone who can connect
    /// sees the dashboard; writes still need the token)
    #[arg(long)]
    allow_remote: bool,
}

#[derive(Subcommand, Debug)]
enum ServeAction {
    /// Print the bearer token (generating it when there is none)
    Token {
        /// Replace it with a new one (a running server keeps the old one
        /// until it restarts)
        #[arg(long)]
        rotate: bool,
    },
}

pub fn run(cmd: ServeCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let ServeCommand::Serve(args) = cmd;
    match args.action {
        Some(ServeAction::Token { rotate }) => token(ctx, rotate),
        None => serve(ctx, args),
    }
}

fn token_path(ctx: &Ctx) -> std::path::PathBuf {
    ctx.home.serve_token()
}

fn token(ctx: &Ctx, rotate: bool) -> anyhow::Result<()> {
    let path = token_path(ctx);
    let token = if rotate { Token::rotate(&path)? } else { Token::load_or_create(&path)? };
    if ctx.json {
        println!("{}", serde_json::json!({ "token": token.secret(), "path": path }));
    } else {
        println!("{}", token.secret());
    }
    Ok(())
}

fn serve(ctx: &Ctx, args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&ctx.home)?;
    let mut serve = cfg.serve.clone();
    if let Some(b) = args.bind {
        serve.bind = b;
    }
    if let Some(p) = args.port {
        serve.port = p;
    }
    ctx.create_home()?;
    let spool = cfg.capture.spool.clone().unwrap_or_else(|| ctx.home.capture_spool());
    let settings = Settings {
        config: serve,
        store_config: cfg.store.clone(),
        capture: cfg.capture.clone(),
        spool,
        pipeline: sam_capture::PipelineConfig {
            redaction: cfg.redaction.clone(),
            quality: cfg.quality.clone(),
            domains: Default::default(),
        },
        ..Settings::new(&ctx.home)
    };
    let server = Server::bind(settings, args.allow_remote)?;
    let url = server.url();
    let mut out = std::io::stdout().lock();
    if ctx.json {
        let line = serde_json::json!({ "url": url, "token_file": server.token().path(), "pid": std::process::id() });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "sam serve: listening on {url}")?;
        writeln!(out, "  dashboard  {url}/")?;
        writeln!(out, "  API        {url}/v1  (described at {url}/v1/openapi.json)")?;
        writeln!(out, "  token      {}  (`sam serve token` prints it)", server.token().path().display())?;
        writeln!(out, "Ctrl-C or SIGTERM stops it.")?;
    }
    out.flush()?;
    drop(out);
    server.run_blocking(sam_serve::shutdown_signal())?;
    tracing::info!("sam serve: stopped");
    Ok(())
}
