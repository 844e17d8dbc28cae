//! PII and secret redaction.
//!
//! A [`Redactor`] finds personal data and credentials in text and replaces
//! each with a typed placeholder (`<EMAIL>`, `<AWS_KEY>`, …). Its
//! [`RedactionReport`] counts findings by [`SecretKind`] and never holds the
//! values themselves.
//!
//! Detection follows the approach of Presidio and gitleaks: a pattern finds a
//! candidate, then a validator keeps false positives down — checksums where
//! the format has one (Luhn for cards, mod-97 for IBANs), number ranges (SSN
//! areas, IPv4 octets, card issuer prefixes), context (a `version` before
//! `1.0.0.0` makes it no address; `sha512-` before a base64 run makes it an
//! integrity hash), allowlists (AWS's documentation key ending in `EXAMPLE`,
//! placeholders such as `${DB_PASSWORD}`) and, for generic secrets, Shannon
//! entropy and the mix of character classes.
//!
//! When candidates overlap, the more specific rule wins (a JWT beats a
//! high-entropy string, an IBAN beats a phone number). Redaction is
//! idempotent: placeholders are never redacted again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The type of a finding; each has its placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SecretKind {
    /// An email address.
    Email,
    /// A phone number (international `+` forms and North American forms).
    Phone,
    /// A US social security number.
    Ssn,
    /// A payment card number (Luhn-checked).
    CreditCard,
    /// An IPv4 address (loopback and unspecified addresses are kept).
    Ipv4,
    /// An IPv6 address (loopback and unspecified addresses are kept).
    Ipv6,
    /// An international bank account number (mod-97-checked).
    Iban,
    /// An AWS access key id.
    AwsKey,
    /// An AWS secret access key.
    AwsSecret,
    /// A GitHub token, classic or fine-grained.
    GithubToken,
    /// An OpenAI API key.
    OpenaiKey,
    /// An Anthropic API key.
    AnthropicKey,
    /// A Slack token or webhook.
    SlackToken,
    /// A Google API key.
    GoogleApiKey,
    /// A Stripe live key.
    StripeKey,
    /// A PEM/OpenSSH private key block.
    PrivateKey,
    /// A JSON web token.
    Jwt,
    /// The value of a password assignment (or a password in a URL).
    Password,
    /// The value of a secret, token or key assignment, or a bearer token.
    Secret,
    /// A random-looking string (high Shannon entropy, mixed character classes).
    HighEntropy,
    /// The user name in a home-directory path.
    HomePath,
}

impl SecretKind {
    /// Every kind.
    pub const ALL: [SecretKind; 21] = [
        SecretKind::Email,
        SecretKind::Phone,
        SecretKind::Ssn,
        SecretKind::CreditCard,
        SecretKind::Ipv4,
        SecretKind::Ipv6,
        SecretKind::Iban,
        SecretKind::AwsKey,
        SecretKind::AwsSecret,
        SecretKind::GithubToken,
        SecretKind::OpenaiKey,
        SecretKind::AnthropicKey,
        SecretKind::SlackToken,
        SecretKind::GoogleApiKey,
        SecretKind::StripeKey,
        SecretKind::PrivateKey,
        SecretKind::Jwt,
        SecretKind::Password,
        SecretKind::Secret,
        SecretKind::HighEntropy,
        SecretKind::HomePath,
    ];

    /// The snake_case name (`email`, `aws_key`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Email => "email",
            SecretKind::Phone => "phone",
            SecretKind::Ssn => "ssn",
            SecretKind::CreditCard => "credit_card",
            SecretKind::Ipv4 => "ipv4",
            SecretKind::Ipv6 => "ipv6",
            SecretKind::Iban => "iban",
            SecretKind::AwsKey => "aws_key",
            SecretKind::AwsSecret => "aws_secret",
            SecretKind::GithubToken => "github_token",
            SecretKind::OpenaiKey => "openai_key",
            SecretKind::AnthropicKey => "anthropic_key",
            SecretKind::SlackToken => "slack_token",
            SecretKind::GoogleApiKey => "google_api_key",
            SecretKind::StripeKey => "stripe_key",
            SecretKind::PrivateKey => "private_key",
            SecretKind::Jwt => "jwt",
            SecretKind::Password => "password",
            SecretKind::Secret => "secret",
            SecretKind::HighEntropy => "high_entropy",
            SecretKind::HomePath => "home_path",
        }
    }

    /// The placeholder that replaces a finding of this kind.
    pub fn placeholder(self) -> &'static str {
        match self {
            SecretKind::Email => "<EMAIL>",
            SecretKind::Phone => "<PHONE>",
            SecretKind::Ssn => "<SSN>",
            SecretKind::CreditCard => "<CREDIT_CARD>",
            SecretKind::Ipv4 => "<IPV4>",
            SecretKind::Ipv6 => "<IPV6>",
            SecretKind::Iban => "<IBAN>",
            SecretKind::AwsKey => "<AWS_KEY>",
            SecretKind::AwsSecret => "<AWS_SECRET>",
            SecretKind::GithubToken => "<GITHUB_TOKEN>",
            SecretKind::OpenaiKey => "<OPENAI_KEY>",
            SecretKind::AnthropicKey => "<ANTHROPIC_KEY>",
            SecretKind::SlackToken => "<SLACK_TOKEN>",
            SecretKind::GoogleApiKey => "<GOOGLE_API_KEY>",
            SecretKind::StripeKey => "<STRIPE_KEY>",
            SecretKind::PrivateKey => "<PRIVATE_KEY>",
            SecretKind::Jwt => "<JWT>",
            SecretKind::Password => "<PASSWORD>",
            SecretKind::Secret => "<SECRET>",
            SecretKind::HighEntropy => "<TOKEN>",
            SecretKind::HomePath => "<USER>",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecretKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SecretKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown secret kind {s:?}"))
    }
}

/// Settings of the redactor (`[redaction]` in `sam.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedactionConfig {
    /// Kinds not to look for (e.g. `["ipv4"]` for a network-tools assistant).
    pub disabled: Vec<SecretKind>,
    /// Minimum Shannon entropy (bits per character) of a high-entropy string.
    pub entropy_threshold: f64,
    /// Minimum length of a high-entropy string.
    pub entropy_min_len: usize,
    /// Literal strings never redacted (e.g. a public test email).
    pub allow: Vec<String>,
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
            generic_users: [
                "user", "username", "runner", "ubuntu", "root", "admin", "shared", "public", "default", "me",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
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

/// One finding: a kind and the byte range it covers in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// What was found.
    pub kind: SecretKind,
    /// Byte range in the text.
    pub range: std::ops::Range<usize>,
}

type Validator = fn(&Redactor, &str, &regex::Captures<'_>, std::ops::Range<usize>) -> bool;

struct Rule {
    kind: SecretKind,
    re: Regex,
    /// Capture group that holds the span to redact.
    group: usize,
    /// Higher wins when spans overlap.
    priority: u8,
    validate: Option<Validator>,
}

/// Finds and replaces PII and secrets.
///
/// ```
/// use sam_capture::redact::{Redactor, SecretKind};
///
/// let r = Redactor::default();
/// let (out, report) = r.redact("mail jane.doe@corp.example or call +44 20 7946 0958");
/// assert_eq!(out, "mail <EMAIL> or call <PHONE>");
/// assert_eq!(report.counts[&SecretKind::Email], 1);
/// // A card number that fails the Luhn check is left alone.
/// assert_eq!(r.redact("card 4111 1111 1111 1112").0, "card 4111 1111 1111 1112");
/// ```
pub struct Redactor {
    cfg: RedactionConfig,
    rules: Vec<Rule>,
    token: Regex,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(RedactionConfig::default())
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor").field("cfg", &self.cfg).field("rules", &self.rules.len()).finish()
    }
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in redaction patterns compile")
}

const TOKEN_CHARS: &str = "A-Za-z0-9_-";

impl Redactor {
    /// A redactor with these settings.
    pub fn new(cfg: RedactionConfig) -> Self {
        use SecretKind::*;
        let rule = |kind, pattern: &str, group, priority, validate: Option<Validator>| Rule {
            kind,
            re: re(pattern),
            group,
            priority,
            validate,
        };
        // A token ends where the token alphabet ends; the regex crate has no
        // look-around, so the rules capture the token in group 1 and match
        // the following character (or the end) outside it.
        let end = format!("(?:[^{TOKEN_CHARS}]|$)");
        let start = format!("(?:^|[^{TOKEN_CHARS}])");
        let rules = vec![
            rule(
                PrivateKey,
                r"(?s)(-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|$))",
                1,
                100,
                None,
            ),
            rule(
                Jwt,
                &format!(r"{start}(eyJ[A-Za-z0-9_-]{{5,}}\.eyJ[A-Za-z0-9_-]{{5,}}\.[A-Za-z0-9_-]{{10,}}){end}"),
                1,
                95,
                None,
            ),
            rule(AnthropicKey, &format!(r"{start}(sk-ant-[A-Za-z0-9_-]{{32,}}){end}"), 1, 92, None),
            rule(
                OpenaiKey,
                &format!(r"{start}(sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{{20,}}){end}"),
                1,
                90,
                Some(|_, _, c, _| !c[1].starts_with("sk-ant-")),
            ),
            rule(GithubToken, &format!(r"{start}((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{{36,255}}){end}"), 1, 90, None),
            rule(GithubToken, &format!(r"{start}(github_pat_[A-Za-z0-9_]{{50,255}}){end}"), 1, 90, None),
            rule(
                AwsKey,
                r"(?:^|[^A-Za-z0-9])((?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16})(?:[^A-Za-z0-9]|$)",
                1,
                90,
                Some(|_, _, c, _| !c[1].ends_with("EXAMPLE")),
            ),
            rule(
                AwsSecret,
                r#"(?i)aws.{0,24}?(?:secret|sk)[a-z_ ]{0,24}["']?\s*(?:=|:|=>|:=)\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
                1,
                88,
                Some(|_, _, c, _| !c[1].ends_with("EXAMPLEKEY")),
            ),
            rule(SlackToken, &format!(r"{start}(xox[abposre]-[A-Za-z0-9-]{{10,}}){end}"), 1, 90, None),
            rule(SlackToken, r"(https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,})", 1, 90, None),
            rule(GoogleApiKey, &format!(r"{start}(AIza[0-9A-Za-z_-]{{35}}){end}"), 1, 90, None),
            rule(StripeKey, r"(?:^|[^A-Za-z0-9_])((?:sk|rk)_live_[0-9a-zA-Z]{20,247})(?:[^A-Za-z0-9_]|$)", 1, 90, None),
            rule(
                Password,
                r"(?i)\b[a-z][a-z0-9+.-]{1,20}://[^/\s:@]{1,64}:([^/\s@]{1,128})@[a-z0-9.-]",
                1,
                85,
                Some(|r, _, c, _| !r.is_placeholder(&c[1])),
            ),
            rule(Iban, r"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32})", 1, 80, None),
            rule(CreditCard, r"(?:^|[^0-9.-])((?:\d[ -]?){12,22}\d)(?:[^0-9]|$)", 1, 70, None),
            rule(
                Email,
                r"(?:^|[^A-Za-z0-9._%+-])([A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24})\b",
                1,
                75,
                Some(|_, text, c, _| {
                    let m = c.get(1).expect("group");
                    // `git@github.com:org/repo` is a remote, not a person.
                    !(m.as_str().starts_with("git@") && text[m.end()..].starts_with(':'))
                }),
            ),
            rule(Ssn, r"(?:^|[^0-9-])((\d{3})-(\d{2})-(\d{4}))(?:[^0-9-]|$)", 1, 65, Some(Redactor::valid_ssn)),
            rule(
                Ipv6,
                r"(?i)(?:^|[^0-9a-z:_.])([0-9a-f:]*:[0-9a-f:]*:[0-9a-f:.]*)(?:[^0-9a-z:_]|$)",
                1,
                60,
                Some(Redactor::valid_ipv6),
            ),
            rule(Ipv4, r"(?:^|[^0-9.])((?:\d{1,3}\.){3}\d{1,3})(?:[^0-9]|$)", 1, 60, Some(Redactor::valid_ipv4)),
            rule(
                Phone,
                r"(?:^|[^0-9A-Za-z+])(\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6})(?:[^0-9]|$)",
                1,
                50,
                Some(Redactor::valid_intl_phone),
            ),
            rule(
                Phone,
                r"(?:^|[^0-9A-Za-z.-])((?:\([2-9]\d{2}\) ?|[2-9]\d{2}[-. ])[2-9]\d{2}[-. ]\d{4})(?:[^0-9-]|$)",
                1,
                50,
                None,
            ),
            rule(
                Password,
                r#"(?i)(?:^|[^a-z0-9])[a-z0-9_.-]*(?:passw(?:or)?d|passwd|pwd|passphrase)[a-z0-9_-]*["']?\s*(?:=|:|:=|=>)\s*("[^"\n]*"|'[^'\n]*'|[^\s,;'"]+)"#,
                1,
                40,
                Some(Redactor::valid_password_value),
            ),
            rule(
                Password,
                r#"(?i)\b(?:password|passwd|passphrase)\s+(?:is|was)\s+["']?([^\s"']+)"#,
                1,
                40,
                Some(Redactor::valid_unquoted_secret),
            ),
            rule(Password, r#"(?i)--password[ =]["']?([^\s"']+)"#, 1, 40, Some(Redactor::valid_unquoted_secret)),
            rule(
                Secret,
                r#"(?i)(?:^|[^a-z0-9])[a-z0-9_.-]*(?:secret|token|api[_-]?key|apikey|access[_-]?key|auth[_-]?key|private[_-]?key|signing[_-]?key|encryption[_-]?key|credentials?)[a-z0-9_-]*["']?\s*(?:=|:|:=|=>)\s*("[^"\n]*"|'[^'\n]*'|[^\s,;'"]+)"#,
                1,
                35,
                Some(Redactor::valid_secret_value),
            ),
            rule(
                Secret,
                r"(?i)\b(?:bearer|authorization:\s*basic)\s+([A-Za-z0-9._~+/-]{16,}=*)",
                1,
                38,
                Some(|r, _, c, _| !r.is_placeholder(&c[1])),
            ),
            rule(
                HomePath,
                r"(?:/home/|/Users/|[A-Za-z]:(?:\\{1,2}|/)Users(?:\\{1,2}|/))([A-Za-z0-9._-]+)",
                1,
                30,
                Some(|r, _, c, _| !r.cfg.generic_users.iter().any(|g| g.eq_ignore_ascii_case(&c[1]))),
            ),
        ];
        let rules = rules.into_iter().filter(|r| !cfg.disabled.contains(&r.kind)).collect();
        Self { cfg, rules, token: re(r"[A-Za-z0-9+/_-]+=*") }
    }

    /// The settings in use.
    pub fn config(&self) -> &RedactionConfig {
        &self.cfg
    }

    /// Every finding in `text`, non-overlapping, in order.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut cands: Vec<(u8, Span)> = Vec::new();
        for rule in &self.rules {
            // Matches can share their boundary character, so search again
            // from inside the last match rather than after it.
            let mut at = 0;
            while at <= text.len() {
                let Some(c) = rule.re.captures_at(text, at) else { break };
                let whole = c.get(0).expect("group 0");
                let Some(g) = c.get(rule.group) else { break };
                let range = g.start()..g.end();
                let ok = rule.validate.is_none_or(|v| v(self, text, &c, range.clone()));
                let mut range = range;
                if ok && rule.kind == SecretKind::Iban {
                    match self.iban_span(&text[range.clone()]) {
                        Some(len) => range.end = range.start + len,
                        None => range.end = range.start,
                    }
                }
                if ok && rule.kind == SecretKind::CreditCard {
                    // The run of digits may hold a card among other numbers
                    // (`qty 2 4539 1488 0343 6467`): find it.
                    match card_span(&text[range.clone()]) {
                        Some(sub) => range = range.start + sub.start..range.start + sub.end,
                        None => range.end = range.start,
                    }
                }
                // Trim quotes from quoted values.
                let v = &text[range.clone()];
                if v.len() >= 2 && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
                {
                    range = range.start + 1..range.end - 1;
                }
                let found = ok && !range.is_empty();
                if found && !self.allowed(&text[range.clone()]) {
                    cands.push((rule.priority, Span { kind: rule.kind, range: range.clone() }));
                }
                // After a find, go on after it; after a candidate that failed
                // validation, one character on, since a valid one may start
                // inside it.
                at = if found {
                    next_char(text, range.end.max(whole.start() + 1))
                } else {
                    next_char(text, g.start().max(whole.start()) + 1)
                };
            }
        }
        if !self.cfg.disabled.contains(&SecretKind::HighEntropy) {
            for m in self.token.find_iter(text) {
                if let Some(span) = self.high_entropy(text, m.start(), m.as_str()) {
                    cands.push((10, span));
                }
            }
        }
        // Most specific first, then longest; keep what does not overlap.
        cands.sort_by(|a, b| b.0.cmp(&a.0).then((b.1.range.len()).cmp(&a.1.range.len())));
        // Kept spans never overlap, so by start they are also ordered by end:
        // a candidate overlaps a kept span only if it overlaps the last one
        // starting before its end.
        let mut kept: BTreeMap<usize, Span> = BTreeMap::new();
        for (_, s) in cands {
            let clash = kept.range(..s.range.end).next_back().is_some_and(|(_, k)| k.range.end > s.range.start);
            if !clash {
                kept.insert(s.range.start, s);
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
        self.cfg.allow.iter().any(|a| a == value)
    }

    fn is_placeholder(&self, v: &str) -> bool {
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        let lower = v.to_ascii_lowercase();
        v.is_empty()
            || v.starts_with('<')
            || v.starts_with('$')
            || v.starts_with('{')
            || v.starts_with('%')
            || v.starts_with('!')
            || v.starts_with('*')
            || v.chars().all(|c| c == v.chars().next().unwrap_or('x'))
            || lower.contains("example")
            || lower.contains("your")
            || lower.contains("xxxx")
            || lower.contains("placeholder")
            || lower.contains("redacted")
            || lower.contains("changeme")
            || lower.contains("dummy")
            || lower.contains("env(")
    }

    fn valid_password_value(&self, text: &str, c: &regex::Captures<'_>, r: std::ops::Range<usize>) -> bool {
        let v = &text[r];
        if is_quoted(v) {
            let inner = &v[1..v.len() - 1];
            return !self.is_placeholder(inner)
                && !STOPWORDS.contains(&inner.to_ascii_lowercase().as_str())
                && !inner.chars().all(|c| c.is_ascii_digit())
                && !inner.contains(char::is_whitespace);
        }
        let _ = c;
        self.looks_like_password(v)
    }

    fn valid_unquoted_secret(&self, _text: &str, c: &regex::Captures<'_>, _r: std::ops::Range<usize>) -> bool {
        let v = c.get(1).expect("group").as_str();
        self.looks_like_password(v)
    }

    /// An unquoted value that is a password rather than code: it has a digit
    /// or a symbol, and is no variable, call, type or placeholder.
    fn looks_like_password(&self, v: &str) -> bool {
        let v = v.trim_end_matches(['.', ')', ']', '}']);
        if v.len() < 4 || self.is_placeholder(v) || STOPWORDS.contains(&v.to_ascii_lowercase().as_str()) {
            return false;
        }
        if v.chars().all(|c| c.is_ascii_digit()) || v.contains(['(', '[', '<', '>']) {
            return false;
        }
        // Dotted names (`self.password`, `os.environ`) are code.
        if v.contains('.') && v.split('.').all(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            return false;
        }
        v.chars().any(|c| c.is_ascii_digit())
            || v.chars().any(|c| !c.is_ascii_alphanumeric() && c != '_')
            || (v.len() >= 8 && class_transitions(v) >= 0.3)
    }

    fn valid_secret_value(&self, text: &str, _c: &regex::Captures<'_>, r: std::ops::Range<usize>) -> bool {
        let v = &text[r];
        let inner = if is_quoted(v) { &v[1..v.len() - 1] } else { v };
        if inner.len() < 8 || self.is_placeholder(inner) || inner.contains(char::is_whitespace) {
            return false;
        }
        if inner.chars().all(|c| c.is_ascii_digit()) || inner.contains(['(', '[', '<', '>']) {
            return false;
        }
        if inner.contains('.') && inner.split('.').all(|p| p.chars().all(|c| c.is_ascii_alphabetic() || c == '_')) {
            return false;
        }
        // Random-looking: letters and digits mixed, or high entropy.
        let has_digit = inner.chars().any(|c| c.is_ascii_digit());
        let has_alpha = inner.chars().any(|c| c.is_ascii_alphabetic());
        (has_digit && has_alpha && inner.len() >= 12) || shannon_entropy(inner) >= 3.8
    }

    fn valid_card(raw: &str) -> bool {
        let digits: Vec<u8> = raw.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
        let n = digits.len();
        if !(13..=19).contains(&n) || raw.contains(' ') && raw.contains('-') {
            return false;
        }
        let num = |k: usize| digits[..k].iter().fold(0u32, |a, d| a * 10 + u32::from(*d));
        let (p2, p3, p4) = (num(2), num(3), num(4));
        // Issuer prefixes with their lengths.
        let issuer = match digits[0] {
            4 => [13, 16, 19].contains(&n),
            _ if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => n == 16,
            _ if p2 == 34 || p2 == 37 => n == 15,
            _ if p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) => (16..=19).contains(&n),
            _ if (3528..=3589).contains(&p4) => (16..=19).contains(&n),
            _ if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 => (14..=19).contains(&n),
            _ if p2 == 62 => (16..=19).contains(&n),
            _ => false,
        };
        issuer && luhn(&digits)
    }

    fn valid_ssn(&self, _text: &str, c: &regex::Captures<'_>, _r: std::ops::Range<usize>) -> bool {
        let area: u32 = c[2].parse().unwrap_or(0);
        let group: u32 = c[3].parse().unwrap_or(0);
        let serial: u32 = c[4].parse().unwrap_or(0);
        area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && &c[1] != "123-45-6789"
    }

    fn valid_ipv4(&self, text: &str, c: &regex::Captures<'_>, r: std::ops::Range<usize>) -> bool {
        let octets: Vec<u32> = c[1].split('.').map(|o| o.parse().unwrap_or(999)).collect();
        if octets.iter().any(|o| *o > 255) || c[1].split('.').any(|o| o.len() > 1 && o.starts_with('0')) {
            return false;
        }
        // Loopback, unspecified and broadcast addresses name nobody.
        if octets[0] == 127 || octets == [0, 0, 0, 0] || octets == [255, 255, 255, 255] {
            return false;
        }
        // `1.2.3.4.5` (an OID or a long version) is not an address.
        let after = &text[r.end..];
        if after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
            return false;
        }
        // A version, not an address: `v1.0.0.0`, `Version 1.0.0.0`.
        let before = window_before(text, r.start, 40).to_ascii_lowercase();
        let before = before.trim_end_matches(['"', '\'', '`', '(', '=', ':', ' ']);
        let tail: String = before.chars().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        !(before.ends_with('v')
            || tail.contains("version")
            || tail.contains("ver ")
            || tail.contains("release")
            || tail.contains("oid"))
    }

    fn valid_ipv6(&self, text: &str, c: &regex::Captures<'_>, r: std::ops::Range<usize>) -> bool {
        let s = &c[1];
        let Ok(addr) = s.parse::<Ipv6Addr>() else { return false };
        if addr.is_loopback() || addr.is_unspecified() {
            return false;
        }
        // `a::b` in a Rust or C++ path is code: demand three non-empty groups.
        let groups = s.split(':').filter(|g| !g.is_empty()).count();
        let _ = (text, r);
        groups >= 3 || (groups >= 2 && s.split(':').filter(|g| !g.is_empty()).any(|g| g.len() >= 3))
    }

    fn valid_intl_phone(&self, _text: &str, c: &regex::Captures<'_>, _r: std::ops::Range<usize>) -> bool {
        let s = &c[1];
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        (8..=15).contains(&digits)
    }

    /// Length in bytes of the valid IBAN at the start of `s` (spaces count).
    fn iban_span(&self, s: &str) -> Option<usize> {
        let chars: Vec<(usize, char)> = s.char_indices().filter(|(_, c)| *c != ' ').collect();
        let country = &s[..2];
        let lens: Vec<usize> = match iban_len(country) {
            Some(n) => vec![n],
            None => (15..=34).rev().collect(),
        };
        for n in lens {
            if chars.len() < n {
                continue;
            }
            let compact: String = chars[..n].iter().map(|(_, c)| *c).collect();
            if iban_checksum_ok(&compact) {
                let (pos, ch) = chars[n - 1];
                let end = pos + ch.len_utf8();
                // The IBAN must end at a token boundary.
                if s[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                    continue;
                }
                return Some(end);
            }
        }
        None
    }

    fn high_entropy(&self, text: &str, start: usize, tok: &str) -> Option<Span> {
        // Trim padding and separators that are not part of the secret.
        let t = tok.trim_start_matches(['-', '_', '/', '=']).trim_end_matches(['-', '_', '/']);
        let start = start + (tok.len() - tok.trim_start_matches(['-', '_', '/', '=']).len());
        if t.len() < self.cfg.entropy_min_len || t.starts_with('<') {
            return None;
        }
        let body = t.trim_end_matches('=');
        // Hex (hashes, UUIDs) is not a secret by shape alone.
        let hex = |c: char| c.is_ascii_hexdigit() || c == '-' || c == '_';
        let digits = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")).unwrap_or(body);
        if digits.chars().all(hex) {
            return None;
        }
        let (up, low, dig) = (
            body.chars().filter(char::is_ascii_uppercase).count(),
            body.chars().filter(char::is_ascii_lowercase).count(),
            body.chars().filter(char::is_ascii_digit).count(),
        );
        if up == 0 || low == 0 || dig == 0 {
            return None;
        }
        // Identifiers and paths (`getUserV2Handler`, `src/app/Main2.tsx`)
        // change character class rarely; random strings change it often.
        // Separators join words in names (`SmolLM2-135M-Instruct`): judge
        // the characters between them.
        let joined: String = body.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        if self.is_placeholder(body)
            || class_transitions(&joined) < 0.35
            || shannon_entropy(body) < self.cfg.entropy_threshold
        {
            return None;
        }
        // Integrity hashes and inline data are not secrets.
        let before = window_before(text, start, 40).to_ascii_lowercase();
        if ["sha1-", "sha256-", "sha384-", "sha512-", "h1:", "base64,", "sha256:", "integrity"].iter().any(|p| {
            before.trim_end_matches(['"', '\'', ' ', '=', ':']).ends_with(p.trim_end_matches(':'))
                || before.ends_with(p)
        }) {
            return None;
        }
        Some(Span { kind: SecretKind::HighEntropy, range: start..start + t.len() })
    }
}

const STOPWORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "required",
    "optional",
    "none",
    "null",
    "nil",
    "true",
    "false",
    "string",
    "str",
    "undefined",
    "hidden",
    "masked",
    "test",
    "empty",
    "required.",
    "text",
    "input",
    "field",
    "bool",
    "int",
    "value",
];

/// Share of adjacent character pairs that change class (upper, lower,
/// digit, other): about 0.6 for random base64, under 0.2 for identifiers.
fn class_transitions(s: &str) -> f64 {
    let class = |c: char| {
        if c.is_ascii_uppercase() {
            0u8
        } else if c.is_ascii_lowercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        }
    };
    let cs: Vec<u8> = s.chars().map(class).collect();
    if cs.len() < 2 {
        return 0.0;
    }
    cs.windows(2).filter(|w| w[0] != w[1]).count() as f64 / (cs.len() - 1) as f64
}

/// At most `n` bytes of `text` before `pos` (on a character boundary): the
/// context validators look at, bounded so that long texts stay linear.
fn window_before(text: &str, pos: usize, n: usize) -> &str {
    let mut lo = pos.saturating_sub(n);
    while !text.is_char_boundary(lo) {
        lo += 1;
    }
    &text[lo..pos]
}

fn is_quoted(v: &str) -> bool {
    v.len() >= 2 && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
}

fn next_char(text: &str, mut i: usize) -> usize {
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i.max(1).min(text.len() + 1)
}

/// The longest valid card number inside a run of digits and separators:
/// the whole run, or whole groups of it (`qty 2 4539 1488 0343 6467`). A run
/// without separators counts only whole.
fn card_span(s: &str) -> Option<std::ops::Range<usize>> {
    // Digit groups as byte ranges.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, c) in s.char_indices() {
        if c.is_ascii_digit() {
            match groups.last_mut() {
                Some(g) if g.end == i => g.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
    }
    let mut best: Option<std::ops::Range<usize>> = None;
    for a in 0..groups.len() {
        for b in a..groups.len() {
            let lens: Vec<usize> = groups[a..=b].iter().map(|g| g.len()).collect();
            let n: usize = lens.iter().sum();
            let grouping_ok = lens.len() == 1
                || lens[..lens.len() - 1].iter().all(|l| *l == 4) && (1..=4).contains(&lens[lens.len() - 1])
                || lens == [4, 6, 5]
                || lens == [4, 6, 4];
            let span = groups[a].start..groups[b].end;
            if grouping_ok
                && (13..=19).contains(&n)
                && best.as_ref().is_none_or(|r| span.len() > r.len())
                && Redactor::valid_card(&s[span.clone()])
            {
                best = Some(span);
            }
        }
    }
    best
}

/// Shannon entropy of `s` in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    let mut n = 0usize;
    for c in s.chars() {
        *counts.entry(c).or_default() += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    counts.values().map(|&k| k as f64 / n as f64).map(|p| -p * p.log2()).sum()
}

/// The Luhn check over digits (most significant first).
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// The IBAN mod-97 check over a compact IBAN (no spaces).
pub fn iban_checksum_ok(iban: &str) -> bool {
    if iban.len() < 15 || !iban.is_ascii() {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

fn iban_len(country: &str) -> Option<usize> {
    Some(match country {
        "AT" => 20,
        "BE" => 16,
        "CH" => 21,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "ES" => 24,
        "FI" => 18,
        "FR" => 27,
        "GB" => 22,
        "IE" => 22,
        "IT" => 27,
        "LU" => 20,
        "NL" => 18,
        "NO" => 15,
        "PL" => 28,
        "PT" => 25,
        "SE" => 24,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: &str) {
        let r = Redactor::default();
        let (out, _) = r.redact(input);
        assert_eq!(out, want, "input {input:?}");
        // Idempotent.
        assert_eq!(r.redact(&out).0, out, "second pass over {out:?}");
    }

    #[test]
    fn cases() {
        for (input, want) in [
            ("contact bob.smith@acme-corp.io today", "contact <EMAIL> today"),
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("call (415) 555-0132 or +49 30 12345678", "call <PHONE> or <PHONE>"),
            ("ssn 078-05-1120 ok", "ssn <SSN> ok"),
            ("ssn 000-12-3456 is invalid", "ssn 000-12-3456 is invalid"),
            ("pay 4539 1488 0343 6467 now", "pay <CREDIT_CARD> now"),
            ("pay 4539 1488 0343 6468 now", "pay 4539 1488 0343 6468 now"),
            ("qty 2 4539 1488 0343 6467", "qty 2 <CREDIT_CARD>"),
            ("trace id 45391488034364670123", "trace id 45391488034364670123"),
            ("from 203.0.113.42:8080", "from <IPV4>:8080"),
            ("listen 127.0.0.1 and 0.0.0.0", "listen 127.0.0.1 and 0.0.0.0"),
            ("AssemblyVersion(\"1.0.0.0\")", "AssemblyVersion(\"1.0.0.0\")"),
            ("addr 2001:db8:85a3::8a2e:370:7334 up", "addr <IPV6> up"),
            ("use std::io; a::b", "use std::io; a::b"),
            ("IBAN DE89 3704 0044 0532 0130 00 BIC", "IBAN <IBAN> BIC"),
            ("IBAN DE89 3704 0044 0532 0130 01 BIC", "IBAN DE89 3704 0044 0532 0130 01 BIC"),
            ("key AKIAIOSFODNN7EXAMPLE", "key AKIAIOSFODNN7EXAMPLE"),
            ("key AKIAZ7Q3L4M5N6P2R3S4", "key <AWS_KEY>"),
            ("password = \"hunter2!\"", "password = \"<PASSWORD>\""),
            ("password = os.environ[\"DB_PASSWORD\"]", "password = os.environ[\"DB_PASSWORD\"]"),
            ("DB_PASSWORD=${DB_PASSWORD}", "DB_PASSWORD=${DB_PASSWORD}"),
            ("PASSWORD_MIN_LENGTH = 12", "PASSWORD_MIN_LENGTH = 12"),
            ("postgres://app:s3cr3t@db.internal/app", "postgres://app:<PASSWORD>@db.internal/app"),
            ("cd /home/alice/src", "cd /home/<USER>/src"),
            ("cd /home/runner/work", "cd /home/runner/work"),
            ("C:\\Users\\jdoe\\code", "C:\\Users\\<USER>\\code"),
            ("commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39", "commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"),
            ("id 550e8400-e29b-41d4-a716-446655440000", "id 550e8400-e29b-41d4-a716-446655440000"),
            ("seed Zx8Kq2Lm9Np4Rt7Vw1Yb3Cd6Fg0Hj5", "seed <TOKEN>"),
            ("fn getUserAccountSettingsV2Handler()", "fn getUserAccountSettingsV2Handler()"),
            ("models/SmolLM2-135M-Instruct.Q4_1.gguf", "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ("seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)", "seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)"),
        ] {
            check(input, want);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_redacts_without_panic_idempotently(
            a in "\\PC{0,60}",
            b in "\\PC{0,60}",
            secret in proptest::sample::select(vec![
                "AKIAZ7Q3L4M5N6P2R3S4", "ana.silva@proton.me", "4539 1488 0343 6467", "078-05-1120",
                "GB82 WEST 1234 5698 7654 32", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            ]),
        ) {
            let r = Redactor::default();
            let text = format!("{a} {secret} {b}");
            let (out, _) = r.redact(&text);
            proptest::prop_assert!(!out.contains(secret), "{out:?}");
            proptest::prop_assert_eq!(r.redact(&out).0, out.clone());
        }
    }

    #[test]
    fn long_texts_stay_fast() {
        // A 2 MB log full of addresses and tokens: context checks must not
        // rescan the text before each candidate.
        let line = "2024-01-07 03:12:45 client 203.0.113.42 sig=Zx8Kq2Lm9Np4Rt7Vw1Yb3Cd6Fg0Hj5 ok\n";
        let text = line.repeat(2_000_000 / line.len());
        let t = std::time::Instant::now();
        let (_, report) = Redactor::default().redact(&text);
        assert_eq!(report.counts[&SecretKind::Ipv4], text.lines().count());
        assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    }

    #[test]
    fn checksums() {
        assert!(luhn(&[4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 7]));
        assert!(!luhn(&[4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 8]));
        assert!(iban_checksum_ok("GB82WEST12345698765432"));
        assert!(!iban_checksum_ok("GB82WEST12345698765433"));
    }

    #[test]
    fn report_has_no_values() {
        let (_, report) = Redactor::default().redact("a@b.example.org and key AKIAZ7Q3L4M5N6P2R3S4");
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains("AKIA") && !json.contains("b.example"), "{json}");
        assert_eq!(report.total(), 2);
        assert_eq!(report.to_string(), "2 redacted (email: 1, aws_key: 1)");
    }
}
