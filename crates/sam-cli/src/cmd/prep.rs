//! `sam prep`: turn a store export (or JSONL files) into a dataset folder for
//! a base model — chat template, tokens, loss masks, truncation, splits.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sam_models::BaseModel;
use sam_prep::prepare::{DropKind, Manifest, PrepConfig, Preparer, SpanMethod, read_inputs};
use sam_prep::split::SplitRatios;
use sam_store::prelude::*;

use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum PrepCommand {
    /// Prepare a dataset: render with the model's chat template, tokenise,
    /// mask, truncate and split train/valid/test (mlx-lm-compatible folder)
    Prep(PrepArgs),
}

#[derive(Args, Debug)]
pub struct PrepArgs {
    /// Base model: a Hugging Face folder or a .gguf file
    #[arg(long, value_name = "PATH")]
    model: PathBuf,

    /// Output folder [default: SAM_HOME/datasets/<unix time>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// JSONL files or folders of *.jsonl to read [default: the store's latest export]
    #[arg(long = "from", value_name = "PATH")]
    from: Vec<PathBuf>,

    /// Longest sequence in tokens
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_seq_len: usize,

    /// Train,valid,test shares
    #[arg(long, default_value = "90,5,5", value_name = "T,V,S")]
    split: SplitRatios,

    /// System prompt for conversations that have none
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,

    /// Worker threads [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

pub fn run(cmd: PrepCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let PrepCommand::Prep(args) = cmd;
    let inputs = if args.from.is_empty() { latest_export(ctx)? } else { args.from.clone() };
    let model =
        BaseModel::open(&args.model).with_context(|| format!("reading the model at {}", args.model.display()))?;
    let mut cfg = PrepConfig {
        max_seq_len: args.max_seq_len,
        split: args.split,
        system_prompt: args.system.clone(),
        ..PrepConfig::default()
    };
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    let prep = Preparer::new(&model, cfg)?;
    let input = read_inputs(&inputs)?;
    if input.examples.is_empty() {
        anyhow::bail!(
            "no examples in {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let out = match args.out {
        Some(o) => o,
        None => {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            ctx.home.dataset_dir(&secs.to_string())
        }
    };

    let bar = if ctx.json { ProgressBar::hidden() } else { ProgressBar::new(input.examples.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} prep [{bar:30}] {pos}/{len} examples ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let prepared = prep.prepare(&input, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let manifest = prepared.write(&out).with_context(|| format!("writing {}", out.display()))?;
    let secs = t0.elapsed().as_secs_f64();

    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    let d = &manifest.drops;
    println!("prepared {} in {secs:.2}s", out.display());
    println!("  model      {} (tokenizer: {})", model.name(), manifest.tokenizer);
    println!("  template   {}", template_line(&manifest));
    println!(
        "  sft        train {:>6}  valid {:>6}  test {:>6}",
        manifest.sft.train, manifest.sft.valid, manifest.sft.test
    );
    if manifest.preference.train + manifest.preference.valid + manifest.preference.test > 0 {
        println!(
            "  preference train {:>6}  valid {:>6}  test {:>6}",
            manifest.preference.train, manifest.preference.valid, manifest.preference.test
        );
    }
    for (domain, c) in &manifest.domains {
        println!("  domain {domain:<12} train {:>6}  valid {:>6}  test {:>6}", c.train, c.valid, c.test);
    }
    let t = &manifest.sft_tokens;
    println!(
        "  tokens     mean {:.1}  p50 {}  p95 {}  max {}  (trained {} of {})",
        t.mean, t.p50, t.p95, t.max, t.trained, t.total
    );
    println!(
        "  truncated {}  dropped: too long {}, no response {}, template error {}, unmaskable {}; duplicate ids {}; bad rows {}",
        d.truncated,
        d.dropped_too_long,
        d.dropped_no_response,
        d.dropped_template_error,
        d.dropped_unmaskable,
        d.duplicate_ids,
        d.bad_rows
    );
    for cause in &d.errors {
        let kind = match cause.kind {
            DropKind::TemplateError => "template error",
            DropKind::Unmaskable => "unmaskable",
        };
        println!("    {kind} ×{}: {} (first: {})", cause.count, cause.reason, cause.first_id);
    }
    if manifest.span_method == SpanMethod::Inferred && manifest.template != "builtin-chatml" {
        let by_content = match manifest.spans_by_content {
            0 => String::new(),
            n => format!(
                "; {n} turns were found by their content, the template rendering the conversation before them differently"
            ),
        };
        eprintln!(
            "warning: the chat template has no {{% generation %}} markers: sam inferred each assistant turn from \
             renderings of the conversation before it{by_content}. A template with markers (as TRL's *_training \
             templates) says exactly what is trained on"
        );
    }
    if d.dropped_template_error + d.dropped_unmaskable > 0 {
        eprintln!(
            "warning: {} examples were dropped by the chat template (reasons above): fix the rows or the template, then run sam prep again",
            d.dropped_template_error + d.dropped_unmaskable
        );
    }
    Ok(())
}

/// `model's own, llama-3 format (blake3 1a2b3c4d5e6f); spans: generation markers`.
fn template_line(m: &Manifest) -> String {
    let whose = if m.template == "builtin-chatml" { "sam's built-in ChatML" } else { "the model's own" };
    let family = m.template_family.as_deref().map_or_else(|| "unknown format".to_string(), |f| format!("{f} format"));
    let spans = match m.span_method {
        SpanMethod::GenerationMarkers => "assistant turns from its {% generation %} markers",
        SpanMethod::Inferred => "assistant turns inferred (no {% generation %} markers)",
    };
    format!("{whose}, {family} (blake3 {}); {spans}", &m.template_hash[..12.min(m.template_hash.len())])
}

/// The file of the store's most recent export.
fn latest_export(ctx: &Ctx) -> anyhow::Result<Vec<PathBuf>> {
    let db = ctx.home.store_db();
    if !db.exists() {
        anyhow::bail!(
            "no input: pass --from FILE (JSONL) or export from the store first (no store at {})",
            db.display()
        );
    }
    let store = sam_store::SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let rec = store.latest_export()?.ok_or_else(|| {
        anyhow::anyhow!("the store has no export yet: export from the store first, or pass --from FILE")
    })?;
    tracing::info!("reading export {} ({} rows, {})", rec.id, rec.rows, rec.path.display());
    Ok(vec![rec.path])
}
