//! The training trigger: when enough eligible examples that no training run
//! has seen are in the store (or on `sam schedule run train --force`), run
//! the one pipeline — the same call `sam run` makes, through the gate to
//! production (or a canary). A run whose adapter the gate refuses is
//! recorded as [`Done::Refused`], production as it was.
//!
//! "Seen" means: in the export the last trained pipeline run trained on.
//! [`unseen`] counts, by tier, the examples of the eligible tiers whose ids
//! are not in that export. The check is cheap (one pass over the eligible
//! rows, the export's ids kept in memory between checks), so it runs every
//! few minutes; the pipeline runs only past the threshold.
//!
//! Before it trains, the trigger declares the memory the training needs
//! ([`training_bytes`]): the highest resident memory measured in earlier
//! runs on the same base model when there are any, else an estimate from
//! the model's shape and the training settings.
//!
//! A stop request (SIGTERM, `sam schedule stop`) reaches the pipeline's
//! training, which checkpoints after its current step; the run is recorded
//! as stopped, and a pipeline run left unfinished (stopped, killed, failed)
//! continues at the next check whatever the count.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sam_schema::Tier;
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore};
use serde::{Deserialize, Serialize};
use serde_json::json;

use sam_home::SamHome;
use sam_pipeline::event::{Event, EventSink};
use sam_pipeline::{Outcome, PipelineConfig, PipelineState};

use crate::task::{Done, Step, StepStatus, Task, TaskContext, TaskError, TaskReport};

/// Eligible examples no training run has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unseen {
    /// All of them.
    pub total: u64,
    /// By tier.
    pub by_tier: BTreeMap<Tier, u64>,
}

/// Counts the examples of `tiers` in the store whose ids are not in `seen`.
pub fn unseen(store: &SqliteStore, tiers: &[Tier], seen: &HashSet<String>) -> Result<Unseen, sam_store::StoreError> {
    let mut u = Unseen::default();
    store.scan(&Filter::default().tiers(tiers.iter().copied()), &mut |ex| {
        if !seen.contains(&ex.id) {
            u.total += 1;
            *u.by_tier.entry(ex.tier).or_default() += 1;
        }
        Ok(())
    })?;
    Ok(u)
}

/// The export the last trained pipeline run under `home` trained on.
pub fn last_trained_export(home: &SamHome) -> Result<Option<PathBuf>, sam_pipeline::Error> {
    let trained = |s: &PipelineState| -> Result<Option<PathBuf>, sam_pipeline::Error> {
        if s.outcome != Some(Outcome::Trained) {
            return Ok(None);
        }
        Ok(s.export()?.map(|e| e.path))
    };
    if let Some(s) = PipelineState::load(home)?
        && let Some(p) = trained(&s)?
    {
        return Ok(Some(p));
    }
    // The state file holds the latest run only; the history holds them all.
    let mut last = None;
    for s in PipelineState::history(home)? {
        if let Some(p) = trained(&s)? {
            last = Some(p);
        }
    }
    Ok(last)
}

/// The example ids of an export file (sam's full form: one JSON object
/// with an `id` per line). A missing file has none.
pub fn export_ids(path: &Path) -> std::io::Result<HashSet<String>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    #[derive(Deserialize)]
    struct Row {
        id: String,
    }
    let mut ids = HashSet::new();
    for line in std::io::BufReader::new(f).lines() {
        if let Ok(r) = serde_json::from_str::<Row>(&line?) {
            ids.insert(r.id);
        }
    }
    Ok(ids)
}

/// Free memory a training run needs, in bytes: 1.15 × the highest resident
/// memory recorded by earlier runs on the same base model under `runs`
/// (their `metrics.jsonl`), or, when there are none, the frozen weights
/// (f32, or bf16 with `bf16`) plus activations for one micro-batch of
/// `max_seq_len` tokens plus 0.3 GB.
pub fn training_bytes(model: &Path, max_seq_len: usize, batch_size: usize, bf16: bool, runs: &Path) -> u64 {
    if let Some(peak) = measured_peak(model, runs) {
        return peak + peak / 20 * 3;
    }
    let Ok(c) = sam_trainer::read_config(model) else {
        // Unknown shape: four times the file (a quantized GGUF widens).
        return std::fs::metadata(model).map_or(2_000_000_000, |m| m.len() * 4 + 300_000_000);
    };
    let (h, l) = (c.hidden_size as u64, c.num_layers as u64);
    let attn = h * (c.num_heads * c.head_dim) as u64 * 2 + h * (c.num_kv_heads * c.head_dim) as u64 * 2;
    let mlp = 3 * h * c.intermediate_size as u64;
    let embed = c.vocab_size as u64 * h * if c.tie_word_embeddings { 1 } else { 2 };
    let params = embed + l * (attn + mlp);
    let weights = params * if bf16 { 2 } else { 4 };
    let tokens = (max_seq_len * batch_size.max(1)) as u64;
    // Per token and layer: a few dozen hidden-sized f32 activations kept
    // for the backward; the head's logits are computed in chunks (≤ 100 MB).
    let activations = tokens * l * h * 4 * 16 + (tokens * c.vocab_size as u64 * 4).min(100_000_000);
    weights + activations + 300_000_000
}

fn measured_peak(model: &Path, runs: &Path) -> Option<u64> {
    let want = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    let mut peak = None;
    for entry in std::fs::read_dir(runs).ok()?.flatten() {
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { continue };
        let Ok(cfg) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let Some(m) = cfg.get("model").and_then(|m| m.as_str()) else { continue };
        if std::fs::canonicalize(m).unwrap_or_else(|_| PathBuf::from(m)) != want {
            continue;
        }
        let Ok(run) = sam_runs::RunDir::open(&dir) else { continue };
        let Ok(metrics) = run.metrics() else { continue };
        if let Some(p) = metrics.iter().filter_map(|m| m.rss_bytes).max() {
            peak = Some(peak.map_or(p, |q: u64| q.max(p)));
        }
    }
    peak
}

/// The training trigger as a job.
#[derive(Debug)]
pub struct TrainTrigger {
    /// The pipeline it runs (its `force` is set from the run's context).
    pub pipeline: PipelineConfig,
    /// Tiers that count as eligible.
    pub tiers: Vec<Tier>,
    /// Unseen eligible examples that start a training.
    pub threshold: u64,
    seen: Option<(PathBuf, HashSet<String>)>,
    checked: Option<(i64, Unseen)>,
}

impl TrainTrigger {
    /// A trigger over `pipeline` that fires at `threshold` unseen examples of `tiers`.
    pub fn new(pipeline: PipelineConfig, tiers: Vec<Tier>, threshold: u64) -> Self {
        Self { pipeline, tiers, threshold, seen: None, checked: None }
    }

    /// Counts the unseen eligible examples now.
    pub fn check(&mut self) -> Result<Unseen, TaskError> {
        let store_path = self.pipeline.home.store_db();
        if !store_path.is_file() {
            return Ok(Unseen::default());
        }
        let export = last_trained_export(&self.pipeline.home)?;
        let seen = match (&self.seen, export) {
            (Some((p, ids)), Some(e)) if *p == e => ids,
            (_, Some(e)) => {
                let ids = export_ids(&e)?;
                &self.seen.insert((e, ids)).1
            }
            (_, None) => &HashSet::new(),
        };
        let store = SqliteStore::open(&store_path)?;
        Ok(unseen(&store, &self.tiers, seen)?)
    }

    fn count(&mut self, now: i64) -> Result<Unseen, TaskError> {
        match self.checked.take() {
            Some((t, u)) if t == now => Ok(u),
            _ => self.check(),
        }
    }

    /// Whether a pipeline run was cut short (stopped, killed, failed): it
    /// continues at the next check, whatever the count.
    pub fn interrupted(&self) -> bool {
        PipelineState::load(&self.pipeline.home).ok().flatten().is_some_and(|s| s.outcome.is_none())
    }

    fn training_bytes(&self) -> u64 {
        let t = &self.pipeline.train;
        training_bytes(
            &self.pipeline.model,
            t.batch.max_seq_len,
            t.batch.batch_size,
            false,
            &self.pipeline.home.runs_dir(),
        )
    }
}

impl Task for TrainTrigger {
    fn memory_needed(&mut self, ctx: &TaskContext) -> u64 {
        if ctx.force || self.interrupted() {
            return self.training_bytes();
        }
        match self.check() {
            Ok(u) => {
                let fire = u.total >= self.threshold;
                self.checked = Some((ctx.now, u));
                if fire { self.training_bytes() } else { 0 }
            }
            // The run reports the error.
            Err(_) => 0,
        }
    }

    fn run(&mut self, ctx: &TaskContext) -> Result<TaskReport, TaskError> {
        let u = self.count(ctx.now)?;
        let interrupted = self.interrupted();
        if u.total < self.threshold && !ctx.force && !interrupted {
            return Ok(TaskReport::new(Done::Idle, json!({ "unseen": u, "threshold": self.threshold })));
        }
        let mut cfg = self.pipeline.clone();
        cfg.force = ctx.force;
        // SIGTERM / `sam schedule stop`: the training checkpoints after its step.
        cfg.stop = Some(ctx.stop.clone());
        let mut steps = StepRecorder::default();
        let summary = match sam_pipeline::run(&cfg, &mut steps) {
            Ok(s) => s,
            Err(sam_pipeline::Error::Stopped { stage, run_id }) => {
                let output =
                    json!({ "unseen": u, "threshold": self.threshold, "stopped_at": stage, "stopped_run": run_id });
                return Ok(TaskReport { done: Done::Stopped, steps: steps.finish(), output });
            }
            // `sam run` is running the pipeline: look again at the next check.
            Err(sam_pipeline::Error::Busy { pid, .. }) => {
                let output = json!({ "unseen": u, "threshold": self.threshold, "busy_pid": pid });
                return Ok(TaskReport { done: Done::Idle, steps: steps.finish(), output });
            }
            Err(e) => return Err(e.into()),
        };
        // The export just trained on is the new "seen" set.
        self.seen = None;
        // A refusal by the gate is an outcome (production stays), not an
        // error; so is an adapter not gated for too small a test split. The
        // run is complete either way: the next one waits for new data.
        let refused = summary.deploy.as_ref().and_then(|d| d.promote.as_ref()).map(|p| p.decision)
            == Some(sam_pipeline::stages::Decision::Refused)
            || summary.not_gated.is_some();
        let done = match summary.outcome {
            Outcome::Trained if refused => Done::Refused,
            Outcome::Trained => Done::Succeeded,
            _ => Done::Idle,
        };
        let output = json!({ "unseen": u, "threshold": self.threshold, "pipeline": summary });
        Ok(TaskReport { done, steps: steps.finish(), output })
    }
}

/// Times the pipeline's stages into [`Step`]s, from its events.
#[derive(Default)]
struct StepRecorder {
    steps: Vec<Step>,
    open: Option<(String, Instant)>,
}

impl StepRecorder {
    fn close(&mut self, stage: &str, status: StepStatus) {
        let seconds = match self.open.take() {
            Some((s, t0)) if s == stage => t0.elapsed().as_secs_f64(),
            other => {
                self.open = other;
                0.0
            }
        };
        self.steps.push(Step { name: stage.to_string(), seconds, status, output: serde_json::Value::Null });
    }

    fn finish(mut self) -> Vec<Step> {
        if let Some((s, _)) = self.open.clone() {
            self.close(&s, StepStatus::Unfinished);
        }
        self.steps
    }
}

impl EventSink for StepRecorder {
    fn event(&mut self, e: &Event) {
        match e {
            Event::StageStarted { stage, .. } => self.open = Some((stage.clone(), Instant::now())),
            Event::StageFinished { stage, .. } => self.close(stage, StepStatus::Finished),
            Event::StageSkipped { stage, .. } => self.steps.push(Step {
                name: stage.clone(),
                seconds: 0.0,
                status: StepStatus::Skipped,
                output: serde_json::Value::Null,
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use sam_schema::{Content, Example};

    use super::*;

    fn examples(from: usize, n: usize, tier: Tier) -> Vec<Example> {
        (from..from + n)
            .map(|i| {
                let mut ex = Example::new(Content::Instruction {
                    instruction: format!("What does function number {i} of the parser return?"),
                    input: String::new(),
                    output: format!("It returns the {i}th token of the stream, or None at its end."),
                });
                ex.tier = tier;
                ex
            })
            .collect()
    }

    #[test]
    fn unseen_counts_eligible_examples_not_in_the_last_trained_export() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(tmp.path().join("store.db")).unwrap();
        store.insert(&examples(0, 30, Tier::Gold)).unwrap();
        store.insert(&examples(30, 20, Tier::Silver)).unwrap();
        store.insert(&examples(50, 10, Tier::Unverified)).unwrap();
        let tiers = [Tier::Gold, Tier::Silver, Tier::Bronze];
        let u = unseen(&store, &tiers, &HashSet::new()).unwrap();
        assert_eq!(u.total, 50);
        assert_eq!(u.by_tier, BTreeMap::from([(Tier::Gold, 30), (Tier::Silver, 20)]));

        let export = tmp.path().join("export.jsonl");
        store.export(&Filter::default().tiers(tiers), &export, Default::default()).unwrap();
        let seen = export_ids(&export).unwrap();
        assert_eq!(seen.len(), 50);
        assert_eq!(unseen(&store, &tiers, &seen).unwrap().total, 0);
        store.insert(&examples(100, 7, Tier::Bronze)).unwrap();
        let u = unseen(&store, &tiers, &seen).unwrap();
        assert_eq!((u.total, u.by_tier.get(&Tier::Bronze).copied()), (7, Some(7)));
        assert!(export_ids(&tmp.path().join("missing.jsonl")).unwrap().is_empty());
    }

    #[test]
    fn training_memory_comes_from_measured_peaks_else_from_the_model_shape() {
        let model = sam_models::require_test_model().expect("the test model (scripts/fetch-test-model.sh)");
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let estimate = training_bytes(&model, 256, 1, false, &runs);
        // SmolLM2-135M in f32 is 0.54 GB of weights.
        assert!((800_000_000..3_000_000_000).contains(&estimate), "{estimate}");
        assert!(training_bytes(&model, 256, 1, true, &runs) < estimate);
        let run = sam_runs::RunDir::create(&runs, "r1", &serde_json::json!({ "model": model })).unwrap();
        run.append_metric(&sam_runs::MetricRecord { step: 1, rss_bytes: Some(1_000_000_000), ..Default::default() })
            .unwrap();
        run.append_metric(&sam_runs::MetricRecord { step: 2, rss_bytes: Some(1_200_000_000), ..Default::default() })
            .unwrap();
        assert_eq!(training_bytes(&model, 256, 1, false, &runs), 1_380_000_000);
        // Another model's runs do not count (and a model that cannot be read gets 2 GB).
        assert_eq!(training_bytes(Path::new("/elsewhere/model.gguf"), 256, 1, false, &runs), 2_000_000_000);
    }
}
