//! Frozen weight matrices as stored ([`Weight`]), and the element types the
//! packing code reads.

use half::{bf16, f16};

/// The stored values of a weight matrix.
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bfloat16 values.
    Bf16(&'a [bf16]),
    /// IEEE half values.
    F16(&'a [f16]),
}

/// A frozen `rows × cols` row-major matrix (a linear layer's `[out, in]`),
/// read as stored: half-precision values are widened (or, for bf16
/// products, taken as they are) while the product packs them.
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    data: Data<'a>,
    rows: usize,
    cols: usize,
}

impl<'a> Weight<'a> {
    /// A matrix over `data`.
    ///
    /// # Panics
    /// If `data` does not hold `rows · cols` values.
    pub fn new(data: Data<'a>, rows: usize, cols: usize) -> Self {
        let len = match data {
            Data::F32(v) => v.len(),
            Data::Bf16(v) => v.len(),
            Data::F16(v) => v.len(),
        };
        assert_eq!(len, rows * cols, "weight of {len} values for a {rows}x{cols} matrix");
        Self { data, rows, cols }
    }

    /// An f32 matrix.
    pub fn f32(v: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(Data::F32(v), rows, cols)
    }

    /// Rows (a linear layer's outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (a linear layer's inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored values.
    pub fn data(&self) -> Data<'a> {
        self.data
    }

    /// Rows `r0..r1` as a matrix of their own (no copy).
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn row_range(&self, r0: usize, r1: usize) -> Weight<'a> {
        assert!(r0 <= r1 && r1 <= self.rows, "rows {r0}..{r1} of {}", self.rows);
        let (a, b) = (r0 * self.cols, r1 * self.cols);
        let data = match self.data {
            Data::F32(v) => Data::F32(&v[a..b]),
            Data::Bf16(v) => Data::Bf16(&v[a..b]),
            Data::F16(v) => Data::F16(&v[a..b]),
        };
        Weight { data, rows: r1 - r0, cols: self.cols }
    }
}

/// bf16 bits of `x`, rounded to nearest even (NaN stays NaN).
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// A stored element type.
pub(crate) trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn to_bf16_bits(self) -> u16;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn to_bf16_bits(self) -> u16 {
        bf16_bits(self)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn to_bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn to_bf16_bits(self) -> u16 {
        bf16_bits(f16::to_f32(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::excessive_precision)]
    fn rounding_to_bf16_matches_half() {
        for x in [0.0f32, -0.0, 1.0, 1.00390625, 1.0117188, -3.3e-5, 65504.0, 1e30, f32::INFINITY, f32::MIN_POSITIVE] {
            assert_eq!(bf16_bits(x), bf16::from_f32(x).to_bits(), "{x}");
        }
        let mut v = 0.1f32;
        for _ in 0..10_000 {
            assert_eq!(bf16_bits(v), bf16::from_f32(v).to_bits(), "{v}");
            v = v * 1.0007 + 1e-7;
        }
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
    }
}
