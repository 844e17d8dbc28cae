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

/// A Hugging Face folder made from the GGUF's tokenizer reads back to the
/// same tokenizer, template and special tokens.
#[test]
fn hf_folder_reads_tokenizer_template_and_generation_config() {
    let gguf = model();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gguf.tokenizer().unwrap().save(d.join("tokenizer.json"), false).unwrap();
    let tpl = gguf.chat_template().unwrap();
    let tc = serde_json::json!({
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": tpl}],
        "bos_token": {"content": "<|im_start|>", "lstrip": false},
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "add_bos_token": false,
    });
    std::fs::write(d.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(d.join("generation_config.json"), r#"{"eos_token_id": [2, 0]}"#).unwrap();
    std::fs::write(d.join("config.json"), r#"{"model_type": "llama", "num_hidden_layers": 30}"#).unwrap();

    let hf = BaseModel::open(d).unwrap();
    assert!(matches!(hf.source(), ModelSource::HfFolder(_)));
    assert_eq!(hf.config().unwrap()["num_hidden_layers"], 30);
    assert_eq!(hf.chat_template(), Some(tpl));
    let sp = hf.special_tokens();
    assert_eq!(sp.bos.as_ref().map(|t| t.id), Some(1));
    assert_eq!(sp.eos.as_ref().map(|t| t.id), Some(2));
    assert_eq!(sp.end_of_turn.as_ref().map(|t| t.id), Some(2));
    assert_eq!(sp.stop_ids, vec![2, 0]);
    let fx = fixture();
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(hf.tokenizer().unwrap().encode(text, false).unwrap().get_ids(), &want[..]);
    }
    // A chat_template.jinja file wins over the key, as in transformers.
    std::fs::write(d.join("chat_template.jinja"), "{{ messages }}").unwrap();
    assert_eq!(BaseModel::open(d).unwrap().chat_template(), Some("{{ messages }}"));
}
