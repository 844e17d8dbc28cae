//! `sam deploy`: the adapter registry (register, gate, promote, rollback,
//! canary, status, history, which, export), calling into sam-deploy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sam_deploy::registry::{self, BASE, BaseRef, CANARY, PREVIOUS, PRODUCTION};
use sam_deploy::{
    Approval, CanaryDecision, DeployConfig, EvalOptions, HistoryEntry, Judgements, ModelEvaluator, Registration,
    Registry, Slot, VerdictRecord, Version, gate,
};
use sam_trainer::AdapterFormat;
use serde_json::{Value, json};

use crate::config::Config;
use crate::ctx::Ctx;

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Register, judge, promote, canary and roll back adapters
    /// (SAM_HOME/registry)
    ///
    /// A slot holds the versions of one base model, its aliases
    /// (production, previous, canary and your own), its golden set and its
    /// history. Versions never change; aliases move, each move recorded with
    /// its reason and verdict. `promote` and `canary` run the gate unless
    /// --force: the candidate must beat production on the held-out test
    /// split by the margin, not regress on the golden set, win the held-out
    /// preference pairs, and give sane answers to fixed prompts.
    Deploy {
        #[command(subcommand)]
        cmd: Deploy,
    },
}

#[derive(Subcommand, Debug)]
pub enum Deploy {
    /// Register an adapter folder (a sam run folder, or a PEFT / mlx-lm
    /// folder trained elsewhere) as a new version; prints its id
    Register(RegisterArgs),
    /// Judge a version against production (exit 0: passes, 1: refused)
    Gate(GateArgs),
    /// Put a version into production (after the gate, unless --force)
    Promote(PromoteArgs),
    /// Put production back on `previous` (or --to VERSION, or --to base)
    Rollback(RollbackArgs),
    /// Send a share of the traffic to a version (after the gate, unless
    /// --force); run again with another --percent to move it
    Canary(CanaryArgs),
    /// Decide the canary from captured feedback: promote it, roll it back,
    /// or wait
    CanaryCheck(SlotArg),
    /// End the canary without promoting it
    CanaryAbort(ReasonArgs),
    /// Slots, their base models, aliases and versions
    Status(SlotOpt),
    /// The versions of a slot (every slot without --slot), oldest first:
    /// the aliases on each, its run and its last verdict
    List(ListArgs),
    /// A slot's history: registrations, verdicts, every alias move
    History(HistoryArgs),
    /// The adapter folder to load (canary-aware with --key)
    Which(WhichArgs),
    /// Write production's adapter (or another version's) in mlx-lm's or
    /// PEFT's layout
    Export(ExportArgs),
    /// Point a user-defined alias at a version (or remove it)
    Alias(AliasArgs),
    /// Create a slot for a base model, with its golden set
    Slot(SlotCreateArgs),
}

#[derive(Args, Debug)]
pub struct SlotOpt {
    /// The slot [default: `[deploy] default_slot`, "default"]
    #[arg(long)]
    slot: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this slot [default: every slot]
    #[arg(long)]
    slot: Option<String>,
}

#[derive(Args, Debug)]
pub struct SlotArg {
    #[command(flatten)]
    slot: SlotOpt,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// A run folder (SAM_HOME/runs/<id>), its adapter/ folder, or any
    /// adapter folder (adapter_config.json + adapter_model.safetensors or
    /// adapters.safetensors)
    dir: PathBuf,
    /// The slot [default: the slot of the run's base model, else `[deploy]
    /// default_slot`]
    #[arg(long)]
    slot: Option<String>,
    /// The prepared dataset whose test split the gate compares on [default:
    /// the run's]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The base model, to create the slot when it does not exist [default:
    /// the run's]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// A new slot's golden set: JSONL files of examples [default: the
    /// dataset's test split]
    #[arg(long, value_name = "FILE")]
    golden: Vec<PathBuf>,
    /// Free tags, KEY=VALUE (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    tag: Vec<String>,
}

#[derive(Args, Debug)]
pub struct GateArgs {
    /// A version id (or unique prefix), `#N`, or an alias
    #[arg(value_name = "VERSION")]
    target: String,
    #[command(flatten)]
    slot: SlotOpt,
    /// Compare on this prepared dataset's test split [default: the one the
    /// version was registered with]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    gate: GateArgs,
    /// Skip the gate (recorded in the history)
    #[arg(long)]
    force: bool,
    /// Why, for the history
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReasonArgs {
    #[command(flatten)]
    slot: SlotOpt,
    /// Why, for the history
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The version to put back (`base`: no adapter) [default: previous]
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
    #[command(flatten)]
    why: ReasonArgs,
}

#[derive(Args, Debug)]
pub struct CanaryArgs {
    #[command(flatten)]
    promote: PromoteArgs,
    /// Share of the traffic, in percent [default: `[deploy.canary] percent`]
    #[arg(long)]
    percent: Option<f64>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    slot: SlotOpt,
    /// Only the last N entries
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(Args, Debug)]
pub struct WhichArgs {
    #[command(flatten)]
    slot: SlotOpt,
    /// The user or session id of the request (routes to the canary for its share)
    #[arg(long)]
    key: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ExportFormat {
    /// mlx-lm (adapters.safetensors + adapter_config.json)
    Mlx,
    /// Hugging Face PEFT (adapter_model.safetensors + adapter_config.json)
    Peft,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    slot: SlotOpt,
    /// Layout to write
    #[arg(long, value_enum, default_value_t = ExportFormat::Mlx)]
    format: ExportFormat,
    /// Output folder [default: SAM_HOME/registry/<slot>/export-<format>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The version to export [default: production]
    #[arg(long, value_name = "VERSION")]
    from: Option<String>,
}

#[derive(Args, Debug)]
pub struct AliasArgs {
    /// The alias
    name: String,
    /// The version it points to
    #[arg(value_name = "VERSION", required_unless_present = "remove")]
    target: Option<String>,
    /// Remove the alias
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    slot: SlotOpt,
}

#[derive(Args, Debug)]
pub struct SlotCreateArgs {
    /// The slot's name
    name: String,
    /// Its base model: a Hugging Face folder or a .gguf file
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The golden set: a prepared dataset's test split
    #[arg(long, value_name = "DIR", conflicts_with = "golden")]
    golden_from: Option<PathBuf>,
    /// The golden set: JSONL files of examples
    #[arg(long, value_name = "FILE", required_unless_present = "golden_from")]
    golden: Vec<PathBuf>,
}

struct Env<'a> {
    ctx: &'a Ctx,
    cfg: DeployConfig,
    reg: Registry,
}

impl Env<'_> {
    fn slot_name(&self, s: &SlotOpt) -> String {
        s.slot.clone().unwrap_or_else(|| self.cfg.default_slot.clone())
    }

    /// The version `reference` names: in the given slot when one is, else
    /// anywhere (ids are unique), else in the default slot (aliases, `#N`).
    fn version(&self, reference: &str, s: &SlotOpt) -> anyhow::Result<Version> {
        if let Some(slot) = &s.slot {
            return Ok(self.reg.find(reference, Some(slot))?);
        }
        match self.reg.find(reference, None) {
            Ok(v) => Ok(v),
            Err(sam_deploy::Error::NoVersion(_)) => Ok(self.reg.find(reference, Some(&self.cfg.default_slot))?),
            Err(e) => Err(e.into()),
        }
    }

    fn evaluator(&self, slot: &Slot) -> anyhow::Result<ModelEvaluator> {
        let spin = self.spinner(format!("loading {}", slot.base.path.display()));
        let opts = EvalOptions { max_seq_len: self.cfg.max_seq_len, ..Default::default() };
        let ev = ModelEvaluator::load(&slot.base.path, opts)
            .with_context(|| format!("loading the base model of slot {}", slot.name))?;
        spin.finish_and_clear();
        Ok(ev)
    }

    fn spinner(&self, msg: String) -> ProgressBar {
        let bar = if self.ctx.json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
            bar.set_style(style);
        }
        bar.set_message(msg);
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    }

    /// Runs the standard gate on `v` against production and prints the verdict.
    fn judge(&self, v: &Version, data: Option<&Path>) -> anyhow::Result<VerdictRecord> {
        let slot = self.reg.slot(&v.slot)?;
        let trial = self.reg.trial_data(v, data, &self.cfg.gate.prompts)?;
        let mut ev = self.evaluator(&slot)?;
        let against = self.reg.aliases(&slot.name)?.production().unwrap_or(BASE).to_string();
        let spin = self.spinner(format!("judging {} against {against}", v.id));
        let rec = self.reg.judge(v, &gate::standard(&self.cfg.gate), &mut ev, &trial)?;
        spin.finish_and_clear();
        Ok(rec)
    }

    fn approval(&self, a: &PromoteArgs, v: &Version) -> anyhow::Result<(Approval, Option<VerdictRecord>)> {
        if a.force {
            let why = a.reason.clone().unwrap_or_else(|| "--force".into());
            return Ok((Approval::Forced(why), None));
        }
        let rec = self.judge(v, a.gate.data.as_deref())?;
        if !self.ctx.json {
            print_verdict(&rec);
        }
        if !rec.verdict.pass {
            bail!("{} was refused by the gate: aliases unchanged", v.id);
        }
        Ok((Approval::Verdict(rec.clone()), Some(rec)))
    }
}

pub fn run(cmd: DeployCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let DeployCommand::Deploy { cmd } = cmd;
    let cfg = Config::load(&ctx.home)?.deploy;
    cfg.validate()?;
    let env = Env { ctx, cfg, reg: Registry::open(ctx.home.registry_dir())? };
    match cmd {
        Deploy::Register(a) => register(&env, a),
        Deploy::Gate(a) => gate_cmd(&env, a),
        Deploy::Promote(a) => promote(&env, a),
        Deploy::Rollback(a) => rollback(&env, a),
        Deploy::Canary(a) => canary(&env, a),
        Deploy::CanaryCheck(a) => canary_check(&env, a),
        Deploy::CanaryAbort(a) => {
            let slot = env.slot_name(&a.slot);
            let e = env.reg.abort_canary(&slot, a.reason.as_deref().unwrap_or("aborted by hand"))?;
            print_entry(&env, &e)
        }
        Deploy::Status(a) => status(&env, a),
        Deploy::List(a) => list(&env, a),
        Deploy::History(a) => history(&env, a),
        Deploy::Which(a) => which(&env, a),
        Deploy::Export(a) => export(&env, a),
        Deploy::Alias(a) => {
            let slot = env.slot_name(&a.slot);
            let v = match (&a.target, a.remove) {
                (_, true) => None,
                (Some(r), false) => Some(env.reg.find(r, Some(&slot))?),
                (None, false) => bail!("give the version the alias points to, or --remove"),
            };
            let e = env.reg.set_alias(&slot, &a.name, v.as_ref())?;
            print_entry(&env, &e)
        }
        Deploy::Slot(a) => {
            let golden = match &a.golden_from {
                Some(d) => (registry::golden_from_dataset(d)?, format!("test split of {}", d.display())),
                None => golden_files(&a.golden, &a.model, env.cfg.max_seq_len)?,
            };
            let slot = create_slot(&env, &a.name, &a.model, golden)?;
            print_slot_created(&env, &slot)
        }
    }
}

fn golden_files(
    files: &[PathBuf],
    model: &Path,
    max_seq_len: usize,
) -> anyhow::Result<(Vec<sam_prep::cache::TokenizedExample>, String)> {
    let info = sam_models::BaseModel::open(model).with_context(|| format!("reading {}", model.display()))?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    Ok((registry::golden_from_files(files, &info, max_seq_len)?, names.join(", ")))
}

fn create_slot(
    env: &Env<'_>,
    name: &str,
    model: &Path,
    (golden, source): (Vec<sam_prep::cache::TokenizedExample>, String),
) -> anyhow::Result<Slot> {
    let spin = env.spinner(format!("loading {} to fingerprint it", model.display()));
    let mut ev = ModelEvaluator::load(model, EvalOptions::default())
        .with_context(|| format!("loading the base model {}", model.display()))?;
    let base = BaseRef::of(model, &mut ev)?;
    spin.finish_and_clear();
    Ok(env.reg.create_slot(name, base, &golden, &source)?)
}

fn print_slot_created(env: &Env<'_>, s: &Slot) -> anyhow::Result<()> {
    if env.ctx.json {
        println!(
            "{}",
            json!({"slot": s.name, "base": s.base.id, "fingerprint": s.base.fingerprint, "golden": s.golden})
        );
    } else {
        eprintln!(
            "created slot {} for {} (fingerprint {}); golden set: {} examples from {}",
            s.name, s.base.id, s.base.fingerprint, s.golden.examples, s.golden.source
        );
    }
    Ok(())
}

fn register(env: &Env<'_>, a: RegisterArgs) -> anyhow::Result<()> {
    let mut r =
        if Registration::is_run(&a.dir) { Registration::from_run(&a.dir)? } else { Registration::folder(&a.dir) };
    if a.data.is_some() {
        r.dataset = a.data.clone();
    }
    if a.model.is_some() {
        r.model = a.model.clone();
    }
    for t in &a.tag {
        let Some((k, v)) = t.split_once('=') else { bail!("--tag {t}: expected KEY=VALUE") };
        r.tags.insert(k.trim().to_string(), v.trim().to_string());
    }
    let mut created = None;
    let slot = match &a.slot {
        Some(s) => match env.reg.slot(s) {
            Ok(s) => s,
            Err(sam_deploy::Error::NoSlot(_)) => created.insert(new_slot_for(env, s, &r, &a.golden)?).clone(),
            Err(e) => return Err(e.into()),
        },
        None => match env.reg.slot_for(&r, &env.cfg.default_slot)? {
            Some(s) => s,
            None => created.insert(new_slot_for(env, &env.cfg.default_slot, &r, &a.golden)?).clone(),
        },
    };
    let (v, new) = env.reg.register(&slot.name, &r)?;
    if env.ctx.json {
        println!(
            "{}",
            json!({"version": v.id, "slot": v.slot, "number": v.number, "new": new, "content_hash": v.content_hash,
                   "adapter": v.adapter, "dataset": v.dataset, "run_id": v.run_id,
                   "created_slot": created.map(|s| json!({"base": s.base.id, "fingerprint": s.base.fingerprint, "golden": s.golden}))})
        );
    } else {
        let what = if new { "registered" } else { "already registered" };
        eprintln!(
            "{what} as #{} in slot {} ({} LoRA modules, rank {}); next: `sam deploy promote {}`",
            v.number, v.slot, v.adapter.modules, v.adapter.rank, v.id
        );
        println!("{}", v.id);
    }
    Ok(())
}

fn new_slot_for(env: &Env<'_>, name: &str, r: &Registration, golden: &[PathBuf]) -> anyhow::Result<Slot> {
    let Some(model) = &r.model else {
        bail!(
            "there is no slot `{name}` yet: pass --model PATH (its base model) to create it, or register a run folder"
        )
    };
    let g = if !golden.is_empty() {
        golden_files(golden, model, env.cfg.max_seq_len)?
    } else if let Some(d) = &r.dataset {
        (registry::golden_from_dataset(d)?, format!("test split of {}", d.display()))
    } else {
        bail!("a new slot needs a golden set: pass --golden FILE or --data DATASET (its test split is taken)")
    };
    let s = create_slot(env, name, model, g)?;
    if !env.ctx.json {
        print_slot_created(env, &s)?;
    }
    Ok(s)
}

fn mark(pass: bool, skipped: bool) -> &'static str {
    match (pass, skipped) {
        (_, true) => "-",
        (true, _) => "✓",
        (false, _) => "✗",
    }
}

fn print_verdict(rec: &VerdictRecord) {
    let v = &rec.verdict;
    println!("{} {} against {}", if v.pass { "PASS" } else { "REFUSED" }, rec.version, rec.against);
    for leaf in v.leaves() {
        for r in &leaf.reasons {
            println!("  {} {:<20} {r}", mark(leaf.pass, leaf.skipped), leaf.gate);
        }
        if leaf.gate == "beats_production" || leaf.gate == "golden_set" {
            let n = &leaf.numbers;
            if let (Some(cl), Some(cp), Some(pl), Some(pp)) = (
                n.get("candidate_loss"),
                n.get("candidate_perplexity"),
                n.get("production_loss"),
                n.get("production_perplexity"),
            ) {
                println!("    loss {pl:.4} → {cl:.4} · perplexity {pp:.2} → {cp:.2}");
            }
        }
    }
}

fn gate_cmd(env: &Env<'_>, a: GateArgs) -> anyhow::Result<()> {
    let v = env.version(&a.target, &a.slot)?;
    let rec = env.judge(&v, a.data.as_deref())?;
    if env.ctx.json {
        println!(
            "{}",
            json!({"version": rec.version, "against": rec.against, "pass": rec.verdict.pass, "verdict": rec.verdict})
        );
    } else {
        print_verdict(&rec);
    }
    if !rec.verdict.pass {
        bail!("{} was refused by the gate: {}", v.id, rec.verdict.summary());
    }
    Ok(())
}

fn promote(env: &Env<'_>, a: PromoteArgs) -> anyhow::Result<()> {
    let v = env.version(&a.gate.target, &a.gate.slot)?;
    let (approval, rec) = env.approval(&a, &v)?;
    let e = env.reg.promote(&v, &approval)?;
    if env.ctx.json {
        println!("{}", json!({"version": v.id, "entry": e, "verdict": rec.map(|r| r.verdict)}));
        return Ok(());
    }
    print_entry(env, &e)
}

fn rollback(env: &Env<'_>, a: RollbackArgs) -> anyhow::Result<()> {
    let slot = env.slot_name(&a.why.slot);
    let e = env.reg.rollback(&slot, a.to.as_deref(), a.why.reason.as_deref().unwrap_or("rolled back by hand"))?;
    print_entry(env, &e)
}

fn canary(env: &Env<'_>, a: CanaryArgs) -> anyhow::Result<()> {
    let v = env.version(&a.promote.gate.target, &a.promote.gate.slot)?;
    let percent = a.percent.unwrap_or(env.cfg.canary.percent);
    let running = env.reg.aliases(&v.slot)?.canary.is_some_and(|c| c.version == v.id);
    let approval = if running {
        // Only the share moves; the canary was let in already.
        Approval::Forced(a.promote.reason.clone().unwrap_or_else(|| "percentage changed".into()))
    } else {
        env.approval(&a.promote, &v)?.0
    };
    let e = env.reg.start_canary(&v, percent, &approval)?;
    print_entry(env, &e)
}

fn canary_check(env: &Env<'_>, a: SlotArg) -> anyhow::Result<()> {
    let slot = env.slot_name(&a.slot);
    let aliases = env.reg.aliases(&slot)?;
    let Some(c) = &aliases.canary else {
        bail!("slot {slot} has no canary (start one with `sam deploy canary VERSION`)")
    };
    let production = aliases.production().unwrap_or(BASE).to_string();
    let db = env.ctx.home.store_db();
    let counts = if db.is_file() {
        let store = sam_store::SqliteStore::open(&db)?;
        sam_capture::capture::feedback_by_version(&store, Some(c.since))?
    } else {
        BTreeMap::new()
    };
    let j = |v: &str| counts.get(v).map(|f| Judgements { good: f.good, bad: f.bad }).unwrap_or_default();
    let (d, e) = env.reg.decide_canary(&slot, j(&c.version), j(&production), &env.cfg.canary)?;
    if env.ctx.json {
        println!("{}", json!({"version": c.version, "production": production, "decision": d, "entry": e}));
        return Ok(());
    }
    let what = match &d {
        CanaryDecision::Wait { .. } => "wait",
        CanaryDecision::Promote { .. } => "promoted",
        CanaryDecision::Rollback { .. } => "rolled back: all traffic on production",
        CanaryDecision::Hold { .. } => "hold",
    };
    println!("canary {} ({}%): {what}: {d}", c.version, c.percent);
    Ok(())
}

fn when(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(t).ok().and_then(|d| d.format(&fmt).ok()).unwrap_or_else(|| t.to_string())
}

fn print_entry(env: &Env<'_>, e: &HistoryEntry) -> anyhow::Result<()> {
    if env.ctx.json {
        println!("{}", json!({"version": e.version, "entry": e}));
        return Ok(());
    }
    println!("{}", entry_line(e));
    Ok(())
}

fn action_name(e: &HistoryEntry) -> String {
    serde_json::to_value(e.action).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn entry_line(e: &HistoryEntry) -> String {
    let name = |v: &Option<String>| {
        v.clone().unwrap_or_else(|| if e.alias.as_deref() == Some(PRODUCTION) { BASE.into() } else { "-".into() })
    };
    let moved = match &e.alias {
        Some(a) => format!(" {a}: {} → {}", name(&e.from), name(&e.to)),
        None => e.version.as_ref().map(|v| format!(" {v}")).unwrap_or_default(),
    };
    let forced = if e.forced { " (forced)" } else { "" };
    format!("#{:<4} {} {:<15}{moved}{forced} · {}", e.seq, when(e.at), action_name(e), e.why)
}

fn alias_json(reg: &Registry, slot: &str, id: Option<&str>) -> Value {
    match id.and_then(|id| reg.find(id, Some(slot)).ok()) {
        Some(v) => json!({"version": v.id, "number": v.number, "adapter_dir": reg.adapter_dir(&v), "run_id": v.run_id}),
        None => Value::Null,
    }
}

/// The slots `status` and `list` show: the one named, else every slot.
fn chosen_slots(env: &Env<'_>, slot: Option<&str>) -> anyhow::Result<Vec<Slot>> {
    Ok(match slot {
        Some(s) => vec![env.reg.slot(s)?],
        None => env.reg.slots()?,
    })
}

/// A version as `status` and `list` show it, with its last verdict.
fn version_json(env: &Env<'_>, v: &Version) -> Value {
    let last = env.reg.verdicts(v).ok().and_then(|mut r| r.pop());
    json!({"version": v.id, "number": v.number, "created_at": v.created_at, "run_id": v.run_id, "tags": v.tags,
           "last_verdict": last.map(|r| json!({"pass": r.verdict.pass, "against": r.against, "at": r.at}))})
}

fn status(env: &Env<'_>, a: SlotOpt) -> anyhow::Result<()> {
    let slots = chosen_slots(env, a.slot.as_deref())?;
    let mut out = Vec::new();
    for s in &slots {
        let al = env.reg.aliases(&s.name)?;
        let versions = env.reg.versions(&s.name)?;
        let mut aliases = serde_json::Map::new();
        for name in [PRODUCTION, CANARY, PREVIOUS] {
            aliases.insert(name.into(), alias_json(&env.reg, &s.name, al.get(name)));
        }
        if let (Some(c), Some(Value::Object(o))) = (&al.canary, aliases.get_mut(CANARY)) {
            o.insert("percent".into(), json!(c.percent));
            o.insert("since".into(), json!(c.since));
        }
        for (name, id) in &al.aliases {
            if !aliases.contains_key(name) {
                aliases.insert(name.clone(), alias_json(&env.reg, &s.name, Some(id)));
            }
        }
        let last_verdicts: Vec<Value> = versions.iter().map(|v| version_json(env, v)).collect();
        out.push(
            json!({"slot": s.name, "base": {"id": s.base.id, "path": s.base.path, "fingerprint": s.base.fingerprint},
                        "golden": s.golden, "aliases": aliases, "versions": last_verdicts}),
        );
    }
    if env.ctx.json {
        println!("{}", json!({"slots": out}));
        return Ok(());
    }
    if out.is_empty() {
        println!("no slots yet: `sam deploy register RUN_DIR` registers a run's adapter (and creates the slot)");
    }
    for s in &out {
        println!(
            "slot {} · base {} · golden set {} examples",
            s["slot"].as_str().unwrap_or(""),
            s["base"]["id"].as_str().unwrap_or(""),
            s["golden"]["examples"]
        );
        for (name, v) in s["aliases"].as_object().into_iter().flatten() {
            let shown = match v {
                Value::Null if name == PRODUCTION => "base model (no adapter)".to_string(),
                Value::Null => "-".to_string(),
                v => {
                    let pct = v.get("percent").map(|p| format!(" at {p}%")).unwrap_or_default();
                    format!("{} (#{}){pct}", v["version"].as_str().unwrap_or(""), v["number"])
                }
            };
            println!("  {name:<11} {shown}");
        }
        let vs = s["versions"].as_array().map(|v| v.len()).unwrap_or(0);
        println!("  versions    {vs} (`sam deploy list` lists them)");
    }
    Ok(())
}

/// `sam deploy list`: each slot's versions with the aliases on them.
fn list(env: &Env<'_>, a: ListArgs) -> anyhow::Result<()> {
    let slots = chosen_slots(env, a.slot.as_deref())?;
    let mut out = Vec::new();
    for s in &slots {
        let al = env.reg.aliases(&s.name)?;
        let versions: Vec<Value> = env
            .reg
            .versions(&s.name)?
            .iter()
            .map(|v| {
                let on: Vec<&str> =
                    al.aliases.iter().filter(|(_, id)| **id == v.id).map(|(name, _)| name.as_str()).collect();
                let mut row = version_json(env, v);
                if let Value::Object(o) = &mut row {
                    o.insert("aliases".into(), json!(on));
                    o.insert("source".into(), json!(v.source));
                    o.insert("rank".into(), json!(v.adapter.rank));
                    o.insert("adapter_dir".into(), json!(env.reg.adapter_dir(v)));
                }
                row
            })
            .collect();
        out.push(json!({"slot": s.name, "base": s.base.id, "versions": versions}));
    }
    if env.ctx.json {
        println!("{}", json!({"slots": out}));
        return Ok(());
    }
    if out.is_empty() {
        println!("no slots yet: `sam deploy register RUN_DIR` registers a run's adapter (and creates the slot)");
    }
    for s in &out {
        println!("slot {} · base {}", s["slot"].as_str().unwrap_or(""), s["base"].as_str().unwrap_or(""));
        let versions = s["versions"].as_array().map(Vec::as_slice).unwrap_or_default();
        if versions.is_empty() {
            println!("  no versions yet (`sam deploy register RUN_DIR`)");
            continue;
        }
        println!("  {:<4} {:<12}  {:<19}  {:<20} {:<22} RUN", "#", "VERSION", "REGISTERED", "ALIASES", "LAST VERDICT");
        for v in versions {
            let aliases: Vec<&str> = v["aliases"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let verdict = match &v["last_verdict"] {
                Value::Null => "-".to_string(),
                r => format!(
                    "{} vs {}",
                    if r["pass"].as_bool() == Some(true) { "pass" } else { "refused" },
                    r["against"].as_str().unwrap_or("")
                ),
            };
            println!(
                "  {:<4} {:<12}  {:<19}  {:<20} {:<22} {}",
                format!("#{}", v["number"]),
                v["version"].as_str().unwrap_or(""),
                when(v["created_at"].as_i64().unwrap_or(0)),
                if aliases.is_empty() { "-".to_string() } else { aliases.join(",") },
                verdict,
                v["run_id"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn history(env: &Env<'_>, a: HistoryArgs) -> anyhow::Result<()> {
    let slot = env.slot_name(&a.slot);
    let mut h = env.reg.history(&slot)?;
    if let Some(n) = a.limit {
        h = h.split_off(h.len().saturating_sub(n));
    }
    if env.ctx.json {
        println!("{}", serde_json::to_string(&h)?);
        return Ok(());
    }
    for e in &h {
        println!("{}", entry_line(e));
    }
    Ok(())
}

fn which(env: &Env<'_>, a: WhichArgs) -> anyhow::Result<()> {
    let slot = env.slot_name(&a.slot);
    let r = env.reg.resolve(&slot, a.key.as_deref())?;
    if env.ctx.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    match &r.adapter_dir {
        Some(d) => println!("{}", d.display()),
        None => {
            eprintln!("slot {slot} has nothing in production: load the base model alone");
            println!("{}", r.base_model.display());
        }
    }
    Ok(())
}

fn export(env: &Env<'_>, a: ExportArgs) -> anyhow::Result<()> {
    let slot = env.slot_name(&a.slot);
    let v = match &a.from {
        Some(r) => env.reg.find(r, Some(&slot))?,
        None => match env.reg.aliases(&slot)?.production() {
            Some(id) => env.reg.find(id, Some(&slot))?,
            None => bail!("slot {slot} has nothing in production to export (give --from VERSION)"),
        },
    };
    let (format, name) = match a.format {
        ExportFormat::Mlx => (AdapterFormat::Mlx, "mlx"),
        ExportFormat::Peft => (AdapterFormat::Peft, "peft"),
    };
    let out = a.out.unwrap_or_else(|| env.reg.root().join(&slot).join(format!("export-{name}")));
    let files = env.reg.export(&v, format, &out)?;
    if env.ctx.json {
        println!("{}", json!({"version": v.id, "format": name, "out": out, "files": files}));
    } else {
        println!("{}", out.display());
        eprintln!("exported {} ({name} layout) to {}", v.id, out.display());
    }
    Ok(())
}
