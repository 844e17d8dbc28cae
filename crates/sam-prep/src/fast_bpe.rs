//! A faster path to the same token ids for GPT-2-style byte-level BPE
//! tokenizers.
//!
//! Profiling prep showed the `tokenizers` crate's `encode` taking ~85% of the
//! time, most of it in the general machinery around the BPE model: the
//! added-token trie, the Oniguruma pre-tokenizer regex, per-token `String`s
//! and the `Encoding` it builds. For the one configuration that GPT-2-style
//! vocabularies use (no normalizer, `ByteLevel` pre-tokenizer with the GPT-2
//! regex and no prefix space, a BPE model, no truncation or padding, no
//! offset trimming) and for text made of printable ASCII plus `\t`, `\n`,
//! `\r`, this module does the same steps directly:
//!
//! 1. split the text on added tokens (leftmost-longest, as the crate does);
//! 2. split the rest with a hand-written scanner that is the GPT-2 regex
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!    (or Qwen2's or Llama 3's split regex, behind a `Split` + `ByteLevel`
//!    sequence) restricted to ASCII, where its character classes are plain
//!    byte ranges;
//! 3. look each piece up in a cache of piece → ids, asking the tokenizer's
//!    own BPE model (`Model::tokenize`) on a miss, so merges, `ignore_merges`
//!    and the vocabulary are the model's.
//!
//! Any other configuration goes through `Tokenizer::encode` unchanged, and so
//! does any stretch of text between added tokens that holds other bytes
//! (non-ASCII text). A differential test checks both paths give the same ids and
//! offsets.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tokenizers::models::ModelWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{Model, Tokenizer};

use crate::Error;
use crate::encode::Offsets;

/// Cached pieces at most (per thread); beyond this, misses are not stored.
const CACHE_LIMIT: usize = 1 << 20;

type PieceCache = HashMap<Box<[u8]>, Box<[(u32, u32)]>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Piece caches of this thread, by `FastBpe` instance: per thread so that
    /// workers never contend on a lock.
    static CACHES: RefCell<HashMap<u64, PieceCache>> = RefCell::new(HashMap::new());
}

/// The fast path for one tokenizer (see the module docs).
#[derive(Debug)]
pub struct FastBpe<'a> {
    tokenizer: &'a Tokenizer,
    bpe: &'a BPE,
    scheme: Scheme,
    /// Added tokens by first byte, longest first.
    specials: Vec<Vec<(Box<[u8]>, u32)>>,
    byte_char: [char; 256],
    id: u64,
}

impl Drop for FastBpe<'_> {
    fn drop(&mut self) {
        // This thread's cache goes; other threads' caches are dropped with
        // the threads (prep's workers are scoped).
        let _ = CACHES.try_with(|c| c.borrow_mut().remove(&self.id));
    }
}

impl<'a> FastBpe<'a> {
    /// The fast path for `tokenizer`, or `None` when its configuration is not
    /// the one this module reproduces.
    pub fn new(tokenizer: &'a Tokenizer) -> Option<Self> {
        // NFC (Qwen2's normalizer) leaves ASCII as it is; other text goes
        // through the tokenizer, normaliser included.
        let nfc_or_none = match tokenizer.get_normalizer() {
            None => true,
            Some(n) => serde_json::to_value(n).ok().is_some_and(|v| v == serde_json::json!({"type": "NFC"})),
        };
        if !nfc_or_none || tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
            return None;
        }
        // A post-processor that adds nothing without special tokens and does
        // not trim offsets leaves `encode(text, false)` as the model made it.
        match tokenizer.get_post_processor() {
            None | Some(PostProcessorWrapper::Template(_)) => {}
            Some(PostProcessorWrapper::ByteLevel(bl)) if !bl.trim_offsets => {}
            _ => return None,
        }
        let scheme = match tokenizer.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(bl)) if bl.use_regex && !bl.add_prefix_space => Scheme::Gpt2,
            Some(pre @ PreTokenizerWrapper::Sequence(_)) => scheme_of_sequence(pre)?,
            _ => return None,
        };
        let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
            return None;
        };
        if bpe.dropout.is_some()
            || bpe.continuing_subword_prefix.as_deref().is_some_and(|p| !p.is_empty())
            || bpe.end_of_word_suffix.as_deref().is_some_and(|p| !p.is_empty())
            || bpe.byte_fallback
        {
            return None;
        }
        let mut specials: Vec<Vec<(Box<[u8]>, u32)>> = vec![Vec::new(); 256];
        for (id, t) in tokenizer.get_added_tokens_decoder() {
            // Flags that change matching are not reproduced here.
            if t.single_word || t.lstrip || t.rstrip || t.content.is_empty() {
                return None;
            }
            let bytes: Box<[u8]> = t.content.as_bytes().into();
            specials[bytes[0] as usize].push((bytes, id));
        }
        for list in &mut specials {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        }
        Some(Self {
            tokenizer,
            bpe,
            scheme,
            specials,
            byte_char: byte_alphabet(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Token ids and byte offsets of `text`, exactly as
    /// `tokenizer.encode(text, false)` gives them.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Offsets), Error> {
        let bytes = text.as_bytes();
        let mut ids = Vec::with_capacity(bytes.len() / 3 + 4);
        let mut offsets = Vec::with_capacity(bytes.len() / 3 + 4);
        let mut seg_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let cands = &self.specials[bytes[i] as usize];
            if let Some((tok, id)) = cands.iter().find(|(t, _)| bytes[i..].starts_with(t)) {
                self.segment(bytes, seg_start, i, &mut ids, &mut offsets)?;
                ids.push(*id);
                offsets.push((i, i + tok.len()));
                i += tok.len();
                seg_start = i;
            } else {
                i += 1;
            }
        }
        self.segment(bytes, seg_start, bytes.len(), &mut ids, &mut offsets)?;
        Ok((ids, offsets))
    }

    /// A segment between added tokens with bytes the scanner does not
    /// classify goes through the tokenizer itself: the crate also
    /// pre-tokenises each such segment on its own, so the ids are the same.
    fn slow(
        &self,
        bytes: &[u8],
        start: usize,
        end: usize,
        ids: &mut Vec<u32>,
        offsets: &mut Offsets,
    ) -> Result<(), Error> {
        let seg = std::str::from_utf8(&bytes[start..end]).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let enc = self.tokenizer.encode(seg, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        ids.extend_from_slice(enc.get_ids());
        offsets.extend(enc.get_offsets().iter().map(|&(a, b)| (a + start, b + start)));
        Ok(())
    }

    fn segment(
        &self,
        bytes: &[u8],
        start: usize,
        end: usize,
        ids: &mut Vec<u32>,
        offsets: &mut Offsets,
    ) -> Result<(), Error> {
        let seg = &bytes[start..end];
        if !seg.iter().all(|&b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r')) {
            return self.slow(bytes, start, end, ids, offsets);
        }
        let mut res = Ok(());
        split(self.scheme, &bytes[start..end], |a, b| {
            if res.is_ok() {
                res = self.piece(&bytes[start + a..start + b], start + a, ids, offsets);
            }
        });
        res
    }

    fn piece(&self, piece: &[u8], at: usize, ids: &mut Vec<u32>, offsets: &mut Offsets) -> Result<(), Error> {
        let push = |toks: &[(u32, u32)], ids: &mut Vec<u32>, offsets: &mut Offsets| {
            let mut pos = at;
            for &(id, len) in toks {
                ids.push(id);
                offsets.push((pos, pos + len as usize));
                pos += len as usize;
            }
        };
        let hit = CACHES.with(|c| {
            let c = c.borrow();
            let toks = c.get(&self.id)?.get(piece)?;
            push(toks, ids, offsets);
            Some(())
        });
        if hit.is_some() {
            return Ok(());
        }
        let mapped: String = piece.iter().map(|&b| self.byte_char[b as usize]).collect();
        let toks: Box<[(u32, u32)]> = self
            .bpe
            .tokenize(&mapped)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .into_iter()
            // One mapped char per input byte.
            .map(|t| (t.id, t.value.chars().count() as u32))
            .collect();
        push(&toks, ids, offsets);
        CACHES.with(|c| {
            let mut c = c.borrow_mut();
            let cache = c.entry(self.id).or_default();
            if cache.len() < CACHE_LIMIT {
                cache.insert(piece.into(), toks);
            }
        });
        Ok(())
    }
}

/// Which pre-tokenizer regex a tokenizer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// GPT-2's (`ByteLevel` with `use_regex`): SmolLM2, GPT-2, StarCoder.
    Gpt2,
    /// Qwen2's split regex (single digits).
    Qwen2,
    /// Llama 3's split regex (digits in threes).
    Llama3,
}

const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `Sequence[Split(regex, isolated), ByteLevel(no prefix space, no regex)]`
/// with Qwen2's or Llama 3's regex, read from the pre-tokenizer's JSON form.
fn scheme_of_sequence(pre: &PreTokenizerWrapper) -> Option<Scheme> {
    let v = serde_json::to_value(pre).ok()?;
    let parts = v.get("pretokenizers")?.as_array()?;
    let [split, bl] = &parts[..] else {
        return None;
    };
    let byte_level_plain =
        bl.get("type")? == "ByteLevel" && bl.get("add_prefix_space")? == false && bl.get("use_regex")? == false;
    let isolated =
        split.get("type")? == "Split" && split.get("behavior")? == "Isolated" && split.get("invert")? == false;
    if !byte_level_plain || !isolated {
        return None;
    }
    match split.get("pattern")?.get("Regex")?.as_str()? {
        QWEN2_SPLIT => Some(Scheme::Qwen2),
        LLAMA3_SPLIT => Some(Scheme::Llama3),
        _ => None,
    }
}

fn split(scheme: Scheme, s: &[u8], f: impl FnMut(usize, usize)) {
    match scheme {
        Scheme::Gpt2 => split_gpt2(s, f),
        Scheme::Qwen2 => split_llama3(s, 1, f),
        Scheme::Llama3 => split_llama3(s, 3, f),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Other,
    Space,
}

fn class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => Class::Space,
        _ => Class::Other,
    }
}

/// The GPT-2 pre-tokenizer regex over ASCII: calls `f(start, end)` for each
/// piece, in order; the pieces cover `s`.
pub(crate) fn split_gpt2(s: &[u8], mut f: impl FnMut(usize, usize)) {
    let n = s.len();
    let mut i = 0;
    while i < n {
        let c = s[i];
        // 's 't 're 've 'm 'll 'd
        if c == b'\'' && i + 1 < n {
            let r = &s[i + 1..];
            let len = if r.starts_with(b"re") || r.starts_with(b"ve") || r.starts_with(b"ll") {
                3
            } else if matches!(r[0], b's' | b't' | b'm' | b'd') {
                2
            } else {
                0
            };
            if len > 0 {
                f(i, i + len);
                i += len;
                continue;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let j = if c == b' ' && i + 1 < n && class(s[i + 1]) != Class::Space { i + 1 } else { i };
        let cls = class(s[j]);
        if cls != Class::Space {
            let mut k = j + 1;
            while k < n && class(s[k]) == cls {
                k += 1;
            }
            f(i, k);
            i = k;
            continue;
        }
        // `\s+(?!\S)` then `\s+`
        let mut k = i + 1;
        while k < n && class(s[k]) == Class::Space {
            k += 1;
        }
        if k < n && k - i >= 2 {
            k -= 1;
        }
        f(i, k);
        i = k;
    }
}

/// The Llama 3 / Qwen2 split regex over ASCII (`max_digits` 3 or 1):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
pub(crate) fn split_llama3(s: &[u8], max_digits: usize, mut f: impl FnMut(usize, usize)) {
    let n = s.len();
    let newline = |b: u8| b == b'\r' || b == b'\n';
    let mut i = 0;
    while i < n {
        let c = s[i];
        // Contractions, any case.
        if c == b'\'' && i + 1 < n {
            let lower = |k: usize| s.get(i + k).map(u8::to_ascii_lowercase);
            let len = match (lower(1), lower(2)) {
                (Some(b'r'), Some(b'e')) | (Some(b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
                (Some(b's' | b't' | b'm' | b'd'), _) => 2,
                _ => 0,
            };
            if len > 0 {
                f(i, i + len);
                i += len;
                continue;
            }
        }
        let cls = class(c);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        let letters_from = if cls == Class::Letter {
            Some(i)
        } else if !newline(c) && cls != Class::Number && i + 1 < n && class(s[i + 1]) == Class::Letter {
            Some(i + 1)
        } else {
            None
        };
        if let Some(j) = letters_from {
            let mut k = j + 1;
            while k < n && class(s[k]) == Class::Letter {
                k += 1;
            }
            f(i, k);
            i = k;
            continue;
        }
        // `\p{N}{1,max}`
        if cls == Class::Number {
            let mut k = i + 1;
            while k < n && k - i < max_digits && class(s[k]) == Class::Number {
                k += 1;
            }
            f(i, k);
            i = k;
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let others_from = if cls == Class::Other {
            Some(i)
        } else if c == b' ' && i + 1 < n && class(s[i + 1]) == Class::Other {
            Some(i + 1)
        } else {
            None
        };
        if let Some(j) = others_from {
            let mut k = j + 1;
            while k < n && class(s[k]) == Class::Other {
                k += 1;
            }
            while k < n && newline(s[k]) {
                k += 1;
            }
            f(i, k);
            i = k;
            continue;
        }
        // Whitespace: `\s*[\r\n]+`, then `\s+(?!\S)`, then `\s+`.
        let mut k = i + 1;
        while k < n && class(s[k]) == Class::Space {
            k += 1;
        }
        if let Some(p) = (i..k).rev().find(|&p| newline(s[p])) {
            f(i, p + 1);
            i = p + 1;
            continue;
        }
        if k < n && k - i >= 2 {
            k -= 1;
        }
        f(i, k);
        i = k;
    }
}

fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let direct = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if direct {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid code point")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        split_gpt2(s.as_bytes(), |a, b| out.push(&s[a..b]));
        out
    }

    #[test]
    fn gpt2_regex_cases() {
        assert_eq!(pieces("Hello world"), ["Hello", " world"]);
        assert_eq!(pieces("  foo"), [" ", " foo"]);
        assert_eq!(pieces("\n\nfoo"), ["\n", "\n", "foo"]);
        assert_eq!(pieces("a  \n b "), ["a", "  \n", " b", " "]);
        assert_eq!(pieces("don't x's 'Re"), ["don", "'t", " x", "'s", " '", "Re"]);
        assert_eq!(pieces("f(x)=12;"), ["f", "(", "x", ")=", "12", ";"]);
        assert_eq!(pieces(" ..x"), [" ..", "x"]);
        assert_eq!(pieces("x \t"), ["x", " \t"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
    }

    fn pieces_llama3(s: &str, digits: usize) -> Vec<&str> {
        let mut out = Vec::new();
        split_llama3(s.as_bytes(), digits, |a, b| out.push(&s[a..b]));
        out
    }

    #[test]
    fn llama3_and_qwen2_regex_cases() {
        assert_eq!(pieces_llama3("Hello world", 3), ["Hello", " world"]);
        assert_eq!(pieces_llama3("(x)\thi", 3), ["(x", ")", "\thi"]);
        assert_eq!(pieces_llama3("12345", 3), ["123", "45"]);
        assert_eq!(pieces_llama3("12345", 1), ["1", "2", "3", "4", "5"]);
        assert_eq!(pieces_llama3("a;\n\n  b", 3), ["a", ";\n\n", " ", " b"]);
        assert_eq!(pieces_llama3("x \n \n  y", 3), ["x", " \n \n", " ", " y"]);
        assert_eq!(pieces_llama3("I'M 'Re", 3), ["I", "'M", " '", "Re"]);
        assert_eq!(pieces_llama3(" 5 ", 3), [" ", "5", " "]);
    }

    #[test]
    fn alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!((a[b' ' as usize], a[b'\n' as usize], a[0]), ('Ġ', 'Ċ', 'Ā'));
        assert_eq!(a[0xad], 'Ń');
    }
}
