//! The shapes of one forward pass, shared by every fused layer of it, and
//! its rotary table.

/// Shapes shared by all layers of one forward pass, and the rotary table.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) inter: usize,
    pub(super) eps: f32,
    /// `[t, head_dim / 2]` cosines and sines of position × frequency.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    /// How the products with frozen weights round their inputs.
    pub(super) prec: sam_kernels::Precision,
}

impl Geometry {
    /// The geometry of a `[b, t]` batch of `cfg`'s model, its frozen
    /// products in `prec`.
    pub(super) fn new(cfg: &crate::config::ModelConfig, b: usize, t: usize, prec: sam_kernels::Precision) -> Self {
        let hd = cfg.head_dim;
        let inv: Vec<f32> =
            (0..hd / 2).map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        let mut cos = Vec::with_capacity(t * hd / 2);
        let mut sin = Vec::with_capacity(t * hd / 2);
        for p in 0..t {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            b,
            t,
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            inter: cfg.intermediate_size,
            eps: cfg.rms_norm_eps as f32,
            cos,
            sin,
            prec,
        }
    }

    pub(super) fn n(&self) -> usize {
        self.b * self.t
    }

    pub(super) fn dq(&self) -> usize {
        self.heads * self.head_dim
    }

    pub(super) fn dkv(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
