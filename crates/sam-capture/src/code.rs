//! The code source: documented items (functions, methods, types) of Rust,
//! Python and JavaScript/TypeScript files become two examples each — write
//! the documentation for this code, and write the code this documentation
//! describes.
//!
//! Folders are walked honouring `.gitignore`. Generated files (`@generated`,
//! `DO NOT EDIT`, `*.min.js`, `*_pb2.py`) and minified ones (very long lines)
//! are skipped. Extraction is line-based and deliberately conservative: an
//! item is taken only when its documentation and its extent are clear
//! (`///` comments then a Rust item with balanced braces; a Python `def` or
//! `class` whose first statement is a docstring, extent by indentation; a
//! `/** … */` block then a JS/TS function, class or method with balanced
//! braces).

use std::path::{Path, PathBuf};

use sam_schema::{Content, Example};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::files;
use crate::source::{Batch, Cursor, DataSource};

/// Settings of the code source (`[capture.code]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CodeConfig {
    /// Items longer than this many lines are skipped.
    pub max_item_lines: usize,
    /// Documentation shorter than this many characters is skipped.
    pub min_doc_chars: usize,
    /// A file with a line longer than this is minified.
    pub max_line_chars: usize,
}

impl Default for CodeConfig {
    fn default() -> Self {
        Self { max_item_lines: 80, min_doc_chars: 20, max_line_chars: 1000 }
    }
}

/// A language the code source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// `.rs`
    Rust,
    /// `.py`
    Python,
    /// `.js`, `.jsx`, `.mjs`, `.cjs`
    JavaScript,
    /// `.ts`, `.tsx`, `.mts`, `.cts`
    TypeScript,
}

impl Language {
    /// The language of a file, by extension.
    pub fn of(path: &Path) -> Option<Language> {
        Some(match path.extension()?.to_str()? {
            "rs" => Language::Rust,
            "py" => Language::Python,
            "js" | "jsx" | "mjs" | "cjs" => Language::JavaScript,
            "ts" | "tsx" | "mts" | "cts" => Language::TypeScript,
            _ => return None,
        })
    }

    /// The language's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
            Language::TypeScript => "TypeScript",
        }
    }
}

/// One documented item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `function`, `method`, `struct`, `enum`, `trait`, `class`, `type`.
    pub kind: &'static str,
    /// The item's name.
    pub name: String,
    /// The documentation, comment markers removed.
    pub doc: String,
    /// The code, documentation removed.
    pub code: String,
}

/// The documented items of a source file.
///
/// ```
/// use sam_capture::code::{items, Language};
/// let src = "/// Add one to `x`, saturating at the maximum.\npub fn inc(x: u8) -> u8 {\n    x.saturating_add(1)\n}\n";
/// let it = &items(Language::Rust, src)[0];
/// assert_eq!((it.kind, it.name.as_str()), ("function", "inc"));
/// assert_eq!(it.doc, "Add one to `x`, saturating at the maximum.");
/// assert!(it.code.starts_with("pub fn inc"));
/// ```
pub fn items(lang: Language, src: &str) -> Vec<Item> {
    let lines: Vec<&str> = src.lines().collect();
    match lang {
        Language::Rust => rust_items(&lines),
        Language::Python => python_items(&lines),
        Language::JavaScript | Language::TypeScript => js_items(&lines),
    }
}

fn rust_items(lines: &[&str]) -> Vec<Item> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if !t.starts_with("///") || t.starts_with("////") {
            i += 1;
            continue;
        }
        let mut doc = Vec::new();
        while i < lines.len() && lines[i].trim_start().starts_with("///") {
            let l = lines[i].trim_start().trim_start_matches("///");
            doc.push(l.strip_prefix(' ').unwrap_or(l));
            i += 1;
        }
        let start = i;
        while i < lines.len() && lines[i].trim_start().starts_with("#[") {
            i += 1;
        }
        let Some(sig) = lines.get(i) else { break };
        let Some((kind, name)) = rust_signature(sig) else { continue };
        let Some(end) = brace_end(lines, i) else { continue };
        let code = lines[start..=end].join("\n");
        out.push(Item { kind, name, doc: doc.join("\n").trim().to_string(), code: dedent(&code) });
        i = end + 1;
    }
    out
}

fn rust_signature(line: &str) -> Option<(&'static str, String)> {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if w.starts_with("pub") || ["const", "async", "unsafe", "extern", "\"C\"", "default"].contains(w) {
            // `const fn` vs `const X: u8`.
            if *w == "const" {
                let mut look = words.clone();
                look.next();
                if look.peek().is_none_or(|n| !["fn", "unsafe", "async", "extern"].contains(n)) {
                    return None;
                }
            }
            words.next();
        } else {
            break;
        }
    }
    let kw = words.next()?;
    let kind = match kw {
        "fn" => "function",
        "struct" => "struct",
        "enum" => "enum",
        "trait" => "trait",
        "union" => "union",
        _ => return None,
    };
    let name: String = words.next()?.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some((kind, name))
}

/// The line where the item starting at `from` ends: its braces balance, or
/// it ends with `;` before any brace opens (a unit struct, a trait method).
fn brace_end(lines: &[&str], from: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut opened = false;
    for (j, line) in lines.iter().enumerate().skip(from) {
        let mut in_str: Option<char> = None;
        let mut prev = ' ';
        let chars: Vec<char> = line.chars().collect();
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            match in_str {
                Some(q) => {
                    if c == q && prev != '\\' {
                        in_str = None;
                    }
                }
                None => match c {
                    '"' | '`' => in_str = Some(c),
                    '/' if chars.get(k + 1) == Some(&'/') => break,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => return Some(j),
                    _ => {}
                },
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
            k += 1;
        }
        if opened && depth <= 0 {
            return Some(j);
        }
    }
    None
}

fn python_items(lines: &[&str]) -> Vec<Item> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let indent = lines[i].len() - t.len();
        let (kind, rest) = if let Some(r) = t.strip_prefix("def ").or_else(|| t.strip_prefix("async def ")) {
            (if indent > 0 { "method" } else { "function" }, r)
        } else if let Some(r) = t.strip_prefix("class ") {
            ("class", r)
        } else {
            i += 1;
            continue;
        };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // Decorators above belong to the item.
        let mut start = i;
        while start > 0 && lines[start - 1].trim_start().starts_with('@') {
            start -= 1;
        }
        // The signature may span lines; it ends at the line ending with ':'.
        let mut sig_end = i;
        while sig_end < lines.len() && !lines[sig_end].trim_end().ends_with(':') {
            sig_end += 1;
        }
        let Some(first) = lines.get(sig_end + 1).map(|l| l.trim_start()) else { break };
        let quote = ["\"\"\"", "'''", "r\"\"\"", "r'''"].into_iter().find(|q| first.starts_with(q));
        let Some(quote) = quote else {
            i += 1;
            continue;
        };
        let close = &quote[quote.len() - 3..];
        // The docstring's extent.
        let mut doc_lines = Vec::new();
        let mut j = sig_end + 1;
        let after_open = &first[quote.len()..];
        if let Some(pos) = after_open.find(close) {
            doc_lines.push(after_open[..pos].to_string());
        } else {
            doc_lines.push(after_open.to_string());
            j += 1;
            while j < lines.len() && !lines[j].contains(close) {
                doc_lines.push(lines[j].to_string());
                j += 1;
            }
            if let Some(l) = lines.get(j) {
                doc_lines.push(l[..l.find(close).unwrap_or(0)].to_string());
            }
        }
        let doc_end = j;
        // The body: lines more indented than the def, or blank.
        let mut end = doc_end;
        for (k, l) in lines.iter().enumerate().skip(doc_end + 1) {
            if l.trim().is_empty() {
                continue;
            }
            if l.len() - l.trim_start().len() <= indent {
                break;
            }
            end = k;
        }
        let mut code: Vec<&str> = lines[start..=sig_end].to_vec();
        code.extend_from_slice(&lines[doc_end + 1..=end]);
        // Like Python's `inspect.cleandoc`: the first line as is, the rest dedented.
        let doc = format!("{}\n{}", doc_lines[0].trim(), dedent(&doc_lines[1..].join("\n")));
        out.push(Item { kind, name, doc: doc.trim().to_string(), code: dedent(&code.join("\n")) });
        // Methods inside a class are items too: continue inside it.
        i = if kind == "class" { doc_end + 1 } else { end + 1 };
    }
    out
}

fn js_items(lines: &[&str]) -> Vec<Item> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if !t.starts_with("/**") {
            i += 1;
            continue;
        }
        let mut doc = Vec::new();
        while let Some(l) = lines.get(i) {
            let body = l.trim().trim_start_matches("/**").trim_end_matches("*/").trim_start_matches('*');
            let body = body.strip_prefix(' ').unwrap_or(body);
            if !body.trim().is_empty() || !doc.is_empty() {
                doc.push(body.trim_end());
            }
            i += 1;
            if l.contains("*/") {
                break;
            }
        }
        while i < lines.len() && lines[i].trim_start().starts_with('@') {
            i += 1; // decorators
        }
        let Some(sig) = lines.get(i) else { break };
        let Some((kind, name)) = js_signature(sig) else { continue };
        let Some(end) = brace_end(lines, i) else { continue };
        let code = lines[i..=end].join("\n");
        let doc = doc.join("\n").trim().to_string();
        out.push(Item { kind, name, doc, code: dedent(&code) });
        i = if kind == "class" { i + 1 } else { end + 1 };
    }
    out
}

fn js_signature(line: &str) -> Option<(&'static str, String)> {
    let t = line.trim_start();
    let mut rest = t;
    for p in ["export ", "default ", "declare ", "abstract ", "async ", "static ", "public ", "private ", "protected "]
    {
        rest = rest.strip_prefix(p).unwrap_or(rest);
    }
    for p in ["export ", "default ", "async ", "static "] {
        rest = rest.strip_prefix(p).unwrap_or(rest);
    }
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$').collect::<String>();
    let (kind, name) = if let Some(r) = rest.strip_prefix("function") {
        ("function", ident(r.trim_start_matches('*').trim_start()))
    } else if let Some(r) = rest.strip_prefix("class ") {
        ("class", ident(r))
    } else if let Some(r) = rest.strip_prefix("interface ") {
        ("interface", ident(r))
    } else if let Some(r) = rest.strip_prefix("const ").or_else(|| rest.strip_prefix("let ")) {
        // `const f = (…) => {` or `const f = function (…) {`.
        let name = ident(r);
        let after = r[name.len()..].trim_start();
        let after = after.split_once('=').map(|(_, a)| a.trim_start())?;
        if !(after.starts_with('(') || after.starts_with("async") || after.starts_with("function")) {
            return None;
        }
        ("function", name)
    } else {
        // A method: `name(args) {`.
        let name = ident(rest);
        let after = &rest[name.len()..];
        if name.is_empty()
            || !after.starts_with('(')
            || !t.trim_end().ends_with('{')
            || ["if", "for", "while", "switch", "catch", "return", "function"].contains(&name.as_str())
        {
            return None;
        }
        ("method", name)
    };
    (!name.is_empty()).then_some((kind, name))
}

fn dedent(s: &str) -> String {
    let indent = s.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    s.lines().map(|l| if l.len() >= indent { &l[indent..] } else { l.trim_start() }).collect::<Vec<_>>().join("\n")
}

/// Whether a file is generated or minified.
pub fn is_generated(path: &Path, src: &str, max_line_chars: usize) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.contains(".min.") || name.ends_with("_pb2.py") || name.ends_with(".d.ts") || name.contains(".generated.") {
        return true;
    }
    let head: String = src.lines().take(10).collect::<Vec<_>>().join("\n").to_lowercase();
    if ["@generated", "do not edit", "auto-generated", "autogenerated", "automatically generated"]
        .iter()
        .any(|m| head.contains(m))
    {
        return true;
    }
    src.lines().any(|l| l.len() > max_line_chars)
}

/// Mines documented code.
#[derive(Debug, Clone)]
pub struct CodeSource {
    roots: Vec<PathBuf>,
    cfg: CodeConfig,
}

impl CodeSource {
    /// A source over these folders or files.
    pub fn new(roots: impl IntoIterator<Item = impl Into<PathBuf>>, cfg: CodeConfig) -> Self {
        Self { roots: roots.into_iter().map(Into::into).collect(), cfg }
    }

    /// The two examples of each documented item of one file.
    pub fn examples(&self, lang: Language, file: &str, src: &str) -> Vec<Example> {
        let mut out = Vec::new();
        for it in items(lang, src) {
            if it.doc.chars().count() < self.cfg.min_doc_chars || it.code.lines().count() > self.cfg.max_item_lines {
                continue;
            }
            let l = lang.as_str();
            let meta = |ex: Example| {
                ex.with_source("code")
                    .with_domain("code")
                    .with_meta("file", file.to_string())
                    .with_meta("item", it.name.clone())
                    .with_meta("language", l.to_lowercase())
            };
            out.push(meta(Example::new(Content::Instruction {
                instruction: format!("Write the documentation comment for this {l} {}.", it.kind),
                input: format!("```{}\n{}\n```", l.to_lowercase(), it.code),
                output: it.doc.clone(),
            })));
            out.push(meta(Example::new(Content::Instruction {
                instruction: format!("Write the {l} {} `{}` that this documentation describes.", it.kind, it.name),
                input: it.doc.clone(),
                output: format!("```{}\n{}\n```", l.to_lowercase(), it.code),
            })));
        }
        out
    }
}

impl DataSource for CodeSource {
    fn name(&self) -> &str {
        "code"
    }

    fn collect(&mut self, since: Option<Cursor>) -> Result<Batch> {
        let seen = files::parse_cursor("code", since.as_ref())?;
        // Start from the old fingerprints, so that runs over other folders
        // keep this one's.
        let mut next = seen.clone();
        let mut batch = Batch::default();
        let paths = files::walk(&self.roots, |p| Language::of(p).is_some())?;
        for path in paths {
            let Some(lang) = Language::of(&path) else { continue };
            let Some(src) = files::read_if_changed(&path, &seen, &mut next)? else {
                batch.skip("unchanged");
                continue;
            };
            if is_generated(&path, &src, self.cfg.max_line_chars) {
                batch.skip("generated");
                continue;
            }
            let name = self
                .roots
                .iter()
                .filter(|r| r.is_dir())
                .find_map(|r| path.strip_prefix(r).ok())
                .unwrap_or_else(|| Path::new(path.file_name().unwrap_or_default()))
                .display()
                .to_string();
            batch.examples.extend(self.examples(lang, &name, &src));
        }
        batch.cursor = Some(files::to_cursor(&next));
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lang: Language, src: &str, want: &[(&str, &str, &str)]) {
        let got: Vec<(&str, String, String)> = items(lang, src).into_iter().map(|i| (i.kind, i.name, i.doc)).collect();
        let want: Vec<(&str, String, String)> =
            want.iter().map(|(k, n, d)| (*k, n.to_string(), d.to_string())).collect();
        assert_eq!(got, want, "{src}");
    }

    #[test]
    fn rust() {
        let src = r#"
/// A point.
#[derive(Debug)]
pub struct P { x: i32 }

impl P {
    /// Distance to the origin, `"}"` included.
    pub fn norm(&self) -> f64 {
        let s = "}";
        (self.x as f64).abs()
    }
}

/// Not an item.
const X: u8 = 1;

// plain comment
fn undocumented() {}
"#;
        check(
            Language::Rust,
            src,
            &[("struct", "P", "A point."), ("function", "norm", "Distance to the origin, `\"}\"` included.")],
        );
        let norm = &items(Language::Rust, src)[1];
        assert!(norm.code.starts_with("pub fn norm") && norm.code.ends_with('}') && norm.code.contains("abs()"));
    }

    #[test]
    fn python() {
        let src = "import os\n\n@cache\ndef load(path,\n         mode='r'):\n    \"\"\"Load a file.\n\n    Returns its text.\n    \"\"\"\n    with open(path) as f:\n        return f.read()\n\nclass Store:\n    '''A store.'''\n\n    def get(self, k):\n        \"\"\"Get a key.\"\"\"\n        return self.d[k]\n\ndef bare():\n    return 1\n";
        check(
            Language::Python,
            src,
            &[
                ("function", "load", "Load a file.\n\nReturns its text."),
                ("class", "Store", "A store."),
                ("method", "get", "Get a key."),
            ],
        );
        let load = &items(Language::Python, src)[0];
        assert_eq!(
            load.code,
            "@cache\ndef load(path,\n         mode='r'):\n    with open(path) as f:\n        return f.read()"
        );
    }

    #[test]
    fn javascript() {
        let src = "/**\n * Sum two numbers.\n * @param {number} a\n */\nexport function add(a, b) {\n  return a + b;\n}\n\n/** Greeter. */\nclass G {\n  /** Say hi to `name`. */\n  hi(name) {\n    return `hi ${name}`;\n  }\n}\n\n/** Arrow. */\nconst twice = (x) => {\n  return x * 2;\n};\n";
        check(
            Language::JavaScript,
            src,
            &[
                ("function", "add", "Sum two numbers.\n@param {number} a"),
                ("class", "G", "Greeter."),
                ("method", "hi", "Say hi to `name`."),
                ("function", "twice", "Arrow."),
            ],
        );
    }

    #[test]
    fn generated() {
        for (name, src, want) in [
            ("a.min.js", "x", true),
            ("a.js", "// @generated by protoc\nfunction f() {}", true),
            ("a.js", &format!("var a={};", "1,".repeat(600)), true),
            ("a.js", "function f() {}", false),
        ] {
            assert_eq!(is_generated(Path::new(name), src, 1000), want, "{name}");
        }
    }
}
