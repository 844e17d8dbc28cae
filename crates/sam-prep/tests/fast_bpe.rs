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

#[test]
fn same_ids_and_offsets_as_the_tokenizers_crate() {
    let path = require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = BaseModel::open(&path).unwrap();
    let tk = model.tokenizer().unwrap();
    let fast = FastBpe::new(tk).expect("the GGUF tokenizer is GPT-2 style");

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
        check(&fast, tk, t);
    }
    for case in serde_json::from_str::<serde_json::Value>(include_str!("fixtures/smollm2_chat.json")).unwrap()["cases"]
        .as_array()
        .unwrap()
    {
        check(&fast, tk, case["text"].as_str().unwrap());
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
        check(&fast, tk, &text);
    }
}
