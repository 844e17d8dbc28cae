//! Rendering and tokenisation against transformers' own output (fixtures made
//! by `scripts/make_template_fixtures.py`).

use sam_models::{BaseModel, require_test_model};
use sam_prep::encode::Encoder;
use sam_prep::template::{ChatTemplate, TemplateTokens};
use sam_schema::{Message, Role};
use serde_json::Value;

fn model() -> BaseModel {
    let path = require_test_model().unwrap_or_else(|e| panic!("{e}"));
    BaseModel::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn cases(text: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn messages(case: &Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

#[test]
fn smollm2_renders_and_tokenizes_like_transformers() {
    let model = model();
    let (tpl, builtin) = ChatTemplate::for_model(&model).unwrap();
    assert!(!builtin);
    let tk = model.tokenizer().unwrap();
    let enc = Encoder::new(&tpl, tk, Some("<|im_end|>".into()));
    let all = cases(include_str!("fixtures/smollm2_chat.json"));
    assert!(all.len() >= 5);
    for case in all {
        let name = case["name"].as_str().unwrap();
        let add_gen = case["add_generation_prompt"].as_bool().unwrap();
        let text = tpl.render(&messages(&case), add_gen).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "text of {name}");
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(enc.tokenize(&text).unwrap().0, want, "ids of {name}");
    }
}

#[test]
fn qwen25_renders_byte_identical_to_transformers() {
    let src = include_str!("fixtures/qwen2.5/chat_template.jinja");
    let tpl = ChatTemplate::new(src, TemplateTokens::default()).unwrap();
    let fixture = include_str!("fixtures/qwen2.5/render.json");
    // Parse straight into template values so that key order is kept, as in
    // Python dicts (tool schemas go through `tojson`).
    let raw: minijinja::Value = serde_json::from_str(fixture).unwrap();
    let n = cases(fixture).len();
    assert!(n >= 6);
    for i in 0..n {
        let case = raw.get_attr("cases").unwrap().get_item_by_index(i).unwrap();
        let name = case.get_attr("name").unwrap().to_string();
        let add_gen = case.get_attr("add_generation_prompt").unwrap().is_true();
        let got =
            tpl.render_value(case.get_attr("messages").unwrap(), case.get_attr("tools").unwrap(), add_gen).unwrap();
        let want = case.get_attr("text").unwrap();
        assert_eq!(got, want.as_str().unwrap(), "rendering of {name}");
    }
}

/// The mask expected from the ids alone: inside each
/// `<|im_start|>assistant\n … <|im_end|>`, everything after the header
/// through the `<|im_end|>`.
fn mask_from_structure(tk: &tokenizers::Tokenizer, ids: &[u32]) -> Vec<bool> {
    let header = tk.encode("<|im_start|>assistant\n", false).unwrap().get_ids().to_vec();
    let end = tk.token_to_id("<|im_end|>").unwrap();
    let mut mask = vec![false; ids.len()];
    let mut i = 0;
    while i < ids.len() {
        if ids[i..].starts_with(&header) {
            let mut j = i + header.len();
            while j < ids.len() {
                mask[j] = true;
                if ids[j] == end {
                    break;
                }
                j += 1;
            }
            i = j;
        }
        i += 1;
    }
    mask
}

#[test]
fn multi_turn_mask_covers_every_assistant_turn_and_its_end_token() {
    let model = model();
    let (tpl, _) = ChatTemplate::for_model(&model).unwrap();
    let tk = model.tokenizer().unwrap();
    let eot = model.special_tokens().end_of_turn.clone().unwrap().text;
    let enc = Encoder::new(&tpl, tk, Some(eot));
    let all = cases(include_str!("fixtures/smollm2_chat.json"));
    let case = all.iter().find(|c| c["name"] == "multi_turn").unwrap();
    let msgs = messages(case);
    let n_assistant = msgs.iter().filter(|m| m.role == Role::Assistant).count();
    assert_eq!(n_assistant, 3);
    let got = enc.encode_chat(&msgs).unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
    assert_eq!(got.ids, want_ids);
    let want = mask_from_structure(tk, &got.ids);
    assert_eq!(got.mask, want);
    // Three runs of trained tokens, each ending with <|im_end|> (id 2).
    let runs: Vec<usize> =
        (0..got.ids.len()).filter(|&k| got.mask[k] && (k + 1 == got.ids.len() || !got.mask[k + 1])).collect();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|&k| got.ids[k] == 2));
    // The decoded trained text is exactly the assistant contents + end tokens.
    let trained: Vec<u32> = got.ids.iter().zip(&got.mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
    let want_text: String =
        msgs.iter().filter(|m| m.role == Role::Assistant).map(|m| format!("{}<|im_end|>", m.content)).collect();
    assert_eq!(tk.decode(&trained, false).unwrap(), want_text);
    // The response starts at the last assistant turn.
    assert_eq!(got.ids[got.response_start - 1], 198);
}

/// Jinja features real templates use (Llama 3, Gemma, Mistral shapes,
/// Python string methods, namespaces, reversed loops, tests and filters,
/// `tojson` forms, whitespace control, `{% generation %}`), each rendered by
/// transformers with the test model's special tokens.
#[test]
fn jinja_features_render_like_transformers() {
    let tokens = TemplateTokens {
        bos: Some("<|im_start|>".into()),
        eos: Some("<|im_end|>".into()),
        unk: Some("<|endoftext|>".into()),
        pad: Some("<|im_end|>".into()),
    };
    let fixture = include_str!("fixtures/jinja_features.json");
    let raw: minijinja::Value = serde_json::from_str(fixture).unwrap();
    let n = cases(fixture).len();
    assert!(n >= 9);
    let mut failures = Vec::new();
    for i in 0..n {
        let case = raw.get_attr("cases").unwrap().get_item_by_index(i).unwrap();
        let name = case.get_attr("name").unwrap().to_string();
        let src = case.get_attr("template").unwrap();
        let tpl = ChatTemplate::new(src.as_str().unwrap(), tokens.clone()).unwrap();
        let got = tpl
            .render_value(
                case.get_attr("messages").unwrap(),
                case.get_attr("tools").unwrap(),
                case.get_attr("add_generation_prompt").unwrap().is_true(),
            )
            .unwrap_or_else(|e| format!("error: {e}"));
        let want = case.get_attr("text").unwrap();
        if got != want.as_str().unwrap() {
            failures.push(format!("{name}:\n  got  {got:?}\n  want {:?}", want.as_str().unwrap()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Masks follow the template, not ChatML: a Gemma-shaped template that trims
/// contents and closes turns with `<end_of_turn>`.
#[test]
fn mask_on_a_trimming_non_chatml_template() {
    let model = model();
    let tk = model.tokenizer().unwrap();
    let fixture: Value = serde_json::from_str(include_str!("fixtures/jinja_features.json")).unwrap();
    let case = fixture["cases"].as_array().unwrap().iter().find(|c| c["name"] == "gemma_like").unwrap();
    let tpl = ChatTemplate::new(case["template"].as_str().unwrap(), TemplateTokens::default()).unwrap();
    let enc = Encoder::new(&tpl, tk, Some("<end_of_turn>".into()));
    let msgs = messages(case);
    let got = enc.encode_chat(&msgs).unwrap();
    let trained: Vec<u32> = got.ids.iter().zip(&got.mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
    assert_eq!(tk.decode(&trained, false).unwrap(), "Hello a b c<end_of_turn>Not a lot!<end_of_turn>");
}
