//! `sam.toml`: the configuration file under SAM_HOME, as one typed
//! [`Config`] with a section per component.
//!
//! The sections are this crate's own plain serde structs, so that every
//! crate can read the file without depending on the others; the pipeline and
//! the CLI turn a section into its component's configuration. Every
//! default is written out by [`Config::default_file`] (what `sam init`
//! writes), each key with a comment; an unknown key is an error that names
//! it.
//!
//! To add a key: add the field (with its default) to its section's struct and
//! a [`Key`] to that section in `SECTIONS`. A test fails while a key has no
//! comment. To add a section: a struct, a field of [`Config`], and an entry
//! in `SECTIONS`.
//!
//! ```
//! let cfg: sam_home::Config = toml::from_str("[train]\nsteps = 64\n")?;
//! assert_eq!(cfg.train.steps, 64);
//! assert_eq!(cfg.train.rank, 8); // the other keys keep their defaults
//! let err = toml::from_str::<sam_home::Config>("[train]\nstepz = 64\n").unwrap_err();
//! assert!(err.to_string().contains("stepz"));
//! # Ok::<(), toml::de::Error>(())
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration: one section per component.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[store]`: the store, its quality checks and near-duplicate detection.
    pub store: StoreSection,
    /// `[capture]`: live capture, redaction and the routing table.
    pub capture: CaptureSection,
    /// `[prep]`: dataset preparation in the pipeline.
    pub prep: PrepSection,
    /// `[train]`: training in the pipeline (SFT, then DPO).
    pub train: TrainSection,
    /// `[pipeline]`: what the pipeline mines, exports and evaluates.
    pub pipeline: PipelineSection,
    /// `[deploy]`: the adapter registry and its gate.
    pub deploy: DeploySection,
    /// `[schedule]`: the scheduler daemon.
    pub schedule: ScheduleSection,
    /// `[serve]`: the HTTP server.
    pub serve: ServeSection,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// How long a writer waits for another process's write lock, in ms.
    pub busy_timeout_ms: u64,
    /// SQLite page cache per connection, in MiB.
    pub cache_mib: u64,
    /// Examples per write transaction when ingesting files.
    pub batch_size: usize,
    /// `[store.quality]`: the quality checks that score examples into tiers.
    pub quality: QualitySection,
    /// `[store.near_dup]`: near-duplicate detection.
    pub near_dup: NearDupSection,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            busy_timeout_ms: 30_000,
            cache_mib: 64,
            batch_size: 50_000,
            quality: QualitySection::default(),
            near_dup: NearDupSection::default(),
        }
    }
}

/// `[store.quality]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualitySection {
    /// A response shorter than this (characters) is too short.
    pub min_response_chars: usize,
    /// An example longer than this (all fields, characters) is too long.
    pub max_total_chars: usize,
    /// Largest share of a response's lines that may repeat an earlier line.
    pub max_duplicate_line_fraction: f64,
    /// Largest share of a response's text its most frequent 2-, 3- and
    /// 4-word sequence may cover.
    pub max_top_ngram_fraction: [f64; 3],
}

impl Default for QualitySection {
    fn default() -> Self {
        Self {
            min_response_chars: 2,
            max_total_chars: 32_000,
            max_duplicate_line_fraction: 0.3,
            max_top_ngram_fraction: [0.20, 0.18, 0.16],
        }
    }
}

/// `[store.near_dup]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NearDupSection {
    /// Estimated Jaccard similarity from which two examples are near-duplicates.
    pub threshold: f64,
    /// Words per shingle.
    pub shingle: usize,
    /// LSH bands.
    pub bands: usize,
    /// Signature values per band.
    pub rows: usize,
    /// Seed of the hash functions.
    pub seed: u64,
    /// Threads computing signatures (0: all cores).
    pub threads: usize,
}

impl Default for NearDupSection {
    fn default() -> Self {
        Self { threshold: 0.8, shingle: 3, bands: 16, rows: 8, seed: 0x5a3_d0d0, threads: 0 }
    }
}

/// `[capture]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSection {
    /// Captures are written to the store in batches of this many.
    pub max_batch: usize,
    /// ...or when the oldest buffered capture is this old, in ms.
    pub max_age_ms: u64,
    /// Where captures wait when the store cannot be written (relative paths
    /// are under SAM_HOME); `None`: [`crate::SamHome::capture_spool`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<PathBuf>,
    /// An escalation with a local attempt becomes a preference pair.
    pub escalation_as_preference: bool,
    /// How long capture waits for another process's write lock before it
    /// spools instead, in ms.
    pub busy_timeout_ms: u64,
    /// `[capture.redaction]`: PII and secret redaction.
    pub redaction: RedactionSection,
    /// `[capture.routing]`: which model handles which task.
    pub routing: RoutingSection,
}

impl Default for CaptureSection {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_age_ms: 5_000,
            spool: None,
            escalation_as_preference: true,
            busy_timeout_ms: 2_000,
            redaction: RedactionSection::default(),
            routing: RoutingSection::default(),
        }
    }
}

/// `[capture.redaction]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactionSection {
    /// Kinds not to look for, by name (`ipv4`, `email`, ...).
    pub disabled: Vec<String>,
    /// Bits per character above which a random-looking string is a secret.
    pub entropy_threshold: f64,
    /// Shortest random-looking string that counts as a secret.
    pub entropy_min_len: usize,
    /// Exact strings never redacted.
    pub allow: Vec<String>,
    /// Regular expressions: a finding whose whole value matches one is kept.
    pub allow_patterns: Vec<String>,
    /// Sources whose examples are stored unredacted (exact names, or a
    /// prefix ending in `*`).
    pub allow_sources: Vec<String>,
    /// User names in home paths that name nobody.
    pub generic_users: Vec<String>,
}

impl Default for RedactionSection {
    fn default() -> Self {
        Self {
            disabled: Vec::new(),
            entropy_threshold: 3.5,
            entropy_min_len: 20,
            allow: Vec::new(),
            allow_patterns: Vec::new(),
            allow_sources: Vec::new(),
            generic_users: [
                "user",
                "username",
                "runner",
                "ubuntu",
                "root",
                "admin",
                "administrator",
                "shared",
                "public",
                "default",
                "guest",
                "me",
                "you",
                "your-name",
                "yourname",
                "your_name",
                "yourusername",
                "name",
                "ec2-user",
                "vagrant",
                "travis",
                "circleci",
                "jenkins",
                "git",
                "docker",
                "node",
                "app",
                "www-data",
                "all users",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

/// `[capture.routing]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSection {
    /// The routes, in order; empty: the built-in table.
    pub routes: Vec<Route>,
}

/// One `[[capture.routing.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The task (`code completion`, ...).
    pub task: String,
    /// The model that handles it (`local`, `remote`, or a name).
    pub model: String,
    /// Why.
    pub reason: String,
    /// Sample prompts of the task.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// `[prep]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrepSection {
    /// Longest sequence in tokens (prep cuts to it; training uses the same).
    pub max_seq_len: usize,
    /// Train/valid/test proportions, as `sam prep --split` takes them.
    pub split: String,
    /// System prompt put first in every conversation that has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Worker threads (0: all cores).
    pub threads: usize,
}

impl Default for PrepSection {
    fn default() -> Self {
        Self { max_seq_len: 256, split: "90,5,5".into(), system_prompt: None, threads: 0 }
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// Adapted modules (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub targets: Vec<String>,
    /// Peak learning rate of SFT.
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// SFT optimiser steps.
    pub steps: usize,
    /// A checkpoint every this many steps (0: every quarter of the run).
    pub save_every: usize,
    /// Recompute every Nth adapted decoder layer in the backward pass
    /// instead of keeping its activations (0: keep all, fastest; 1: least
    /// memory). Unset: `sam run` picks the fastest setting whose estimated
    /// peak fits the memory available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recompute_every: Option<usize>,
    /// The old name of `recompute_every`, still read; see
    /// [`Config::deprecated_keys`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// DPO steps on the preference pairs after SFT (0: no DPO).
    pub dpo_steps: usize,
    /// Peak learning rate of DPO.
    pub dpo_lr: f64,
    /// DPO's β.
    pub dpo_beta: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: ["q", "k", "v", "o"].into_iter().map(String::from).collect(),
            lr: 1e-3,
            warmup_steps: 3,
            batch_size: 1,
            grad_accum: 2,
            steps: 32,
            save_every: 0,
            recompute_every: None,
            checkpoint_every: None,
            dpo_steps: 8,
            dpo_lr: 5e-4,
            dpo_beta: 0.1,
        }
    }
}

impl TrainSection {
    /// The recomputation setting: `recompute_every`, else the old
    /// `checkpoint_every`; `None` when neither is set (choose from the
    /// memory available).
    pub fn recompute(&self) -> Option<usize> {
        self.recompute_every.or(self.checkpoint_every)
    }
}

/// A key the file uses under an old name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeprecatedKey {
    /// Its section, `train` say.
    pub section: &'static str,
    /// The old name, which is still read.
    pub old: &'static str,
    /// The name to use instead.
    pub new: &'static str,
    /// Whether the new name is set too (then it wins).
    pub both_set: bool,
}

/// `[pipeline]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    /// Feed the sample captures shipped with sam (`sam run`).
    pub sample_captures: bool,
    /// Tiers exported for training.
    pub export_tiers: Vec<String>,
    /// Remove near-duplicates in the clean stage (else exact duplicates only).
    pub near_dup: bool,
    /// Validate on at most this many validation examples during training.
    pub max_valid_examples: usize,
    /// Score at most this many test examples in the evaluate stage (and in the gate).
    pub max_eval_examples: usize,
    /// After evaluation, register the adapter, judge it with the gate and
    /// roll it out (`[deploy] rollout`); false stops after evaluation.
    pub deploy: bool,
    /// The fewest held-out test examples an adapter is gated on; with fewer
    /// the run trains and evaluates it, and registers and gates nothing.
    pub min_test_examples: usize,
}

impl Default for PipelineSection {
    fn default() -> Self {
        Self {
            sample_captures: true,
            export_tiers: ["gold", "silver", "bronze"].into_iter().map(String::from).collect(),
            near_dup: true,
            max_valid_examples: 16,
            max_eval_examples: 32,
            deploy: true,
            min_test_examples: 2,
        }
    }
}

/// `[deploy]`: the adapter registry, its gate and canaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploySection {
    /// The slot commands use when none is named.
    pub default_slot: String,
    /// Examples are cut to this many tokens when the gate scores them.
    pub max_seq_len: usize,
    /// What the pipeline does with an adapter the gate passes.
    pub rollout: Rollout,
    /// `[deploy.gate]`: the gate's thresholds.
    pub gate: GateSection,
    /// `[deploy.canary]`: when a canary is decided.
    pub canary: CanarySection,
}

impl Default for DeploySection {
    fn default() -> Self {
        Self {
            default_slot: "default".into(),
            max_seq_len: 1024,
            rollout: Rollout::Promote,
            gate: GateSection::default(),
            canary: CanarySection::default(),
        }
    }
}

/// `[deploy] rollout`: what the pipeline does with an adapter the gate passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollout {
    /// Put it into production.
    Promote,
    /// Start a canary at `[deploy.canary] percent`.
    Canary,
}

/// `[deploy.gate]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateSection {
    /// Relative test-loss improvement over production needed to promote.
    pub margin: f64,
    /// Relative golden-set loss increase tolerated.
    pub golden_tolerance: f64,
    /// Share of held-out preference pairs the candidate must win.
    pub min_win_rate: f64,
    /// Prompts of the generation check.
    pub prompts: Vec<String>,
    /// Most tokens per generated answer.
    pub max_new_tokens: usize,
    /// Most share of repeated 4-token sequences in an answer.
    pub max_repeated: f64,
    /// Highest base-model loss (nats per token) of an answer.
    pub max_answer_loss: f64,
}

impl Default for GateSection {
    fn default() -> Self {
        Self {
            margin: 0.01,
            golden_tolerance: 0.02,
            min_win_rate: 0.5,
            prompts: vec![
                "What does `git status` show?".into(),
                "Write a Python function that returns the sum of a list.".into(),
                "What is a unit test?".into(),
            ],
            max_new_tokens: 32,
            max_repeated: 0.5,
            max_answer_loss: 3.0,
        }
    }
}

/// `[deploy.canary]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanarySection {
    /// Traffic share of a new canary, in percent.
    pub percent: f64,
    /// Judgements each side needs before a decision.
    pub min_judgements: u64,
    /// Promote when the canary's good rate is at least production's minus this.
    pub tolerance: f64,
    /// Roll back when the canary's good rate is below production's by more than this.
    pub rollback_margin: f64,
}

impl Default for CanarySection {
    fn default() -> Self {
        Self { percent: 10.0, min_judgements: 20, tolerance: 0.05, rollback_margin: 0.10 }
    }
}

/// `[schedule]`: the scheduler daemon's jobs, intervals and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSection {
    /// Git repositories the mining job (and the trigger's pipeline) mines.
    pub repos: Vec<PathBuf>,
    /// Folders (not git repositories) whose docs and code the mining job mines.
    pub folders: Vec<PathBuf>,
    /// The base model the training trigger trains (unset: the test model).
    pub model: Option<PathBuf>,
    /// Seconds between mining runs (0: off).
    pub mine_every_secs: u64,
    /// Seconds between deduplication runs (0: off).
    pub dedup_every_secs: u64,
    /// Seconds between validation runs (0: off).
    pub validate_every_secs: u64,
    /// Seconds between exports (0: off).
    pub export_every_secs: u64,
    /// Seconds between checks of the training trigger (0: off).
    pub train_check_every_secs: u64,
    /// Eligible examples no training run has seen that start a training.
    pub train_threshold: u64,
    /// Up to this many seconds are added to each start.
    pub randomized_delay_secs: u64,
    /// First retry after a failure, in seconds; doubled per further failure.
    pub retry_base_secs: u64,
    /// Longest wait between retries, in seconds.
    pub retry_max_secs: u64,
    /// A job deferred for lack of memory is looked at again after this many seconds.
    pub defer_secs: u64,
    /// A job found due this many seconds late counts as missed.
    pub missed_after_secs: u64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            repos: Vec::new(),
            folders: Vec::new(),
            model: None,
            mine_every_secs: 6 * 3600,
            dedup_every_secs: 24 * 3600,
            validate_every_secs: 12 * 3600,
            export_every_secs: 24 * 3600,
            train_check_every_secs: 300,
            train_threshold: 100,
            randomized_delay_secs: 300,
            retry_base_secs: 60,
            retry_max_secs: 6 * 3600,
            defer_secs: 600,
            missed_after_secs: 120,
        }
    }
}

/// `[serve]`: the HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSection {
    /// The IP address to listen on.
    pub bind: String,
    /// The port (0: any free port).
    pub port: u16,
    /// Bodies over this many bytes are refused with 413.
    pub max_body_bytes: usize,
    /// How long the statistics are cached, in seconds.
    pub stats_cache_s: u64,
    /// How often a live event stream looks for new lines, in milliseconds.
    pub sse_poll_ms: u64,
}

impl Default for ServeSection {
    fn default() -> Self {
        Self { bind: "127.0.0.1".into(), port: 8765, max_body_bytes: 1 << 20, stats_cache_s: 300, sse_poll_ms: 500 }
    }
}

/// One key of a section as `sam init` writes it.
pub struct Key {
    /// The key.
    pub name: &'static str,
    /// Its comment (lines).
    pub doc: &'static str,
    /// For a key unset by default: an example value, written commented out.
    pub unset_example: Option<&'static str>,
}

/// One section of the file as `sam init` writes it.
pub struct Section {
    /// Its dotted name (`store.quality`).
    pub name: &'static str,
    /// What it is for.
    pub about: &'static str,
    /// Its keys.
    pub keys: &'static [Key],
}

const fn key(name: &'static str, doc: &'static str) -> Key {
    Key { name, doc, unset_example: None }
}

/// Every section with its comments, in the order of the file.
pub const SECTIONS: &[Section] = &[
    Section {
        name: "store",
        about: "The store (store.db, SQLite).",
        keys: &[
            key(
                "busy_timeout_ms",
                "How long a writer waits for another sam process to finish writing, in milliseconds.",
            ),
            key("cache_mib", "SQLite page cache in MiB; more keeps large ingests fast."),
            key(
                "batch_size",
                "Examples per transaction in `sam ingest`: a crash keeps every committed batch whole\n\
                 and leaves no trace of the one in flight.",
            ),
        ],
    },
    Section {
        name: "store.quality",
        about: "Quality checks: how `sam validate` (and capture) scores examples into tiers\n\
                (gold >= 0.8, silver >= 0.6, bronze >= 0.4, else unverified).",
        keys: &[
            key("min_response_chars", "A response shorter than this (in characters) loses 0.5."),
            key("max_total_chars", "An example longer than this (all fields, in characters) loses 0.5."),
            key(
                "max_duplicate_line_fraction",
                "Most of a response's lines that may repeat an earlier line before it loses 0.5.",
            ),
            key(
                "max_top_ngram_fraction",
                "Most of a response's text that its most frequent 2-, 3- and 4-word\n\
                 sequence may cover before it loses 0.4.",
            ),
        ],
    },
    Section {
        name: "store.near_dup",
        about: "Near-duplicate detection (`sam dedup --near`, and the pipeline's clean stage): MinHash\n\
                signatures of word shingles, LSH banding to find candidates, then the Jaccard estimate decides.",
        keys: &[
            key("threshold", "Estimated Jaccard similarity from which two examples are near-duplicates."),
            key("shingle", "Words per shingle."),
            key("bands", "LSH bands; more bands find less similar pairs (and cost more)."),
            key("rows", "Signature values per band (the signature has bands x rows values)."),
            key("seed", "Seed of the hash functions: fixed, so results are reproducible."),
            key("threads", "Threads that compute signatures (0: all cores)."),
        ],
    },
    Section {
        name: "capture",
        about: "Live capture (`sam capture`, and the assistant's capture API).",
        keys: &[
            key("max_batch", "Captures are written to the store in batches of this many."),
            key("max_age_ms", "...or when the oldest buffered capture is this old, in milliseconds."),
            Key {
                name: "spool",
                doc: "Where captures wait when the store cannot be written (relative to SAM_HOME);\n\
                      unset: capture-spool.jsonl. The next capture drains it into the store.",
                unset_example: Some("\"capture-spool.jsonl\""),
            },
            key(
                "escalation_as_preference",
                "An escalation with a local attempt becomes a preference pair (chosen = remote,\n\
                 rejected = local) rather than a chat example of the remote answer.",
            ),
            key(
                "busy_timeout_ms",
                "How long `sam capture` waits for another process's write lock before it spools\n\
                 instead, in milliseconds.",
            ),
        ],
    },
    Section {
        name: "capture.redaction",
        about: "PII and secret redaction: applied to every collected or captured example\n\
                before it is stored (`sam redact` shows what it does).",
        keys: &[
            key(
                "disabled",
                "Kinds not to look for, e.g. [\"ipv4\"] (email, phone, ssn, credit_card, ipv4, ipv6,\n\
                 iban, aws_key, github_token, jwt, password, secret, high_entropy, home_path, ...;\n\
                 `sam redact --explain` names the kind of each finding).",
            ),
            key("entropy_threshold", "Bits per character above which a random-looking string is a secret."),
            key("entropy_min_len", "Shortest random-looking string that counts as a secret."),
            key("allow", "Literal values never redacted (a public test email, a known-safe token)."),
            key(
                "allow_patterns",
                "Regular expressions: a finding whose whole value matches one is kept,\n\
                 e.g. [\"10\\\\.1\\\\.\\\\d+\\\\.\\\\d+\"] for a lab's own addresses.",
            ),
            key(
                "allow_sources",
                "Sources whose examples are stored unredacted because you vouch for them:\n\
                 exact names (\"file:vetted.jsonl\") or a prefix ending in * (\"file:*\").",
            ),
            key("generic_users", "User names in home paths that name nobody (kept as they are)."),
        ],
    },
    Section {
        name: "capture.routing",
        about: "Which model handles which task (`sam collect routing`). Each route is\n\
                [[capture.routing.routes]] with task, model, reason and examples (sample prompts).",
        keys: &[key("routes", "Empty: the built-in table (local for narrow tasks, remote for broad ones).")],
    },
    Section {
        name: "prep",
        about: "Dataset preparation in the pipeline (`sam run`): the base model's chat template,\n\
                tokenizer, truncation and a stable split.",
        keys: &[
            key("max_seq_len", "Longest sequence in tokens: longer examples are cut (training uses the same)."),
            key("split", "Train/valid/test proportions."),
            Key {
                name: "system_prompt",
                doc: "System prompt put first in every conversation that has none (unset: none).",
                unset_example: Some("\"You are a concise coding assistant.\""),
            },
            key("threads", "Worker threads (0: all cores)."),
        ],
    },
    Section {
        name: "train",
        about: "Training in the pipeline (`sam run`): LoRA SFT on the training split, then DPO on\n\
                the preference pairs starting from (and measured against) the SFT adapter.",
        keys: &[
            key("rank", "LoRA rank."),
            key("alpha", "LoRA alpha (the update is scaled by alpha / rank)."),
            key("targets", "Adapted modules: q, k, v, o, gate, up, down."),
            key("lr", "Peak learning rate of SFT."),
            key("warmup_steps", "Warmup steps before the peak learning rate."),
            key("batch_size", "Sequences per micro-batch."),
            key("grad_accum", "Micro-batches per optimiser step."),
            key("steps", "SFT optimiser steps."),
            key("save_every", "A checkpoint every this many steps (0: every quarter of the run)."),
            Key {
                name: "recompute_every",
                doc: "Recompute every Nth adapted layer in the backward pass instead of keeping its\n\
                      activations: 0 keeps all (fastest), 1 needs the least memory (about a third more\n\
                      compute), 2 is in between. Unset: `sam run` estimates the step's peak memory and\n\
                      picks the fastest setting that fits the memory available, with a margin.\n\
                      (The old name, checkpoint_every, is still read.)",
                unset_example: Some("2"),
            },
            key("dpo_steps", "DPO steps on the preference pairs after SFT (0: no DPO)."),
            key("dpo_lr", "Peak learning rate of DPO."),
            key("dpo_beta", "DPO's beta: how far the adapter may move from the reference."),
        ],
    },
    Section {
        name: "pipeline",
        about: "The pipeline (`sam run`, and the scheduler's runs): mine, clean, export, prep,\n\
                train, evaluate, report, then register, gate and promote (or canary).",
        keys: &[
            key("sample_captures", "Feed the sample captures shipped with sam (`sam run`)."),
            key("export_tiers", "Tiers exported for training (gold, silver, bronze, unverified)."),
            key("near_dup", "Remove near-duplicates in the clean stage (false: exact duplicates only)."),
            key("max_valid_examples", "Validate on at most this many validation examples during training."),
            key(
                "max_eval_examples",
                "Score base and adapter on at most this many held-out test examples (the gate too).",
            ),
            key(
                "deploy",
                "After evaluation: register the adapter, gate it against production and roll it out\n\
                 ([deploy] rollout); false stops after evaluation (`sam run --no-deploy`).",
            ),
            key(
                "min_test_examples",
                "The fewest held-out test examples an adapter is gated on. With fewer (a small store),\n\
                 the run trains and evaluates, and registers nothing: capture more, or give [prep] split\n\
                 a larger test share.",
            ),
        ],
    },
    Section {
        name: "deploy",
        about: "Deployment (`sam deploy`): the adapter registry under SAM_HOME/registry.",
        keys: &[
            key("default_slot", "The slot commands use when none is named (one slot per base model)."),
            key("max_seq_len", "Examples are cut to this many tokens when the gate scores them."),
            key(
                "rollout",
                "What `sam run` and the scheduler do with an adapter the gate passes: \"promote\" (into\n\
                 production) or \"canary\" (a canary at [deploy.canary] percent).",
            ),
        ],
    },
    Section {
        name: "deploy.gate",
        about: "The gate `sam deploy promote` and `sam deploy canary` run (unless --force).",
        keys: &[
            key("margin", "Relative test-loss improvement over production a candidate needs (0.01: 1%)."),
            key("golden_tolerance", "Relative loss increase on the slot's golden set that is tolerated."),
            key("min_win_rate", "Share of held-out preference pairs the candidate must win against production."),
            key("prompts", "Prompts of the generation check (answers must not be empty, loop or leak the template)."),
            key("max_new_tokens", "Most tokens per generated answer."),
            key("max_repeated", "Most share of an answer's 4-token sequences that may repeat an earlier one."),
            key(
                "max_answer_loss",
                "Highest mean loss (nats per token) of an answer under the base model: above, it babbles.",
            ),
        ],
    },
    Section {
        name: "deploy.canary",
        about: "Canaries (`sam deploy canary`, `sam deploy canary-check`): a share of the traffic by\n\
                key, decided by the feedback captured for each version's answers.",
        keys: &[
            key("percent", "Traffic share of a new canary, in percent."),
            key("min_judgements", "Judgements (good feedback, corrections, escalations) each side needs first."),
            key("tolerance", "Promote when the canary's good rate is at least production's minus this."),
            key("rollback_margin", "Roll back when the canary's good rate is below production's by more than this."),
        ],
    },
    Section {
        name: "schedule",
        about: "The scheduler daemon (`sam schedule`): periodic mining, deduplication, validation and\n\
                export, and the training trigger that runs the pipeline when enough new data is stored.\n\
                Missed runs (the machine was off or asleep) run once at start, after a random delay.",
        keys: &[
            key("repos", "Git repositories to mine (history, markdown docs, documented code)."),
            key("folders", "Folders that are not git repositories whose markdown docs and documented code are mined."),
            Key {
                name: "model",
                doc: "The base model the trigger trains (a Hugging Face folder or a .gguf file; unset: the test model).",
                unset_example: Some("\"/home/me/models/Qwen2.5-Coder-1.5B-Instruct\""),
            },
            key("mine_every_secs", "Seconds between mining runs (21600: 6 hours; 0: off)."),
            key("dedup_every_secs", "Seconds between deduplication runs (86400: a day; 0: off)."),
            key("validate_every_secs", "Seconds between quality validation runs (43200: 12 hours; 0: off)."),
            key("export_every_secs", "Seconds between exports of the eligible tiers to SAM_HOME/exports (0: off)."),
            key("train_check_every_secs", "Seconds between checks of the training trigger (0: off)."),
            key(
                "train_threshold",
                "Eligible examples (in [pipeline] export_tiers) that no training run has seen which start a\n\
                 training (`sam schedule run train --force` trains at once).",
            ),
            key(
                "randomized_delay_secs",
                "Up to this many seconds are added to each start, so jobs do not all start at once.",
            ),
            key("retry_base_secs", "A failed job is retried after this many seconds, doubled per further failure..."),
            key("retry_max_secs", "...up to this many."),
            key("defer_secs", "A job deferred for lack of free memory is looked at again after this many seconds."),
            key("missed_after_secs", "A job found due this many seconds late counts as missed (a fresh random delay)."),
        ],
    },
    Section {
        name: "serve",
        about: "The HTTP server (`sam serve`): capture API, statistics, runs, dashboard.\n\
                Listening beyond loopback also needs `--allow-remote` on the command line.",
        keys: &[
            key("bind", "IP address to listen on."),
            key("port", "Port to listen on (0: any free port)."),
            key("max_body_bytes", "Request bodies over this many bytes are refused (413)."),
            key("stats_cache_s", "Seconds the statistics are cached (a capture through the server refreshes them)."),
            key("sse_poll_ms", "How often a live run's event stream looks for new lines, in milliseconds."),
        ],
    },
];

impl Config {
    /// The file `sam init` writes: every default, each section and key
    /// commented; keys unset by default appear commented out.
    pub fn default_file() -> String {
        let value = toml::Table::try_from(Config::default()).expect("the config serialises to a table");
        let mut out = String::from(
            "# sam configuration. Every value below is the default; change what you need.\n\
             # Lines starting with '#' are comments. An unknown key is an error.\n",
        );
        for section in SECTIONS {
            out.push('\n');
            for line in section.about.lines() {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("[{}]\n", section.name));
            let plain: toml::Table =
                section_table(&value, section.name).into_iter().filter(|(_, v)| !v.is_table()).collect();
            let body = toml::to_string(&plain).expect("a table serialises");
            let mut lines: Vec<(String, String)> =
                body.lines().map(|l| (l.split('=').next().unwrap_or("").trim().to_string(), l.to_string())).collect();
            for k in section.keys.iter().filter(|k| k.unset_example.is_some()) {
                lines.push((k.name.to_string(), format!("# {} = {}", k.name, k.unset_example.unwrap_or_default())));
            }
            // In the order of SECTIONS, so the file reads in a sensible order.
            lines.sort_by_key(|(k, _)| section.keys.iter().position(|x| x.name == k).unwrap_or(usize::MAX));
            for (k, line) in lines {
                if let Some(key) = section.keys.iter().find(|x| x.name == k) {
                    for c in key.doc.lines() {
                        out.push_str(&format!("# {c}\n"));
                    }
                }
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Parse the text of a `sam.toml`.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The keys this configuration sets under an old name (still read; the
    /// CLI says what to rename them to).
    pub fn deprecated_keys(&self) -> Vec<DeprecatedKey> {
        let mut out = Vec::new();
        if self.train.checkpoint_every.is_some() {
            out.push(DeprecatedKey {
                section: "train",
                old: "checkpoint_every",
                new: "recompute_every",
                both_set: self.train.recompute_every.is_some(),
            });
        }
        out
    }
}

/// The table of a (possibly dotted) section name, `store.quality` say.
fn section_table(root: &toml::Table, name: &str) -> toml::Table {
    let mut table = root.clone();
    for part in name.split('.') {
        table = table.get(part).and_then(|v| v.as_table()).cloned().unwrap_or_default();
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sections of a config value, named by their dotted path, with their
    /// plain keys.
    fn sections_of(table: &toml::Table, prefix: &str, out: &mut Vec<(String, Vec<String>)>) {
        let keys: Vec<String> = table.iter().filter(|(_, v)| !v.is_table()).map(|(k, _)| k.clone()).collect();
        if !prefix.is_empty() {
            out.push((prefix.to_string(), keys));
        }
        for (k, v) in table.iter().filter(|(_, v)| v.is_table()) {
            let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            sections_of(v.as_table().expect("a table"), &name, out);
        }
    }

    #[test]
    fn the_default_file_reads_back_as_the_defaults() {
        let text = Config::default_file();
        assert_eq!(Config::parse(&text).unwrap(), Config::default(), "{text}");
        // The commented-out keys are valid when uncommented.
        let uncommented = text
            .replace("# spool = ", "spool = ")
            .replace("# system_prompt = ", "system_prompt = ")
            .replace("# recompute_every = ", "recompute_every = ");
        let cfg = Config::parse(&uncommented).unwrap();
        assert!(cfg.capture.spool.is_some() && cfg.prep.system_prompt.is_some());
        assert_eq!(cfg.train.recompute(), Some(2));
        assert!(cfg.deprecated_keys().is_empty());
    }

    #[test]
    fn every_section_and_key_is_commented() {
        let value = toml::Table::try_from(Config::default()).unwrap();
        let mut sections = Vec::new();
        sections_of(&value, "", &mut sections);
        for name in ["store", "capture", "prep", "train", "pipeline", "deploy", "schedule", "serve"] {
            assert!(sections.iter().any(|(n, _)| n == name), "no [{name}] in {sections:?}");
        }
        for (name, keys) in &sections {
            let section = SECTIONS.iter().find(|s| s.name == name);
            let section = section.unwrap_or_else(|| panic!("section [{name}] has no entry in SECTIONS"));
            for key in keys {
                assert!(section.keys.iter().any(|k| k.name == key), "[{name}] {key} has no comment in SECTIONS");
            }
        }
        for section in SECTIONS {
            assert!(sections.iter().any(|(n, _)| n == section.name), "SECTIONS has [{}], Config has not", section.name);
        }
        let text = Config::default_file();
        assert!(text.contains("# How long a writer waits"), "{text}");
        assert!(text.contains("\n[serve]\n"), "{text}");
    }

    #[test]
    fn an_unknown_key_or_section_is_an_error_that_names_it() {
        for (text, name) in [
            ("[train]\nstepz = 3\n", "stepz"),
            ("[store.quality]\nmin_chars = 3\n", "min_chars"),
            ("[quality]\nmin_response_chars = 3\n", "quality"),
            ("[serve]\nprot = 1\n", "prot"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(name), "{text}: {err}");
        }
        let cfg = Config::parse("[store]\nbatch_size = 7\n").unwrap();
        assert_eq!(cfg.train.recompute(), None);
        assert_eq!(cfg.store.batch_size, 7);
        assert_eq!(cfg.store.quality, QualitySection::default());
    }

    #[test]
    fn the_old_name_of_recompute_every_is_read_and_reported() {
        let cfg = Config::parse("[train]\ncheckpoint_every = 1\n").unwrap();
        assert_eq!(cfg.train.recompute(), Some(1));
        let notes = cfg.deprecated_keys();
        assert_eq!(notes.len(), 1);
        assert_eq!(
            (notes[0].section, notes[0].old, notes[0].new, notes[0].both_set),
            ("train", "checkpoint_every", "recompute_every", false)
        );
        // The new name wins when both are set.
        let cfg = Config::parse("[train]\ncheckpoint_every = 1\nrecompute_every = 0\n").unwrap();
        assert_eq!(cfg.train.recompute(), Some(0));
        assert!(cfg.deprecated_keys()[0].both_set);
        // Written back under the name it was read with, so nothing is lost.
        let back = Config::parse(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
