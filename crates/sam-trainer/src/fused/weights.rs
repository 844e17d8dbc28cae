//! A layer's frozen weights as slices for the kernels: read guards on the
//! tensors' storages ([`Pinned`]), each matrix as stored ([`WRef`]: f32,
//! bf16 or f16, read as such by the products of `sam-kernels`, or
//! quantized, dequantized a tile of rows at a time by
//! [`super::linear`]), and the whole layer checked against the pass's
//! geometry ([`view`]).

use super::geometry::Geometry;
use crate::frozen::Frozen;
use crate::layer::Layer;
use crate::lora::Target;
use crate::quant::QMatrix;
use candle_core::{CpuStorage, DType, Layout, Storage, StorageRef, Tensor, bail};

/// Whether a frozen matrix can take the fused path: on the CPU, dense in
/// f32, bf16 or f16, or quantized.
pub(super) fn matrix_supported(w: &Frozen) -> bool {
    match w {
        Frozen::Dense(t) => matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) && t.device().is_cpu(),
        Frozen::Quant(_) => true,
    }
}

/// Whether a layer's weights can take the fused path: on the CPU, norms and
/// biases in f32, matrices as [`matrix_supported`].
pub(super) fn supported(layer: &Layer) -> bool {
    let ok = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    ok(&layer.attn_norm)
        && ok(&layer.mlp_norm)
        && Target::ALL.iter().all(|&tg| {
            let l = layer.linear(tg);
            matrix_supported(l.weight()) && l.bias().is_none_or(ok)
        })
}

/// One pinned tensor: a read guard on its storage and its element range,
/// or a quantized matrix.
enum Pin<'a> {
    Dense(StorageRef<'a>, usize, usize),
    Quant(&'a QMatrix),
}

/// Read guards on the storages of a set of tensors, so their data can be
/// borrowed as slices while a kernel runs.
pub(super) struct Pinned<'a> {
    refs: Vec<Pin<'a>>,
}

impl<'a> Pinned<'a> {
    pub(super) fn new() -> Self {
        Self { refs: Vec::new() }
    }

    /// Pins an f32 tensor.
    pub(super) fn add(&mut self, t: &'a Tensor) -> candle_core::Result<usize> {
        if t.dtype() != DType::F32 {
            bail!("fused: expected an f32 tensor");
        }
        self.add_tensor(t)
    }

    /// Pins an f32, bf16 or f16 tensor.
    fn add_tensor(&mut self, t: &'a Tensor) -> candle_core::Result<usize> {
        let (st, l) = t.storage_and_layout();
        let Some((a, b)) = l.contiguous_offsets() else { bail!("fused: weight is not contiguous") };
        if !matches!(&*st, Storage::Cpu(CpuStorage::F32(_) | CpuStorage::BF16(_) | CpuStorage::F16(_))) {
            bail!("fused: expected an f32, bf16 or f16 tensor on the CPU");
        }
        self.refs.push(Pin::Dense(st, a, b));
        Ok(self.refs.len() - 1)
    }

    /// Pins a frozen matrix.
    pub(super) fn add_matrix(&mut self, w: &'a Frozen) -> candle_core::Result<usize> {
        match w {
            Frozen::Dense(t) => self.add_tensor(t),
            Frozen::Quant(q) => {
                self.refs.push(Pin::Quant(q));
                Ok(self.refs.len() - 1)
            }
        }
    }

    pub(super) fn get(&self, i: usize) -> &[f32] {
        match self.get_matrix(i) {
            WRef::F32(v) => v,
            _ => &[],
        }
    }

    pub(super) fn get_matrix(&self, i: usize) -> WRef<'_> {
        match &self.refs[i] {
            Pin::Dense(st, a, b) => match &**st {
                Storage::Cpu(CpuStorage::F32(v)) => WRef::F32(&v[*a..*b]),
                Storage::Cpu(CpuStorage::BF16(v)) => WRef::Bf16(&v[*a..*b]),
                Storage::Cpu(CpuStorage::F16(v)) => WRef::F16(&v[*a..*b]),
                _ => WRef::F32(&[]),
            },
            Pin::Quant(q) => WRef::Quant(q),
        }
    }
}

/// A frozen weight matrix as stored.
#[derive(Clone, Copy)]
pub(super) enum WRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
    Quant(&'a QMatrix),
}

impl WRef<'_> {
    /// Number of elements.
    pub(super) fn len(&self) -> usize {
        match self {
            WRef::F32(v) => v.len(),
            WRef::Bf16(v) => v.len(),
            WRef::F16(v) => v.len(),
            WRef::Quant(q) => q.rows() * q.cols(),
        }
    }
}

pub(super) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{what}: input is not contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => bail!("{what}: expected f32"),
    }
}

pub(super) struct LoraView<'a> {
    pub(super) a: &'a [f32],
    pub(super) b: &'a [f32],
    pub(super) r: usize,
    pub(super) s: f32,
}

pub(super) struct Lin<'a> {
    pub(super) w: WRef<'a>,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) lora: Option<LoraView<'a>>,
    pub(super) out: usize,
    pub(super) inp: usize,
}

pub(super) struct LayerView<'a> {
    pub(super) norm1: &'a [f32],
    pub(super) norm2: &'a [f32],
    lins: Vec<Lin<'a>>,
}

impl LayerView<'_> {
    pub(super) fn lin(&self, t: Target) -> &Lin<'_> {
        &self.lins[t as usize]
    }

    pub(super) fn adapted(&self, t: Target) -> bool {
        self.lin(t).lora.is_some()
    }
}

pub(super) fn pin_layer<'a>(layer: &'a Layer, adapter: bool) -> candle_core::Result<Pinned<'a>> {
    let mut p = Pinned::new();
    p.add(&layer.attn_norm)?;
    p.add(&layer.mlp_norm)?;
    for t in Target::ALL {
        let l = layer.linear(t);
        p.add_matrix(l.weight())?;
        if let Some(b) = l.bias() {
            p.add(b)?;
        }
        if adapter && let Some(w) = l.lora() {
            p.add(w.a.as_tensor())?;
            p.add(w.b.as_tensor())?;
        }
    }
    Ok(p)
}

/// The layer's pinned data as slices, checked against the geometry (a
/// mismatch is an error here rather than an out-of-bounds product later).
pub(super) fn view<'p>(
    p: &'p Pinned<'_>,
    layer: &Layer,
    adapter: bool,
    geo: &Geometry,
) -> candle_core::Result<LayerView<'p>> {
    let mut i = 0;
    let mut idx = || {
        i += 1;
        i - 1
    };
    let norm1 = p.get(idx());
    let norm2 = p.get(idx());
    let mut lins = Vec::with_capacity(7);
    for t in Target::ALL {
        let l = layer.linear(t);
        let (out, inp) = (l.out_dim(), l.in_dim());
        let w = p.get_matrix(idx());
        let mut next = || p.get(idx());
        let bias = l.bias().map(|_| next());
        let lora = match l.lora() {
            Some(lw) if adapter => {
                let a = next();
                let b = next();
                Some(LoraView { a, b, r: lw.a.dims()[0], s: lw.scale as f32 })
            }
            _ => None,
        };
        lins.push(Lin { w, bias, lora, out, inp });
    }
    let lv = LayerView { norm1, norm2, lins };
    check(&lv, geo)?;
    Ok(lv)
}

fn check(lv: &LayerView<'_>, geo: &Geometry) -> candle_core::Result<()> {
    let (h, q, kv, i) = (geo.hidden, geo.dq(), geo.dkv(), geo.inter);
    if geo.kv_heads == 0 || !geo.heads.is_multiple_of(geo.kv_heads) || !geo.head_dim.is_multiple_of(2) {
        bail!("fused layer: {} heads over {} key/value heads of width {}", geo.heads, geo.kv_heads, geo.head_dim);
    }
    if lv.norm1.len() != h || lv.norm2.len() != h {
        bail!("fused layer: norm weights do not match the hidden size {h}");
    }
    let want = [
        (Target::Q, q, h),
        (Target::K, kv, h),
        (Target::V, kv, h),
        (Target::O, h, q),
        (Target::Gate, i, h),
        (Target::Up, i, h),
        (Target::Down, h, i),
    ];
    for (t, out, inp) in want {
        let l = lv.lin(t);
        let wlen = l.w.len();
        let lora_ok = l.lora.as_ref().is_none_or(|lo| lo.a.len() == lo.r * inp && lo.b.len() == out * lo.r);
        if l.out != out || l.inp != inp || wlen != out * inp || l.bias.is_some_and(|b| b.len() != out) || !lora_ok {
            bail!("fused layer: {} is [{}, {}], the configuration wants [{out}, {inp}]", t.module_name(), l.out, l.inp);
        }
    }
    Ok(())
}
