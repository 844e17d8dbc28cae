//! Chat templates: the model's own Jinja template, rendered with `minijinja`
//! the way Hugging Face transformers renders it.
//!
//! transformers compiles a template in a sandboxed Jinja2 environment with
//! `trim_blocks` and `lstrip_blocks` on, loop controls, a `tojson` filter that
//! is Python's `json.dumps(…, ensure_ascii=False)` (not Jinja's HTML-safe
//! one), and the globals `raise_exception` and `strftime_now`; the context
//! holds `messages`, `tools`, `documents`, `add_generation_prompt` and the
//! tokenizer's special tokens (`bos_token`, `eos_token`, …). This module does
//! the same, with `minijinja-contrib`'s pycompat layer for Python string
//! methods (`.strip()`, `.split()`, `.startswith()`…).
//!
//! `{% generation %}` blocks (transformers' assistant-mask markers, which
//! `return_assistant_tokens_mask` reads) render as transformers renders them:
//! [`ChatTemplate::render`] drops the markers, and
//! [`ChatTemplate::render_with_generation_spans`] also returns the byte span
//! of every block's output, which is what sam trains on for such templates.
//! [`ChatTemplate::family`] names the prompt format a template writes.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use sam_schema::Message;

use crate::Error;

/// The ChatML template sam uses when a model has none (with a warning).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Special-token strings a template may refer to (`bos_token`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    /// `bos_token`.
    pub bos: Option<String>,
    /// `eos_token`.
    pub eos: Option<String>,
    /// `unk_token`.
    pub unk: Option<String>,
    /// `pad_token`.
    pub pad: Option<String>,
}

/// A compiled chat template.
///
/// ```
/// use sam_prep::template::{ChatTemplate, TemplateTokens};
/// use sam_schema::Message;
/// let t = ChatTemplate::new(
///     "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}\
///      {% if add_generation_prompt %}<assistant>{% endif %}",
///     TemplateTokens::default(),
/// )?;
/// let text = t.render(&[Message::user("  hi ")], true)?;
/// assert_eq!(text, "<user>hi\n<assistant>");
/// # Ok::<(), sam_prep::Error>(())
/// ```
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    tokens: TemplateTokens,
    markers: bool,
}

const NAME: &str = "chat_template";
/// The same template with its `{% generation %}` blocks writing [`GEN_OPEN`]
/// and [`GEN_CLOSE`] around their output.
const TRACKED: &str = "chat_template_tracked";
/// Written where a generation block starts and ends (Unicode noncharacters,
/// which no text a person writes holds); removed from the rendering.
const GEN_OPEN: char = '\u{FDD0}';
const GEN_CLOSE: char = '\u{FDD1}';

impl ChatTemplate {
    /// Compile a template from its Jinja source.
    pub fn new(source: &str, tokens: TemplateTokens) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(|state, value, method, args| {
            // Python's str.title() starts a word after any non-letter ("What'S");
            // pycompat follows Jinja's title filter instead ("What's").
            if let (Some(text), "title", []) = (value.as_str(), method, args) {
                return Ok(Value::from(py_title(text)));
            }
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        });
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| strftime(now_secs(), &fmt));
        let compile = |e: JinjaError| Error::Template(format!("cannot compile the chat template: {e:#}"));
        env.add_template_owned(NAME, rewrite_generation_tags(source, false)).map_err(compile)?;
        let markers = has_generation_markers(source);
        if markers {
            env.add_template_owned(TRACKED, rewrite_generation_tags(source, true)).map_err(compile)?;
        }
        Ok(Self { env, source: source.to_string(), tokens, markers })
    }

    /// Fix the time `strftime_now` reports (Unix seconds, UTC), for
    /// renderings that do not depend on the day they are made.
    pub fn set_now(&mut self, unix_seconds: i64) {
        self.env.add_function("strftime_now", move |fmt: String| strftime(unix_seconds, &fmt));
    }

    /// Whether the template marks assistant output with `{% generation %}`
    /// blocks (the `*_training` variants some libraries ship, and a few
    /// models' own templates).
    pub fn has_generation_markers(&self) -> bool {
        self.markers
    }

    /// The prompt format the template writes (`llama-3`, `chatml`, `gemma`,
    /// …), recognised from the markers in its source; `None` when it is none
    /// sam knows.
    pub fn family(&self) -> Option<&'static str> {
        template_family(&self.source)
    }

    /// The model's own template, or sam's ChatML with a warning when the
    /// model has none. The flag says whether the built-in one is used.
    pub fn for_model(model: &sam_models::BaseModel) -> Result<(Self, bool), Error> {
        let sp = model.special_tokens();
        let text = |t: &Option<sam_models::SpecialToken>| t.as_ref().map(|t| t.text.clone());
        let tokens = TemplateTokens { bos: text(&sp.bos), eos: text(&sp.eos), unk: text(&sp.unk), pad: text(&sp.pad) };
        match model.chat_template() {
            Some(src) => Ok((Self::new(src, tokens)?, false)),
            None => {
                tracing::warn!("model {} has no chat template: using sam's built-in ChatML template", model.name());
                Ok((Self::new(CHATML_TEMPLATE, tokens)?, true))
            }
        }
    }

    /// sam's built-in ChatML template.
    pub fn chatml() -> Self {
        Self::new(CHATML_TEMPLATE, TemplateTokens::default()).expect("built-in template compiles")
    }

    /// The Jinja source, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// blake3 of the source, hex.
    pub fn hash(&self) -> String {
        blake3::hash(self.source.as_bytes()).to_hex().to_string()
    }

    /// Render a conversation.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, Error> {
        self.render_value(messages_value(messages), Value::from(()), add_generation_prompt)
    }

    /// Render a conversation and return, with the text, the byte span of the
    /// output of every `{% generation %}` block, in order (none when the
    /// template has no markers). These are the spans transformers'
    /// `return_assistant_tokens_mask` masks.
    pub fn render_with_generation_spans(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<(usize, usize)>), Error> {
        if !self.markers {
            return Ok((self.render(messages, add_generation_prompt)?, Vec::new()));
        }
        if messages.iter().any(|m| m.content.contains([GEN_OPEN, GEN_CLOSE])) {
            return Err(Error::Unmaskable(
                "a message holds U+FDD0 or U+FDD1, the characters sam marks generation blocks with".into(),
            ));
        }
        let raw = self.render_named(TRACKED, messages_value(messages), Value::from(()), add_generation_prompt)?;
        let mut text = String::with_capacity(raw.len());
        let mut spans = Vec::new();
        let (mut depth, mut open, mut last) = (0usize, 0usize, 0usize);
        for (i, c) in raw.match_indices([GEN_OPEN, GEN_CLOSE]) {
            text.push_str(&raw[last..i]);
            last = i + c.len();
            if c.starts_with(GEN_OPEN) {
                if depth == 0 {
                    open = text.len();
                }
                depth += 1;
            } else {
                depth = depth.checked_sub(1).ok_or_else(unbalanced)?;
                if depth == 0 && text.len() > open {
                    spans.push((open, text.len()));
                }
            }
        }
        if depth != 0 {
            return Err(unbalanced());
        }
        text.push_str(&raw[last..]);
        Ok((text, spans))
    }

    /// Render arbitrary template input: `messages` (a list of maps, which may
    /// carry `tool_calls` and other keys) and `tools` (none or a list).
    pub fn render_value(&self, messages: Value, tools: Value, add_generation_prompt: bool) -> Result<String, Error> {
        self.render_named(NAME, messages, tools, add_generation_prompt)
    }

    fn render_named(
        &self,
        name: &str,
        messages: Value,
        tools: Value,
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let t = &self.tokens;
        let ctx = minijinja::context! {
            messages => messages,
            tools => tools,
            documents => (),
            add_generation_prompt => add_generation_prompt,
            bos_token => t.bos.as_deref(),
            eos_token => t.eos.as_deref(),
            unk_token => t.unk.as_deref(),
            pad_token => t.pad.as_deref(),
        };
        let tpl = self.env.get_template(name).expect("added in new");
        tpl.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation if e.detail().is_some_and(|d| d.starts_with(RAISED)) => {
                Error::Template(e.detail().unwrap_or_default()[RAISED.len()..].to_string())
            }
            _ => Error::Template(format!("cannot render the chat template: {e:#}")),
        })
    }
}

const RAISED: &str = "template raised: ";

fn messages_value(messages: &[Message]) -> Value {
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_pairs([("role", Value::from(m.role.as_str())), ("content", Value::from(m.content.as_str()))])
        })
        .collect();
    Value::from(msgs)
}

fn unbalanced() -> Error {
    Error::Unmaskable("the template's {% generation %} blocks do not open and close in order".into())
}

/// Whether `source` has a `{% generation %}` tag (with any whitespace control).
fn has_generation_markers(source: &str) -> bool {
    tags(source).any(|t| t.word == "generation")
}

/// Prompt formats, by markers only that format writes; the first match wins.
const FAMILIES: [(&str, &[&str]); 11] = [
    ("gpt-oss", &["<|start|>", "<|channel|>"]),
    ("llama-3", &["<|start_header_id|>"]),
    ("llama-2", &["[INST]", "<<SYS>>"]),
    ("mistral", &["[INST]"]),
    ("gemma", &["<start_of_turn>"]),
    ("phi-3", &["<|assistant|>", "<|end|>"]),
    ("deepseek", &["<｜Assistant｜>"]),
    ("command-r", &["<|START_OF_TURN_TOKEN|>"]),
    ("granite", &["<|start_of_role|>"]),
    ("glm", &["[gMASK]", "<|assistant|>"]),
    ("chatml", &["<|im_start|>", "<|im_end|>"]),
];

/// The prompt format a template source writes (see [`ChatTemplate::family`]).
pub fn template_family(source: &str) -> Option<&'static str> {
    FAMILIES.iter().find(|(_, marks)| marks.iter().all(|m| source.contains(m))).map(|(name, _)| *name)
}

/// Python's `str.title()`: a cased character after a cased one is lowered,
/// any other cased character is upper-cased.
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let cased = c.is_uppercase() || c.is_lowercase();
        if cased && prev_cased {
            out.extend(c.to_lowercase());
        } else if cased {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_cased = cased;
    }
    out
}

fn raise_exception(msg: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `strftime_now(fmt)` at `secs` (UTC), for the common directives.
fn strftime(secs: i64, fmt: &str) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => write!(out, "{y}").ok(),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)).ok(),
            Some('m') => write!(out, "{m:02}").ok(),
            Some('d') => write!(out, "{d:02}").ok(),
            Some('B') => write!(out, "{month}").ok(),
            Some('b') => write!(out, "{}", &month[..3]).ok(),
            Some('H') => write!(out, "{:02}", rem / 3600).ok(),
            Some('M') => write!(out, "{:02}", rem % 3600 / 60).ok(),
            Some('S') => write!(out, "{:02}", rem % 60).ok(),
            Some('%') => write!(out, "%").ok(),
            Some(o) => write!(out, "%{o}").ok(),
            None => write!(out, "%").ok(),
        };
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A `{% … %}` tag of a template source: its byte range, its whitespace
/// control signs and its first word.
struct Tag<'a> {
    start: usize,
    end: usize,
    lead: Option<char>,
    trail: Option<char>,
    word: &'a str,
}

/// The tags of a template source, in order, outside `{# … #}` comments.
fn tags(src: &str) -> impl Iterator<Item = Tag<'_>> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = loop {
            let tag = from + src[from..].find("{%")?;
            match src[from..tag].find("{#") {
                Some(c) => from = from + c + src[from + c..].find("#}")? + 2,
                None => break tag,
            }
        };
        let end = start + src[start..].find("%}")? + 2;
        from = end;
        let inner = &src[start + 2..end - 2];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (Some(c), &inner[1..]),
            _ => (None, inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], Some(c)),
            _ => (body, None),
        };
        let word = body.split_whitespace().next().unwrap_or("");
        Some(Tag { start, end, lead, trail, word })
    })
}

/// Rewrite `{% generation %}` / `{% endgeneration %}` (keeping `-`/`+`
/// whitespace control) to `{% if true %}` / `{% endif %}`; with `tracked`,
/// the block also writes [`GEN_OPEN`] and [`GEN_CLOSE`] around its output:
/// `{%- generation -%}` becomes `{%- if true %}{{ OPEN }}{% if true -%}`, so
/// that the tag's left control acts on the text before it and its right
/// control on the text after it, as in the original.
fn rewrite_generation_tags(src: &str, tracked: bool) -> String {
    let mut out = String::with_capacity(src.len());
    let mut last = 0;
    for tag in tags(src) {
        let (kw, mark) = match tag.word {
            "generation" => ("if true", GEN_OPEN),
            "endgeneration" => ("endif", GEN_CLOSE),
            _ => continue,
        };
        let open = |sign: Option<char>| format!("{{%{} ", sign.map(String::from).unwrap_or_default());
        let close = |sign: Option<char>| format!(" {}%}}", sign.map(String::from).unwrap_or_default());
        out.push_str(&src[last..tag.start]);
        if tracked {
            out.push_str(&open(tag.lead));
            out.push_str(kw);
            out.push_str(" %}");
            write!(out, "{{{{ '{mark}' }}}}").ok();
            out.push_str("{% ");
            out.push_str(kw);
            out.push_str(&close(tag.trail));
        } else {
            out.push_str(&open(tag.lead));
            out.push_str(kw);
            out.push_str(&close(tag.trail));
        }
        last = tag.end;
    }
    out.push_str(&src[last..]);
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent, separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(v.as_usize().unwrap_or(0)),
        }),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let seps: Option<Vec<String>> = kwargs.get::<Option<Vec<String>>>("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match seps {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts { indent, item_sep, key_sep, sort_keys, ensure_ascii };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), JinjaError> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                write!(out, "{i}").ok();
            } else {
                let f = f64::try_from(v.clone())?;
                write_float(out, f);
            }
        }
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, depth, |out, i| write_json(out, &items[i], o, depth + 1))?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            write_container(out, '{', '}', keys.len(), o, depth, |out, i| {
                let k = &keys[i];
                match k.as_str() {
                    Some(s) => write_str(out, s, o.ensure_ascii),
                    None => write_str(out, &k.to_string(), o.ensure_ascii),
                }
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(k)?, o, depth + 1)
            })?;
        }
        _ => write_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    n: usize,
    o: &JsonOpts,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), JinjaError>,
) -> Result<(), JinjaError> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth + 1));
        }
        item(out, i)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python's `repr(float)` for the usual range.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        write!(out, "{f:.1}").ok();
    } else {
        let a = f.abs();
        if a != 0.0 && !(1e-4..1e16).contains(&a) {
            // Python switches to exponent form here: 1e-05, 1e+16.
            let s = format!("{f:e}");
            let (m, e) = s.split_once('e').expect("exponent form");
            let e: i32 = e.parse().expect("integer exponent");
            write!(out, "{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()).ok();
        } else {
            write!(out, "{f}").ok();
        }
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                write!(out, "\\u{:04x}", c as u32).ok();
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    write!(out, "\\u{u:04x}").ok();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str, want: &str) {
        let t = ChatTemplate::new(src, TemplateTokens::default()).unwrap();
        let got = t.render(&[Message::user("a\"b"), Message::assistant("c")], true).unwrap();
        assert_eq!(got, want, "template {src:?}");
    }

    #[test]
    fn jinja_features_transformers_uses() {
        // trim_blocks / lstrip_blocks.
        check("{% for m in messages %}\n  {% if m.role == 'user' %}\nU\n  {% endif %}\n{% endfor %}", "U\n");
        // pycompat string methods, tojson, generation markers.
        check(
            "{{ messages[0].content.upper() }}|{{ messages | map(attribute='content') | list | tojson }}",
            "A\"B|[\"a\\\"b\", \"c\"]",
        );
        check(
            "{%- for m in messages %}{% if m.role == 'assistant' %}{%- generation -%} [{{ m.content }}] {%- endgeneration %}{% endif %}{% endfor %}",
            "[c]",
        );
        // Loop controls.
        check("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}", "user");
    }

    #[test]
    fn generation_blocks_give_spans_and_render_as_without_markers() {
        let src = "{#- a comment naming {% generation %} -#}{% for m in messages %}{% if m.role == 'assistant' %}\n  \
                   {%- generation -%}\n  [{{ m.content }}]<end>\n{%- endgeneration %}\n{% else %}<{{ m.content }}>{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, TemplateTokens::default()).unwrap();
        assert!(t.has_generation_markers());
        let msgs = [Message::user("q"), Message::assistant("a"), Message::user("r"), Message::assistant("b")];
        let plain = t.render(&msgs, false).unwrap();
        let (text, spans) = t.render_with_generation_spans(&msgs, false).unwrap();
        assert_eq!(text, plain);
        assert_eq!(text, "<q>[a]<end><r>[b]<end>");
        let marked: Vec<&str> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(marked, ["[a]<end>", "[b]<end>"]);
        // A marker named only in a comment is none.
        let t =
            ChatTemplate::new("{# {% generation %} #}{{ messages[0].content }}", TemplateTokens::default()).unwrap();
        assert!(!t.has_generation_markers());
        assert_eq!(t.render_with_generation_spans(&msgs, false).unwrap(), ("q".to_string(), vec![]));
    }

    #[test]
    fn families_by_their_markers() {
        assert_eq!(ChatTemplate::chatml().family(), Some("chatml"));
        assert_eq!(template_family("{{ '<|start_header_id|>' }}"), Some("llama-3"));
        assert_eq!(template_family("[INST] <<SYS>>"), Some("llama-2"));
        assert_eq!(template_family("{{ m.content }}"), None);
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t =
            ChatTemplate::new("{{ raise_exception('Conversation roles must alternate') }}", TemplateTokens::default())
                .unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ 1.0 | tojson }} {{ 0.5 | tojson }} {{ 'é<&>' | tojson }} {{ {'b': [1, none, true]} | tojson(indent=2) }} {{ 1e-05 | tojson }}",
            TemplateTokens::default(),
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "1.0 0.5 \"é<&>\" {\n  \"b\": [\n    1,\n    null,\n    true\n  ]\n} 1e-05"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(strftime(0, "%%"), "%");
        assert_eq!(strftime(1_736_942_400, "%d %b %Y %H:%M"), "15 Jan 2025 12:00");
    }
}
