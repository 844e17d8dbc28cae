//! Random-looking strings that no rule names: high Shannon entropy, upper
//! and lower case and digits, frequent changes of character class. Hashes
//! (hex: commit SHAs, checksums, UUIDs), lockfile integrity hashes,
//! base64-encoded text, identifiers and URLs are not such strings.

use regex::Regex;

use super::checks::{class_transitions, classes, decodes_to_text, shannon_entropy};
use super::{Cand, Finding, Redactor, Scan, SecretKind, has_word, is_placeholder, re};

pub(crate) struct Patterns {
    token: Regex,
}

impl Patterns {
    pub fn new() -> Self {
        Self { token: re(r"[A-Za-z0-9+/_-]{16,}={0,2}") }
    }
}

/// Words before a value that say it is a digest or a public value.
const NOT_SECRET_CONTEXT: &[&str] = &[
    "integrity",
    "checksum",
    "checksums",
    "sha1",
    "sha256",
    "sha384",
    "sha512",
    "md5",
    "hash",
    "digest",
    "fingerprint",
    "etag",
    "public",
    "pub",
    "pubkey",
    "publickey",
    "cert",
    "certificate",
    "oid",
    "h1",
    "commit",
    "revision",
    "rev",
    "sri",
];

pub(crate) fn find(r: &Redactor, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    for m in r.entropy.token.find_iter(scan.text) {
        let range = m.range();
        if scan.in_url(&range) || scan.masked(&range) {
            continue;
        }
        match judge(r, scan, range.start, m.as_str()) {
            Verdict::Token(c) => out.push(c),
            Verdict::Excluded => {}
            // A path (`src/app/Zx8Kq2…`): judge its segments.
            Verdict::NotRandom if m.as_str().contains('/') => {
                let mut at = range.start;
                for seg in m.as_str().split('/') {
                    if let Verdict::Token(c) = judge(r, scan, at, seg) {
                        out.push(c);
                    }
                    at += seg.len() + 1;
                }
            }
            Verdict::NotRandom => {}
        }
    }
}

enum Verdict {
    Token(Cand),
    /// Its shape is not random (its pieces may be).
    NotRandom,
    /// It is something known: a digest, a public value, encoded text.
    Excluded,
}

fn judge(r: &Redactor, scan: &Scan<'_>, start: usize, tok: &str) -> Verdict {
    let lead = tok.len() - tok.trim_start_matches(['-', '_', '/', '=', '+']).len();
    let t = tok[lead..].trim_end_matches(['-', '_', '/', '+']);
    let before = scan.window_before(start, 32);
    let start = start + lead;
    let body = t.trim_end_matches('=');
    // Integrity hashes (`sha512-…`, go.sum's `h1:…`), publishable keys,
    // object ids, and what the words before say is a digest or public.
    let lower = body.to_ascii_lowercase();
    if NOT_SECRET_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        return Verdict::Excluded;
    }
    // A JSON web key's public parts (`"n": "…"`, `"x": "…"`).
    let jwk = before.trim_end_matches([' ', '"']).trim_end_matches([':', ' ']);
    if ["\"n\"", "\"e\"", "\"x\"", "\"y\""].iter().any(|k| jwk.ends_with(k)) && scan.text.contains("\"kty\"") {
        return Verdict::Excluded;
    }
    if before.ends_with("h1:")
        || before.ends_with("sha256:")
        || before.ends_with("sha512:")
        || has_word(before, NOT_SECRET_CONTEXT)
    {
        return Verdict::Excluded;
    }
    if t.len() < r.cfg.entropy_min_len {
        return Verdict::NotRandom;
    }
    // Hex (hashes, UUIDs, addresses) is not a secret by its shape alone.
    let digits = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")).unwrap_or(body);
    if digits.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-' || c == b'_') {
        return Verdict::Excluded;
    }
    let (up, low, dig) = classes(body);
    // Identifiers (`getUserV2Handler`, `SmolLM2-135M-Instruct`) change class
    // rarely (under 0.25); random strings often (0.6 on average). Separators join words in names: judge
    // the characters between them.
    let joined: String = body.chars().filter(char::is_ascii_alphanumeric).collect();
    if !(up && low && dig) || class_transitions(&joined) < 0.35 || shannon_entropy(body) < r.cfg.entropy_threshold {
        return Verdict::NotRandom;
    }
    if is_placeholder(body) || decodes_to_text(body) {
        return Verdict::Excluded;
    }
    Verdict::Token(Cand {
        prio: 10,
        f: Finding { rule: "high-entropy", kind: SecretKind::HighEntropy, range: start..start + t.len(), score: 0.7 },
    })
}

/// Prefixes of digests, public keys and object ids.
const NOT_SECRET_PREFIXES: &[&str] = &[
    "sha1-", "sha256-", "sha384-", "sha512-", "md5-", "pk_live_", "pk_test_", "ch_", "cus_", "pi_", "pm_", "evt_",
    "in_", "sub_", "price_", "prod_", "txn_", "re_", "src_", "acct_", "seti_", "si_", "ii_", "po_", "cs_test_",
    "cs_live_", "age1", "npub1",
];
