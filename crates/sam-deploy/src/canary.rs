//! Canary routing and the canary's decision.
//!
//! **Routing** is sticky, the way Unleash and flagd do it: a key (a user or
//! session id) is hashed with the slot's name (`"{slot}:{key}"`, MurmurHash3
//! x86 32-bit, seed 0) into one of [`BUCKETS`] buckets, and the key takes the
//! canary when its bucket is below the threshold that the percentage sets.
//! The denominator never changes, so raising the percentage only adds keys:
//! every key that was in at 10% is still in at 20%.
//!
//! **The decision** ([`decide`]) reads judgements of answers given by the
//! canary's version and by production's (good: positive feedback; bad: a
//! correction or an escalation), once both have at least
//! [`CanarySettings::min_judgements`]: the canary is promoted when its good
//! rate is at least production's minus [`CanarySettings::tolerance`], rolled
//! back when it is below production's by more than
//! [`CanarySettings::rollback_margin`], and held for a person in between (as
//! Flagger pauses an inconclusive analysis).
//!
//! ```
//! use sam_deploy::canary::{bucket, in_canary, BUCKETS};
//! let b = bucket("default", "user-42");
//! assert!(b < BUCKETS);
//! // Raising the percentage keeps every key that was in.
//! assert!(!in_canary("default", "user-42", 10.0) || in_canary("default", "user-42", 20.0));
//! ```

use serde::{Deserialize, Serialize};

/// How many buckets keys are hashed into (a percentage moves the threshold
/// in steps of 0.01 points).
pub const BUCKETS: u32 = 10_000;

/// MurmurHash3 (x86, 32-bit) of `data` with `seed`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    // Reading from a slice cannot fail.
    murmur3::murmur3_32(&mut std::io::Cursor::new(data), seed).unwrap_or_default()
}

/// The bucket (`0..BUCKETS`) of `key` in `slot`.
pub fn bucket(slot: &str, key: &str) -> u32 {
    murmur3_32(format!("{slot}:{key}").as_bytes(), 0) % BUCKETS
}

/// The bucket threshold of a percentage: keys in buckets below it take the
/// canary.
pub fn threshold(percent: f64) -> u32 {
    let p = if percent.is_finite() { percent.clamp(0.0, 100.0) } else { 0.0 };
    (p / 100.0 * f64::from(BUCKETS)).round() as u32
}

/// Whether `key` is routed to the canary of `slot` at `percent`.
pub fn in_canary(slot: &str, key: &str, percent: f64) -> bool {
    bucket(slot, key) < threshold(percent)
}

/// Judgements of the answers one adapter version gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgements {
    /// Answers rated good (positive feedback).
    pub good: u64,
    /// Answers judged bad (corrected, or escalated to a larger model).
    pub bad: u64,
}

impl Judgements {
    /// All judgements.
    pub fn total(&self) -> u64 {
        self.good + self.bad
    }

    /// Share of good judgements (`None` without any).
    pub fn good_rate(&self) -> Option<f64> {
        (self.total() > 0).then(|| self.good as f64 / self.total() as f64)
    }
}

/// When a canary is decided (`[deploy.canary]` in `sam.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanarySettings {
    /// Traffic share of a new canary, in percent, when none is given.
    pub percent: f64,
    /// Judgements each side (canary and production) needs before a decision.
    pub min_judgements: u64,
    /// Promote when the canary's good rate is at least production's minus this.
    pub tolerance: f64,
    /// Roll back when the canary's good rate is below production's by more
    /// than this.
    pub rollback_margin: f64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self { percent: 10.0, min_judgements: 20, tolerance: 0.05, rollback_margin: 0.10 }
    }
}

impl CanarySettings {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
        if !(self.percent > 0.0 && self.percent <= 100.0) {
            return bad(format!("canary percent {} is not in (0, 100]", self.percent));
        }
        if !(0.0..=1.0).contains(&self.tolerance) || !(0.0..=1.0).contains(&self.rollback_margin) {
            return bad("canary tolerance and rollback_margin are rates between 0 and 1".into());
        }
        if self.rollback_margin < self.tolerance {
            return bad(format!(
                "canary rollback_margin {} is below tolerance {}: a canary could be promoted and rolled back at once",
                self.rollback_margin, self.tolerance
            ));
        }
        if self.min_judgements == 0 {
            return bad("canary min_judgements must be at least 1".into());
        }
        Ok(())
    }
}

/// What the judgements say about a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CanaryDecision {
    /// Not enough judgements yet.
    Wait {
        /// The canary's judgements so far.
        canary: Judgements,
        /// Production's judgements so far.
        production: Judgements,
        /// Judgements each side needs.
        needed: u64,
    },
    /// The canary is as good as production (within the tolerance): promote it.
    Promote {
        /// The canary's good rate.
        canary_rate: f64,
        /// Production's good rate.
        production_rate: f64,
        /// The tolerance applied.
        tolerance: f64,
        /// The canary's judgements.
        canary: Judgements,
        /// Production's judgements.
        production: Judgements,
    },
    /// The canary is worse than production by more than the margin: roll back.
    Rollback {
        /// The canary's good rate.
        canary_rate: f64,
        /// Production's good rate.
        production_rate: f64,
        /// The margin applied.
        margin: f64,
        /// The canary's judgements.
        canary: Judgements,
        /// Production's judgements.
        production: Judgements,
    },
    /// Worse than the tolerance allows but not by the rollback margin: a
    /// person decides (`sam deploy promote` or `sam deploy canary --abort`).
    Hold {
        /// The canary's good rate.
        canary_rate: f64,
        /// Production's good rate.
        production_rate: f64,
        /// The canary's judgements.
        canary: Judgements,
        /// Production's judgements.
        production: Judgements,
    },
}

impl std::fmt::Display for CanaryDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CanaryDecision::Wait { canary, production, needed } => write!(
                f,
                "waiting for judgements: canary {} and production {} of the {needed} each needs",
                canary.total(),
                production.total()
            ),
            CanaryDecision::Promote { canary_rate, production_rate, tolerance, canary, production } => write!(
                f,
                "canary good rate {canary_rate:.3} ({}/{}) is at least production's {production_rate:.3} ({}/{}) minus the tolerance {tolerance}",
                canary.good,
                canary.total(),
                production.good,
                production.total()
            ),
            CanaryDecision::Rollback { canary_rate, production_rate, margin, canary, production } => write!(
                f,
                "canary good rate {canary_rate:.3} ({}/{}) is below production's {production_rate:.3} ({}/{}) by more than the margin {margin}",
                canary.good,
                canary.total(),
                production.good,
                production.total()
            ),
            CanaryDecision::Hold { canary_rate, production_rate, canary, production } => write!(
                f,
                "inconclusive: canary good rate {canary_rate:.3} ({}/{}) vs production's {production_rate:.3} ({}/{}); promote or abort it by hand",
                canary.good,
                canary.total(),
                production.good,
                production.total()
            ),
        }
    }
}

/// Decides a canary from the judgements of its answers and production's.
pub fn decide(canary: Judgements, production: Judgements, s: &CanarySettings) -> CanaryDecision {
    let (Some(c), Some(p)) = (canary.good_rate(), production.good_rate()) else {
        return CanaryDecision::Wait { canary, production, needed: s.min_judgements };
    };
    if canary.total() < s.min_judgements || production.total() < s.min_judgements {
        return CanaryDecision::Wait { canary, production, needed: s.min_judgements };
    }
    // A small epsilon keeps exact ties (0.9 - 0.05 vs 0.85) on the kind side.
    const EPS: f64 = 1e-9;
    if c + EPS >= p - s.tolerance {
        CanaryDecision::Promote { canary_rate: c, production_rate: p, tolerance: s.tolerance, canary, production }
    } else if c < p - s.rollback_margin - EPS {
        CanaryDecision::Rollback { canary_rate: c, production_rate: p, margin: s.rollback_margin, canary, production }
    } else {
        CanaryDecision::Hold { canary_rate: c, production_rate: p, canary, production }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(good: u64, bad: u64) -> Judgements {
        Judgements { good, bad }
    }

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        // From SMHasher / the Unleash clients' shared test vectors.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514E_28B7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248B_FA47);
        assert_eq!(murmur3_32(b"The quick brown fox jumps over the lazy dog", 0), 0x2E4F_F723);
        // Unleash's normalizedHash(id, group) = murmur3("group:id") % 100 + 1.
        assert_eq!(murmur3_32(b"gr1:123", 0) % 100 + 1, 73);
        assert_eq!(murmur3_32(b"groupX:999", 0) % 100 + 1, 25);
    }

    #[test]
    fn threshold_is_monotone_and_clamped() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(10.0), 1000);
        assert_eq!(threshold(100.0), BUCKETS);
        assert_eq!(threshold(150.0), BUCKETS);
        assert_eq!(threshold(f64::NAN), 0);
        assert!(threshold(10.5) > threshold(10.0));
    }

    #[test]
    fn decisions() {
        let s = CanarySettings::default();
        let cases = [
            (j(5, 0), j(50, 5), "wait"),
            (j(18, 2), j(5, 0), "wait"),
            (j(18, 2), j(36, 4), "promote"),
            (j(17, 3), j(36, 4), "promote"),
            (j(16, 4), j(36, 4), "hold"),
            (j(10, 10), j(36, 4), "rollback"),
            (j(20, 0), j(20, 20), "promote"),
        ];
        for (c, p, want) in cases {
            let got = match decide(c, p, &s) {
                CanaryDecision::Wait { .. } => "wait",
                CanaryDecision::Promote { .. } => "promote",
                CanaryDecision::Rollback { .. } => "rollback",
                CanaryDecision::Hold { .. } => "hold",
            };
            assert_eq!(got, want, "canary {c:?} production {p:?}");
        }
        assert!(CanarySettings { rollback_margin: 0.01, ..s.clone() }.validate().is_err());
        assert!(s.validate().is_ok());
    }
}
