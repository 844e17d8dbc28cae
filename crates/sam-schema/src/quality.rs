//! Quality assessment of one example: a score in `[0, 1]`, a tier, and the
//! reasons, so that a user can see why an example was demoted.
//!
//! The checks follow the heuristics of web-scale data filters (Gopher's
//! repetition rules: duplicate-line fraction and the share of text covered by
//! the most frequent n-gram) plus checks that matter for assistant data:
//! empty fields, length bounds, unclosed code fences, cut-off answers, refusal
//! boilerplate, preference pairs whose two answers are the same, answers that
//! only echo the prompt, answers that are mostly redaction placeholders, and
//! answers that are mostly symbols (binary or minified junk).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::example::{Content, Role, Tier};
use crate::hash::normalize;

/// Thresholds of the checks. The defaults suit assistant data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityConfig {
    /// Fewer characters than this in a response is too short.
    pub min_response_chars: usize,
    /// More characters than this in the whole example is too long.
    pub max_total_chars: usize,
    /// Maximum share of lines that repeat an earlier line (Gopher: 0.3).
    pub max_duplicate_line_fraction: f64,
    /// Maximum share of characters covered by the most frequent 2-, 3- and
    /// 4-gram of words (Gopher: 0.20, 0.18, 0.16).
    pub max_top_ngram_fraction: [f64; 3],
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_response_chars: 2,
            max_total_chars: 32_000,
            max_duplicate_line_fraction: 0.3,
            max_top_ngram_fraction: [0.20, 0.18, 0.16],
        }
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Short machine name of the check (`empty`, `too_short`, `repetition`, …).
    pub check: String,
    /// What was found, for people.
    pub message: String,
    /// How much it lowers the score (1.0 = rejects the example).
    pub penalty: f64,
}

/// The result of [`assess`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// Score in `[0, 1]`: 1 minus the penalties, floored at 0.
    pub score: f64,
    /// The tier the score earns ([`Tier::from_score`]).
    pub tier: Tier,
    /// Every failed check.
    pub findings: Vec<Finding>,
}

impl Assessment {
    /// Whether a check rejected the example outright (score 0).
    pub fn rejected(&self) -> bool {
        self.findings.iter().any(|f| f.penalty >= 1.0)
    }

    /// The findings' messages joined with `; `.
    pub fn reasons(&self) -> String {
        self.findings.iter().map(|f| format!("{}: {}", f.check, f.message)).collect::<Vec<_>>().join("; ")
    }
}

/// Assess one example's content.
///
/// ```
/// use sam_schema::{quality::{assess, QualityConfig}, Content, Tier};
/// let good = Content::Instruction {
///     instruction: "What does `git rebase -i` do?".into(),
///     input: String::new(),
///     output: "It opens an editor listing the commits to replay, so you can reorder, squash or edit them.".into(),
/// };
/// assert_eq!(assess(&good, &QualityConfig::default()).tier, Tier::Gold);
/// let empty = Content::Completion { text: "   ".into() };
/// assert!(assess(&empty, &QualityConfig::default()).rejected());
/// ```
pub fn assess(content: &Content, cfg: &QualityConfig) -> Assessment {
    let mut findings = Vec::new();
    let mut add = |check: &str, message: String, penalty: f64| {
        findings.push(Finding { check: check.to_string(), message, penalty });
    };

    // Empty content.
    for (name, text) in content.fields() {
        let optional = name == "input" || name == "system";
        if !optional && text.trim().is_empty() {
            add("empty", format!("field {name:?} is empty"), 1.0);
        }
    }
    match content {
        Content::Chat { messages } => {
            if !messages.iter().any(|m| m.role == Role::Assistant) {
                add("no_response", "the conversation has no assistant turn".into(), 1.0);
            } else if messages.last().map(|m| m.role) != Some(Role::Assistant) {
                add("dangling_turn", "the conversation ends on a non-assistant turn".into(), 0.2);
            }
        }
        Content::Preference { chosen, rejected, .. } if normalize(chosen) == normalize(rejected) => {
            add("same_responses", "chosen and rejected are the same text".into(), 1.0);
        }
        _ => {}
    }

    // Length.
    let total: usize = content.fields().iter().map(|(_, t)| t.chars().count()).sum();
    if total > cfg.max_total_chars {
        add("too_long", format!("{total} characters, more than {}", cfg.max_total_chars), 0.5);
    }
    for out in content.output_texts() {
        let n = out.trim().chars().count();
        if n > 0 && n < cfg.min_response_chars {
            add("too_short", format!("a response has {n} characters, fewer than {}", cfg.min_response_chars), 0.5);
        }
    }

    // Repetition, completeness and boilerplate of each response.
    for out in content.output_texts() {
        let dup_lines = duplicate_line_fraction(out).filter(|f| *f > cfg.max_duplicate_line_fraction);
        if let Some(frac) = dup_lines {
            add("repetition", format!("{:.0}% of lines repeat an earlier line", frac * 100.0), 0.5);
        }
        // One repetition finding per response is enough.
        for (i, n) in [2usize, 3, 4].into_iter().enumerate().filter(|_| dup_lines.is_none()) {
            if let Some(frac) = top_ngram_fraction(out, n)
                && frac > cfg.max_top_ngram_fraction[i]
            {
                add("repetition", format!("the most frequent {n}-gram covers {:.0}% of the text", frac * 100.0), 0.4);
                break;
            }
        }
        if out.matches("```").count() % 2 == 1 {
            add("incomplete", "a code fence is not closed".into(), 0.3);
        }
        if looks_cut_off(out) {
            add("incomplete", "the response stops mid-sentence".into(), 0.2);
        }
        if let Some(p) = boilerplate(out) {
            add("boilerplate", format!("refusal or boilerplate: {p:?}"), 0.5);
        }
        if let Some(frac) = placeholder_fraction(out).filter(|f| *f > 0.5) {
            add("redacted", format!("{:.0}% of the response is redaction placeholders", frac * 100.0), 0.3);
        }
        let chars = out.chars().filter(|c| !c.is_whitespace()).count();
        let alnum = out.chars().filter(|c| c.is_alphanumeric()).count();
        if chars > 40 && (alnum as f64) < 0.25 * chars as f64 {
            add("symbols", format!("only {alnum} of {chars} characters are letters or digits"), 0.3);
        }
    }

    // A response that repeats the prompt teaches nothing.
    let prompt = normalize(&content.input_fields().iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" "));
    if !prompt.is_empty() && content.output_texts().iter().any(|o| normalize(o) == prompt) {
        add("echo", "a response repeats the prompt".into(), 0.5);
    }

    let penalty: f64 = findings.iter().map(|f| f.penalty).sum();
    let score = (1.0 - penalty).clamp(0.0, 1.0);
    Assessment { score, tier: Tier::from_score(score), findings }
}

/// Share of non-blank lines that repeat an earlier line; `None` below 4 lines.
fn duplicate_line_fraction(text: &str) -> Option<f64> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && l.len() > 3).collect();
    if lines.len() < 4 {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let dups = lines.iter().filter(|l| !seen.insert(**l)).count();
    Some(dups as f64 / lines.len() as f64)
}

/// Share of the characters (of words) covered by the most frequent word
/// n-gram; `None` when the text is too short to judge (< 20 words).
fn top_ngram_fraction(text: &str, n: usize) -> Option<f64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 20 {
        return None;
    }
    let total_chars: usize = words.iter().map(|w| w.len()).sum();
    let mut counts: HashMap<&[&str], usize> = HashMap::new();
    for gram in words.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    let (gram, count) = counts.into_iter().max_by_key(|(g, c)| (*c, g.iter().map(|w| w.len()).sum::<usize>()))?;
    if count < 2 {
        return Some(0.0);
    }
    let gram_chars: usize = gram.iter().map(|w| w.len()).sum();
    Some((gram_chars * count) as f64 / total_chars as f64)
}

fn looks_cut_off(text: &str) -> bool {
    let t = text.trim_end();
    // Long prose that ends on a comma, a dangling connective or an ellipsis.
    if t.split_whitespace().count() < 8 || t.ends_with("```") {
        return false;
    }
    let last = t.split_whitespace().last().unwrap_or("").to_lowercase();
    t.ends_with(',')
        || t.ends_with("...") && !t.ends_with("....")
        || matches!(last.as_str(), "and" | "or" | "the" | "a" | "an" | "to" | "of" | "with" | "because")
}

const BOILERPLATE: &[&str] = &[
    "as an ai language model",
    "as a large language model",
    "as an ai assistant, i",
    "i'm sorry, but as an ai",
    "i cannot fulfill that request",
    "i can't fulfill that request",
    "i'm not able to provide",
    "i am not able to provide",
    "i don't have access to real-time",
    "i do not have access to real-time",
    "my knowledge cutoff",
    "my training data only goes",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i cannot assist with that",
    "i can't help with that",
    "i'm unable to help with",
    "lorem ipsum",
];

/// Share of the words that are redaction placeholders (`<EMAIL>`, …);
/// `None` for an empty text.
fn placeholder_fraction(text: &str) -> Option<f64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let is_placeholder = |w: &&str| {
        let w = w.trim_matches(|c: char| !c.is_alphanumeric() && c != '<' && c != '>' && c != '_');
        w.len() > 2
            && w.starts_with('<')
            && w.ends_with('>')
            && w[1..w.len() - 1].chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
    };
    Some(words.iter().filter(|w| is_placeholder(w)).count() as f64 / words.len() as f64)
}

fn boilerplate(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    BOILERPLATE.iter().copied().find(|p| lower.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::{Message, Prompt};

    fn instr(output: &str) -> Content {
        Content::Instruction { instruction: "Explain this".into(), input: String::new(), output: output.into() }
    }

    fn checks(c: &Content) -> Vec<String> {
        assess(c, &QualityConfig::default()).findings.into_iter().map(|f| f.check).collect()
    }

    #[test]
    fn check_cases() {
        let repeated = "the same line here\n".repeat(8);
        let ngram = "buy now buy now ".repeat(15);
        let cases: Vec<(Content, &[&str])> = vec![
            (instr("It returns the number of bytes written, or an error."), &[]),
            (instr(""), &["empty"]),
            (instr("x"), &["too_short"]),
            (instr(&repeated), &["repetition"]),
            (instr(&ngram), &["repetition"]),
            (instr("Here is the code:\n```rust\nfn main() {}\n"), &["incomplete"]),
            (instr("The function opens the file, reads each line and then it calls the parser with"), &["incomplete"]),
            (instr("As an AI language model, I have no opinion on tabs."), &["boilerplate"]),
            (instr("I'm sorry, but as an AI I cannot browse."), &["boilerplate"]),
            (instr("Explain this"), &["echo"]),
            (instr("<EMAIL> <PHONE>"), &["redacted"]),
            (instr("Write to <EMAIL> and ask for the staging credentials."), &[]),
            (instr("}}}}{{{{;;;;))))((((////\\\\====----++++****&&&&^^^^%%%%"), &["symbols"]),
            (instr("```rust\nfn main() { println!(\"{}\", 1 + 2); }\n```"), &[]),
            (Content::Chat { messages: vec![Message::user("hi")] }, &["no_response"]),
            (
                Content::Preference {
                    prompt: Prompt::Text("p".into()),
                    chosen: "Same  answer".into(),
                    rejected: "Same answer".into(),
                },
                &["same_responses"],
            ),
        ];
        for (content, want) in cases {
            let got = checks(&content);
            assert_eq!(got, want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{content:?}");
        }
    }

    #[test]
    fn tiers_follow_penalties() {
        let cfg = QualityConfig::default();
        assert_eq!(assess(&instr("A fine, complete answer."), &cfg).tier, Tier::Gold);
        let a = assess(&instr("x"), &cfg);
        assert_eq!((a.score, a.tier), (0.5, Tier::Bronze));
        assert_eq!(assess(&instr(""), &cfg).tier, Tier::Unverified);
    }
}
