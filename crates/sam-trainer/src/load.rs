//! Loading base models: a Hugging Face folder (`config.json` and one or
//! more memory-mapped `*.safetensors`) or a llama.cpp GGUF file
//! (dequantised; llama-arch Q/K rows un-permuted back to the HF layout).

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result, io_err};
use crate::lora::Linear;
use crate::model::{Attention, Decoder, Layer, Mlp};
use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// How to load a base model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Storage type of the frozen projection and embedding matrices (f32,
    /// bf16 or f16). Norms and biases stay f32. bf16 halves memory; candle
    /// widens to f32 inside the matmul.
    pub dtype: DType,
    /// Where the weights live.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu }
    }
}

/// A source of tensors by Hugging Face name.
trait Weights {
    fn get(&mut self, name: &str) -> Result<Option<Tensor>>;
}

struct HfWeights {
    st: MmapedSafetensors,
    device: Device,
}

impl Weights for HfWeights {
    fn get(&mut self, name: &str) -> Result<Option<Tensor>> {
        match self.st.get(name) {
            Ok(_) => Ok(Some(self.st.load(name, &self.device)?)),
            Err(_) => Ok(None),
        }
    }
}

struct GgufWeights {
    content: gguf_file::Content,
    file: std::fs::File,
    cfg: ModelConfig,
    device: Device,
}

fn gguf_name(hf: &str) -> Option<String> {
    Some(match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (i, rest) = rest.split_once('.')?;
            let (module, kind) = rest.rsplit_once('.')?;
            let g = match module {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{i}.{g}.{kind}")
        }
    })
}

/// Undo llama.cpp's Q/K row permutation (its converter maps HF rows
/// `[h, 2, d/2]` to `[h, d/2, 2]` for interleaved rotary).
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

impl Weights for GgufWeights {
    fn get(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(g) = gguf_name(name) else {
            return Ok(None);
        };
        if !self.content.tensor_infos.contains_key(&g) {
            return Ok(None);
        }
        let q = self.content.tensor(&mut self.file, &g, &self.device)?;
        let mut t = q.dequantize(&self.device)?;
        if self.cfg.arch == Arch::Llama {
            if name.contains("self_attn.q_proj") {
                t = unpermute(&t, self.cfg.num_heads)?;
            } else if name.contains("self_attn.k_proj") {
                t = unpermute(&t, self.cfg.num_kv_heads)?;
            }
        }
        Ok(Some(t))
    }
}

fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::UnsupportedModel(format!("{}: no *.safetensors files", dir.display())));
    }
    Ok(files)
}

/// Reads a model's configuration without loading its weights.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    if path.is_dir() {
        ModelConfig::from_hf_json(&path.join("config.json"))
    } else {
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        let content = gguf_file::Content::read(&mut f)?;
        ModelConfig::from_gguf(&content)
    }
}

/// Loads a base model from a Hugging Face folder or a `.gguf` file.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Decoder> {
    if path.is_dir() {
        let cfg = ModelConfig::from_hf_json(&path.join("config.json"))?;
        let files = safetensor_files(path)?;
        // SAFETY: the files are memory-mapped read-only; sam does not write
        // to base model files while a model is loaded.
        let st = unsafe { MmapedSafetensors::multi(&files)? };
        let mut w = HfWeights { st, device: opts.device.clone() };
        build(cfg, &mut w, opts)
    } else if path.is_file() {
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::UnsupportedModel(format!("{}: not a readable GGUF file: {e}", path.display())))?;
        let cfg = ModelConfig::from_gguf(&content)?;
        let mut w = GgufWeights { content, file, cfg: cfg.clone(), device: opts.device.clone() };
        build(cfg, &mut w, opts)
    } else {
        Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model"),
        })
    }
}

fn build(cfg: ModelConfig, w: &mut dyn Weights, opts: &LoadOptions) -> Result<Decoder> {
    let mut req = |name: &str, dt: DType| -> Result<Tensor> {
        let t = w.get(name)?.ok_or_else(|| Error::MissingWeight(name.to_string()))?;
        Ok(t.to_dtype(dt)?)
    };
    let mat = opts.dtype;
    let f32 = DType::F32;
    let embed = req("model.embed_tokens.weight", mat)?;
    let norm = req("model.norm.weight", f32)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let lin = |req: &mut dyn FnMut(&str, DType) -> Result<Tensor>, m: &str, bias: bool| -> Result<Linear> {
            let wt = req(&format!("{p}.{m}.weight"), mat)?;
            let b = if bias { Some(req(&format!("{p}.{m}.bias"), f32)?) } else { None };
            Ok(Linear::new(wt, b))
        };
        let bias = cfg.attention_bias;
        layers.push(Layer {
            attn_norm: req(&format!("{p}.input_layernorm.weight"), f32)?,
            attn: Attention {
                q: lin(&mut req, "self_attn.q_proj", bias)?,
                k: lin(&mut req, "self_attn.k_proj", bias)?,
                v: lin(&mut req, "self_attn.v_proj", bias)?,
                o: lin(&mut req, "self_attn.o_proj", false)?,
            },
            mlp_norm: req(&format!("{p}.post_attention_layernorm.weight"), f32)?,
            mlp: Mlp {
                gate: lin(&mut req, "mlp.gate_proj", false)?,
                up: lin(&mut req, "mlp.up_proj", false)?,
                down: lin(&mut req, "mlp.down_proj", false)?,
            },
        });
    }
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(req("lm_head.weight", mat)?) };
    Ok(Decoder::from_parts(cfg, embed, layers, norm, lm_head))
}
