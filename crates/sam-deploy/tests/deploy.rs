//! The registry, gates and canary on the real test model and real files:
//! a trained adapter is promoted over the base model, an untrained one, a
//! damaged one and one for another base shape are refused, each for its
//! reason; a promoting process killed at random points 200 times leaves
//! every alias on a whole version and the history whole; two promotes at
//! once are serialised; canary routing is sticky and feedback captured
//! through sam-capture into a real store decides the canary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sam_capture::capture::{Capture, CaptureEvent};
use sam_deploy::registry::{self, BaseRef, CANARY, PREVIOUS};
use sam_deploy::{
    Action, Approval, CanaryDecision, EvalOptions, Evaluator, GateSettings, Judgements, ModelEvaluator, Reason,
    Registration, Registry, gate,
};
use sam_prep::cache::Split;
use sam_schema::{Content, Example, Message, Prompt};
use sam_trainer::{AdapterFormat, ModelConfig, TrainConfig};

fn model_path() -> PathBuf {
    sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh folder under the target's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sam-deploy-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A prepared dataset and an adapter trained on it (a few steps on short
/// sequences).
struct Trained {
    data: PathBuf,
    adapter: PathBuf,
}

fn rows() -> Vec<Example> {
    let chat =
        |u: String, a: String| Example::new(Content::Chat { messages: vec![Message::user(u), Message::assistant(a)] });
    let mut out = Vec::new();
    for i in 0..48 {
        out.push(
            chat(format!("What does function f{i} return?"), format!("Function f{i} returns the number {i} plus one."))
                .with_domain("code"),
        );
        if i % 2 == 0 {
            out.push(chat(format!("Explain item {i}"), format!("In short: item {i} is a number.")).with_domain("docs"));
        } else {
            out.push(
                Example::new(Content::Preference {
                    prompt: Prompt::Text(format!("Explain item {i}")),
                    chosen: format!("In short: item {i} is a number."),
                    rejected: "No.".into(),
                })
                .with_domain("docs"),
            );
        }
    }
    out
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch("trained");
        let path = model_path();
        let info = sam_models::BaseModel::open(&path).unwrap();
        let cfg =
            sam_prep::prepare::PrepConfig { max_seq_len: 64, split: "80,10,10".parse().unwrap(), ..Default::default() };
        let input = sam_prep::prepare::Input { examples: rows(), sources: vec![] };
        let prepared = sam_prep::prepare::Preparer::new(&info, cfg).unwrap().prepare(&input, |_| {}).unwrap();
        let data = dir.join("data");
        prepared.write(&data).unwrap();
        let ds = sam_prep::cache::PreparedData::open(&data).unwrap();
        assert!(!ds.sft(Split::Train).unwrap().is_empty());
        assert!(!ds.sft(Split::Test).unwrap().is_empty() && !ds.preference(Split::Test).unwrap().is_empty());
        let mut tc = TrainConfig::default();
        tc.lora.rank = 4;
        tc.lora.alpha = 8.0;
        tc.optim.lr = 2e-3;
        tc.batch.batch_size = 2;
        tc.batch.grad_accum = 1;
        tc.batch.max_seq_len = 64;
        tc.duration = sam_trainer::Duration::Iters(6);
        tc.eval_every = 1000;
        tc.compute.recompute_every = 0;
        tc.batch.pad_id = info.special_tokens().eos.as_ref().map(|t| t.id).unwrap_or(0);
        let mut spec = sam_trainer::JobSpec::new(path.as_path(), &data, sam_trainer::JobMode::Sft);
        spec.train = tc;
        spec.max_valid_examples = Some(0);
        spec.eval_examples = None;
        let job = sam_trainer::Job::create(&dir.join("runs"), "sft", spec).unwrap();
        let outcome = job.run(&mut sam_trainer::NoopObserver, Default::default()).unwrap();
        let model = outcome.model.unwrap();
        let adapter = dir.join("adapter");
        sam_trainer::save_adapter(&model, &adapter, AdapterFormat::Peft, Some("SmolLM2-135M-Instruct")).unwrap();
        Trained { data, adapter }
    })
}

/// A copy of a PEFT adapter with every LoRA B matrix multiplied by `k`.
fn scaled_copy(from: &Path, to: &Path, k: f64) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("adapter_config.json"), to.join("adapter_config.json")).unwrap();
    let t = candle_core::safetensors::load(from.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let t: std::collections::HashMap<String, candle_core::Tensor> = t
        .into_iter()
        .map(|(n, x)| {
            let x = if n.contains("lora_B") { (x * k).unwrap() } else { x };
            (n, x)
        })
        .collect();
    candle_core::safetensors::save(&t, to.join("adapter_model.safetensors")).unwrap();
}

/// A PEFT adapter with random A and B on q and v of the last `layers`
/// layers of a model of configuration `c`, written without a model.
fn random_adapter(dir: &Path, c: &ModelConfig, layers: usize, seed: u64) {
    let dev = candle_core::Device::Cpu;
    let r = 2;
    let mut t = std::collections::HashMap::new();
    for l in c.num_layers - layers..c.num_layers {
        for (m, out) in [("q_proj", c.num_heads * c.head_dim), ("v_proj", c.num_kv_heads * c.head_dim)] {
            let p = format!("base_model.model.model.layers.{l}.self_attn.{m}");
            let a = candle_core::Tensor::randn(0f32, 0.02, (r, c.hidden_size), &dev).unwrap();
            let b = (candle_core::Tensor::randn(0f32, 0.02, (out, r), &dev).unwrap() * (1.0 + seed as f64)).unwrap();
            t.insert(format!("{p}.lora_A.weight"), a);
            t.insert(format!("{p}.lora_B.weight"), b);
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&t, dir.join("adapter_model.safetensors")).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]});
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
}

fn settings() -> GateSettings {
    GateSettings {
        prompts: vec!["What does `git status` show?".into(), "What is a unit test?".into()],
        max_new_tokens: 16,
        ..Default::default()
    }
}

fn kinds(v: &sam_deploy::Verdict) -> Vec<String> {
    v.failures().iter().map(|r| serde_json::to_value(r).unwrap()["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn trained_is_promoted_untrained_damaged_and_foreign_shapes_are_refused() {
    let t = trained();
    let home = scratch("acceptance");
    let reg = Registry::open(home.join("registry")).unwrap();
    let path = model_path();
    let mut ev = ModelEvaluator::load(&path, EvalOptions { max_seq_len: 64, ..Default::default() }).unwrap();
    let base = BaseRef::of(&path, &mut ev).unwrap();
    // The slot's fingerprint names the model's files (sam-models'), not
    // how the trainer holds the weights in memory: an upgrade of the trainer
    // (a new layout, weights kept quantized) leaves a slot usable.
    let files = sam_models::BaseModel::open(&path).unwrap().fingerprint().unwrap();
    assert_eq!(base.fingerprint, files, "the slot's base fingerprint is its files'");
    let golden = registry::golden_from_dataset(&t.data).unwrap();
    reg.create_slot("smol", base, &golden, "test split of the trained dataset").unwrap();
    let s = settings();
    let gates = gate::standard(&s);
    let register = |name: &str, dir: &Path| -> sam_deploy::Version {
        let r = Registration { dataset: Some(t.data.clone()), ..Registration::folder(dir) };
        let (v, new) = reg.register("smol", &r).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(new);
        v
    };

    // Another base shape: refused at registration, nothing written.
    let mut other = ev.model_config().clone();
    (other.hidden_size, other.num_heads, other.num_kv_heads, other.head_dim) = (256, 4, 2, 64);
    let foreign = home.join("foreign");
    random_adapter(&foreign, &other, 2, 0);
    let err = reg.register("smol", &Registration::folder(&foreign)).unwrap_err().to_string();
    assert!(err.contains("another base shape"), "{err}");
    assert!(reg.versions("smol").unwrap().is_empty());

    // Untrained (B = 0): does not beat production (the base) by the margin.
    let untrained_dir = home.join("untrained");
    scaled_copy(&t.adapter, &untrained_dir, 0.0);
    let untrained = register("untrained", &untrained_dir);
    let data = reg.trial_data(&untrained, None, &s.prompts).unwrap();
    let rec = reg.judge(&untrained, &gates, &mut ev, &data).unwrap();
    assert!(!rec.verdict.pass);
    assert_eq!(rec.against, "base");
    assert_eq!(kinds(&rec.verdict), ["not_better"], "{}", rec.verdict.summary());
    assert!(rec.verdict.summary().contains("does not beat production by the margin"), "{}", rec.verdict.summary());
    let err = reg.promote(&untrained, &Approval::Verdict(rec)).unwrap_err();
    assert!(matches!(err, sam_deploy::Error::Refused { .. }), "{err}");
    assert_eq!(reg.aliases("smol").unwrap().production(), None, "a refused promote moves nothing");

    // Trained: promoted over the base, with its numbers.
    let good = register("trained", &t.adapter);
    let data = reg.trial_data(&good, None, &s.prompts).unwrap();
    let rec = reg.judge(&good, &gates, &mut ev, &data).unwrap();
    assert!(rec.verdict.pass, "{:#?}", rec.verdict);
    let n = &rec.verdict.numbers;
    for k in ["candidate_loss", "candidate_perplexity", "production_loss", "production_perplexity", "improvement"] {
        assert!(n.contains_key(&format!("beats_production.{k}")), "{k} missing: {n:?}");
    }
    assert!(n["beats_production.improvement"] >= s.margin);
    assert!(n["preference_win_rate.pairs"] >= 1.0, "held-out pairs were compared: {n:?}");
    let e = reg.promote(&good, &Approval::Verdict(rec.clone())).unwrap();
    assert_eq!((e.action, e.to.as_deref(), e.from.as_deref()), (Action::Promote, Some(good.id.as_str()), None));
    assert_eq!(reg.resolve("smol", None).unwrap().adapter_dir, Some(reg.adapter_dir(&good)));

    // Damaged (trained weights scaled up until it babbles): refused for the
    // golden set and by the generation check, against the trained production.
    let damaged_dir = home.join("damaged");
    scaled_copy(&t.adapter, &damaged_dir, 50.0);
    let damaged = register("damaged", &damaged_dir);
    let data = reg.trial_data(&damaged, None, &s.prompts).unwrap();
    let rec_bad = reg.judge(&damaged, &gates, &mut ev, &data).unwrap();
    assert!(!rec_bad.verdict.pass);
    assert_eq!(rec_bad.against, good.id);
    let k = kinds(&rec_bad.verdict);
    assert!(k.contains(&"golden_regression".to_string()), "{k:?}");
    assert!(
        rec_bad.verdict.failures().iter().any(|r| matches!(
            r,
            Reason::Babble { .. } | Reason::Looping { .. } | Reason::EmptyAnswer { .. } | Reason::TemplateLeak { .. }
        )),
        "the generation check refuses it: {}",
        rec_bad.verdict.summary()
    );
    // A verdict taken against another production is stale.
    reg.rollback("smol", Some("base"), "test").unwrap();
    let err = reg.promote(&good, &Approval::Verdict(rec)).map(|_| ());
    assert!(err.is_ok(), "the trained verdict was taken against the base, which is production again: {err:?}");
    let mut stale = rec_bad.clone();
    stale.verdict.pass = true;
    reg.rollback("smol", Some("base"), "test").unwrap();
    let err = reg.promote(&damaged, &Approval::Verdict(stale)).unwrap_err();
    assert!(matches!(err, sam_deploy::Error::StaleVerdict { .. }), "{err}");

    // Every verdict, pass or refuse, is in the history and stored with its version.
    let h = reg.history("smol").unwrap();
    let gates_seen: Vec<(String, bool)> = h
        .iter()
        .filter(|e| e.action == Action::Gate)
        .map(|e| (e.version.clone().unwrap(), e.verdict.as_ref().unwrap().pass))
        .collect();
    assert_eq!(gates_seen, [(untrained.id.clone(), false), (good.id.clone(), true), (damaged.id.clone(), false)]);
    assert_eq!(reg.verdicts(&damaged).unwrap().len(), 1);
    let seqs: Vec<u64> = h.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=h.len() as u64).collect::<Vec<_>>());
}

/// Entry point of the promoting child process of the kill test: runs only
/// when `SAM_DEPLOY_KILL_CHILD` names a registry, and then promotes, rolls
/// back and moves the canary in a loop until it is killed.
#[test]
fn child_promoter() {
    let Some(root) = std::env::var_os("SAM_DEPLOY_KILL_CHILD") else { return };
    let reg = Registry::open(PathBuf::from(root)).unwrap();
    let vs = reg.versions("kill").unwrap();
    let forced = Approval::Forced("kill test".into());
    for i in 0usize.. {
        let v = &vs[i % vs.len()];
        let res = match i % 5 {
            0 | 3 => reg.promote(v, &forced),
            1 => reg.start_canary(&vs[(i + 1) % vs.len()], 5.0 + (i % 50) as f64, &forced),
            2 => reg.rollback("kill", None, "kill test"),
            _ => reg.set_alias("kill", "mine", Some(v)),
        };
        match res {
            Ok(_) | Err(sam_deploy::Error::State(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Every alias on a whole version, the history whole and gap-free; returns
/// the adapter folders the aliases point to.
fn check_consistent(reg: &Registry) -> Vec<PathBuf> {
    let a = reg.aliases("kill").unwrap();
    let mut dirs = Vec::new();
    for (name, id) in &a.aliases {
        let v = reg.find(id, Some("kill")).unwrap_or_else(|e| panic!("alias {name}: {e}"));
        reg.verify(&v).unwrap_or_else(|e| panic!("alias {name}: {e}"));
        dirs.push(reg.adapter_dir(&v));
    }
    if let Some(c) = &a.canary {
        assert_eq!(a.get(CANARY), Some(c.version.as_str()));
    }
    let raw = std::fs::read_to_string(reg.root().join("kill/history.jsonl")).unwrap_or_default();
    for (i, line) in raw.lines().enumerate() {
        serde_json::from_str::<sam_deploy::HistoryEntry>(line)
            .unwrap_or_else(|e| panic!("history line {}: {e}", i + 1));
    }
    let h = reg.history("kill").unwrap();
    let seqs: Vec<u64> = h.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=h.len() as u64).collect::<Vec<_>>(), "history has a gap");
    let last_move = h.iter().rev().find(|e| e.action != Action::Register && e.action != Action::Gate);
    if let Some(last) = last_move {
        assert_eq!(last.aliases, a.aliases.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>());
    }
    dirs
}

/// A slot named `kill` on the test model's shape (not loaded) with
/// `versions` registered random adapters.
fn kill_slot(name: &str, versions: usize) -> (Registry, Vec<sam_deploy::Version>) {
    let home = scratch(name);
    let reg = Registry::open(home.join("registry")).unwrap();
    let path = model_path();
    let cfg = sam_trainer::read_config(&path).unwrap();
    let base = BaseRef { id: "smol".into(), path, fingerprint: "not-loaded".into(), config: cfg.clone() };
    reg.create_slot("kill", base, &[], "none").unwrap();
    let vs = (0..versions)
        .map(|i| {
            let d = home.join(format!("a{i}"));
            random_adapter(&d, &cfg, 2, i as u64);
            reg.register("kill", &Registration::folder(&d)).unwrap().0
        })
        .collect();
    (reg, vs)
}

#[test]
fn a_promoting_process_killed_at_random_points_leaves_every_alias_whole() {
    let (reg, _) = kill_slot("kill", 3);
    let exe = std::env::current_exe().unwrap();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut samples = Vec::new();
    for round in 0..200 {
        let child = std::process::Command::new(&exe)
            .args(["--exact", "child_promoter", "--nocapture", "--test-threads", "1"])
            .env("SAM_DEPLOY_KILL_CHILD", reg.root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(std::time::Duration::from_micros(2_000 + rng % 40_000));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.code().is_none(),
            "round {round}: the child ended by itself: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dirs = check_consistent(&reg);
        if round % 70 == 69 {
            samples.extend(dirs.into_iter().take(1));
        }
    }
    // A writer repairs what a kill left (the last move's history entry).
    drop(reg.lock("kill").unwrap());
    let h = reg.history("kill").unwrap();
    assert!(h.len() > 50, "the child made progress: {} entries", h.len());
    let raw = std::fs::read_to_string(reg.root().join("kill/history.jsonl")).unwrap();
    assert_eq!(raw.lines().count(), h.len(), "the file holds every entry after the repair");
    // A sample of what aliases pointed to loads and generates.
    assert!(!samples.is_empty());
    let mut model = sam_trainer::load_model(&model_path(), &Default::default()).unwrap();
    for d in samples {
        sam_trainer::load_adapter(&mut model, &d).unwrap();
        let cfg = sam_trainer::GenerateConfig { max_new_tokens: 4, ..Default::default() };
        let out = sam_trainer::generate(&model, &[1, 2, 3], &cfg, |_| true).unwrap();
        assert_eq!(out.len(), 4);
    }
}

#[test]
fn two_promotes_at_once_are_serialised() {
    let (reg, vs) = kill_slot("serial", 3);
    reg.promote(&vs[0], &Approval::Forced("start".into())).unwrap();
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for v in &vs[1..] {
            let (reg, barrier) = (reg.clone(), &barrier);
            s.spawn(move || {
                barrier.wait();
                reg.promote(v, &Approval::Forced("race".into())).unwrap();
            });
        }
    });
    let h: Vec<_> = reg.history("kill").unwrap().into_iter().filter(|e| e.action == Action::Promote).collect();
    assert_eq!(h.len(), 3);
    // The second promote saw the first one's result: a chain, not two moves from vs[0].
    assert_eq!(h[1].from.as_deref(), Some(vs[0].id.as_str()));
    assert_eq!(h[2].from, h[1].to);
    assert!(h[1].seq < h[2].seq);
    let a = reg.aliases("kill").unwrap();
    assert_eq!(a.production(), h[2].to.as_deref());
    assert_eq!(a.get(PREVIOUS), h[1].to.as_deref());
}

#[test]
fn canary_routing_is_sticky_and_feedback_decides_it() {
    let (reg, vs) = kill_slot("canary", 3);
    let forced = Approval::Forced("test".into());
    reg.promote(&vs[0], &forced).unwrap();
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let routed = |reg: &Registry| -> Vec<bool> {
        keys.iter().map(|k| reg.resolve("kill", Some(k)).unwrap().route == CANARY).collect()
    };
    reg.start_canary(&vs[1], 10.0, &forced).unwrap();
    let at10 = routed(&reg);
    let n10 = at10.iter().filter(|&&c| c).count();
    assert!((900..=1100).contains(&n10), "{n10} of 10000 keys at 10%");
    let e = reg.start_canary(&vs[1], 20.0, &forced).unwrap();
    assert!(e.why.contains("10% → 20%"), "{}", e.why);
    let at20 = routed(&reg);
    let n20 = at20.iter().filter(|&&c| c).count();
    assert!((1900..=2100).contains(&n20), "{n20} of 10000 keys at 20%");
    assert!(at10.iter().zip(&at20).all(|(a, b)| !a || *b), "raising the percentage keeps every key that was in");
    let r = reg.resolve("kill", Some(&keys[at20.iter().position(|&c| c).unwrap()])).unwrap();
    assert_eq!((r.version.as_str(), r.adapter_dir.is_some()), (vs[1].id.as_str(), true));

    // Feedback through the real capture API into a real store.
    let home = reg.root().parent().unwrap().to_path_buf();
    let store = sam_store::SqliteStore::open(home.join("store.db")).unwrap();
    let cfg = sam_capture::capture::CaptureConfig { spool: Some(home.join("spool.jsonl")), ..Default::default() };
    let mut cap = sam_capture::capture::Capturer::new(store, Default::default(), cfg);
    let since = reg.aliases("kill").unwrap().canary.unwrap().since;
    let tag = |event: Capture, v: &str| CaptureEvent { event, adapter_version: Some(v.to_string()) };
    for i in 0..24 {
        let prompt = format!("How do I list the files of folder number {i}?");
        let good = Capture::Feedback { prompt: prompt.clone(), response: format!("Run `ls dir{i}`.") };
        cap.capture_event(tag(good, &vs[0].id)).unwrap();
        let canary_event = if i < 6 {
            Capture::Feedback { prompt: format!("{prompt} (canary)"), response: format!("Use `ls dir{i}` there.") }
        } else {
            Capture::Correction {
                prompt: format!("{prompt} (canary)"),
                wrong: "Use the rm command.".into(),
                correction: format!("Run `ls dir{i}`."),
            }
        };
        cap.capture_event(tag(canary_event, &vs[1].id)).unwrap();
    }
    cap.flush().unwrap();
    let counts = sam_capture::capture::feedback_by_version(cap.store(), Some(since)).unwrap();
    let j = |v: &str| counts.get(v).map(|f| Judgements { good: f.good, bad: f.bad }).unwrap_or_default();
    assert_eq!(j(&vs[0].id), Judgements { good: 24, bad: 0 });
    assert_eq!(j(&vs[1].id), Judgements { good: 6, bad: 18 });
    let s = sam_deploy::CanarySettings::default();
    let (d, e) = reg.decide_canary("kill", j(&vs[1].id), j(&vs[0].id), &s).unwrap();
    assert!(matches!(d, CanaryDecision::Rollback { .. }), "{d:?}");
    let e = e.unwrap();
    assert_eq!(e.action, Action::CanaryRollback);
    assert!(e.why.contains("below production"), "{}", e.why);
    assert!(routed(&reg).iter().all(|c| !c), "all traffic back on production");
    assert_eq!(reg.resolve("kill", Some("user-1")).unwrap().version, vs[0].id);
    assert_eq!(reg.history("kill").unwrap().last().unwrap().action, Action::CanaryRollback);

    // A good canary is promoted by its feedback.
    reg.start_canary(&vs[2], 10.0, &forced).unwrap();
    let (d, e) =
        reg.decide_canary("kill", Judgements { good: 19, bad: 1 }, Judgements { good: 22, bad: 2 }, &s).unwrap();
    assert!(matches!(d, CanaryDecision::Promote { .. }), "{d:?}");
    assert_eq!(e.unwrap().action, Action::CanaryPromote);
    let a = reg.aliases("kill").unwrap();
    assert_eq!(
        (a.production(), a.get(PREVIOUS), a.canary.is_none()),
        (Some(vs[2].id.as_str()), Some(vs[0].id.as_str()), true)
    );
}
