//! The whole pipeline on the test model: outputs, splits, truncation.

use std::path::Path;

use sam_models::{BaseModel, require_test_model};
use sam_prep::cache::{PreparedData, Split};
use sam_prep::prepare::{DropKind, Input, PrepConfig, Preparer};
use sam_schema::{Content, Example, Message, Prompt};

fn model() -> BaseModel {
    let path = require_test_model().unwrap_or_else(|e| panic!("{e}"));
    BaseModel::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

const DOMAINS: [&str; 3] = ["code", "git", "docs"];

fn chat(i: usize) -> Example {
    Example::new(Content::Chat {
        messages: vec![
            Message::user(format!("Question {i}: what does parse_{i} do?")),
            Message::assistant(format!("It parses item {i}.")),
            Message::user("And then?"),
            Message::assistant(format!("It returns {}.", i % 7)),
        ],
    })
    .with_domain(DOMAINS[i % 3])
}

fn examples(range: std::ops::Range<usize>) -> Vec<Example> {
    range
        .map(|i| match i % 5 {
            0 => Example::new(Content::Instruction {
                instruction: format!("Summarise commit {i}"),
                input: "diff --git a/x b/x".into(),
                output: format!("Fix bug {i}"),
            })
            .with_domain(DOMAINS[i % 3]),
            1 => Example::new(Content::Preference {
                prompt: Prompt::Text(format!("Explain lifetimes ({i})")),
                chosen: "They bound how long references live.".into(),
                rejected: "No idea.".into(),
            })
            .with_domain(DOMAINS[i % 3]),
            2 => Example::new(Content::Completion { text: format!("fn f{i}() -> u32 {{ {i} }}") }).with_domain("code"),
            3 => Example::new(Content::PromptCompletion {
                prompt: format!("Name {i}"),
                completion: format!("Name is {i}"),
            })
            .with_domain(DOMAINS[i % 3]),
            _ => chat(i),
        })
        .collect()
}

fn input(examples: Vec<Example>) -> Input {
    Input { examples, sources: Vec::new() }
}

fn read_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn writes_mlx_forms_cache_and_manifest() {
    let model = model();
    let cfg = PrepConfig { system_prompt: Some("You are SAM.".into()), ..PrepConfig::default() };
    let prep = Preparer::new(&model, cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let prepared = prep
        .prepare(&input(examples(0..200)), |n| {
            done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
    assert_eq!(done.into_inner(), 200);
    let m = prepared.write(dir.path()).unwrap();

    // 40 of each kind; preference apart, text rows apart from chats.
    assert_eq!(m.kinds["preference"], 40);
    let n_pref = m.preference.train + m.preference.valid + m.preference.test;
    let n_sft = m.sft.train + m.sft.valid + m.sft.test;
    assert_eq!((n_sft, n_pref), (160, 40));
    assert!(m.sft.train > m.sft.valid && m.sft.train > m.sft.test);
    let per_domain: usize = m.domains.values().map(|c| c.train + c.valid + c.test).sum();
    assert_eq!(per_domain, 200);
    assert_eq!(m.drops.truncated + m.drops.dropped_too_long, 0);
    assert_eq!(m.template, "model");
    assert_eq!(m.end_of_turn.as_deref(), Some("<|im_end|>"));
    assert!(m.sft_tokens.p50 <= m.sft_tokens.p95 && m.sft_tokens.p95 <= m.sft_tokens.max);
    assert!(m.sft_tokens.trained > 0 && m.sft_tokens.trained < m.sft_tokens.total);

    // mlx-lm forms: every row of a file has the first row's form.
    let train = read_lines(&dir.path().join("train.jsonl"));
    assert!(train.iter().all(|r| r["messages"].is_array()));
    assert_eq!(train[0]["messages"][0]["role"], "system");
    assert_eq!(train[0]["messages"][0]["content"], "You are SAM.");
    let text = read_lines(&dir.path().join("text/train.jsonl"));
    assert!(!text.is_empty() && text.iter().all(|r| r["text"].is_string()));
    let pref = read_lines(&dir.path().join("preference/train.jsonl"));
    assert!(pref.iter().all(|r| r["chosen"].is_string() && r["rejected"].is_string()));
    assert_eq!(pref[0]["prompt"][0]["role"], "system");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["sft"]["train"], m.sft.train);
    assert!(manifest["split_rule"].as_str().unwrap().contains("blake3"));
    assert_eq!(manifest["tokenizer_hash"].as_str().unwrap().len(), 64);

    // The cache agrees with the JSONL rows and holds masks.
    let data = PreparedData::open(dir.path()).unwrap();
    let sft = data.sft(Split::Train).unwrap();
    assert_eq!(sft.len(), m.sft.train);
    let ids_jsonl: Vec<String> = train.iter().chain(&text).map(|r| r["id"].as_str().unwrap().to_string()).collect();
    for ex in &sft {
        assert!(ids_jsonl.contains(&ex.id));
        assert!(ex.input_ids.len() <= 512);
        assert!(ex.loss_mask.iter().any(|m| *m));
    }
    let pairs = data.preference(Split::Train).unwrap();
    assert_eq!(pairs.len(), m.preference.train);
    let p = &pairs[0];
    // The prompt ends with the generation prompt; each response with <|im_end|>.
    assert_eq!(&p.prompt_ids[p.prompt_ids.len() - 4..], &[1, 520, 9531, 198]);
    assert_eq!(*p.chosen_ids.last().unwrap(), 2);
    assert_eq!(*p.rejected_ids.last().unwrap(), 2);
    let tk = model.tokenizer().unwrap();
    assert_eq!(tk.decode(&p.chosen_ids, false).unwrap(), "They bound how long references live.<|im_end|>");
}

#[test]
fn adding_ten_percent_new_examples_moves_no_old_example() {
    let model = model();
    let prep = Preparer::new(&model, PrepConfig::default()).unwrap();
    let before = prep.prepare(&input(examples(0..300)), |_| {}).unwrap();
    let after = prep.prepare(&input(examples(0..330)), |_| {}).unwrap();
    let mut old = 0;
    for split in Split::ALL {
        let now: Vec<&str> = after.ids(split);
        for id in before.ids(split) {
            assert!(now.contains(&id), "{id} left {split}");
            old += 1;
        }
    }
    assert_eq!(old, 300);
    assert_eq!(Split::ALL.iter().map(|s| after.ids(*s).len()).sum::<usize>(), 330);
}

#[test]
fn truncation_keeps_the_response_and_drops_what_cannot_fit() {
    let model = model();
    let cfg = PrepConfig { max_seq_len: 64, ..PrepConfig::default() };
    let prep = Preparer::new(&model, cfg).unwrap();
    let long = "word ".repeat(200);
    let exs = vec![
        // Long prompt, short answer: truncated, answer kept.
        Example::new(Content::Chat {
            messages: vec![Message::user(long.clone()), Message::assistant("Short answer.")],
        }),
        // Long answer: dropped.
        Example::new(Content::Chat { messages: vec![Message::user("Hi"), Message::assistant(long.clone())] }),
        // Preference with a long prompt: prompt cut from the left.
        Example::new(Content::Preference {
            prompt: Prompt::Text(format!("{long} END")),
            chosen: "Yes.".into(),
            rejected: "No.".into(),
        }),
        // No assistant turn: dropped.
        Example::new(Content::Chat { messages: vec![Message::user("Hi")] }),
    ];
    let dir = tempfile::tempdir().unwrap();
    let m = prep.prepare(&input(exs), |_| {}).unwrap().write(dir.path()).unwrap();
    assert_eq!(m.drops.truncated, 2);
    assert_eq!(m.drops.dropped_too_long, 1);
    assert_eq!(m.drops.dropped_no_response, 1);
    let data = PreparedData::open(dir.path()).unwrap();
    let tk = model.tokenizer().unwrap();
    let sft: Vec<_> = Split::ALL.iter().flat_map(|s| data.sft(*s).unwrap()).collect();
    assert_eq!(sft.len(), 1);
    let ex = &sft[0];
    assert_eq!(ex.input_ids.len(), 64);
    let trained: Vec<u32> = ex.input_ids.iter().zip(&ex.loss_mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
    assert_eq!(tk.decode(&trained, false).unwrap(), "Short answer.<|im_end|>");
    // The head of the prompt is kept: it still starts with the system turn.
    assert_eq!(ex.input_ids[0], 1);
    let pairs: Vec<_> = Split::ALL.iter().flat_map(|s| data.preference(*s).unwrap()).collect();
    let p = &pairs[0];
    assert_eq!(p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len()), 64);
    let prompt_text = tk.decode(&p.prompt_ids, false).unwrap();
    assert!(prompt_text.ends_with(" END<|im_end|>\n<|im_start|>assistant\n"), "{prompt_text:?}");
}

#[test]
fn reads_jsonl_files_and_folders_counting_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("export");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("a.jsonl"),
        "{\"instruction\":\"a\",\"output\":\"b\",\"domain\":\"git\"}\nnot json\n{\"text\":\"t\"}\n",
    )
    .unwrap();
    std::fs::write(d.join("b.jsonl"), "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n").unwrap();
    std::fs::write(d.join("notes.txt"), "ignored").unwrap();
    let input = sam_prep::prepare::read_inputs(&[d]).unwrap();
    assert_eq!(input.examples.len(), 3);
    assert_eq!(input.sources.len(), 2);
    assert_eq!((input.sources[0].rows, input.sources[0].bad_rows), (3, 1));
    assert_eq!(input.sources[0].blake3.len(), 64);

    // Without a tokenizer or a template: ChatML, estimated lengths, no cache.
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), "{}").unwrap();
    let bare = BaseModel::open(&model_dir).unwrap();
    let prep = Preparer::new(&bare, PrepConfig::default()).unwrap();
    let out = dir.path().join("out");
    let m = prep.prepare(&input, |_| {}).unwrap().write(&out).unwrap();
    assert_eq!((m.template.as_str(), m.tokenizer.as_str()), ("builtin-chatml", "estimate-4-chars-per-token"));
    assert_eq!(m.drops.bad_rows, 1);
    assert_eq!(m.sft.train + m.sft.valid + m.sft.test, 2);
    assert_eq!(m.preference.train + m.preference.valid + m.preference.test, 1);
    assert!(m.sft_tokens.total > 0);
    assert!(!out.join("cache").exists());
    assert!(out.join("manifest.json").is_file());
}

#[test]
fn prompt_completion_rows_keep_their_form_unless_a_system_prompt_is_set() {
    let model = model();
    let exs: Vec<Example> = (0..30)
        .map(|i| {
            Example::new(Content::PromptCompletion { prompt: format!("P{i}"), completion: format!("C{i}") })
                .with_domain("docs")
        })
        .collect();
    for (system, form) in [(None, "completion"), (Some("Be brief.".to_string()), "messages")] {
        let prep = Preparer::new(&model, PrepConfig { system_prompt: system, ..PrepConfig::default() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        prep.prepare(&input(exs.clone()), |_| {}).unwrap().write(dir.path()).unwrap();
        let rows = read_lines(&dir.path().join("train.jsonl"));
        assert!(rows.iter().all(|r| !r[form].is_null()), "{form}: {}", rows[0]);
    }
}

#[test]
fn rerunning_into_the_same_folder_leaves_no_stale_outputs() {
    let model = model();
    let prep = Preparer::new(&model, PrepConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    prep.prepare(&input(examples(0..50)), |_| {}).unwrap().write(dir.path()).unwrap();
    assert!(dir.path().join("preference/train.jsonl").is_file());
    assert!(dir.path().join("cache/preference-train.bin").is_file());
    std::fs::write(dir.path().join("notes.md"), "mine").unwrap();
    // Chats only this time: no preference pairs, no text rows.
    let chats: Vec<Example> = (0..50).map(chat).collect();
    let m = prep.prepare(&input(chats), |_| {}).unwrap().write(dir.path()).unwrap();
    assert!(!dir.path().join("preference").exists());
    assert!(!dir.path().join("text").exists());
    assert!(!dir.path().join("cache/preference-train.bin").exists());
    assert!(dir.path().join("notes.md").is_file());
    let data = PreparedData::open(dir.path()).unwrap();
    assert!(data.preference(Split::Train).unwrap().is_empty());
    assert_eq!(data.sft(Split::Train).unwrap().len(), m.sft.train);
}

#[test]
fn template_errors_drop_the_example_and_are_reported() {
    let gguf = model();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("model");
    std::fs::create_dir(&m).unwrap();
    gguf.tokenizer().unwrap().save(m.join("tokenizer.json"), false).unwrap();
    let tpl = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
               {% for m in messages %}{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}";
    std::fs::write(m.join("tokenizer_config.json"), serde_json::json!({ "chat_template": tpl }).to_string()).unwrap();
    let model = BaseModel::open(&m).unwrap();
    let exs: Vec<Example> = (0..10).map(chat).collect();
    let plain = Preparer::new(&model, PrepConfig::default()).unwrap();
    let ok = plain.prepare(&input(exs.clone()), |_| {}).unwrap();
    assert_eq!(ok.manifest().drops.dropped_template_error, 0);
    let with_system =
        Preparer::new(&model, PrepConfig { system_prompt: Some("S".into()), ..PrepConfig::default() }).unwrap();
    let bad = with_system.prepare(&input(exs), |_| {}).unwrap();
    let d = &bad.manifest().drops;
    assert_eq!((d.dropped_template_error, d.dropped_unmaskable, d.dropped_too_long), (10, 0, 0));
    // The template's own message, once, with its count and first example.
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert_eq!(d.errors[0].kind, DropKind::TemplateError);
    assert_eq!(d.errors[0].reason, "System role not supported");
    assert_eq!(d.errors[0].count, 10);
}

/// An example the template refuses, one whose assistant turn it does not render (so no mask
/// can be made) and one too long are three different drops, each with its reason.
#[test]
fn template_errors_unmaskable_examples_and_length_drops_are_counted_apart() {
    let gguf = model();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("model");
    std::fs::create_dir(&m).unwrap();
    gguf.tokenizer().unwrap().save(m.join("tokenizer.json"), false).unwrap();
    // Raises on a system message; renders a "secret" answer as a placeholder, no end token.
    let tpl = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('No system role here: ' + m.content) }}\
               {% elif m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n\
               {% elif m.content.startswith('secret') %}<|im_start|>assistant\n[redacted]\n\
               {% else %}<|im_start|>assistant\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}\
               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    std::fs::write(m.join("tokenizer_config.json"), serde_json::json!({ "chat_template": tpl }).to_string()).unwrap();
    let model = BaseModel::open(&m).unwrap();
    let conv = |i: usize, answer: String| {
        Example::new(Content::Chat {
            messages: vec![Message::user(format!("Question {i}?")), Message::assistant(answer)],
        })
    };
    let mut exs: Vec<Example> = (0..6).map(|i| conv(i, format!("Answer {i}."))).collect();
    exs.extend((0..3).map(|i| conv(i, format!("secret {i}"))));
    exs.extend((0..2).map(|i| {
        Example::new(Content::Chat {
            messages: vec![
                Message::system("Be brief."),
                Message::user(format!("Run it {i}")),
                Message::assistant("Done."),
            ],
        })
    }));
    exs.push(conv(99, "long ".repeat(200)));
    let prep = Preparer::new(&model, PrepConfig { max_seq_len: 64, ..PrepConfig::default() }).unwrap();
    let prepared = prep.prepare(&input(exs), |_| {}).unwrap();
    let m = prepared.manifest();
    assert_eq!(m.sft.train + m.sft.valid + m.sft.test, 6);
    let d = &m.drops;
    assert_eq!((d.dropped_template_error, d.dropped_unmaskable, d.dropped_too_long), (2, 3, 1), "{d:?}");
    assert_eq!(d.errors.len(), 2, "{d:?}");
    // Most frequent first; the template's own message as it raised it.
    assert_eq!((d.errors[0].kind, d.errors[0].count), (DropKind::Unmaskable, 3));
    assert!(d.errors[0].reason.contains("cannot locate assistant turn 1"), "{}", d.errors[0].reason);
    assert_eq!((d.errors[1].kind, d.errors[1].count), (DropKind::TemplateError, 2));
    assert_eq!(d.errors[1].reason, "No system role here: Be brief.");
}

#[test]
fn a_trl_export_read_back_is_the_same_dataset_with_the_same_splits() {
    let model = model();
    let system = Some("You are SAM.".to_string());
    let dir = tempfile::tempdir().unwrap();
    let trl_dir = dir.path().join("trl");
    let cfg = sam_prep::trl::TrlConfig { system_prompt: system.clone(), ..Default::default() };
    let exs = examples(0..200);
    let m = sam_prep::trl::write(&input(exs.clone()), &cfg, &trl_dir).unwrap();
    assert_eq!(m.dpo.train + m.dpo.valid + m.dpo.test, 40);
    assert_eq!(m.text.train + m.text.valid + m.text.test, 40);
    assert_eq!(m.sft.train + m.sft.valid + m.sft.test, 120);
    assert!(m.files.contains(&"sft/test.jsonl".to_string()), "{:?}", m.files);

    // TRL's forms: conversations with the system prompt first; conversational pairs.
    let sft = read_lines(&trl_dir.join("sft/train.jsonl"));
    assert!(sft.iter().all(|r| r["messages"][0]["content"] == "You are SAM." && r["id"].is_string()));
    let pair = &read_lines(&trl_dir.join("dpo/train.jsonl"))[0];
    assert_eq!(pair["chosen"][0]["role"], "assistant");
    assert_eq!(pair["prompt"].as_array().unwrap().last().unwrap()["role"], "user");

    // sam reads the folder back: the same ids in the same splits, the same tokens.
    let prep = Preparer::new(&model, PrepConfig { system_prompt: system, ..PrepConfig::default() }).unwrap();
    let direct = prep.prepare(&input(exs), |_| {}).unwrap();
    let back = sam_prep::prepare::read_inputs(&["sft", "dpo", "text"].map(|f| trl_dir.join(f))).unwrap();
    let round = prep.prepare(&back, |_| {}).unwrap();
    for split in Split::ALL {
        let (mut a, mut b) = (direct.ids(split), round.ids(split));
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "{split}");
        let ids = |p: &sam_prep::prepare::Prepared| {
            let mut t: Vec<(String, Vec<u32>)> =
                p.sft_tokens(split).into_iter().map(|t| (t.id.clone(), t.input_ids.clone())).collect();
            t.sort();
            t
        };
        assert_eq!(ids(&direct), ids(&round), "{split}");
    }
    // Written again into the same folder: nothing stale survives.
    let one = sam_prep::trl::write(&input(examples(0..1)), &cfg, &trl_dir).unwrap();
    assert_eq!(one.files.len(), 2, "{:?}", one.files);
    assert!(!trl_dir.join("dpo").exists());
}
