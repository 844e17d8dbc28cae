//! Loading base models: a Hugging Face folder (`config.json` and one or
//! more memory-mapped `*.safetensors`, dense or quantized by mlx) or a
//! llama.cpp GGUF file (llama-arch Q/K rows un-permuted back to the HF
//! layout). Quantized matrices stay quantized unless
//! [`LoadOptions::keep_quantized`] is off.

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result, io_err, json_err};
use crate::frozen::Frozen;
use crate::layer::{Attention, Layer, Mlp};
use crate::lora::Linear;
use crate::model::Decoder;
use crate::quant::{Half, QMatrix};
use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How to load a base model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Storage type of the frozen projection and embedding matrices that
    /// are read dense (f32, bf16 or f16). Norms and biases stay f32. bf16
    /// halves memory; the products widen to f32 a block at a time.
    pub dtype: DType,
    /// Keep quantized weights (GGUF blocks, mlx's packed integers) as they
    /// are stored, dequantized per product a tile at a time; `false`
    /// dequantizes them to `dtype` on load. Only on the CPU.
    pub keep_quantized: bool,
    /// Where the weights live.
    pub device: Device,
}

impl Default for LoadOptions {
    /// f32 for dense matrices, quantized ones kept quantized, on the CPU.
    fn default() -> Self {
        Self { dtype: DType::F32, keep_quantized: true, device: Device::Cpu }
    }
}

impl LoadOptions {
    fn quantized(&self) -> bool {
        self.keep_quantized && self.device.is_cpu()
    }

    /// A quantized matrix as the options want it: kept, or dense in `dtype`.
    fn quant(&self, q: QMatrix) -> Result<Frozen> {
        if self.quantized() {
            Ok(Frozen::from(q))
        } else {
            Ok(Frozen::Dense(q.to_tensor(&Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device)?))
        }
    }
}

/// A source of weights by Hugging Face name.
trait Weights {
    /// A projection or embedding matrix.
    fn matrix(&mut self, name: &str, opts: &LoadOptions) -> Result<Option<Frozen>>;
    /// A norm weight or a bias, in f32.
    fn vector(&mut self, name: &str, opts: &LoadOptions) -> Result<Option<Tensor>>;
}

/// mlx's quantization settings from `config.json`: a default and per-module
/// overrides (mixed-precision conversions).
#[derive(Debug, Default)]
struct MlxQuant {
    default: Option<(usize, usize)>,
    modules: std::collections::HashMap<String, Option<(usize, usize)>>,
}

impl MlxQuant {
    /// Reads `quantization` (or `quantization_config`) from a `config.json`.
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(json_err(path))?;
        let q = match (v.get("quantization"), v.get("quantization_config")) {
            (Some(q), _) => q,
            (None, Some(q)) if q.get("quant_method").is_none() => q,
            (None, Some(q)) => {
                return Err(Error::UnsupportedModel(format!(
                    "{}: quantization method {} (sam reads mlx's affine quantization and GGUF files)",
                    path.display(),
                    q["quant_method"]
                )));
            }
            (None, None) => return Ok(Self::default()),
        };
        let bad = |why: &str| Error::UnsupportedModel(format!("{}: quantization {q}: {why}", path.display()));
        if let Some(mode) = q.get("mode").and_then(|m| m.as_str())
            && mode != "affine"
        {
            return Err(bad(&format!("mode `{mode}` (sam reads mlx's `affine` mode)")));
        }
        let pair = |o: &serde_json::Value| -> Result<(usize, usize)> {
            let get = |k: &str| o.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
            match (get("bits"), get("group_size")) {
                (Some(b), Some(g)) => Ok((b, g)),
                _ => Err(bad("needs `bits` and `group_size`")),
            }
        };
        let mut out = Self { default: Some(pair(q)?), ..Self::default() };
        if let Some(map) = q.as_object() {
            for (k, o) in map {
                if o.is_object() {
                    out.modules.insert(k.clone(), Some(pair(o)?));
                } else if o == &serde_json::Value::Bool(false) {
                    out.modules.insert(k.clone(), None);
                }
            }
        }
        Ok(out)
    }

    /// `(bits, group)` of module `m` (its name without `.weight`).
    fn of(&self, m: &str) -> Option<(usize, usize)> {
        match self.modules.get(m) {
            Some(x) => *x,
            None => self.default,
        }
    }
}

struct HfWeights {
    st: MmapedSafetensors,
    quant: MlxQuant,
}

/// A safetensors view's data as a dense tensor.
fn view_tensor(v: &safetensors::tensor::TensorView<'_>, dev: &Device) -> Result<Tensor> {
    let dt = match v.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        other => return Err(Error::UnsupportedModel(format!("weights of type {other:?}"))),
    };
    Ok(Tensor::from_raw_buffer(v.data(), dt, v.shape(), dev)?)
}

/// mlx scales or biases in the type they were stored in.
fn view_half(v: &safetensors::tensor::TensorView<'_>) -> Result<Half> {
    let d = v.data();
    Ok(match v.dtype() {
        safetensors::Dtype::F32 => {
            Half::F32(d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        safetensors::Dtype::F16 => {
            Half::F16(d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect())
        }
        safetensors::Dtype::BF16 => {
            Half::Bf16(d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect())
        }
        other => return Err(Error::UnsupportedModel(format!("mlx scales of type {other:?}"))),
    })
}

impl Weights for HfWeights {
    fn matrix(&mut self, name: &str, opts: &LoadOptions) -> Result<Option<Frozen>> {
        let Ok(w) = self.st.get(name) else { return Ok(None) };
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let scales = format!("{module}.scales");
        if w.dtype() != safetensors::Dtype::U32 || self.st.get(&scales).is_err() {
            return Ok(Some(Frozen::Dense(view_tensor(&w, &opts.device)?.to_dtype(opts.dtype)?)));
        }
        let Some((bits, group)) = self.quant.of(module) else {
            return Err(Error::UnsupportedModel(format!(
                "{name} is packed (uint32 with scales) but config.json has no quantization for it"
            )));
        };
        let s = self.st.get(&scales)?;
        let b =
            self.st.get(&format!("{module}.biases")).map_err(|_| Error::MissingWeight(format!("{module}.biases")))?;
        let (rows, words) = match w.shape() {
            [r, c] => (*r, *c),
            other => return Err(Error::UnsupportedModel(format!("{name}: packed shape {other:?}"))),
        };
        let cols = words * 32 / bits.max(1);
        if s.shape() != [rows, cols / group.max(1)] || s.shape() != b.shape() {
            return Err(Error::UnsupportedModel(format!(
                "{name}: {bits}-bit groups of {group} give [{rows}, {cols}], but scales are {:?} and biases {:?}",
                s.shape(),
                b.shape()
            )));
        }
        let q = QMatrix::mlx(bits, group, rows, cols, w.data(), view_half(&s)?, view_half(&b)?)?;
        Ok(Some(opts.quant(q)?))
    }

    fn vector(&mut self, name: &str, opts: &LoadOptions) -> Result<Option<Tensor>> {
        let Ok(v) = self.st.get(name) else { return Ok(None) };
        Ok(Some(view_tensor(&v, &opts.device)?.to_dtype(DType::F32)?))
    }
}

struct GgufWeights {
    content: gguf_file::Content,
    file: std::fs::File,
    cfg: ModelConfig,
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

/// The row order that undoes llama.cpp's Q/K permutation: its converter
/// maps HF rows `[h, 2, d/2]` to `[h, d/2, 2]` for interleaved rotary, so
/// HF row `(h, i, j)` is stored at `(h, j, i)`.
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..hd / 2 {
                order.push(h * hd + j * 2 + i);
            }
        }
    }
    order
}

impl GgufWeights {
    /// The heads whose Q/K rows llama.cpp permuted in tensor `name`.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        if self.cfg.arch != Arch::Llama {
            None
        } else if name.contains("self_attn.q_proj") {
            Some(self.cfg.num_heads)
        } else if name.contains("self_attn.k_proj") {
            Some(self.cfg.num_kv_heads)
        } else {
            None
        }
    }

    fn read(&mut self, name: &str) -> Result<Option<candle_core::quantized::QTensor>> {
        let Some(g) = gguf_name(name) else { return Ok(None) };
        if !self.content.tensor_infos.contains_key(&g) {
            return Ok(None);
        }
        Ok(Some(self.content.tensor(&mut self.file, &g, &Device::Cpu)?))
    }
}

impl Weights for GgufWeights {
    fn matrix(&mut self, name: &str, opts: &LoadOptions) -> Result<Option<Frozen>> {
        let Some(q) = self.read(name)? else { return Ok(None) };
        let heads = self.permuted_heads(name);
        let quantized = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if quantized && opts.quantized() {
            let (rows, cols) = q.shape().dims2()?;
            let mut m = QMatrix::ggml(q.dtype(), rows, cols, &q.data()?)?;
            if let Some(h) = heads {
                m = m.select_rows(&unpermuted_order(rows, h));
            }
            return Ok(Some(Frozen::from(m)));
        }
        let mut t = q.dequantize(&Device::Cpu)?;
        if let Some(h) = heads {
            let (rows, _) = t.dims2()?;
            let order = Tensor::from_vec(
                unpermuted_order(rows, h).into_iter().map(|r| r as u32).collect::<Vec<_>>(),
                rows,
                &Device::Cpu,
            )?;
            t = t.index_select(&order, 0)?;
        }
        Ok(Some(Frozen::Dense(t.to_dtype(opts.dtype)?.to_device(&opts.device)?)))
    }

    fn vector(&mut self, name: &str, opts: &LoadOptions) -> Result<Option<Tensor>> {
        let Some(q) = self.read(name)? else { return Ok(None) };
        Ok(Some(q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?.to_device(&opts.device)?))
    }
}

pub(crate) fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
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
        /// Quantize the matrices in mlx's affine format with this many bits
        /// (groups of 64); `None`: dense.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bits: Option<usize>,
    },
}

impl ModelSource {
    /// A random model of shape `config` (see [`random_model`]).
    pub fn random(config: ModelConfig, seed: u64) -> Self {
        ModelSource::Random { config, seed, bits: None }
    }

    /// A random model of shape `config` whose matrices are quantized in
    /// mlx's affine format with `bits` bits (groups of 64), as a 4-bit mlx
    /// folder of that shape would be.
    pub fn random_quantized(config: ModelConfig, bits: usize, seed: u64) -> Self {
        ModelSource::Random { config, seed, bits: Some(bits) }
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
            ModelSource::Random { config, seed, bits: None } => random_model(config.clone(), opts, *seed),
            ModelSource::Random { config, seed, bits: Some(b) } => {
                if opts.keep_quantized {
                    random_quantized_model(config.clone(), *b, *seed)
                } else {
                    random_quantized_model(config.clone(), *b, *seed)?.dequantized(opts.dtype)
                }
            }
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
            ModelSource::Random { config, seed, bits } => write!(
                f,
                "random {:?} model ({} layers, hidden {}{}, seed {seed})",
                config.arch,
                config.num_layers,
                config.hidden_size,
                bits.map(|b| format!(", {b}-bit")).unwrap_or_default()
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
        let mut w = HfWeights { st, quant: MlxQuant::read(&path.join("config.json"))? };
        build(cfg, &mut w, opts)
    } else if path.is_file() {
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::UnsupportedModel(format!("{}: not a readable GGUF file: {e}", path.display())))?;
        let cfg = ModelConfig::from_gguf(&content)?;
        let mut w = GgufWeights { content, file, cfg: cfg.clone() };
        build(cfg, &mut w, opts)
    } else {
        Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model"),
        })
    }
}

fn build(cfg: ModelConfig, w: &mut dyn Weights, opts: &LoadOptions) -> Result<Decoder> {
    let missing = |name: &str| Error::MissingWeight(name.to_string());
    let mut mat = |name: &str| -> Result<Frozen> { w.matrix(name, opts)?.ok_or_else(|| missing(name)) };
    let embed = mat("model.embed_tokens.weight")?;
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(mat("lm_head.weight")?) };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let mut vec = |name: String| -> Result<Tensor> { w.vector(&name, opts)?.ok_or_else(|| missing(&name)) };
        let attn_norm = vec(format!("{p}.input_layernorm.weight"))?;
        let mlp_norm = vec(format!("{p}.post_attention_layernorm.weight"))?;
        let mut bias = |m: &str| -> Result<Option<Tensor>> {
            if cfg.attention_bias { Ok(Some(vec(format!("{p}.{m}.bias"))?)) } else { Ok(None) }
        };
        let (bq, bk, bv) = (bias("self_attn.q_proj")?, bias("self_attn.k_proj")?, bias("self_attn.v_proj")?);
        let mut lin = |m: &str, b: Option<Tensor>| -> Result<Linear> {
            let name = format!("{p}.{m}.weight");
            Ok(Linear::new(w.matrix(&name, opts)?.ok_or_else(|| missing(&name))?, b))
        };
        layers.push(Layer {
            attn_norm,
            attn: Attention {
                q: lin("self_attn.q_proj", bq)?,
                k: lin("self_attn.k_proj", bk)?,
                v: lin("self_attn.v_proj", bv)?,
                o: lin("self_attn.o_proj", None)?,
            },
            mlp_norm,
            mlp: Mlp {
                gate: lin("mlp.gate_proj", None)?,
                up: lin("mlp.up_proj", None)?,
                down: lin("mlp.down_proj", None)?,
            },
        });
    }
    let norm = w.vector("model.norm.weight", opts)?.ok_or_else(|| missing("model.norm.weight"))?;
    Ok(Decoder::from_parts(cfg, embed, layers, norm, lm_head))
}

/// A model of the given shape with random weights (uniform, standard
/// deviation 0.02; norms 1; biases small), for memory and speed tests of
/// shapes sam has no checkpoint for. Deterministic in `seed`. Weights are
/// generated directly in the requested type, so no f32 copy of a bf16 model
/// ever exists.
pub fn random_model(cfg: ModelConfig, opts: &LoadOptions, seed: u64) -> Result<Decoder> {
    random_decoder(cfg, opts, seed, None)
}

/// [`random_model`] with its matrices (embeddings included) quantized in
/// mlx's affine format (`bits`, groups of 64) as they are generated, so no
/// dense copy of the model ever exists.
pub(crate) fn random_quantized_model(cfg: ModelConfig, bits: usize, seed: u64) -> Result<Decoder> {
    random_decoder(cfg, &LoadOptions::default(), seed, Some(bits))
}

fn random_decoder(cfg: ModelConfig, opts: &LoadOptions, seed: u64, bits: Option<usize>) -> Result<Decoder> {
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
    let mut mat = |rows: usize, cols: usize| -> Result<Frozen> {
        let n = rows * cols;
        if let Some(bits) = bits {
            let q =
                QMatrix::quantize_mlx_rows(rows, cols, bits, 64, |_, row| row.iter_mut().for_each(|v| *v = next()))?;
            return Ok(Frozen::from(q));
        }
        Ok(Frozen::Dense(match opts.dtype {
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
        }))
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

    /// The shape of Qwen2.5-3B (36 layers, hidden 2048, MLP 11008, 16 query
    /// / 2 key-value heads of 128, vocabulary 151936, tied embeddings, q/k/v
    /// biases, rope theta 1e6).
    pub fn qwen2_5_3b() -> Self {
        ModelConfig {
            hidden_size: 2048,
            intermediate_size: 11_008,
            num_layers: 36,
            num_heads: 16,
            ..Self::qwen2_5_coder_1_5b()
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
