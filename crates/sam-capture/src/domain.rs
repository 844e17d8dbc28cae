//! The domain classifier: which subject an example is about (`code`, `git`,
//! `docs`, `routing`, `shell`, `data`, `general`, …).
//!
//! An example that already has a domain keeps it. Otherwise its source
//! decides when the source has a fixed subject (`git` examples are about
//! git), and keywords decide for the rest: each rule counts how many of its
//! keywords occur in the text; the rule with the most hits wins when it has
//! at least `min_hits`, else the example is `default`. Rules and sources are
//! configurable (`[capture.domains]` in `sam.toml`).

use std::collections::BTreeMap;

use sam_schema::Example;
use serde::{Deserialize, Serialize};

/// One keyword rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRule {
    /// The domain this rule assigns.
    pub domain: String,
    /// Lowercase keywords; each one present counts one hit.
    pub keywords: Vec<String>,
}

/// Settings of the classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DomainConfig {
    /// Sources whose examples always have this domain.
    pub by_source: BTreeMap<String, String>,
    /// Keyword rules, tried in order (ties go to the earlier rule).
    pub rules: Vec<DomainRule>,
    /// Hits a rule needs to win.
    pub min_hits: usize,
    /// The domain when no rule wins.
    pub default: String,
}

impl Default for DomainConfig {
    fn default() -> Self {
        let rule = |domain: &str, kw: &[&str]| DomainRule {
            domain: domain.into(),
            keywords: kw.iter().map(|s| s.to_string()).collect(),
        };
        Self {
            by_source: [("git", "git"), ("code", "code"), ("docs", "docs"), ("routing", "routing")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            rules: vec![
                rule(
                    "git",
                    &["git ", "commit", "rebase", "merge", "branch", "pull request", "cherry-pick", "stash", "diff"],
                ),
                rule(
                    "code",
                    &[
                        "```",
                        "fn ",
                        "def ",
                        "function",
                        "class ",
                        "struct ",
                        "impl ",
                        "return ",
                        "import ",
                        "compile",
                        "error[",
                        "traceback",
                        "refactor",
                        "variable",
                        "const ",
                        "let ",
                        "#include",
                        "async ",
                    ],
                ),
                rule("shell", &["bash", "shell", "$ ", "grep ", "chmod", "sudo ", "export ", "pipe", "terminal"]),
                rule("data", &["sql", "select ", "database", "query", "table", "csv", "dataframe", "index"]),
                rule("docs", &["documentation", "readme", "markdown", "docstring", "tutorial", "guide"]),
                rule("routing", &["which model", "route", "escalat", "remote model", "local model"]),
            ],
            min_hits: 2,
            default: "general".into(),
        }
    }
}

/// Assigns domains to examples.
///
/// ```
/// use sam_capture::domain::{DomainClassifier, DomainConfig};
/// use sam_schema::{Content, Example};
///
/// let c = DomainClassifier::new(DomainConfig::default());
/// let ex = Example::new(Content::Instruction {
///     instruction: "How do I squash the last three commits before I open a pull request?".into(),
///     input: String::new(),
///     output: "Run `git rebase -i HEAD~3` and mark two commits as squash.".into(),
/// });
/// assert_eq!(c.classify(&ex), "git");
/// ```
#[derive(Debug, Clone)]
pub struct DomainClassifier {
    cfg: DomainConfig,
}

impl DomainClassifier {
    /// A classifier with these rules.
    pub fn new(cfg: DomainConfig) -> Self {
        Self { cfg }
    }

    /// The domain of `ex`: its own if set, else its source's, else the best rule's.
    pub fn classify(&self, ex: &Example) -> String {
        if !ex.domain.is_empty() {
            return ex.domain.clone();
        }
        if let Some(d) = self.cfg.by_source.get(&ex.source) {
            return d.clone();
        }
        let text: String = ex.content.fields().iter().map(|(_, t)| t.to_lowercase()).collect::<Vec<_>>().join("\n");
        self.classify_text(&text)
    }

    /// The domain of a lowercase text by the keyword rules alone.
    pub fn classify_text(&self, text: &str) -> String {
        let mut best: Option<(&str, usize)> = None;
        for rule in &self.cfg.rules {
            let hits = rule.keywords.iter().filter(|k| text.contains(k.as_str())).count();
            if hits >= self.cfg.min_hits && best.is_none_or(|(_, b)| hits > b) {
                best = Some((&rule.domain, hits));
            }
        }
        best.map(|(d, _)| d.to_string()).unwrap_or_else(|| self.cfg.default.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_schema::Content;

    #[test]
    fn cases() {
        let c = DomainClassifier::new(DomainConfig::default());
        let ex = |source: &str, q: &str, a: &str| {
            Example::new(Content::Instruction { instruction: q.into(), input: String::new(), output: a.into() })
                .with_source(source)
        };
        for (ex, want) in [
            (ex("git", "anything", "at all"), "git"),
            (ex("escalation", "Why does this fn not compile?", "```rust\nfn f() -> u8 { return 1 }\n```"), "code"),
            (ex("feedback", "Write a SQL query", "SELECT name FROM users; the table needs an index"), "data"),
            (ex("feedback", "What's the capital of France?", "Paris."), "general"),
            (ex("escalation", "grep for a word in bash", "Use `grep -r word .` in your shell"), "shell"),
        ] {
            assert_eq!(c.classify(&ex), want, "{ex:?}");
        }
        let mut set = ex("escalation", "x", "y");
        set.domain = "math".into();
        assert_eq!(c.classify(&set), "math");
    }
}
