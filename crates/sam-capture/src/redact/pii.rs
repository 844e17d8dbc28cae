//! Recognisers for personal data, in the manner of Presidio: a pattern
//! finds a candidate, a validator checks it (checksums, ranges, lengths),
//! and context words before it raise or lower its score.

use std::net::Ipv6Addr;
use std::ops::Range;

use regex::Regex;

use super::checks::{iban_checksum_ok, iban_len, luhn};
use super::{Cand, Finding, Redactor, Scan, SecretKind, Trigger, has_word, re};

/// Prefixes of home directories (matched ASCII case-insensitively; the
/// recogniser checks the case).
pub(crate) const HOME_PREFIXES: &[&str] = &["/home/", "/users/", "\\users\\", "\\\\users\\\\"];

pub(crate) struct Patterns {
    ipv4: Regex,
    ipv6: Regex,
    card: Regex,
    ssn: Regex,
    ssn_spaced: Regex,
    iban: Regex,
    phone_intl: Regex,
    phone_nanp: Regex,
    phone_national: Regex,
}

impl Patterns {
    pub fn new() -> Self {
        Self {
            ipv4: re(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"),
            ipv6: re(r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}"),
            card: re(r"\d(?:[ -]?\d){12,18}"),
            ssn: re(r"\d{3}-\d{2}-\d{4}"),
            ssn_spaced: re(r"\d{3} \d{2} \d{4}"),
            iban: re(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32}"),
            phone_intl: re(r"\+\d{1,3}(?:[ .\-]?\(?\d{1,6}\)?){1,7}"),
            phone_nanp: re(r"(?:\(\d{3}\)[ ]?|\d{3}[-. ])\d{3}[-. ]\d{4}"),
            phone_national: re(r"(?:\(0\d{1,4}\)|0\d{1,4})[ /-]?\d{2,4}(?:[ -]?\d{2,6}){1,2}"),
        }
    }
}

const PHONE_CONTEXT: &[&str] = &[
    "phone",
    "tel",
    "telephone",
    "mobile",
    "mob",
    "cell",
    "cellphone",
    "call",
    "fax",
    "sms",
    "whatsapp",
    "hotline",
    "contact",
    "dial",
    "ring",
    "reach",
    "handy",
    "telefon",
    "phonenumber",
];
const NUMBER_NOT_PHONE: &[&str] =
    &["version", "ver", "release", "build", "id", "order", "ticket", "isbn", "serial", "ref", "invoice", "issue"];
const CARD_CONTEXT: &[&str] = &[
    "card",
    "credit",
    "debit",
    "visa",
    "mastercard",
    "amex",
    "discover",
    "jcb",
    "diners",
    "maestro",
    "pan",
    "cc",
    "payment",
    "pay",
    "charge",
    "billing",
    "checkout",
    "cardnumber",
];
const NUMBER_NOT_CARD: &[&str] = &[
    "id",
    "order",
    "trace",
    "span",
    "ts",
    "timestamp",
    "time",
    "epoch",
    "nonce",
    "seq",
    "serial",
    "ref",
    "tx",
    "txn",
    "hash",
    "count",
    "size",
    "bytes",
    "offset",
    "imei",
    "isbn",
    "build",
    "request",
    "invoice",
];
const SSN_CONTEXT: &[&str] = &["ssn", "ssns", "social", "security", "sozialversicherung", "tin"];
const NUMBER_NOT_SSN: &[&str] = &["part", "sku", "model", "isbn", "zip", "order", "serial", "ref", "phone", "tel"];
const IP_CONTEXT: &[&str] = &[
    "ip",
    "ipv4",
    "addr",
    "address",
    "host",
    "hostname",
    "server",
    "client",
    "connect",
    "connected",
    "connecting",
    "ssh",
    "ping",
    "dns",
    "nameserver",
    "gateway",
    "route",
    "proxy",
    "listen",
    "listening",
    "bind",
    "inet",
    "remote",
    "peer",
    "at",
    "via",
    "upstream",
    "from",
    "to",
    "src",
    "dst",
    "forwarded",
    "nslookup",
    "curl",
    "http",
    "https",
];
const VERSION_CONTEXT: &[&str] = &[
    "version",
    "versions",
    "ver",
    "v",
    "release",
    "released",
    "build",
    "assemblyversion",
    "fileversion",
    "productversion",
    "bump",
    "bumped",
    "upgrade",
    "upgraded",
    "update",
    "updated",
    "pandoc",
    "generated",
    "oid",
    "snmp",
];

fn cand(out: &mut Vec<Cand>, prio: u8, rule: &'static str, kind: SecretKind, range: Range<usize>, score: f32) {
    out.push(Cand { prio, f: Finding { rule, kind, range, score: score.min(1.0) } });
}

/// Presidio's context enhancement: a context word among the few words
/// before a candidate raises its score by 0.35 (to at least 0.4); else a
/// word that says it is something else lowers it by 0.5.
fn context(scan: &Scan<'_>, start: usize, base: f32, up: &[&str], down: &[&str]) -> f32 {
    let w = scan.window_before(start, 40);
    if has_word(w, up) {
        (base + 0.35).max(0.4)
    } else if has_word(w, down) {
        base - 0.5
    } else {
        base
    }
}

pub(crate) fn find(r: &Redactor, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let p = &r.pii;
    if r.enabled(SecretKind::Email) {
        emails(scan, out);
    }
    if r.enabled(SecretKind::HomePath) && scan.any(Trigger::Home) {
        homes(r, scan, out);
    }
    // Everything below needs digits.
    if !scan.b.iter().any(u8::is_ascii_digit) {
        return;
    }
    if r.enabled(SecretKind::Ipv4) {
        ipv4(p, scan, out);
    }
    if r.enabled(SecretKind::Ipv6) && memchr::memchr(b':', scan.b).is_some() {
        ipv6(p, scan, out);
    }
    if r.enabled(SecretKind::CreditCard) {
        cards(p, scan, out);
    }
    if r.enabled(SecretKind::Ssn) {
        ssns(p, scan, out);
    }
    if r.enabled(SecretKind::Iban) {
        ibans(p, scan, out);
    }
    if r.enabled(SecretKind::Phone) {
        phones(p, scan, out);
    }
}

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Local parts that are a form's placeholder, not an address.
const PLACEHOLDER_LOCALS: &[&str] = &[
    "your",
    "you",
    "yourname",
    "your.name",
    "your_name",
    "your-name",
    "youremail",
    "your.email",
    "your_email",
    "your-email",
    "someone",
    "somebody",
    "name",
    "username",
    "user.name",
    "first.last",
    "firstname.lastname",
];

/// File extensions after an `@` (`icon@2x.png`) are not top-level domains.
const NOT_TLDS: &[&str] =
    &["png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "js", "mjs", "css", "map", "json", "lock"];

fn emails(scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let b = scan.b;
    for at in memchr::memchr_iter(b'@', b) {
        let mut s = at;
        while s > 0 && at - s < 64 && local_char(b[s - 1]) {
            s -= 1;
        }
        while s < at && matches!(b[s], b'.' | b'-' | b'+') {
            s += 1;
        }
        if s == at || b[at - 1] == b'.' {
            continue;
        }
        let mut e = at + 1;
        while e < b.len() && e - at < 255 && domain_char(b[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        let domain = &scan.text[at + 1..e];
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-')) {
            continue;
        }
        let tld = labels[labels.len() - 1];
        if !(2..=24).contains(&tld.len())
            || !tld.bytes().all(|c| c.is_ascii_alphabetic())
            || NOT_TLDS.iter().any(|x| tld.eq_ignore_ascii_case(x))
        {
            continue;
        }
        // `git@github.com:org/repo` is a remote, not a person; `your@email.com`
        // is a form's placeholder.
        let local = &scan.text[s..at];
        if local == "git" && b.get(e) == Some(&b':') {
            continue;
        }
        if PLACEHOLDER_LOCALS.iter().any(|p| local.eq_ignore_ascii_case(p)) {
            continue;
        }
        // User info or a path of a URL (`https://ghp_…@github.com`,
        // `https://public-inbox.org/git/<id>@host`), not an address; in a
        // query value it is one.
        let tok = scan.window_before(s, 200);
        let tok = &tok[tok.rfind(|c: char| c.is_whitespace() || "\"'<>()`".contains(c)).map_or(0, |i| i + 1)..];
        if let Some(i) = tok.find("://")
            && !tok[i + 3..].contains(['?', '=', '&'])
        {
            continue;
        }
        cand(out, 75, "email", SecretKind::Email, s..e, 0.9);
    }
}

fn homes(r: &Redactor, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let b = scan.b;
    for hit in scan.hits(Trigger::Home) {
        let word = &scan.text[hit.clone()];
        let ok_case = match word.as_bytes()[1] {
            b'h' | b'H' => word == "/home/",
            _ if word.starts_with('/') => word == "/Users/",
            _ => true, // Windows paths are case-insensitive.
        };
        if !ok_case || scan.in_url(&hit) {
            continue;
        }
        let windows = word.starts_with('\\');
        let s = hit.end;
        let mut e = s;
        while e < b.len() && e - s < 64 && (b[e].is_ascii_alphanumeric() || matches!(b[e], b'.' | b'_' | b'-')) {
            e += 1;
        }
        // `C:\Users\John Smith\…`: a Windows name may have spaces.
        if windows {
            let mut k = e;
            while k < b.len() && k - s < 64 && (b[k].is_ascii_alphanumeric() || b[k] == b' ' || b[k] == b'.') {
                k += 1;
            }
            if k > e && b.get(k) == Some(&b'\\') && !scan.text[s..k].ends_with(' ') {
                e = k;
            }
        }
        let user = &scan.text[s..e];
        if user.is_empty() || user.chars().all(|c| c == '.') {
            continue;
        }
        if r.cfg.generic_users.iter().any(|g| g.eq_ignore_ascii_case(user)) {
            continue;
        }
        // The user name must end the path segment.
        if b.get(e).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'$' | b'{' | b'<' | b'%')) {
            continue;
        }
        cand(out, 30, "home-path", SecretKind::HomePath, s..e, 0.9);
    }
}

fn ipv4(p: &Patterns, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    for m in p.ipv4.find_iter(scan.text) {
        let r = m.range();
        if scan.before(r.start).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
            || scan.byte(r.end).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
            || (scan.byte(r.end) == Some(b'.') && scan.byte(r.end + 1).is_some_and(|c| c.is_ascii_digit()))
        {
            continue;
        }
        let parts: Vec<&str> = m.as_str().split('.').collect();
        if parts.iter().any(|o| o.len() > 1 && o.starts_with('0')) {
            continue;
        }
        let o: Vec<u32> = parts.iter().map(|o| o.parse().unwrap_or(999)).collect();
        if o.iter().any(|x| *x > 255) {
            continue;
        }
        // Loopback, unspecified, broadcast and netmasks name nobody.
        let v = (o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3];
        if o[0] == 127 || v == 0 || v == u32::MAX || (o[0] == 255 && (!v).wrapping_add(1).is_power_of_two()) {
            continue;
        }
        // `192.168.1.0`: a network's address, not a host's.
        if o[3] == 0 {
            continue;
        }
        // A network (`10.0.0.0/8`) is no host.
        let after = scan.window_after(r.end, 4);
        if let Some(bits) = after.strip_prefix('/') {
            let n: String = bits.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = n.parse::<u32>()
                && n <= 32
                && (n == 32 || v & (u32::MAX >> n) == 0)
            {
                continue;
            }
        }
        // Small numbers (`2.0.0.1`, `1.19.2.1`) are usually versions: they
        // need a word that says address.
        let small = o[0] < 10 && o.iter().all(|x| *x < 100);
        let mut score = context(scan, r.start, if small { 0.35 } else { 0.75 }, IP_CONTEXT, VERSION_CONTEXT);
        if after.starts_with(':') && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
            score += 0.3;
        }
        cand(out, 60, "ipv4", SecretKind::Ipv4, r, score);
    }
}

fn ipv6(p: &Patterns, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    for m in p.ipv6.find_iter(scan.text) {
        let mut r = m.range();
        while r.end > r.start && scan.b[r.end - 1] == b'.' {
            r.end -= 1;
        }
        if scan.before(r.start).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'_' | b'.'))
            || scan.byte(r.end).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'_'))
        {
            continue;
        }
        let s = &scan.text[r.clone()];
        let Ok(addr) = s.parse::<Ipv6Addr>() else { continue };
        if addr.is_loopback() || addr.is_unspecified() || !s.bytes().any(|c| c.is_ascii_digit()) {
            continue;
        }
        // `a::b` in a C++ or Rust path is code.
        let groups: Vec<&str> = s.split(':').filter(|g| !g.is_empty()).collect();
        if !(groups.len() >= 3 || (s.contains("::") && groups.iter().any(|g| g.len() >= 3))) {
            continue;
        }
        if s.ends_with("::") && scan.byte(r.end) == Some(b'/') {
            continue; // a prefix, `2001:db8::/32`
        }
        cand(out, 60, "ipv6", SecretKind::Ipv6, r, 0.85);
    }
}

/// The longest valid card number inside a run of digits and separators:
/// the whole run, or whole groups of it (`qty 2 4539 1488 0343 6467`). A run
/// without separators counts only whole.
fn card_span(s: &str) -> Option<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (i, c) in s.bytes().enumerate() {
        if c.is_ascii_digit() {
            match groups.last_mut() {
                Some(g) if g.end == i => g.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
    }
    let mut best: Option<Range<usize>> = None;
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
                && valid_card(&s[span.clone()])
            {
                best = Some(span);
            }
        }
    }
    best
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

fn cards(p: &Patterns, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    for m in p.card.find_iter(scan.text) {
        let r = m.range();
        let Some(sub) = card_span(m.as_str()) else { continue };
        let range = r.start + sub.start..r.start + sub.end;
        // The number stands alone: not part of a word, a decimal or a longer number.
        if scan.before(range.start).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+'))
            || (sub.start == 0 && scan.before(range.start) == Some(b'-'))
            || (matches!(scan.byte(range.end), Some(b'.' | b'-'))
                && scan.byte(range.end + 1).is_some_and(|c| c.is_ascii_digit()))
        {
            continue;
        }
        // Written in groups (`4000 0000 0000 0002`) the number is in a card's
        // own form: a word such as `id` or `ts` before it does not make it
        // something else, as it may for a bare run of digits.
        let grouped = scan.text[range.clone()].contains([' ', '-']);
        let score = if grouped { 0.9 } else { context(scan, range.start, 0.6, CARD_CONTEXT, NUMBER_NOT_CARD) };
        cand(out, 70, "credit-card", SecretKind::CreditCard, range, score);
    }
}

fn ssns(p: &Patterns, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let valid = |s: &str| {
        let d: Vec<u32> = s.split([' ', '-']).map(|x| x.parse().unwrap_or(0)).collect();
        d.len() == 3 && d[0] != 0 && d[0] != 666 && d[0] < 900 && d[1] != 0 && d[2] != 0 && s != "123-45-6789"
    };
    for (re, base) in [(&p.ssn, 0.85), (&p.ssn_spaced, 0.3)] {
        for m in re.find_iter(scan.text) {
            let r = m.range();
            if scan.before(r.start).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'+'))
                || scan.byte(r.end).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-')
                || !valid(m.as_str())
            {
                continue;
            }
            let score = context(scan, r.start, base, SSN_CONTEXT, NUMBER_NOT_SSN);
            cand(out, 65, "ssn", SecretKind::Ssn, r, score);
        }
    }
}

/// Length in bytes of the valid IBAN at the start of `s` (spaces count).
fn iban_span(s: &str) -> Option<usize> {
    let chars: Vec<(usize, u8)> = s.bytes().enumerate().filter(|(_, c)| *c != b' ').collect();
    let lens: Vec<usize> = match iban_len(&s[..2]) {
        Some(n) => vec![n],
        None => (15..=34).rev().collect(),
    };
    let spaced = s.as_bytes().get(4) == Some(&b' ');
    for n in lens {
        if chars.len() < n {
            continue;
        }
        let compact: String = chars[..n].iter().map(|(_, c)| *c as char).collect();
        if iban_checksum_ok(&compact) {
            let end = chars[n - 1].0 + 1;
            // It must end at a token boundary, and a spaced IBAN is in groups of four.
            if s[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                continue;
            }
            if spaced && s[..end].split(' ').rev().skip(1).any(|g| g.len() != 4) {
                continue;
            }
            return Some(end);
        }
    }
    None
}

fn ibans(p: &Patterns, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    for m in p.iban.find_iter(scan.text) {
        let r = m.range();
        if scan.before(r.start).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
            continue;
        }
        if let Some(len) = iban_span(m.as_str()) {
            cand(out, 80, "iban", SecretKind::Iban, r.start..r.start + len, 0.95);
        }
    }
}

/// An ISO date, a time or a dotted version inside a candidate: a date,
/// not a phone number.
fn has_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(10).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && (w[0] == b'1' || w[0] == b'2')
            && matches!(w[4], b'-' | b'/' | b'.')
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == w[4]
            && w[8..10].iter().all(u8::is_ascii_digit)
    })
}

fn phones(p: &Patterns, scan: &Scan<'_>, out: &mut Vec<Cand>) {
    let text = scan.text;
    for m in p.phone_intl.find_iter(text) {
        let mut r = m.range();
        while r.end > r.start && matches!(scan.b[r.end - 1], b'(' | b' ' | b'-' | b'.') {
            r.end -= 1;
        }
        let s = &text[r.clone()];
        if scan.before(r.start).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'_' | b'.' | b'/'))
            || scan.byte(r.end).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'%')
            || (matches!(scan.byte(r.end), Some(b'.' | b'-' | b','))
                && scan.byte(r.end + 1).is_some_and(|c| c.is_ascii_digit()))
        {
            continue;
        }
        // In a diff, `+` at the start of a line is the diff's.
        if scan.diff && (r.start == 0 || scan.b[r.start - 1] == b'\n') {
            continue;
        }
        if s.as_bytes()[1] == b'0' || s.matches('(').count() != s.matches(')').count() || has_date(s) {
            continue;
        }
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        if !(8..=15).contains(&digits) {
            continue;
        }
        let groups: Vec<&str> = s[1..].split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
        if groups.iter().skip(1).filter(|g| g.len() == 1).count() > 1 {
            continue;
        }
        // Dotted numbers are phone numbers only when every separator is a dot.
        if s.contains('.') && s[1..].bytes().any(|c| matches!(c, b' ' | b'-' | b'(')) {
            continue;
        }
        let score = context(scan, r.start, 0.8, PHONE_CONTEXT, NUMBER_NOT_PHONE);
        cand(out, 50, "phone", SecretKind::Phone, r, score);
    }
    for m in p.phone_nanp.find_iter(text) {
        let r = m.range();
        let s = m.as_str();
        if scan
            .before(r.start)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'/' | b'+'))
            || scan.byte(r.end).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-')
            || (scan.byte(r.end) == Some(b'.') && scan.byte(r.end + 1).is_some_and(|c| c.is_ascii_digit()))
        {
            continue;
        }
        let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
        if d[0] < b'2' || d[3] < b'2' {
            continue;
        }
        if !s.starts_with('(') {
            let seps: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_digit()).collect();
            if seps[0] != seps[1] {
                continue;
            }
        }
        let score = context(scan, r.start, 0.7, PHONE_CONTEXT, NUMBER_NOT_PHONE);
        cand(out, 50, "phone", SecretKind::Phone, r, score);
    }
    for m in p.phone_national.find_iter(text) {
        let r = m.range();
        let s = m.as_str();
        if scan
            .before(r.start)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'/' | b'+'))
            || scan.byte(r.end).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'))
            || has_date(s)
        {
            continue;
        }
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        if !(9..=12).contains(&digits) {
            continue;
        }
        // A national number is a phone number only next to a word that says so.
        let score = context(scan, r.start, 0.3, PHONE_CONTEXT, NUMBER_NOT_PHONE);
        cand(out, 50, "phone", SecretKind::Phone, r, score);
    }
}
