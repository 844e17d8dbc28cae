//! The fast tokenisation path gives exactly the `tokenizers` crate's ids and
//! offsets (differential test on the test model's tokenizer).

use sam_models::{BaseModel, require_test_model};
use sam_prep::fast_bpe::FastBpe;

fn check(fast: &FastBpe, tk: &tokenizers::Tokenizer, text: &str) {
    let want = tk.encode(text, false).unwrap();
    let (ids, offsets) = fast.encode(text).unwrap();
    assert_eq!(ids, want.get_ids(), "ids of {text:?}");
    assert_eq!(offsets, want.get_offsets(), "offsets of {text:?}");
}

fn tokenizer() -> tokenizers::Tokenizer {
    let path = require_test_model().unwrap_or_else(|e| panic!("{e}"));
    BaseModel::open(&path).unwrap().tokenizer().unwrap().clone()
}

#[test]
fn same_ids_and_offsets_as_the_tokenizers_crate() {
    let tk = tokenizer();
    let fast = FastBpe::new(&tk).expect("the GGUF tokenizer is GPT-2 style");
    differential(&fast, &tk);
}

/// The same vocabulary behind Qwen2's and Llama 3's pre-tokenizers (split
/// regex + byte-level, NFC normaliser): the scanners agree with the regexes.
#[test]
fn qwen2_and_llama3_split_regexes() {
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let llama3 = QWEN2.replace(r"|\p{N}|", r"|\p{N}{1,3}|");
    for re in [QWEN2.to_string(), llama3] {
        let mut tk = tokenizer();
        let split =
            Split::new(SplitPattern::Regex(re.clone()), tokenizers::SplitDelimiterBehavior::Isolated, false).unwrap();
        tk.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])));
        tk.with_normalizer(Some(NFC));
        let fast = FastBpe::new(&tk).unwrap_or_else(|| panic!("no fast path for {re}"));
        differential(&fast, &tk);
    }
}

fn differential(fast: &FastBpe, tk: &tokenizers::Tokenizer) {
    let fixed = [
        "",
        " ",
        "Hello world",
        "  leading\n\n\ttabs \r\n trailing  ",
        "don't won't I'll we've they're 'Re 's",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "a<|im_end|>b<|im_start|><|im_start|>",
        "<|im_end",
        "fn main() { let x = vec![1, 2, 3]; println!(\"{x:?}\"); }\n",
        "12345 + 678 = 13023; 3.14159",
        "naïve café 東京 😀 — non-ASCII goes the slow way",
        "x\u{b}y\u{c}z\u{1}",
    ];
    for t in fixed {
        check(fast, tk, t);
    }
    for case in serde_json::from_str::<serde_json::Value>(include_str!("fixtures/smollm2_chat.json")).unwrap()["cases"]
        .as_array()
        .unwrap()
    {
        check(fast, tk, case["text"].as_str().unwrap());
    }

    // Random strings over an alphabet that stresses the regex's branches.
    let atoms = [
        "a",
        "Z",
        "q",
        "word",
        "Ab",
        "0",
        "7",
        "42",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "'",
        "'s",
        "'t",
        "'re",
        "'ll",
        "'d",
        "'m",
        "'ve",
        ".",
        ",",
        "(",
        ")",
        "{",
        "}",
        "!",
        "?",
        "-",
        "_",
        "\"",
        "#",
        "~",
        "`",
        "<|im_end|>",
        "<|im_start|>",
        "<file_sep>",
        "<",
        "|",
        ">",
        "é",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let len = (next() % 40) as usize;
        let text: String = (0..len).map(|_| atoms[(next() % atoms.len() as u64) as usize]).collect();
        check(fast, tk, &text);
    }
}
