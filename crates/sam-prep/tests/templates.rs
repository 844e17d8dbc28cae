//! Rendering and tokenisation against transformers' own output (fixtures made
//! by `scripts/make_template_fixtures.py`).

use sam_models::{BaseModel, require_test_model};
use sam_prep::cache::{Split, TokenizedExample};
use sam_prep::encode::{Encoder, stop_texts};
use sam_prep::fast_bpe::FastBpe;
use sam_prep::prepare::{Drops, Input, PrepConfig, Preparer, SpanMethod};
use sam_prep::template::{ChatTemplate, TemplateTokens};
use sam_schema::{Content, Example, Message, Role};
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

// ---------------------------------------------------------------------------------------------
// Model families (fixtures/families.json, made by scripts/make_template_fixtures.py from the
// templates in fixtures/templates/, sources in fixtures/templates/SOURCES.md).

/// One family of the fixture, put into a Hugging Face folder the way a user would: the test
/// model's tokenizer with the family's special tokens added, and the template and special
/// token names in `tokenizer_config.json`. Families with the same special tokens share one
/// `tokenizer.json`.
fn family_model(gguf: &BaseModel, fam: &Value, root: &std::path::Path) -> BaseModel {
    let name = fam["name"].as_str().unwrap();
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let t = &fam["tokens"];
    let added: Vec<&str> = t["added"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let ids: Vec<u32> = serde_json::from_value(t["added_ids"].clone()).unwrap();
    let shared = root.join(format!("tokenizer-{}.json", blake3::hash(added.join("\n").as_bytes()).to_hex()));
    if !shared.exists() {
        let mut tk = gguf.tokenizer().unwrap().clone();
        for (text, id) in added.iter().zip(&ids) {
            tk.add_special_tokens(&[tokenizers::AddedToken::from(text.to_string(), true)]);
            assert_eq!(tk.token_to_id(text), Some(*id), "{name}: id of added token {text}");
        }
        let tmp = shared.with_extension(format!("{name}.tmp"));
        tk.save(&tmp, false).unwrap();
        std::fs::rename(&tmp, &shared).unwrap();
    }
    std::fs::hard_link(&shared, dir.join("tokenizer.json")).unwrap();
    let template = match fam["template"].as_str() {
        Some(file) => std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates").join(file),
        )
        .unwrap(),
        None => gguf.chat_template().unwrap().to_string(),
    };
    let config = serde_json::json!({
        "chat_template": template,
        "bos_token": t["bos"], "eos_token": t["eos"], "unk_token": t["unk"], "pad_token": t["pad"],
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let stops = t["stops"].as_array().unwrap();
    if !stops.is_empty() {
        // Written after the tokenizer: ids of its tokens, as a model's generation_config.json has.
        let tk = BaseModel::open(&dir).unwrap().tokenizer().unwrap().clone();
        let ids: Vec<u32> = stops.iter().map(|s| tk.token_to_id(s.as_str().unwrap()).unwrap()).collect();
        std::fs::write(dir.join("generation_config.json"), serde_json::json!({ "eos_token_id": ids }).to_string())
            .unwrap();
    }
    let model = BaseModel::open(&dir).unwrap();
    for (text, id) in added.iter().zip(&ids) {
        assert_eq!(model.tokenizer().unwrap().token_to_id(text), Some(*id), "{name}: id of added token {text}");
    }
    model
}

/// Runs of `true` in a mask, as `[start, end)` token ranges.
fn runs(mask: &[bool]) -> Vec<[usize; 2]> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &on) in mask.iter().chain([&false]).enumerate() {
        match (on, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push([s, i]);
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// The text of an assistant turn a trained run must hold: the content after any reasoning
/// block (which some templates drop from earlier turns), trimmed.
fn answer_part(content: &str) -> &str {
    content.rsplit("</think>").next().unwrap_or(content).trim()
}

/// What checking one family found: failures, and how many masks were compared with
/// transformers' (generation markers) or checked for shape (inferred).
#[derive(Default)]
struct FamilyCheck {
    failures: Vec<String>,
    marker_masks: usize,
    inferred_masks: usize,
}

fn check_family(gguf: &BaseModel, fam: &Value, now: i64, root: &std::path::Path) -> FamilyCheck {
    let mut out = FamilyCheck::default();
    let failures = &mut out.failures;
    let name = fam["name"].as_str().unwrap();
    let model = family_model(gguf, fam, root);
    let tk = model.tokenizer().unwrap();
    let (mut tpl, builtin) = ChatTemplate::for_model(&model).unwrap();
    assert!(!builtin, "{name}");
    tpl.set_now(now);
    assert_eq!(tpl.has_generation_markers(), fam["markers"].as_bool().unwrap(), "{name}: markers");
    assert_eq!(tpl.family(), fam["format"].as_str(), "{name}: family");
    // The encoder sam prep builds for this model.
    let fast = FastBpe::new(tk);
    let eot = model.special_tokens().end_of_turn.as_ref().map(|t| t.text.clone());
    let mut enc = Encoder::new(&tpl, tk, eot).with_stop_texts(stop_texts(&model));
    if let Some(f) = &fast {
        enc = enc.with_fast(f);
    }
    let stop_ids: Vec<u32> = stop_texts(&model).iter().filter_map(|t| tk.token_to_id(t)).collect();
    for case in fam["cases"].as_array().unwrap() {
        let cname = format!("{name}/{}", case["name"].as_str().unwrap());
        let msgs = messages(case);
        let add_gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = if add_gen {
            tpl.render(&msgs, true).and_then(|text| Ok(enc.tokenize(&text)?.0)).map(|ids| (ids, None))
        } else {
            enc.encode_chat(&msgs).map(|e| (e.ids.clone(), Some(e)))
        };
        if let Some(want) = case["error"].as_str() {
            match got {
                Ok(_) => failures.push(format!("{cname}: rendered, transformers fails with {want:?}")),
                Err(e) if case["error_kind"] == "raised" && e.to_string() != want => {
                    failures.push(format!("{cname}: error {e:?}, the template raises {want:?}"))
                }
                Err(sam_prep::Error::Template(_)) => {}
                Err(e) => failures.push(format!("{cname}: {e:?} is not a template error")),
            }
            continue;
        }
        let (ids, encoded) = match got {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{cname}: {e}"));
                continue;
            }
        };
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        if ids != want {
            let text = |ids: &[u32]| tk.decode(ids, false).unwrap();
            failures.push(format!(
                "{cname}: ids differ\n  sam          {:?}\n  transformers {:?}",
                text(&ids),
                text(&want)
            ));
            continue;
        }
        let Some(e) = encoded else { continue };
        let got_runs = runs(&e.mask);
        if let Some(want_runs) = case.get("mask_runs") {
            // Generation markers: transformers' assistant mask, token for token.
            let want_runs: Vec<[usize; 2]> = serde_json::from_value(want_runs.clone()).unwrap();
            if got_runs != want_runs {
                failures.push(format!("{cname}: mask runs {got_runs:?}, transformers {want_runs:?}"));
            }
            out.marker_masks += 1;
            continue;
        }
        // Inferred spans: one trained run per assistant turn, holding that turn's answer and
        // ending with its stop token, and nothing of the other messages.
        out.inferred_masks += 1;
        let turns: Vec<&Message> = msgs.iter().filter(|m| m.role == Role::Assistant).collect();
        let trained: Vec<String> = got_runs.iter().map(|r| tk.decode(&e.ids[r[0]..r[1]], false).unwrap()).collect();
        if trained.len() != turns.len() {
            failures.push(format!(
                "{cname}: {} trained runs for {} assistant turns: {trained:?}",
                trained.len(),
                turns.len()
            ));
            continue;
        }
        for ((run, text), turn) in got_runs.iter().zip(&trained).zip(&turns) {
            let answer = answer_part(&turn.content);
            if !text.contains(answer) {
                failures.push(format!("{cname}: trained run {text:?} lacks the answer {answer:?}"));
            }
            // A run ends with the stop token that closes the turn; a run that does not is one
            // no stop token follows before the next run (a template whose closing marker is
            // no special token of this tokenizer, as Phi-3.5's `<|end|>` in SmolLM2's).
            let next_run = got_runs.iter().find(|r| r[0] >= run[1]).map_or(e.ids.len(), |r| r[0]);
            let ends_with_stop = stop_ids.contains(&e.ids[run[1] - 1]);
            if !ends_with_stop && e.ids[run[1]..next_run].iter().any(|id| stop_ids.contains(id)) {
                failures.push(format!("{cname}: trained run {text:?} stops short of its end-of-turn token"));
            }
        }
        for m in msgs.iter().filter(|m| m.role != Role::Assistant && !m.content.trim().is_empty()) {
            if trained.iter().any(|t| t.contains(m.content.trim())) {
                failures.push(format!("{cname}: {:?} message trained on", m.role));
            }
        }
    }
    out
}

/// The ten-family suite: real templates of Llama 2/3.x, Mistral, Gemma 1/2/3, Phi-3/3.5,
/// Qwen2.5/3, DeepSeek-V3, Command-R/R7B, gpt-oss, SmolLM2/3, Granite, LFM2 and GLM-4, and
/// the `*_training` variants TRL ships with `{% generation %}` markers, over multi-turn
/// conversations with and without a system message: the same ids as transformers'
/// `apply_chat_template`, the same mask as its `return_assistant_tokens_mask` where the
/// template has markers, the template's own error where it raises.
#[test]
fn every_family_renders_tokenizes_and_masks_like_transformers() {
    let gguf = model();
    let fixture: Value = serde_json::from_str(include_str!("fixtures/families.json")).unwrap();
    let now = fixture["now"].as_i64().unwrap();
    let families = fixture["families"].as_array().unwrap();
    assert!(families.len() >= 30, "{} families", families.len());
    let root = tempfile::tempdir().unwrap();
    // Opening a model parses its tokenizer.json: the families go on all cores.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(families.len());
    let checks: Vec<FamilyCheck> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (gguf, root) = (&gguf, root.path());
                s.spawn(move || {
                    families
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|f| check_family(gguf, f, now, root))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<&String> = checks.iter().flat_map(|c| &c.failures).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.iter().map(|f| f.as_str()).collect::<Vec<_>>().join("\n")
    );
    let marker_masks: usize = checks.iter().map(|c| c.marker_masks).sum();
    let inferred: usize = checks.iter().map(|c| c.inferred_masks).sum();
    assert!(marker_masks >= 100 && inferred >= 100, "{marker_masks} marker masks, {inferred} inferred");
}

/// Issue 21's case: Phi-3.5's template in the test model's folder, with its own tokenizer
/// (the test model's, unchanged: `<|end|>` is plain text there) and with Phi's special
/// tokens. `sam prep` keeps every conversation, with transformers' ids.
#[test]
fn phi35_template_keeps_every_conversation_with_transformers_ids() {
    let gguf = model();
    let fixture: Value = serde_json::from_str(include_str!("fixtures/families.json")).unwrap();
    let root = tempfile::tempdir().unwrap();
    for name in ["phi3_5_plain", "phi3_5"] {
        let fam = fixture["families"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap();
        let model = family_model(&gguf, fam, root.path());
        let prep = Preparer::new(&model, PrepConfig { max_seq_len: 4096, ..PrepConfig::default() }).unwrap();
        let cases: Vec<&Value> =
            fam["cases"].as_array().unwrap().iter().filter(|c| c["add_generation_prompt"] == false).collect();
        let examples: Vec<Example> = cases
            .iter()
            .map(|c| {
                let mut ex = Example::new(Content::Chat { messages: messages(c) });
                ex.id = c["name"].as_str().unwrap().to_string();
                ex
            })
            .collect();
        let n = examples.len();
        assert!(n >= 8 && examples.iter().filter(|e| e.content.to_messages().unwrap().len() >= 4).count() >= 5);
        let prepared = prep.prepare(&Input { examples, sources: Vec::new() }, |_| {}).unwrap();
        let m = prepared.manifest();
        assert_eq!(m.sft.train + m.sft.valid + m.sft.test, n, "{name}: {:?}", m.drops);
        assert_eq!(m.drops, Drops::default(), "{name}");
        assert_eq!(m.template_family.as_deref(), Some("phi-3"));
        assert_eq!(m.span_method, SpanMethod::Inferred);
        assert_eq!(m.spans_by_content, 0, "{name}: every turn found by its prompt rendering");
        let got: Vec<&TokenizedExample> = Split::ALL.into_iter().flat_map(|s| prepared.sft_tokens(s)).collect();
        for case in cases {
            let id = case["name"].as_str().unwrap();
            let ex = got.iter().find(|t| t.id == id).unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(ex.input_ids, want, "{name}/{id}: ids");
            let turns = messages(case).iter().filter(|m| m.role == Role::Assistant).count();
            assert_eq!(runs(&ex.loss_mask).len(), turns, "{name}/{id}: one trained run per assistant turn");
        }
    }
}
