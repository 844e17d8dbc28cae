//! What the pipeline needs, and how `sam.toml`'s sections become it.
//!
//! [`PipelineConfig::from_config`] turns the file's `[store]`, `[capture]`,
//! `[prep]`, `[train]` and `[pipeline]` sections into the libraries' own
//! configurations; [`settings`] holds the conversions one section at a time,
//! for callers that need only one (the CLI's store and capture commands).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sam_capture::capture::Capture;
use sam_capture::code::CodeConfig;
use sam_capture::docs::DocsConfig;
use sam_capture::git::GitConfig;
use sam_home::SamHome;
use sam_prep::prepare::PrepConfig;
use sam_schema::Tier;
use sam_store::near_dup::NearDupConfig;
use sam_trainer::{BatchConfig, ComputeConfig, DpoConfig, OptimConfig, OutputConfig, TrainConfig};

use crate::error::{Error, Result};
use crate::stages::{DeploySettings, Rollout};

/// Everything the pipeline needs. [`PipelineConfig::new`] gives the
/// defaults of `sam.toml` (sized to finish in minutes on a 2-core laptop with
/// the test model); [`PipelineConfig::from_config`] reads a file's sections.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// `SAM_HOME`: the store, datasets, runs and the pipeline's state live here.
    pub home: SamHome,
    /// Git repositories to mine (their history, markdown docs and documented code).
    pub repos: Vec<PathBuf>,
    /// Captures fed through `sam_capture::capture::Capturer` in the mine
    /// stage, as the assistant's capture API would (`sam run` feeds the
    /// sample captures shipped with sam).
    pub captures: Vec<Capture>,
    /// The base model: a Hugging Face folder or a GGUF file.
    pub model: PathBuf,
    /// Redaction, quality scoring and domain rules applied to everything mined or captured.
    pub cleaning: sam_capture::PipelineConfig,
    /// The git source's settings.
    pub git: GitConfig,
    /// The docs source's settings.
    pub docs: DocsConfig,
    /// The code source's settings.
    pub code: CodeConfig,
    /// Near-duplicate removal (`None`: exact deduplication only).
    pub near_dup: Option<NearDupConfig>,
    /// Tiers exported for training.
    pub export_tiers: Vec<Tier>,
    /// Dataset preparation.
    pub prep: PrepConfig,
    /// Training. `pad_id`, `out_dir` and `base_model` are filled in by the pipeline.
    pub train: TrainConfig,
    /// DPO on the dataset's preference pairs after SFT, starting from (and
    /// measured against) the SFT adapter, in the same run (`None`: SFT only).
    pub dpo: Option<DpoSettings>,
    /// Score at most this many test examples, the first ones in split order.
    pub max_eval_examples: Option<usize>,
    /// Validate on at most this many validation examples during training.
    pub max_valid_examples: Option<usize>,
    /// Train even when the export holds nothing new.
    pub force: bool,
    /// Set it (a signal handler, the scheduler's stop) to stop the run at
    /// the next safe point — before the next stage, or in training after
    /// its current step with a checkpoint: the run ends with
    /// [`Error::Stopped`] and the next run continues it (`None`: no stop).
    pub stop: Option<Arc<AtomicBool>>,
    /// After evaluation: register the adapter, gate it against production
    /// and promote it or start a canary (`None`: stop after evaluation).
    pub deploy: Option<DeploySettings>,
}

/// The DPO phase's settings in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoSettings {
    /// β, loss variant, label smoothing (the reference is always the SFT adapter).
    pub config: DpoConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Optimiser steps.
    pub steps: usize,
}

impl PipelineConfig {
    /// The defaults of `sam.toml` for `home` and `model` (no repositories,
    /// no captures).
    ///
    /// Training: LoRA rank 8 (alpha 16) on q, k, v and o of every layer,
    /// learning rate 1e-3 with 3 warmup steps, batch 1 with 2 accumulation
    /// steps, 32 steps, sequences cut to 256 tokens, validation (16
    /// examples) before and after training, a checkpoint every 8 steps;
    /// then, when the dataset has preference pairs, 8 DPO steps (β 0.1,
    /// learning rate 5e-4). Prep: 256 tokens, 90/5/5 split. Evaluation: at
    /// most 32 test examples.
    pub fn new(home: impl Into<PathBuf>, model: impl Into<PathBuf>) -> Self {
        Self::from_config(SamHome::new(home), &sam_home::Config::default(), model)
            .expect("the default configuration converts")
    }

    /// The configuration `file` describes, for `home` and `model`.
    pub fn from_config(home: SamHome, file: &sam_home::Config, model: impl Into<PathBuf>) -> Result<Self> {
        let bad = |section: &str, e: String| Error::Config(format!("[{section}] {e}"));
        let p = &file.pipeline;
        let export_tiers = p
            .export_tiers
            .iter()
            .map(|t| t.parse::<Tier>().map_err(|e| bad("pipeline", format!("export_tiers: {e}"))))
            .collect::<Result<_>>()?;
        let s = &file.prep;
        let mut prep = PrepConfig {
            max_seq_len: s.max_seq_len,
            split: s.split.parse().map_err(|e| bad("prep", format!("split: {e}")))?,
            system_prompt: s.system_prompt.clone(),
            ..PrepConfig::default()
        };
        if s.threads > 0 {
            prep.threads = s.threads;
        }
        let t = &file.train;
        let steps = t.steps.max(1);
        let targets = t
            .targets
            .iter()
            .map(|x| sam_trainer::Target::parse(x).map_err(|e| bad("train", format!("targets: {e}"))))
            .collect::<Result<_>>()?;
        let train = TrainConfig {
            lora: sam_trainer::LoraConfig {
                rank: t.rank,
                alpha: t.alpha,
                dropout: 0.0,
                targets,
                layers: sam_trainer::Layers::All,
                rslora: false,
            },
            optim: OptimConfig { lr: t.lr, warmup_steps: Some(t.warmup_steps), ..OptimConfig::default() },
            batch: BatchConfig {
                batch_size: t.batch_size.max(1),
                grad_accum: t.grad_accum.max(1),
                max_seq_len: s.max_seq_len,
                ..BatchConfig::default()
            },
            duration: sam_trainer::Duration::Iters(steps),
            eval_every: steps,
            output: OutputConfig {
                save_every: if t.save_every > 0 { t.save_every } else { (steps / 4).max(1) },
                ..OutputConfig::default()
            },
            // Unset: keep every activation here; `sam run` (the CLI) picks
            // the setting from the memory available before it runs.
            compute: ComputeConfig { recompute_every: t.recompute().unwrap_or(0) },
            ..TrainConfig::default()
        };
        let dpo = (t.dpo_steps > 0).then(|| DpoSettings {
            config: DpoConfig { beta: t.dpo_beta, ..DpoConfig::default() },
            lr: t.dpo_lr,
            steps: t.dpo_steps,
        });
        Ok(Self {
            home,
            repos: Vec::new(),
            captures: Vec::new(),
            model: model.into(),
            cleaning: sam_capture::PipelineConfig {
                redaction: settings::redaction(&file.capture.redaction)?,
                quality: settings::quality(&file.store.quality),
                ..Default::default()
            },
            git: Default::default(),
            docs: Default::default(),
            code: Default::default(),
            near_dup: p.near_dup.then(|| settings::near_dup(&file.store.near_dup)),
            export_tiers,
            prep,
            train,
            dpo,
            max_eval_examples: Some(p.max_eval_examples),
            max_valid_examples: Some(p.max_valid_examples),
            force: false,
            stop: None,
            deploy: p.deploy.then(|| DeploySettings {
                config: settings::deploy(&file.deploy),
                rollout: match file.deploy.rollout {
                    sam_home::config::Rollout::Promote => Rollout::Promote,
                    sam_home::config::Rollout::Canary => Rollout::Canary,
                },
                min_test_examples: p.min_test_examples,
            }),
        })
    }
}

/// `sam.toml`'s sections turned into each library's configuration, one at a
/// time. A test holds the file's defaults equal to the libraries' defaults.
pub mod settings {
    use sam_home::SamHome;
    use sam_home::config as file;

    use crate::error::{Error, Result};

    /// `[store.quality]`.
    pub fn quality(s: &file::QualitySection) -> sam_schema::quality::QualityConfig {
        sam_schema::quality::QualityConfig {
            min_response_chars: s.min_response_chars,
            max_total_chars: s.max_total_chars,
            max_duplicate_line_fraction: s.max_duplicate_line_fraction,
            max_top_ngram_fraction: s.max_top_ngram_fraction,
        }
    }

    /// `[store]`.
    pub fn store(s: &file::StoreSection) -> sam_store::StoreConfig {
        sam_store::StoreConfig { busy_timeout_ms: s.busy_timeout_ms, cache_mib: s.cache_mib, batch_size: s.batch_size }
    }

    /// `[store.near_dup]`.
    pub fn near_dup(s: &file::NearDupSection) -> sam_store::near_dup::NearDupConfig {
        sam_store::near_dup::NearDupConfig {
            threshold: s.threshold,
            shingle: s.shingle,
            bands: s.bands,
            rows: s.rows,
            seed: s.seed,
            threads: s.threads,
        }
    }

    /// `[capture]`, with the spool resolved under `home`.
    pub fn capture(home: &SamHome, s: &file::CaptureSection) -> sam_capture::capture::CaptureConfig {
        let spool = s.spool.as_deref().map_or_else(|| home.capture_spool(), |p| home.resolve_path(p));
        sam_capture::capture::CaptureConfig {
            max_batch: s.max_batch,
            max_age_ms: s.max_age_ms,
            spool: Some(spool),
            escalation_as_preference: s.escalation_as_preference,
            busy_timeout_ms: s.busy_timeout_ms,
        }
    }

    /// `[capture.redaction]`; a kind sam does not know is an error naming it.
    pub fn redaction(s: &file::RedactionSection) -> Result<sam_capture::redact::RedactionConfig> {
        let disabled = s
            .disabled
            .iter()
            .map(|k| {
                serde_json::from_value(serde_json::Value::String(k.clone()))
                    .map_err(|_| Error::Config(format!("[capture.redaction] disabled: unknown kind {k:?}")))
            })
            .collect::<Result<_>>()?;
        Ok(sam_capture::redact::RedactionConfig {
            disabled,
            entropy_threshold: s.entropy_threshold,
            entropy_min_len: s.entropy_min_len,
            allow: s.allow.clone(),
            allow_patterns: s.allow_patterns.clone(),
            allow_sources: s.allow_sources.clone(),
            generic_users: s.generic_users.clone(),
        })
    }

    /// `[deploy]`: the registry's default slot, the gate's thresholds and
    /// the canary's settings.
    pub fn deploy(s: &file::DeploySection) -> sam_deploy::DeployConfig {
        let (g, c) = (&s.gate, &s.canary);
        sam_deploy::DeployConfig {
            default_slot: s.default_slot.clone(),
            max_seq_len: s.max_seq_len,
            gate: sam_deploy::GateSettings {
                margin: g.margin,
                golden_tolerance: g.golden_tolerance,
                min_win_rate: g.min_win_rate,
                prompts: g.prompts.clone(),
                max_new_tokens: g.max_new_tokens,
                max_repeated: g.max_repeated,
                max_answer_loss: g.max_answer_loss,
            },
            canary: sam_deploy::CanarySettings {
                percent: c.percent,
                min_judgements: c.min_judgements,
                tolerance: c.tolerance,
                rollback_margin: c.rollback_margin,
            },
        }
    }

    /// `[capture.routing]`.
    pub fn routing(s: &file::RoutingSection) -> sam_capture::routing::RoutingConfig {
        sam_capture::routing::RoutingConfig {
            routes: s
                .routes
                .iter()
                .map(|r| sam_capture::routing::Route {
                    task: r.task.clone(),
                    model: r.model.clone(),
                    reason: r.reason.clone(),
                    examples: r.examples.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_defaults_are_the_libraries_defaults() {
        let home = SamHome::new("/h");
        let f = sam_home::Config::default();
        assert_eq!(settings::quality(&f.store.quality), Default::default());
        assert_eq!(settings::store(&f.store), Default::default());
        assert_eq!(settings::redaction(&f.capture.redaction).unwrap(), Default::default());
        assert_eq!(settings::routing(&f.capture.routing), Default::default());
        assert_eq!(settings::near_dup(&f.store.near_dup), Default::default());
        assert_eq!(settings::deploy(&f.deploy), Default::default());
        let lib = sam_capture::capture::CaptureConfig { spool: Some(home.capture_spool()), ..Default::default() };
        assert_eq!(settings::capture(&home, &f.capture), lib);
        let cfg = PipelineConfig::new("/h", "/m");
        assert_eq!(cfg.train.output.save_every, 8);
        assert_eq!(cfg.train.duration, sam_trainer::Duration::Iters(32));
        assert_eq!(cfg.prep.split, sam_prep::split::SplitRatios::default());
        assert_eq!(cfg.dpo.map(|d| (d.steps, d.config)), Some((8, DpoConfig::default())));
        assert_eq!(cfg.deploy, Some(DeploySettings::default()));
    }

    #[test]
    fn a_bad_value_names_its_section_and_key() {
        let mut f = sam_home::Config::default();
        f.capture.redaction.disabled = vec!["ipv5".into()];
        let err = PipelineConfig::from_config(SamHome::new("/h"), &f, "/m").unwrap_err().to_string();
        assert!(err.contains("ipv5") && err.contains("[capture.redaction]"), "{err}");
        let mut f = sam_home::Config::default();
        f.train.targets = vec!["q".into(), "qq".into()];
        let err = PipelineConfig::from_config(SamHome::new("/h"), &f, "/m").unwrap_err().to_string();
        assert!(err.contains("[train] targets"), "{err}");
        let mut f = sam_home::Config::default();
        f.capture.spool = Some("spool/here.jsonl".into());
        let c = settings::capture(&SamHome::new("/h"), &f.capture);
        assert_eq!(c.spool.as_deref(), Some(std::path::Path::new("/h/spool/here.jsonl")));
    }
}
