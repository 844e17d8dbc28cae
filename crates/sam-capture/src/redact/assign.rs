//! Assignments: the value given to a key that names a secret (`password`,
//! `client_secret`, `api_key`, `TOKEN`, …), in the syntaxes where people
//! write them: env files and shell (any quoting), YAML, JSON, TOML/INI and
//! properties files, code, command-line flags, URL user info and query
//! strings, connection strings, XML, prose ("the password is …"), and the
//! commands that take a password as a flag (`mysql -p…`, `sshpass -p`,
//! `curl -u user:pass`).
//!
//! A name is not a value: the recogniser parses the key and the value and
//! leaves alone type annotations (`password: &str`), references
//! (`os.environ["DB_PASSWORD"]`, `self.password`, `${VAR}`), placeholders
//! (`<YOUR_KEY>`, `changeme`, `****`), UI text (`"Enter your password"`)
//! and keys that only describe a secret (`PASSWORD_MIN_LENGTH`,
//! `token_type`, `max_tokens`, `public_key`).

use std::ops::Range;

use super::checks::{class_transitions, classes, decodes_to_text, shannon_entropy};
use super::{
    Cand, Finding, Redactor, STOPWORDS, Scan, SecretKind, Trigger, is_placeholder, is_placeholder_single_quoted,
};

/// Words that name a secret (ASCII case-insensitive; the key's words are
/// checked afterwards).
pub(crate) const KEYWORDS: &[&str] =
    &["pass", "pwd", "pw", "secret", "token", "key", "credential", "creds", "auth", "sig"];

/// Commands whose flags carry a password.
pub(crate) const COMMANDS: &[&str] = &[
    "mysql",
    "mariadb",
    "mysqldump",
    "mysqladmin",
    "sshpass",
    "curl ",
    "wget ",
    "docker login",
    "podman login",
    "requirepass ",
    "masterauth ",
    "redis-cli",
    "identified by ",
    "convertto-securestring",
];

/// What a key says its value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A password: any literal that is not a placeholder.
    Password,
    /// A token, key or secret: the literal must look like one.
    Secret,
    /// A signature: the literal must look random.
    Sig,
}

struct Key {
    /// The key's name (without quotes or leading dashes).
    range: Range<usize>,
    class: Class,
    kind: SecretKind,
    /// `--password`, `-p`: a command-line flag.
    flag: bool,
    /// The key is the first thing on its line (YAML, INI, env files).
    line_start: bool,
    /// UPPER_SNAKE_CASE, as environment variables are.
    env_case: bool,
}

/// Words that end a key which only describes a secret.
const META: &[&str] = &[
    "length",
    "len",
    "min",
    "max",
    "size",
    "count",
    "limit",
    "policy",
    "file",
    "files",
    "path",
    "paths",
    "dir",
    "folder",
    "env",
    "var",
    "vars",
    "field",
    "fields",
    "prompt",
    "regex",
    "regexp",
    "pattern",
    "label",
    "placeholder",
    "hint",
    "url",
    "uri",
    "endpoint",
    "host",
    "name",
    "names",
    "id",
    "ids",
    "type",
    "types",
    "expiry",
    "expires",
    "expiration",
    "ttl",
    "timeout",
    "lifetime",
    "enabled",
    "required",
    "reset",
    "changed",
    "version",
    "header",
    "headers",
    "format",
    "prefix",
    "suffix",
    "kind",
    "mode",
    "provider",
    "store",
    "manager",
    "param",
    "params",
    "arg",
    "args",
    "rule",
    "rules",
    "strength",
    "validator",
    "validation",
    "text",
    "message",
    "msg",
    "error",
    "errors",
    "visible",
    "visibility",
    "hidden",
    "icon",
    "button",
    "at",
    "location",
    "ref",
    "arn",
    "encoder",
    "encoding",
    "algorithm",
    "algo",
    "method",
    "scheme",
    "scope",
    "scopes",
    "audience",
    "issuer",
    "duration",
    "interval",
    "age",
    "attempts",
    "retries",
    "column",
    "table",
    "index",
    "usage",
    "used",
    "source",
    "sources",
    "class",
    "input",
    "output",
    "form",
    "dialog",
    "view",
    "widget",
    "handler",
    "service",
    "client",
    "helper",
    "util",
    "utils",
    "test",
    "tests",
    "spec",
    "mock",
    "fixture",
    "schema",
    "model",
    "count",
    "counter",
    "bucket",
    "registry",
    "store",
    "cache",
    "config",
    "settings",
    "options",
    "flag",
    "flags",
    "check",
    "checker",
    "match",
    "matches",
    "len",
];
/// Words that start a key which only describes a secret.
const META_FIRST: &[&str] = &[
    "max", "min", "num", "total", "count", "is", "has", "use", "enable", "disable", "show", "hide", "allow", "require",
    "requires", "forgot",
];
const NOT_PASS: &[&str] = &["bypass", "compass", "encompass", "overpass", "underpass", "surpass", "trespass"];
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "priv",
    "auth",
    "master",
    "encryption",
    "encrypt",
    "crypt",
    "signing",
    "sign",
    "client",
    "app",
    "account",
    "session",
    "license",
    "service",
    "root",
    "hmac",
    "webhook",
    "deploy",
    "admin",
    "consumer",
    "subscription",
    "storage",
    "shared",
    "ssh",
    "jwt",
    "cookie",
    "aes",
    "cipher",
    "dev",
    "prod",
    "live",
    "stripe",
    "twilio",
    "sendgrid",
    "openai",
    "anthropic",
    "google",
    "maps",
    "firebase",
    "mailgun",
    "algolia",
];
const KEY_COMPOUNDS: &[&str] = &[
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "authkey",
    "masterkey",
    "signingkey",
    "appkey",
    "clientkey",
    "accountkey",
    "subscriptionkey",
    "licensekey",
    "encryptionkey",
    "sessionkey",
    "hmackey",
    "webhookkey",
    "apisecret",
];
const PUBLIC: &[&str] = &["public", "pub", "publishable", "pubkey", "publickey"];
/// Type names: `password: String`, `token: str`.
const TYPES: &[&str] = &[
    "str",
    "&str",
    "string",
    "bool",
    "boolean",
    "int",
    "integer",
    "number",
    "bytes",
    "byte",
    "char",
    "text",
    "varchar",
    "uuid",
    "object",
    "dict",
    "any",
    "unknown",
    "never",
    "void",
    "secretstr",
    "secretstring",
    "secretbytes",
    "secret",
    "password",
    "option",
    "optional",
    "vec",
    "list",
    "array",
    "float",
    "double",
    "long",
    "u8",
    "u32",
    "u64",
    "i32",
    "i64",
    "usize",
    "none",
    "null",
    "nullable",
    "maybe",
    "sensitive",
    "redacted",
    "masked",
];

fn split_words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let b = key.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if matches!(c, b'_' | b'-' | b'.' | b':' | b'$' | b'@') {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            continue;
        }
        // camelCase boundary: a lower case letter or digit, then an upper case one.
        if c.is_ascii_uppercase()
            && i > 0
            && (b[i - 1].is_ascii_lowercase() || b[i - 1].is_ascii_digit())
            && !cur.is_empty()
        {
            words.push(std::mem::take(&mut cur));
        }
        cur.push(c.to_ascii_lowercase() as char);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn password_word(w: &str) -> bool {
    w == "pass"
        || w == "pw"
        || w == "pwd"
        || w.contains("passw")
        || w.contains("passphrase")
        || w.contains("passcode")
        || w.ends_with("pwd")
        || (w.ends_with("pass") && !NOT_PASS.contains(&w))
}

fn token_word(w: &str) -> bool {
    w.contains("secret")
        || w == "token"
        || (w.ends_with("token") && w.len() > 5)
        || w == "credential"
        || w == "credentials"
        || w == "creds"
        || w == "auth"
        || w == "authorization"
        || KEY_COMPOUNDS.contains(&w)
}

/// The class and kind a key's words say, or `None` when it names no secret.
fn classify(words: &[String]) -> Option<(Class, SecretKind)> {
    if words.is_empty() || words.len() > 8 {
        return None;
    }
    let has = |f: &dyn Fn(&str) -> bool| words.iter().any(|w| f(w));
    let is = |w: &str| words.iter().any(|x| x == w);
    if has(&|w| PUBLIC.contains(&w)) {
        return None;
    }
    let last = words[words.len() - 1].as_str();
    if words.len() > 1 && (META.contains(&last) || META_FIRST.contains(&words[0].as_str())) {
        return None;
    }
    let class = if has(&password_word) {
        Class::Password
    } else if has(&token_word) || (is("key") && has(&|w| KEY_QUALIFIERS.contains(&w))) {
        Class::Secret
    } else if is("sig") || is("signature") {
        Class::Sig
    } else {
        return None;
    };
    if class == Class::Password {
        return Some((class, SecretKind::Password));
    }
    let kind = if is("aws") {
        if is("session") {
            SecretKind::AwsSessionToken
        } else if has(&|w| w.contains("secret")) {
            SecretKind::AwsSecret
        } else {
            SecretKind::Secret
        }
    } else if is("twilio") {
        SecretKind::TwilioKey
    } else if is("sendgrid") {
        SecretKind::SendgridKey
    } else if is("stripe") {
        SecretKind::StripeKey
    } else if is("slack") {
        SecretKind::SlackToken
    } else if is("github") || is("gh") {
        SecretKind::GithubToken
    } else if is("gitlab") {
        SecretKind::GitlabToken
    } else if is("hf") || is("huggingface") || is("hugging") {
        SecretKind::HuggingfaceToken
    } else if is("npm") {
        SecretKind::NpmToken
    } else if is("pypi") || is("twine") {
        SecretKind::PypiToken
    } else if is("openai") {
        SecretKind::OpenaiKey
    } else if is("anthropic") {
        SecretKind::AnthropicKey
    } else if is("azure") {
        SecretKind::AzureKey
    } else if is("gcp") || is("gcloud") {
        SecretKind::GcpCredential
    } else {
        SecretKind::Secret
    };
    Some((class, kind))
}

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

impl Key {
    /// The key around a keyword hit.
    fn around(scan: &Scan<'_>, hit: &Range<usize>) -> Option<Key> {
        let b = scan.b;
        let mut s = hit.start;
        while s > 0 && hit.start - s < 64 && key_char(b[s - 1]) {
            s -= 1;
        }
        let mut e = hit.end;
        while e < b.len() && e - hit.end < 64 && key_char(b[e]) {
            e += 1;
        }
        let mut dashes = 0;
        while s < e && b[s] == b'-' {
            dashes += 1;
            s += 1;
        }
        while s < e && b[s] == b'.' {
            s += 1;
        }
        while e > s && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if s >= e {
            return None;
        }
        // `--password` is a flag only at the start of a word.
        let flag = dashes > 0
            && (s == dashes
                || matches!(b[s - dashes - 1], b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'=' | b'(' | b'[' | b','));
        let name = &scan.text[s..e];
        // A path segment (`one/pass:far`, `C:\\pass`) is no key.
        if s > 0 && matches!(b[s - 1], b'/' | b'\\') {
            return None;
        }
        // A placeholder (`<GITHUB_TOKEN>`) is no key.
        if s > 0
            && b[s - 1] == b'<'
            && b.get(e) == Some(&b'>')
            && super::kind::is_placeholder_token(&scan.text[s - 1..e + 1])
        {
            return None;
        }
        // A single-dash flag is one letter or a lower-case word (`-p`, `-password`);
        // a letter after a digit (`s3cr3t`) is a value's shape, not a name's.
        if dashes == 1 && !name.bytes().all(|c| c.is_ascii_lowercase() || c == b'-') {
            return None;
        }
        if name.as_bytes().windows(2).any(|w| w[0].is_ascii_digit() && w[1].is_ascii_alphabetic())
            && !name.split(['_', '-', '.']).all(|w| w.len() <= 3 || !w.bytes().any(|c| c.is_ascii_digit()))
        {
            return None;
        }
        let (class, kind) = classify(&split_words(name))?;
        let env_case = name.bytes().any(|c| c.is_ascii_uppercase())
            && name.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        let mut ks = s;
        while ks > 0 && matches!(b[ks - 1], b'"' | b'\'' | b'-' | b'$' | b'@' | b':' | b'[' | b'<') {
            ks -= 1;
            if b[ks] == b':' && (ks == 0 || b[ks - 1] != b' ') {
                break;
            }
        }
        let ls = scan.line_start(ks);
        let mut prefix = scan.text[ls..ks].trim();
        // In a diff, a line's first character is the diff's (`+`, `-`, ` `).
        if scan.diff && ls < ks && matches!(b[ls], b'+' | b'-' | b' ') {
            prefix = scan.text[ls + 1..ks].trim();
        }
        let line_start = matches!(
            prefix,
            "" | "-" | "export" | "set" | "setx" | "ENV" | "readonly" | "declare -x" | "local" | "$env" | "{"
        ) || prefix.ends_with("$env");
        Some(Key { range: s..e, class, kind, flag, line_start, env_case })
    }
}

/// `PASSWORD` in an SQL statement that sets one (`CREATE USER … WITH
/// PASSWORD '…'`, `ALTER ROLE … PASSWORD '…'`).
fn sql_password(scan: &Scan<'_>, key: &Key) -> bool {
    let name = &scan.text[key.range.clone()];
    if !name.eq_ignore_ascii_case("password") {
        return false;
    }
    let before = scan.text[scan.line_start(key.range.start)..key.range.start].to_ascii_uppercase();
    ["CREATE USER", "ALTER USER", "CREATE ROLE", "ALTER ROLE"].iter().any(|k| before.contains(k))
}

/// A `.netrc` entry: `machine HOST login USER password VALUE`, on one line
/// or several.
fn netrc_line(scan: &Scan<'_>, key: &Key) -> bool {
    if &scan.text[key.range.clone()] != "password" {
        return false;
    }
    let mut lo = key.range.start.saturating_sub(200);
    while !scan.text.is_char_boundary(lo) {
        lo += 1;
    }
    let before = &scan.text[lo..key.range.start];
    before.contains("machine ") && before.contains("login ")
}

/// How an unquoted value is delimited and judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `--password VALUE`, `--password=VALUE`: to the next space.
    Flag,
    /// `KEY=VALUE` with no spaces (env files, shell, `k=v` DSNs): to the next space.
    Shell,
    /// `?password=VALUE&…`: to the next `&`.
    Query,
    /// `Server=…;Password=VALUE;`: to the next `;`.
    KvList,
    /// `key: value` opening a line (YAML): to the end of the line.
    Yaml,
    /// `key = value` opening a line (INI, properties, Python…): to the end of the line.
    Ini,
    /// `key: value` inside a line (objects, type annotations, prose).
    Inline,
    /// `key = value` inside a line (code).
    Code,
    /// "the password is VALUE".
    Prose,
    /// `<password>VALUE</password>`.
    Xml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Colon,
    Cmp,
    Space,
    Is,
    Xml,
}

pub(crate) fn find(r: &Redactor, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let mut last_end = 0;
    for hit in scan.hits(Trigger::Assign) {
        if hit.start < last_end {
            continue;
        }
        let Some(key) = Key::around(scan, &hit) else { continue };
        last_end = key.range.end;
        if !r.enabled(key.kind) {
            continue;
        }
        if let Some((range, score)) = assignment(scan, &key) {
            let rule = if key.class == Class::Password { "password-assignment" } else { "secret-assignment" };
            out.push(Cand { prio: 40, f: Finding { rule, kind: key.kind, range, score } });
        }
    }
    if r.enabled(SecretKind::Password) {
        for hit in scan.hits(Trigger::Url) {
            userinfo(scan, hit.end, out);
        }
        for hit in scan.hits(Trigger::Command) {
            command(scan, &hit, out);
        }
    }
    if r.enabled(SecretKind::Secret) {
        for hit in scan.hits(Trigger::Auth) {
            auth_header(scan, &hit, out);
        }
    }
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// The value of the assignment to `key`, and its score.
fn assignment(scan: &Scan<'_>, key: &Key) -> Option<(Range<usize>, f32)> {
    let b = scan.b;
    let mut i = key.range.end;
    // The key's closing quote or bracket: `"password":`, `["password"] =`.
    let mut key_quoted = false;
    while i < b.len() && matches!(b[i], b'"' | b'\'' | b']' | b'`') {
        key_quoted |= b[i] != b']';
        i += 1;
    }
    // `<add key="Password" value="…"/>`.
    if key_quoted && scan.window_before(key.range.start, 6).ends_with("key=\"") {
        let tag = scan.window_after(i, 120);
        let v = tag.find("value=\"")? + 7;
        let s = i + v;
        let e = s + scan.text[s..].find('"')?;
        return judge(scan, key, s..e, true, Style::Xml);
    }
    let before_op = i;
    i = skip_blanks(b, i);
    let space_before = i > before_op;
    let rest = &b[i..];
    let (op, len) =
        if rest.starts_with(b":=") || rest.starts_with(b"?=") || rest.starts_with(b"+=") || rest.starts_with(b"=>") {
            (Op::Eq, 2)
        } else if rest.starts_with(b"===") || rest.starts_with(b"!==") {
            (Op::Cmp, 3)
        } else if rest.starts_with(b"==")
            && !space_before
            && (key.env_case || key.line_start || key.flag || scan.before(key.range.start) == Some(b';'))
        {
            // `DB_PASSWORD==x9…`, `…;Password==x9…;`: an env or connection-string value that starts with `=`
            (Op::Eq, 1)
        } else if rest.starts_with(b"==") || rest.starts_with(b"!=") {
            (Op::Cmp, 2)
        } else if rest.starts_with(b"=") {
            (Op::Eq, 1)
        } else if rest.starts_with(b"::") {
            return None;
        } else if rest.starts_with(b":") {
            (Op::Colon, 1)
        } else if scan.before(key.range.start) == Some(b'<') && rest.starts_with(b">") {
            (Op::Xml, 1)
        } else if key.flag && space_before && !rest.starts_with(b"-") {
            (Op::Space, 0)
        } else if space_before && (rest.starts_with(b"'") || rest.starts_with(b"\"")) && sql_password(scan, key) {
            // SQL: `CREATE USER app WITH PASSWORD 'S3cret!'` (quoted only).
            (Op::Cmp, 0)
        } else if space_before && key.class == Class::Password && netrc_line(scan, key) {
            // `.netrc`: `machine host login me password VALUE`.
            (Op::Space, 0)
        } else if space_before && (rest.starts_with(b"is ") || rest.starts_with(b"was ") || rest.starts_with(b"is: ")) {
            (Op::Is, if rest.starts_with(b"was") || rest.starts_with(b"is:") { 3 } else { 2 })
        } else {
            return None;
        };
    let op_at = i;
    i += len;
    let after_op = i;
    i = skip_blanks(b, i);
    let space_after = i > after_op;
    if i >= b.len() || b[i] == b'\n' || b[i] == b'\r' {
        return None;
    }
    // YAML block scalars: `password: |` and the more indented lines below.
    if op == Op::Colon && key.line_start && matches!(b[i], b'|' | b'>') {
        let line_end = scan.line_end(i);
        if scan.text[i + 1..line_end].trim().trim_matches(['-', '+']).chars().all(|c| c.is_ascii_digit()) {
            return block_scalar(scan, key, line_end);
        }
    }
    // A quoted value, with an optional string prefix (`f"…"`, `r'…'`, `@"…"`).
    let mut q = i;
    if matches!(b[q], b'f' | b'r' | b'b' | b'u' | b'@') && b.get(q + 1).is_some_and(|c| matches!(c, b'"' | b'\'')) {
        q += 1;
    }
    if matches!(b[q], b'"' | b'\'' | b'`') {
        let quote = b[q];
        let start = q + 1;
        let line_end = scan.line_end(start);
        let mut e = start;
        while e < line_end && b[e] != quote {
            if b[e] == b'\\' && quote != b'\'' {
                e += 1;
            }
            e += 1;
        }
        if e >= line_end {
            return None; // unterminated: not a literal on this line
        }
        let style = if op == Op::Cmp { Style::Code } else { Style::Inline };
        return judge(scan, key, start..e, true, style);
    }
    if op == Op::Cmp {
        return None;
    }
    let line_end = scan.line_end(i);
    let style = match op {
        Op::Space => Style::Flag,
        Op::Is => Style::Prose,
        Op::Xml => Style::Xml,
        Op::Eq if key.flag => Style::Flag,
        Op::Eq if !space_before && !space_after => {
            let prev = scan.before(key.range.start);
            if matches!(prev, Some(b'?' | b'&')) {
                Style::Query
            } else if scan.text[scan.line_start(op_at)..line_end].matches(';').count() >= 1
                && scan.text[scan.line_start(op_at)..line_end].matches('=').count() >= 2
            {
                Style::KvList
            } else {
                Style::Shell
            }
        }
        Op::Eq if key.line_start => Style::Ini,
        Op::Eq => Style::Code,
        Op::Colon if key.line_start && space_after => Style::Yaml,
        Op::Colon => Style::Inline,
        Op::Cmp => return None,
    };
    let stop: &[u8] = match style {
        // An env or INI line's value runs to the next space: `&`, `;` and
        // `|` are a password's characters there, not the shell's.
        Style::Shell if key.line_start => b" \t\r\"'`",
        Style::Flag | Style::Shell => b" \t\r;&|<>\"'`",
        Style::Query => b" \t\r&#\"'<>`",
        Style::KvList => b";\r\"'",
        Style::Yaml | Style::Ini => b"\r",
        Style::Inline | Style::Code => b" \t\r,;)}]\"'\\",
        Style::Prose => b" \t\r\"'",
        Style::Xml => b"<\r",
    };
    let mut e = i;
    while e < line_end && !stop.contains(&b[e]) {
        e += 1;
    }
    let mut v = i..e;
    // Comments after a YAML or INI value; trailing punctuation.
    if matches!(style, Style::Yaml | Style::Ini) {
        let t = &scan.text[v.clone()];
        if let Some(c) = t.find(" #").or_else(|| if style == Style::Ini { t.find(" ;") } else { None }) {
            v.end = v.start + c;
        }
        while v.end > v.start && matches!(b[v.end - 1], b' ' | b'\t') {
            v.end -= 1;
        }
    }
    if style == Style::Prose {
        while v.end > v.start && matches!(b[v.end - 1], b'.' | b',' | b';' | b':' | b')') {
            v.end -= 1;
        }
    }
    if style == Style::Shell
        && !key.line_start
        && !key.env_case
        && scan.window_before(key.range.start, 200).contains('(')
    {
        // `f(password=pw)`: a keyword argument, not a shell assignment.
        let t = &scan.text[v.clone()];
        if (t.ends_with(')') || t.ends_with(',')) && !t.contains('(') {
            v.end -= 1;
            let inner = &scan.text[v.clone()];
            if is_reference(inner) {
                return None;
            }
        }
    }
    if v.is_empty() {
        return None;
    }
    judge(scan, key, v, false, style)
}

fn block_scalar(scan: &Scan<'_>, key: &Key, header_end: usize) -> Option<(Range<usize>, f32)> {
    let b = scan.b;
    let ls = scan.line_start(key.range.start);
    let indent = b[ls..].iter().take_while(|c| matches!(c, b' ' | b'\t' | b'-')).count();
    let mut s = None;
    let mut e = header_end;
    let mut i = header_end + 1;
    while i < b.len() {
        let le = scan.line_end(i);
        let line = &scan.text[i..le];
        let ind = line.bytes().take_while(|c| *c == b' ' || *c == b'\t').count();
        if !line.trim().is_empty() {
            if ind <= indent {
                break;
            }
            s.get_or_insert(i + ind);
            e = le;
        }
        i = le + 1;
    }
    let s = s?;
    let v = s..e;
    judge(scan, key, v, true, Style::Yaml)
}

/// Whether a literal `v` is a value for `key`, and how sure.
fn judge(scan: &Scan<'_>, key: &Key, v: Range<usize>, quoted: bool, style: Style) -> Option<(Range<usize>, f32)> {
    let t = &scan.text[v.clone()];
    let lower = t.to_ascii_lowercase();
    let single = quoted && scan.before(v.start) == Some(b'\'');
    let placeholder = if single { is_placeholder_single_quoted(t) } else { is_placeholder(t) };
    if t.trim().is_empty() || placeholder || STOPWORDS.contains(&lower.as_str()) {
        return None;
    }
    // The value names the key again (`password: password`, `PASSWORD=$PASSWORD`).
    if lower.trim_start_matches(['$', '@', ':']) == scan.text[key.range.clone()].to_ascii_lowercase() {
        return None;
    }
    if quoted {
        if t.chars().count() < 3 || is_prose(t) || is_template(t) {
            return None;
        }
        if key.class != Class::Password && !secretish(t) {
            return None;
        }
        if key.class == Class::Sig && !random(t) {
            return None;
        }
        return Some((v, 0.85));
    }
    if is_code(t, style) {
        return None;
    }
    // A reference (`pw`, `self.password`, `os.environ["X"]`) is a name; a
    // bare word may still be a literal where the syntax has no names.
    let ident = is_reference(t);
    let bare = t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    let line = &scan.text[scan.line_start(v.start)..scan.line_end(v.start)];
    let literal = match style {
        Style::Flag | Style::Query | Style::KvList | Style::Xml => true,
        // Env files, properties, `-e KEY=VALUE`: values are literals.
        Style::Shell if key.env_case || key.line_start => true,
        Style::Shell => !ident || (bare && looks_like_password(t)),
        Style::Yaml => !TYPES.contains(&lower.as_str()) && !t.ends_with([',', ';']) && (!ident || bare),
        Style::Ini => !ident || (bare && looks_like_password(t)),
        Style::Prose => looks_like_password(t),
        Style::Inline | Style::Code => {
            looks_like_password(t) && !is_type(t) && (!ident || (bare && !line_is_code(line)))
        }
    };
    if !literal {
        return None;
    }
    if t.bytes().all(|c| c.is_ascii_digit()) && (key.class != Class::Password || t.len() < 6) {
        return None;
    }
    if key.class != Class::Password && !secretish(t) {
        return None;
    }
    if key.class == Class::Sig && !random(t) {
        return None;
    }
    if matches!(style, Style::Yaml | Style::Ini) && is_prose(t) {
        return None;
    }
    Some((v, 0.8))
}

/// UI text, not a secret: two or more words of letters (`"Enter your
/// password"`, `"Mot de passe"`).
fn is_prose(t: &str) -> bool {
    let words: Vec<&str> = t.split_whitespace().collect();
    words.len() >= 2
        && words.iter().all(|w| {
            let w = w.trim_matches(|c: char| ".,!?:;'()\"".contains(c));
            // A word changes from lower to upper case at most once (`Enter`,
            // `PIN`, `GitHub`, `iPhone`); `tmKiGXmJ` does three times.
            let humps =
                w.as_bytes().windows(2).filter(|p| p[0].is_ascii_lowercase() && p[1].is_ascii_uppercase()).count();
            !w.is_empty() && w.chars().all(char::is_alphabetic) && humps <= 1
        })
}

/// A format string (`"%s"`, `"{}"`, `"Password for {0}"`,
/// `"postgres://%s:%s@%s"`): a marker, and around it words, spaces or URL
/// punctuation. A random password may hold `%d` by chance (`MVX%d7)KA~`).
fn is_template(t: &str) -> bool {
    const MARKERS: [&str; 9] = ["%s", "%d", "%v", "{}", "{0}", "{1}", "{{", "#{", "%("];
    if !MARKERS.iter().any(|p| t.contains(p)) {
        return false;
    }
    let rest = MARKERS.iter().fold(t.to_string(), |acc, m| acc.replace(m, ""));
    rest.bytes().all(|c| {
        c.is_ascii_alphabetic() || matches!(c, b' ' | b'_' | b':' | b'/' | b'@' | b'.' | b'-' | b'}' | b')' | b',')
    })
}

/// A name, not a value: `pw`, `self.password`, `config.db.password`,
/// `os.environ["X"]`, `params[:password]`, `process.env.DB_PASS`.
fn is_reference(t: &str) -> bool {
    let b = t.as_bytes();
    if b.is_empty()
        || !(b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b'$')
        || t.ends_with('.')
        || t.contains("..")
    {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.') {
            i += 1;
        } else if t[i..].starts_with("::") || t[i..].starts_with("->") || t[i..].starts_with("?.") {
            i += 2;
        } else if c == b'[' {
            // An index: to its `]`.
            match t[i..].find(']') {
                Some(j) => i += j + 1,
                None => return false,
            }
        } else {
            return false;
        }
    }
    true
}

fn is_type(t: &str) -> bool {
    let lower = t.to_ascii_lowercase();
    let base = lower.split(['<', '[', '?', '|', '!']).next().unwrap_or("");
    if TYPES.contains(&base) || TYPES.contains(&lower.as_str()) {
        return true;
    }
    // `SecretString`, `Option<String>`: CamelCase without digits.
    let b = t.as_bytes();
    b[0].is_ascii_uppercase()
        && !b.iter().any(u8::is_ascii_digit)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'<' | b'>' | b'[' | b']' | b'?' | b'_'))
}

/// Code where a value goes: a call, a type, a reference marker, a tag.
fn is_code(t: &str, style: Style) -> bool {
    let b = t.as_bytes();
    if matches!(b[0], b'&' | b'*' | b'!') && matches!(style, Style::Yaml | Style::Ini | Style::Inline | Style::Code) {
        return true; // `&str`, `*const`, YAML aliases and tags (`!vault`, `!Ref`)
    }
    // `getpass()`, `os.getenv("X")`, `z.string().min(8)`, `input("Password: ")`.
    if let Some(p) = t.find('(') {
        let head = &t[..p];
        if !head.is_empty() && head.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':')) {
            return true;
        }
    }
    if t.starts_with("[]") || t.starts_with("Vec<") {
        return true;
    }
    matches!(style, Style::Inline | Style::Code)
        && (is_type(t) || t.contains("=>") || t.contains("||") || t.contains("&&"))
}

fn line_is_code(line: &str) -> bool {
    ["{", "}", "(", ")", ";", "=>", "const ", "let ", "var ", "def ", "fn ", "function", "return "]
        .iter()
        .any(|p| line.contains(p))
}

/// An unquoted word that is a password rather than a name: a digit and a
/// letter, or a symbol, or mixed case; not snake_case or a dotted path.
fn looks_like_password(t: &str) -> bool {
    let t = t.trim_end_matches(['.', ')', ']', '}']);
    if t.len() < 4 || t.len() > 128 {
        return false;
    }
    let b = t.as_bytes();
    let (up, low, dig) = classes(t);
    let symbol = b.iter().any(|c| !c.is_ascii_alphanumeric() && !matches!(c, b'_' | b'.' | b'-'));
    let snake = t.contains('_')
        && t.split('_').filter(|w| w.len() >= 2 && w.bytes().all(|c| c.is_ascii_alphabetic())).count() >= 2;
    let dotted = t.contains('.')
        && t.split('.').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    if snake || (dotted && !symbol && !dig) {
        return false;
    }
    ((dig && (up || low)) || symbol || (up && low && class_transitions(t) >= 0.3)) && !b.iter().all(u8::is_ascii_digit)
}

/// A literal that could be a token or a key: long enough, not words.
fn secretish(t: &str) -> bool {
    if t.len() < 8 || t.contains(char::is_whitespace) {
        return false;
    }
    let (up, low, dig) = classes(t);
    // `prod/db/credentials`, `refresh_token`, `my-signing-key`: names.
    let wordy = t.split(['/', '_', '-', '.', ':']).all(|w| {
        w.is_empty()
            || (w.bytes().all(|c| c.is_ascii_alphabetic())
                && w.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_uppercase() && w.bytes().all(|c| c.is_ascii_uppercase())
                }))
    });
    if wordy && !dig {
        return false;
    }
    (dig && (up || low)) || (up && low && shannon_entropy(t) >= 3.0) || shannon_entropy(t) >= 3.5
}

/// Random-looking: a signature, not a word.
fn random(t: &str) -> bool {
    t.len() >= 16 && shannon_entropy(t) >= 3.0 && !decodes_to_text(t)
}

/// The password in a URL's user info: `scheme://user:PASSWORD@host`. The
/// password may hold an unescaped `@`; the host is what follows the `@`
/// after which a host name and a `:`, `/`, `?`, `#` or the end come.
fn userinfo(scan: &Scan<'_>, start: usize, out: &mut Vec<Cand>) {
    let b = scan.b;
    let mut end = start;
    while end < b.len()
        && end - start < 512
        && !matches!(b[end], b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b'<' | b'>' | b'`')
    {
        end += 1;
    }
    let mut at = None;
    for a in memchr::memchr_iter(b'@', &b[start..end]).map(|a| start + a) {
        let mut h = a + 1;
        if b.get(h) == Some(&b'[') {
            while h < end && b[h] != b']' {
                h += 1;
            }
            h += 1;
        } else {
            while h < end && (b[h].is_ascii_alphanumeric() || matches!(b[h], b'.' | b'-' | b'_')) {
                h += 1;
            }
        }
        // A port is digits up to the path, the query or the end.
        let port_ok = || {
            let mut p = h + 1;
            while p < end && b[p].is_ascii_digit() {
                p += 1;
            }
            p > h + 1 && (p >= end || matches!(b[p], b'/' | b'?' | b'#' | b',' | b';' | b')'))
        };
        if h > a + 1
            && (h >= end || matches!(b[h], b'/' | b'?' | b'#' | b',' | b';' | b')') || (b[h] == b':' && port_ok()))
        {
            at = Some(a);
            break;
        }
    }
    let Some(at) = at else { return };
    let info = &scan.text[start..at];
    if info.contains('/') && !info.contains(':') {
        return; // a path with an `@` in it
    }
    let Some(colon) = info.find(':') else {
        // A bare token as the user (`https://TOKEN@host`); token rules name
        // the known ones.
        if info.len() >= 20 && secretish(info) && random(info) {
            out.push(Cand {
                prio: 84,
                f: Finding { rule: "url-token", kind: SecretKind::Secret, range: start..at, score: 0.8 },
            });
        }
        return;
    };
    let pass = start + colon + 1..at;
    let p = &scan.text[pass.clone()];
    let lower = p.to_ascii_lowercase();
    if p.is_empty() || is_placeholder(p) || STOPWORDS.contains(&lower.as_str()) || lower == "pwd" || is_template(p) {
        return;
    }
    out.push(Cand {
        prio: 85,
        f: Finding { rule: "url-password", kind: SecretKind::Password, range: pass, score: 0.9 },
    });
}

/// A quoted or bare word starting at `i`, to the end of its quotes or the
/// next space.
fn word_at(scan: &Scan<'_>, i: usize, end: usize) -> Option<Range<usize>> {
    let b = scan.b;
    if i >= end {
        return None;
    }
    if matches!(b[i], b'"' | b'\'') {
        let q = b[i];
        let e = i + 1 + memchr::memchr(q, &b[i + 1..end])?;
        return Some(i + 1..e);
    }
    let mut e = i;
    while e < end && !matches!(b[e], b' ' | b'\t' | b'\r') {
        e += 1;
    }
    Some(i..e)
}

fn command(scan: &Scan<'_>, hit: &Range<usize>, out: &mut Vec<Cand>) {
    let b = scan.b;
    let word = scan.text[hit.clone()].to_ascii_lowercase();
    if scan.before(hit.start).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return;
    }
    let end = scan.line_end(hit.end);
    let line = &scan.text[hit.end..end];
    let mut push = |range: Range<usize>, rule: &'static str| {
        let v = &scan.text[range.clone()];
        let placeholder =
            if scan.before(range.start) == Some(b'\'') { is_placeholder_single_quoted(v) } else { is_placeholder(v) };
        if !v.is_empty() && !placeholder && !STOPWORDS.contains(&v.to_ascii_lowercase().as_str()) {
            out.push(Cand { prio: 45, f: Finding { rule, kind: SecretKind::Password, range, score: 0.85 } });
        }
    };
    let flag_value = |flag: &str, attached: bool| -> Option<Range<usize>> {
        let mut from = 0;
        while let Some(p) = line[from..].find(flag) {
            let at = hit.end + from + p;
            from += p + flag.len();
            if !matches!(scan.before(at), Some(b' ' | b'\t')) {
                continue;
            }
            let v = at + flag.len();
            let v = if attached {
                if v >= end || matches!(b[v], b' ' | b'\t' | b'-') {
                    continue;
                }
                v
            } else {
                let s = skip_blanks(b, v);
                if s == v || s >= end || b[s] == b'-' {
                    continue;
                }
                s
            };
            return word_at(scan, v, end);
        }
        None
    };
    if word.starts_with("mysql") || word.starts_with("mariadb") {
        if let Some(v) = flag_value("-p", true) {
            push(v, "mysql-password-flag");
        }
    } else if word == "sshpass" {
        if let Some(v) = flag_value("-p", true).or_else(|| flag_value("-p", false)) {
            push(v, "sshpass-password");
        }
    } else if word.ends_with("login") {
        if let Some(v) = flag_value("-p", false) {
            push(v, "login-password-flag");
        }
    } else if word.starts_with("curl") || word.starts_with("wget") {
        for flag in ["-u", "--user"] {
            if let Some(v) = flag_value(flag, false) {
                let cred = &scan.text[v.clone()];
                if let Some(c) = cred.find(':') {
                    push(v.start + c + 1..v.end, "curl-user-password");
                }
            }
        }
    } else if word == "redis-cli" {
        if let Some(v) = flag_value("-a", false) {
            push(v, "redis-cli-password");
        }
    } else if word == "identified by " {
        // MySQL: `CREATE USER 'u'@'%' IDENTIFIED BY 'S3cret!'`.
        let s = hit.end;
        if s < end
            && matches!(b[s], b'"' | b'\'')
            && let Some(v) = word_at(scan, s, end)
        {
            push(v, "sql-password");
        }
    } else if word.starts_with("requirepass") || word.starts_with("masterauth") {
        if let Some(v) = word_at(scan, skip_blanks(b, hit.end), end) {
            push(v, "redis-password");
        }
    } else if word == "convertto-securestring" && line.to_ascii_lowercase().contains("-asplaintext") {
        let s = skip_blanks(b, hit.end);
        if s < end
            && matches!(b[s], b'"' | b'\'')
            && let Some(v) = word_at(scan, s, end)
        {
            push(v, "powershell-plaintext-password");
        }
    }
}

/// `Authorization: Bearer TOKEN`, `Authorization: Basic BASE64`,
/// `Authorization: token TOKEN`.
fn auth_header(scan: &Scan<'_>, hit: &Range<usize>, out: &mut Vec<Cand>) {
    let b = scan.b;
    if scan.before(hit.start).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return;
    }
    let word = scan.text[hit.clone()].to_ascii_lowercase();
    let mut i = hit.end;
    if word == "bearer" {
        if !matches!(scan.byte(i), Some(b' ' | b'\t')) {
            return;
        }
    } else if word == "basic " && !scan.window_before(hit.start, 40).to_ascii_lowercase().contains("authorization") {
        return;
    }
    i = skip_blanks(b, i);
    let mut e = i;
    while e < b.len() && (b[e].is_ascii_alphanumeric() || matches!(b[e], b'.' | b'_' | b'~' | b'+' | b'/' | b'-')) {
        e += 1;
    }
    while e < b.len() && b[e] == b'=' {
        e += 1;
    }
    if e - i < 12 {
        return;
    }
    let v = &scan.text[i..e];
    if is_placeholder(v) || !secretish(v) {
        return;
    }
    let rule = if word == "bearer" { "bearer-token" } else { "authorization-header" };
    out.push(Cand { prio: 80, f: Finding { rule, kind: SecretKind::Secret, range: i..e, score: 0.85 } });
}
