//! Model configuration: the on-disk forms (`config.json`, GGUF metadata) and
//! the resolved [`ModelConfig`] the decoder is built from.

use crate::error::{Error, Result, io_err, json_err};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which decoder family a model belongs to. Both share one implementation;
/// the family decides the defaults (Qwen2: q/k/v biases) and the GGUF layout
/// (llama-arch GGUF stores Q/K rows permuted for interleaved rotary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama, SmolLM, Mistral-style decoders without attention biases.
    Llama,
    /// Qwen2 / Qwen2.5: biases on the q, k and v projections.
    Qwen2,
}

/// The resolved configuration of a decoder model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The decoder family.
    pub arch: Arch,
    /// Number of token embeddings.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Rotary embedding base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether q, k and v projections carry a bias.
    pub attention_bias: bool,
    /// Whether the output head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token, when known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens, when known.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

/// The subset of a Hugging Face `config.json` that sam reads.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rms_norm_eps: Option<f64>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<OneOrMany>,
    eos_token_id: Option<OneOrMany>,
    hidden_act: Option<String>,
    rope_scaling: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(json_err(path))?;
        let kind = hf
            .model_type
            .clone()
            .or_else(|| hf.architectures.as_ref().and_then(|a| a.first().cloned()))
            .unwrap_or_default()
            .to_lowercase();
        let arch = if kind.starts_with("qwen2") {
            Arch::Qwen2
        } else if kind.starts_with("llama") || kind.starts_with("mistral") {
            Arch::Llama
        } else {
            return Err(Error::UnsupportedModel(format!("model_type `{kind}`: sam supports llama and qwen2 decoders")));
        };
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(Error::UnsupportedModel(format!("hidden_act `{act}`")));
        }
        if let Some(s) = &hf.rope_scaling
            && !s.is_null()
        {
            let ty = s.get("rope_type").or_else(|| s.get("type"));
            if ty.and_then(|t| t.as_str()) != Some("default") {
                return Err(Error::UnsupportedModel(format!("rope_scaling {s}")));
            }
        }
        let rope_theta =
            hf.rope_theta.or_else(|| hf.rope_parameters.as_ref().and_then(|p| p.rope_theta)).unwrap_or(10_000.0);
        let many = |v: Option<OneOrMany>| match v {
            None => Vec::new(),
            Some(OneOrMany::One(x)) => vec![x],
            Some(OneOrMany::Many(v)) => v,
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rope_theta,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            attention_bias: hf.attention_bias.unwrap_or(arch == Arch::Qwen2),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
            bos_token_id: many(hf.bos_token_id).first().copied(),
            eos_token_ids: many(hf.eos_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the configuration from a GGUF file's metadata (`llama.*` or
    /// `qwen2.*` keys). Tied embeddings are detected by the absence of
    /// `output.weight`, attention biases by the presence of `blk.0.attn_q.bias`.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| md.get(k);
        let arch_name = get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .ok_or_else(|| Error::UnsupportedModel("GGUF without general.architecture".into()))?;
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::UnsupportedModel(format!(
                    "GGUF architecture `{other}`: sam supports llama and qwen2"
                )));
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req_usize = |k: &str| -> Result<usize> {
            let v = get(&key(k)).ok_or_else(|| Error::UnsupportedModel(format!("GGUF metadata lacks `{}`", key(k))))?;
            Ok(v.to_u64().or_else(|_| v.to_u32().map(u64::from))? as usize)
        };
        let opt_f64 = |k: &str| -> Option<f64> {
            get(&key(k)).and_then(|v| v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok())
        };
        let hidden_size = req_usize("embedding_length")?;
        let num_heads = req_usize("attention.head_count")?;
        let num_kv_heads = req_usize("attention.head_count_kv").unwrap_or(num_heads);
        let vocab_size = match req_usize("vocab_size") {
            Ok(v) => v,
            Err(_) => match get("tokenizer.ggml.tokens") {
                Some(v) => v.to_vec()?.len(),
                None => content
                    .tensor_infos
                    .get("token_embd.weight")
                    .ok_or_else(|| Error::MissingWeight("token_embd.weight".into()))?
                    .shape
                    .dims()[0],
            },
        };
        let tok_u32 = |k: &str| get(k).and_then(|v| v.to_u32().ok());
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: req_usize("feed_forward_length")?,
            num_layers: req_usize("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim: req_usize("attention.key_length")
                .or_else(|_| req_usize("rope.dimension_count"))
                .unwrap_or(hidden_size / num_heads),
            rope_theta: opt_f64("rope.freq_base").unwrap_or(10_000.0),
            rms_norm_eps: opt_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: req_usize("context_length").unwrap_or(4096),
            bos_token_id: tok_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok_u32("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the shape arithmetic the decoder relies on.
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::InvalidConfig(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::InvalidConfig(format!("odd head_dim {}", self.head_dim)));
        }
        Ok(())
    }

    /// The Hugging Face `config.json` for this configuration (used by `fuse`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (model_type, archi) = match self.arch {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        };
        serde_json::json!({
            "architectures": [archi],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => serde_json::json!(one),
                many => serde_json::json!(many),
            },
            "torch_dtype": "float32",
        })
    }
}
