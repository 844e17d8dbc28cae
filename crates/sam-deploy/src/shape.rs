//! Checking an adapter folder against a base model's shapes, without
//! loading the model: a PEFT folder trained elsewhere (TRL, axolotl) or an
//! mlx-lm one must have LoRA pairs on known projections of existing layers,
//! with `A`/`B` shapes that fit the base's dimensions, before it is
//! registered.

use std::collections::BTreeSet;
use std::path::Path;

use sam_trainer::{AdapterFormat, ModelConfig, Target};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The PEFT tensor file.
pub const PEFT_FILE: &str = "adapter_model.safetensors";
/// The mlx-lm tensor file.
pub const MLX_FILE: &str = "adapters.safetensors";
/// Both layouts' configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// What the check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// The layout.
    pub format: AdapterFormat,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA modules (A/B pairs).
    pub modules: usize,
    /// Adapted layers.
    pub layers: Vec<usize>,
    /// Adapted projections (`q_proj`, …).
    pub targets: Vec<String>,
    /// The files that make up the adapter.
    pub files: Vec<String>,
    /// The first tensor with a NaN or an infinity, if any.
    pub non_finite: Option<String>,
}

/// `(in, out)` of a projection in a model of configuration `c`.
fn dims(c: &ModelConfig, t: Target) -> (usize, usize) {
    let (h, q, kv, m) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
    match t {
        Target::Q => (h, q),
        Target::K | Target::V => (h, kv),
        Target::O => (q, h),
        Target::Gate | Target::Up => (h, m),
        Target::Down => (m, h),
    }
}

/// `(layer, target, is_a)` of a LoRA tensor name in either layout.
fn parse_key(key: &str, format: AdapterFormat) -> Option<(usize, Target, bool)> {
    let rest = key.split("model.layers.").nth(1)?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (module, suffix) = rest.split_once(".lora_")?;
    let t = Target::parse(module).ok()?;
    let is_a = match (format, suffix) {
        (AdapterFormat::Peft, "A.weight") => true,
        (AdapterFormat::Peft, "B.weight") => false,
        (AdapterFormat::Mlx, "a") => true,
        (AdapterFormat::Mlx, "b") => false,
        _ => return None,
    };
    Some((i, t, is_a))
}

/// Checks the adapter in `dir` against `base` and describes it.
pub fn check_adapter(dir: &Path, base: &ModelConfig) -> Result<AdapterInfo> {
    let bad = |m: String| Error::InvalidAdapter(format!("{}: {m}", dir.display()));
    let (format, file) = if dir.join(PEFT_FILE).is_file() {
        (AdapterFormat::Peft, PEFT_FILE)
    } else if dir.join(MLX_FILE).is_file() {
        (AdapterFormat::Mlx, MLX_FILE)
    } else {
        return Err(bad(format!("not a LoRA adapter folder: neither {PEFT_FILE} nor {MLX_FILE}")));
    };
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(format!("{CONFIG_FILE}: {e}")))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("{CONFIG_FILE}: {e}")))?;
    let rank = match format {
        AdapterFormat::Peft => {
            if let Some(t) = cfg["peft_type"].as_str().filter(|t| !t.eq_ignore_ascii_case("lora")) {
                return Err(bad(format!("peft_type {t}: only LoRA adapters are supported")));
            }
            if cfg["use_dora"].as_bool() == Some(true) {
                return Err(bad("DoRA adapters are not supported".into()));
            }
            cfg["r"].as_u64()
        }
        AdapterFormat::Mlx => {
            if let Some(t) = cfg["fine_tune_type"].as_str().filter(|t| *t != "lora") {
                return Err(bad(format!("fine_tune_type {t}: only LoRA adapters are supported")));
            }
            cfg["lora_parameters"]["rank"].as_u64()
        }
    }
    .ok_or_else(|| bad(format!("{CONFIG_FILE} has no LoRA rank")))? as usize;

    let path = dir.join(file);
    let tensors =
        candle_core::safetensors::load(&path, &candle_core::Device::Cpu).map_err(|e| bad(format!("{file}: {e}")))?;
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut pairs = std::collections::BTreeMap::<(usize, Target), [bool; 2]>::new();
    let mut non_finite = None;
    for key in keys {
        let t = &tensors[key];
        let Some((layer, target, is_a)) = parse_key(key, format) else {
            return Err(bad(format!("tensor `{key}` is not a LoRA A/B matrix of a decoder projection")));
        };
        if layer >= base.num_layers {
            return Err(bad(format!(
                "tensor `{key}` is for layer {layer}, but the base model has {} layers: the adapter is for another base",
                base.num_layers
            )));
        }
        let (din, dout) = dims(base, target);
        let want = match (format, is_a) {
            (AdapterFormat::Peft, true) => [rank, din],
            (AdapterFormat::Peft, false) => [dout, rank],
            (AdapterFormat::Mlx, true) => [din, rank],
            (AdapterFormat::Mlx, false) => [rank, dout],
        };
        if t.dims() != want {
            return Err(bad(format!(
                "tensor `{key}` has shape {:?}, the base model needs {want:?} (rank {rank}): the adapter is for another base shape",
                t.dims()
            )));
        }
        let e = pairs.entry((layer, target)).or_default();
        e[usize::from(!is_a)] = true;
        if non_finite.is_none() {
            let finite = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map(|v| v.iter().all(|x| x.is_finite()))
                .map_err(|e| bad(format!("{key}: {e}")))?;
            if !finite {
                non_finite = Some(key.to_string());
            }
        }
    }
    if pairs.is_empty() {
        return Err(bad(format!("{file} has no LoRA tensors")));
    }
    if let Some(((l, t), _)) = pairs.iter().find(|(_, ab)| !(ab[0] && ab[1])) {
        return Err(bad(format!("layer {l} {}: A or B is missing", t.module_name())));
    }
    let layers: BTreeSet<usize> = pairs.keys().map(|k| k.0).collect();
    let targets: BTreeSet<&str> = pairs.keys().map(|k| k.1.module_name()).collect();
    Ok(AdapterInfo {
        format,
        rank,
        modules: pairs.len(),
        layers: layers.into_iter().collect(),
        targets: targets.into_iter().map(String::from).collect(),
        files: vec![CONFIG_FILE.to_string(), file.to_string()],
        non_finite,
    })
}
