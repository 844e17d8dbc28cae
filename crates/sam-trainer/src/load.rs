//! Loading base models: a Hugging Face folder (`config.json` and one or
//! more memory-mapped `*.safetensors`) or a llama.cpp GGUF file
//! (dequantised; llama-arch Q/K rows un-permuted back to the HF layout).

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result, io_err};
use crate::layer::{Attention, Layer, Mlp};
use crate::lora::Linear;
use crate::model::Decoder;
use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
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

/// Where a base model comes from: a Hugging Face folder or a GGUF file
/// (what users train on), or a random model of a given shape (examples,
/// memory and speed tests of shapes sam has no checkpoint for). In a run's
/// `config.json` a path is a plain string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelSource {
    /// A Hugging Face folder or a `.gguf` file.
    Path(PathBuf),
    /// [`random_model`] of this shape and seed.
    Random {
        /// The shape.
        config: ModelConfig,
        /// The weights' seed.
        seed: u64,
    },
}

impl ModelSource {
    /// A random model of shape `config` (see [`random_model`]).
    pub fn random(config: ModelConfig, seed: u64) -> Self {
        ModelSource::Random { config, seed }
    }

    /// The folder or file, for a model on disk.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelSource::Path(p) => Some(p),
            ModelSource::Random { .. } => None,
        }
    }

    /// Loads the model (see [`load_model`] and [`random_model`]).
    pub fn load(&self, opts: &LoadOptions) -> Result<Decoder> {
        match self {
            ModelSource::Path(p) => load_model(p, opts),
            ModelSource::Random { config, seed } => random_model(config.clone(), opts, *seed),
        }
    }

    /// The model's configuration, without loading its weights.
    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            ModelSource::Path(p) => read_config(p),
            ModelSource::Random { config, .. } => Ok(config.clone()),
        }
    }
}

impl<P: Into<PathBuf>> From<P> for ModelSource {
    fn from(p: P) -> Self {
        ModelSource::Path(p.into())
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Path(p) => write!(f, "{}", p.display()),
            ModelSource::Random { config, seed } => write!(
                f,
                "random {:?} model ({} layers, hidden {}, seed {seed})",
                config.arch, config.num_layers, config.hidden_size
            ),
        }
    }
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

/// A model of the given shape with random weights (uniform, standard
/// deviation 0.02; norms 1; biases small), for memory and speed tests of
/// shapes sam has no checkpoint for. Deterministic in `seed`. Weights are
/// generated directly in the requested type, so no f32 copy of a bf16 model
/// ever exists.
pub fn random_model(cfg: ModelConfig, opts: &LoadOptions, seed: u64) -> Result<Decoder> {
    cfg.validate()?;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bound = 0.02f32 * 3f32.sqrt();
    let mut next = move || {
        // xorshift64*: fast and good enough for test weights.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    };
    let dev = &opts.device;
    let mut mat = |rows: usize, cols: usize| -> Result<Tensor> {
        let n = rows * cols;
        Ok(match opts.dtype {
            DType::BF16 => {
                let v: Vec<half::bf16> = (0..n).map(|_| half::bf16::from_f32(next())).collect();
                Tensor::from_vec(v, (rows, cols), dev)?
            }
            DType::F16 => {
                let v: Vec<half::f16> = (0..n).map(|_| half::f16::from_f32(next())).collect();
                Tensor::from_vec(v, (rows, cols), dev)?
            }
            _ => {
                let v: Vec<f32> = (0..n).map(|_| next()).collect();
                Tensor::from_vec(v, (rows, cols), dev)?.to_dtype(opts.dtype)?
            }
        })
    };
    let ones = |n: usize| Tensor::ones(n, DType::F32, dev);
    let (h, kv) = (cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim);
    let q = cfg.num_heads * cfg.head_dim;
    let embed = mat(cfg.vocab_size, h)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for _ in 0..cfg.num_layers {
        let bias = |n: usize| -> Result<Option<Tensor>> {
            Ok(if cfg.attention_bias { Some(Tensor::full(0.01f32, n, dev)?) } else { None })
        };
        layers.push(Layer {
            attn_norm: ones(h)?,
            attn: Attention {
                q: Linear::new(mat(q, h)?, bias(q)?),
                k: Linear::new(mat(kv, h)?, bias(kv)?),
                v: Linear::new(mat(kv, h)?, bias(kv)?),
                o: Linear::new(mat(h, q)?, None),
            },
            mlp_norm: ones(h)?,
            mlp: Mlp {
                gate: Linear::new(mat(cfg.intermediate_size, h)?, None),
                up: Linear::new(mat(cfg.intermediate_size, h)?, None),
                down: Linear::new(mat(h, cfg.intermediate_size)?, None),
            },
        });
    }
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(mat(cfg.vocab_size, h)?) };
    Ok(Decoder::from_parts(cfg, embed, layers, ones(h)?, lm_head))
}

impl ModelConfig {
    /// A tiny Llama-shaped model (2 layers, hidden 64, 4 query / 2
    /// key-value heads of 16, MLP 128, vocabulary 256): for examples and
    /// tests with [`random_model`] / [`ModelSource::random`].
    pub fn tiny() -> Self {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            attention_bias: false,
            tie_word_embeddings: true,
            max_position_embeddings: 512,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }

    /// The shape of Qwen2.5-Coder-1.5B (28 layers, hidden 1536, MLP 8960,
    /// 12 query / 2 key-value heads of 128, vocabulary 151936, tied
    /// embeddings, q/k/v biases, rope theta 1e6).
    pub fn qwen2_5_coder_1_5b() -> Self {
        ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: 151_936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_layers: 28,
            num_heads: 12,
            num_kv_heads: 2,
            head_dim: 128,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            attention_bias: true,
            tie_word_embeddings: true,
            max_position_embeddings: 32_768,
            bos_token_id: None,
            eos_token_ids: vec![151_643],
        }
    }
}
