//! PII and secret redaction.
//!
//! A [`Redactor`] finds personal data and credentials in text and replaces
//! each with a typed placeholder (`<EMAIL>`, `<AWS_KEY>`, …). Its
//! [`RedactionReport`] counts findings by [`SecretKind`]; [`Redactor::find`]
//! lists each [`Finding`] with its rule, type, byte range and score (what
//! `sam redact --explain` prints). Neither ever holds the values.
//!
//! Detection works the way gitleaks and Presidio do:
//!
//! - **Keywords first.** One Aho-Corasick pass over the text finds every
//!   rule's keywords (`ghp_`, `akia`, `password`, `://`, `/home/`, …); a rule
//!   whose keywords are absent costs nothing more.
//! - **Token rules** ([`tokens`](self)): provider formats with their
//!   prefixes and lengths (GitHub, GitLab, Slack, Stripe, OpenAI, …), each
//!   with a minimum entropy so that `ghp_XXXXXXXX…` in documentation is not
//!   a token, and structural checks where a format has them (a JWT's header
//!   decodes to JSON).
//! - **Recognisers** for personal data: a pattern finds a candidate, a
//!   validator checks it (Luhn for cards, mod-97 for IBANs, SSN areas, IPv4
//!   octets, E.164 lengths), and context words around it raise or lower its
//!   score the way Presidio's context enhancer does (`card` before a
//!   16-digit number, `version` before `1.2.0.1`).
//! - **Assignments**: the value given to a key that names a secret, in any
//!   common syntax (env files, shell with any quoting, YAML, JSON, TOML/INI,
//!   command-line flags, URL user info, connection strings). A name is not
//!   a value: `password: &str`, `password = os.environ[…]`, `${VAR}`,
//!   `<YOUR_KEY>` are left alone.
//! - **Entropy** for the random-looking strings no rule names.
//! - **Lookalikes**: public keys, certificates and data URIs are masked
//!   before anything else runs; URLs, commit SHAs, UUIDs, checksums and
//!   lockfile integrity hashes are never high-entropy tokens; versions,
//!   dates and changelog headers are never phone numbers or addresses.
//! - **Allowlists**: literal values and regular expressions in
//!   [`RedactionConfig`], sources whose examples are vouched for.
//!
//! When findings overlap, the more specific rule wins (a JWT beats a bearer
//! token, an IBAN beats a phone number). Redaction is idempotent:
//! placeholders are never redacted again.
//!
//! ```
//! use sam_capture::redact::{Redactor, SecretKind};
//!
//! let r = Redactor::default();
//! let (out, report) = r.redact("mail jane.doe@corp.example or call +44 20 7946 0958");
//! assert_eq!(out, "mail <EMAIL> or call <PHONE>");
//! assert_eq!(report.counts[&SecretKind::Email], 1);
//! // A name is not a value; a version is not a phone number.
//! let code = "fn login(password: &str) {}\n+0.5.0 (2017-03-12)";
//! assert_eq!(r.redact(code).0, code);
//! // Each finding says which rule found what, and where; never the value.
//! let f = &r.find("export GITHUB_TOKEN=ghp_R8x2Kq9Lm3Np7Tv4Wy6Zb1Cd5Fg0Hj2Ks4Qe")[0];
//! assert_eq!((f.rule, f.kind, f.range.start), ("github-token", SecretKind::GithubToken, 20));
//! ```

mod assign;
mod checks;
mod entropy;
mod kind;
mod lookalike;
mod pii;
mod tokens;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::Regex;
use serde::{Deserialize, Serialize};

pub use checks::{iban_checksum_ok, luhn, shannon_entropy};
pub use kind::SecretKind;

use crate::error::{CaptureError, Result};

/// Settings of the redactor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactionConfig {
    /// Kinds not to look for (e.g. `["ipv4"]` for a network-tools assistant).
    pub disabled: Vec<SecretKind>,
    /// Minimum Shannon entropy (bits per character) of a high-entropy string.
    pub entropy_threshold: f64,
    /// Minimum length of a high-entropy string.
    pub entropy_min_len: usize,
    /// Literal values never redacted (e.g. a public test email).
    pub allow: Vec<String>,
    /// Regular expressions (Rust `regex` syntax): a finding whose whole
    /// value matches one is kept.
    pub allow_patterns: Vec<String>,
    /// Sources whose examples are stored unredacted, because the user
    /// vouches for them: exact names (`file:vetted.jsonl`) or a prefix
    /// ending in `*` (`file:*`). The examples are marked as such.
    pub allow_sources: Vec<String>,
    /// User names in home paths that name no person (`user`, `runner`, …).
    pub generic_users: Vec<String>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            disabled: Vec::new(),
            entropy_threshold: 3.5,
            entropy_min_len: 20,
            allow: Vec::new(),
            allow_patterns: Vec::new(),
            allow_sources: Vec::new(),
            generic_users: [
                "user",
                "username",
                "runner",
                "ubuntu",
                "root",
                "admin",
                "administrator",
                "shared",
                "public",
                "default",
                "guest",
                "me",
                "you",
                "your-name",
                "yourname",
                "your_name",
                "yourusername",
                "name",
                "ec2-user",
                "vagrant",
                "travis",
                "circleci",
                "jenkins",
                "git",
                "docker",
                "node",
                "app",
                "www-data",
                "all users",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

impl RedactionConfig {
    /// Whether examples of `source` are vouched for (see
    /// [`allow_sources`](Self::allow_sources)).
    pub fn source_allowed(&self, source: &str) -> bool {
        self.allow_sources.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => source.starts_with(prefix),
            None => a == source,
        })
    }
}

/// Counts of findings by kind. Holds no values, so it can be logged and
/// stored freely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionReport {
    /// Findings per kind.
    pub counts: BTreeMap<SecretKind, usize>,
}

impl RedactionReport {
    /// Total number of findings.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Add another report's counts to this one.
    pub fn merge(&mut self, other: &RedactionReport) {
        for (k, n) in &other.counts {
            *self.counts.entry(*k).or_default() += n;
        }
    }

    fn add(&mut self, kind: SecretKind) {
        *self.counts.entry(kind).or_default() += 1;
    }
}

impl fmt::Display for RedactionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing redacted");
        }
        let parts: Vec<String> = self.counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        write!(f, "{} redacted ({})", self.total(), parts.join(", "))
    }
}

/// One finding: which rule found what, and where. Holds no value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The rule that found it (`github-token`, `password-assignment`,
    /// `email`, …).
    pub rule: &'static str,
    /// What was found.
    pub kind: SecretKind,
    /// Byte range in the text.
    pub range: Range<usize>,
    /// Confidence from 0 to 1; findings under 0.5 are not reported.
    pub score: f32,
}

/// A finding with the priority that settles overlaps.
#[derive(Debug, Clone)]
pub(crate) struct Cand {
    prio: u8,
    f: Finding,
}

/// How far rules look along a line from a candidate, in bytes.
pub(crate) const LINE_WINDOW: usize = 1024;

/// Scores from which a candidate is a finding.
pub(crate) const THRESHOLD: f32 = 0.5;

/// Finds and replaces PII and secrets.
///
/// ```
/// use sam_capture::redact::{Redactor, SecretKind};
///
/// let r = Redactor::default();
/// let (out, report) = r.redact("DATABASE_URL=postgres://app:Tr0ub4dor&3@db.internal:5432/app");
/// assert_eq!(out, "DATABASE_URL=postgres://app:<PASSWORD>@db.internal:5432/app");
/// assert_eq!(report.counts[&SecretKind::Password], 1);
/// // A card number that fails the Luhn check is left alone.
/// assert_eq!(r.redact("card 4111 1111 1111 1112").0, "card 4111 1111 1111 1112");
/// ```
pub struct Redactor {
    cfg: RedactionConfig,
    enabled: [bool; 64],
    keywords: AhoCorasick,
    /// What each keyword sets off, by pattern id.
    triggers: Vec<Trigger>,
    token_res: Vec<Regex>,
    pii: pii::Patterns,
    look: lookalike::Patterns,
    entropy: entropy::Patterns,
    allow_re: Option<Regex>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(RedactionConfig::default())
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor").field("cfg", &self.cfg).field("token_rules", &self.token_res.len()).finish()
    }
}

/// What a keyword hit sets off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A token rule, by index into [`tokens::RULES`].
    Token(usize),
    /// A word that names a secret (`password`, `token`, …): look for an
    /// assignment around it.
    Assign,
    /// `://`: URL user info, and URLs to keep out of the entropy rule.
    Url,
    /// A home-directory prefix.
    Home,
    /// `Bearer`, `Basic`: an authorisation header's credential.
    Auth,
    /// A command whose flags carry passwords (`mysql -p…`, `sshpass -p`, `curl -u`).
    Command,
    /// A private key block.
    PrivateKey,
    /// A public key, certificate or data URI: masked.
    Public,
}

pub(crate) fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in redaction pattern {pattern:?}: {e}"))
}

impl Redactor {
    /// A redactor with these settings.
    ///
    /// # Panics
    ///
    /// When an [`allow_patterns`](RedactionConfig::allow_patterns) entry is
    /// not a valid regular expression; use [`Redactor::try_new`] for
    /// settings a user wrote.
    pub fn new(cfg: RedactionConfig) -> Self {
        Self::try_new(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A redactor with these settings, or an error naming the setting that
    /// is wrong.
    pub fn try_new(cfg: RedactionConfig) -> Result<Self> {
        let mut enabled = [true; 64];
        for k in &cfg.disabled {
            enabled[*k as usize] = false;
        }
        let mut words: Vec<String> = Vec::new();
        let mut triggers = Vec::new();
        let mut add = |w: &str, t: Trigger| {
            words.push(w.to_string());
            triggers.push(t);
        };
        let mut token_res = Vec::new();
        for (i, rule) in tokens::RULES.iter().enumerate() {
            token_res.push(re(rule.pattern));
            for k in rule.keywords {
                add(k, Trigger::Token(i));
            }
        }
        for k in assign::KEYWORDS {
            add(k, Trigger::Assign);
        }
        for k in assign::COMMANDS {
            add(k, Trigger::Command);
        }
        for k in ["bearer", "basic ", "authorization: token", "authorization:token"] {
            add(k, Trigger::Auth);
        }
        add("://", Trigger::Url);
        for k in pii::HOME_PREFIXES {
            add(k, Trigger::Home);
        }
        for k in ["-----begin", "private-lines:"] {
            add(k, Trigger::PrivateKey);
        }
        for k in lookalike::KEYWORDS {
            add(k, Trigger::Public);
        }
        let keywords = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&words)
            .expect("the keyword automaton builds");
        let allow_re = if cfg.allow_patterns.is_empty() {
            None
        } else {
            for p in &cfg.allow_patterns {
                Regex::new(p).map_err(|e| CaptureError::Config {
                    key: "allow_patterns".into(),
                    reason: format!("{p:?} is not a regular expression: {e}"),
                })?;
            }
            let joined: Vec<String> = cfg.allow_patterns.iter().map(|p| format!("(?:{p})")).collect();
            Some(re(&format!("^(?:{})$", joined.join("|"))))
        };
        Ok(Self {
            enabled,
            keywords,
            triggers,
            token_res,
            pii: pii::Patterns::new(),
            look: lookalike::Patterns::new(),
            entropy: entropy::Patterns::new(),
            allow_re,
            cfg,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &RedactionConfig {
        &self.cfg
    }

    pub(crate) fn enabled(&self, kind: SecretKind) -> bool {
        self.enabled[kind as usize]
    }

    /// Every finding in `text`, non-overlapping, in order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut scan = Scan::new(self, text);
        let mut cands: Vec<Cand> = Vec::new();
        lookalike::mask(self, &mut scan);
        tokens::find(self, &scan, &mut cands);
        if scan.any(Trigger::PrivateKey) {
            tokens::private_keys(&scan, &mut cands);
        }
        pii::find(self, &scan, &mut cands);
        assign::find(self, &scan, &mut cands);
        if self.enabled(SecretKind::HighEntropy) {
            entropy::find(self, &scan, &mut cands);
        }
        self.resolve(&scan, cands)
    }

    /// Most specific first, then longest; keep what does not overlap, is
    /// enabled, is outside a masked span and is not allowlisted.
    fn resolve(&self, scan: &Scan<'_>, mut cands: Vec<Cand>) -> Vec<Finding> {
        cands.retain(|c| {
            !c.f.range.is_empty()
                && c.f.score >= THRESHOLD
                && self.enabled(c.f.kind)
                && !scan.masked(&c.f.range)
                && !self.allowed(&scan.text[c.f.range.clone()])
                && !kind::is_placeholder_token(&scan.text[c.f.range.clone()])
        });
        cands.sort_by(|a, b| b.prio.cmp(&a.prio).then(b.f.range.len().cmp(&a.f.range.len())));
        // Kept spans never overlap, so by start they are also ordered by end:
        // a candidate overlaps a kept span only if it overlaps the last one
        // starting before its end.
        let mut kept: BTreeMap<usize, Finding> = BTreeMap::new();
        for c in cands {
            let r = &c.f.range;
            let clash = kept.range(..r.end).next_back().is_some_and(|(_, k)| k.range.end > r.start);
            if !clash {
                kept.insert(r.start, c.f);
            }
        }
        kept.into_values().collect()
    }

    /// Redact `text`: each finding becomes its kind's placeholder.
    pub fn redact(&self, text: &str) -> (String, RedactionReport) {
        let mut report = RedactionReport::default();
        let spans = self.find(text);
        if spans.is_empty() {
            return (text.to_string(), report);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for s in spans {
            out.push_str(&text[last..s.range.start]);
            out.push_str(s.kind.placeholder());
            report.add(s.kind);
            last = s.range.end;
        }
        out.push_str(&text[last..]);
        (out, report)
    }

    /// Redact every text field of an example in place, and the string values
    /// of its metadata.
    pub fn redact_example(&self, ex: &mut sam_schema::Example) -> RedactionReport {
        let mut report = RedactionReport::default();
        ex.content.map_text(|t| {
            let (out, r) = self.redact(t);
            report.merge(&r);
            out
        });
        for v in ex.metadata.values_mut() {
            self.redact_value(v, &mut report);
        }
        report
    }

    fn redact_value(&self, v: &mut serde_json::Value, report: &mut RedactionReport) {
        match v {
            serde_json::Value::String(s) => {
                let (out, r) = self.redact(s);
                report.merge(&r);
                *s = out;
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.redact_value(v, report)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| self.redact_value(v, report)),
            _ => {}
        }
    }

    fn allowed(&self, value: &str) -> bool {
        self.cfg.allow.iter().any(|a| a == value) || self.allow_re.as_ref().is_some_and(|r| r.is_match(value))
    }
}

/// One text being scanned: the keyword hits, the masked spans, and helpers
/// the rules share.
pub(crate) struct Scan<'a> {
    pub text: &'a str,
    pub b: &'a [u8],
    /// The text is (or holds) a unified diff: a `+` at the start of a line
    /// is a diff marker, not a phone number's.
    pub diff: bool,
    /// Keyword hits, in text order.
    hits: Vec<(Trigger, Range<usize>)>,
    /// Which token rules have a keyword in the text.
    token_rules: Vec<bool>,
    /// Spans where nothing is a finding (public keys, certificates, data
    /// URIs), sorted, not overlapping.
    hard: Vec<Range<usize>>,
    /// URLs: never high-entropy tokens (their user info, query values and
    /// hosts are still looked at).
    pub urls: Vec<Range<usize>>,
}

impl<'a> Scan<'a> {
    fn new(r: &Redactor, text: &'a str) -> Self {
        let mut hits = Vec::new();
        let mut token_rules = vec![false; tokens::RULES.len()];
        for m in r.keywords.find_overlapping_iter(text) {
            match r.triggers[m.pattern().as_usize()] {
                // Token rules only need to know that a keyword is there.
                Trigger::Token(i) => token_rules[i] = true,
                t => hits.push((t, m.start()..m.end())),
            }
        }
        let b = text.as_bytes();
        let diff =
            b.starts_with(b"@@ ") || memchr::memmem::find(b, b"\n@@ -").is_some() || b.starts_with(b"diff --git");
        Self { text, b, diff, hits, token_rules, hard: Vec::new(), urls: Vec::new() }
    }

    pub fn any(&self, t: Trigger) -> bool {
        self.hits.iter().any(|(h, _)| *h == t)
    }

    pub fn hits(&self, t: Trigger) -> impl Iterator<Item = Range<usize>> + '_ {
        self.hits.iter().filter(move |(h, _)| *h == t).map(|(_, r)| r.clone())
    }

    pub fn token_rule(&self, i: usize) -> bool {
        self.token_rules[i]
    }

    pub fn mask(&mut self, r: Range<usize>) {
        self.hard.push(r);
    }

    fn finish_masks(&mut self) {
        for v in [&mut self.hard, &mut self.urls] {
            v.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<usize>> = Vec::with_capacity(v.len());
            for r in v.drain(..) {
                match merged.last_mut() {
                    Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            *v = merged;
        }
    }

    /// Whether `r` overlaps a masked span.
    pub fn masked(&self, r: &Range<usize>) -> bool {
        overlaps(&self.hard, r)
    }

    /// Whether `r` overlaps a URL.
    pub fn in_url(&self, r: &Range<usize>) -> bool {
        overlaps(&self.urls, r)
    }

    pub fn byte(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    /// The byte before `i`.
    pub fn before(&self, i: usize) -> Option<u8> {
        i.checked_sub(1).and_then(|j| self.byte(j))
    }

    /// At most `n` bytes before `pos`, on a character boundary, within the
    /// line: the context a validator looks at.
    pub fn window_before(&self, pos: usize, n: usize) -> &'a str {
        let mut lo = pos.saturating_sub(n);
        if let Some(nl) = memchr::memrchr(b'\n', &self.b[lo..pos]) {
            lo += nl + 1;
        }
        while !self.text.is_char_boundary(lo) {
            lo += 1;
        }
        &self.text[lo..pos]
    }

    /// At most `n` bytes after `pos`, on a character boundary, within the line.
    pub fn window_after(&self, pos: usize, n: usize) -> &'a str {
        let mut hi = (pos + n).min(self.b.len());
        if let Some(nl) = memchr::memchr(b'\n', &self.b[pos..hi]) {
            hi = pos + nl;
        }
        while !self.text.is_char_boundary(hi) {
            hi -= 1;
        }
        &self.text[pos..hi]
    }

    /// Start of the line holding `pos`, looking back at most [`LINE_WINDOW`]
    /// bytes: rules decide from the text near a candidate, so one long line
    /// (minified code) costs linear time, not quadratic.
    pub fn line_start(&self, pos: usize) -> usize {
        let mut lo = pos.saturating_sub(LINE_WINDOW);
        while !self.text.is_char_boundary(lo) {
            lo += 1;
        }
        memchr::memrchr(b'\n', &self.b[lo..pos]).map_or(lo, |i| lo + i + 1)
    }

    /// End of the line holding `pos` (the newline's index, or the text's
    /// end), looking ahead at most [`LINE_WINDOW`] bytes.
    pub fn line_end(&self, pos: usize) -> usize {
        let mut hi = (pos + LINE_WINDOW).min(self.b.len());
        while !self.text.is_char_boundary(hi) {
            hi -= 1;
        }
        memchr::memchr(b'\n', &self.b[pos..hi]).map_or(hi, |i| pos + i)
    }
}

fn overlaps(spans: &[Range<usize>], r: &Range<usize>) -> bool {
    // The last span starting before r's end is the only one that can overlap.
    let i = spans.partition_point(|s| s.start < r.end);
    i > 0 && spans[i - 1].end > r.start
}

/// Whether `window` holds one of `words` (lower case, letters and digits)
/// as a whole word, ASCII case-insensitively.
pub(crate) fn has_word(window: &str, words: &[&str]) -> bool {
    window
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= 24)
        .any(|w| words.iter().any(|x| x.len() == w.len() && x.eq_ignore_ascii_case(w)))
}

pub(crate) fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A value written where a real one goes: `<YOUR_KEY>`, `${VAR}`, `xxxx`,
/// `changeme`, `sk-...`.
pub(crate) fn is_placeholder(v: &str) -> bool {
    placeholder(v, true, true)
}

/// [`is_placeholder`] for a value in single quotes, where the shell, PHP,
/// Perl and dotenv read `$` literally: `'$t8Qh…'` is a password.
pub(crate) fn is_placeholder_single_quoted(v: &str) -> bool {
    placeholder(v, false, true)
}

/// [`is_placeholder`] for a token of a known format, whose alphabet may hold
/// `.` (three in a row by chance) and `$`.
pub(crate) fn is_token_placeholder(v: &str) -> bool {
    placeholder(v, false, false)
}

fn placeholder(v: &str, dollar_refs: bool, ellipsis: bool) -> bool {
    let v = v.trim_matches(|c| c == '"' || c == '\'' || c == '`');
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    // `<KEY>`, `{key}`, `%KEY%`, `@KEY@`, `*****`.
    let close = match b[0] {
        b'<' => Some(b'>'),
        b'{' => Some(b'}'),
        b'%' | b'@' | b'*' => Some(b[0]),
        _ => None,
    };
    if b.len() >= 2
        && close == Some(b[b.len() - 1])
        && b[1..b.len() - 1].iter().all(|c| is_word_byte(*c) || matches!(c, b'-' | b' ' | b'.' | b'*' | b'|'))
    {
        return true;
    }
    // `$VAR`, `${VAR}`, `$(cmd)`, `$$(cmd)` (compose's escape), `$env:X`,
    // `$VAR (see .env)`.
    if dollar_refs && b[0] == b'$' && (b.len() == 1 || is_var_ref(&v[1..])) {
        return true;
    }
    if b.iter().all(|c| *c == b[0])
        || (ellipsis && v.contains("..."))
        || v.contains('…')
        || (dollar_refs && has_reference(v))
    {
        return true;
    }
    // A path to the secret (`/run/secrets/db-password`, `./secrets/key.pem`),
    // not the secret.
    if (v.starts_with('/') || v.starts_with("./") || v.starts_with("../") || v.starts_with("~/"))
        && v.contains('/')
        && v[1..]
            .split('/')
            .all(|seg| seg.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')))
    {
        return true;
    }
    // Mostly `x` (`ghp_xxxx…`, `AKIAXXXXXXXX…`): a random string has a
    // few by chance.
    let xs = b.iter().filter(|c| matches!(c, b'x' | b'X')).count();
    if xs >= 4 && xs * 10 >= b.len() * 4 || v.contains("xxxxxxxx") || v.contains("XXXXXXXX") {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    PLACEHOLDER_WORDS
        .iter()
        .any(|(w, starts)| lower.match_indices(w).any(|(i, _)| written_as_words(&v[i..i + w.len()], starts)))
}

/// Words that mark a value as a placeholder (`your_api_key`, `CHANGEME`,
/// `ExampleToken`), each with where a camel-case word may start inside it
/// (`ChangeMe`).
const PLACEHOLDER_WORDS: &[(&str, &[usize])] = &[
    ("example", &[]),
    ("your_", &[]),
    ("your-", &[]),
    ("yourpass", &[4]),
    ("yourtoken", &[4]),
    ("yoursecret", &[4]),
    ("yourkey", &[4]),
    ("your ", &[]),
    ("****", &[]),
    ("####", &[]),
    ("placeholder", &[5]),
    ("redacted", &[]),
    ("changeme", &[6]),
    ("changeit", &[6]),
    ("change_me", &[]),
    ("change-me", &[]),
    ("dummy", &[]),
    ("replace_me", &[]),
    ("replace-me", &[]),
    ("replaceme", &[7]),
    ("insert_", &[]),
    ("_here", &[]),
    ("-here", &[]),
    ("notreal", &[3]),
    ("not_real", &[]),
    ("not-a-real", &[]),
    ("fake_", &[]),
    ("env(", &[]),
    ("secret_here", &[]),
];

/// Whether `s`, an occurrence of a placeholder word in any case, is written
/// as words are: lower case, upper case, or capitalised where a word starts
/// (`Dummy`, `Change_Me`, `ChangeMe` at `starts`); a random string holds
/// `dUMMy` by chance.
fn written_as_words(s: &str, starts: &[usize]) -> bool {
    let b = s.as_bytes();
    let word_start = |i: usize| i == 0 || !b[i - 1].is_ascii_alphabetic() || starts.contains(&i);
    !b.iter().any(u8::is_ascii_lowercase) || b.iter().enumerate().all(|(i, c)| !c.is_ascii_uppercase() || word_start(i))
}

/// After a `$`: a variable's name (`API_TOKEN`, `apiToken`, `{DB_PASS}`,
/// `(cat file)`, `$(…)`), not a password that starts with `$` (`$t8QHmXB#…`).
fn is_var_ref(rest: &str) -> bool {
    let rest = rest.strip_prefix('$').unwrap_or(rest);
    if rest.starts_with(['{', '(']) {
        return true;
    }
    let name: &str = &rest[..rest.bytes().take_while(|c| is_word_byte(*c) || *c == b':').count()];
    let b = name.as_bytes();
    !name.is_empty()
        && (b.iter().all(|c| !c.is_ascii_lowercase())
            || b.iter().all(|c| !c.is_ascii_uppercase())
            || !b.windows(2).any(|w| w[0].is_ascii_digit() && w[1].is_ascii_alphabetic()))
}

/// Whether `v` holds a reference to another value: `${NAME}`,
/// `${NAME:-default}`, `$(command)`, `{{ .Values.x }}`. A random password may
/// hold `$(` or `${` by chance; a reference is well formed.
fn has_reference(v: &str) -> bool {
    let b = v.as_bytes();
    for (i, w) in b.windows(2).enumerate() {
        // Only after an ASCII pair is `i + 2` a char boundary.
        let rest = || &v[i + 2..];
        let ok = match w {
            b"${" => rest().find('}').is_some_and(|e| {
                let name = rest()[..e].split([':', '-', '?', '=']).next().unwrap_or("");
                !name.is_empty() && name.bytes().all(|c| is_word_byte(c) || c == b'.')
            }),
            b"$(" => rest().find(')').is_some_and(|e| rest()[..e].starts_with(|c: char| c.is_ascii_lowercase())),
            b"{{" => rest().contains("}}"),
            _ => false,
        };
        if ok {
            return true;
        }
    }
    false
}

/// Whole values that are words, not secrets.
pub(crate) const STOPWORDS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "secret",
    "secrets",
    "token",
    "key",
    "apikey",
    "required",
    "optional",
    "none",
    "null",
    "nil",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "string",
    "str",
    "undefined",
    "hidden",
    "masked",
    "test",
    "testing",
    "empty",
    "text",
    "input",
    "field",
    "bool",
    "boolean",
    "int",
    "integer",
    "number",
    "value",
    "values",
    "default",
    "unset",
    "unknown",
    "any",
    "env",
    "environment",
    "bearer",
    "basic",
    "token",
    "digest",
    "oauth",
    "auth",
    "prompt",
    "stdin",
    "file",
    "vault",
    "keyring",
    "keychain",
];

#[cfg(test)]
mod tests;
