//! Adapters on disk: Hugging Face PEFT's layout (the default) and mlx-lm's.
//!
//! PEFT: `adapter_config.json` and `adapter_model.safetensors` with keys
//! like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
//! (`A: [r, in]`, `B: [out, r]`).
//! mlx-lm: `adapter_config.json` with `lora_parameters` and
//! `adapters.safetensors` with `model.layers.0.self_attn.q_proj.lora_a`
//! (`[in, r]`, transposed) and `lora_b` (`[r, out]`).

use crate::error::{Error, Result, io_err, json_err};
use crate::lora::{Layers, LoraConfig, Target};
use crate::model::Decoder;
use candle_core::{DType, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Which on-disk layout an adapter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterFormat {
    /// Hugging Face PEFT (`adapter_model.safetensors`).
    Peft,
    /// mlx-lm (`adapters.safetensors`).
    Mlx,
}

const PEFT_FILE: &str = "adapter_model.safetensors";
const MLX_FILE: &str = "adapters.safetensors";
const CONFIG_FILE: &str = "adapter_config.json";

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(json_err(path))?;
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

fn layer_list(model: &Decoder, cfg: &LoraConfig) -> Vec<usize> {
    cfg.layers.indices(model.config().num_layers)
}

/// Writes the model's adapters to `dir` in the given layout.
/// `base_model` is recorded as `base_model_name_or_path` (PEFT).
pub fn save_adapter(model: &Decoder, dir: &Path, format: AdapterFormat, base_model: Option<&str>) -> Result<()> {
    let cfg = model.lora_config().ok_or_else(|| Error::InvalidAdapter("the model has no adapter to save".into()))?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in model.lora_vars() {
        let t = var.as_tensor().detach();
        match format {
            AdapterFormat::Peft => {
                tensors.insert(format!("base_model.model.{name}.weight"), t.contiguous()?);
            }
            AdapterFormat::Mlx => {
                let name = name.replace(".lora_A", ".lora_a").replace(".lora_B", ".lora_b");
                tensors.insert(name, t.t()?.contiguous()?);
            }
        }
    }
    let n_layers = model.config().num_layers;
    match format {
        AdapterFormat::Peft => {
            let path = dir.join(PEFT_FILE);
            candle_core::safetensors::save(&tensors, &path)?;
            let layers = match cfg.layers {
                Layers::All => serde_json::Value::Null,
                Layers::Last(_) => serde_json::json!(layer_list(model, cfg)),
            };
            let targets: Vec<&str> = cfg.targets.iter().map(|t| t.module_name()).collect();
            write_json(
                &dir.join(CONFIG_FILE),
                &serde_json::json!({
                    "peft_type": "LORA",
                    "task_type": "CAUSAL_LM",
                    "base_model_name_or_path": base_model,
                    "r": cfg.rank,
                    "lora_alpha": cfg.alpha,
                    "lora_dropout": cfg.dropout,
                    "use_rslora": cfg.rslora,
                    "target_modules": targets,
                    "layers_to_transform": layers,
                    "bias": "none",
                    "fan_in_fan_out": false,
                    "inference_mode": true,
                    "init_lora_weights": true,
                }),
            )
        }
        AdapterFormat::Mlx => {
            let path = dir.join(MLX_FILE);
            candle_core::safetensors::save(&tensors, &path)?;
            let num_layers = match cfg.layers {
                Layers::All => n_layers,
                Layers::Last(k) => k.min(n_layers),
            };
            let keys: Vec<&str> = cfg.targets.iter().map(|t| t.path()).collect();
            write_json(
                &dir.join(CONFIG_FILE),
                &serde_json::json!({
                    "fine_tune_type": "lora",
                    "num_layers": num_layers,
                    "lora_parameters": {
                        "rank": cfg.rank,
                        "scale": cfg.scale(),
                        "dropout": cfg.dropout,
                        "keys": keys,
                    },
                }),
            )
        }
    }
}

/// Detects an adapter folder's layout.
pub fn detect_format(dir: &Path) -> Result<AdapterFormat> {
    if dir.join(PEFT_FILE).is_file() {
        Ok(AdapterFormat::Peft)
    } else if dir.join(MLX_FILE).is_file() {
        Ok(AdapterFormat::Mlx)
    } else {
        Err(Error::InvalidAdapter(format!("{}: neither {PEFT_FILE} nor {MLX_FILE}", dir.display())))
    }
}

/// Parses `model.layers.{i}.{path}.{suffix}` into layer and target.
fn parse_key(key: &str) -> Option<(usize, Target, bool)> {
    let rest = key.split("model.layers.").nth(1)?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let is_a = rest.contains(".lora_A") || rest.contains(".lora_a");
    let is_b = rest.contains(".lora_B") || rest.contains(".lora_b");
    if !is_a && !is_b {
        return None;
    }
    let module = rest.split(".lora_").next()?;
    let t = Target::parse(module).ok()?;
    Some((i, t, is_a))
}

/// Loads an adapter (PEFT or mlx-lm layout) onto the model, replacing any
/// attached one, and returns its configuration.
pub fn load_adapter(model: &mut Decoder, dir: &Path) -> Result<LoraConfig> {
    let format = detect_format(dir)?;
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(json_err(&cfg_path))?;
    let file = dir.join(match format {
        AdapterFormat::Peft => PEFT_FILE,
        AdapterFormat::Mlx => MLX_FILE,
    });
    let tensors = candle_core::safetensors::load(&file, model.device())?;
    let mut pairs: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (key, t) in tensors {
        let Some((i, target, is_a)) = parse_key(&key) else {
            return Err(Error::InvalidAdapter(format!("unexpected tensor `{key}`")));
        };
        let t = t.to_dtype(DType::F32)?;
        let t = match format {
            AdapterFormat::Peft => t,
            AdapterFormat::Mlx => t.t()?.contiguous()?,
        };
        let e = pairs.entry((i, target)).or_default();
        if is_a { e.0 = Some(t) } else { e.1 = Some(t) }
    }
    let bad = |what: &str| Error::InvalidAdapter(format!("{}: {what}", cfg_path.display()));
    let (rank_json, scale, dropout, rslora, alpha) = match format {
        AdapterFormat::Peft => {
            let r = json["r"].as_u64().ok_or_else(|| bad("no `r`"))? as usize;
            let alpha = json["lora_alpha"].as_f64().unwrap_or(r as f64);
            let rslora = json["use_rslora"].as_bool().unwrap_or(false);
            let scale = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
            let dropout = json["lora_dropout"].as_f64().unwrap_or(0.0) as f32;
            (r, scale, dropout, rslora, alpha)
        }
        AdapterFormat::Mlx => {
            let p = &json["lora_parameters"];
            let r = p["rank"].as_u64().ok_or_else(|| bad("no `lora_parameters.rank`"))? as usize;
            let scale = p["scale"].as_f64().unwrap_or(20.0);
            let dropout = p["dropout"].as_f64().unwrap_or(0.0) as f32;
            (r, scale, dropout, false, scale * r as f64)
        }
    };
    model.detach_lora();
    let n = model.config().num_layers;
    let mut layers = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for ((i, t), (a, b)) in pairs {
        if i >= n {
            return Err(Error::InvalidAdapter(format!("layer {i} but the model has {n}")));
        }
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::InvalidAdapter(format!("layer {i} {t:?}: A or B missing")));
        };
        if a.dims()[0] != rank_json {
            return Err(bad(&format!("rank {} in tensors, {rank_json} in config", a.dims()[0])));
        }
        model.layers[i].linear_mut(t).set_lora(a, b, scale, dropout)?;
        layers.insert(i);
        targets.insert(t);
    }
    if layers.is_empty() {
        return Err(bad("no LoRA tensors"));
    }
    let first = *layers.iter().next().expect("non-empty");
    let layers_sel = if first == 0 && layers.len() == n { Layers::All } else { Layers::Last(n - first) };
    let cfg = LoraConfig {
        rank: rank_json,
        alpha,
        dropout,
        targets: targets.into_iter().collect(),
        layers: layers_sel,
        rslora,
    };
    model.set_lora_config(Some(cfg.clone()));
    Ok(cfg)
}

/// Writes the model's base weights (with any adapter merged beforehand by
/// [`Decoder::merge_lora`]) as a Hugging Face folder: `config.json` and
/// `model.safetensors`.
pub fn save_hf_model(model: &Decoder, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tensors: HashMap<String, Tensor> =
        model.named_weights()?.into_iter().map(|(k, t)| Ok((k, t.contiguous()?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let mut cfg = model.config().to_hf_json();
    let dt = match model.embed.dtype() {
        Some(DType::BF16) => "bfloat16",
        Some(DType::F16) => "float16",
        _ => "float32",
    };
    cfg["torch_dtype"] = serde_json::json!(dt);
    write_json(&dir.join("config.json"), &cfg)
}
