//! The decoder: Llama and Qwen2 in one configurable implementation.
//!
//! RMSNorm, rotary embeddings (rotate-half, the Hugging Face layout), grouped
//! query attention with a causal mask, a SwiGLU MLP, tied or separate output
//! head. Every projection is a [`Linear`](crate::lora::Linear) that can carry a LoRA adapter. All
//! activations are f32; frozen weights may be stored in bf16/f16 and are
//! widened per matmul.
//!
//! Each forward pass picks how it runs (the private `forward::Path` seam): on the CPU
//! without a KV cache or LoRA dropout (training, evaluation) each layer, and
//! the final norm + head + loss, run as fused graph nodes with a
//! hand-written backward (the private `fused` module); otherwise (generation, dropout,
//! other devices) the layers are built from candle ops that all have a
//! backward (the private `plain` module). A test holds both paths to the same loss and
//! gradients.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
pub use crate::forward::KvCache;
use crate::forward::{Pass, Path, SideGrads};
use crate::frozen::Frozen;
use crate::fused::Fused;
use crate::layer::Layer;
use crate::lora::{DropoutRng, LoraConfig, Target};
use crate::plain::{Plain, rms_norm};
use candle_core::{DType, Device, Tensor, Var};
use rand::{SeedableRng, rngs::StdRng};

/// How a forward pass runs: [`Mode::INFER`] (with the adapter) or
/// [`Mode::BASE`] (the base model alone).
#[derive(Debug, Clone, Copy)]
pub struct Mode<'a> {
    /// Apply LoRA adapters (false: the base model alone).
    pub(crate) adapter: bool,
    /// Dropout mask source in training; `None` at inference.
    pub(crate) dropout: Option<&'a DropoutRng>,
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
    pub(crate) embed: Frozen,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Option<Frozen>,
    lora: Option<LoraConfig>,
    device: Device,
    recompute_every: usize,
    side_grads: SideGrads,
    fused: Fused,
    plain: Plain,
    fused_enabled: bool,
}

impl Decoder {
    pub(crate) fn from_parts(
        cfg: ModelConfig,
        embed: Frozen,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Option<Frozen>,
    ) -> Self {
        let device = norm.device().clone();
        Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            lora: None,
            device,
            recompute_every: 0,
            side_grads: SideGrads::default(),
            fused: Fused::default(),
            plain: Plain,
            fused_enabled: true,
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

    /// The same model with every quantized matrix dequantized to `dtype`
    /// (tests hold the quantized paths to this).
    pub(crate) fn dequantized(mut self, dtype: DType) -> Result<Self> {
        let dense = |w: &Frozen| -> Result<Frozen> {
            Ok(match w {
                Frozen::Quant(_) => Frozen::Dense(w.to_f32()?.to_dtype(dtype)?),
                Frozen::Dense(_) => w.clone(),
            })
        };
        self.embed = dense(&self.embed)?;
        if let Some(h) = &self.lm_head {
            self.lm_head = Some(dense(h)?);
        }
        for l in &mut self.layers {
            for t in Target::ALL {
                let lin = l.linear_mut(t);
                let w = dense(lin.weight())?;
                lin.set_weight(w);
            }
        }
        Ok(self)
    }

    /// Bytes the frozen weights take in memory (matrices as stored, norms
    /// and biases), for reports and memory planning.
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let f = |w: &Frozen| match w {
            Frozen::Dense(d) => t(d),
            Frozen::Quant(q) => q.nbytes(),
        };
        let mut n = f(&self.embed) + self.lm_head.as_ref().map_or(0, f) + t(&self.norm);
        for l in &self.layers {
            n += t(&l.attn_norm) + t(&l.mlp_norm);
            for tg in Target::ALL {
                let lin = l.linear(tg);
                n += f(lin.weight()) + lin.bias().map_or(0, t);
            }
        }
        n
    }

    /// A short fingerprint of the base model: its configuration and a sample
    /// of its weights (the first embedding rows, the last layer's output
    /// projection, the final norm). Caches keyed on it are not reused for
    /// another model.
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(serde_json::to_string(&self.cfg).unwrap_or_default().as_bytes());
        let rows = |w: &Frozen, n: usize| w.rows_f32(0, n.min(w.dims().0), &self.device);
        h.update(self.embed.kind().as_bytes());
        sample_values(&mut h, &rows(&self.embed, 64)?)?;
        if let Some(last) = self.layers.last() {
            h.update(last.attn.o.weight().kind().as_bytes());
            sample_values(&mut h, &rows(last.attn.o.weight(), 16)?)?;
        }
        h.update(format!("{:?}", self.norm.dtype()).as_bytes());
        sample_values(&mut h, &self.norm)?;
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

    /// Final hidden states (after the last norm), `[b * t, hidden]`, for
    /// token ids `[b, t]`. With `cache`, the ids continue the cached prefix.
    pub(crate) fn hidden(&self, ids: &Tensor, mode: Mode<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden_prenorm(ids, mode, cache, true)?;
        Ok(rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// Whether the fused CPU path can run every layer.
    fn fused_layers(&self) -> bool {
        self.fused_enabled && self.device.is_cpu() && Fused::supports(&self.layers)
    }

    /// The path that runs the layers of one forward pass: the fused one on
    /// the CPU without a KV cache or active dropout, else the plain one
    /// (which then also frees the fused path's pooled buffers).
    fn layer_path(&self, pass: &Pass<'_>, cached: bool) -> &dyn Path {
        let dropout_on = pass.dropout.is_some() && self.layers.iter().any(Layer::has_dropout);
        if !cached && !dropout_on && self.fused_layers() {
            &self.fused
        } else {
            self.fused.release();
            &self.plain
        }
    }

    /// The path that runs the final norm, the head and the loss.
    fn head_path(&self) -> &dyn Path {
        if self.fused_layers() && Fused::supports_head(&self.norm, self.head_weight()) {
            &self.fused
        } else {
            &self.plain
        }
    }

    fn head_weight(&self) -> &Frozen {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Switches the fused CPU path off (tests compare it with the plain ops).
    #[cfg(test)]
    pub(crate) fn set_fused(&mut self, on: bool) {
        self.fused_enabled = on;
    }

    /// Runs the fused path's products with frozen weights in bf16 where the
    /// CPU has bf16 dot products (tests compare them with f32 products).
    #[cfg(test)]
    pub(crate) fn set_bf16_products(&mut self, on: bool) {
        self.fused.set_bf16_products(on);
    }

    /// What a forward pass over `[b, t]` ids in `mode` runs over.
    fn pass<'a>(&'a self, b: usize, t: usize, mode: Mode<'a>, grad: bool) -> Pass<'a> {
        let lowest = if mode.adapter { self.layers.iter().position(Layer::adapted) } else { None };
        let dropout_on = mode.dropout.is_some() && self.layers.iter().any(Layer::has_dropout);
        Pass {
            cfg: &self.cfg,
            layers: &self.layers,
            batch: b,
            seq: t,
            adapter: mode.adapter,
            dropout: mode.dropout,
            grad,
            lowest,
            recompute_every: if dropout_on { 0 } else { self.recompute_every },
            side_grads: &self.side_grads,
        }
    }

    /// The last layer's output before the final norm, `[b * t, hidden]`.
    /// `grad` false promises that no gradient will be asked for (evaluation):
    /// the fused path then keeps no graph.
    fn hidden_prenorm(&self, ids: &Tensor, mode: Mode<'_>, cache: Option<&mut KvCache>, grad: bool) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self.embed.lookup(&ids.flatten_all()?)?;
        let pass = self.pass(b, t, mode, grad);
        let path = self.layer_path(&pass, cache.is_some());
        Ok(path.layers(&pass, x, cache)?)
    }

    /// The negative log-likelihood of each target (`[n]`, u32) at the flat
    /// positions `rows` (`[n]`, u32 indices into `b * t`) of ids `[b, t]`:
    /// the layers, then the final norm, the head and the cross-entropy on
    /// those rows only. `grad` as for [`Self::hidden_prenorm`].
    pub(crate) fn target_nll(
        &self,
        ids: &Tensor,
        rows: &Tensor,
        targets: &Tensor,
        mode: Mode<'_>,
        grad: bool,
    ) -> Result<Tensor> {
        let x = self.hidden_prenorm(ids, mode, None, grad)?;
        let x = x.index_select(rows, 0)?;
        let nll = self.head_path().nll(&x, &self.norm, self.head_weight(), targets, self.cfg.rms_norm_eps)?;
        Ok(nll)
    }

    /// Gradient recomputation: every `every`-th adapted layer (counting
    /// from the lowest) keeps only its input and is recomputed during the
    /// backward pass; 0 keeps all activations. 1 gives the least memory for
    /// about a third more compute; 2 halves both effects. Not applied when
    /// LoRA dropout is active.
    pub(crate) fn set_recompute_every(&mut self, every: usize) {
        self.recompute_every = every;
    }

    /// Backpropagates `loss` and returns the gradient of every LoRA variable,
    /// in [`Self::lora_vars`] order (`None`: no gradient reached it),
    /// including those that fused and recomputed layers produced.
    pub(crate) fn lora_gradients(&self, loss: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gs = loss.backward()?;
        let mut side =
            std::mem::take(&mut *self.side_grads.lock().map_err(|_| {
                crate::error::Error::Candle(candle_core::Error::Msg("side gradients: poisoned".into()))
            })?);
        Ok(self
            .lora_vars()
            .into_iter()
            .map(|(_, v)| gs.get(v.as_tensor()).cloned().or_else(|| side.remove(&v.as_tensor().id())))
            .collect())
    }

    /// The output head applied to hidden rows `[n, hidden]` → `[n, vocab]`.
    pub(crate) fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::frozen_matmul(hidden, self.head_weight())?)
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

    /// All base weights with their Hugging Face names (`fuse` writes these);
    /// quantized matrices come dequantized to f32.
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), dense(&self.embed)?),
            ("model.norm.weight".to_string(), self.norm.clone()),
        ];
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), dense(h)?));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), l.attn_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.mlp_norm.clone()));
            for t in Target::ALL {
                let lin = l.linear(t);
                out.push((format!("{p}.{}.weight", t.path()), dense(lin.weight())?));
                if let Some(b) = lin.bias() {
                    out.push((format!("{p}.{}.bias", t.path()), b.clone()));
                }
            }
        }
        Ok(out)
    }
}

/// Hashes the f32 values of `t` into `h`.
fn sample_values(h: &mut blake3::Hasher, t: &Tensor) -> Result<()> {
    for x in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
        h.update(&x.to_le_bytes());
    }
    Ok(())
}

/// A frozen matrix as a dense tensor: as stored, or dequantized to f32.
fn dense(w: &Frozen) -> Result<Tensor> {
    Ok(match w {
        Frozen::Dense(t) => t.clone(),
        Frozen::Quant(_) => w.to_f32()?,
    })
}

#[cfg(test)]
mod tests {
    use super::{Decoder, Mode};
    use crate::config::{Arch, ModelConfig};
    use crate::load::{LoadOptions, random_model};
    use crate::lora::{LoraConfig, Target};
    use crate::loss::{Batch, Sequence, mean_loss, nll_sum, target_nll};
    use candle_core::{DType, Tensor};

    fn tiny(dtype: DType) -> Decoder {
        let cfg = ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: 96,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            attention_bias: true,
            tie_word_embeddings: dtype != DType::F32,
            max_position_embeddings: 256,
            bos_token_id: None,
            eos_token_ids: vec![],
        };
        let mut m = random_model(cfg, &LoadOptions { dtype, ..Default::default() }, 11).unwrap();
        let lora = LoraConfig { rank: 4, targets: Target::ALL.to_vec(), ..Default::default() };
        m.attach_lora(&lora, 3).unwrap();
        for (k, (name, var)) in m.lora_vars().into_iter().enumerate() {
            if name.ends_with("lora_B") {
                let n: usize = var.dims().iter().product();
                let v: Vec<f32> = (0..n).map(|i| 0.05 * ((i * 7919 + k * 104_729) as f32 * 0.618).sin()).collect();
                var.set(&Tensor::from_vec(v, var.dims(), var.device()).unwrap()).unwrap();
            }
        }
        m
    }

    fn loss_and_grads(m: &Decoder, b: &Batch) -> (f32, Vec<Vec<f32>>) {
        let loss = nll_sum(m, b, Mode::INFER).unwrap().unwrap();
        let v = loss.to_scalar::<f32>().unwrap();
        let g = m.lora_gradients(&loss).unwrap();
        (v, g.into_iter().map(|g| g.unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect())
    }

    /// The fused path gives the plain candle-op path's loss and gradients,
    /// with f32 and bf16 weights, with and without recomputation, across
    /// more than one attention block and with padding, on every product
    /// backend of `sam-kernels` this build and CPU have (the backend is
    /// global; the others give the same results, so tests running meanwhile
    /// are unaffected).
    #[test]
    fn fused_path_matches_plain_ops() {
        for backend in sam_kernels::Backend::available() {
            sam_kernels::set_backend(backend);
            fused_path_matches_plain_ops_on(backend);
        }
        sam_kernels::set_backend(sam_kernels::Backend::Gemm);
    }

    fn fused_path_matches_plain_ops_on(backend: sam_kernels::Backend) {
        let ids: Vec<u32> = (0..150).map(|i| (i * 37 + 5) % 96).collect();
        let mask: Vec<bool> = (0..150).map(|i| i % 3 != 0).collect();
        for dtype in [DType::F32, DType::BF16] {
            let mut m = tiny(dtype);
            let seqs = [Sequence { ids: &ids, mask: &mask }, Sequence { ids: &ids[..70], mask: &mask[..70] }];
            let b = Batch::new(&seqs, 0, m.device()).unwrap();
            m.set_fused(false);
            let (want, want_g) = loss_and_grads(&m, &b);
            m.set_fused(true);
            for ckpt in [0, 1, 2] {
                m.set_recompute_every(ckpt);
                let (got, got_g) = loss_and_grads(&m, &b);
                assert!(
                    (got - want).abs() < 1e-4 * want.abs(),
                    "{backend:?} {dtype:?} ckpt {ckpt}: loss {got} vs {want}"
                );
                for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
                    let scale = w.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let worst = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                    assert!(
                        scale > 0.0 && worst < 2e-3 * scale,
                        "{backend:?} {dtype:?} ckpt {ckpt} var {i}: {worst} of {scale}"
                    );
                }
            }
            let rows = |m: &Decoder| -> Vec<f32> { target_nll(m, &b, Mode::INFER).unwrap().to_vec1().unwrap() };
            let fused_rows = rows(&m);
            m.set_fused(false);
            let plain_rows = rows(&m);
            m.set_fused(true);
            assert_eq!(fused_rows.len(), b.n_targets);
            for (x, y) in fused_rows.iter().zip(&plain_rows) {
                assert!((x - y).abs() < 1e-4 * y.abs().max(1.0), "{backend:?} {dtype:?}: row nll {x} vs {y}");
            }
            let (mean, n) = mean_loss(&m, &seqs, 2, 0, Mode::INFER).unwrap();
            assert_eq!(n, b.n_targets);
            assert!((mean * n as f64 - want as f64).abs() < 1e-4 * want as f64, "{mean} vs {want}");
        }
    }
    /// bf16 products with the frozen weights (where the CPU has bf16 dot
    /// products) keep the test model's held-out loss, over the prompts of the
    /// logits fixture, within 2% of the f32 products'; without them the
    /// setting is off and the losses are the same.
    #[test]
    fn bf16_products_keep_the_held_out_loss() {
        let path = match std::env::var_os("SAM_TEST_MODEL").filter(|v| !v.is_empty()) {
            Some(p) => std::path::PathBuf::from(p),
            None => std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/sam/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        };
        assert!(path.is_file(), "test model {} is missing: run scripts/fetch-test-model.sh", path.display());
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_logits.json");
        let fx: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        let prompts: Vec<Vec<u32>> = fx["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
            .collect();
        let masks: Vec<Vec<bool>> = prompts.iter().map(|p| vec![true; p.len()]).collect();
        let seqs: Vec<Sequence<'_>> = prompts.iter().zip(&masks).map(|(ids, mask)| Sequence { ids, mask }).collect();
        let mut m = crate::load::load_model(&path, &LoadOptions::default()).unwrap();
        let (f32_loss, n) = mean_loss(&m, &seqs, 4, 0, Mode::INFER).unwrap();
        assert!(n > 20 && f32_loss.is_finite() && f32_loss > 0.1, "{n} targets, loss {f32_loss}");
        m.set_bf16_products(true);
        let (bf16_loss, _) = mean_loss(&m, &seqs, 4, 0, Mode::INFER).unwrap();
        let rel = (bf16_loss - f32_loss).abs() / f32_loss;
        eprintln!("held-out loss: f32 products {f32_loss:.5}, bf16 products {bf16_loss:.5} ({:.3}%)", 100.0 * rel);
        if sam_kernels::bf16_available() {
            assert!(bf16_loss != f32_loss, "bf16 products changed nothing");
            assert!(rel < 0.02, "bf16 products moved the held-out loss by {:.2}%", 100.0 * rel);
        } else {
            assert_eq!(bf16_loss, f32_loss);
        }
    }
}
