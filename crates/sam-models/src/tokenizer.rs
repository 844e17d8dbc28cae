//! Rebuilding a `tokenizers` tokenizer from a GGUF file's `tokenizer.ggml.*`
//! metadata.
//!
//! A GGUF has no `tokenizer.json`; it stores the vocabulary, merges, token
//! types and special ids. For `tokenizer.ggml.model = "gpt2"` (byte-level
//! BPE, the family of SmolLM2, Qwen2 and Llama 3) this builds the same
//! tokenizer Hugging Face transformers builds when it loads the file with
//! `from_pretrained(dir, gguf_file=…)`: a BPE model over the vocabulary and
//! merges, a byte-level pre-tokenizer (with the split regex of the named
//! `tokenizer.ggml.pre` where transformers knows one), a byte-level decoder,
//! control tokens (type 3) added as special tokens and user-defined tokens
//! (type 4) as plain added tokens, so that both always match whole.

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::{GgufMetadata, GgufValue};

/// GGUF token type of a control token (`<|im_end|>`): a special token.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of a user-defined token (`<think>`): an added, non-special token.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` name, where it differs from
/// GPT-2's (same table as transformers' GGUF loader, for the families sam
/// trains).
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// Build the tokenizer a GGUF file describes. `Err` carries a reason.
pub(crate) fn from_gguf(meta: &GgufMetadata) -> Result<Tokenizer, String> {
    let model = meta.get_str("tokenizer.ggml.model").ok_or("no tokenizer.ggml.model in the file")?;
    if model != "gpt2" {
        return Err(format!("tokenizer.ggml.model {model:?} is not supported (only \"gpt2\", byte-level BPE)"));
    }
    let tokens = meta.get_str_array("tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens string array")?;
    let merges = meta.get_str_array("tokenizer.ggml.merges").ok_or("no tokenizer.ggml.merges string array")?;
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        Some(GgufValue::Array(v)) => v.iter().map(|t| t.as_i64().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };

    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        // Every real byte-level token is spelled in the byte alphabet; one that
        // is not (a raw special token) is re-spelled byte by byte, as
        // transformers does.
        let spelled =
            if in_alphabet(tok) { (*tok).to_string() } else { tok.bytes().map(|b| alphabet[b as usize]).collect() };
        vocab.insert(spelled, id as u32);
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {m:?} has no space"))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("cannot build the BPE model: {e}"))?;

    let mut tk = Tokenizer::new(bpe);
    let pre: PreTokenizerWrapper = match meta.get_str("tokenizer.ggml.pre").and_then(split_regex) {
        Some(re) => {
            let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("bad split regex: {e}"))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    tk.with_pre_tokenizer(Some(pre));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));

    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(t, &ty)| ty == TOKEN_TYPE_CONTROL && in_alphabet(t))
        .map(|(t, _)| AddedToken::from(*t, true).normalized(false))
        .collect();
    tk.add_special_tokens(&control);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(_, &ty)| ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, _)| AddedToken::from(*t, false).normalized(false))
        .collect();
    tk.add_tokens(&user);
    Ok(tk)
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes map to
/// themselves, the others to code points from U+0100 on.
fn byte_alphabet() -> Vec<char> {
    let mut direct: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut table = vec!['\0'; 256];
    for &b in &direct {
        table[b as usize] = char::from_u32(b).expect("latin-1");
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !direct.contains(&b) {
            table[b as usize] = char::from_u32(256 + n).expect("valid code point");
            n += 1;
            direct.push(b);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let a = byte_alphabet();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 256);
    }
}
