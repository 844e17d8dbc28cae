//! Checksums and measures that validators use: Luhn, IBAN mod-97, JWT
//! headers, Shannon entropy, character-class changes, base64 decoding.

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
    sum.is_multiple_of(10)
}

/// The IBAN mod-97 check over a compact IBAN (no spaces).
pub fn iban_checksum_ok(iban: &str) -> bool {
    if iban.len() < 15 || iban.len() > 34 || !iban.is_ascii() {
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

/// The length of an IBAN of this country (ISO 13616 registry), if known.
pub(crate) fn iban_len(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FO" | "GL" | "NL" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" => 20,
        "CH" | "CR" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" | "VA" => 22,
        "AE" | "GI" | "IL" | "IQ" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "PT" | "ST" => 25,
        "IS" | "TR" => 26,
        "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "BY" | "CY" | "DO" | "GT" | "HU" | "LB" | "PL" | "SV" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" => 30,
        "MT" | "SC" => 31,
        "LC" => 32,
        "RU" => 33,
        _ => return None,
    })
}

/// Shannon entropy of `s` in bits per byte.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts.iter().filter(|&&k| k > 0).map(|&k| f64::from(k) / n).map(|p| -p * p.log2()).sum()
}

/// Share of adjacent character pairs that change class (upper, lower,
/// digit, other): about 0.6 for random base64, under 0.2 for identifiers.
pub(crate) fn class_transitions(s: &str) -> f64 {
    let class = |c: u8| match c {
        b'A'..=b'Z' => 0u8,
        b'a'..=b'z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let b = s.as_bytes();
    if b.len() < 2 {
        return 0.0;
    }
    b.windows(2).filter(|w| class(w[0]) != class(w[1])).count() as f64 / (b.len() - 1) as f64
}

/// Which of upper case, lower case and digits `s` has.
pub(crate) fn classes(s: &str) -> (bool, bool, bool) {
    let b = s.as_bytes();
    (b.iter().any(u8::is_ascii_uppercase), b.iter().any(u8::is_ascii_lowercase), b.iter().any(u8::is_ascii_digit))
}

/// Decode standard or URL-safe base64 (padding optional); `None` when `s`
/// is not base64.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Whether base64 `s` decodes to readable text (encoded JSON, a phrase):
/// encoded text is not key material.
pub(crate) fn decodes_to_text(s: &str) -> bool {
    match base64_decode(s) {
        Some(bytes) if bytes.len() >= 12 => {
            let printable = bytes.iter().filter(|b| b.is_ascii_graphic() || **b == b' ' || **b == b'\n').count();
            printable * 100 >= bytes.len() * 95
        }
        _ => false,
    }
}

/// A JWT's first part decodes to a JSON object with an `alg` or `typ`.
pub(crate) fn jwt_header_ok(header: &str) -> bool {
    match base64_decode(header) {
        Some(bytes) => {
            let Ok(text) = std::str::from_utf8(&bytes) else { return false };
            let t = text.trim_start();
            t.starts_with('{') && (t.contains("\"alg\"") || t.contains("\"typ\"") || t.contains("\"kid\""))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn(&[4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 7]));
        assert!(!luhn(&[4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 8]));
        assert!(iban_checksum_ok("GB82WEST12345698765432"));
        assert!(!iban_checksum_ok("GB82WEST12345698765433"));
        assert!(iban_checksum_ok("DE89370400440532013000"));
    }

    #[test]
    fn measures() {
        assert!(shannon_entropy("aaaa") < 0.01);
        assert!((shannon_entropy("abcd") - 2.0).abs() < 1e-9);
        assert!(class_transitions("Zx8Kq2Lm9Np4") > 0.6);
        assert!(class_transitions("AbstractSingletonProxyFactoryBean") < 0.3);
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert!(decodes_to_text("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!decodes_to_text("Zx8Kq2Lm9Np4Rt7Vw1Yb3Cd6Fg0Hj5"));
        assert!(jwt_header_ok("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!jwt_header_ok("eyJmb28iOjF9"));
    }
}
