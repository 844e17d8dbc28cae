//! The routing source: examples of which model handles which kind of task,
//! from the routing table (`[routing]` in `sam.toml`, with a default table).
//!
//! Each route gives one example per sample prompt ("which model should
//! handle this?" → the model and why) and one for the task type itself. The
//! cursor is the hash of the table, so the examples are made again only when
//! the table changes.

use sam_schema::{Content, Example};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::source::{Batch, Cursor, DataSource};

/// One row of the routing table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The task type (`commit message`, `large refactor`, …).
    pub task: String,
    /// The model that handles it (`local`, `remote`, or a model name).
    pub model: String,
    /// Why, in one sentence.
    pub reason: String,
    /// Sample prompts of this task type.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// The routing table (`[routing]` in `sam.toml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// The routes, in order; empty means the built-in table
    /// ([`RoutingConfig::builtin`]).
    pub routes: Vec<Route>,
}

impl RoutingConfig {
    /// The routes in effect: the configured ones, else the built-in table.
    pub fn effective(&self) -> RoutingConfig {
        if self.routes.is_empty() { Self::builtin() } else { self.clone() }
    }

    /// The built-in table: local for short, narrow or project-specific
    /// tasks; remote for long-context, broad or high-stakes ones.
    pub fn builtin() -> Self {
        let route = |task: &str, model: &str, reason: &str, ex: &[&str]| Route {
            task: task.into(),
            model: model.into(),
            reason: reason.into(),
            examples: ex.iter().map(|s| s.to_string()).collect(),
        };
        Self {
            routes: vec![
                route(
                    "code completion",
                    "local",
                    "short, latency-sensitive completions are what the small local model does well",
                    &["Complete this function body", "Finish the match arms for this enum"],
                ),
                route(
                    "commit message",
                    "local",
                    "summarising a diff is a narrow task the local adapter is trained on",
                    &["Write a commit message for my staged changes", "Summarise this diff in one line"],
                ),
                route(
                    "explain code",
                    "local",
                    "explaining a snippet needs little context and no broad knowledge",
                    &["What does this regex do?", "Explain this function line by line"],
                ),
                route(
                    "project docs question",
                    "local",
                    "the local adapter has learnt the project's documentation",
                    &["How do I roll back an adapter?", "Where is the store kept?"],
                ),
                route(
                    "debug failing test",
                    "local, escalate to remote if unresolved",
                    "most failures are local and quick; hard ones need a stronger model",
                    &["Why does this test fail with a borrow error?", "This assertion fails only on CI, why?"],
                ),
                route(
                    "multi-file refactor",
                    "remote",
                    "changes across many files need a long context and careful planning",
                    &["Split this module into three crates", "Rename this type everywhere and fix the callers"],
                ),
                route(
                    "architecture design",
                    "remote",
                    "design trade-offs need broad knowledge beyond the project",
                    &["Should the scheduler be a separate process?", "Design a plugin system for the CLI"],
                ),
                route(
                    "security review",
                    "remote",
                    "missing a vulnerability is costly, so the strongest model reviews",
                    &["Review this authentication handler for vulnerabilities", "Is this SQL query injectable?"],
                ),
            ],
        }
    }
}

/// Makes routing examples from the table.
#[derive(Debug, Clone)]
pub struct RoutingSource {
    cfg: RoutingConfig,
}

impl RoutingSource {
    /// A source over this table.
    pub fn new(cfg: RoutingConfig) -> Self {
        Self { cfg: cfg.effective() }
    }

    /// Every example of the table.
    pub fn examples(&self) -> Vec<Example> {
        let mut out = Vec::new();
        for r in &self.cfg.routes {
            let answer = format!("Route it to the {} model: {}. (task type: {})", r.model, r.reason, r.task);
            let mk = |instruction: String, input: String| {
                Example::new(Content::Instruction { instruction, input, output: answer.clone() })
                    .with_source("routing")
                    .with_domain("routing")
                    .with_meta("task", r.task.clone())
                    .with_meta("model", r.model.clone())
            };
            out.push(mk(format!("Which model should handle {} tasks?", r.task), String::new()));
            for p in &r.examples {
                out.push(mk("Which model should handle this request?".into(), p.clone()));
            }
        }
        out
    }

    fn table_hash(&self) -> String {
        let json = serde_json::to_string(&self.cfg).expect("the table serialises");
        blake3::hash(json.as_bytes()).to_hex()[..16].to_string()
    }
}

impl DataSource for RoutingSource {
    fn name(&self) -> &str {
        "routing"
    }

    fn collect(&mut self, since: Option<Cursor>) -> Result<Batch> {
        let hash = self.table_hash();
        let mut batch = Batch { cursor: Some(Cursor(hash.clone())), ..Batch::default() };
        if since.is_some_and(|c| c.0 == hash) {
            batch.skip("unchanged");
        } else {
            batch.examples = self.examples();
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_example_per_prompt_and_task_then_nothing_until_the_table_changes() {
        let cfg = RoutingConfig::builtin();
        assert_eq!(RoutingConfig::default().effective(), cfg);
        let want: usize = cfg.routes.iter().map(|r| 1 + r.examples.len()).sum();
        let mut src = RoutingSource::new(cfg.clone());
        let first = src.collect(None).unwrap();
        assert_eq!(first.examples.len(), want);
        assert!(first.examples.iter().all(|e| e.domain == "routing"));
        let again = src.collect(first.cursor.clone()).unwrap();
        assert!(again.examples.is_empty());
        let mut changed = cfg;
        changed.routes[0].model = "remote".into();
        let third = RoutingSource::new(changed).collect(first.cursor).unwrap();
        assert_eq!(third.examples.len(), want);
    }
}
