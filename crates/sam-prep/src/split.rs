//! Stable train/valid/test splits.
//!
//! An example's split is a function of its id alone: the blake3 hash of
//! `"sam-split-v1\0"` followed by the id, read as a number in `[0, 1)`, is
//! compared with the cumulative ratios.
//! Adding data therefore never moves an old example from one split to
//! another, and every domain is split in the configured proportions (each
//! example is an independent draw, so a domain of `n` examples puts about
//! `n` times the ratio in each split: stratified by construction rather than
//! by per-domain quotas, which would shift old examples as domains grow).

use crate::cache::Split;

/// The rule, as written into the manifest.
pub const SPLIT_RULE: &str = "split = cumulative-ratio bucket of u64(blake3(\"sam-split-v1\\0\" + id)[0..8], little-endian) / 2^64; depends on the id only";

/// Split proportions (any positive scale: `90,5,5` or `0.9,0.05,0.05`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitRatios {
    /// Train share.
    pub train: f64,
    /// Validation share.
    pub valid: f64,
    /// Test share.
    pub test: f64,
}

impl Default for SplitRatios {
    fn default() -> Self {
        Self { train: 90.0, valid: 5.0, test: 5.0 }
    }
}

impl std::str::FromStr for SplitRatios {
    type Err = String;

    /// Parse `train,valid,test`, e.g. `90,5,5`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("split {s:?}: {e}"))?;
        let [train, valid, test] = parts[..] else {
            return Err(format!("split {s:?}: expected three numbers train,valid,test (e.g. 90,5,5)"));
        };
        let r = Self { train, valid, test };
        if [train, valid, test].iter().any(|x| !x.is_finite() || *x < 0.0) || train <= 0.0 {
            return Err(format!("split {s:?}: shares must be non-negative and train positive"));
        }
        Ok(r)
    }
}

impl SplitRatios {
    /// The split of an example with this id.
    pub fn split_of(&self, id: &str) -> Split {
        let mut h = blake3::Hasher::new();
        h.update(b"sam-split-v1\0");
        h.update(id.as_bytes());
        let bytes = h.finalize();
        let x = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let total = self.train + self.valid + self.test;
        if u < self.train / total {
            Split::Train
        } else if u < (self.train + self.valid) / total {
            Split::Valid
        } else {
            Split::Test
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_and_parsing() {
        let r: SplitRatios = "90,5,5".parse().unwrap();
        assert_eq!(r, SplitRatios::default());
        assert!("90,5".parse::<SplitRatios>().is_err());
        assert!("0,50,50".parse::<SplitRatios>().is_err());
        let mut n = [0usize; 3];
        for i in 0..20_000 {
            n[r.split_of(&format!("ex-{i}")) as usize] += 1;
        }
        assert!((17_600..18_400).contains(&n[0]), "{n:?}");
        assert!((800..1_200).contains(&n[1]), "{n:?}");
        assert!((800..1_200).contains(&n[2]), "{n:?}");
        // Same id, same split; the ratios, not the data, decide.
        assert_eq!(r.split_of("abc"), r.split_of("abc"));
        let all_test = SplitRatios { train: 1e-12, valid: 0.0, test: 1.0 };
        assert_eq!(all_test.split_of("abc"), Split::Test);
    }
}
