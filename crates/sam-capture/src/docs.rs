//! The docs source: markdown files become one question/answer example per
//! section. The question comes from the heading path (`Deploy › Rollback`),
//! the answer is the section's own text (its subsections make their own
//! examples), code blocks kept intact — a `#` inside a fence is no heading.

use std::path::{Path, PathBuf};

use sam_schema::{Content, Example};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::files;
use crate::source::{Batch, Cursor, DataSource};

/// Settings of the docs source (`[capture.docs]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DocsConfig {
    /// File extensions read as markdown.
    pub extensions: Vec<String>,
    /// Sections whose text is shorter than this are skipped.
    pub min_answer_chars: usize,
    /// Sections longer than this are skipped (a reference table, a changelog dump).
    pub max_answer_chars: usize,
}

impl Default for DocsConfig {
    fn default() -> Self {
        Self { extensions: vec!["md".into(), "markdown".into()], min_answer_chars: 40, max_answer_chars: 8000 }
    }
}

/// One section of a markdown document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Heading titles from the top level down to this section.
    pub path: Vec<String>,
    /// The section's own text (without its subsections), trimmed.
    pub body: String,
}

/// Split markdown into sections by ATX (`## x`) and setext (`x` over `===`)
/// headings, ignoring headings inside fenced code blocks and front matter.
///
/// ```
/// let s = sam_capture::docs::sections("# A\nintro\n## B\n```sh\n# not a heading\n```\n");
/// assert_eq!(s[1].path, ["A", "B"]);
/// assert_eq!(s[1].body, "```sh\n# not a heading\n```");
/// ```
pub fn sections(markdown: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut body: Vec<&str> = Vec::new();
    let mut fence: Option<String> = None;
    let mut lines = markdown.lines().peekable();
    // Front matter.
    if markdown.starts_with("---\n") {
        lines.next();
        for l in lines.by_ref() {
            if l.trim_end() == "---" {
                break;
            }
        }
    }
    let flush = |stack: &Vec<(usize, String)>, body: &mut Vec<&str>, out: &mut Vec<Section>| {
        let text = body.join("\n").trim().to_string();
        body.clear();
        if !text.is_empty() {
            out.push(Section { path: stack.iter().map(|(_, t)| t.clone()).collect(), body: text });
        }
    };
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(f) = &fence {
            if trimmed.starts_with(f.as_str()) && trimmed.trim_end().chars().all(|c| c == f.as_bytes()[0] as char) {
                fence = None;
            }
            body.push(line);
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            let ch = trimmed.as_bytes()[0] as char;
            let n = trimmed.chars().take_while(|c| *c == ch).count();
            fence = Some(ch.to_string().repeat(n));
            body.push(line);
            continue;
        }
        let heading = atx_heading(line).or_else(|| {
            let next = lines.peek()?.trim();
            let level = if !next.is_empty() && next.chars().all(|c| c == '=') {
                1
            } else if next.len() >= 2 && next.chars().all(|c| c == '-') {
                2
            } else {
                return None;
            };
            let title = line.trim();
            if title.is_empty() || line.starts_with("    ") || title.starts_with(['-', '*', '>', '|']) {
                return None;
            }
            Some((level, title.to_string()))
        });
        match heading {
            Some((level, title)) => {
                flush(&stack, &mut body, &mut out);
                if atx_heading(line).is_none() {
                    lines.next(); // the setext underline
                }
                while stack.last().is_some_and(|(l, _)| *l >= level) {
                    stack.pop();
                }
                stack.push((level, title));
            }
            None => body.push(line),
        }
    }
    flush(&stack, &mut body, &mut out);
    out
}

fn atx_heading(line: &str) -> Option<(usize, String)> {
    if line.starts_with("    ") {
        return None;
    }
    let t = line.trim_start();
    let level = t.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &t[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let title = rest.trim().trim_end_matches('#').trim();
    (!title.is_empty()).then(|| (level, title.to_string()))
}

/// Mines Q&A examples from markdown documents.
#[derive(Debug, Clone)]
pub struct DocsSource {
    roots: Vec<PathBuf>,
    cfg: DocsConfig,
}

impl DocsSource {
    /// A source over these folders or files.
    pub fn new(roots: impl IntoIterator<Item = impl Into<PathBuf>>, cfg: DocsConfig) -> Self {
        Self { roots: roots.into_iter().map(Into::into).collect(), cfg }
    }

    /// The examples of one document.
    pub fn examples(&self, name: &str, markdown: &str) -> Vec<Example> {
        sections(markdown)
            .into_iter()
            .filter(|s| !s.path.is_empty())
            .filter(|s| (self.cfg.min_answer_chars..=self.cfg.max_answer_chars).contains(&s.body.chars().count()))
            .map(|s| {
                let topic = s.path.join(" › ");
                Example::new(Content::Instruction {
                    instruction: format!("What does the documentation ({name}) say about \"{topic}\"?"),
                    input: String::new(),
                    output: s.body,
                })
                .with_source("docs")
                .with_domain("docs")
                .with_meta("file", name.to_string())
                .with_meta("section", topic)
            })
            .collect()
    }
}

fn display_name(roots: &[PathBuf], path: &Path) -> String {
    roots
        .iter()
        .filter(|r| r.is_dir())
        .find_map(|r| path.strip_prefix(r).ok())
        .unwrap_or_else(|| Path::new(path.file_name().unwrap_or_default()))
        .display()
        .to_string()
}

impl DataSource for DocsSource {
    fn name(&self) -> &str {
        "docs"
    }

    fn collect(&mut self, since: Option<Cursor>) -> Result<Batch> {
        let seen = files::parse_cursor("docs", since.as_ref())?;
        // Start from the old fingerprints, so that runs over other folders
        // keep this one's.
        let mut next = seen.clone();
        let mut batch = Batch::default();
        let exts = &self.cfg.extensions;
        let paths = files::walk(&self.roots, |p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
        })?;
        for path in paths {
            match files::read_if_changed(&path, &seen, &mut next)? {
                Some(text) => {
                    let name = display_name(&self.roots, &path);
                    batch.examples.extend(self.examples(&name, &text));
                }
                None => batch.skip("unchanged"),
            }
        }
        batch.cursor = Some(files::to_cursor(&next));
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_cases() {
        let md = "---\ntitle: x\n---\n# Guide\nIntro text.\n\nSetup\n-----\nInstall it.\n\n## Build #\n\n~~~\n## in fence\n~~~\n### Deep\ndeep text\n# Other\nmore\n";
        let got: Vec<(String, String)> = sections(md).into_iter().map(|s| (s.path.join("/"), s.body)).collect();
        let want = [
            ("Guide", "Intro text."),
            ("Guide/Setup", "Install it."),
            ("Guide/Build", "~~~\n## in fence\n~~~"),
            ("Guide/Build/Deep", "deep text"),
            ("Other", "more"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }
}
