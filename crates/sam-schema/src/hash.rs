//! Content and input hashes over normalised text.
//!
//! Normalisation makes hashes ignore differences that do not change what an
//! example teaches: leading and trailing whitespace, runs of whitespace, and
//! line-ending style. Case and punctuation are kept (in code they matter).

use serde::{Deserialize, Serialize};

/// A 32-byte BLAKE3 hash, shown as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Build from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Full hex form (64 digits).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Short hex form (the first 16 digits), used as a default example id.
    pub fn short(&self) -> String {
        self.to_hex()[..16].to_string()
    }

    /// Parse the 64-digit hex form.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        if s.len() != 64 || !s.is_ascii() {
            return Err(format!("a content hash is 64 hex digits, got {s:?}"));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(chunk).map_err(|e| e.to_string())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| format!("not hex: {s:?}"))?;
        }
        Ok(Self(out))
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<ContentHash> for String {
    fn from(h: ContentHash) -> String {
        h.to_hex()
    }
}

impl TryFrom<String> for ContentHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ContentHash::from_hex(&s)
    }
}

/// Collapse whitespace runs to one space and trim: the normal form hashes use.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Incremental hasher over named, normalised fields. Each field is length-
/// prefixed so that moving text between fields changes the hash.
pub(crate) struct Hasher(blake3::Hasher);

impl Hasher {
    pub(crate) fn new(domain: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"sam-schema/v1\0");
        h.update(domain.as_bytes());
        h.update(b"\0");
        Self(h)
    }

    pub(crate) fn field(&mut self, name: &str, text: &str) {
        let norm = normalize(text);
        self.0.update(name.as_bytes());
        self.0.update(&(norm.len() as u64).to_le_bytes());
        self.0.update(norm.as_bytes());
    }

    pub(crate) fn finish(self) -> ContentHash {
        ContentHash(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cases() {
        for (input, want) in
            [("  a  b\n\nc\t", "a b c"), ("a\r\nb", "a b"), ("", ""), ("   ", ""), ("fn f() { x }", "fn f() { x }")]
        {
            assert_eq!(normalize(input), want, "input {input:?}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let mut h = Hasher::new("t");
        h.field("a", "b");
        let x = h.finish();
        assert_eq!(ContentHash::from_hex(&x.to_hex()).unwrap(), x);
        assert_eq!(x.short().len(), 16);
        assert!(ContentHash::from_hex("zz").is_err());
    }

    #[test]
    fn fields_are_separated() {
        let hash = |a: &str, b: &str| {
            let mut h = Hasher::new("t");
            h.field("x", a);
            h.field("y", b);
            h.finish()
        };
        assert_ne!(hash("ab", "c"), hash("a", "bc"));
        assert_eq!(hash(" ab ", "c\n"), hash("ab", "c"));
    }
}
