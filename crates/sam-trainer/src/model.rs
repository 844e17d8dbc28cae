//! The decoder: Llama and Qwen2 in one configurable implementation.
//!
//! RMSNorm, rotary embeddings (rotate-half, the Hugging Face layout), grouped
//! query attention with a causal mask, a SwiGLU MLP, tied or separate output
//! head. Every projection is a [`Linear`] that can carry a LoRA adapter. All
//! activations are f32; frozen weights may be stored in bf16/f16 and are
//! widened per matmul.
//!
//! On the CPU without a KV cache or LoRA dropout (training, evaluation) each
//! layer runs as one fused graph node with a hand-written backward
//! (the private `fused` module). Otherwise (generation, dropout, other devices) the
//! layer is built from candle ops that all have a backward (no fused
//! `softmax_last_dim`, `rms_norm` or `rope`, which silently cut gradients);
//! a test checks that both paths give the same loss and gradients.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::lora::{DropoutRng, Linear, LoraConfig, Target};
use candle_core::{D, DType, Device, Tensor, TensorId, Var};
use std::collections::HashMap;
use std::sync::Arc;

type CkptGrads = crate::fused::SideGrads;
use rand::{SeedableRng, rngs::StdRng};

/// One decoder layer's attention projections.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
}

/// One decoder layer's SwiGLU MLP.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Tensor,
    pub(crate) attn: Attention,
    pub(crate) mlp_norm: Tensor,
    pub(crate) mlp: Mlp,
}

impl Layer {
    pub(crate) fn linear(&self, t: Target) -> &Linear {
        match t {
            Target::Q => &self.attn.q,
            Target::K => &self.attn.k,
            Target::V => &self.attn.v,
            Target::O => &self.attn.o,
            Target::Gate => &self.mlp.gate,
            Target::Up => &self.mlp.up,
            Target::Down => &self.mlp.down,
        }
    }

    pub(crate) fn linear_mut(&mut self, t: Target) -> &mut Linear {
        match t {
            Target::Q => &mut self.attn.q,
            Target::K => &mut self.attn.k,
            Target::V => &mut self.attn.v,
            Target::O => &mut self.attn.o,
            Target::Gate => &mut self.mlp.gate,
            Target::Up => &mut self.mlp.up,
            Target::Down => &mut self.mlp.down,
        }
    }
}

/// Keys and values of past positions, one entry per layer, for generation.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many positions the cache holds.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a forward pass runs.
#[derive(Debug, Clone, Copy)]
pub struct Mode<'a> {
    /// Apply LoRA adapters (false: the base model alone).
    pub adapter: bool,
    /// Dropout mask source in training; `None` at inference.
    pub dropout: Option<&'a DropoutRng>,
}

impl Mode<'_> {
    /// Inference with adapters.
    pub const INFER: Mode<'static> = Mode { adapter: true, dropout: None };
    /// Inference with adapters switched off.
    pub const BASE: Mode<'static> = Mode { adapter: false, dropout: None };
}

/// A Llama/Qwen2 decoder with frozen base weights and optional LoRA adapters.
#[derive(Debug)]
pub struct Decoder {
    cfg: ModelConfig,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Option<Tensor>,
    lora: Option<LoraConfig>,
    device: Device,
    checkpoint: usize,
    ckpt_grads: CkptGrads,
    pool: Arc<crate::fused::Pool>,
    fused: bool,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// `x: [b, h, t, d]`, `cos`/`sin`: `[t, d]` (halves repeated).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

impl Decoder {
    pub(crate) fn from_parts(
        cfg: ModelConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Option<Tensor>,
    ) -> Self {
        let device = embed.device().clone();
        Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            lora: None,
            device,
            checkpoint: 0,
            ckpt_grads: CkptGrads::default(),
            pool: Arc::default(),
            fused: true,
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The LoRA configuration of the attached adapters, if any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Attaches fresh adapters (A random from `seed`, B zero) per `cfg`.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let n = self.layers.len();
        for i in cfg.layers.indices(n) {
            for &t in &cfg.targets {
                self.layers[i].linear_mut(t).attach(cfg, &mut rng)?;
            }
        }
        self.lora = Some(cfg.clone());
        Ok(())
    }

    pub(crate) fn set_lora_config(&mut self, cfg: Option<LoraConfig>) {
        self.lora = cfg;
    }

    /// Removes all adapters.
    pub fn detach_lora(&mut self) {
        for l in &mut self.layers {
            for t in Target::ALL {
                l.linear_mut(t).take_lora();
            }
        }
        self.lora = None;
    }

    /// Folds all adapters into the base weights (`sam fuse`).
    pub fn merge_lora(&mut self) -> Result<()> {
        for l in &mut self.layers {
            for t in Target::ALL {
                l.linear_mut(t).merge()?;
            }
        }
        self.lora = None;
        Ok(())
    }

    /// A short fingerprint of the base model: its configuration and a sample
    /// of its weights (the first embedding rows, the last layer's output
    /// projection, the final norm). Caches keyed on it are not reused for
    /// another model.
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(serde_json::to_string(&self.cfg).unwrap_or_default().as_bytes());
        let mut sample = |t: &Tensor, rows: usize| -> Result<()> {
            let t = if t.rank() >= 2 { t.narrow(0, 0, rows.min(t.dim(0)?))? } else { t.clone() };
            h.update(format!("{:?}", t.dtype()).as_bytes());
            for x in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
                h.update(&x.to_le_bytes());
            }
            Ok(())
        };
        sample(&self.embed, 64)?;
        if let Some(last) = self.layers.last() {
            sample(last.attn.o.weight(), 16)?;
        }
        sample(&self.norm, 0)?;
        Ok(h.finalize().to_hex()[..16].to_string())
    }

    /// The trainable variables, named like PEFT's modules without the
    /// `base_model.model.` prefix and `.weight` suffix:
    /// `model.layers.3.self_attn.q_proj.lora_A`.
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(w) = l.linear(t).lora() {
                    let base = format!("model.layers.{i}.{}", t.path());
                    out.push((format!("{base}.lora_A"), w.a.clone()));
                    out.push((format!("{base}.lora_B"), w.b.clone()));
                }
            }
        }
        out
    }

    fn rope_tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim;
        let inv: Vec<f32> =
            (0..hd / 2).map(|i| (1.0 / self.cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        let mut cos = Vec::with_capacity(t * hd);
        let mut sin = Vec::with_capacity(t * hd);
        for p in offset..offset + t {
            for _half in 0..2 {
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok((Tensor::from_vec(cos, (t, hd), &self.device)?, Tensor::from_vec(sin, (t, hd), &self.device)?))
    }

    /// Final hidden states (after the last norm), `[b * t, hidden]`, for
    /// token ids `[b, t]`. With `cache`, the ids continue the cached prefix.
    pub fn hidden(&self, ids: &Tensor, mode: Mode<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden_prenorm(ids, mode, cache, true)?;
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)
    }

    /// Whether the fused CPU path ([`crate::fused`]) can run every layer.
    fn fused_layers(&self) -> bool {
        self.fused && self.device.is_cpu() && self.layers.iter().all(crate::fused::layer_supported)
    }

    /// Switches the fused CPU path off (tests compare it with the plain ops).
    #[cfg(test)]
    pub(crate) fn set_fused(&mut self, on: bool) {
        self.fused = on;
    }

    /// The fused path's buffer pool.
    pub(crate) fn pool(&self) -> &Arc<crate::fused::Pool> {
        &self.pool
    }

    /// The final norm and the output head, when the fused loss can use them.
    pub(crate) fn fused_head(&self) -> Option<(&Tensor, &Tensor)> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        (self.fused_layers() && crate::fused::head_supported(&self.norm, head)).then_some((&self.norm, head))
    }

    /// The last layer's output before the final norm, `[b * t, hidden]`.
    /// `grad` false promises that no gradient will be asked for (evaluation):
    /// the fused path then keeps no graph.
    pub(crate) fn hidden_prenorm(
        &self,
        ids: &Tensor,
        mode: Mode<'_>,
        mut cache: Option<&mut KvCache>,
        grad: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(c) = cache.as_mut()
            && c.layers.len() != self.layers.len()
        {
            c.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let flat = ids.flatten_all()?;
        let mut x = self.embed.index_select(&flat, 0)?.to_dtype(DType::F32)?;
        // Layers below the lowest adapter need no graph at all; from there
        // on, checkpointed layers keep only their inputs (see `checkpoint`).
        let lowest = if mode.adapter {
            self.layers.iter().position(|l| Target::ALL.iter().any(|&t| l.linear(t).lora().is_some()))
        } else {
            None
        };
        let dropout_on = mode.dropout.is_some()
            && self
                .layers
                .iter()
                .any(|l| Target::ALL.iter().any(|&t| l.linear(t).lora().is_some_and(|w| w.dropout > 0.0)));
        if cache.is_none() && !dropout_on && self.fused_layers() {
            let geo = Arc::new(crate::fused::Geometry::new(cfg, b, t));
            for (li, layer) in self.layers.iter().enumerate() {
                let lo = match lowest {
                    Some(lo) if grad && li >= lo => lo,
                    _ => {
                        x = crate::fused::forward_plain(&geo, &self.pool, layer, mode.adapter, &x)?;
                        continue;
                    }
                };
                if li == lo {
                    // A graph node is recorded only when its input is tracked.
                    x = Var::from_tensor(&x)?.as_tensor().clone();
                }
                let recompute = self.checkpoint > 0 && (li - lo) % self.checkpoint == 0;
                let op = crate::fused::FusedLayer::new(
                    layer.clone(),
                    geo.clone(),
                    mode.adapter,
                    recompute,
                    li != lo,
                    self.ckpt_grads.clone(),
                    self.pool.clone(),
                );
                x = x.contiguous()?.apply_op1(op)?;
            }
            return Ok(x);
        }
        // Generation and the other plain-op uses keep no fused buffers around.
        self.pool.clear();
        let (cos, sin) = self.rope_tables(offset, t)?;
        let ckpt = self.checkpoint > 0 && cache.is_none() && lowest.is_some() && !dropout_on;
        let shape = Shape { b, t, cfg: cfg.clone() };
        for (li, layer) in self.layers.iter().enumerate() {
            if ckpt && Some(li) == lowest {
                x = Var::from_tensor(&x)?.as_tensor().clone();
            }
            let recompute = ckpt && lowest.is_some_and(|lo| li >= lo && (li - lo) % self.checkpoint == 0);
            if recompute {
                let op = Checkpoint {
                    layer: layer.clone(),
                    shape: shape.clone(),
                    cos: cos.clone(),
                    sin: sin.clone(),
                    grads: self.ckpt_grads.clone(),
                };
                x = x.contiguous()?.apply_op1(op)?;
            } else {
                let kv = cache.as_mut().map(|c| &mut c.layers[li]);
                x = layer_forward(layer, &shape, &x, &cos, &sin, mode, kv)?;
            }
        }
        Ok(x)
    }

    /// Activation checkpointing: every `every`-th adapted layer (counting
    /// from the lowest) keeps only its input and is recomputed during the
    /// backward pass; 0 keeps all activations. 1 gives the least memory for
    /// about a third more compute; 2 halves both effects. Not applied when
    /// LoRA dropout is active.
    pub fn set_checkpointing(&mut self, every: usize) {
        self.checkpoint = every;
    }

    /// Gradients of the LoRA variables that checkpointed layers produced
    /// during the last backward passes, keyed by variable; drains them.
    /// [`crate::train::lora_gradients`] merges them with the `GradStore`.
    pub fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor> {
        std::mem::take(&mut *self.ckpt_grads.lock().expect("checkpoint grads poisoned"))
    }

    /// The output head applied to hidden rows `[n, hidden]` → `[n, vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(crate::ops::frozen_matmul(hidden, w)?)
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]` (every position).
    pub fn logits(&self, ids: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden(ids, mode, None)?;
        Ok(self.head(&h)?.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// Logits `[vocab]` of the last position of `ids` (`[t]`), continuing
    /// the cached prefix and extending the cache.
    pub fn next_logits(&self, ids: &[u32], mode: Mode<'_>, cache: &mut KvCache) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::InvalidData("no tokens to feed".into()));
        }
        let t = ids.len();
        let ids = Tensor::from_slice(ids, (1, t), &self.device)?;
        let h = self.hidden(&ids, mode, Some(cache))?;
        let last = h.narrow(0, t - 1, 1)?;
        Ok(self.head(&last)?.squeeze(0)?)
    }

    /// All base weights with their Hugging Face names (`fuse` writes these).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), self.embed.clone()),
            ("model.norm.weight".to_string(), self.norm.clone()),
        ];
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), l.attn_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.mlp_norm.clone()));
            for t in Target::ALL {
                let lin = l.linear(t);
                out.push((format!("{p}.{}.weight", t.path()), lin.weight().clone()));
                if let Some(b) = lin.bias() {
                    out.push((format!("{p}.{}.bias", t.path()), b.clone()));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Shape {
    b: usize,
    t: usize,
    cfg: ModelConfig,
}

type KvSlot<'a> = Option<&'a mut Option<(Tensor, Tensor)>>;

fn layer_forward(
    layer: &Layer,
    s: &Shape,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mode: Mode<'_>,
    kv: KvSlot<'_>,
) -> Result<Tensor> {
    let (b, t, cfg) = (s.b, s.t, &s.cfg);
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let h = rms_norm(x, &layer.attn_norm, cfg.rms_norm_eps)?;
    let heads =
        |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?) };
    let q = heads(layer.attn.q.forward(&h, mode.adapter, mode.dropout)?, nh)?;
    let k = heads(layer.attn.k.forward(&h, mode.adapter, mode.dropout)?, nkv)?;
    let v = heads(layer.attn.v.forward(&h, mode.adapter, mode.dropout)?, nkv)?;
    let q = rope(&q, cos, sin)?;
    let mut k = rope(&k, cos, sin)?;
    let mut v = v;
    if let Some(slot) = kv {
        if let Some((pk, pv)) = slot.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *slot = Some((k.clone(), v.clone()));
    }
    let tk = k.dim(2)?;
    let (k, v) = if nh != nkv {
        let rep = nh / nkv;
        let r = |x: Tensor| -> Result<Tensor> {
            Ok(x.unsqueeze(2)?.broadcast_as((b, nkv, rep, tk, hd))?.reshape((b, nh, tk, hd))?)
        };
        (r(k)?, r(v)?)
    } else {
        (k, v)
    };
    let scale = 1.0 / (hd as f64).sqrt();
    let att = crate::ops::causal_softmax(&q.matmul(&k.t()?)?, scale)?;
    let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
    let y = layer.attn.o.forward(&y, mode.adapter, mode.dropout)?;
    let x = (x + y)?;
    let h = rms_norm(&x, &layer.mlp_norm, cfg.rms_norm_eps)?;
    let g = layer.mlp.gate.forward(&h, mode.adapter, mode.dropout)?;
    let u = layer.mlp.up.forward(&h, mode.adapter, mode.dropout)?;
    let y = layer.mlp.down.forward(&(g.silu()? * u)?, mode.adapter, mode.dropout)?;
    Ok((x + y)?)
}

/// One decoder layer as a single graph node: the forward runs without a
/// graph; the backward recomputes the layer with one, backpropagates the
/// incoming gradient through it, returns the input's gradient and parks the
/// LoRA variables' gradients in `grads` (they are not reachable from the
/// outer graph).
struct Checkpoint {
    layer: Layer,
    shape: Shape,
    cos: Tensor,
    sin: Tensor,
    grads: CkptGrads,
}

impl candle_core::CustomOp1 for Checkpoint {
    fn name(&self) -> &'static str {
        "sam-checkpointed-layer"
    }

    fn cpu_fwd(
        &self,
        st: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let Some((a, e)) = l.contiguous_offsets() else { candle_core::bail!("checkpoint: input is not contiguous") };
        let candle_core::CpuStorage::F32(v) = st else { candle_core::bail!("checkpoint: expected f32") };
        let x = Tensor::from_slice(&v[a..e], l.shape(), &Device::Cpu)?;
        let y = layer_forward(&self.layer, &self.shape, &x, &self.cos, &self.sin, Mode::INFER, None)
            .map_err(candle_core::Error::wrap)?;
        let y = y.detach();
        let shape = y.shape().clone();
        Ok((candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xv = Var::from_tensor(&arg.detach())?;
        let y = layer_forward(&self.layer, &self.shape, xv.as_tensor(), &self.cos, &self.sin, Mode::INFER, None)
            .map_err(candle_core::Error::wrap)?;
        let gs = (y * grad.detach())?.sum_all()?.backward()?;
        let mut store = self.grads.lock().expect("checkpoint grads poisoned");
        for t in Target::ALL {
            if let Some(w) = self.layer.linear(t).lora() {
                for var in [&w.a, &w.b] {
                    if let Some(g) = gs.get(var.as_tensor()) {
                        let id = var.as_tensor().id();
                        let sum = match store.remove(&id) {
                            Some(prev) => (prev + g)?,
                            None => g.clone(),
                        };
                        store.insert(id, sum);
                    }
                }
            }
        }
        Ok(gs.get(xv.as_tensor()).cloned())
    }
}
