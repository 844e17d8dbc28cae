//! The `[deploy]` section of `sam.toml`.

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::canary::CanarySettings;
use crate::gate::GateSettings;

/// Deployment settings: the default slot, the gate's thresholds
/// (`[deploy.gate]`) and the canary's (`[deploy.canary]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// The slot commands use when none is named.
    pub default_slot: String,
    /// Examples are cut to this many tokens when the gate scores them.
    pub max_seq_len: usize,
    /// The gate's thresholds.
    pub gate: GateSettings,
    /// The canary's settings.
    pub canary: CanarySettings,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            default_slot: "default".into(),
            max_seq_len: 1024,
            gate: GateSettings::default(),
            canary: CanarySettings::default(),
        }
    }
}

impl DeployConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        if !crate::registry::valid_name(&self.default_slot) {
            return Err(crate::Error::BadName(self.default_slot.clone()));
        }
        self.gate.validate()?;
        self.canary.validate()
    }
}
