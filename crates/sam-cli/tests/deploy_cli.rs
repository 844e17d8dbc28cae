//! `sam deploy`, run as a user runs it, on the test model: a run folder is
//! registered (creating the slot and its golden set), an untrained copy is
//! refused by the gate (exit 1, aliases unchanged), a forced promote is
//! recorded, the canary routes by key and is rolled back by captured
//! feedback, and the production adapter exports in mlx-lm's layout.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn sam(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam"))
        .args(args)
        .env("SAM_HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = sam(home, args);
    assert!(out.status.success(), "sam {args:?} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn json(home: &Path, args: &[&str]) -> Value {
    let out = ok(home, &[&["--json"], args].concat());
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("sam {args:?}: {e}: {out}"))
}

/// A copy of a PEFT adapter with every LoRA B matrix zero (an untrained adapter).
fn zeroed_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("adapter_config.json"), to.join("adapter_config.json")).unwrap();
    let t = candle_core::safetensors::load(from.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let t: std::collections::HashMap<String, candle_core::Tensor> = t
        .into_iter()
        .map(|(n, x)| {
            let x = if n.contains("lora_B") { x.zeros_like().unwrap() } else { x };
            (n, x)
        })
        .collect();
    candle_core::safetensors::save(&t, to.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn register_gate_promote_canary_rollback_and_export() {
    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = model.to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // A short generation check keeps the test quick; the file is read as a user writes it.
    std::fs::write(
        sam_home::SamHome::new(h).config_file(),
        "[deploy]\ndefault_slot = \"smol\"\nmax_seq_len = 64\n\n[deploy.gate]\nprompts = [\"What is a unit test?\"]\nmax_new_tokens = 8\n\n[deploy.canary]\nmin_judgements = 4\n",
    )
    .unwrap();
    let rows: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"What does f{i} return?"}},{{"role":"assistant","content":"It returns {i} plus one."}}],"domain":"code"}}"#
            )
        })
        .collect();
    std::fs::write(h.join("rows.jsonl"), rows.join("\n") + "\n").unwrap();
    let data = h.join("data");
    let (rows_path, data_s) = (h.join("rows.jsonl"), data.to_str().unwrap().to_string());
    ok(
        h,
        &[
            "prep",
            "--model",
            model,
            "--from",
            rows_path.to_str().unwrap(),
            "--out",
            &data_s,
            "--max-seq-len",
            "64",
            "--split",
            "80,10,10",
        ],
    );
    let run = sam_home::SamHome::new(h).run_dir("r1");
    let run_s = run.to_str().unwrap();
    let train = [
        "train",
        "--data",
        &data_s,
        "--model",
        model,
        "--out",
        run_s,
        "--iters",
        "2",
        "--batch",
        "2",
        "--grad-accum",
        "1",
        "--rank",
        "4",
        "--max-seq-len",
        "64",
        "--eval-every",
        "100",
        "--checkpoint-every",
        "0",
        "--lr",
        "1e-3",
    ];
    ok(h, &train);

    // Nothing yet.
    let st = json(h, &["deploy", "status"]);
    assert_eq!(st["slots"].as_array().unwrap().len(), 0);
    assert!(ok(h, &["deploy", "--help"]).contains("promote"));

    // The run folder registers into a new slot of its base model.
    let v = json(h, &["deploy", "register", run_s, "--tag", "note=first"]);
    let trained = v["version"].as_str().unwrap().to_string();
    assert_eq!((v["slot"].as_str(), v["new"].as_bool(), v["run_id"].as_str()), (Some("smol"), Some(true), Some("r1")));
    let again = json(h, &["deploy", "register", run_s]);
    assert_eq!((again["version"].as_str(), again["new"].as_bool()), (Some(trained.as_str()), Some(false)));

    // An untrained copy: refused (exit 1) with the reason, aliases unchanged.
    let zero = h.join("zero");
    zeroed_copy(&run.join("adapter"), &zero);
    let z = json(h, &["deploy", "register", zero.to_str().unwrap(), "--data", &data_s]);
    let untrained = z["version"].as_str().unwrap().to_string();
    let out = sam(h, &["deploy", "gate", &untrained]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("does not beat production by the margin"), "{}", text(&out));
    let out = sam(h, &["deploy", "promote", &untrained]);
    assert!(!out.status.success(), "{}", text(&out));
    let st = json(h, &["deploy", "status"]);
    let aliases = &st["slots"][0]["aliases"];
    for name in ["production", "canary", "previous"] {
        assert!(aliases.get(name).is_some_and(Value::is_null), "{name} in {aliases}");
    }

    // A forced promote is recorded as forced; `which` names the folder to load.
    let p = json(h, &["deploy", "promote", &trained[..6], "--force", "--reason", "test"]);
    assert_eq!(p["version"], trained.as_str());
    let st = json(h, &["deploy", "status"]);
    assert_eq!(st["slots"][0]["aliases"]["production"]["version"], trained.as_str());
    let dir = ok(h, &["deploy", "which"]);
    assert!(Path::new(dir.trim()).join("adapter_model.safetensors").is_file(), "{dir}");
    // `list` names each version with the aliases on it and its last verdict.
    let l = json(h, &["deploy", "list"]);
    let vs = l["slots"][0]["versions"].as_array().unwrap();
    assert_eq!(vs.len(), 2, "{l}");
    assert_eq!(
        (vs[0]["version"].as_str(), &vs[0]["aliases"]),
        (Some(trained.as_str()), &serde_json::json!(["production"]))
    );
    assert_eq!(
        (vs[1]["version"].as_str(), &vs[1]["last_verdict"]["pass"]),
        (Some(untrained.as_str()), &Value::Bool(false))
    );
    let table = ok(h, &["deploy", "list"]);
    assert!(table.contains(&format!("  #1   {trained}  ")) && table.contains("refused vs base"), "{table}");

    // Canary: keys route by their bucket; feedback rolls it back.
    json(h, &["deploy", "canary", &untrained, "--percent", "50", "--force"]);
    let routes: Vec<String> = (0..40)
        .map(|i| json(h, &["deploy", "which", "--key", &format!("user-{i}")])["version"].as_str().unwrap().to_string())
        .collect();
    assert!(routes.contains(&trained) && routes.contains(&untrained), "{routes:?}");
    let st = json(h, &["deploy", "status"]);
    assert_eq!(st["slots"][0]["aliases"]["canary"]["version"], untrained.as_str());
    assert_eq!(st["slots"][0]["aliases"]["canary"]["percent"], 50.0);
    for i in 0..4 {
        let prompt = format!("what is f{i}?");
        ok(
            h,
            &[
                "capture",
                "feedback",
                "--prompt",
                &prompt,
                "--response",
                &format!("f{i} is a function."),
                "--adapter-version",
                &trained,
            ],
        );
        let wrong = [
            "capture",
            "correction",
            "--prompt",
            &format!("{prompt} (canary)"),
            "--wrong",
            "No idea.",
            "--correction",
            &format!("f{i} is a function."),
            "--adapter-version",
            &untrained,
        ];
        ok(h, &wrong);
    }
    let d = json(h, &["deploy", "canary-check"]);
    assert_eq!(d["decision"]["decision"], "rollback", "{d}");
    let st = json(h, &["deploy", "status"]);
    assert!(st["slots"][0]["aliases"]["canary"].is_null(), "{st}");

    // The history holds every verdict and move.
    let hist = json(h, &["deploy", "history"]);
    let actions: Vec<&str> = hist.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["register", "register", "gate", "gate", "promote", "canary", "canary_rollback"], "{hist}");
    let entries = hist.as_array().unwrap();
    assert_eq!(entries[2]["verdict"]["pass"], false);
    assert!(entries[4]["forced"].as_bool().unwrap());
    assert!(entries[6]["why"].as_str().unwrap().contains("below production"), "{}", entries[6]);
    assert!(ok(h, &["deploy", "history"]).contains("canary_rollback"));

    // Export production in mlx-lm's layout; sam loads it back.
    let out = h.join("mlx");
    let e = json(h, &["deploy", "export", "--format", "mlx", "--out", out.to_str().unwrap()]);
    assert_eq!(e["version"], trained.as_str());
    assert!(out.join("adapters.safetensors").is_file() && out.join("adapter_config.json").is_file());
    let mut m = sam_trainer::load_model(Path::new(model), &Default::default()).unwrap();
    sam_trainer::load_adapter(&mut m, &out).unwrap();

    // Rollback: no previous version, so it names the way out; --to base works.
    let out = sam(h, &["deploy", "rollback"]);
    assert!(!out.status.success() && text(&out).contains("--to base"), "{}", text(&out));
    json(h, &["deploy", "rollback", "--to", "base"]);
    let st = json(h, &["deploy", "status"]);
    assert!(st["slots"][0]["aliases"]["production"].is_null());
    assert_eq!(st["slots"][0]["aliases"]["previous"]["version"], trained.as_str());
}
