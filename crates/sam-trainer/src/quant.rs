//! Quantized frozen matrices, kept as stored: llama.cpp's GGUF blocks
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K) and mlx's affine format
//! (packed `bits`-bit integers with a scale and a bias per `group` of
//! columns). A [`QMatrix`] is never widened whole: its users dequantize a
//! range of rows at a time ([`QMatrix::dequantize_rows`]) into a buffer of
//! bounded size, so that resident memory stays close to the file's size.
//!
//! Both formats quantize along a row (the input dimension of a projection,
//! the hidden dimension of an embedding), so a row range is a contiguous run
//! of bytes.

use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8K,
    GgmlType,
};
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// How a [`QMatrix`] is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// A GGUF block type.
    Ggml(GgmlDType),
    /// mlx's affine quantization: `w = scale · q + bias` per group.
    Mlx {
        /// Bits per value (2, 3, 4, 5, 6 or 8).
        bits: usize,
        /// Columns per scale/bias pair.
        group: usize,
    },
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Ggml(t) => write!(f, "{t:?}"),
            Format::Mlx { bits, group } => write!(f, "mlx {bits}-bit (group {group})"),
        }
    }
}

/// Per-group scales or biases of an mlx matrix, in the type they were stored in.
#[derive(Debug, Clone)]
pub(crate) enum Half {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Half {
    fn len(&self) -> usize {
        match self {
            Half::F32(v) => v.len(),
            Half::F16(v) => v.len(),
            Half::Bf16(v) => v.len(),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            Half::F32(v) => v[i],
            Half::F16(v) => v[i].to_f32(),
            Half::Bf16(v) => v[i].to_f32(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Half::F32(v) => 4 * v.len(),
            Half::F16(v) => 2 * v.len(),
            Half::Bf16(v) => 2 * v.len(),
        }
    }

    fn select(&self, rows: &[usize], per_row: usize) -> Half {
        fn pick<T: Copy>(v: &[T], rows: &[usize], k: usize) -> Vec<T> {
            rows.iter().flat_map(|&r| v[r * k..(r + 1) * k].iter().copied()).collect()
        }
        match self {
            Half::F32(v) => Half::F32(pick(v, rows, per_row)),
            Half::F16(v) => Half::F16(pick(v, rows, per_row)),
            Half::Bf16(v) => Half::Bf16(pick(v, rows, per_row)),
        }
    }
}

/// A frozen `[rows, cols]` matrix in a quantized format.
#[derive(Debug, Clone)]
pub(crate) struct QMatrix {
    rows: usize,
    cols: usize,
    format: Format,
    /// The packed data, 8-byte aligned so that GGUF blocks can be read in
    /// place (every block's size is a multiple of its alignment).
    words: Vec<u64>,
    /// Bytes of packed data per row.
    row_bytes: usize,
    /// mlx: one scale and one bias per group, row-major `[rows, cols / group]`.
    scales: Option<Half>,
    biases: Option<Half>,
}

/// The dequantization of `blocks` (bytes of whole blocks of `T`) into `out`.
fn ggml_to_f32<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
    let n = bytes.len() / std::mem::size_of::<T>();
    debug_assert_eq!(n * std::mem::size_of::<T>(), bytes.len());
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: the blocks are `repr(C)` structs of integers and f16 (every
    // bit pattern is valid), the slice holds exactly `n` of them, and it is
    // aligned: the buffer is 8-byte aligned and starts rows at multiples of
    // the block size, itself a multiple of the block's alignment.
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, n) };
    T::to_float(blocks, out);
}

/// Rows dequantized per parallel task.
fn rows_per_task(cols: usize) -> usize {
    (16_384 / cols.max(1)).max(1)
}

impl QMatrix {
    /// A GGUF matrix from its raw bytes (`rows · cols / block` blocks).
    pub(crate) fn ggml(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let bs = dtype.block_size();
        if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_1) {
            return Err(Error::UnsupportedModel(format!("{dtype:?} is not a quantized weight type sam keeps")));
        }
        if !cols.is_multiple_of(bs) {
            return Err(Error::UnsupportedModel(format!("{dtype:?} rows of {cols} values (blocks of {bs})")));
        }
        let row_bytes = cols / bs * dtype.type_size();
        if bytes.len() != rows * row_bytes {
            return Err(Error::UnsupportedModel(format!(
                "{dtype:?} [{rows}, {cols}] needs {} bytes, got {}",
                rows * row_bytes,
                bytes.len()
            )));
        }
        Ok(Self {
            rows,
            cols,
            format: Format::Ggml(dtype),
            words: to_words(bytes),
            row_bytes,
            scales: None,
            biases: None,
        })
    }

    /// An mlx affine-quantized matrix: `packed` holds each row's `cols`
    /// values of `bits` bits as a little-endian bit stream (mlx's `uint32`
    /// words), `scales` and `biases` one value per `group` columns.
    pub(crate) fn mlx(
        bits: usize,
        group: usize,
        rows: usize,
        cols: usize,
        packed: &[u8],
        scales: Half,
        biases: Half,
    ) -> Result<Self> {
        let bad = |why: String| Err(Error::UnsupportedModel(format!("mlx {bits}-bit [{rows}, {cols}]: {why}")));
        if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) {
            return bad("sam reads 2, 3, 4, 5, 6 and 8 bits".into());
        }
        if group == 0 || !cols.is_multiple_of(group) || !(cols * bits).is_multiple_of(32) {
            return bad(format!("columns are not a whole number of groups of {group} and of 32-bit words"));
        }
        let row_bytes = cols * bits / 8;
        if packed.len() != rows * row_bytes {
            return bad(format!("{} packed bytes, expected {}", packed.len(), rows * row_bytes));
        }
        let groups = rows * (cols / group);
        if scales.len() != groups || biases.len() != groups {
            return bad(format!("{} scales and {} biases for {groups} groups", scales.len(), biases.len()));
        }
        Ok(Self {
            rows,
            cols,
            format: Format::Mlx { bits, group },
            words: to_words(packed),
            row_bytes,
            scales: Some(scales),
            biases: Some(biases),
        })
    }

    /// Rows (the output dimension of a projection).
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (the input dimension).
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// The storage format.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Bytes held (packed data, scales and biases).
    pub(crate) fn nbytes(&self) -> usize {
        self.rows * self.row_bytes
            + self.scales.as_ref().map_or(0, Half::bytes)
            + self.biases.as_ref().map_or(0, Half::bytes)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: u64 → u8 reinterpretation of an initialised buffer; the
        // length stays within it.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.rows * self.row_bytes) }
    }

    /// Dequantizes rows `r0 .. r0 + out.len() / cols` into `out`
    /// (row-major), in parallel.
    pub(crate) fn dequantize_rows(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols;
        assert!(out.len() == n * self.cols && r0 + n <= self.rows, "rows {r0}..{} of {}", r0 + n, self.rows);
        let k = rows_per_task(self.cols);
        out.par_chunks_mut(k * self.cols).enumerate().for_each(|(i, chunk)| {
            let first = r0 + i * k;
            for (j, row) in chunk.chunks_mut(self.cols).enumerate() {
                self.dequantize_row(first + j, row);
            }
        });
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bytes = &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes];
        match self.format {
            Format::Ggml(t) => match t {
                GgmlDType::Q4_0 => ggml_to_f32::<BlockQ4_0>(bytes, out),
                GgmlDType::Q4_1 => ggml_to_f32::<BlockQ4_1>(bytes, out),
                GgmlDType::Q5_0 => ggml_to_f32::<BlockQ5_0>(bytes, out),
                GgmlDType::Q5_1 => ggml_to_f32::<BlockQ5_1>(bytes, out),
                GgmlDType::Q8_0 => ggml_to_f32::<BlockQ8_0>(bytes, out),
                GgmlDType::Q2K => ggml_to_f32::<BlockQ2K>(bytes, out),
                GgmlDType::Q3K => ggml_to_f32::<BlockQ3K>(bytes, out),
                GgmlDType::Q4K => ggml_to_f32::<BlockQ4K>(bytes, out),
                GgmlDType::Q5K => ggml_to_f32::<BlockQ5K>(bytes, out),
                GgmlDType::Q6K => ggml_to_f32::<BlockQ6K>(bytes, out),
                GgmlDType::Q8K => ggml_to_f32::<BlockQ8K>(bytes, out),
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_1 => {
                    unreachable!("rejected by QMatrix::ggml")
                }
            },
            Format::Mlx { bits, group } => {
                let (s, b) = (self.scales.as_ref().expect("mlx scales"), self.biases.as_ref().expect("mlx biases"));
                let g0 = r * (self.cols / group);
                mlx_row(bytes, bits, group, |g| (s.get(g0 + g), b.get(g0 + g)), out);
            }
        }
    }

    /// The whole matrix in f32 (for merging an adapter in, writing a
    /// dense copy, and tests).
    pub(crate) fn to_tensor(&self, dev: &Device) -> Result<Tensor> {
        let mut v = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, &mut v);
        Ok(Tensor::from_vec(v, (self.rows, self.cols), dev)?)
    }

    /// The matrix with its rows reordered: row `i` of the result is row
    /// `order[i]` of this one (llama-arch GGUF stores Q and K rows permuted).
    pub(crate) fn select_rows(&self, order: &[usize]) -> Self {
        let src = self.bytes();
        let mut bytes = Vec::with_capacity(order.len() * self.row_bytes);
        for &r in order {
            bytes.extend_from_slice(&src[r * self.row_bytes..(r + 1) * self.row_bytes]);
        }
        let per_row = match self.format {
            Format::Mlx { group, .. } => self.cols / group,
            Format::Ggml(_) => 0,
        };
        Self {
            rows: order.len(),
            words: to_words(&bytes),
            scales: self.scales.as_ref().map(|s| s.select(order, per_row)),
            biases: self.biases.as_ref().map(|b| b.select(order, per_row)),
            ..self.clone_shape()
        }
    }

    fn clone_shape(&self) -> Self {
        Self {
            rows: self.rows,
            cols: self.cols,
            format: self.format,
            words: Vec::new(),
            row_bytes: self.row_bytes,
            scales: None,
            biases: None,
        }
    }

    /// Quantizes a row-major `[rows, cols]` f32 matrix to a GGUF block type
    /// (with candle's quantizers; for tests and random models).
    #[cfg(test)]
    pub(crate) fn quantize_ggml(w: &[f32], rows: usize, cols: usize, dtype: GgmlDType) -> Result<Self> {
        let t = Tensor::from_slice(w, (rows, cols), &Device::Cpu)?;
        let q = candle_core::quantized::QTensor::quantize(&t, dtype)?;
        Self::ggml(dtype, rows, cols, &q.data()?)
    }

    /// An mlx matrix's packed bytes, scales and biases (tests write them
    /// out as an mlx folder would hold them).
    #[cfg(test)]
    pub(crate) fn mlx_parts(&self) -> Option<(&[u8], &Half, &Half)> {
        Some((self.bytes(), self.scales.as_ref()?, self.biases.as_ref()?))
    }

    /// Quantizes a row-major `[rows, cols]` f32 matrix in mlx's affine
    /// format (see [`Self::quantize_mlx_rows`]).
    #[cfg(test)]
    pub(crate) fn quantize_mlx(w: &[f32], rows: usize, cols: usize, bits: usize, group: usize) -> Result<Self> {
        Self::quantize_mlx_rows(rows, cols, bits, group, |r, out| out.copy_from_slice(&w[r * cols..(r + 1) * cols]))
    }

    /// Quantizes the `[rows, cols]` matrix whose row `r` `fill(r, row)`
    /// writes, in mlx's affine format: per group, `scale = (max − min) /
    /// (2^bits − 1)` and `bias = min`, kept in f16 as mlx stores them for a
    /// half-precision model (for tests and random models; no f32 copy of
    /// the matrix is made).
    pub(crate) fn quantize_mlx_rows(
        rows: usize,
        cols: usize,
        bits: usize,
        group: usize,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> Result<Self> {
        if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8)
            || group == 0
            || !cols.is_multiple_of(group)
            || !(cols * bits).is_multiple_of(32)
        {
            return Err(Error::InvalidConfig(format!("mlx {bits}-bit groups of {group} over {cols} columns")));
        }
        let levels = ((1u32 << bits) - 1) as f32;
        let groups = cols / group;
        let row_bytes = cols * bits / 8;
        let mut scales = Vec::with_capacity(rows * groups);
        let mut biases = Vec::with_capacity(rows * groups);
        let mut packed = vec![0u8; rows * row_bytes];
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            fill(r, &mut row);
            let out = &mut packed[r * row_bytes..(r + 1) * row_bytes];
            for g in 0..groups {
                let vals = &row[g * group..(g + 1) * group];
                let (lo, hi) = vals.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                let s = f16::from_f32(((hi - lo) / levels).max(1e-7));
                let b = f16::from_f32(lo);
                let (sf, bf) = (s.to_f32(), b.to_f32());
                for (k, &v) in vals.iter().enumerate() {
                    let q = ((v - bf) / sf).round().clamp(0.0, levels) as u16;
                    let bit = (g * group + k) * bits;
                    let (byte, shift) = (bit / 8, bit % 8);
                    let wide = q << shift;
                    out[byte] |= wide as u8;
                    if shift + bits > 8 {
                        out[byte + 1] |= (wide >> 8) as u8;
                    }
                }
                scales.push(s);
                biases.push(b);
            }
        }
        Self::mlx(bits, group, rows, cols, &packed, Half::F16(scales), Half::F16(biases))
    }
}

fn to_words(bytes: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: the word buffer holds at least `bytes.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, bytes.len()) };
    words
}

/// One row of an mlx matrix: `out[k] = scale · q_k + bias` of its group.
fn mlx_row(bytes: &[u8], bits: usize, group: usize, sb: impl Fn(usize) -> (f32, f32), out: &mut [f32]) {
    match bits {
        4 => {
            for (g, (o, q)) in out.chunks_exact_mut(group).zip(bytes.chunks_exact(group / 2)).enumerate() {
                let (s, b) = sb(g);
                for (pair, &byte) in o.chunks_exact_mut(2).zip(q) {
                    pair[0] = (byte & 15) as f32 * s + b;
                    pair[1] = (byte >> 4) as f32 * s + b;
                }
            }
        }
        8 => {
            for (g, (o, q)) in out.chunks_exact_mut(group).zip(bytes.chunks_exact(group)).enumerate() {
                let (s, b) = sb(g);
                for (v, &byte) in o.iter_mut().zip(q) {
                    *v = byte as f32 * s + b;
                }
            }
        }
        _ => {
            let mask = (1u64 << bits) - 1;
            for (g, o) in out.chunks_exact_mut(group).enumerate() {
                let (s, b) = sb(g);
                for (k, v) in o.iter_mut().enumerate() {
                    let bit = (g * group + k) * bits;
                    let (byte, shift) = (bit / 8, bit % 8);
                    let mut word = 0u64;
                    for (j, &x) in bytes[byte..(byte + 2).min(bytes.len())].iter().enumerate() {
                        word |= (x as u64) << (8 * j);
                    }
                    *v = ((word >> shift) & mask) as f32 * s + b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2).collect()
    }

    #[test]
    fn ggml_rows_match_candles_own_dequantization() {
        let (rows, cols) = (6, 512);
        let w = matrix(rows, cols);
        let types = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        for t in types {
            let q = QTensor::quantize(&Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap(), t).unwrap();
            let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let m = QMatrix::ggml(t, rows, cols, &q.data().unwrap()).unwrap();
            let mut got = vec![0f32; 3 * cols];
            m.dequantize_rows(2, &mut got);
            assert_eq!(got, want[2 * cols..5 * cols], "{t:?}");
            assert_eq!(m.nbytes(), q.storage_size_in_bytes(), "{t:?}");
            // Quantization error stays in the format's range.
            let err = want.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 0.05, "{t:?}: {err}");
        }
    }

    #[test]
    fn mlx_rows_dequantize_to_scale_times_q_plus_bias() {
        // One row, group 32, 4 bits: q_k = k % 16, scale 0.5, bias -1.
        let cols = 64;
        let mut packed = vec![0u8; cols / 2];
        for k in 0..cols {
            packed[k / 2] |= ((k % 16) as u8) << (4 * (k % 2));
        }
        let s = Half::F16(vec![f16::from_f32(0.5), f16::from_f32(0.25)]);
        let b = Half::F32(vec![-1.0, 2.0]);
        let m = QMatrix::mlx(4, 32, 1, cols, &packed, s, b).unwrap();
        let mut out = vec![0f32; cols];
        m.dequantize_rows(0, &mut out);
        for (k, v) in out.iter().enumerate() {
            let want = if k < 32 { (k % 16) as f32 * 0.5 - 1.0 } else { (k % 16) as f32 * 0.25 + 2.0 };
            assert_eq!(*v, want, "column {k}");
        }
    }

    #[test]
    fn mlx_quantization_round_trips_at_every_width() {
        let (rows, cols) = (3, 128);
        let w = matrix(rows, cols);
        for bits in [2, 3, 4, 5, 6, 8] {
            let m = QMatrix::quantize_mlx(&w, rows, cols, bits, 32).unwrap();
            let got: Vec<f32> = m.to_tensor(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            // Half a quantization step (plus the f16 rounding of scale and bias).
            let step = 0.2 / ((1u32 << bits) - 1) as f32;
            let err = got.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 0.5 * step + 2e-3, "{bits} bits: {err} vs step {step}");
            let order = [2, 0];
            let sel = m.select_rows(&order);
            let mut row = vec![0f32; cols];
            sel.dequantize_row(0, &mut row);
            assert_eq!(row, got[2 * cols..3 * cols], "{bits} bits: selected row");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(QMatrix::ggml(GgmlDType::Q4K, 2, 100, &[0; 10]).is_err());
        assert!(QMatrix::ggml(GgmlDType::F16, 2, 32, &[0; 128]).is_err());
        let h = || Half::F32(vec![0.0; 2]);
        assert!(QMatrix::mlx(7, 32, 1, 64, &[0; 56], h(), h()).is_err());
        assert!(QMatrix::mlx(4, 32, 1, 64, &[0; 31], h(), h()).is_err());
    }
}
