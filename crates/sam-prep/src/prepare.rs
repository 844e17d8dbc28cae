//! The preparation pipeline: examples in, a dataset folder out.
//!
//! 1. **Convert** each [`Example`]: instruction, chat and prompt/completion
//!    become a conversation (with the configured system prompt first, when
//!    the conversation has none); a preference pair becomes a prompt plus two
//!    responses; a completion stays text.
//! 2. **Tokenise** with the model's tokenizer and chat template
//!    ([`crate::encode`]), with per-token loss masks. Without a tokenizer,
//!    lengths are estimated at ~4 characters a token (with a warning) and no
//!    token cache is written.
//! 3. **Truncate** to `max_seq_len` (see [`TRUNCATION_POLICY`]).
//! 4. **Split** by id ([`crate::split`]).
//! 5. **Write** `train/valid/test.jsonl` (mlx-lm's `messages` form; raw text
//!    rows in `text/` when the dataset also has conversations, since mlx-lm
//!    reads the form from the first row), `preference/*.jsonl`
//!    (`prompt`/`chosen`/`rejected`), the token cache ([`crate::cache`]) and
//!    `manifest.json`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sam_models::BaseModel;
use sam_schema::{Content, Example, JsonlReader, Message, Prompt, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::Error;
use crate::cache::{self, Split, TokenizedExample, TokenizedPair};
use crate::encode::{Encoder, estimate_tokens};
use crate::fast_bpe::FastBpe;
use crate::split::{SPLIT_RULE, SplitRatios};
use crate::template::ChatTemplate;

/// How sequences longer than `max_seq_len` are handled.
pub const TRUNCATION_POLICY: &str = "conversations: keep the response (the last assistant turn through its end token) whole and the head of the prompt, cutting the tokens just before the response; drop the example when the response alone exceeds max_seq_len. completions: keep the first max_seq_len tokens. preference pairs: cut the prompt from the left so that prompt + the longer response fit; drop the pair when the longer response alone does not leave room for one prompt token.";

/// Options of a preparation.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepConfig {
    /// Longest sequence in tokens (default 512).
    pub max_seq_len: usize,
    /// Split proportions (default 90/5/5).
    pub split: SplitRatios,
    /// System prompt put first in every conversation that has none.
    pub system_prompt: Option<String>,
    /// Worker threads (default: available parallelism).
    pub threads: usize,
}

impl Default for PrepConfig {
    fn default() -> Self {
        Self {
            max_seq_len: 512,
            split: SplitRatios::default(),
            system_prompt: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// blake3 of its bytes.
    pub blake3: String,
    /// Rows read.
    pub rows: usize,
    /// Rows that did not parse (skipped).
    pub bad_rows: usize,
}

/// Examples read from JSONL files, and where they came from.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// The files.
    pub sources: Vec<SourceFile>,
}

/// Read examples from JSONL files or folders of `*.jsonl` files (any form
/// `sam_schema::parse_line` accepts: a store export, or hand-written rows).
/// Bad rows are logged and counted, not fatal.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Input, Error> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = fs::read_dir(p)
                .map_err(|e| io_err(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl") && f.is_file())
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    let mut input = Input::default();
    for f in files {
        let bytes = fs::read(&f).map_err(|e| io_err(&f, e))?;
        let mut src =
            SourceFile { path: f.clone(), blake3: blake3::hash(&bytes).to_hex().to_string(), rows: 0, bad_rows: 0 };
        for row in JsonlReader::new(&bytes[..], Some(f.clone())) {
            src.rows += 1;
            match row {
                Ok(p) => input.examples.push(p.example),
                Err(e) => {
                    src.bad_rows += 1;
                    tracing::warn!("{e}");
                }
            }
        }
        input.sources.push(src);
    }
    Ok(input)
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source: e }
}

/// Token statistics over sequences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    /// Sequences counted.
    pub count: usize,
    /// Tokens in all.
    pub total: usize,
    /// Tokens trained on (mask true), for SFT.
    pub trained: usize,
    /// Mean length.
    pub mean: f64,
    /// Median length.
    pub p50: usize,
    /// 95th percentile length.
    pub p95: usize,
    /// Longest.
    pub max: usize,
}

impl TokenStats {
    fn from_lengths(mut lens: Vec<usize>, trained: usize) -> Self {
        if lens.is_empty() {
            return Self::default();
        }
        lens.sort_unstable();
        let n = lens.len();
        let total: usize = lens.iter().sum();
        // Nearest-rank percentiles.
        let pct = |p: f64| lens[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            count: n,
            total,
            trained,
            mean: total as f64 / n as f64,
            p50: pct(0.50),
            p95: pct(0.95),
            max: lens[n - 1],
        }
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Train rows.
    pub train: usize,
    /// Validation rows.
    pub valid: usize,
    /// Test rows.
    pub test: usize,
}

impl SplitCounts {
    pub(crate) fn add(&mut self, s: Split) {
        match s {
            Split::Train => self.train += 1,
            Split::Valid => self.valid += 1,
            Split::Test => self.test += 1,
        }
    }
}

/// What happened to examples on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Truncated (kept, shortened).
    pub truncated: usize,
    /// Dropped: the response alone does not fit in `max_seq_len`.
    pub dropped_too_long: usize,
    /// Dropped: a conversation without an assistant turn, or empty text.
    pub dropped_no_response: usize,
    /// Dropped: the chat template refused it (its own `raise_exception`, or
    /// a failure to render).
    pub dropped_template_error: usize,
    /// Dropped: rendered, but its assistant turns could not be located, so
    /// no loss mask could be made.
    #[serde(default)]
    pub dropped_unmaskable: usize,
    /// Each distinct reason behind the two counts above, with its count and
    /// first example, most frequent first.
    #[serde(default)]
    pub errors: Vec<DropCause>,
    /// Skipped: an id seen before in this input.
    pub duplicate_ids: usize,
    /// Input rows that did not parse.
    pub bad_rows: usize,
}

/// Why examples were dropped by the template or the span search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropKind {
    /// The template raised or failed to render ([`Drops::dropped_template_error`]).
    TemplateError,
    /// No assistant span could be located ([`Drops::dropped_unmaskable`]).
    Unmaskable,
}

/// One reason examples were dropped, as the template or the span search gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCause {
    /// Which count it belongs to.
    pub kind: DropKind,
    /// The reason: for a template error, the template's own message.
    pub reason: String,
    /// Examples dropped for it.
    pub count: usize,
    /// The first such example's id.
    pub first_id: String,
}

/// How assistant turns were located for the loss mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpanMethod {
    /// The template's `{% generation %}` blocks, as transformers'
    /// `return_assistant_tokens_mask` reads them.
    GenerationMarkers,
    /// Inferred from renderings of conversation prefixes, since the template
    /// has no generation markers (see [`crate::encode`]).
    #[default]
    Inferred,
}

/// `manifest.json` of a prepared dataset; [`read_manifest`] reads one back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this manifest.
    pub version: u32,
    /// When it was made (Unix seconds).
    pub created_at: u64,
    /// Input files (a store export, or JSONL files).
    pub sources: Vec<SourceFile>,
    /// The model: name and path.
    pub model: Value,
    /// The model's fingerprint (`BaseModel::fingerprint`): a dataset is
    /// for the model it was prepared with.
    #[serde(default)]
    pub model_fingerprint: String,
    /// The token id that pads sequences (`SpecialTokens::pad_id`: the pad
    /// token, else eos, else 0); the trainer and evaluation pad with it.
    #[serde(default)]
    pub pad_id: u32,
    /// `model` or `estimate-4-chars-per-token`.
    pub tokenizer: String,
    /// blake3 of the tokenizer's JSON form (none without a tokenizer).
    pub tokenizer_hash: Option<String>,
    /// `model` or `builtin-chatml`.
    pub template: String,
    /// blake3 of the template source.
    pub template_hash: String,
    /// The prompt format the template writes (`llama-3`, `chatml`, …), when
    /// sam recognises it.
    #[serde(default)]
    pub template_family: Option<String>,
    /// How assistant turns were located.
    #[serde(default)]
    pub span_method: SpanMethod,
    /// Assistant turns located by their content, because the template
    /// renders the conversation before them differently from the whole.
    #[serde(default)]
    pub spans_by_content: usize,
    /// The end-of-turn token text.
    pub end_of_turn: Option<String>,
    /// The system prompt added to conversations that have none.
    pub system_prompt: Option<String>,
    /// `max_seq_len`.
    pub max_seq_len: usize,
    /// The truncation policy, in words.
    pub truncation_policy: String,
    /// Split ratios.
    pub split_ratios: SplitRatios,
    /// The split rule, in words.
    pub split_rule: String,
    /// SFT rows per split.
    pub sft: SplitCounts,
    /// Preference pairs per split.
    pub preference: SplitCounts,
    /// Rows (SFT + preference) per domain and split.
    pub domains: BTreeMap<String, SplitCounts>,
    /// Rows per input kind.
    pub kinds: BTreeMap<String, usize>,
    /// Token statistics of SFT sequences (after truncation).
    pub sft_tokens: TokenStats,
    /// Token statistics of preference pairs (prompt + longer response).
    pub preference_tokens: TokenStats,
    /// Truncations and drops.
    pub drops: Drops,
    /// Files written, relative to the dataset folder.
    pub files: Vec<String>,
}

/// One prepared SFT row.
#[derive(Debug, Clone)]
struct SftRow {
    split: Split,
    row: Value,
    /// mlx-lm's prompt/completion form of the row, for prompt/completion
    /// examples (used when every conversation row has one).
    completion_row: Option<Value>,
    is_text: bool,
    tokens: Option<TokenizedExample>,
    len: usize,
    trained: usize,
    by_content: usize,
}

/// One prepared preference row.
#[derive(Debug, Clone)]
struct PairRow {
    split: Split,
    row: Value,
    tokens: Option<TokenizedPair>,
    len: usize,
    by_content: usize,
}

enum Outcome {
    Sft(SftRow, bool),
    Pair(PairRow, bool),
    Dropped(DropReason),
}

enum DropReason {
    TooLong,
    NoResponse,
    Failed(DropKind, String),
}

impl DropReason {
    fn of(e: Error) -> Self {
        match e {
            Error::Unmaskable(why) => DropReason::Failed(DropKind::Unmaskable, why),
            other => DropReason::Failed(DropKind::TemplateError, other.to_string()),
        }
    }
}

/// Everything prepared, in memory, before writing.
#[derive(Debug, Clone)]
pub struct Prepared {
    sft: Vec<SftRow>,
    pairs: Vec<PairRow>,
    manifest: Manifest,
}

impl Prepared {
    /// The manifest (its `files` is filled by [`Prepared::write`]).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The tokenised SFT examples of a split (empty without a tokenizer).
    pub fn sft_tokens(&self, split: Split) -> Vec<&TokenizedExample> {
        self.sft.iter().filter(|r| r.split == split).filter_map(|r| r.tokens.as_ref()).collect()
    }

    /// Ids per split, SFT and preference together.
    pub fn ids(&self, split: Split) -> Vec<&str> {
        let sft = self.sft.iter().filter(|r| r.split == split).map(|r| {
            r.tokens.as_ref().map(|t| t.id.as_str()).unwrap_or_else(|| r.row["id"].as_str().unwrap_or_default())
        });
        let pairs = self.pairs.iter().filter(|r| r.split == split).map(|r| {
            r.tokens.as_ref().map(|t| t.id.as_str()).unwrap_or_else(|| r.row["id"].as_str().unwrap_or_default())
        });
        sft.chain(pairs).collect()
    }

    /// Write the dataset folder: JSONL splits, token cache, manifest.
    ///
    /// Outputs of an earlier prep in the same folder are removed first (only
    /// the names prep writes), so that no stale split or cache survives.
    pub fn write(mut self, dir: &Path) -> Result<Manifest, Error> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        remove_previous_outputs(dir)?;
        let mut files = Vec::new();
        let has_chat = self.sft.iter().any(|r| !r.is_text);
        // Prompt/completion examples keep their form when they are the only
        // conversations and no system prompt must be carried.
        let completion_form = self.manifest.system_prompt.is_none()
            && self.sft.iter().filter(|r| !r.is_text).all(|r| r.completion_row.is_some());
        for split in Split::ALL {
            let rows = |text: bool| {
                self.sft.iter().filter(move |r| r.split == split && r.is_text == text).map(move |r| {
                    match (&r.completion_row, completion_form) {
                        (Some(c), true) => c,
                        _ => &r.row,
                    }
                })
            };
            if has_chat {
                files.extend(write_jsonl(dir, &format!("{split}.jsonl"), rows(false))?);
                if self.sft.iter().any(|r| r.is_text) {
                    files.extend(write_jsonl(dir, &format!("text/{split}.jsonl"), rows(true))?);
                }
            } else if !self.sft.is_empty() || self.pairs.is_empty() {
                files.extend(write_jsonl(dir, &format!("{split}.jsonl"), rows(true))?);
            }
            if !self.pairs.is_empty() {
                let prs = self.pairs.iter().filter(|r| r.split == split).map(|r| &r.row);
                files.extend(write_jsonl(dir, &format!("preference/{split}.jsonl"), prs)?);
            }
            let toks: Vec<TokenizedExample> =
                self.sft.iter().filter(|r| r.split == split).filter_map(|r| r.tokens.clone()).collect();
            if self.manifest.tokenizer_hash.is_some() {
                let p = cache::sft_cache_path(dir, split);
                cache::write_sft(&p, &toks)?;
                files.push(format!("cache/sft-{split}.bin"));
                if !self.pairs.is_empty() {
                    let prs: Vec<TokenizedPair> =
                        self.pairs.iter().filter(|r| r.split == split).filter_map(|r| r.tokens.clone()).collect();
                    cache::write_preference(&cache::preference_cache_path(dir, split), &prs)?;
                    files.push(format!("cache/preference-{split}.bin"));
                }
            }
        }
        files.push("manifest.json".into());
        self.manifest.files = files;
        let text = serde_json::to_string_pretty(&self.manifest).expect("manifest serialises");
        let path = dir.join("manifest.json");
        sam_home::atomic::write(&path, (text + "\n").as_bytes()).map_err(|e| io_err(&path, e))?;
        Ok(self.manifest)
    }
}

/// A dataset's `manifest.json`, read back, with the BLAKE3 of its bytes
/// (what records of a training run name the dataset by).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestFile {
    /// The manifest.
    pub manifest: Manifest,
    /// BLAKE3 of the file, 64 hex digits.
    pub hash: String,
}

/// Read the manifest of the dataset folder `dir`.
pub fn read_manifest(dir: &Path) -> Result<ManifestFile, Error> {
    let path = dir.join("manifest.json");
    let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
    let manifest = serde_json::from_slice(&bytes)
        .map_err(|e| io_err(&path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok(ManifestFile { manifest, hash: blake3::hash(&bytes).to_hex().to_string() })
}

fn remove_previous_outputs(dir: &Path) -> Result<(), Error> {
    let mut paths = vec![dir.join("manifest.json")];
    for split in Split::ALL {
        paths.push(dir.join(format!("{split}.jsonl")));
        paths.push(dir.join(format!("text/{split}.jsonl")));
        paths.push(dir.join(format!("preference/{split}.jsonl")));
        paths.push(cache::sft_cache_path(dir, split));
        paths.push(cache::preference_cache_path(dir, split));
    }
    for p in paths {
        if p.is_file() {
            fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        }
    }
    for sub in ["text", "preference", "cache"] {
        // Only when empty: anything else there is not prep's.
        let _ = fs::remove_dir(dir.join(sub));
    }
    Ok(())
}

/// Write rows to `dir/name`; with no rows, write nothing (and remove a stale
/// file): mlx-lm reads a file's form from its first row and fails on an
/// empty file, while it skips a missing one.
pub(crate) fn write_jsonl<'a>(
    dir: &Path,
    name: &str,
    rows: impl Iterator<Item = &'a Value>,
) -> Result<Option<String>, Error> {
    let path = dir.join(name);
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        if path.exists() {
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
        return Ok(None);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    sam_home::atomic::write_with(
        &path,
        |e| e,
        |w| {
            for row in rows {
                serde_json::to_writer(&mut *w, row)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        },
    )
    .map_err(|e| io_err(&path, e))?;
    Ok(Some(name.to_string()))
}

/// Prepares examples for one model.
///
/// ```no_run
/// use sam_prep::prepare::{Preparer, PrepConfig, read_inputs};
/// let model = sam_models::BaseModel::open(sam_models::default_test_model())?;
/// let prep = Preparer::new(&model, PrepConfig::default())?;
/// let input = read_inputs(&["export.jsonl".into()])?;
/// let manifest = prep.prepare(&input, |_| {})?.write("datasets/d1".as_ref())?;
/// println!("{} training rows", manifest.sft.train);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Preparer<'m> {
    template: ChatTemplate,
    builtin_template: bool,
    tokenizer: Option<&'m Tokenizer>,
    fast: Option<FastBpe<'m>>,
    tokenizer_hash: Option<String>,
    eot: Option<String>,
    stops: Vec<String>,
    model_info: Value,
    model_fingerprint: String,
    pad_id: u32,
    cfg: PrepConfig,
}

impl<'m> Preparer<'m> {
    /// A preparer for `model` (its template, tokenizer and end-of-turn token).
    pub fn new(model: &'m BaseModel, cfg: PrepConfig) -> Result<Self, Error> {
        let (template, builtin_template) = ChatTemplate::for_model(model)?;
        let tokenizer = model.tokenizer();
        if tokenizer.is_none() {
            tracing::warn!(
                "model {} has no tokenizer: estimating ~4 characters per token; no token cache will be written",
                model.name()
            );
        }
        let eot = match (&model.special_tokens().end_of_turn, builtin_template) {
            (_, true) => Some("<|im_end|>".to_string()),
            (Some(t), false) => Some(t.text.clone()),
            (None, false) => None,
        };
        let stops = crate::encode::stop_texts(model);
        let tokenizer_hash = tokenizer.map(|t| {
            let json = t.to_string(false).unwrap_or_default();
            blake3::hash(json.as_bytes()).to_hex().to_string()
        });
        Ok(Self {
            template,
            builtin_template,
            tokenizer,
            fast: tokenizer.and_then(FastBpe::new),
            tokenizer_hash,
            eot,
            stops,
            model_info: json!({
                "name": model.name(),
                "path": model.source().path(),
            }),
            model_fingerprint: model.fingerprint()?,
            pad_id: model.special_tokens().pad_id(),
            cfg,
        })
    }

    /// Prepare all examples in memory; `progress(n)` is called as examples
    /// are done (from worker threads).
    pub fn prepare(&self, input: &Input, progress: impl Fn(usize) + Sync) -> Result<Prepared, Error> {
        let mut drops = Drops { bad_rows: input.sources.iter().map(|s| s.bad_rows).sum(), ..Drops::default() };
        let mut seen = HashSet::new();
        let mut todo: Vec<&Example> = Vec::with_capacity(input.examples.len());
        for ex in &input.examples {
            if seen.insert(ex.id.as_str()) {
                todo.push(ex);
            } else {
                drops.duplicate_ids += 1;
            }
        }
        let threads = self.cfg.threads.max(1).min(todo.len().max(1));
        let chunk = todo.len().div_ceil(threads).max(1);
        let results: Vec<Vec<Outcome>> = std::thread::scope(|s| {
            let handles: Vec<_> = todo
                .chunks(chunk)
                .map(|part| {
                    let progress = &progress;
                    s.spawn(move || {
                        part.iter()
                            .map(|ex| {
                                let o = self.one(ex);
                                progress(1);
                                o
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("prep worker panicked")).collect()
        });

        let mut sft = Vec::new();
        let mut pairs = Vec::new();
        let mut domains: BTreeMap<String, SplitCounts> = BTreeMap::new();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let (mut sft_counts, mut pref_counts) = (SplitCounts::default(), SplitCounts::default());
        let mut causes: BTreeMap<(DropKind, String), DropCause> = BTreeMap::new();
        let mut spans_by_content = 0;
        for (ex, outcome) in todo.iter().zip(results.into_iter().flatten()) {
            *kinds.entry(ex.kind().as_str().to_string()).or_default() += 1;
            let domain = if ex.domain.is_empty() { "unknown".to_string() } else { ex.domain.clone() };
            match outcome {
                Outcome::Sft(row, truncated) => {
                    drops.truncated += usize::from(truncated);
                    spans_by_content += row.by_content;
                    sft_counts.add(row.split);
                    domains.entry(domain).or_default().add(row.split);
                    sft.push(row);
                }
                Outcome::Pair(row, truncated) => {
                    drops.truncated += usize::from(truncated);
                    spans_by_content += row.by_content;
                    pref_counts.add(row.split);
                    domains.entry(domain).or_default().add(row.split);
                    pairs.push(row);
                }
                Outcome::Dropped(DropReason::TooLong) => drops.dropped_too_long += 1,
                Outcome::Dropped(DropReason::NoResponse) => drops.dropped_no_response += 1,
                Outcome::Dropped(DropReason::Failed(kind, reason)) => {
                    match kind {
                        DropKind::TemplateError => drops.dropped_template_error += 1,
                        DropKind::Unmaskable => drops.dropped_unmaskable += 1,
                    }
                    causes
                        .entry((kind, reason))
                        .or_insert_with_key(|(kind, reason)| DropCause {
                            kind: *kind,
                            reason: reason.clone(),
                            count: 0,
                            first_id: ex.id.clone(),
                        })
                        .count += 1;
                }
            }
        }
        drops.errors = causes.into_values().collect();
        drops.errors.sort_by_key(|c| std::cmp::Reverse(c.count));
        let sft_tokens =
            TokenStats::from_lengths(sft.iter().map(|r| r.len).collect(), sft.iter().map(|r| r.trained).sum());
        let preference_tokens = TokenStats::from_lengths(pairs.iter().map(|r| r.len).collect(), 0);
        let tokenizer_hash = self.tokenizer_hash.clone();
        let manifest = Manifest {
            version: 1,
            created_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            sources: input.sources.clone(),
            model: self.model_info.clone(),
            model_fingerprint: self.model_fingerprint.clone(),
            pad_id: self.pad_id,
            tokenizer: if self.tokenizer.is_some() { "model".into() } else { "estimate-4-chars-per-token".into() },
            tokenizer_hash,
            template: if self.builtin_template { "builtin-chatml".into() } else { "model".into() },
            template_hash: self.template.hash(),
            template_family: self.template.family().map(str::to_string),
            span_method: if self.template.has_generation_markers() {
                SpanMethod::GenerationMarkers
            } else {
                SpanMethod::Inferred
            },
            spans_by_content,
            end_of_turn: self.eot.clone(),
            system_prompt: self.cfg.system_prompt.clone(),
            max_seq_len: self.cfg.max_seq_len,
            truncation_policy: TRUNCATION_POLICY.into(),
            split_ratios: self.cfg.split,
            split_rule: SPLIT_RULE.into(),
            sft: sft_counts,
            preference: pref_counts,
            domains,
            kinds,
            sft_tokens,
            preference_tokens,
            drops,
            files: Vec::new(),
        };
        Ok(Prepared { sft, pairs, manifest })
    }

    fn encoder<'s>(&'s self, tk: &'s Tokenizer) -> Encoder<'s> {
        let enc = Encoder::new(&self.template, tk, self.eot.clone()).with_stop_texts(self.stops.iter().cloned());
        match &self.fast {
            Some(f) => enc.with_fast(f),
            None => enc,
        }
    }

    fn with_system(&self, mut msgs: Vec<Message>) -> Vec<Message> {
        if let Some(sys) = &self.cfg.system_prompt
            && msgs.first().is_none_or(|m| m.role != Role::System)
        {
            msgs.insert(0, Message::system(sys.clone()));
        }
        msgs
    }

    fn one(&self, ex: &Example) -> Outcome {
        let split = self.cfg.split.split_of(&ex.id);
        let meta = |mut row: Value| {
            row["id"] = json!(ex.id);
            if !ex.domain.is_empty() {
                row["domain"] = json!(ex.domain);
            }
            row
        };
        match &ex.content {
            Content::Instruction { .. } | Content::Chat { .. } | Content::PromptCompletion { .. } => {
                let msgs = match &ex.content {
                    Content::PromptCompletion { prompt, completion } => {
                        vec![Message::user(prompt.clone()), Message::assistant(completion.clone())]
                    }
                    c => c.to_messages().unwrap_or_default(),
                };
                if !msgs.iter().any(|m| m.role == Role::Assistant) {
                    return Outcome::Dropped(DropReason::NoResponse);
                }
                let msgs = self.with_system(msgs);
                let row = meta(json!({ "messages": msgs }));
                match (self.sft_chat(ex, split, &msgs, row), &ex.content) {
                    (Outcome::Sft(mut r, t), Content::PromptCompletion { prompt, completion }) => {
                        r.completion_row = Some(meta(json!({ "prompt": prompt, "completion": completion })));
                        Outcome::Sft(r, t)
                    }
                    (o, _) => o,
                }
            }
            Content::Completion { text } => {
                if text.trim().is_empty() {
                    return Outcome::Dropped(DropReason::NoResponse);
                }
                let row = meta(json!({ "text": text }));
                self.sft_text(ex, split, text, row)
            }
            Content::Preference { prompt, chosen, rejected } => {
                let msgs = self.with_system(prompt.to_messages());
                let prompt_value = match (prompt, &self.cfg.system_prompt) {
                    (Prompt::Text(t), None) => json!(t),
                    _ => json!(msgs),
                };
                let row = meta(json!({
                    "prompt": prompt_value,
                    "chosen": chosen,
                    "rejected": rejected,
                }));
                self.pair(ex, split, &msgs, chosen, rejected, row)
            }
        }
    }

    fn sft_chat(&self, ex: &Example, split: Split, msgs: &[Message], row: Value) -> Outcome {
        let max = self.cfg.max_seq_len;
        let Some(tk) = self.tokenizer else {
            let text = match self.template.render(msgs, false) {
                Ok(v) => v,
                Err(e) => return Outcome::Dropped(DropReason::of(e)),
            };
            let len = estimate_tokens(&text);
            let resp: usize =
                msgs.iter().rev().find(|m| m.role == Role::Assistant).map_or(0, |m| estimate_tokens(&m.content) + 1);
            if resp > max {
                return Outcome::Dropped(DropReason::TooLong);
            }
            let trained =
                msgs.iter().filter(|m| m.role == Role::Assistant).map(|m| estimate_tokens(&m.content) + 1).sum();
            return Outcome::Sft(
                SftRow {
                    split,
                    row,
                    completion_row: None,
                    is_text: false,
                    tokens: None,
                    len: len.min(max),
                    trained,
                    by_content: 0,
                },
                len > max,
            );
        };
        let enc = self.encoder(tk);
        let mut e = match enc.encode_chat(msgs) {
            Ok(v) => v,
            Err(e) => return Outcome::Dropped(DropReason::of(e)),
        };
        let mut truncated = false;
        if e.ids.len() > max {
            let resp = e.ids.len() - e.response_start;
            if resp > max {
                return Outcome::Dropped(DropReason::TooLong);
            }
            let head = max - resp;
            e.ids.drain(head..e.response_start);
            e.mask.drain(head..e.response_start);
            truncated = true;
        }
        let trained = e.mask.iter().filter(|m| **m).count();
        Outcome::Sft(
            SftRow {
                split,
                row,
                completion_row: None,
                is_text: false,
                len: e.ids.len(),
                trained,
                by_content: e.by_content,
                tokens: Some(TokenizedExample {
                    id: ex.id.clone(),
                    domain: ex.domain.clone(),
                    input_ids: e.ids,
                    loss_mask: e.mask,
                }),
            },
            truncated,
        )
    }

    fn sft_text(&self, ex: &Example, split: Split, text: &str, row: Value) -> Outcome {
        let max = self.cfg.max_seq_len;
        let (tokens, len) = match self.tokenizer {
            None => (None, estimate_tokens(text)),
            Some(tk) => {
                let enc = self.encoder(tk);
                let mut e = match enc.encode_text(text) {
                    Ok(v) => v,
                    Err(e) => return Outcome::Dropped(DropReason::of(e)),
                };
                let n = e.ids.len();
                e.ids.truncate(max);
                e.mask.truncate(max);
                (
                    Some(TokenizedExample {
                        id: ex.id.clone(),
                        domain: ex.domain.clone(),
                        input_ids: e.ids,
                        loss_mask: e.mask,
                    }),
                    n,
                )
            }
        };
        Outcome::Sft(
            SftRow {
                split,
                row,
                completion_row: None,
                is_text: true,
                tokens,
                len: len.min(max),
                trained: len.min(max),
                by_content: 0,
            },
            len > max,
        )
    }

    fn pair(
        &self,
        ex: &Example,
        split: Split,
        prompt: &[Message],
        chosen: &str,
        rejected: &str,
        row: Value,
    ) -> Outcome {
        let max = self.cfg.max_seq_len;
        let Some(tk) = self.tokenizer else {
            let p = match self.template.render(prompt, true) {
                Ok(v) => v,
                Err(e) => return Outcome::Dropped(DropReason::of(e)),
            };
            let longer = estimate_tokens(chosen).max(estimate_tokens(rejected)) + 1;
            if longer >= max {
                return Outcome::Dropped(DropReason::TooLong);
            }
            let len = estimate_tokens(&p) + longer;
            return Outcome::Pair(PairRow { split, row, tokens: None, len: len.min(max), by_content: 0 }, len > max);
        };
        let enc = self.encoder(tk);
        let mut p = match enc.encode_pair(prompt, chosen, rejected) {
            Ok(v) => v,
            Err(e) => return Outcome::Dropped(DropReason::of(e)),
        };
        let longer = p.chosen.len().max(p.rejected.len());
        if longer >= max {
            return Outcome::Dropped(DropReason::TooLong);
        }
        let mut truncated = false;
        if p.prompt.len() + longer > max {
            let keep = max - longer;
            p.prompt.drain(..p.prompt.len() - keep);
            truncated = true;
        }
        Outcome::Pair(
            PairRow {
                split,
                row,
                len: p.prompt.len() + longer,
                by_content: p.by_content,
                tokens: Some(TokenizedPair {
                    id: ex.id.clone(),
                    domain: ex.domain.clone(),
                    prompt_ids: p.prompt,
                    chosen_ids: p.chosen,
                    rejected_ids: p.rejected,
                }),
            },
            truncated,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_nearest_rank() {
        let s = TokenStats::from_lengths((1..=100).collect(), 7);
        assert_eq!((s.count, s.p50, s.p95, s.max, s.trained), (100, 50, 95, 100, 7));
        assert_eq!(s.mean, 50.5);
        assert_eq!(TokenStats::from_lengths(vec![], 0), TokenStats::default());
    }
}
