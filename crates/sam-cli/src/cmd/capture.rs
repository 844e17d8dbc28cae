//! Collection and capture commands: collect, capture, redact.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use sam_capture::capture::{CaptureConfig, CaptureEvent, Capturer, append_spool};
use sam_capture::{DataSource, Pipeline, PipelineConfig, collect_into};
use sam_store::SqliteStore;

use crate::config::Config;
use crate::ctx::Ctx;

// Parsed once per run: the size of the flag-heavy variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum CaptureCommand {
    /// Mine examples from git repositories, code, markdown docs or the routing table.
    ///
    /// Incremental: each source keeps a cursor in the store, so a second run
    /// reads only new commits and changed files. Every example is redacted
    /// (PII and secrets), scored and given a domain before it is stored.
    Collect {
        /// What to mine
        #[arg(value_enum)]
        source: SourceKind,
        /// Repositories (git), folders or files (code, docs); none for routing
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// git: skip commits that change more lines than this
        #[arg(long, value_name = "N", default_value_t = sam_capture::git::GitConfig::default().max_diff_lines)]
        max_diff_lines: usize,
    },

    /// Record an event from the running assistant.
    ///
    /// Give the texts as flags, or JSON on stdin: one object per line with the
    /// same keys (`prompt`, `local`, `remote`, `wrong`, `correction`, `chosen`,
    /// `rejected`, `response`, `system`, `model`, `adapter_version`). If the store cannot be
    /// written (locked, read-only), the examples go to the spool and reach the
    /// store on the next capture.
    Capture {
        /// The event
        #[arg(value_enum)]
        kind: CaptureKind,
        /// The user's request
        #[arg(long)]
        prompt: Option<String>,
        /// Escalation: the local model's attempt
        #[arg(long)]
        local: Option<String>,
        /// Escalation: the remote model's answer
        #[arg(long)]
        remote: Option<String>,
        /// Correction: the wrong answer
        #[arg(long)]
        wrong: Option<String>,
        /// Correction: the user's correction
        #[arg(long)]
        correction: Option<String>,
        /// Preference: the preferred answer
        #[arg(long)]
        chosen: Option<String>,
        /// Preference: the other answer
        #[arg(long)]
        rejected: Option<String>,
        /// Feedback, distill: the answer
        #[arg(long)]
        response: Option<String>,
        /// Distill: the teacher's system prompt
        #[arg(long)]
        system: Option<String>,
        /// Escalation, distill: the remote or teacher model's name
        #[arg(long)]
        model: Option<String>,
        /// The adapter version whose answer this judges (from `sam deploy
        /// which`), so a canary's feedback counts for it
        #[arg(long, value_name = "VERSION")]
        adapter_version: Option<String>,
    },

    /// Redact PII and secrets from files (or stdin) to stdout, as collect,
    /// capture and ingest do before they store anything; the counts by type go
    /// to stderr.
    ///
    /// With --explain, list each finding instead of the text: where it is
    /// (`file:line:column`, end and byte range), the rule that found it, its type
    /// and score, never the value. Use it to see why something was (or was
    /// not) redacted, then tune [capture.redaction] in sam.toml: `allow` and
    /// `allow_patterns` for values you know are safe, `disabled` for kinds you
    /// do not want redacted.
    #[command(verbatim_doc_comment)]
    Redact {
        /// Files to read [default: standard input]
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// List the findings (rule, type, span) instead of the redacted text
        #[arg(long)]
        explain: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SourceKind {
    Git,
    Code,
    Docs,
    Routing,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CaptureKind {
    Escalation,
    Correction,
    Preference,
    Feedback,
    Distill,
}

impl CaptureKind {
    fn tag(self) -> &'static str {
        match self {
            CaptureKind::Escalation => "escalation",
            CaptureKind::Correction => "correction",
            CaptureKind::Preference => "preference",
            CaptureKind::Feedback => "feedback",
            CaptureKind::Distill => "distill",
        }
    }
}

pub fn run(cmd: CaptureCommand, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        CaptureCommand::Collect { source, paths, max_diff_lines } => collect(ctx, source, paths, max_diff_lines),
        CaptureCommand::Capture {
            kind,
            prompt,
            local,
            remote,
            wrong,
            correction,
            chosen,
            rejected,
            response,
            system,
            model,
            adapter_version,
        } => {
            let events = match prompt {
                Some(prompt) => {
                    let mut obj = serde_json::Map::new();
                    obj.insert("type".into(), kind.tag().into());
                    obj.insert("prompt".into(), prompt.into());
                    for (k, v) in [
                        ("local", local),
                        ("remote", remote),
                        ("wrong", wrong),
                        ("correction", correction),
                        ("chosen", chosen),
                        ("rejected", rejected),
                        ("response", response),
                        ("system", system),
                        ("model", model),
                        ("adapter_version", adapter_version),
                    ] {
                        if let Some(v) = v {
                            obj.insert(k.into(), v.into());
                        }
                    }
                    vec![parse_event(serde_json::Value::Object(obj), "--flags")?]
                }
                None => read_events(kind)?,
            };
            capture(ctx, events)
        }
        CaptureCommand::Redact { files, explain } => redact(ctx, &files, explain),
    }
}

fn pipeline(cfg: &Config) -> Pipeline {
    Pipeline::new(PipelineConfig {
        redaction: cfg.redaction.clone(),
        quality: cfg.quality.clone(),
        domains: Default::default(),
    })
}

fn open_store(ctx: &Ctx, cfg: &Config) -> anyhow::Result<SqliteStore> {
    ctx.create_home()?;
    let path = ctx.home.store_db();
    SqliteStore::open_with(&path, &cfg.store).with_context(|| format!("cannot open the store {}", path.display()))
}

fn collect(ctx: &Ctx, source: SourceKind, paths: Vec<PathBuf>, max_diff_lines: usize) -> anyhow::Result<()> {
    let cfg = Config::load(&ctx.home)?;
    if paths.is_empty() && !matches!(source, SourceKind::Routing) {
        anyhow::bail!("give at least one PATH to collect from");
    }
    let mut src: Box<dyn DataSource> = match source {
        SourceKind::Git => {
            let git = sam_capture::git::GitConfig { max_diff_lines, ..Default::default() };
            Box::new(sam_capture::git::GitSource::new(paths, git))
        }
        SourceKind::Code => Box::new(sam_capture::code::CodeSource::new(paths, Default::default())),
        SourceKind::Docs => Box::new(sam_capture::docs::DocsSource::new(paths, Default::default())),
        SourceKind::Routing => Box::new(sam_capture::routing::RoutingSource::new(cfg.routing.clone())),
    };
    let mut store = open_store(ctx, &cfg)?;
    let report = collect_into(src.as_mut(), &mut store, &pipeline(&cfg))?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} collected, {} new, {} already stored, {} rejected",
        report.source, report.collected, report.inserted, report.duplicates, report.rejected
    );
    if !report.skipped.is_empty() {
        let s: Vec<String> = report.skipped.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("skipped: {}", s.join(", "));
    }
    if !report.redacted.is_empty() {
        println!("{}", report.redacted);
    }
    Ok(())
}

fn parse_event(mut v: serde_json::Value, origin: &str) -> anyhow::Result<CaptureEvent> {
    serde_json::from_value::<CaptureEvent>(v.take()).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
}

fn read_events(kind: CaptureKind) -> anyhow::Result<Vec<CaptureEvent>> {
    let stdin = std::io::stdin();
    let mut out = Vec::new();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("<stdin>:{}", i + 1);
        let mut v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{origin}: invalid JSON: {e}"))?;
        let obj = v.as_object_mut().ok_or_else(|| anyhow::anyhow!("{origin}: expected a JSON object"))?;
        obj.entry("type").or_insert_with(|| kind.tag().into());
        if obj.get("type").and_then(|t| t.as_str()) != Some(kind.tag()) {
            anyhow::bail!("{origin}: a {} event given to `sam capture {}`", obj["type"], kind.tag());
        }
        out.push(parse_event(v, &origin)?);
    }
    if out.is_empty() {
        anyhow::bail!("nothing to capture: give --prompt and the other texts, or JSON on stdin");
    }
    Ok(out)
}

fn capture(ctx: &Ctx, events: Vec<CaptureEvent>) -> anyhow::Result<()> {
    let cfg = Config::load(&ctx.home)?;
    let spool = cfg.capture.spool.clone().unwrap_or_else(|| ctx.home.capture_spool());
    let capture_cfg = CaptureConfig { spool: Some(spool.clone()), max_batch: usize::MAX, ..cfg.capture.clone() };
    // Capture must not stall the assistant: a short wait for the lock, then the spool.
    let store_cfg = Config {
        store: sam_store::StoreConfig { busy_timeout_ms: cfg.capture.busy_timeout_ms, ..cfg.store.clone() },
        ..cfg.clone()
    };
    let report = match open_store(ctx, &store_cfg) {
        Ok(store) => {
            let mut cap = Capturer::new(store, pipeline(&cfg), capture_cfg);
            for e in events {
                cap.capture_event(e)?;
            }
            cap.flush()?
        }
        Err(e) => {
            // The store cannot even be opened: spool, never lose a capture.
            let p = pipeline(&cfg);
            let mut examples = Vec::new();
            for ev in events {
                examples.push(p.prepare(ev.to_example(capture_cfg.escalation_as_preference)?).0);
            }
            append_spool(&spool, &examples)?;
            sam_capture::capture::FlushReport {
                spooled: examples.len(),
                error: Some(format!("{e:#}")),
                ..Default::default()
            }
        }
    };
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.drained > 0 {
        println!("{} spooled example(s) drained into the store", report.drained);
    }
    if let Some(err) = &report.error {
        println!("store not writable ({err}): {} example(s) spooled to {}", report.spooled, spool.display());
    } else {
        println!("{} stored, {} already stored, {} rejected", report.stored, report.duplicates, report.rejected);
    }
    Ok(())
}

fn redact(ctx: &Ctx, files: &[PathBuf], explain: bool) -> anyhow::Result<()> {
    let cfg = Config::load(&ctx.home)?;
    let redactor = sam_capture::redact::Redactor::try_new(cfg.redaction)
        .with_context(|| format!("{}: fix the [capture.redaction] section", ctx.home.config_file().display()))?;
    let mut inputs: Vec<(String, String)> = Vec::new();
    if files.is_empty() {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).context("cannot read stdin")?;
        inputs.push(("<stdin>".into(), input));
    }
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}: check the path", f.display()))?;
        inputs.push((f.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
    }
    let mut report = sam_capture::redact::RedactionReport::default();
    let mut stdout = std::io::stdout().lock();
    if explain {
        let mut all = Vec::new();
        for (name, text) in &inputs {
            for f in redactor.find(text) {
                let (line, column) = line_col(text, f.range.start);
                let (end_line, end_column) = line_col(text, f.range.end);
                report.counts.entry(f.kind).and_modify(|n| *n += 1).or_insert(1);
                all.push(serde_json::json!({
                    "file": name, "line": line, "column": column, "end_line": end_line, "end_column": end_column,
                    "start": f.range.start, "end": f.range.end, "rule": f.rule, "kind": f.kind, "score": f.score,
                }));
            }
        }
        if ctx.json {
            let out = serde_json::json!({ "findings": all, "counts": report.counts });
            writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
            return Ok(());
        }
        for f in &all {
            let at = format!("{}:{}:{}", f["file"].as_str().unwrap_or(""), f["line"], f["column"]);
            writeln!(
                stdout,
                "{at:<24} to {}:{:<4} bytes {}..{}  {:<22} {:<18} score {:.2}",
                f["end_line"],
                f["end_column"],
                f["start"],
                f["end"],
                f["rule"].as_str().unwrap_or(""),
                f["kind"].as_str().unwrap_or(""),
                f["score"].as_f64().unwrap_or(0.0)
            )?;
        }
        writeln!(stdout, "{}", if report.is_empty() { "no findings".to_string() } else { report.to_string() })?;
        return Ok(());
    }
    for (_, text) in &inputs {
        let (out, r) = redactor.redact(text);
        report.merge(&r);
        stdout.write_all(out.as_bytes())?;
    }
    stdout.flush()?;
    if ctx.json {
        eprintln!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!("{report}");
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}
