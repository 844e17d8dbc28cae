//! A frozen matrix as the model holds it: a dense tensor (f32, bf16 or
//! f16) or a [`QMatrix`] kept quantized. Every user reads it a block of
//! rows at a time in f32, so a quantized or half-precision matrix is never
//! widened whole.

use crate::quant::QMatrix;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Most weight elements read into f32 at once by the plain path (64 MB).
pub(crate) const BLOCK_ELEMS: usize = 16 << 20;

/// A frozen `[rows, cols]` matrix.
#[derive(Debug, Clone)]
pub(crate) enum Frozen {
    /// A dense tensor.
    Dense(Tensor),
    /// A quantized matrix (shared, never copied).
    Quant(Arc<QMatrix>),
}

impl From<Tensor> for Frozen {
    fn from(t: Tensor) -> Self {
        Frozen::Dense(t)
    }
}

impl From<QMatrix> for Frozen {
    fn from(q: QMatrix) -> Self {
        Frozen::Quant(Arc::new(q))
    }
}

impl Frozen {
    /// `(rows, cols)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        match self {
            Frozen::Dense(t) => {
                let d = t.dims();
                (d[0], d.get(1).copied().unwrap_or(1))
            }
            Frozen::Quant(q) => (q.rows(), q.cols()),
        }
    }

    /// Where the data lives (quantized matrices live on the CPU).
    pub(crate) fn device(&self) -> Device {
        match self {
            Frozen::Dense(t) => t.device().clone(),
            Frozen::Quant(_) => Device::Cpu,
        }
    }

    /// The storage type's name (`F32`, `BF16`, `Q4_1`, `mlx 4-bit (group 64)`).
    pub(crate) fn kind(&self) -> String {
        match self {
            Frozen::Dense(t) => format!("{:?}", t.dtype()),
            Frozen::Quant(q) => q.format().to_string(),
        }
    }

    /// The dense tensor's type, when dense.
    pub(crate) fn dtype(&self) -> Option<DType> {
        match self {
            Frozen::Dense(t) => Some(t.dtype()),
            Frozen::Quant(_) => None,
        }
    }

    /// Rows `r0 .. r0 + n` in f32, `[n, cols]`, on `dev`.
    pub(crate) fn rows_f32(&self, r0: usize, n: usize, dev: &Device) -> candle_core::Result<Tensor> {
        match self {
            Frozen::Dense(t) => t.narrow(0, r0, n)?.to_dtype(DType::F32),
            Frozen::Quant(q) => {
                let mut v = vec![0f32; n * q.cols()];
                q.dequantize_rows(r0, &mut v);
                Tensor::from_vec(v, (n, q.cols()), dev)
            }
        }
    }

    /// The whole matrix in f32.
    pub(crate) fn to_f32(&self) -> candle_core::Result<Tensor> {
        let (rows, _) = self.dims();
        self.rows_f32(0, rows, &self.device())
    }

    /// Rows `ids` (`[n]`, u32) in f32, `[n, cols]`: an embedding lookup.
    pub(crate) fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Frozen::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32),
            Frozen::Quant(q) => {
                let ids: Vec<u32> = ids.to_vec1()?;
                let cols = q.cols();
                let mut v = vec![0f32; ids.len() * cols];
                for (row, &id) in v.chunks_mut(cols).zip(&ids) {
                    if id as usize >= q.rows() {
                        candle_core::bail!("token id {id} outside the vocabulary of {}", q.rows());
                    }
                    q.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(v, (ids.len(), cols), &Device::Cpu)
            }
        }
    }

    /// Rows per block when reading this matrix into f32 a block at a time.
    pub(crate) fn block_rows(&self) -> usize {
        let (rows, cols) = self.dims();
        (BLOCK_ELEMS / cols.max(1)).clamp(1, rows.max(1))
    }
}
