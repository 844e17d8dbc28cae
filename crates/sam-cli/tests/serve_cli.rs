//! `sam serve`, run as a user runs it (the `sam` binary as a child), over
//! real HTTP on loopback: captures land in the store redacted; every write
//! route and every route returning example text answers 401 without the
//! token; bad bodies get 4xx JSON naming the field; oversize bodies 413; the
//! OpenAPI document parses and lists every route; a capture acknowledged
//! just before SIGKILL is in the store after a restart; SIGTERM stops the
//! server while a live event stream is open; and the dashboard, with a real
//! store and a real training run on the test model, renders its charts in
//! headless Chromium without console errors (screenshot under `target/`).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;
use common::{cmd, ok, prepared};
use std::time::{Duration, Instant};

use sam_home::SamHome;
use sam_pipeline::event::EventLog;
use sam_pipeline::{Event, PipelineState};
use sam_runs::{EventKind, MetricRecord, RunDir, RunStatus};
use serde_json::{Value, json};

/// A running `sam serve` on a free port of 127.0.0.1.
struct Served {
    child: Child,
    url: String,
    token: String,
}

impl Served {
    fn start(home: &Path) -> Served {
        let mut child = cmd(home, &["--json", "serve", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("sam serve did not start: {err}");
        }
        let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let token_file = PathBuf::from(started["token_file"].as_str().unwrap());
        assert!(token_file.starts_with(home), "{token_file:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the token file must be private");
        }
        let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
        Served { child, url: started["url"].as_str().unwrap().to_string(), token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn get(&self, path: &str) -> Res {
        call(self.url(path), "GET", Some(&self.token), None, None)
    }

    fn post(&self, path: &str, body: &str) -> Res {
        call(self.url(path), "POST", Some(&self.token), Some("application/json"), Some(body))
    }

    fn signal(&mut self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Res {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    body: String,
}

impl Res {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// An error answer: its status, and that it is our JSON error shape.
    fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.content_type.starts_with("application/json"), "{}: {}", self.content_type, self.body);
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn call(url: String, method: &str, token: Option<&str>, content_type: Option<&str>, body: Option<&str>) -> Res {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let res = match method {
        "GET" => {
            let mut r = a.get(&url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        _ => {
            let mut r = a.post(&url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            if let Some(c) = content_type {
                r = r.header("Content-Type", c);
            }
            r.send(body.unwrap_or(""))
        }
    };
    let mut res = res.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let header = |n: &str| res.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (content_type, www_authenticate) = (header("content-type").unwrap_or_default(), header("www-authenticate"));
    Res {
        status: res.status().as_u16(),
        content_type,
        www_authenticate,
        body: res.body_mut().read_to_string().unwrap(),
    }
}

/// A fresh home whose `sam.toml` makes limits small and streams quick.
fn home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(SamHome::new(home.path()).config_file(), "[serve]\nmax_body_bytes = 8192\nsse_poll_ms = 50\n")
        .unwrap();
    home
}

const EMAIL: &str = "jane.doe@corp.example";
const AWS_KEY: &str = "AKIAQ7QK3M2XW2RT5PLB"; // base32 after the prefix, as real key ids are

/// One valid body per capture route, with secrets in them.
fn captures() -> Vec<(&'static str, Value)> {
    vec![
        (
            "escalation",
            json!({"prompt": "Why does cargo rebuild everything after a git checkout?",
                   "local": "It does not.",
                   "remote": format!("Because mtimes change; ask {EMAIL} for the shared target-dir setup."),
                   "model": "big-remote"}),
        ),
        (
            "correction",
            json!({"prompt": "How do I list files by size?", "wrong": "ls -z",
                   "correction": "Use `ls -lS` to sort by size, largest first."}),
        ),
        (
            "preference",
            json!({"prompt": "Undo the last commit but keep the changes?", "chosen": "`git reset --soft HEAD~1` keeps them staged.",
                   "rejected": "`git reset --hard HEAD~1`."}),
        ),
        (
            "feedback",
            json!({"prompt": "Configure the deploy credentials",
                   "response": format!("Export AWS_ACCESS_KEY_ID={AWS_KEY} in the CI settings, never in the repository.")}),
        ),
        (
            "distill",
            json!({"prompt": "Explain what a WAL is in SQLite.", "system": "You are terse.",
                   "response": "A write-ahead log: commits append to it and readers keep reading the old pages.",
                   "model": "teacher"}),
        ),
    ]
}

/// Every route of the API, and whether it needs the token (every write and
/// every route that returns example text). The OpenAPI document must list
/// exactly these.
const ROUTES: &[(&str, &str, bool)] = &[
    ("post", "/v1/capture/escalation", true),
    ("post", "/v1/capture/correction", true),
    ("post", "/v1/capture/preference", true),
    ("post", "/v1/capture/feedback", true),
    ("post", "/v1/capture/distill", true),
    ("get", "/v1/examples", true),
    ("get", "/v1/stats", false),
    ("get", "/v1/stats/daily", false),
    ("get", "/v1/stats/sources", false),
    ("get", "/v1/runs", false),
    ("get", "/v1/runs/{id}", false),
    ("get", "/v1/runs/{id}/events", false),
    ("get", "/v1/deploy", false),
    ("get", "/v1/deploy/{slot}", false),
    ("get", "/v1/deploy/{slot}/history", false),
    ("get", "/healthz", false),
    ("get", "/v1/openapi.json", false),
    ("get", "/", false),
];

/// A finished run folder with a few metrics, as the trainer writes one.
fn finished_run(home: &Path, id: &str) {
    let run = RunDir::create(&SamHome::new(home).runs_dir(), id, &json!({"mode": "sft", "iters": 4})).unwrap();
    for step in 1..=4u64 {
        let m = MetricRecord {
            step,
            phase: Some("sft".into()),
            train_loss: Some(3.0 - step as f64 * 0.3),
            elapsed_s: Some(step as f64),
            ..Default::default()
        };
        run.append_metric(&m).unwrap();
    }
    run.append_metric(&MetricRecord { step: 4, phase: Some("sft".into()), val_loss: Some(2.1), ..Default::default() })
        .unwrap();
    run.append_event(EventKind::Completed, 4, "").unwrap();
    run.set_status(RunStatus::Completed, None, 4, 4).unwrap();
}

/// A pipeline run as sam-pipeline writes one: its state file and its typed
/// events through its `EventLog`, up to the first step of training.
fn pipeline_run(home: &Path, id: &str, train_run: &str, total_steps: usize) -> EventLog {
    let sh = SamHome::new(home);
    let marks = std::collections::BTreeMap::from([("train.run_id".to_string(), json!(train_run))]);
    let mut state = PipelineState {
        id: id.into(),
        started_at: 1_735_862_400,
        updated_at: 1_735_862_400,
        outcome: None,
        resumed_at: None,
        stages: Vec::new(),
        marks,
        baseline: Default::default(),
    };
    state.save(&sh).unwrap();
    let mut log = EventLog::open(sh.pipeline_events(id));
    let stages: Vec<String> = sam_pipeline::Pipeline::standard().names().iter().map(|s| s.to_string()).collect();
    let total = stages.len();
    log.append(&Event::RunStarted { id: id.into(), stages: stages.clone(), resumed_at: None });
    for (index, stage) in stages.iter().enumerate().take_while(|(_, s)| *s != "train") {
        log.append(&Event::StageStarted { stage: stage.clone(), index, total });
        let output = json!({});
        log.append(&Event::StageFinished { stage: stage.clone(), index, total, output, seconds: 1.5 });
    }
    let index = stages.iter().position(|s| s == "train").unwrap();
    log.append(&Event::StageStarted { stage: "train".into(), index, total });
    log.append(&Event::TrainPhase { phase: "sft".into(), total_steps });
    pipeline_step(&mut log, 1, total_steps);
    log
}

/// Training step `step` of `total`, one second each.
fn pipeline_step(log: &mut EventLog, step: usize, total_steps: usize) {
    let metrics = sam_trainer::StepMetrics {
        step,
        total_steps,
        loss: 2.5 / step as f64,
        lr: 1e-3,
        grad_norm: 1.0,
        tokens: 100,
        tokens_per_s: 100.0,
        step_s: 1.0,
        tokens_seen: 100 * step as u64,
        elapsed_s: step as f64,
    };
    log.append(&Event::TrainStep { phase: "sft".into(), metrics });
}

/// The rest of the run: training done, the last stages, `finished`.
fn pipeline_finish(log: &mut EventLog, home: &Path, id: &str, train_run: &str) {
    let stages = sam_pipeline::Pipeline::standard().names();
    let total = stages.len();
    let train = stages.iter().position(|s| *s == "train").unwrap();
    let metrics = sam_trainer::EvalMetrics { step: 8, loss: 1.9, perplexity: 1.9f64.exp(), best: true };
    log.append(&Event::Validation { phase: "sft".into(), metrics });
    let output = json!({"run_id": train_run});
    log.append(&Event::StageFinished { stage: "train".into(), index: train, total, output, seconds: 8.0 });
    for (index, stage) in stages.iter().enumerate().skip(train + 1) {
        log.append(&Event::StageStarted { stage: stage.to_string(), index, total });
        log.append(&Event::StageFinished { stage: stage.to_string(), index, total, output: json!({}), seconds: 0.5 });
    }
    let sh = SamHome::new(home);
    let summary: sam_pipeline::Summary = serde_json::from_value(json!({
        "id": id, "outcome": "trained", "skipped_stages": [], "stages": stages, "model": "m.gguf", "seconds": 20.0,
        "paths": {"home": home, "store": sh.store_db(), "state": sh.pipeline_state(), "events": sh.pipeline_events(id)},
    }))
    .unwrap();
    log.append(&Event::Finished(Box::new(summary)));
}

fn files_contain(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_file() && std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()) {
            hits.push(p);
        }
    }
    hits
}

#[test]
fn captures_land_redacted_and_every_route_guards_and_explains() {
    let home = home();
    let s = Served::start(home.path());

    // The aggregate views need no token, and start empty.
    for path in ["/v1/stats", "/v1/stats/daily", "/v1/stats/sources", "/v1/runs", "/healthz", "/"] {
        let r = call(s.url(path), "GET", None, None, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(s.get("/v1/stats").json()["total"], 0);
    assert_eq!(s.get("/healthz").json()["status"], "ok");

    // Each capture route stores its event, redacted, and says so.
    for (kind, body) in captures() {
        let r = s.post(&format!("/v1/capture/{kind}"), &body.to_string());
        assert_eq!(r.status, 201, "{kind}: {}", r.body);
        let ack = r.json();
        assert_eq!((ack["kind"].as_str(), ack["durable_in"].as_str()), (Some(kind), Some("store")), "{ack}");
        match kind {
            "escalation" => assert_eq!(ack["redacted"]["email"], 1, "{ack}"),
            "feedback" => assert_eq!(ack["redacted"]["aws_key"], 1, "{ack}"),
            _ => {}
        }
    }
    // The statistics were cached before the captures; the writes refreshed them.
    let stats = s.get("/v1/stats").json();
    assert_eq!(stats["total"], 5, "{stats}");
    let sources: BTreeSet<&str> =
        stats["by_source"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let expected = BTreeSet::from(["correction", "distillation", "escalation", "feedback", "preference"]);
    assert_eq!(sources, expected, "{stats}");
    let health = s.get("/v1/stats/sources").json();
    assert_eq!(health["sources"].as_array().unwrap().len(), 5, "{health}");
    assert!(!s.get("/v1/stats/daily").json()["days"].as_array().unwrap().is_empty());

    // The store holds the placeholders, never the secrets: not in any file
    // of the home (database, WAL, spool).
    let examples = s.get("/v1/examples?limit=10").json();
    assert_eq!(examples["total"], 5, "{examples}");
    let text = examples["examples"].to_string();
    assert!(text.contains("<EMAIL>") && !text.contains(EMAIL) && !text.contains(AWS_KEY), "{text}");
    for secret in [EMAIL, AWS_KEY] {
        assert_eq!(files_contain(home.path(), secret), Vec::<PathBuf>::new(), "{secret} reached the disk");
    }
    let only_feedback = s.get("/v1/examples?source=feedback").json();
    assert_eq!(only_feedback["total"], 1, "{only_feedback}");

    // Feedback (and corrections, escalations) carry the adapter version
    // that answered, for canary decisions.
    let body = json!({"prompt": "Show hidden files", "response": "Use `ls -a`.", "adapter_version": "3f2a9c01b7de"});
    assert_eq!(s.post("/v1/capture/feedback", &body.to_string()).status, 201);
    let tagged = s.get("/v1/examples?source=feedback").json();
    let versions: Vec<&Value> =
        tagged["examples"].as_array().unwrap().iter().map(|e| &e["metadata"]["adapter_version"]).collect();
    assert!(versions.contains(&&json!("3f2a9c01b7de")), "{tagged}");

    // 401 without the token, and with a wrong one, on every protected route.
    for (method, path, _) in ROUTES.iter().filter(|r| r.2) {
        let method = method.to_uppercase();
        for token in [None, Some("sam_0000000000000000000000000000000000000000000000000000000000000000")] {
            let r = call(s.url(path), &method, token, Some("application/json"), Some("{}"));
            let v = r.error(401, "unauthorized");
            assert_eq!(v["field"], "Authorization", "{v}");
            assert_eq!(r.www_authenticate.as_deref(), Some("Bearer realm=\"sam\""), "{method} {path}");
        }
    }

    // Bad bodies: 400 naming the field, 415 without JSON, 413 over the limit.
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        ("feedback", r#"{"prompt": "a", "response": "b""#, "invalid_json", None),
        ("feedback", r#"{"response": "b"}"#, "missing_field", Some("prompt")),
        ("feedback", r#"{"prompt": 7, "response": "b"}"#, "invalid_field", Some("prompt")),
        ("feedback", r#"{"prompt": "a", "response": "b", "rating": 5}"#, "unknown_field", Some("rating")),
        ("feedback", r#"{"prompt": "  ", "response": "b"}"#, "invalid_field", Some("prompt")),
        ("correction", r#"{"prompt": "a", "wrong": "b"}"#, "missing_field", Some("correction")),
        ("escalation", r#"{"prompt": "a", "remote": ""}"#, "invalid_field", Some("remote")),
        ("preference", r#"["a", "b", "c"]"#, "invalid_json", None),
    ];
    for (kind, body, code, field) in cases {
        let v = s.post(&format!("/v1/capture/{kind}"), body).error(400, code);
        assert_eq!(v["field"].as_str(), *field, "{kind} {body}: {v}");
        if let Some(f) = field {
            assert!(v["message"].as_str().unwrap().contains(f), "{v}");
        }
    }
    let r = call(s.url("/v1/capture/feedback"), "POST", Some(&s.token), Some("text/plain"), Some("{}"));
    r.error(415, "unsupported_media_type");
    let big = json!({"prompt": "a", "response": "x".repeat(10_000)}).to_string();
    let v = s.post("/v1/capture/feedback", &big).error(413, "payload_too_large");
    assert!(v["message"].as_str().unwrap().contains("8192"), "{v}");
    // The same without a Content-Length (chunked): refused while reading.
    let mut reader = std::io::Cursor::new(big.into_bytes());
    let mut res = agent()
        .post(s.url("/v1/capture/feedback"))
        .header("Authorization", format!("Bearer {}", s.token))
        .header("Content-Type", "application/json")
        .send(ureq::SendBody::from_reader(&mut reader))
        .unwrap();
    assert_eq!(res.status().as_u16(), 413, "{}", res.body_mut().read_to_string().unwrap());
    // Query parameters are named too.
    assert_eq!(s.get("/v1/examples?tier=platinum").error(400, "invalid_field")["field"], "tier");
    assert_eq!(s.get("/v1/runs/..%2Fx").error(400, "invalid_field")["field"], "id");
    s.get("/v1/runs/no-such-run").error(404, "not_found");

    // Unknown routes and methods are JSON too.
    s.get("/v2/nothing").error(404, "not_found");
    call(s.url("/v1/stats"), "POST", Some(&s.token), Some("application/json"), Some("{}"))
        .error(405, "method_not_allowed");
    assert_eq!(s.get("/v1/stats").json()["total"], 6, "nothing bad was stored");
}

#[test]
fn the_openapi_document_parses_and_lists_every_route() {
    let home = home();
    finished_run(home.path(), "20250101-000000-aaaa");
    let s = Served::start(home.path());
    let r = s.get("/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"), "{}", r.content_type);
    let spec = oas3::from_json(&r.body).unwrap_or_else(|e| panic!("not an OpenAPI document: {e}"));
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let listed: BTreeSet<(String, String)> =
        spec.operations().map(|(path, method, _)| (method.as_str().to_lowercase(), path)).collect();
    let expected: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(listed, expected, "the document must list exactly the server's routes");
    let doc = r.json();
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object(), "{}", doc["components"]);
    // Every protected route says so; no public one does.
    for (method, path, protected) in ROUTES {
        let op = &doc["paths"][path][method];
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(secured, *protected, "{method} {path}: {op}");
    }
    // And every route listed is served (not the 404 of unknown routes; an
    // unknown slot is a 404 of its own, naming the field).
    for (method, path, _) in ROUTES {
        let url = path.replace("{id}", "20250101-000000-aaaa").replace("{slot}", "none");
        let r = if *method == "get" { s.get(&url) } else { s.post(&url, "{}") };
        let unrouted = r.status == 404 && r.json()["field"].is_null();
        assert!(!unrouted && r.status < 500, "{method} {url}: {} {}", r.status, r.body);
    }
    assert_eq!(s.get("/v1/deploy/none").error(404, "not_found")["field"], "slot");
    assert_eq!(s.get("/v1/deploy").json()["slots"], json!([]));
}

/// Reads a server-sent event stream into `(event, data)` pairs until it ends.
fn read_events(url: &str) -> Vec<(String, Value)> {
    let mut res = agent().get(url).call().unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = res.body_mut().read_to_string().unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if let Some(e) = event {
            out.push((e, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

#[test]
fn runs_are_served_and_a_running_one_streams_live_until_it_ends() {
    let home = home();
    finished_run(home.path(), "20250101-000000-aaaa");
    let runs = SamHome::new(home.path()).runs_dir();
    let live = RunDir::create(&runs, "20250102-000000-bbbb", &json!({"iters": 6})).unwrap();
    live.set_status(RunStatus::Running, None, 0, 6).unwrap();
    let s = Served::start(home.path());

    let list = s.get("/v1/runs").json();
    let ids: Vec<&str> = list["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["20250102-000000-bbbb", "20250101-000000-aaaa"], "newest first: {list}");
    let done = s.get("/v1/runs/20250101-000000-aaaa").json();
    assert_eq!((done["status"].as_str(), done["step"].as_u64()), (Some("completed"), Some(4)), "{done}");
    assert_eq!(done["config"]["iters"], 4);
    assert_eq!(done["metrics"].as_array().unwrap().len(), 5);
    assert_eq!(done["best_val_loss"], 2.1);

    // A finished run replays and ends.
    let ev = read_events(&s.url("/v1/runs/20250101-000000-aaaa/events"));
    let kinds: Vec<&str> = ev.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "metric").count(), 5, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");

    // A running one: steps written while the stream is open arrive, with
    // the ETA, and the stream ends when the run completes.
    let url = s.url("/v1/runs/20250102-000000-bbbb/events");
    let reader = std::thread::spawn(move || read_events(&url));
    std::thread::sleep(Duration::from_millis(300));
    for step in 1..=6u64 {
        let mut m = MetricRecord {
            step,
            train_loss: Some(2.0 / step as f64),
            elapsed_s: Some(step as f64),
            ..Default::default()
        };
        m.extra.insert("eta_s".into(), json!((6 - step) as f64));
        live.append_metric(&m).unwrap();
        live.set_status(RunStatus::Running, None, step, 6).unwrap();
        std::thread::sleep(Duration::from_millis(120));
    }
    live.append_event(EventKind::Completed, 6, "").unwrap();
    live.set_status(RunStatus::Completed, None, 6, 6).unwrap();
    let ev = reader.join().unwrap();
    let steps: Vec<u64> = ev.iter().filter(|(e, _)| e == "metric").map(|(_, d)| d["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6], "{ev:?}");
    let etas: Vec<f64> = ev.iter().filter(|(e, _)| e == "status").filter_map(|(_, d)| d["eta_s"].as_f64()).collect();
    assert!(etas.len() >= 2 && etas.windows(2).all(|w| w[1] <= w[0]), "the ETA counts down live: {ev:?}");
    assert_eq!(ev.iter().rev().find(|(e, _)| e == "status").unwrap().1["status"], "completed");
    assert_eq!(ev.last().unwrap().0, "end");

    // A pipeline run: listed beside the training runs, shown with its
    // events, and followed live through its events file until it finishes.
    let pid = "20250103-000000-pipe";
    let mut log = pipeline_run(home.path(), pid, "20250102-000000-bbbb", 6);
    let list = s.get("/v1/runs").json();
    let p = &list["pipelines"][0];
    assert_eq!(
        (p["id"].as_str(), p["status"].as_str(), p["stage"].as_str()),
        (Some(pid), Some("running"), Some("train"))
    );
    assert_eq!((p["phase"].as_str(), p["step"].as_u64(), p["total_steps"].as_u64()), (Some("sft"), Some(1), Some(6)));
    assert_eq!(p["eta_s"], 5.0, "one second a step, five to go: {p}");
    assert_eq!(p["train_run"], "20250102-000000-bbbb", "{p}");
    let detail = s.get(&format!("/v1/runs/{pid}")).json();
    assert_eq!(detail["kind"], "pipeline", "{detail}");
    assert_eq!(detail["events_log"][0]["event"], "run_started", "{detail}");
    let url = s.url(&format!("/v1/runs/{pid}/events"));
    let reader = std::thread::spawn(move || read_events(&url));
    std::thread::sleep(Duration::from_millis(300));
    for step in 2..=6 {
        pipeline_step(&mut log, step, 6);
        std::thread::sleep(Duration::from_millis(120));
    }
    pipeline_finish(&mut log, home.path(), pid, "20250102-000000-bbbb");
    let ev = reader.join().unwrap();
    assert_eq!(ev.first().map(|e| e.0.as_str()), Some("status"), "{ev:?}");
    let tags: Vec<&str> =
        ev.iter().filter(|(e, _)| e == "pipeline").map(|(_, d)| d["event"].as_str().unwrap()).collect();
    assert_eq!(tags.first(), Some(&"run_started"), "{tags:?}");
    assert_eq!(tags.iter().filter(|t| **t == "train_step").count(), 6, "{tags:?}");
    assert_eq!(tags.last(), Some(&"finished"), "{tags:?}");
    let etas: Vec<f64> = ev.iter().filter(|(e, _)| e == "status").filter_map(|(_, d)| d["eta_s"].as_f64()).collect();
    assert!(etas.len() >= 2 && etas.windows(2).all(|w| w[1] <= w[0]), "the ETA counts down live: {ev:?}");
    let last = &ev.iter().rev().find(|(e, _)| e == "status").unwrap().1;
    assert_eq!((last["status"].as_str(), last["step"].as_u64()), (Some("trained"), Some(6)), "{last}");
    let stages = sam_pipeline::Pipeline::standard().names().len();
    assert_eq!(last["finished"].as_array().unwrap().len(), stages, "{last}");
    assert_eq!(ev.last().unwrap().0, "end");
    assert_eq!(s.get("/v1/runs").json()["pipelines"][0]["status"], "trained");
}

#[test]
fn an_acknowledged_capture_survives_sigkill_and_sigterm_stops_with_a_stream_open() {
    let home = home();
    let mut s = Served::start(home.path());
    // Eight clients capture as fast as they can; the server is killed while
    // they do. Every capture answered 201 must be in the store afterwards.
    let url = s.url("/v1/capture/feedback");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (url, token, stop) = (url.clone(), s.token.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let prompt = format!("client {c} capture {i}: how do I tail a log?");
                    let body = json!({"prompt": prompt, "response": format!("Run `tail -f app.log` (answer {i})")});
                    let r = agent()
                        .post(&url)
                        .header("Authorization", format!("Bearer {token}"))
                        .header("Content-Type", "application/json")
                        .send(body.to_string());
                    match r {
                        Ok(r) if r.status().as_u16() == 201 => acked.push(prompt),
                        _ => break, // the server is gone
                    }
                }
                acked
            })
        })
        .collect();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    s.signal(libc::SIGKILL);
    let _ = s.child.wait();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(acked.len() > 20, "too few captures before the kill to mean anything: {}", acked.len());
    drop(s);

    // Restarted, the server has every one of them.
    let runs = SamHome::new(home.path()).runs_dir();
    let live = RunDir::create(&runs, "20250102-000000-bbbb", &json!({})).unwrap();
    live.set_status(RunStatus::Running, None, 1, 10).unwrap();
    let mut s = Served::start(home.path());
    // (The restarted server drained any spool at start; read the store.)
    assert!(s.get("/v1/stats").json()["total"].as_u64().unwrap() >= acked.len() as u64);
    let store = sam_store::SqliteStore::open(SamHome::new(home.path()).store_db()).unwrap();
    let stored: BTreeSet<String> = sam_store::Examples::query(&store, &sam_store::Filter::default().source("feedback"))
        .unwrap()
        .into_iter()
        .filter_map(|ex| match ex.content {
            sam_schema::Content::Instruction { instruction, .. } => Some(instruction),
            _ => None,
        })
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|p| !stored.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged captures lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // SIGTERM with a live stream open: the server stops promptly and cleanly.
    let url = s.url("/v1/runs/20250102-000000-bbbb/events");
    let stream = std::thread::spawn(move || read_events(&url));
    std::thread::sleep(Duration::from_millis(300));
    s.signal(libc::SIGTERM);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "sam serve did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let ev = stream.join().unwrap();
    assert_eq!(ev.first().map(|e| e.0.as_str()), Some("status"), "{ev:?}");
}

#[test]
fn serve_refuses_a_remote_address_and_token_prints_the_token() {
    let home = home();
    let out = cmd(home.path(), &["serve", "--bind", "0.0.0.0", "--port", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-remote") && err.contains("0.0.0.0"), "{err}");
    let token = ok(home.path(), &["serve", "token"]);
    assert!(token.trim().starts_with("sam_"), "{token}");
    let again = ok(home.path(), &["serve", "token"]);
    assert_eq!(token, again);
    let rotated = ok(home.path(), &["serve", "token", "--rotate"]);
    assert_ne!(rotated, token);
}

/// A reader that has gone (`sam runs list | head`) ends a command quietly
/// by SIGPIPE, as it ends other Unix tools, not with a panic.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let home = home();
    for args in [&["runs", "list"][..], &["deploy", "status"], &["--json", "runs", "list"]] {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills both descriptors; each is owned once below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read);
        let out = cmd(home.path(), args).stdout(write).stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "sam {args:?}: {err}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "sam {args:?}: {:?} {err}", out.status);
    }
}

/// Debian's Chromium, as `scripts/setup-chromium.sh` installs it. A missing
/// browser fails the test: the dashboard check must not pass by not running.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("SAM_CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!("Chromium not found: run scripts/setup-chromium.sh (scripts/test.sh does), or set SAM_CHROMIUM");
}

/// Runs headless Chromium on `url` with `args`; returns stdout and the
/// console messages it logged (every `CONSOLE` line: this Chromium logs
/// errors, uncaught exceptions and failed loads there; the page logs
/// nothing else).
fn browse(url: &str, args: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run Chromium: {e}"));
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (stdout, stderr) = (read(Box::new(child.stdout.take().unwrap())), read(Box::new(child.stderr.take().unwrap())));
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s: {}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "chromium failed: {stderr}");
    let console = stderr.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    (stdout, console)
}

/// A copy of a PEFT adapter with every (f32) weight multiplied by `factor`:
/// another adapter of the same shape, without a second training.
fn scaled_copy(from: &Path, to: &Path, factor: f32) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("adapter_config.json"), to.join("adapter_config.json")).unwrap();
    let mut bytes = std::fs::read(from.join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for (name, t) in header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__") {
        assert_eq!(t["dtype"], "F32", "{name}");
        let (a, b) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
        for w in bytes[8 + n + a..8 + n + b].chunks_exact_mut(4) {
            let v = f32::from_le_bytes(w.try_into().unwrap()) * factor;
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(to.join("adapter_model.safetensors"), bytes).unwrap();
}

#[test]
fn the_dashboard_renders_its_charts_in_headless_chromium() {
    // The detector sees console errors on this Chromium (else the check
    // below could pass by seeing nothing).
    let (_, console) = browse("data:text/html,<p>x</p><script>undefinedFunction()</script>", &["--dump-dom"]);
    assert!(console.iter().any(|l| l.contains("undefinedFunction")), "console errors are not detected: {console:?}");

    let model = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = model.to_str().unwrap();
    let home = home();
    let h = home.path();
    // A quick gate: one short generation check.
    let mut cfg = std::fs::read_to_string(SamHome::new(h).config_file()).unwrap();
    cfg.push_str(
        "\n[deploy]\ndefault_slot = \"smol\"\nmax_seq_len = 64\n\n[deploy.gate]\nprompts = [\"What is a unit test?\"]\nmax_new_tokens = 8\n",
    );
    std::fs::write(SamHome::new(h).config_file(), cfg).unwrap();
    // Two finished training runs on the real test model, a few steps each.
    let data = prepared(h, model);
    let data = data.to_str().unwrap();
    let train = |out: &Path, iters: &str, seed: &str| {
        let out = out.to_str().unwrap();
        let args = [
            "train",
            "--data",
            data,
            "--model",
            model,
            "--out",
            out,
            "--iters",
            iters,
            "--eval-every",
            "2",
            "--max-valid",
            "4",
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--rank",
            "4",
            "--max-seq-len",
            "64",
            "--checkpoint-every",
            "0",
            "--save-every",
            "4",
            "--seed",
            seed,
            "--lr",
            "1e-3",
        ];
        ok(h, &args);
    };
    let first = SamHome::new(h).run_dir("20250101-000000-aaaa");
    train(&first, "4", "3");
    let trained_id = "20250101-000000-aaaa".to_string();
    assert_eq!(RunDir::open(&first).unwrap().status().unwrap().status, RunStatus::Completed);
    // A registry with two versions: the run's adapter, promoted (forced),
    // and a copy with its LoRA weights scaled, judged by the gate and put on
    // a 20% canary.
    let scaled = h.join("scaled");
    scaled_copy(&first.join("adapter"), &scaled, 1.5);
    let register = |args: &[&str]| {
        let out = ok(h, &[&["--json", "deploy", "register"], args].concat());
        serde_json::from_str::<Value>(out.trim()).unwrap()["version"].as_str().unwrap().to_string()
    };
    let v1 = register(&[first.to_str().unwrap()]);
    let v2 = register(&[scaled.to_str().unwrap(), "--data", data]);
    ok(h, &["deploy", "promote", &v1, "--force", "--reason", "first adapter"]);
    let gate = cmd(h, &["deploy", "gate", &v2]).output().unwrap();
    assert!(matches!(gate.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&gate.stderr));
    ok(h, &["deploy", "canary", &v2, "--percent", "20", "--force"]);
    // A run that is still going, to be followed live.
    let live = RunDir::create(&SamHome::new(h).runs_dir(), "29990101-000000-live", &json!({"iters": 8})).unwrap();
    live.append_metric(&MetricRecord {
        step: 1,
        phase: Some("sft".into()),
        train_loss: Some(2.5),
        ..Default::default()
    })
    .unwrap();
    live.set_status(RunStatus::Running, None, 1, 8).unwrap();
    // And a pipeline run training it, followed through its events file.
    let mut pipe = pipeline_run(h, "29990101-000000-pipe", "29990101-000000-live", 8);

    // A real store: captures through the server, then validated into tiers.
    let s = Served::start(h);
    for round in 0..3 {
        for (kind, mut body) in captures() {
            let p = body["prompt"].as_str().unwrap().to_string();
            body["prompt"] = json!(format!("{p} (case {round})"));
            assert_eq!(s.post(&format!("/v1/capture/{kind}"), &body.to_string()).status, 201);
        }
    }
    ok(h, &["validate"]);
    // A run folder whose status cannot be read: left out of the runs
    // listed and counted below, by the CLI and the server alike.
    let broken = SamHome::new(h).run_dir("20250101-000000-bad0");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("status.json"), "{\"status\": \"runn").unwrap();

    // The adapter lookup agrees with `sam deploy which`, key by key.
    for key in ["user-1", "user-2", "user-3", "user-4", "user-5"] {
        let served = s.get(&format!("/v1/deploy/smol?key={key}")).json();
        let cli: Value = serde_json::from_str(ok(h, &["--json", "deploy", "which", "--key", key]).trim()).unwrap();
        assert_eq!(served["version"], cli["version"], "{key}: {served} vs {cli}");
        assert!([v1.as_str(), v2.as_str()].contains(&served["version"].as_str().unwrap()), "{served}");
        let dir = PathBuf::from(served["adapter_dir"].as_str().unwrap());
        assert!(dir.join("adapter_model.safetensors").is_file(), "{served}");
    }
    assert_eq!(s.get("/v1/deploy/smol").json()["route"], "production");
    let history = s.get("/v1/deploy/smol/history").json();
    let actions: Vec<&str> =
        history["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["register", "register", "promote", "gate", "canary"], "{history}");
    let slots = s.get("/v1/deploy").json();
    assert_eq!(slots["slots"][0]["versions"].as_array().unwrap().len(), 2, "{slots}");

    let url = s.url("/");
    let html = call(url.clone(), "GET", None, None, None).body;
    assert!(html.contains(&trained_id) && html.contains("29990101-000000-live"), "{html}");

    // The screenshot, for people to look at.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let (_, console) = browse(&url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,2600"]);
    assert_eq!(console, Vec::<String>::new(), "console messages while rendering the dashboard");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());

    // The DOM after the page's script has run. The running run moves on
    // and completes meanwhile: the page must follow it (Chromium returns
    // once its event stream ends, which is when the run completes).
    let mover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        for step in 2..=8u64 {
            let m = MetricRecord {
                step,
                phase: Some("sft".into()),
                train_loss: Some(2.5 / step as f64),
                ..Default::default()
            };
            live.append_metric(&m).unwrap();
            live.set_status(RunStatus::Running, None, step, 8).unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
        live.append_event(EventKind::Completed, 8, "").unwrap();
        live.set_status(RunStatus::Completed, None, 8, 8).unwrap();
    });
    let home_path = h.to_path_buf();
    let pipe_mover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        for step in 2..=8 {
            pipeline_step(&mut pipe, step, 8);
            std::thread::sleep(Duration::from_millis(60));
        }
        pipeline_finish(&mut pipe, &home_path, "29990101-000000-pipe", "29990101-000000-live");
    });
    let (dom, console) = browse(&url, &["--virtual-time-budget=20000", "--dump-dom"]);
    mover.join().unwrap();
    pipe_mover.join().unwrap();
    assert_eq!(console, Vec::<String>::new(), "console messages while following the live run");
    let charts = dom.matches("<svg class=\"chart").count();
    assert!(charts >= 7, "tiers, kinds, sources, domains, daily, two loss charts: {charts}");
    // The "training runs" figure counts every run the home has, the same
    // figure as `sam runs list` and /v1/stats (the first run was trained
    // before the home had a store, so the store does not know it).
    let listed: Value = serde_json::from_str(ok(h, &["--json", "runs", "list"]).trim()).unwrap();
    let listed = listed.as_array().unwrap().len();
    assert_eq!(listed, 2);
    let figure = &dom[dom.find("data-figure=\"training runs\"").expect("the training runs figure")..];
    let figure = &figure[figure.find("class=\"n\">").unwrap() + 10..];
    assert_eq!(&figure[..figure.find('<').unwrap()], listed.to_string(), "the dashboard's training runs");
    assert_eq!(s.get("/v1/stats").json()["training_runs"], listed, "/v1/stats' training runs");
    for needle in
        ["By tier", "Daily trend", "Source health", "Pipeline runs", "Training runs", "distillation", "Registry"]
    {
        assert!(dom.contains(needle), "{needle} missing");
    }
    // The registry: both versions, the aliases, the history with verdicts.
    let registry = &dom[dom.find("<h2>Registry").expect("the registry section")..];
    for needle in [&v1[..8], &v2[..8], "production → ", "canary → ", "(20%)", "forced", "first adapter"] {
        assert!(registry.contains(needle), "{needle} missing from the registry section");
    }
    assert!(registry.contains(">pass<") || registry.contains(">refused<"), "the gate's verdict");
    assert!(registry.contains(&format!("production: base → {}", &v1[..8])), "the first promotion, from the base");
    // Bars were drawn for the stored tiers, and the trained run's curves
    // have their points.
    assert!(dom.matches("<rect").count() > 20, "bars");
    let chart_of = |id: &str| {
        let start = dom.find(&format!("id=\"loss-{id}-sft\"")).unwrap_or_else(|| panic!("no loss chart for {id}"));
        &dom[start..start + dom[start..].find("</svg>").unwrap()]
    };
    let points = |chart: &str, series: &str| -> usize {
        let at = chart.find(&format!("data-series=\"{series}\"")).unwrap();
        let p = &chart[at..];
        let p = &p[p.find("points=\"").unwrap() + 8..];
        p[..p.find('"').unwrap()].split_whitespace().count()
    };
    let trained_chart = chart_of(&trained_id);
    assert_eq!(points(trained_chart, "train loss"), 4, "{trained_chart}");
    assert!(points(trained_chart, "validation loss") >= 2, "{trained_chart}");
    // The live run: the script moved its status, step and curve.
    let row = &dom[dom.find("data-live-run=\"29990101-000000-live\"").expect("the live row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(">completed<") && row.contains(">8 / 8<"), "the page did not follow the run: {row}");
    assert_eq!(points(chart_of("29990101-000000-live"), "train loss"), 8);
    // The pipeline run: its row followed the events file to the end.
    let row = &dom[dom.find("data-live-pipeline=\"29990101-000000-pipe\"").expect("the live pipeline row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(">trained<") && row.contains(">sft 8 / 8<"), "the page did not follow the pipeline: {row}");
    assert!(row.contains("report ") && row.contains("29990101-000000-live"), "{row}");
}
