//! The registry: slots, immutable versions, moving aliases, the history.
//!
//! ```text
//! registry/<slot>/slot.json           the slot: base model (id, path, fingerprint, shape), golden set
//! registry/<slot>/golden.bin          the golden set (sam-prep's SFT cache format), fixed at creation
//! registry/<slot>/aliases.json        every alias of the slot, the canary's percentage, the last move
//! registry/<slot>/history.jsonl       append-only: registrations, verdicts, every alias move
//! registry/<slot>/lock                held while anything is written to the slot
//! registry/<slot>/versions/<id>/      version.json, adapter/ (the files as registered), verdicts.jsonl
//! ```
//!
//! A version is written into a temporary folder, synced and renamed into
//! place: it exists whole or not at all, and is never rewritten. All of a
//! slot's aliases live in one file that is replaced atomically, so a move
//! of several aliases at once (promote: `production` and `previous`) is one
//! rename: after a crash every alias is on its old version or its new one.
//! The alias file also carries the history entry of its last move; the
//! entry is appended to the history right after the rename, and a writer
//! that finds it missing (a crash in between) appends it first, so the
//! history never misses a move and never holds a torn line.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use sam_prep::cache::{Split, TokenizedExample};
use sam_trainer::{AdapterFormat, ModelConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canary::{self, CanaryDecision, CanarySettings, Judgements};
use crate::error::{Error, Result, io_err};
use crate::eval::{Evaluator, Subject};
use crate::fsx;
use crate::gate::{Gate, Reason, Trial, TrialData, Verdict};
use crate::shape::{self, AdapterInfo};

/// The alias of the version in production.
pub const PRODUCTION: &str = "production";
/// The alias of the version production had before the last move.
pub const PREVIOUS: &str = "previous";
/// The alias of the version on canary traffic.
pub const CANARY: &str = "canary";
/// How the base model (no adapter) is named where a version id could stand.
pub const BASE: &str = "base";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Whether `name` can be a slot or alias name (a folder name on every system).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The base model of a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseRef {
    /// Its name (the folder or file name).
    pub id: String,
    /// Where it is.
    pub path: PathBuf,
    /// The fingerprint of its files ([`Evaluator::fingerprint`](crate::Evaluator::fingerprint)).
    pub fingerprint: String,
    /// Its shape.
    pub config: ModelConfig,
}

/// A slot's golden set, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenInfo {
    /// Where it came from (a dataset's test split, or a file).
    pub source: String,
    /// Examples in it.
    pub examples: usize,
    /// blake3 of `golden.bin`.
    pub hash: String,
}

/// A slot: one base model, its versions, aliases, golden set and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// Its name.
    pub name: String,
    /// Its base model.
    pub base: BaseRef,
    /// Its golden set.
    pub golden: GoldenInfo,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

/// Where a version's training data is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// The prepared dataset folder.
    pub path: PathBuf,
    /// blake3 of its `manifest.json` when registered.
    pub manifest_hash: Option<String>,
}

/// An immutable registered adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Its id: 12 hex digits of blake3 over the slot's name and the
    /// adapter's content, so the same adapter registers once per slot.
    pub id: String,
    /// Its slot.
    pub slot: String,
    /// Registration order within the slot (1, 2, …).
    pub number: u64,
    /// blake3 over the adapter's files (names, lengths, bytes).
    pub content_hash: String,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
    /// The base model it was registered against: id and fingerprint.
    pub base_id: String,
    /// The base model's fingerprint.
    pub base_fingerprint: String,
    /// The adapter: layout, rank, modules, layers.
    pub adapter: AdapterInfo,
    /// The folder it was registered from.
    pub source: PathBuf,
    /// The dataset it was trained on.
    pub dataset: Option<DatasetRef>,
    /// The training run's id.
    pub run_id: Option<String>,
    /// The training configuration (the run's `config.json`).
    pub training_config: Option<Value>,
    /// The run's evaluation report (`eval.json`).
    pub eval: Option<Value>,
    /// Free tags.
    pub tags: BTreeMap<String, String>,
}

/// What to register.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// The adapter folder (PEFT or mlx-lm layout).
    pub adapter_dir: PathBuf,
    /// The base model it was trained on, when known (picks the slot).
    pub model: Option<PathBuf>,
    /// Its prepared dataset (the gate's held-out test split).
    pub dataset: Option<PathBuf>,
    /// The training run's id.
    pub run_id: Option<String>,
    /// The training configuration.
    pub training_config: Option<Value>,
    /// The evaluation report.
    pub eval: Option<Value>,
    /// Free tags.
    pub tags: BTreeMap<String, String>,
}

impl Registration {
    /// An adapter folder from anywhere (a PEFT folder from TRL or axolotl).
    pub fn folder(dir: impl Into<PathBuf>) -> Self {
        Self { adapter_dir: dir.into(), ..Default::default() }
    }

    /// A sam run folder (`runs/<id>/`): its `adapter/`, and from its
    /// `config.json` and `eval.json` the base model, dataset, configuration
    /// and evaluation report. `dir` may also be the run's `adapter/` folder.
    pub fn from_run(dir: &Path) -> Result<Self> {
        let run = if dir.join("config.json").is_file() && dir.join("adapter").is_dir() {
            dir.to_path_buf()
        } else if let Some(p) =
            dir.parent().filter(|p| p.join("config.json").is_file() && p.join("status.json").is_file())
        {
            p.to_path_buf()
        } else {
            return Err(Error::InvalidAdapter(format!(
                "{}: not a run folder (no config.json and adapter/)",
                dir.display()
            )));
        };
        let config: Value = fsx::read_json(&run.join("config.json"))?;
        let eval =
            run.join("eval.json").is_file().then(|| fsx::read_json::<Value>(&run.join("eval.json"))).transpose()?;
        let path = |k: &str| config.get(k).and_then(|v| v.as_str()).map(PathBuf::from);
        Ok(Self {
            adapter_dir: run.join("adapter"),
            model: path("model"),
            dataset: path("data"),
            run_id: run.file_name().map(|n| n.to_string_lossy().into_owned()),
            training_config: Some(config),
            eval,
            tags: BTreeMap::new(),
        })
    }

    /// Whether `dir` looks like a sam run folder (or its adapter folder).
    pub fn is_run(dir: &Path) -> bool {
        (dir.join("config.json").is_file() && dir.join("adapter").is_dir())
            || dir.parent().is_some_and(|p| p.join("config.json").is_file() && p.join("status.json").is_file())
    }
}

/// The canary's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    /// The version on canary traffic.
    pub version: String,
    /// Its share of the traffic, in percent.
    pub percent: f64,
    /// When it started (Unix seconds); judgements are counted from then.
    pub since: i64,
}

/// What `aliases.json` holds: every alias of a slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aliases {
    /// Sequence number of the last history entry that moved an alias.
    pub seq: u64,
    /// Alias name → version id (`production`, `previous`, `canary`, user-defined).
    pub aliases: BTreeMap<String, String>,
    /// The canary, when there is one (its version is also the `canary` alias).
    pub canary: Option<CanaryState>,
    /// The history entry of the last move (appended to the history after
    /// this file is in place; re-appended if a crash lost it).
    pub last: Option<HistoryEntry>,
}

impl Aliases {
    /// The version in production (`None`: the base model).
    pub fn production(&self) -> Option<&str> {
        self.aliases.get(PRODUCTION).map(String::as_str)
    }

    /// The version an alias points to.
    pub fn get(&self, alias: &str) -> Option<&str> {
        self.aliases.get(alias).map(String::as_str)
    }
}

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A version was registered.
    Register,
    /// A gate judged a version (pass or refuse).
    Gate,
    /// A version went into production.
    Promote,
    /// Production went back to an earlier version (or the base model).
    Rollback,
    /// A version took (or changed) the canary.
    Canary,
    /// The canary's feedback promoted it.
    CanaryPromote,
    /// The canary's feedback rolled it back.
    CanaryRollback,
    /// The canary was ended by hand.
    CanaryAbort,
    /// A user-defined alias was set or removed.
    Alias,
}

/// One line of a slot's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1, 2, … within the slot.
    pub seq: u64,
    /// When (Unix seconds).
    pub at: i64,
    /// The slot.
    pub slot: String,
    /// What happened.
    pub action: Action,
    /// The version concerned.
    pub version: Option<String>,
    /// The alias moved, if one was.
    pub alias: Option<String>,
    /// Its version before (`None`: unset, or the base model for production).
    pub from: Option<String>,
    /// Its version after.
    pub to: Option<String>,
    /// Why, in words.
    pub why: String,
    /// The gate was skipped by `--force`.
    #[serde(default)]
    pub forced: bool,
    /// The verdict behind it.
    pub verdict: Option<Verdict>,
    /// The canary's percentage after it, when there is a canary.
    pub canary_percent: Option<f64>,
    /// Every alias after the entry.
    pub aliases: BTreeMap<String, String>,
}

/// A verdict on a version, as stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// The version judged.
    pub version: String,
    /// What it was judged against: production's version id, or `base`.
    pub against: String,
    /// When (Unix seconds).
    pub at: i64,
    /// The held-out test split used.
    pub test_source: Option<PathBuf>,
    /// The verdict.
    pub verdict: Verdict,
}

/// What lets a version into production or the canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Approval {
    /// A passing verdict taken against the current production.
    Verdict(VerdictRecord),
    /// No gate (`--force`), with the reason given.
    Forced(String),
}

/// What the running assistant should load for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    /// The slot.
    pub slot: String,
    /// `production`, `canary`, or `base` (nothing in production).
    pub route: String,
    /// The version to tag answers with (`base` for the base model).
    pub version: String,
    /// The adapter folder to load (`None`: the base model alone).
    pub adapter_dir: Option<PathBuf>,
    /// The base model.
    pub base_model: PathBuf,
    /// The base model's name.
    pub base_id: String,
}

/// The registry under `SAM_HOME/registry`.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A held slot lock (released on drop).
#[derive(Debug)]
pub struct SlotLock {
    _file: File,
}

fn content_hash(dir: &Path, files: &[String]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut files = files.to_vec();
    files.sort();
    for f in &files {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        h.update(f.as_bytes());
        h.update(&[0]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn hash_file(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| blake3::hash(&b).to_hex().to_string())
}

impl Registry {
    /// The registry at `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self { root })
    }

    /// Its folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn slot_dir(&self, slot: &str) -> PathBuf {
        self.root.join(slot)
    }

    fn versions_dir(&self, slot: &str) -> PathBuf {
        self.slot_dir(slot).join("versions")
    }

    /// A version's folder.
    pub fn version_dir(&self, v: &Version) -> PathBuf {
        self.versions_dir(&v.slot).join(&v.id)
    }

    /// A version's adapter folder (what a runtime loads).
    pub fn adapter_dir(&self, v: &Version) -> PathBuf {
        self.version_dir(v).join("adapter")
    }

    /// Creates a slot for a base model with its golden set (fixed from now on).
    pub fn create_slot(&self, name: &str, base: BaseRef, golden: &[TokenizedExample], source: &str) -> Result<Slot> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        let dir = self.slot_dir(name);
        if dir.join("slot.json").is_file() {
            return Err(Error::SlotExists(name.to_string()));
        }
        std::fs::create_dir_all(dir.join("versions")).map_err(io_err(&dir))?;
        let _lock = self.lock(name)?;
        if dir.join("slot.json").is_file() {
            return Err(Error::SlotExists(name.to_string()));
        }
        let golden_path = dir.join("golden.bin");
        sam_home::atomic::write_via(
            &golden_path,
            |source| Error::Io { path: golden_path.clone(), source },
            |tmp| Ok(sam_prep::cache::write_sft(tmp, golden)?),
        )?;
        let slot = Slot {
            name: name.to_string(),
            base,
            golden: GoldenInfo {
                source: source.to_string(),
                examples: golden.len(),
                hash: hash_file(&golden_path).unwrap_or_default(),
            },
            created_at: now(),
        };
        fsx::write_json(&dir.join("slot.json"), &slot)?;
        fsx::sync_dir(&self.root)?;
        Ok(slot)
    }

    /// A slot by name.
    pub fn slot(&self, name: &str) -> Result<Slot> {
        let p = self.slot_dir(name).join("slot.json");
        if !valid_name(name) || !p.is_file() {
            return Err(Error::NoSlot(name.to_string()));
        }
        fsx::read_json(&p)
    }

    /// Every slot, by name.
    pub fn slots(&self) -> Result<Vec<Slot>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let e = e.map_err(io_err(&self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_name(&name) && e.path().join("slot.json").is_file() {
                out.push(self.slot(&name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The slot's golden set.
    pub fn golden(&self, slot: &str) -> Result<Vec<TokenizedExample>> {
        let p = self.slot_dir(slot).join("golden.bin");
        let s = self.slot(slot)?;
        if hash_file(&p).as_deref() != Some(s.golden.hash.as_str()) {
            return Err(Error::Corrupt { path: p, reason: "the golden set changed since the slot was created".into() });
        }
        Ok(sam_prep::cache::read_sft(&p)?)
    }

    /// Takes the slot's lock (waits for another process's promote), then
    /// repairs what a crash may have left: a history entry of the last move
    /// that did not reach the history.
    pub fn lock(&self, slot: &str) -> Result<SlotLock> {
        let dir = self.slot_dir(slot);
        let p = dir.join("lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        let lock = SlotLock { _file: f };
        if dir.join("slot.json").is_file() {
            let a = self.aliases(slot)?;
            if let Some(last) = &a.last
                && self.last_seq(slot)? < last.seq
            {
                self.append(slot, last)?;
            }
        }
        Ok(lock)
    }

    /// The slot's aliases.
    pub fn aliases(&self, slot: &str) -> Result<Aliases> {
        let p = self.slot_dir(slot).join("aliases.json");
        if !p.is_file() {
            self.slot(slot)?;
            return Ok(Aliases::default());
        }
        fsx::read_json(&p)
    }

    fn history_path(&self, slot: &str) -> PathBuf {
        self.slot_dir(slot).join("history.jsonl")
    }

    /// The slot's history, oldest first (whole lines only; with the last
    /// move's entry when a crash kept it from the file).
    pub fn history(&self, slot: &str) -> Result<Vec<HistoryEntry>> {
        self.slot(slot)?;
        let p = self.history_path(slot);
        let mut out: Vec<HistoryEntry> = Vec::new();
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
            let complete =
                if text.ends_with('\n') { &text[..] } else { &text[..text.rfind('\n').map_or(0, |i| i + 1)] };
            for (i, line) in complete.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let e = serde_json::from_str(line)
                    .map_err(|e| Error::Corrupt { path: p.clone(), reason: format!("line {}: {e}", i + 1) })?;
                out.push(e);
            }
        }
        if let Some(last) = self.aliases(slot)?.last
            && out.last().is_none_or(|e| e.seq < last.seq)
        {
            out.push(last);
        }
        Ok(out)
    }

    fn last_seq(&self, slot: &str) -> Result<u64> {
        let p = self.history_path(slot);
        if !p.is_file() {
            return Ok(0);
        }
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        let complete = if text.ends_with('\n') { &text[..] } else { &text[..text.rfind('\n').map_or(0, |i| i + 1)] };
        Ok(complete.lines().rev().find_map(|l| serde_json::from_str::<HistoryEntry>(l).ok()).map_or(0, |e| e.seq))
    }

    fn append(&self, slot: &str, e: &HistoryEntry) -> Result<()> {
        let line = serde_json::to_string(e)
            .map_err(|err| Error::Corrupt { path: self.history_path(slot), reason: err.to_string() })?;
        fsx::append_line(&self.history_path(slot), &line)
    }

    /// The next history sequence number (under the lock).
    fn next_seq(&self, slot: &str) -> Result<u64> {
        Ok(self.last_seq(slot)?.max(self.aliases(slot)?.seq) + 1)
    }

    /// Records an entry that moves no alias (under the lock).
    fn record(&self, slot: &str, mut e: HistoryEntry) -> Result<HistoryEntry> {
        e.seq = self.next_seq(slot)?;
        e.aliases = self.aliases(slot)?.aliases;
        self.append(slot, &e)?;
        Ok(e)
    }

    /// Moves aliases (under the lock): the new alias file goes in with one
    /// rename, then its entry is appended to the history.
    fn commit(&self, slot: &str, mut next: Aliases, mut e: HistoryEntry) -> Result<HistoryEntry> {
        e.seq = self.next_seq(slot)?;
        match &next.canary {
            Some(c) => next.aliases.insert(CANARY.into(), c.version.clone()),
            None => next.aliases.remove(CANARY),
        };
        e.aliases = next.aliases.clone();
        e.canary_percent = next.canary.as_ref().map(|c| c.percent);
        next.seq = e.seq;
        next.last = Some(e.clone());
        fsx::write_json(&self.slot_dir(slot).join("aliases.json"), &next)?;
        self.append(slot, &e)?;
        Ok(e)
    }

    fn entry(slot: &str, action: Action, version: Option<&str>, why: impl Into<String>) -> HistoryEntry {
        HistoryEntry {
            seq: 0,
            at: now(),
            slot: slot.to_string(),
            action,
            version: version.map(String::from),
            alias: None,
            from: None,
            to: None,
            why: why.into(),
            forced: false,
            verdict: None,
            canary_percent: None,
            aliases: BTreeMap::new(),
        }
    }

    /// The slot a registration goes to: `slot` when given, else the slot
    /// whose base model is the registration's, else `default`.
    pub fn slot_for(&self, reg: &Registration, default: &str) -> Result<Option<Slot>> {
        if let Some(m) = &reg.model {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            if let Some(s) = self.slots()?.into_iter().find(|s| canon(&s.base.path) == canon(m)) {
                return Ok(Some(s));
            }
        }
        match self.slot(default) {
            Ok(s) => Ok(Some(s)),
            Err(Error::NoSlot(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers an adapter in `slot` after checking its shapes against the
    /// slot's base. Returns the version and whether it is new (the same
    /// adapter registered again returns the existing version).
    pub fn register(&self, slot: &str, reg: &Registration) -> Result<(Version, bool)> {
        let s = self.slot(slot)?;
        let info = shape::check_adapter(&reg.adapter_dir, &s.base.config)?;
        if let Some(t) = &info.non_finite {
            return Err(Error::InvalidAdapter(format!(
                "{}: tensor {t} has non-finite values",
                reg.adapter_dir.display()
            )));
        }
        let hash = content_hash(&reg.adapter_dir, &info.files)?;
        let id = blake3::hash(format!("{slot}\0{hash}").as_bytes()).to_hex()[..12].to_string();
        let _lock = self.lock(slot)?;
        let final_dir = self.versions_dir(slot).join(&id);
        if final_dir.join("version.json").is_file() {
            return Ok((self.version_in(slot, &id)?, false));
        }
        let number = self.versions(slot)?.iter().map(|v| v.number).max().unwrap_or(0) + 1;
        let dataset = reg.dataset.as_ref().map(|p| DatasetRef {
            path: std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
            manifest_hash: hash_file(&p.join("manifest.json")),
        });
        let v = Version {
            id: id.clone(),
            slot: slot.to_string(),
            number,
            content_hash: hash.clone(),
            created_at: now(),
            base_id: s.base.id.clone(),
            base_fingerprint: s.base.fingerprint.clone(),
            adapter: info.clone(),
            source: std::fs::canonicalize(&reg.adapter_dir).unwrap_or_else(|_| reg.adapter_dir.clone()),
            dataset,
            run_id: reg.run_id.clone(),
            training_config: reg.training_config.clone(),
            eval: reg.eval.clone(),
            tags: reg.tags.clone(),
        };
        // Written whole into a temporary folder, then renamed into place.
        let tmp = self.versions_dir(slot).join(format!(".tmp-{id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let adapter = tmp.join("adapter");
        std::fs::create_dir_all(&adapter).map_err(io_err(&adapter))?;
        for f in &info.files {
            let (from, to) = (reg.adapter_dir.join(f), adapter.join(f));
            std::fs::copy(&from, &to).map_err(io_err(&from))?;
            File::open(&to).and_then(|f| f.sync_all()).map_err(io_err(&to))?;
        }
        if content_hash(&adapter, &info.files)? != hash {
            return Err(Error::InvalidAdapter(format!("{}: changed while it was copied", reg.adapter_dir.display())));
        }
        fsx::write_json(&tmp.join("version.json"), &v)?;
        fsx::sync_dir(&adapter)?;
        fsx::sync_dir(&tmp)?;
        std::fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        fsx::sync_dir(&self.versions_dir(slot))?;
        let mut e =
            Self::entry(slot, Action::Register, Some(&id), format!("registered #{number} from {}", v.source.display()));
        if let Some(r) = &v.run_id {
            e.why.push_str(&format!(" (run {r})"));
        }
        self.record(slot, e)?;
        Ok((v, true))
    }

    fn version_in(&self, slot: &str, id: &str) -> Result<Version> {
        fsx::read_json(&self.versions_dir(slot).join(id).join("version.json"))
    }

    /// Every version of a slot, in registration order.
    pub fn versions(&self, slot: &str) -> Result<Vec<Version>> {
        let dir = self.versions_dir(slot);
        let mut out = Vec::new();
        if dir.is_dir() {
            for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let e = e.map_err(io_err(&dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && e.path().join("version.json").is_file() {
                    out.push(self.version_in(slot, &name)?);
                }
            }
        }
        out.sort_by_key(|v| v.number);
        Ok(out)
    }

    /// Finds a version by id, unique id prefix (4+ characters), `#N` within
    /// `slot`, or alias name within `slot`.
    pub fn find(&self, reference: &str, slot: Option<&str>) -> Result<Version> {
        let slots: Vec<String> = match slot {
            Some(s) => vec![self.slot(s)?.name],
            None => self.slots()?.into_iter().map(|s| s.name).collect(),
        };
        if let Some(s) = slot {
            if let Some(id) = self.aliases(s)?.get(reference) {
                return self.version_in(s, id);
            }
            if let Some(n) = reference.strip_prefix('#').and_then(|n| n.parse::<u64>().ok())
                && let Some(v) = self.versions(s)?.into_iter().find(|v| v.number == n)
            {
                return Ok(v);
            }
        }
        let mut hits = Vec::new();
        for s in &slots {
            for v in self.versions(s)? {
                if v.id == reference {
                    return Ok(v);
                }
                if reference.len() >= 4 && v.id.starts_with(reference) {
                    hits.push(v);
                }
            }
        }
        match hits.len() {
            1 => Ok(hits.remove(0)),
            0 => Err(Error::NoVersion(reference.to_string())),
            _ => Err(Error::Ambiguous(
                reference.to_string(),
                hits.iter().map(|v| format!("{}/{}", v.slot, v.id)).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// Checks that a version's files still hash to its content hash.
    pub fn verify(&self, v: &Version) -> Result<()> {
        let dir = self.adapter_dir(v);
        match content_hash(&dir, &v.adapter.files) {
            Ok(h) if h == v.content_hash => Ok(()),
            Ok(_) => {
                Err(Error::Damaged { version: v.id.clone(), reason: "its files do not match its content hash".into() })
            }
            Err(e) => Err(Error::Damaged { version: v.id.clone(), reason: e.to_string() }),
        }
    }

    /// A version as an evaluator subject.
    pub fn subject(&self, v: &Version) -> Subject {
        Subject::adapter(v.id.clone(), v.content_hash.clone(), self.adapter_dir(v))
    }

    /// The verdicts stored with a version, oldest first.
    pub fn verdicts(&self, v: &Version) -> Result<Vec<VerdictRecord>> {
        let p = self.version_dir(v).join("verdicts.jsonl");
        if !p.is_file() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// The held-out data to judge `v` with: the test split (and preference
    /// pairs) of `dataset`, else of the dataset it was registered with; the
    /// slot's golden set; `prompts`.
    pub fn trial_data(&self, v: &Version, dataset: Option<&Path>, prompts: &[String]) -> Result<TrialData> {
        let mut data = TrialData { golden: self.golden(&v.slot)?, prompts: prompts.to_vec(), ..Default::default() };
        let ds = match (dataset, &v.dataset) {
            (Some(d), _) => Some(d.to_path_buf()),
            (None, Some(d)) => {
                if d.manifest_hash.is_some() && hash_file(&d.path.join("manifest.json")) != d.manifest_hash {
                    return Err(Error::State(format!(
                        "the dataset {} changed since {} was registered: pass --data with the held-out split to use",
                        d.path.display(),
                        v.id
                    )));
                }
                Some(d.path.clone())
            }
            (None, None) => None,
        };
        if let Some(d) = ds {
            let prepared = sam_prep::cache::PreparedData::open(&d)?;
            data.test = prepared.sft(Split::Test)?;
            data.pairs = prepared.preference(Split::Test).unwrap_or_default();
            data.test_source = Some(d);
        }
        Ok(data)
    }

    /// Judges `v` with `gate` against the slot's production (or the base
    /// model) and stores the verdict with the version and in the history.
    pub fn judge(
        &self,
        v: &Version,
        gate: &dyn Gate,
        ev: &mut dyn Evaluator,
        data: &TrialData,
    ) -> Result<VerdictRecord> {
        let slot = self.slot(&v.slot)?;
        self.verify(v)?;
        let aliases = self.aliases(&slot.name)?;
        let baseline = match aliases.production() {
            Some(id) => {
                let p = self.version_in(&slot.name, id)?;
                self.verify(&p)?;
                self.subject(&p)
            }
            None => Subject::base(),
        };
        let trial = Trial {
            slot: &slot.name,
            candidate: self.subject(v),
            baseline: baseline.clone(),
            base_config: &slot.base.config,
            base_fingerprint: &slot.base.fingerprint,
            data,
        };
        let verdict = gate.judge(&trial, ev)?;
        let rec = VerdictRecord {
            version: v.id.clone(),
            against: baseline.label,
            at: now(),
            test_source: data.test_source.clone(),
            verdict,
        };
        self.record_verdict(&rec)?;
        Ok(rec)
    }

    /// Stores a verdict with its version and in the history.
    pub fn record_verdict(&self, rec: &VerdictRecord) -> Result<HistoryEntry> {
        let v = self.find(&rec.version, None)?;
        let _lock = self.lock(&v.slot)?;
        let line = serde_json::to_string(rec)
            .map_err(|e| Error::Corrupt { path: self.version_dir(&v), reason: e.to_string() })?;
        fsx::append_line(&self.version_dir(&v).join("verdicts.jsonl"), &line)?;
        let why = if rec.verdict.pass {
            format!("gate passed against {}", rec.against)
        } else {
            format!("gate refused against {}: {}", rec.against, rec.verdict.summary())
        };
        let mut e = Self::entry(&v.slot, Action::Gate, Some(&v.id), why);
        e.verdict = Some(rec.verdict.clone());
        self.record(&v.slot, e)
    }

    fn approve(&self, v: &Version, approval: &Approval, aliases: &Aliases) -> Result<(bool, Option<Verdict>, String)> {
        match approval {
            Approval::Forced(why) => Ok((true, None, why.clone())),
            Approval::Verdict(rec) => {
                if rec.version != v.id {
                    return Err(Error::State(format!("the verdict is on {}, not {}", rec.version, v.id)));
                }
                if !rec.verdict.pass {
                    return Err(Error::Refused { version: v.id.clone(), reasons: rec.verdict.summary() });
                }
                let prod = aliases.production().unwrap_or(BASE);
                if rec.against != prod {
                    return Err(Error::StaleVerdict {
                        version: v.id.clone(),
                        judged_against: rec.against.clone(),
                        production: prod.to_string(),
                    });
                }
                Ok((false, Some(rec.verdict.clone()), format!("gate passed against {}", rec.against)))
            }
        }
    }

    /// Puts `v` into production: `previous` takes the old production, a
    /// canary of `v` ends. Refused (aliases unchanged) without a passing
    /// verdict against the current production, unless forced.
    pub fn promote(&self, v: &Version, approval: &Approval) -> Result<HistoryEntry> {
        let _lock = self.lock(&v.slot)?;
        self.verify(v)?;
        let mut a = self.aliases(&v.slot)?;
        if a.production() == Some(v.id.as_str()) {
            return Err(Error::State(format!("{} is already in production", v.id)));
        }
        let (forced, verdict, why) = self.approve(v, approval, &a)?;
        let old = a.aliases.insert(PRODUCTION.into(), v.id.clone());
        match &old {
            Some(o) => a.aliases.insert(PREVIOUS.into(), o.clone()),
            None => a.aliases.remove(PREVIOUS),
        };
        if a.canary.as_ref().is_some_and(|c| c.version == v.id) {
            a.canary = None;
        }
        let mut e = Self::entry(&v.slot, Action::Promote, Some(&v.id), why);
        (e.alias, e.from, e.to, e.forced, e.verdict) =
            (Some(PRODUCTION.into()), old, Some(v.id.clone()), forced, verdict);
        self.commit(&v.slot, a, e)
    }

    /// Puts production back on `to` (a version, or `None` for `previous`);
    /// `to = Some("base")` leaves the base model alone in production.
    pub fn rollback(&self, slot: &str, to: Option<&str>, why: &str) -> Result<HistoryEntry> {
        let _lock = self.lock(slot)?;
        let mut a = self.aliases(slot)?;
        let target = match to {
            Some(BASE) => None,
            Some(r) => Some(self.find(r, Some(slot))?.id),
            None => Some(a.get(PREVIOUS).map(String::from).ok_or_else(|| {
                Error::State(format!(
                    "slot {slot} has no previous version to roll back to (use --to VERSION, or --to base)"
                ))
            })?),
        };
        if let Some(id) = &target {
            self.verify(&self.version_in(slot, id)?)?;
        }
        let old = a.production().map(String::from);
        if old == target {
            return Err(Error::State(format!("production is already {}", target.as_deref().unwrap_or(BASE))));
        }
        match &target {
            Some(t) => a.aliases.insert(PRODUCTION.into(), t.clone()),
            None => a.aliases.remove(PRODUCTION),
        };
        match &old {
            Some(o) => a.aliases.insert(PREVIOUS.into(), o.clone()),
            None => a.aliases.remove(PREVIOUS),
        };
        if a.canary.as_ref().is_some_and(|c| Some(&c.version) == target.as_ref()) {
            a.canary = None;
        }
        let mut e = Self::entry(slot, Action::Rollback, target.as_deref(), why);
        (e.alias, e.from, e.to) = (Some(PRODUCTION.into()), old, target);
        self.commit(slot, a, e)
    }

    /// Puts `v` on canary traffic at `percent` (or changes the percentage
    /// of the running canary, keeping its start).
    pub fn start_canary(&self, v: &Version, percent: f64, approval: &Approval) -> Result<HistoryEntry> {
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(Error::Config(format!("canary percent {percent} is not in (0, 100]")));
        }
        let _lock = self.lock(&v.slot)?;
        self.verify(v)?;
        let mut a = self.aliases(&v.slot)?;
        if a.production() == Some(v.id.as_str()) {
            return Err(Error::State(format!("{} is in production already", v.id)));
        }
        let running = a.canary.as_ref().filter(|c| c.version == v.id).cloned();
        let (forced, verdict, why) = match (&running, approval) {
            // Moving the percentage of a canary that was let in already.
            (Some(_), Approval::Verdict(_)) | (Some(_), Approval::Forced(_)) => {
                self.approve(v, approval, &a).unwrap_or((false, None, "percentage changed".into()))
            }
            (None, _) => self.approve(v, approval, &a)?,
        };
        let from = a.canary.as_ref().map(|c| c.version.clone());
        let since = running.as_ref().map_or(now(), |c| c.since);
        let old_percent = running.as_ref().map(|c| c.percent);
        a.canary = Some(CanaryState { version: v.id.clone(), percent, since });
        let why = match old_percent {
            Some(p) => format!("canary traffic {p}% → {percent}%"),
            None => format!("canary at {percent}%: {why}"),
        };
        let mut e = Self::entry(&v.slot, Action::Canary, Some(&v.id), why);
        (e.alias, e.from, e.to, e.forced, e.verdict) = (Some(CANARY.into()), from, Some(v.id.clone()), forced, verdict);
        self.commit(&v.slot, a, e)
    }

    /// Ends the canary without promoting it.
    pub fn abort_canary(&self, slot: &str, why: &str) -> Result<HistoryEntry> {
        let _lock = self.lock(slot)?;
        let mut a = self.aliases(slot)?;
        let Some(c) = a.canary.take() else {
            return Err(Error::State(format!("slot {slot} has no canary")));
        };
        let mut e = Self::entry(slot, Action::CanaryAbort, Some(&c.version), why);
        (e.alias, e.from, e.to) = (Some(CANARY.into()), Some(c.version.clone()), None);
        self.commit(slot, a, e)
    }

    /// Decides the canary from judgements of its answers and of
    /// production's (counted since the canary started): promotes it, rolls
    /// it back (all traffic to production), or leaves it; a move is
    /// recorded with the reason.
    pub fn decide_canary(
        &self,
        slot: &str,
        canary: Judgements,
        production: Judgements,
        settings: &CanarySettings,
    ) -> Result<(CanaryDecision, Option<HistoryEntry>)> {
        let _lock = self.lock(slot)?;
        let mut a = self.aliases(slot)?;
        let Some(c) = a.canary.clone() else {
            return Err(Error::State(format!("slot {slot} has no canary")));
        };
        let d = canary::decide(canary, production, settings);
        let entry = match &d {
            CanaryDecision::Promote { .. } => {
                let old = a.aliases.insert(PRODUCTION.into(), c.version.clone());
                match &old {
                    Some(o) => a.aliases.insert(PREVIOUS.into(), o.clone()),
                    None => a.aliases.remove(PREVIOUS),
                };
                a.canary = None;
                let mut e = Self::entry(slot, Action::CanaryPromote, Some(&c.version), d.to_string());
                (e.alias, e.from, e.to) = (Some(PRODUCTION.into()), old, Some(c.version.clone()));
                Some(self.commit(slot, a, e)?)
            }
            CanaryDecision::Rollback { .. } => {
                a.canary = None;
                let mut e = Self::entry(slot, Action::CanaryRollback, Some(&c.version), d.to_string());
                (e.alias, e.from, e.to) = (Some(CANARY.into()), Some(c.version.clone()), None);
                Some(self.commit(slot, a, e)?)
            }
            CanaryDecision::Wait { .. } | CanaryDecision::Hold { .. } => None,
        };
        Ok((d, entry))
    }

    /// Points a user-defined alias at a version (`None`: removes it).
    pub fn set_alias(&self, slot: &str, alias: &str, version: Option<&Version>) -> Result<HistoryEntry> {
        if [PRODUCTION, PREVIOUS, CANARY, BASE].contains(&alias) {
            return Err(Error::State(format!("`{alias}` moves with promote, rollback and canary only")));
        }
        if !valid_name(alias) || alias.starts_with('#') {
            return Err(Error::BadName(alias.to_string()));
        }
        let _lock = self.lock(slot)?;
        let mut a = self.aliases(slot)?;
        let from = match version {
            Some(v) => a.aliases.insert(alias.into(), v.id.clone()),
            None => a.aliases.remove(alias),
        };
        let to = version.map(|v| v.id.clone());
        let mut e = Self::entry(slot, Action::Alias, to.as_deref(), format!("alias {alias} set"));
        (e.alias, e.from, e.to) = (Some(alias.into()), from, to);
        self.commit(slot, a, e)
    }

    /// What to load for a request with `key` (a user or session id): the
    /// canary for keys in its share, else production, else the base model.
    pub fn resolve(&self, slot: &str, key: Option<&str>) -> Result<Resolution> {
        let s = self.slot(slot)?;
        let a = self.aliases(slot)?;
        let (route, id) = match (&a.canary, key) {
            (Some(c), Some(k)) if canary::in_canary(slot, k, c.percent) => (CANARY, Some(c.version.clone())),
            _ => match a.production() {
                Some(p) => (PRODUCTION, Some(p.to_string())),
                None => (BASE, None),
            },
        };
        let adapter_dir = match &id {
            Some(id) => Some(self.adapter_dir(&self.version_in(slot, id)?)),
            None => None,
        };
        Ok(Resolution {
            slot: slot.to_string(),
            route: route.to_string(),
            version: id.unwrap_or_else(|| BASE.to_string()),
            adapter_dir,
            base_model: s.base.path.clone(),
            base_id: s.base.id.clone(),
        })
    }

    /// Writes `v`'s adapter to `out` in `format`. A PEFT version exported as
    /// PEFT (or mlx as mlx) is copied; otherwise it is loaded onto the base
    /// model and written by sam-trainer in the other layout.
    pub fn export(&self, v: &Version, format: AdapterFormat, out: &Path) -> Result<Vec<PathBuf>> {
        self.verify(v)?;
        let slot = self.slot(&v.slot)?;
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        let src = self.adapter_dir(v);
        let staged = out.join(format!(".sam-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staged);
        if format == v.adapter.format {
            std::fs::create_dir_all(&staged).map_err(io_err(&staged))?;
            for f in &v.adapter.files {
                std::fs::copy(src.join(f), staged.join(f)).map_err(io_err(src.join(f)))?;
            }
        } else {
            let mut model = sam_trainer::load_model(&slot.base.path, &Default::default())?;
            sam_trainer::load_adapter(&mut model, &src)?;
            sam_trainer::save_adapter(&model, &staged, format, Some(&slot.base.id))?;
        }
        let mut written = Vec::new();
        for e in std::fs::read_dir(&staged).map_err(io_err(&staged))? {
            let e = e.map_err(io_err(&staged))?;
            let to = out.join(e.file_name());
            File::open(e.path()).and_then(|f| f.sync_all()).map_err(io_err(e.path()))?;
            std::fs::rename(e.path(), &to).map_err(io_err(&to))?;
            written.push(to);
        }
        std::fs::remove_dir_all(&staged).map_err(io_err(&staged))?;
        fsx::sync_dir(out)?;
        written.sort();
        Ok(written)
    }
}

/// The reasons of a forced promotion, as a verdict for reports.
pub fn forced_verdict() -> Verdict {
    let mut v = Verdict::new("forced", true);
    v.reasons.push(Reason::Forced);
    v
}

impl BaseRef {
    /// Describes the base model an evaluator has loaded from `path`.
    pub fn of(path: &Path, ev: &mut dyn Evaluator) -> Result<Self> {
        let id =
            path.file_stem().or_else(|| path.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self {
            id,
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            fingerprint: ev.fingerprint()?,
            config: ev.model_config().clone(),
        })
    }
}

/// A prepared dataset's test split, as a slot's golden set.
pub fn golden_from_dataset(dir: &Path) -> Result<Vec<TokenizedExample>> {
    let examples = sam_prep::cache::PreparedData::open(dir)?.sft(Split::Test)?;
    if examples.is_empty() {
        return Err(Error::State(format!("{}: the test split is empty: no golden set to take", dir.display())));
    }
    Ok(examples)
}

/// The examples of JSONL files (any form sam reads), rendered and tokenised
/// with the base model's chat template and tokenizer, as a golden set.
pub fn golden_from_files(
    files: &[PathBuf],
    model: &sam_models::BaseModel,
    max_seq_len: usize,
) -> Result<Vec<TokenizedExample>> {
    let input = sam_prep::prepare::read_inputs(files)?;
    let cfg = sam_prep::prepare::PrepConfig {
        max_seq_len,
        split: sam_prep::split::SplitRatios { train: 100.0, valid: 0.0, test: 0.0 },
        ..Default::default()
    };
    let prepared = sam_prep::prepare::Preparer::new(model, cfg)?.prepare(&input, |_| {})?;
    let examples: Vec<TokenizedExample> = Split::ALL.iter().flat_map(|s| prepared.sft_tokens(*s)).cloned().collect();
    if examples.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Error::State(format!("{}: no SFT example to take as a golden set", names.join(", "))));
    }
    Ok(examples)
}
