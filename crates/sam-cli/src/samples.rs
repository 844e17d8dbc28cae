//! Sample captures shipped with sam, so that a fresh install has live-capture
//! data to show: escalations, corrections, preferences, feedback and
//! distillations, several with PII and secrets in them (emails, phone
//! numbers, an OpenAI-style key, a GitHub token, home paths) so that the
//! redaction every capture passes is exercised on the first `sam run`.
//! The pipeline takes them as values (`PipelineConfig::captures`).

use anyhow::Context as _;
use sam_capture::capture::Capture;

/// The sample captures as shipped: one [`Capture`] per line, in its serde
/// form (`{"type":"correction","prompt":…,"wrong":…,"correction":…}`).
const SAMPLE_CAPTURES_JSONL: &str = include_str!("../assets/sample-captures.jsonl");

/// The sample captures, parsed.
pub fn sample_captures() -> anyhow::Result<Vec<Capture>> {
    SAMPLE_CAPTURES_JSONL
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("sample capture line {} (a bug in sam)", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_capture::Pipeline;

    #[test]
    fn every_kind_is_there_and_redaction_finds_the_planted_pii() {
        let events = sample_captures().unwrap();
        assert_eq!(events.len(), 24);
        for kind in ["escalation", "correction", "preference", "feedback", "distill"] {
            assert!(events.iter().any(|e| e.kind() == kind), "no {kind}");
        }
        let p = Pipeline::default();
        let mut texts = String::new();
        let mut found = 0;
        for e in &events {
            let (ex, r) = p.prepare(e.to_example(true).unwrap());
            found += r.total();
            texts.push_str(&ex.to_json_line());
        }
        assert!(found >= 6, "{found} findings");
        for planted in [
            "bob.smith@example.org",
            "oncall@acme-corp.example",
            "555 0132",
            "sk-proj-Tq3vX9bLm2Nw8Rk4Pz7Yc1Hd6Fg5Js0Ae3Ub8Vn2Mx4Qo9Wt",
            "ghp_4fK9sQ2mV7xL1cN8pR3tY6wZ0bH5jD2gA7eU",
            "/home/alice",
        ] {
            assert!(!texts.contains(planted), "{planted} survived redaction");
        }
    }
}
