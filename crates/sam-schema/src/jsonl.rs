//! Reading JSONL: form detection, per-line errors that name file and line.
//!
//! Accepted forms (one JSON object per line; blank lines are skipped):
//!
//! | form | keys |
//! |---|---|
//! | sam's full form | `kind` plus that kind's fields, `id`, `source`, … |
//! | chat | `messages: [{role, content}]` |
//! | preference | `prompt` (text or messages), `chosen`, `rejected` |
//! | instruction | `instruction`, `input` (optional), `output` |
//! | mlx-lm prompt/completion | `prompt`, `completion` |
//! | completion | `text` |
//!
//! Rows in the bare forms may also carry `id`, `source`, `domain`, `quality`,
//! `tier`, `created_at` and `metadata`; any other key is kept in `metadata`.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::example::{Content, Example, Message, Prompt, Role, Tier};

/// A line that could not be read as an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", origin_name(.origin))]
pub struct LineError {
    /// The file, or `None` for standard input.
    pub origin: Option<PathBuf>,
    /// 1-based line number.
    pub line: usize,
    /// Why the line was refused.
    pub reason: String,
    /// The line as read (lossily decoded), so it can be quarantined.
    pub raw: String,
}

fn origin_name(origin: &Option<PathBuf>) -> String {
    match origin {
        Some(p) => p.display().to_string(),
        None => "<stdin>".to_string(),
    }
}

/// An error while reading a JSONL stream.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// One bad line; reading can go on.
    #[error(transparent)]
    Line(#[from] LineError),
    /// The stream itself failed; reading stops.
    #[error("{}: {source}", origin_name(.origin))]
    Io {
        /// The file, or `None` for standard input.
        origin: Option<PathBuf>,
        /// The cause.
        source: std::io::Error,
    },
}

/// Parse one JSONL line into an example, detecting its form.
///
/// ```
/// let ex = sam_schema::parse_line(r#"{"prompt":"2+2?","chosen":"4","rejected":"5"}"#).unwrap();
/// assert_eq!(ex.kind(), sam_schema::Kind::Preference);
/// let err = sam_schema::parse_line(r#"{"foo":1}"#).unwrap_err();
/// assert!(err.contains("no known form"));
/// ```
pub fn parse_line(line: &str) -> Result<Example, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, found {}", type_name(&value)));
    };
    parse_object(obj)
}

/// Parse a JSON object (one row) into an example.
pub fn parse_object(mut obj: Map<String, Value>) -> Result<Example, String> {
    if obj.contains_key("kind") {
        return parse_full(obj);
    }
    let content = if obj.contains_key("messages") {
        let messages = parse_messages(obj.remove("messages").expect("checked"), "messages")?;
        Content::Chat { messages }
    } else if obj.contains_key("chosen") || obj.contains_key("rejected") {
        let prompt = match obj.remove("prompt") {
            Some(Value::String(s)) => Prompt::Text(s),
            Some(v @ Value::Array(_)) => Prompt::Messages(parse_messages(v, "prompt")?),
            Some(v) => return Err(format!("\"prompt\" must be a string or a message list, found {}", type_name(&v))),
            None => {
                return Err(
                    "a preference row needs \"prompt\", \"chosen\" and \"rejected\"; \"prompt\" is missing".into()
                );
            }
        };
        let chosen = take_response(&mut obj, "chosen")?;
        let rejected = take_response(&mut obj, "rejected")?;
        Content::Preference { prompt, chosen, rejected }
    } else if obj.contains_key("instruction") {
        let instruction = take_string(&mut obj, "instruction")?;
        let input = take_optional_string(&mut obj, "input")?.unwrap_or_default();
        let output = match take_optional_string(&mut obj, "output")? {
            Some(o) => o,
            None => take_optional_string(&mut obj, "response")?
                .ok_or("an instruction row needs \"output\" (the answer); it is missing")?,
        };
        Content::Instruction { instruction, input, output }
    } else if obj.contains_key("completion") {
        let prompt = take_string(&mut obj, "prompt")?;
        let completion = take_string(&mut obj, "completion")?;
        Content::PromptCompletion { prompt, completion }
    } else if obj.contains_key("text") {
        Content::Completion { text: take_string(&mut obj, "text")? }
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(format!(
            "no known form: expected \"messages\", \"prompt\"/\"chosen\"/\"rejected\", \"instruction\"/\"output\", \
             \"prompt\"/\"completion\" or \"text\"; found keys [{}]",
            keys.join(", ")
        ));
    };
    let mut ex = Example::new(content);
    if let Some(id) = take_optional_string(&mut obj, "id")? {
        if id.trim().is_empty() {
            return Err("\"id\" is empty".into());
        }
        ex.id = id;
    }
    ex.source = take_optional_string(&mut obj, "source")?.unwrap_or_default();
    ex.domain = take_optional_string(&mut obj, "domain")?.unwrap_or_default();
    if let Some(q) = obj.remove("quality") {
        ex.quality = match q {
            Value::Null => None,
            Value::Number(n) => Some(n.as_f64().ok_or("\"quality\" is not a number")?),
            other => return Err(format!("\"quality\" must be a number, found {}", type_name(&other))),
        };
    }
    if let Some(t) = take_optional_string(&mut obj, "tier")? {
        ex.tier = t.parse::<Tier>()?;
    }
    if let Some(c) = obj.remove("created_at") {
        ex.created_at = c.as_i64().ok_or("\"created_at\" must be an integer (Unix seconds)")?;
    }
    if let Some(m) = obj.remove("metadata") {
        match m {
            Value::Object(m) => ex.metadata = m,
            Value::Null => {}
            other => return Err(format!("\"metadata\" must be an object, found {}", type_name(&other))),
        }
    }
    // Keep whatever else the row carried.
    for (k, v) in obj {
        ex.metadata.entry(k).or_insert(v);
    }
    Ok(ex)
}

fn parse_full(obj: Map<String, Value>) -> Result<Example, String> {
    let had_id = obj.contains_key("id");
    let mut obj = obj;
    if !had_id {
        obj.insert("id".into(), Value::String(String::new()));
    }
    let mut ex: Example = serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())?;
    if !had_id {
        ex.id = ex.content.content_hash().short();
    }
    if ex.id.trim().is_empty() {
        return Err("\"id\" is empty".into());
    }
    if let Some(q) = ex.quality
        && !(0.0..=1.0).contains(&q)
    {
        return Err(format!("\"quality\" must be within [0, 1], got {q}"));
    }
    Ok(ex)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    take_optional_string(obj, key)?.ok_or_else(|| format!("\"{key}\" is missing"))
}

fn take_optional_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!("\"{key}\" must be a string, found {}", type_name(&v))),
    }
}

/// `chosen`/`rejected` as a string, or TRL's conversational form (a message
/// list whose last assistant message is the response).
fn take_response(obj: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(v @ Value::Array(_)) => {
            let msgs = parse_messages(v, key)?;
            msgs.into_iter()
                .rev()
                .find(|m| m.role == Role::Assistant)
                .map(|m| m.content)
                .ok_or_else(|| format!("\"{key}\" has no assistant message"))
        }
        Some(v) => Err(format!("\"{key}\" must be a string, found {}", type_name(&v))),
        None => Err(format!("a preference row needs \"prompt\", \"chosen\" and \"rejected\"; \"{key}\" is missing")),
    }
}

fn parse_messages(v: Value, key: &str) -> Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!("\"{key}\" must be a list of messages, found {}", type_name(&v)));
    };
    if items.is_empty() {
        return Err(format!("\"{key}\" is an empty list"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(mut m) = item else {
                return Err(format!("{key}[{i}] must be an object with \"role\" and \"content\""));
            };
            let role = match take_optional_string(&mut m, "role").map_err(|e| format!("{key}[{i}]: {e}"))? {
                Some(r) => match r.as_str() {
                    "system" => Role::System,
                    "user" | "human" => Role::User,
                    "assistant" | "gpt" => Role::Assistant,
                    other => {
                        return Err(format!("{key}[{i}]: unknown role {other:?} (expected system, user or assistant)"));
                    }
                },
                None => return Err(format!("{key}[{i}]: \"role\" is missing")),
            };
            let content = take_string(&mut m, "content").map_err(|e| format!("{key}[{i}]: {e}"))?;
            Ok(Message { role, content })
        })
        .collect()
}

/// One example read from a JSONL stream, with its line number.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// 1-based line number.
    pub line: usize,
    /// The example.
    pub example: Example,
}

/// Streams examples from JSONL, one [`Parsed`] or [`JsonlError`] per
/// non-blank line. A bad line does not stop the stream.
///
/// ```
/// use sam_schema::JsonlReader;
/// let data = "{\"text\":\"hello\"}\nnot json\n\n{\"instruction\":\"a\",\"output\":\"b\"}\n";
/// let mut good = 0;
/// let mut bad = Vec::new();
/// for item in JsonlReader::new(data.as_bytes(), None) {
///     match item {
///         Ok(_) => good += 1,
///         Err(e) => bad.push(e.to_string()),
///     }
/// }
/// assert_eq!(good, 2);
/// assert!(bad[0].starts_with("<stdin>:2: invalid JSON"));
/// ```
pub struct JsonlReader<R> {
    reader: R,
    origin: Option<PathBuf>,
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl JsonlReader<std::io::BufReader<std::fs::File>> {
    /// Open a file for reading.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JsonlError> {
        let path = path.as_ref();
        let f =
            std::fs::File::open(path).map_err(|source| JsonlError::Io { origin: Some(path.to_path_buf()), source })?;
        Ok(Self::new(std::io::BufReader::new(f), Some(path.to_path_buf())))
    }
}

impl<R: BufRead> JsonlReader<R> {
    /// Read from `reader`; `origin` names it in errors (`None` = stdin).
    pub fn new(reader: R, origin: Option<PathBuf>) -> Self {
        Self { reader, origin, line: 0, buf: Vec::new(), done: false }
    }

    /// Lines read so far.
    pub fn lines_read(&self) -> usize {
        self.line
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<Parsed, JsonlError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            match self.reader.by_ref().take(u64::MAX).read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(source) => {
                    self.done = true;
                    return Some(Err(JsonlError::Io { origin: self.origin.clone(), source }));
                }
            }
            self.line += 1;
            let line = self.line;
            let raw = match std::str::from_utf8(&self.buf) {
                Ok(s) => s,
                Err(e) => {
                    let raw = String::from_utf8_lossy(&self.buf).trim_end_matches(['\n', '\r']).to_string();
                    return Some(Err(LineError {
                        origin: self.origin.clone(),
                        line,
                        reason: format!("not valid UTF-8 ({e})"),
                        raw,
                    }
                    .into()));
                }
            };
            let text = raw.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            return Some(match parse_line(text) {
                Ok(example) => Ok(Parsed { line, example }),
                Err(reason) => {
                    Err(LineError { origin: self.origin.clone(), line, reason, raw: text.to_string() }.into())
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn detects_every_form() {
        let cases: &[(&str, Kind)] = &[
            (r#"{"instruction":"i","input":"x","output":"o"}"#, Kind::Instruction),
            (r#"{"instruction":"i","output":"o"}"#, Kind::Instruction),
            (r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#, Kind::Chat),
            (r#"{"prompt":"p","chosen":"c","rejected":"r"}"#, Kind::Preference),
            (
                r#"{"prompt":[{"role":"user","content":"p"}],"chosen":[{"role":"assistant","content":"c"}],"rejected":"r"}"#,
                Kind::Preference,
            ),
            (r#"{"text":"t"}"#, Kind::Completion),
            (r#"{"prompt":"p","completion":"c"}"#, Kind::PromptCompletion),
            (r#"{"kind":"completion","id":"x","text":"t"}"#, Kind::Completion),
        ];
        for (line, kind) in cases {
            let ex = parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(ex.kind(), *kind, "{line}");
        }
    }

    #[test]
    fn refuses_bad_rows_with_reasons() {
        let cases: &[(&str, &str)] = &[
            ("{", "invalid JSON"),
            ("[1,2]", "expected a JSON object, found an array"),
            (r#"{"foo":1}"#, "no known form"),
            (r#"{"instruction":"i"}"#, "\"output\""),
            (r#"{"prompt":"p","chosen":"c"}"#, "\"rejected\" is missing"),
            (r#"{"messages":[]}"#, "empty list"),
            (r#"{"messages":[{"role":"robot","content":"x"}]}"#, "unknown role"),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0]: \"content\" is missing"),
            (r#"{"text":5}"#, "\"text\" must be a string, found a number"),
            (r#"{"text":"t","tier":"platinum"}"#, "unknown tier"),
            (r#"{"kind":"completion","text":"t","quality":3}"#, "within [0, 1]"),
        ];
        for (line, want) in cases {
            let err = parse_line(line).expect_err(line);
            assert!(err.contains(want), "{line}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn keeps_side_fields() {
        let ex = parse_line(
            r#"{"text":"t","id":"abc","source":"git","domain":"code","quality":0.5,"tier":"silver","created_at":7,"repo":"x"}"#,
        )
        .unwrap();
        assert_eq!(ex.id, "abc");
        assert_eq!(ex.source, "git");
        assert_eq!(ex.domain, "code");
        assert_eq!(ex.quality, Some(0.5));
        assert_eq!(ex.tier, Tier::Silver);
        assert_eq!(ex.created_at, 7);
        assert_eq!(ex.metadata["repo"], "x");
    }

    #[test]
    fn reader_reports_file_and_line_and_keeps_going() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"{\"text\":\"a\"}\n{oops\n\n\xff\xfe\n{\"text\":\"b\"}").unwrap();
        let items: Vec<_> = JsonlReader::open(&path).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert!(items[0].is_ok() && items[3].is_ok());
        let e1 = items[1].as_ref().unwrap_err().to_string();
        assert!(e1.starts_with(&format!("{}:2: invalid JSON", path.display())), "{e1}");
        let e2 = items[2].as_ref().unwrap_err().to_string();
        assert!(e2.contains(":4: not valid UTF-8"), "{e2}");
        match &items[1] {
            Err(JsonlError::Line(l)) => assert_eq!(l.raw, "{oops"),
            other => panic!("{other:?}"),
        }
        assert_eq!(items[3].as_ref().unwrap().line, 5);
    }
}
