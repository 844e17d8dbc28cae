//! The test model's GGUF tokenizer against transformers' (fixture made by
//! `crates/sam-prep/scripts/make_template_fixtures.py`).

use sam_models::{BaseModel, ModelSource, require_test_model};
use serde_json::Value;

fn model() -> BaseModel {
    let path = require_test_model().unwrap_or_else(|e| panic!("{e}"));
    BaseModel::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn fixture() -> Value {
    let text = include_str!("fixtures/smollm2_tokenizer.json");
    serde_json::from_str(text).unwrap()
}

#[test]
fn gguf_tokenizer_ids_equal_transformers() {
    let model = model();
    let tk = model.tokenizer().expect("GGUF has a tokenizer");
    let fx = fixture();
    assert_eq!(tk.get_vocab_size(true) as u64, fx["vocab_size"].as_u64().unwrap());
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tk.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "ids of {text:?}");
        let back = tk.decode(&got, false).unwrap();
        assert_eq!(back, text, "decode of {text:?}");
    }
}

#[test]
fn gguf_special_tokens_and_template() {
    let model = model();
    assert!(matches!(model.source(), ModelSource::Gguf(_)));
    assert_eq!(model.gguf().unwrap().architecture(), Some("llama"));
    assert_eq!(model.gguf().unwrap().arch_u64("block_count"), Some(30));
    let fx = fixture();
    let sp = model.special_tokens();
    assert_eq!(sp.bos.as_ref().unwrap().text, fx["bos_token"].as_str().unwrap());
    assert_eq!(sp.eos.as_ref().unwrap().text, fx["eos_token"].as_str().unwrap());
    assert_eq!(sp.pad.as_ref().unwrap().text, fx["pad_token"].as_str().unwrap());
    assert_eq!(sp.unk.as_ref().unwrap().text, fx["unk_token"].as_str().unwrap());
    let eot = sp.end_of_turn.as_ref().unwrap();
    assert_eq!((eot.id, eot.text.as_str()), (2, "<|im_end|>"));
    assert!(sp.stop_ids.contains(&2));
    assert!(!sp.add_bos);
    let tpl = model.chat_template().unwrap();
    assert!(tpl.contains("<|im_start|>") && tpl.contains("add_generation_prompt"));
    assert_eq!(model.name(), "SmolLM2-135M-Instruct.Q4_1");
}
