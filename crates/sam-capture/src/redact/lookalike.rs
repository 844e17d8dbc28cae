//! Lookalikes: text that looks like a secret and is not one. Public keys,
//! certificates, signatures, encrypted messages and data URIs are masked
//! (nothing inside them is a finding); URLs are noted so that the entropy
//! rule leaves their paths alone.

use regex::Regex;

use super::{Redactor, Scan, Trigger, re};

/// Keywords that point at a public key, a certificate or a data URI.
pub(crate) const KEYWORDS: &[&str] =
    &["-----begin", "---- begin", "ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-", "@openssh.com", ";base64,"];

pub(crate) struct Patterns {
    ssh: Regex,
    data_uri: Regex,
    url: Regex,
}

impl Patterns {
    pub fn new() -> Self {
        Self {
            ssh: re(
                r"(?:ssh-(?:rsa|dss|ed25519)(?:-cert-v01@openssh\.com)?|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)[ \t]+AAAA[A-Za-z0-9+/]+={0,3}",
            ),
            data_uri: re(r"(?i:data):[A-Za-z0-9.+/-]*(?:;[A-Za-z0-9=.+-]+)*;(?i:base64),[A-Za-z0-9+/=%]+"),
            url: re(r"[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s\x22'<>()\x60\[\]{}|\\^]+"),
        }
    }
}

/// Mark what no rule may report, and the URLs.
pub(crate) fn mask(r: &Redactor, scan: &mut Scan<'_>) {
    let p = &r.look;
    let mut hard = Vec::new();
    if scan.any(Trigger::Public) {
        let hits: Vec<_> = scan.hits(Trigger::Public).collect();
        for hit in hits {
            let word = &scan.text[hit.clone()];
            if word.eq_ignore_ascii_case("-----begin") {
                if let Some((label, range)) = pem_block(scan, hit.start)
                    && !label.ends_with("PRIVATE KEY")
                    && !label.ends_with("PRIVATE KEY BLOCK")
                {
                    hard.push(range);
                }
            } else if word.eq_ignore_ascii_case("---- begin") {
                let b = scan.b;
                let end = memchr::memmem::find(&b[hit.end..(hit.end + 16 * 1024).min(b.len())], b"---- END")
                    .map_or(scan.line_end(hit.end), |e| scan.line_end(hit.end + e));
                hard.push(hit.start..end);
            }
        }
        let ssh = scan.hits(Trigger::Public).any(|h| {
            let w = scan.text[h].to_ascii_lowercase();
            w.starts_with("ssh-") || w.starts_with("ecdsa") || w == "@openssh.com"
        });
        if ssh {
            hard.extend(p.ssh.find_iter(scan.text).map(|m| m.range()));
        }
        if scan.hits(Trigger::Public).any(|h| scan.text[h].eq_ignore_ascii_case(";base64,")) {
            hard.extend(p.data_uri.find_iter(scan.text).map(|m| m.range()));
        }
    }
    for h in hard {
        scan.mask(h);
    }
    if scan.any(Trigger::Url) {
        scan.urls = p.url.find_iter(scan.text).map(|m| m.range()).collect();
    }
    scan.finish_masks();
}

/// A PEM block starting at `start` (`-----BEGIN <LABEL>-----`): its label
/// and range, to the end of its END line, or to the end of the base64 that
/// follows when the END line is missing.
pub(crate) fn pem_block(scan: &Scan<'_>, start: usize) -> Option<(String, std::ops::Range<usize>)> {
    let b = scan.b;
    let head = start + "-----BEGIN".len();
    let close = memchr::memmem::find(&b[head..(head + 80).min(b.len())], b"-----")?;
    let label = scan.text.get(head..head + close)?.trim().to_ascii_uppercase();
    let body = head + close + 5;
    // A header with no key after it (`-----BEGIN RSA PRIVATE KEY-----` in a
    // sentence) is a mention, not a key.
    let first = body_lines(b, body, 3);
    if first == body && memchr::memmem::find(&b[body..(body + 200).min(b.len())], b"Proc-Type:").is_none() {
        return None;
    }
    let end = match memchr::memmem::find(&b[body..(body + 64 * 1024).min(b.len())], b"-----END") {
        Some(e) => {
            let e = body + e + 8;
            match memchr::memmem::find(&b[e..(e + 80).min(b.len())], b"-----") {
                Some(d) => e + d + 5,
                None => e,
            }
        }
        // No END line: the lines of base64 (and `Proc-Type:`-style headers)
        // that follow.
        None => body_lines(b, body, usize::MAX),
    };
    Some((label, start..end))
}

/// The end of the base64 lines from `i`: lines separated by newlines or
/// `\n` escapes, each of base64 characters only (or a `Name: value`
/// header); at most `max` lines.
fn body_lines(b: &[u8], mut i: usize, max: usize) -> usize {
    let mut end = i;
    let mut lines = 0;
    while lines < max && i < b.len() {
        // Skip line breaks: real ones and escaped ones.
        while i < b.len()
            && (matches!(b[i], b'\n' | b'\r' | b' ' | b'\t')
                || (b[i] == b'\\' && matches!(b.get(i + 1), Some(b'n' | b'r'))))
        {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        let s = i;
        let mut h = i;
        while h < b.len() && (b[h].is_ascii_alphabetic() || b[h] == b'-') {
            h += 1;
        }
        let header = b.get(h) == Some(&b':') && h - s >= 4;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'+' | b'/' | b'=')) {
            i += 1;
        }
        if header {
            i = h;
            while i < b.len() && !matches!(b[i], b'\n' | b'\\') {
                i += 1;
            }
        } else if i - s < 16 || (i < b.len() && !matches!(b[i], b'\n' | b'\r' | b'\\' | b'-' | b'"' | b' ')) {
            break;
        }
        end = i;
        lines += 1;
    }
    end
}
