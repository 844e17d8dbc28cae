//! Token rules: credentials with a format of their own (a prefix, an
//! alphabet, a length), in the manner of gitleaks' rule file. Each rule has
//! keywords (lower case; the rule runs only when one is in the text), a
//! pattern, a minimum Shannon entropy for the matched value, and an optional
//! structural check.

use std::ops::Range;

use super::checks::{jwt_header_ok, shannon_entropy};
use super::{Cand, Finding, Redactor, Scan, SecretKind, is_token_placeholder};

/// One token rule.
pub(crate) struct TokenRule {
    /// Stable name, shown by `sam redact --explain`.
    pub id: &'static str,
    pub kind: SecretKind,
    /// Lower-case keywords; any of them in the text runs the rule.
    pub keywords: &'static [&'static str],
    /// The pattern; group 1, when present, is the secret.
    pub pattern: &'static str,
    /// Minimum Shannon entropy of the secret, in bits per byte.
    pub entropy: f64,
    /// Higher wins an overlap.
    pub prio: u8,
    /// Whether a character after the match continues the token (then the
    /// match is a piece of something longer and not this token).
    pub tail: fn(u8) -> bool,
    /// A structural check of the secret, given the whole text and its range.
    pub check: Option<fn(&Scan<'_>, Range<usize>) -> bool>,
}

fn word_or_dash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn base64ish(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

fn never(_: u8) -> bool {
    false
}

const fn rule(
    id: &'static str,
    kind: SecretKind,
    keywords: &'static [&'static str],
    pattern: &'static str,
    entropy: f64,
) -> TokenRule {
    TokenRule { id, kind, keywords, pattern, entropy, prio: 90, tail: word_or_dash, check: None }
}

use SecretKind::*;

pub(crate) static RULES: &[TokenRule] = &[
    TokenRule {
        check: Some(|s, r| !s.text[r].ends_with("EXAMPLE")),
        tail: alnum,
        ..rule(
            "aws-access-key-id",
            AwsKey,
            &["akia", "asia", "abia", "acca", "a3t"],
            r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}",
            2.5,
        )
    },
    // Session tokens are long base64 that begins with the same bytes (the
    // serialised token's header): `IQoJb3JpZ2lu…`, older `FwoGZXIvYXdz…`.
    TokenRule {
        tail: base64ish,
        ..rule(
            "aws-session-token",
            AwsSessionToken,
            &["iqojb3jpz2lu", "fwogzxivyxdz"],
            r"(?:IQoJb3JpZ2lu|FwoGZXIvYXdz)[A-Za-z0-9/+]{80,}={0,2}",
            4.0,
        )
    },
    TokenRule {
        tail: base64ish,
        ..rule(
            "azure-storage-key",
            AzureKey,
            &["accountkey=", "sharedaccesskey="],
            r"(?i:AccountKey|SharedAccessKey)=([A-Za-z0-9+/]{40,88}={0,2})",
            3.5,
        )
    },
    // A shared access signature: `sig=` in a query that also has `sv=`.
    TokenRule {
        check: Some(|s, r| {
            let line = &s.text[s.line_start(r.start)..s.line_end(r.end)];
            line.contains("sv=") || line.contains("se=") || line.contains("sp=")
        }),
        tail: |b| b.is_ascii_alphanumeric() || b == b'%',
        ..rule("azure-sas-signature", AzureKey, &["sig="], r"[?&]sig=([A-Za-z0-9%+/]{30,}(?:%3D|=){0,2})", 3.5)
    },
    TokenRule {
        tail: |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'.' | b'-'),
        ..rule("azure-ad-client-secret", AzureKey, &["q~"], r"[a-zA-Z0-9_~.]{3}\dQ~[a-zA-Z0-9_~.-]{31,34}", 3.0)
    },
    TokenRule {
        tail: never,
        ..rule(
            "gcp-service-account-key-id",
            GcpCredential,
            &["private_key_id"],
            r#""private_key_id"\s*:\s*"([0-9a-f]{40})""#,
            3.0,
        )
    },
    rule("gcp-oauth-client-secret", GcpCredential, &["gocspx-"], r"GOCSPX-[A-Za-z0-9_-]{28}", 3.0),
    rule("gcp-oauth-token", GcpCredential, &["ya29."], r"ya29\.[A-Za-z0-9_-]{30,}", 3.5),
    TokenRule {
        tail: alnum,
        ..rule(
            "github-token",
            GithubToken,
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
            r"gh[pousr]_[A-Za-z0-9]{36,251}",
            3.0,
        )
    },
    TokenRule {
        tail: alnum,
        ..rule("github-fine-grained-token", GithubToken, &["github_pat_"], r"github_pat_[A-Za-z0-9_]{50,255}", 3.0)
    },
    rule(
        "gitlab-token",
        GitlabToken,
        &[
            "glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "glft-", "glsoat-", "gloas-", "glimt-", "glagent-",
            "glffct-",
        ],
        r"gl(?:pat|dt|rt|ptt|cbt|ft|soat|oas|imt|agent|ffct)-[A-Za-z0-9_.-]{20,300}",
        3.0,
    ),
    rule("gitlab-runner-registration-token", GitlabToken, &["gr1348941"], r"GR1348941[A-Za-z0-9_-]{20}", 3.0),
    TokenRule {
        tail: alnum,
        ..rule("huggingface-token", HuggingfaceToken, &["hf_", "api_org_"], r"(?:hf_|api_org_)[A-Za-z0-9]{34,40}", 3.0)
    },
    TokenRule { tail: alnum, ..rule("npm-token", NpmToken, &["npm_"], r"npm_[A-Za-z0-9]{36}", 3.0) },
    rule(
        "pypi-token",
        PypiToken,
        &["pypi-ag"],
        r"pypi-Ag(?:EIcHlwaS5vcmc|ENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}",
        3.0,
    ),
    rule(
        "slack-token",
        SlackToken,
        &["xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-", "xoxe-", "xoxe.", "xapp-"],
        r"(?:xox[abposre](?:\.xox[bp])?|xapp)-[A-Za-z0-9-]{10,250}",
        3.0,
    ),
    TokenRule {
        prio: 92,
        tail: |b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_',
        ..rule(
            "slack-webhook",
            SlackToken,
            &["hooks.slack.com"],
            r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}",
            3.0,
        )
    },
    TokenRule {
        tail: alnum,
        ..rule(
            "stripe-key",
            StripeKey,
            &["sk_live_", "sk_test_", "sk_prod_", "rk_live_", "rk_test_", "rk_prod_", "whsec_"],
            r"(?:(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,247}|whsec_[A-Za-z0-9]{24,})",
            3.0,
        )
    },
    rule("sendgrid-key", SendgridKey, &["sg."], r"SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}", 3.0),
    TokenRule { tail: alnum, ..rule("twilio-api-key", TwilioKey, &["sk"], r"SK[0-9a-fA-F]{32}", 3.0) },
    TokenRule {
        prio: 92,
        ..rule(
            "anthropic-key",
            AnthropicKey,
            &["sk-ant-"],
            r"sk-ant-(?:(?:api|admin|oat|ort|sid)\d\d-)?[A-Za-z0-9_-]{32,}",
            3.5,
        )
    },
    // Project and service-account keys (`sk-proj-…`, with the `T3BlbkFJ`
    // marker in the middle), and the older 48-character form. The body must
    // look random: `sk-...` and `sk-your-key-here` in documentation do not.
    TokenRule {
        check: Some(|s, r| {
            let t = &s.text[r];
            let body = t.trim_start_matches("sk-");
            let body = ["proj-", "svcacct-", "admin-", "None-"].iter().fold(body, |b, p| b.trim_start_matches(p));
            let (up, low, dig) = super::checks::classes(body);
            !t.starts_with("sk-ant-") && body.len() >= 32 && up && low && dig
        }),
        ..rule("openai-key", OpenaiKey, &["sk-"], r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}", 3.5)
    },
    rule("google-api-key", GoogleApiKey, &["aiza"], r"AIza[0-9A-Za-z_-]{35}", 3.5),
    TokenRule {
        prio: 95,
        check: Some(|s, r| {
            let t = &s.text[r];
            t.split('.').next().is_some_and(jwt_header_ok)
        }),
        ..rule("jwt", Jwt, &["eyj"], r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", 3.0)
    },
    TokenRule {
        prio: 100,
        tail: alnum,
        ..rule(
            "age-secret-key",
            PrivateKey,
            &["age-secret-key-1"],
            r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
            3.0,
        )
    },
    // Other services' tokens with a prefix of their own.
    rule("digitalocean-token", Secret, &["dop_v1_", "doo_v1_", "dor_v1_"], r"do[opr]_v1_[a-f0-9]{64}", 3.0),
    rule(
        "shopify-token",
        Secret,
        &["shpat_", "shpca_", "shppa_", "shpss_"],
        r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
        3.0,
    ),
    rule("databricks-token", Secret, &["dapi"], r"dapi[a-f0-9]{32}(?:-\d)?", 3.0),
    rule("vault-token", Secret, &["hvs.", "hvb."], r"hv[sb]\.[A-Za-z0-9_-]{90,300}", 3.5),
    rule("linear-key", Secret, &["lin_api_"], r"lin_api_[A-Za-z0-9]{40}", 3.0),
    rule("postman-key", Secret, &["pmak-"], r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}", 3.0),
    rule(
        "grafana-token",
        Secret,
        &["glc_", "glsa_"],
        r"(?:glc_[A-Za-z0-9+/]{32,400}={0,3}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})",
        3.0,
    ),
    rule(
        "sentry-token",
        Secret,
        &["sntrys_", "sntryu_"],
        r"(?:sntryu_[a-f0-9]{64}|sntrys_eyJ[A-Za-z0-9+/=_]{50,})",
        3.5,
    ),
    rule("heroku-key", Secret, &["hrku-aa"], r"HRKU-AA[0-9a-zA-Z_-]{58}", 3.5),
    rule("atlassian-token", Secret, &["atatt3"], r"ATATT3[A-Za-z0-9_=-]{186}", 3.5),
    rule("notion-token", Secret, &["ntn_"], r"ntn_[0-9]{11}[A-Za-z0-9]{35}", 3.5),
    rule("perplexity-key", Secret, &["pplx-"], r"pplx-[A-Za-z0-9]{48}", 3.5),
    rule("groq-key", Secret, &["gsk_"], r"gsk_[A-Za-z0-9]{52}", 3.5),
    rule("replicate-token", Secret, &["r8_"], r"r8_[A-Za-z0-9]{37}", 3.5),
];

/// Run every token rule whose keywords are in the text.
pub(crate) fn find(r: &Redactor, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    for (i, rule) in RULES.iter().enumerate() {
        if !scan.token_rule(i) || !r.enabled(rule.kind) {
            continue;
        }
        let re = &r.token_res[i];
        let grouped = re.captures_len() > 1;
        let mut at = 0;
        while at < scan.text.len() {
            let (whole, secret) = if grouped {
                let Some(c) = re.captures_at(scan.text, at) else { break };
                let w = c.get(0).expect("group 0");
                let s = c.get(1).map_or(w.range(), |g| g.range());
                (w.range(), s)
            } else {
                let Some(m) = re.find_at(scan.text, at) else { break };
                (m.range(), m.range())
            };
            at = whole.end.max(whole.start + 1);
            while !scan.text.is_char_boundary(at.min(scan.text.len())) {
                at += 1;
            }
            if grouped && secret == whole {
                continue;
            }
            // A token starts and ends at a boundary: `xghp_…` or `ghp_…x` is
            // something else.
            if !grouped && scan.before(whole.start).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            if scan.byte(secret.end).is_some_and(rule.tail) {
                continue;
            }
            let value = &scan.text[secret.clone()];
            if shannon_entropy(value) < rule.entropy || is_token_placeholder(value) {
                continue;
            }
            if rule.check.is_some_and(|c| !c(scan, secret.clone())) {
                continue;
            }
            out.push(Cand {
                prio: rule.prio,
                f: Finding { rule: rule.id, kind: rule.kind, range: secret, score: 0.95 },
            });
        }
    }
}

/// Private key blocks: PEM and OpenSSH (`-----BEGIN … PRIVATE KEY-----` to
/// its END line, or to the end of the base64 that follows when the END is
/// missing), in plain text or with `\n` escapes (a service account's
/// JSON), and PuTTY's `Private-Lines:`.
pub(crate) fn private_keys(scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let t = scan.text;
    let b = scan.b;
    let mut push = |range: Range<usize>, rule: &'static str| {
        out.push(Cand { prio: 100, f: Finding { rule, kind: PrivateKey, range, score: 1.0 } });
    };
    for hit in scan.hits(super::Trigger::PrivateKey) {
        let word = &t[hit.clone()];
        if word.eq_ignore_ascii_case("-----begin") {
            if let Some((label, range)) = super::lookalike::pem_block(scan, hit.start)
                && (label.ends_with("PRIVATE KEY") || label.ends_with("PRIVATE KEY BLOCK"))
            {
                push(range, "private-key");
            }
        } else if word.eq_ignore_ascii_case("private-lines:") {
            let end = match memchr::memmem::find(&b[hit.end..(hit.end + 64 * 1024).min(b.len())], b"Private-MAC:") {
                Some(e) => scan.line_end(hit.end + e),
                None => {
                    let n: usize = t[hit.end..scan.line_end(hit.end)].trim().parse().unwrap_or(0).min(200);
                    let mut e = scan.line_end(hit.end);
                    for _ in 0..n {
                        if e < b.len() {
                            e = scan.line_end(e + 1);
                        }
                    }
                    e
                }
            };
            push(hit.start..end, "putty-private-key");
        }
    }
}
