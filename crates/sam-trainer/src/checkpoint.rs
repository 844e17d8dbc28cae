//! Training checkpoints: everything needed to continue a run exactly.
//!
//! A checkpoint is a folder `OUT/checkpoints/<phase>-step-<N>/`:
//!
//! ```text
//! adapter_config.json          the adapter, in PEFT's layout: the folder
//! adapter_model.safetensors    loads as an adapter on its own
//! optimizer.safetensors        AdamW's moments (`m.<var>`, `v.<var>`)
//! best.safetensors             the best adapter so far by validation loss, when there is one
//! trainer_state.json           LoopState: step, schedule, data order, best, counters
//! ```
//!
//! It is written into a temporary folder and renamed into place, so a
//! checkpoint folder that exists is complete. The last `keep` checkpoints of
//! a phase are kept, plus the one at the best validation step.

use crate::adapter::{AdapterFormat, save_adapter};
use crate::error::{Error, Result, io_err, json_err};
use crate::model::Decoder;
use crate::optim::AdamW;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const BEST_FILE: &str = "best.safetensors";
const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// Where the training loop is: saved in every checkpoint, and what a resumed
/// run starts from. Together with the adapter and optimizer tensors it
/// determines every later step (the data order is replayed from the seed,
/// dropout is reseeded per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// `sft` or `dpo`.
    pub phase: String,
    /// Last completed optimiser step.
    pub step: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// Warmup steps of the schedule.
    pub warmup_steps: usize,
    /// The run's seed.
    pub seed: u64,
    /// Number of training items (sequences or pairs) the order is drawn over.
    pub train_items: usize,
    /// Fingerprint of the training items (ids and lengths), so a checkpoint
    /// is never continued on other data.
    pub data_fingerprint: String,
    /// How many times the data order has been shuffled (epochs started).
    pub shuffles: usize,
    /// Position in the current order.
    pub cursor: usize,
    /// AdamW's update count.
    pub optimizer_steps: usize,
    /// Best validation loss so far.
    pub best_loss: Option<f64>,
    /// Step of the best validation loss.
    pub best_step: Option<usize>,
    /// Validations since the best one (early stopping).
    pub since_best: usize,
    /// Validation loss before training.
    pub initial_val_loss: Option<f64>,
    /// Tokens trained on so far.
    pub tokens_seen: u64,
    /// Training loss of the last step.
    pub last_loss: Option<f64>,
    /// Training seconds so far (pauses not counted).
    pub elapsed_s: f64,
    /// Whether early stopping has triggered.
    pub stopped_early: bool,
}

/// A checkpoint folder on disk and its state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Its `trainer_state.json`.
    pub state: LoopState,
}

impl Checkpoint {
    /// Reads the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let state = serde_json::from_str(&text).map_err(json_err(&path))?;
        Ok(Self { dir: dir.to_path_buf(), state })
    }

    /// Every complete checkpoint of `phase` under `root` (a run's
    /// `checkpoints/` folder), by step.
    pub fn list(root: &Path, phase: &str) -> Result<Vec<Checkpoint>> {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io { path: root.to_path_buf(), source: e }),
        };
        let prefix = format!("{phase}-step-");
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(n) = name.strip_prefix(&prefix).and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            if entry.path().join(STATE_FILE).is_file() {
                out.push((n, Checkpoint::open(&entry.path())?));
            }
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    /// The newest checkpoint of `phase` under `root`, if any.
    pub fn latest(root: &Path, phase: &str) -> Result<Option<Checkpoint>> {
        Ok(Self::list(root, phase)?.pop())
    }

    /// The folder name of `phase`'s checkpoint at `step`.
    pub fn dir_name(phase: &str, step: usize) -> String {
        format!("{phase}-step-{step}")
    }
}

fn var_tensors(model: &Decoder) -> Vec<(String, Tensor)> {
    model.lora_vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect()
}

fn save_named(path: &Path, names: &[String], tensors: &[Tensor], prefix: &str) -> Result<()> {
    let map: HashMap<String, Tensor> =
        names.iter().zip(tensors).map(|(n, t)| Ok((format!("{prefix}{n}"), t.contiguous()?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

/// Writes a checkpoint of the model's adapter, the optimizer and `state`
/// under `root`, atomically, and prunes older ones (keeping the last `keep`,
/// 0 = all, plus the best step's). Returns its folder.
pub(crate) fn write(
    root: &Path,
    model: &Decoder,
    opt: &AdamW,
    state: &LoopState,
    best: Option<&[Tensor]>,
    base_model: Option<&str>,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let name = Checkpoint::dir_name(&state.phase, state.step);
    let dest = root.join(&name);
    sam_home::atomic::write_dir(
        &dest,
        |e| Error::Io { path: dest.clone(), source: e },
        |tmp| {
            save_adapter(model, tmp, AdapterFormat::Peft, base_model)?;
            let names: Vec<String> = model.lora_vars().into_iter().map(|(n, _)| n).collect();
            let (m, v) = opt.moments();
            let mut both: Vec<Tensor> = m.to_vec();
            both.extend_from_slice(v);
            let mut keys: Vec<String> = names.iter().map(|n| format!("m.{n}")).collect();
            keys.extend(names.iter().map(|n| format!("v.{n}")));
            save_named(&tmp.join(OPTIMIZER_FILE), &keys, &both, "")?;
            if let Some(best) = best {
                save_named(&tmp.join(BEST_FILE), &names, best, "")?;
            }
            let state_path = tmp.join(STATE_FILE);
            let text = serde_json::to_string_pretty(state).map_err(json_err(&state_path))?;
            std::fs::write(&state_path, text + "\n").map_err(io_err(&state_path))
        },
    )?;
    prune(root, &state.phase, keep, state.best_step)?;
    Ok(dest)
}

fn prune(root: &Path, phase: &str, keep: usize, best_step: Option<usize>) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = Checkpoint::list(root, phase)?;
    let n = all.len();
    for (i, c) in all.into_iter().enumerate() {
        let recent = i + keep >= n;
        if !recent && Some(c.state.step) != best_step {
            std::fs::remove_dir_all(&c.dir).map_err(io_err(&c.dir))?;
        }
    }
    Ok(())
}

fn load_by_name(path: &Path, dev: &candle_core::Device) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, dev)?)
}

/// Puts a checkpoint's adapter values on the model's (already attached,
/// same-shaped) adapter and its moments into `opt`. Returns the best
/// adapter snapshot, in [`Decoder::lora_vars`] order, when it holds one.
pub(crate) fn restore(model: &Decoder, opt: &mut AdamW, ckpt: &Checkpoint) -> Result<Option<Vec<Tensor>>> {
    let dev = model.device().clone();
    let bad = |why: String| Error::Checkpoint { path: ckpt.dir.clone(), why };
    let adapter = load_by_name(&ckpt.dir.join(ADAPTER_FILE), &dev)?;
    let moments = load_by_name(&ckpt.dir.join(OPTIMIZER_FILE), &dev)?;
    let best_path = ckpt.dir.join(BEST_FILE);
    let best = if best_path.is_file() { Some(load_by_name(&best_path, &dev)?) } else { None };
    let named = var_tensors(model);
    if adapter.len() != named.len() {
        return Err(bad(format!("{} adapter tensors, the model carries {}", adapter.len(), named.len())));
    }
    let (mut m, mut v, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for ((name, _), (_, var)) in named.iter().zip(model.lora_vars()) {
        let get = |map: &HashMap<String, Tensor>, key: &str| {
            map.get(key).cloned().ok_or_else(|| bad(format!("no tensor `{key}`")))
        };
        let t = get(&adapter, &format!("base_model.model.{name}.weight"))?;
        if t.dims() != var.dims() {
            return Err(bad(format!("`{name}` has shape {:?}, the model's {:?}", t.dims(), var.dims())));
        }
        var.set(&t)?;
        m.push(get(&moments, &format!("m.{name}"))?);
        v.push(get(&moments, &format!("v.{name}"))?);
        if let Some(best) = &best {
            b.push(get(best, name)?);
        }
    }
    opt.restore(ckpt.state.optimizer_steps, m, v)?;
    Ok(best.map(|_| b))
}
