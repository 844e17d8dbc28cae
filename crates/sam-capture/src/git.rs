//! The git source: each non-merge commit becomes "write the commit message
//! for this change", with a compact diff summary as input and the real
//! message as output.
//!
//! Commits by bots, with empty or trivial messages, whose diff is huge, or
//! that touch only vendored, generated or binary files are skipped (and
//! counted by reason). The summary is bounded: at most `max_files` files,
//! `max_hunks_per_file` hunks per file, `max_hunk_lines` changed lines per
//! hunk, lines cut at `max_line_chars`, the whole at `max_summary_chars`;
//! each cut says what it left out.
//!
//! The cursor records the tip of every local branch of every repository, so
//! a second run walks only the commits made since.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use git2::{Commit, DiffOptions, Oid, Repository, Sort};
use sam_schema::{Content, Example};
use serde::{Deserialize, Serialize};

use crate::error::{CaptureError, Result};
use crate::source::{Batch, Cursor, DataSource};

/// The instruction of every git example.
pub const INSTRUCTION: &str = "Write the commit message for this change.";

/// Settings of the git source (`[capture.git]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GitConfig {
    /// Commits whose changed lines (over kept files) exceed this are skipped.
    pub max_diff_lines: usize,
    /// Files listed in a summary.
    pub max_files: usize,
    /// Hunks shown per file.
    pub max_hunks_per_file: usize,
    /// Changed lines shown per hunk.
    pub max_hunk_lines: usize,
    /// Characters kept of one diff line.
    pub max_line_chars: usize,
    /// Characters of the whole summary.
    pub max_summary_chars: usize,
    /// Messages shorter than this (trimmed) are trivial.
    pub min_message_chars: usize,
    /// Messages that are trivial whatever their length (lowercase, exact).
    pub trivial_messages: Vec<String>,
    /// Author names or emails containing one of these (lowercase) are bots.
    pub bot_patterns: Vec<String>,
    /// Paths containing one of these are vendored or generated.
    pub skip_paths: Vec<String>,
    /// Paths ending with one of these are generated or binary.
    pub skip_suffixes: Vec<String>,
}

impl Default for GitConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            max_diff_lines: 2000,
            max_files: 12,
            max_hunks_per_file: 3,
            max_hunk_lines: 12,
            max_line_chars: 160,
            max_summary_chars: 4000,
            min_message_chars: 8,
            trivial_messages: s(&[
                "wip",
                "fix",
                "fixes",
                "update",
                "updates",
                "typo",
                "minor",
                "changes",
                "test",
                "tmp",
                "asdf",
                ".",
                "commit",
                "stuff",
                "more",
                "cleanup",
                "initial commit",
                "first commit",
                "save",
                "misc",
            ]),
            bot_patterns: s(&["[bot]", "dependabot", "renovate", "github-actions", "greenkeeper", "bot@"]),
            skip_paths: s(&[
                "vendor/",
                "third_party/",
                "third-party/",
                "node_modules/",
                "dist/",
                "target/",
                "build/",
                ".min.",
                "generated",
                "__snapshots__/",
            ]),
            skip_suffixes: s(&[
                "Cargo.lock",
                "package-lock.json",
                "yarn.lock",
                "pnpm-lock.yaml",
                "poetry.lock",
                "go.sum",
                "Gemfile.lock",
                ".pb.go",
                "_pb2.py",
                ".snap",
                ".svg",
                ".png",
                ".jpg",
                ".gif",
                ".ico",
                ".pdf",
                ".zip",
                ".woff",
                ".woff2",
                ".ttf",
                ".map",
            ]),
        }
    }
}

/// Mines commit messages from git repositories.
#[derive(Debug, Clone)]
pub struct GitSource {
    repos: Vec<PathBuf>,
    cfg: GitConfig,
}

/// `repo → branch → last commit id`.
type Tips = BTreeMap<String, BTreeMap<String, String>>;

impl GitSource {
    /// A source over these repositories (working trees or bare).
    pub fn new(repos: impl IntoIterator<Item = impl Into<PathBuf>>, cfg: GitConfig) -> Self {
        Self { repos: repos.into_iter().map(Into::into).collect(), cfg }
    }

    fn repo_key(path: &Path) -> String {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
    }

    fn mine(
        &self,
        path: &Path,
        seen: &BTreeMap<String, String>,
        batch: &mut Batch,
    ) -> Result<BTreeMap<String, String>> {
        let err = |e| CaptureError::git(path, e);
        // A path inside a work tree finds its repository, as git itself does.
        let repo = Repository::discover(path).map_err(err)?;
        let mut tips = BTreeMap::new();
        let mut walk = repo.revwalk().map_err(err)?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE).map_err(err)?;
        for branch in repo.branches(Some(git2::BranchType::Local)).map_err(err)? {
            let (branch, _) = branch.map_err(err)?;
            let (Some(name), Some(oid)) = (branch.name().map_err(err)?, branch.get().target()) else { continue };
            tips.insert(name.to_string(), oid.to_string());
            walk.push(oid).map_err(err)?;
        }
        if tips.is_empty() {
            // A detached HEAD with no branch.
            if let Ok(head) = repo.head()
                && let Some(oid) = head.target()
            {
                tips.insert("HEAD".into(), oid.to_string());
                walk.push(oid).map_err(err)?;
            }
        }
        // Everything reachable from an old tip was mined already. A tip that
        // no longer exists (a deleted branch, rewritten history) hides nothing.
        for oid in seen.values() {
            if let Ok(oid) = Oid::from_str(oid)
                && repo.find_commit(oid).is_ok()
            {
                walk.hide(oid).map_err(err)?;
            }
        }
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let mut done = HashSet::new();
        for oid in walk {
            let oid = oid.map_err(err)?;
            if !done.insert(oid) {
                continue;
            }
            let commit = repo.find_commit(oid).map_err(err)?;
            match self.example(&repo, &commit) {
                Ok(Some(ex)) => batch.examples.push(ex.with_meta("repo", name.clone())),
                Ok(None) => {}
                Err(reason) => batch.skip(reason),
            }
        }
        Ok(tips)
    }

    /// The example of one commit, or the reason it is skipped.
    fn example(&self, repo: &Repository, commit: &Commit<'_>) -> Result<Option<Example>, &'static str> {
        if commit.parent_count() > 1 {
            return Err("merge");
        }
        let author = commit.author();
        let who = format!("{} {}", author.name().unwrap_or(""), author.email().unwrap_or("")).to_lowercase();
        if self.cfg.bot_patterns.iter().any(|p| who.contains(p.as_str())) {
            return Err("bot");
        }
        let message = clean_message(commit.message().unwrap_or(""));
        let first = message.lines().next().unwrap_or("").trim().to_lowercase();
        if message.chars().count() < self.cfg.min_message_chars
            || self.cfg.trivial_messages.iter().any(|t| *t == first && message.lines().count() == 1)
            || first.starts_with("merge branch")
            || first.starts_with("merge pull request")
        {
            return Err("trivial_message");
        }
        let tree = commit.tree().map_err(|_| "unreadable")?;
        let parent_tree = match commit.parent(0) {
            Ok(p) => Some(p.tree().map_err(|_| "unreadable")?),
            Err(_) => None,
        };
        let mut opts = DiffOptions::new();
        opts.context_lines(0);
        let diff =
            repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), Some(&mut opts)).map_err(|_| "unreadable")?;
        let summary = self.summarise(&diff)?;
        Ok(Some(
            Example::new(Content::Instruction { instruction: INSTRUCTION.into(), input: summary, output: message })
                .with_source("git")
                .with_domain("git")
                .with_created_at(commit.time().seconds())
                .with_meta("commit", commit.id().to_string()),
        ))
    }

    fn skipped_path(&self, path: &str) -> bool {
        self.cfg.skip_paths.iter().any(|p| path.contains(p.as_str()))
            || self.cfg.skip_suffixes.iter().any(|s| path.ends_with(s.as_str()))
    }

    fn summarise(&self, diff: &git2::Diff<'_>) -> Result<String, &'static str> {
        struct File {
            path: String,
            status: &'static str,
            added: usize,
            removed: usize,
            hunks: Vec<String>,
            more_hunks: usize,
        }
        let mut files = Vec::new();
        let mut total = 0usize;
        for i in 0..diff.deltas().len() {
            let Ok(Some(patch)) = git2::Patch::from_diff(diff, i) else { continue };
            let delta = patch.delta();
            let path = delta
                .new_file()
                .path()
                .or_else(|| delta.old_file().path())
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            if delta.flags().is_binary() || self.skipped_path(&path) {
                continue;
            }
            let (_, added, removed) = patch.line_stats().map_err(|_| "unreadable")?;
            total += added + removed;
            let status = match delta.status() {
                git2::Delta::Added => "added",
                git2::Delta::Deleted => "deleted",
                git2::Delta::Renamed => "renamed",
                _ => "modified",
            };
            let mut hunks = Vec::new();
            let n_hunks = patch.num_hunks();
            for h in 0..n_hunks.min(self.cfg.max_hunks_per_file) {
                let Ok((hunk, n_lines)) = patch.hunk(h) else { continue };
                let mut text = String::from_utf8_lossy(hunk.header()).trim_end().to_string();
                let mut shown = 0;
                for l in 0..n_lines {
                    let Ok(line) = patch.line_in_hunk(h, l) else { continue };
                    let origin = line.origin();
                    if origin != '+' && origin != '-' {
                        continue;
                    }
                    if shown == self.cfg.max_hunk_lines {
                        text.push_str(&format!("\n… ({} more lines)", n_lines - l));
                        break;
                    }
                    let content = String::from_utf8_lossy(line.content());
                    let content = content.trim_end();
                    let cut: String = content.chars().take(self.cfg.max_line_chars).collect();
                    let ell = if cut.len() < content.len() { "…" } else { "" };
                    text.push_str(&format!("\n{origin}{cut}{ell}"));
                    shown += 1;
                }
                hunks.push(text);
            }
            let more_hunks = n_hunks.saturating_sub(self.cfg.max_hunks_per_file);
            files.push(File { path, status, added, removed, hunks, more_hunks });
        }
        if files.is_empty() {
            return Err("no_reviewable_files");
        }
        if total > self.cfg.max_diff_lines {
            return Err("huge_diff");
        }
        let (added, removed) = files.iter().fold((0, 0), |(a, r), f| (a + f.added, r + f.removed));
        let mut out =
            format!("{} file{} changed, +{added} -{removed}\n", files.len(), if files.len() == 1 { "" } else { "s" });
        for f in files.iter().take(self.cfg.max_files) {
            out.push_str(&format!("{} ({}, +{} -{})\n", f.path, f.status, f.added, f.removed));
        }
        if files.len() > self.cfg.max_files {
            out.push_str(&format!("… ({} more files)\n", files.len() - self.cfg.max_files));
        }
        for f in files.iter().take(self.cfg.max_files) {
            let mut block = format!("\n--- {}\n", f.path);
            for h in &f.hunks {
                block.push_str(h);
                block.push('\n');
            }
            if f.more_hunks > 0 {
                block.push_str(&format!("… ({} more hunks)\n", f.more_hunks));
            }
            if out.len() + block.len() > self.cfg.max_summary_chars {
                out.push_str("\n… (diff cut to fit)\n");
                break;
            }
            out.push_str(&block);
        }
        Ok(out.trim_end().to_string())
    }
}

/// The message without trailers (`Signed-off-by:`, `Co-authored-by:`, …) and
/// comment lines, trimmed.
fn clean_message(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let lower = l.to_lowercase();
            !["signed-off-by:", "co-authored-by:", "reviewed-by:", "change-id:", "acked-by:"]
                .iter()
                .any(|t| lower.starts_with(t))
        })
        .collect();
    lines.join("\n").trim().to_string()
}

impl DataSource for GitSource {
    fn name(&self) -> &str {
        "git"
    }

    fn collect(&mut self, since: Option<Cursor>) -> Result<Batch> {
        let seen: Tips = match &since {
            Some(c) => serde_json::from_str(c.as_str())
                .map_err(|e| CaptureError::Cursor { source_name: "git".into(), reason: e.to_string() })?,
            None => Tips::new(),
        };
        let mut tips = seen.clone();
        let mut batch = Batch::default();
        for path in &self.repos {
            let key = Self::repo_key(path);
            let empty = BTreeMap::new();
            let repo_seen = seen.get(&key).unwrap_or(&empty);
            let new = self.mine(path, repo_seen, &mut batch)?;
            tips.insert(key, new);
        }
        batch.cursor = Some(Cursor(serde_json::to_string(&tips).expect("tips serialise")));
        Ok(batch)
    }
}
