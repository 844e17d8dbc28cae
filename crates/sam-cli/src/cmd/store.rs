//! Store commands: init, ingest, quarantine, validate, dedup, export, stats.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sam_capture::redact::{RedactionReport, SecretKind};
use sam_capture::{Pipeline, PipelineConfig};
use sam_schema::{Example, JsonlError, JsonlReader, Kind, LineError, Tier};
use sam_store::prelude::*;
use sam_store::{Batch, ExportFormat, Filter, InsertReport, SqliteStore, Stats, ValidateOptions};
use serde::Serialize;

use crate::config::Config;
use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Create SAM_HOME with a commented sam.toml (every default written out)
    /// and an empty store. Safe to run again: existing files are kept.
    Init {
        /// Overwrite an existing sam.toml with the defaults
        #[arg(long)]
        force: bool,
    },

    /// Store examples from JSONL files (or `-` for standard input).
    ///
    /// Reads every form sam knows (instruction, chat, preference, completion,
    /// prompt/completion, and sam's own full form). Every example passes what
    /// `sam collect` and `sam capture` pass: PII and secret redaction ([capture.redaction]
    /// in sam.toml; `sam redact --explain` shows what it finds), then quality
    /// scoring into a tier, so `sam export` exports the good ones at once.
    /// Each line that cannot be read, and each example that fails basic
    /// validity (an empty answer, a chat with no assistant turn, …), is
    /// reported as `file:line: reason` and kept in quarantine, redacted too (see
    /// `sam quarantine`); every good line is stored. Examples already stored
    /// count as duplicates, so re-ingesting a file adds nothing. Work is
    /// committed in batches: an interrupted ingest keeps every whole batch, and
    /// running it again completes it.
    #[command(verbatim_doc_comment)]
    Ingest {
        /// JSONL files to read; `-` reads standard input
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Source for examples that name none [default: file:<file name>]
        #[arg(long)]
        source: Option<String>,
        /// Domain for examples that name none
        #[arg(long)]
        domain: Option<String>,
        /// Examples per transaction [default: [store] batch_size in sam.toml]
        #[arg(long, value_name = "N")]
        batch_size: Option<usize>,
        /// Store the text as it is, without PII and secret redaction, for data you
        /// vouch for; each example records it (`metadata.redaction`)
        #[arg(long)]
        no_redact: bool,
    },

    /// List the lines that could not be stored, or clear them.
    ///
    /// Each entry shows `file:line: reason`; `--raw` adds the text as read.
    /// Fix the lines at their source and ingest again, then clear them.
    Quarantine {
        #[command(subcommand)]
        action: Option<QuarantineAction>,
        /// Show at most this many entries
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Also print each line's text as read
        #[arg(long)]
        raw: bool,
    },

    /// Score examples into tiers (gold, silver, bronze, unverified).
    ///
    /// Checks empty content, length, repetition, completeness and refusal
    /// boilerplate with the thresholds of [quality] in sam.toml, sets each
    /// example's quality and tier, and logs the reasons of every example that
    /// lost points. Only examples never validated are scored, unless --all.
    Validate {
        /// Score every example again (after changing [quality] thresholds)
        #[arg(long)]
        all: bool,
    },

    /// Remove duplicate examples, keeping the best copy.
    ///
    /// Exact copies (same content once whitespace is normalised) are never
    /// stored twice. This removes examples that ask the same question (same
    /// prompt side), keeping the highest tier, then the highest quality, then
    /// the oldest; run `sam validate` first so that tiers mean something.
    /// Preference pairs are left alone: several pairs per prompt are normal.
    ///
    /// With --near, near-duplicates are found next (MinHash + LSH over word
    /// shingles, settings in [dedup.near] of sam.toml): each group keeps its
    /// best example and the others are marked with
    /// `metadata.near_duplicate_of`, or removed with --remove.
    Dedup {
        /// Only count what the exact pass would remove
        #[arg(long, conflicts_with = "near")]
        dry_run: bool,
        /// Also find near-duplicates (and mark them, unless --remove)
        #[arg(long)]
        near: bool,
        /// With --near: remove near-duplicates instead of marking them
        #[arg(long, requires = "near")]
        remove: bool,
    },

    /// Write a filtered snapshot of the store to a JSONL file, or a dataset
    /// folder for TRL.
    ///
    /// By default exports validated examples of every passing tier (gold,
    /// silver, bronze) in sam's full form, which `sam prep` reads. Every export
    /// is recorded with its row count and hash (`sam export --list`).
    ///
    /// `--format trl --out DIR` writes a folder that Hugging Face TRL's
    /// SFTTrainer and DPOTrainer read as they are: DIR/sft/*.jsonl
    /// (conversational `messages`), DIR/dpo/*.jsonl (`prompt`/`chosen`/
    /// `rejected`), DIR/text/*.jsonl (raw completions, when any), split
    /// train/valid/test by sam's id-based split, and DIR/manifest.json.
    /// `sam prep --from DIR/sft --from DIR/dpo` gives the same split, so the
    /// adapter TRL trains is gated on a test split it never saw
    /// (docs/scale.md).
    Export {
        /// Output file (a folder with --format trl) [default:
        /// SAM_HOME/exports/export-<time>.jsonl, trl-<time>/ for trl]
        #[arg(short, long, value_name = "PATH")]
        out: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Row form: `full` (every field), `training` (the bare rows mlx-lm
        /// reads) or `trl` (a dataset folder for TRL)
        #[arg(long, default_value = "full", value_parser = parse_format)]
        format: Format,
        /// With --format trl: train,valid,test shares (use the same in `sam prep`)
        #[arg(long, default_value = "90,5,5", value_name = "T,V,S")]
        split: sam_prep::split::SplitRatios,
        /// With --format trl: system prompt for conversations that have none
        #[arg(long, value_name = "TEXT")]
        system: Option<String>,
        /// Show the export history instead of exporting
        #[arg(long, conflicts_with = "out")]
        list: bool,
    },

    /// Show what the store holds: counts, daily trend, per-source health.
    ///
    /// A source's health is 100 × the mean quality of its validated examples
    /// × the share of its offered examples that were valid. Add --json for
    /// machine-readable output.
    Stats,
}

#[derive(Subcommand, Debug)]
pub enum QuarantineAction {
    /// List quarantined lines (the default)
    List,
    /// Remove quarantined lines: the numbers given, or all with --all
    Clear {
        /// Entry numbers, as `sam quarantine` shows them
        ids: Vec<i64>,
        /// Remove every entry
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Which examples to export.
#[derive(Args, Debug)]
pub struct FilterArgs {
    /// Tiers to keep (repeat or comma-separate) [default: gold,silver,bronze]
    #[arg(long, value_delimiter = ',', value_name = "TIER")]
    tier: Vec<Tier>,
    /// Keep every tier, unverified included
    #[arg(long, conflicts_with = "tier")]
    all_tiers: bool,
    /// Kinds to keep: instruction, chat, preference, completion, prompt_completion
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    kind: Vec<Kind>,
    /// Sources to keep
    #[arg(long, value_delimiter = ',', value_name = "SOURCE")]
    source: Vec<String>,
    /// Domains to keep
    #[arg(long, value_delimiter = ',', value_name = "DOMAIN")]
    domain: Vec<String>,
    /// Keep examples from this day (YYYY-MM-DD, UTC) or Unix time on
    #[arg(long, value_parser = parse_time, value_name = "WHEN")]
    since: Option<i64>,
    /// Keep examples before this day (YYYY-MM-DD, UTC) or Unix time
    #[arg(long, value_parser = parse_time, value_name = "WHEN")]
    until: Option<i64>,
    /// Keep examples scored at least this (0 to 1)
    #[arg(long, value_name = "SCORE")]
    min_quality: Option<f64>,
    /// Export at most this many examples (oldest first)
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

impl FilterArgs {
    fn to_filter(&self) -> Filter {
        let tiers = if self.all_tiers {
            Vec::new()
        } else if self.tier.is_empty() {
            vec![Tier::Gold, Tier::Silver, Tier::Bronze]
        } else {
            self.tier.clone()
        };
        Filter {
            tiers,
            kinds: self.kind.clone(),
            sources: self.source.clone(),
            domains: self.domain.clone(),
            since: self.since,
            until: self.until,
            min_quality: self.min_quality,
            limit: self.limit,
        }
    }
}

/// What `sam export` writes: a JSONL file of the store's, or a TRL folder.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// One JSONL file in this form.
    Jsonl(ExportFormat),
    /// A dataset folder for TRL (`sam_prep::trl`).
    Trl,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "full" => Ok(Format::Jsonl(ExportFormat::Full)),
        "training" => Ok(Format::Jsonl(ExportFormat::Training)),
        "trl" => Ok(Format::Trl),
        _ => Err(format!("unknown format {s:?}: expected full, training or trl")),
    }
}

/// `YYYY-MM-DD` (UTC midnight) or Unix seconds.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let bad = || format!("{s:?} is not a date: use YYYY-MM-DD or Unix seconds");
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    let (y, m, d): (i64, i64, i64) =
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86_400)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn run(cmd: StoreCommand, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Init { force } => init(ctx, force),
        StoreCommand::Ingest { files, source, domain, batch_size, no_redact } => {
            ingest(ctx, &files, &IngestOptions { source, domain, batch_size, redact: !no_redact })
        }
        StoreCommand::Quarantine { action, limit, raw } => quarantine(ctx, action, limit, raw),
        StoreCommand::Validate { all } => validate(ctx, all),
        StoreCommand::Dedup { dry_run, near, remove } => dedup(ctx, dry_run, near, remove),
        StoreCommand::Export { out, filter, format, split, system, list } => match (list, format) {
            (true, _) => export_list(ctx),
            (false, Format::Jsonl(f)) => export(ctx, out, &filter.to_filter(), f),
            (false, Format::Trl) => {
                export_trl(ctx, out, &filter.to_filter(), sam_prep::trl::TrlConfig { split, system_prompt: system })
            }
        },
        StoreCommand::Stats => stats(ctx),
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Open the store under SAM_HOME with the settings of sam.toml.
fn open_store(ctx: &Ctx) -> anyhow::Result<(Config, SqliteStore)> {
    let cfg = Config::load(&ctx.home)?;
    let path = ctx.home.store_db();
    if !path.exists() {
        bail!("no store at {}: run `sam init` first (or pick another home with --home or SAM_HOME)", path.display());
    }
    let store = SqliteStore::open_with(&path, &cfg.store)
        .with_context(|| format!("cannot open the store at {}", path.display()))?;
    Ok((cfg, store))
}

/// A progress bar on stderr; hidden with --json or when stderr is not a terminal.
fn progress(ctx: &Ctx, len: Option<u64>, template: &str) -> ProgressBar {
    if ctx.json {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn init(ctx: &Ctx, force: bool) -> anyhow::Result<()> {
    ctx.create_home()?;
    let cfg_path = ctx.home.config_file();
    let wrote_config = force || !cfg_path.exists();
    if wrote_config {
        sam_home::atomic::write(&cfg_path, sam_home::Config::default_file().as_bytes())
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    }
    let cfg = Config::load(&ctx.home)?;
    let store_path = ctx.home.store_db();
    let store = SqliteStore::open_with(&store_path, &cfg.store)
        .with_context(|| format!("cannot create the store at {}", store_path.display()))?;
    #[derive(Serialize)]
    struct Out<'a> {
        home: &'a Path,
        config: &'a Path,
        config_written: bool,
        store: &'a Path,
        schema_version: i64,
    }
    let out = Out {
        home: ctx.home.root(),
        config: &cfg_path,
        config_written: wrote_config,
        store: &store_path,
        schema_version: store.schema_version()?,
    };
    if ctx.json {
        return print_json(&out);
    }
    println!("home    {}", ctx.home.root().display());
    let note = if wrote_config { "written with every default" } else { "kept (use --force to rewrite it)" };
    println!("config  {} ({note})", cfg_path.display());
    println!("store   {} (schema version {})", store_path.display(), out.schema_version);
    Ok(())
}

/// What one reading thread hands to the writer.
struct Chunk {
    examples: Vec<Example>,
    lines: Vec<usize>,
    bad: Vec<LineError>,
    redacted: RedactionReport,
}

/// What `sam ingest` reports for one input.
#[derive(Serialize, Default)]
struct IngestSummary {
    file: String,
    lines: u64,
    #[serde(flatten)]
    report: InsertReport,
    /// What redaction replaced, by kind (never the values).
    redacted: BTreeMap<SecretKind, usize>,
    /// `--no-redact`: stored as read.
    unredacted: bool,
}

struct IngestOptions {
    source: Option<String>,
    domain: Option<String>,
    batch_size: Option<usize>,
    redact: bool,
}

/// How examples are prepared on their way in: redacted (unless the user
/// vouches for them), scored, given a domain.
struct Prepare {
    pipeline: Pipeline,
    redact: bool,
}

impl Prepare {
    fn example(&self, ex: Example, report: &mut RedactionReport) -> Example {
        if !self.redact {
            return self.pipeline.prepare_unredacted(ex, "sam ingest --no-redact");
        }
        let (ex, r) = self.pipeline.prepare(ex);
        report.merge(&r);
        ex
    }

    /// A line that could not be read is quarantined redacted, its reason too
    /// (a parser's message may quote the text).
    fn bad_line(&self, mut bad: LineError, report: &mut RedactionReport) -> LineError {
        if self.redact {
            for text in [&mut bad.raw, &mut bad.reason] {
                let (out, r) = self.pipeline.redactor().redact(text);
                report.merge(&r);
                *text = out;
            }
        }
        bad
    }
}

fn ingest(ctx: &Ctx, files: &[PathBuf], opts: &IngestOptions) -> anyhow::Result<()> {
    let (cfg, mut store) = open_store(ctx)?;
    let batch_size = opts.batch_size.unwrap_or(cfg.store.batch_size).max(1);
    let pipeline = Pipeline::try_new(PipelineConfig {
        redaction: cfg.redaction.clone(),
        quality: cfg.quality.clone(),
        domains: Default::default(),
    })
    .with_context(|| format!("{}: fix the [capture.redaction] section", ctx.home.config_file().display()))?;
    let prepare = Arc::new(Prepare { pipeline, redact: opts.redact });
    let mut summaries = Vec::new();
    for file in files {
        let stdin = file.as_os_str() == "-";
        let name = if stdin { "<stdin>".to_string() } else { file.display().to_string() };
        let default_source = match &opts.source {
            Some(s) => s.to_string(),
            None if stdin => "stdin".to_string(),
            None => format!("file:{}", file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
        };
        let (input, len): (Box<dyn Read + Send>, Option<u64>) = if stdin {
            (Box::new(std::io::stdin()), None)
        } else {
            let f = std::fs::File::open(file)
                .with_context(|| format!("cannot read {}: check the path and permissions", file.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        };
        let pb = progress(ctx, len, "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)");
        pb.set_message(name.clone());
        let reader = BufReader::with_capacity(1 << 20, pb.wrap_read(input));
        let origin = (!stdin).then(|| file.clone());

        // Parse on one thread, write on this one: the two overlap.
        let (tx, rx) = mpsc::sync_channel::<Result<Chunk, JsonlError>>(1);
        let domain = opts.domain.clone();
        let prep = Arc::clone(&prepare);
        let parser = std::thread::spawn(move || {
            parse_chunks(reader, origin, batch_size, &default_source, domain, &prep, tx);
        });
        let mut summary = IngestSummary { file: name.clone(), unredacted: !opts.redact, ..Default::default() };
        let mut redacted = RedactionReport::default();
        let mut failure = None;
        for chunk in rx {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            summary.lines += (chunk.examples.len() + chunk.bad.len()) as u64;
            redacted.merge(&chunk.redacted);
            let batch = Batch {
                examples: &chunk.examples,
                origin: Some(&name),
                lines: &chunk.lines,
                bad_lines: &chunk.bad,
                cursor: None,
            };
            let report = store.insert_batch(&batch).with_context(|| format!("storing examples from {name}"))?;
            // Every line that was not stored, as `file:line: reason`, in file order.
            let mut problems: Vec<(usize, String)> = chunk.bad.iter().map(|b| (b.line, b.to_string())).collect();
            problems.extend(report.rejections.iter().map(|r| {
                let line = chunk.lines[r.index];
                (line, format!("{name}:{line}: {}", r.reason))
            }));
            problems.sort();
            pb.suspend(|| problems.iter().for_each(|(_, p)| eprintln!("{p}")));
            summary.report.merge(report);
        }
        // Keep the per-example rejections out of the summary: they were printed.
        summary.report.rejections.clear();
        parser.join().map_err(|_| anyhow::anyhow!("the reader of {name} crashed"))?;
        pb.finish_and_clear();
        if let Some(e) = failure {
            return Err(anyhow::Error::new(e).context(format!(
                "reading {name} failed after {} lines; what was read is stored, run the same command again to finish",
                summary.lines
            )));
        }
        summary.redacted = redacted.counts.clone();
        if !ctx.json {
            let r = &summary.report;
            println!(
                "{name}: {} inserted, {} duplicates, {} rejected, {} unreadable",
                r.inserted,
                r.duplicates,
                r.rejected,
                summary.lines - r.inserted - r.duplicates - r.rejected
            );
            if !opts.redact {
                println!("  redaction skipped (--no-redact): stored as read, marked in metadata.redaction");
            } else if !redacted.is_empty() {
                println!("  {redacted}");
            }
        }
        summaries.push(summary);
    }
    let bad: u64 = summaries.iter().map(|s| s.lines - s.report.inserted - s.report.duplicates).sum();
    if ctx.json {
        return print_json(&summaries);
    }
    if bad > 0 {
        eprintln!("{bad} lines were not stored; they are kept in quarantine: see `sam quarantine`");
    }
    Ok(())
}

/// Read JSONL into chunks of at most `batch_size` lines, prepare each
/// example (redaction, score, domain) and send them on.
fn parse_chunks(
    reader: impl BufRead,
    origin: Option<PathBuf>,
    batch_size: usize,
    source: &str,
    domain: Option<String>,
    prepare: &Prepare,
    tx: mpsc::SyncSender<Result<Chunk, JsonlError>>,
) {
    let empty = || Chunk {
        examples: Vec::with_capacity(batch_size.min(100_000)),
        lines: Vec::with_capacity(batch_size.min(100_000)),
        bad: Vec::new(),
        redacted: RedactionReport::default(),
    };
    let mut chunk = empty();
    for item in JsonlReader::new(reader, origin) {
        match item {
            Ok(p) => {
                let mut ex = p.example;
                if ex.source.is_empty() {
                    ex.source = source.to_string();
                }
                if let Some(d) = &domain
                    && ex.domain.is_empty()
                {
                    ex.domain = d.clone();
                }
                let ex = prepare.example(ex, &mut chunk.redacted);
                chunk.examples.push(ex);
                chunk.lines.push(p.line);
            }
            Err(JsonlError::Line(bad)) => {
                let bad = prepare.bad_line(bad, &mut chunk.redacted);
                chunk.bad.push(bad);
            }
            Err(e) => {
                // Store what was read before the stream broke, then report.
                let _ = tx.send(Ok(std::mem::replace(&mut chunk, empty())));
                let _ = tx.send(Err(e));
                return;
            }
        }
        if chunk.examples.len() + chunk.bad.len() >= batch_size
            && tx.send(Ok(std::mem::replace(&mut chunk, empty()))).is_err()
        {
            return;
        }
    }
    if !chunk.examples.is_empty() || !chunk.bad.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
}

fn quarantine(ctx: &Ctx, action: Option<QuarantineAction>, limit: Option<u64>, raw: bool) -> anyhow::Result<()> {
    let (_, mut store) = open_store(ctx)?;
    match action.unwrap_or(QuarantineAction::List) {
        QuarantineAction::List => {
            let entries = store.quarantined(limit)?;
            if ctx.json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("quarantine is empty");
                return Ok(());
            }
            for e in &entries {
                println!("#{:<5} {e}", e.id);
                if raw {
                    println!("       {}", e.raw);
                }
            }
            let total = store.quarantine_len()?;
            println!(
                "{} of {total} shown; fix them at the source and ingest again, then `sam quarantine clear --all`",
                entries.len()
            );
        }
        QuarantineAction::Clear { ids, all } => {
            if ids.is_empty() && !all {
                bail!("name the entries to clear (their numbers from `sam quarantine`), or pass --all");
            }
            let n = store.clear_quarantine(if all { None } else { Some(&ids) })?;
            if ctx.json {
                return print_json(&serde_json::json!({ "cleared": n }));
            }
            println!("cleared {n} quarantined lines");
        }
    }
    Ok(())
}

fn validate(ctx: &Ctx, all: bool) -> anyhow::Result<()> {
    let (cfg, mut store) = open_store(ctx)?;
    let pb = progress(ctx, Some(0), "validating [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)");
    let opts = ValidateOptions { quality: cfg.quality, all };
    let report = store.validate(&opts, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    if ctx.json {
        return print_json(&report);
    }
    if report.examples == 0 {
        println!("nothing to validate: every example is already scored (use --all to score them again)");
        return Ok(());
    }
    println!("validated {} examples (pass {})", report.examples, report.run_id);
    for (tier, n) in Tier::ALL.iter().zip(report.tiers) {
        println!("  {:<11} {n:>9}", tier.as_str());
    }
    if !report.checks.is_empty() {
        println!("{} examples lost points:", report.with_findings);
        for (check, n) in &report.checks {
            println!("  {check:<15} {n:>9}");
        }
    }
    Ok(())
}

fn dedup(ctx: &Ctx, dry_run: bool, near: bool, remove: bool) -> anyhow::Result<()> {
    let (cfg, mut store) = open_store(ctx)?;
    let exact = store.dedup(dry_run)?;
    let near = if near {
        let pb = progress(ctx, None, "{spinner} finding near-duplicates ({elapsed})");
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        let report = store.dedup_near(&cfg.near_dup, remove)?;
        pb.finish_and_clear();
        Some(report)
    } else {
        None
    };
    if ctx.json {
        return print_json(&serde_json::json!({ "exact": exact, "near": near }));
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "exact: {} groups of examples ask the same question; {verb} {} copies, keeping the best of each",
        exact.input_groups, exact.removed
    );
    if let Some(n) = near {
        let done = if remove {
            format!("removed {}", n.removed)
        } else {
            format!("marked {} with metadata.near_duplicate_of (--remove deletes them)", n.marked)
        };
        println!(
            "near: compared {} examples; {} groups hold {} near-duplicates of a better example; {done}",
            n.examples, n.groups, n.duplicates
        );
    }
    Ok(())
}

fn export(ctx: &Ctx, out: Option<PathBuf>, filter: &Filter, format: ExportFormat) -> anyhow::Result<()> {
    let (_, mut store) = open_store(ctx)?;
    let out = out.unwrap_or_else(|| ctx.home.manual_export(&stamp()));
    let rec = export_to(ctx, &mut store, filter, &out, format)?;
    if ctx.json {
        return print_json(&rec);
    }
    println!("exported {} examples to {} (blake3 {})", rec.rows, rec.path.display(), rec.hash);
    Ok(())
}

/// The Unix time, naming an export.
fn stamp() -> String {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string()
}

/// One recorded export, with a spinner, and a hint when it is empty.
fn export_to(
    ctx: &Ctx,
    store: &mut SqliteStore,
    filter: &Filter,
    out: &Path,
    format: ExportFormat,
) -> anyhow::Result<sam_store::ExportRecord> {
    let pb = progress(ctx, None, "{spinner} exporting {msg}");
    pb.set_message(out.display().to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    let rec = store.export(filter, out, format).with_context(|| format!("exporting to {}", out.display()))?;
    pb.finish_and_clear();
    if rec.rows == 0 {
        let hint = if store.count(&Filter::default())? == 0 {
            "the store is empty: `sam ingest FILE` first"
        } else {
            "nothing matched: widen the filter (--all-tiers adds unverified examples; `sam stats` shows the tiers)"
        };
        eprintln!("{hint}");
    }
    Ok(rec)
}

/// `--format trl`: a recorded export in sam's full form, then the TRL
/// folder written from it by sam-prep.
fn export_trl(ctx: &Ctx, out: Option<PathBuf>, filter: &Filter, cfg: sam_prep::trl::TrlConfig) -> anyhow::Result<()> {
    let (_, mut store) = open_store(ctx)?;
    let stamp = stamp();
    let dir = out.unwrap_or_else(|| ctx.home.exports_dir().join(format!("trl-{stamp}")));
    let full = ctx.home.manual_export(&stamp);
    let rec = export_to(ctx, &mut store, filter, &full, ExportFormat::Full)?;
    let input = sam_prep::prepare::read_inputs(std::slice::from_ref(&rec.path))?;
    let m = sam_prep::trl::write(&input, &cfg, &dir).with_context(|| format!("writing {}", dir.display()))?;
    if ctx.json {
        return print_json(&serde_json::json!({"dir": dir, "export": rec, "manifest": m}));
    }
    println!("wrote a TRL dataset of {} examples to {}", rec.rows, dir.display());
    let line = |name: &str, c: &sam_prep::prepare::SplitCounts| {
        if c.train + c.valid + c.test > 0 {
            println!("  {name:<5} train {:>6}  valid {:>6}  test {:>6}", c.train, c.valid, c.test);
        }
    };
    line("sft", &m.sft);
    line("dpo", &m.dpo);
    line("text", &m.text);
    if m.dropped_no_response + m.duplicate_ids > 0 {
        println!("  left out: {} without a response, {} duplicate ids", m.dropped_no_response, m.duplicate_ids);
    }
    println!("  from export #{} ({}), split {}", rec.id, rec.path.display(), split_text(&m.split_ratios));
    Ok(())
}

fn split_text(r: &sam_prep::split::SplitRatios) -> String {
    format!("{}/{}/{}", r.train, r.valid, r.test)
}

fn export_list(ctx: &Ctx) -> anyhow::Result<()> {
    let (_, store) = open_store(ctx)?;
    let exports = store.exports()?;
    if ctx.json {
        return print_json(&exports);
    }
    if exports.is_empty() {
        println!("no exports yet");
    }
    for e in exports {
        println!("#{:<4} {:>10}  {:>9} rows  {}  {}", e.id, day(e.at), e.rows, &e.hash[..16], e.path.display());
    }
    Ok(())
}

/// `YYYY-MM-DD` of a Unix time (UTC).
fn day(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn stats(ctx: &Ctx) -> anyhow::Result<()> {
    let (_, store) = open_store(ctx)?;
    let s = store.stats()?;
    if ctx.json {
        return print_json(&s);
    }
    print!("{}", stats_table(&s));
    Ok(())
}

fn stats_table(s: &Stats) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let pairs = |items: Vec<(String, u64)>| -> String {
        let text: Vec<String> = items.into_iter().map(|(k, n)| format!("{k} {n}")).collect();
        if text.is_empty() { "-".to_string() } else { text.join("  ") }
    };
    let name = |s: &str| if s.is_empty() { "(none)".to_string() } else { s.to_string() };
    let _ = writeln!(o, "{:<12} {} ({} validated)", "examples", s.total, s.validated);
    let _ = writeln!(o, "{:<12} {}", "tiers", pairs(s.by_tier.iter().map(|(t, n)| (t.to_string(), *n)).collect()));
    let _ = writeln!(o, "{:<12} {}", "kinds", pairs(s.by_kind.iter().map(|(k, n)| (k.to_string(), *n)).collect()));
    let _ = writeln!(o, "{:<12} {}", "domains", pairs(s.by_domain.iter().map(|(d, n)| (name(d), *n)).collect()));
    let _ = writeln!(o, "{:<12} {}", "quarantine", s.quarantined);
    let _ = writeln!(o, "exports      {}", s.exports);
    let _ = writeln!(o, "runs         {}", s.training_runs);
    if !s.daily.is_empty() {
        let _ = writeln!(o, "\n{:<12} {:>9}", "day", "examples");
        for d in &s.daily {
            let _ = writeln!(o, "{:<12} {:>9}", d.day, d.examples);
        }
    }
    if !s.sources.is_empty() {
        let width = s.sources.iter().map(|h| name(&h.source).len()).max().unwrap_or(6).max(6);
        let _ = writeln!(
            o,
            "\n{:<width$} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}",
            "source", "examples", "inserted", "dupes", "rejected", "quality", "good%", "health"
        );
        let opt = |v: Option<f64>, scale: f64, prec: usize| match v {
            Some(x) => format!("{:.prec$}", x * scale),
            None => "-".to_string(),
        };
        for h in &s.sources {
            let _ = writeln!(
                o,
                "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}",
                name(&h.source),
                h.examples,
                h.inserted,
                h.duplicates,
                h.rejected,
                opt(h.mean_quality, 1.0, 2),
                opt(h.good_share, 100.0, 0),
                opt(h.health, 1.0, 0),
            );
        }
        if s.validated < s.total {
            let _ = writeln!(o, "\n(quality and health count validated examples only: run `sam validate`)");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print() {
        for (text, secs) in [("1970-01-01", 0), ("2023-11-14", 1_699_920_000), ("2000-02-29", 951_782_400), ("17", 17)]
        {
            assert_eq!(parse_time(text), Ok(secs), "{text}");
        }
        for secs in [0i64, 951_782_400, 1_699_920_000, 4_102_444_800] {
            assert_eq!(parse_time(&day(secs)), Ok(secs));
        }
        for bad in ["2023-13-01", "yesterday", "2023-1"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
