//! The store commands, run as a user runs them: the built `sam` binary under a
//! temporary SAM_HOME.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sam_home::SamHome;
use serde_json::Value;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// A home with `sam init` done.
    fn init() -> Self {
        let h = Self::new();
        h.ok(&["init"]);
        h
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sam"));
        c.args(args).env("SAM_HOME", self.path()).env_remove("RUST_LOG").stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run and require success; returns (stdout, stderr).
    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (so, se) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
        assert!(out.status.success(), "sam {args:?} failed:\n{so}\n{se}");
        (so, se)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a).0).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const GOOD: &[&str] = &[
    r#"{"instruction":"What is a borrow?","output":"A reference that does not own its value."}"#,
    r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Hello, how can I help?"}],"source":"chat"}"#,
    r#"{"prompt":"Name a sort.","chosen":"Merge sort.","rejected":"Sorting."}"#,
    r#"{"prompt":"2 + 2 =","completion":"4, of course."}"#,
];

/// Four good lines, and bad ones at lines 2 (not JSON), 4 (no known form),
/// 6 (a JSON array) and 8 (an empty answer: readable but invalid).
fn mixed_file() -> String {
    [GOOD[0], "{not json", GOOD[1], r#"{"foo": 1}"#, GOOD[2], "[1, 2]", "", r#"{"text":"  "}"#, GOOD[3]].join("\n")
}

#[test]
fn init_writes_every_default_and_keeps_existing_files() {
    let h = Home::new();
    let (out, _) = h.ok(&["init"]);
    assert!(out.contains("written with every default"), "{out}");
    let home = SamHome::new(h.path());
    let cfg = std::fs::read_to_string(home.config_file()).unwrap();
    for key in ["[store.quality]", "min_response_chars = 2", "[store]", "busy_timeout_ms = 30000", "batch_size = 50000"]
    {
        assert!(cfg.contains(key), "{key} missing from:\n{cfg}");
    }
    for section in ["[capture]", "[prep]", "[train]", "[pipeline]", "[deploy]", "[schedule]", "[serve]"] {
        assert!(cfg.contains(section), "{section} missing from:\n{cfg}");
    }
    assert!(home.store_db().exists());
    std::fs::write(home.config_file(), "[store]\nbatch_size = 5\n").unwrap();
    let (out, _) = h.ok(&["init"]);
    assert!(out.contains("kept"), "{out}");
    assert_eq!(std::fs::read_to_string(home.config_file()).unwrap(), "[store]\nbatch_size = 5\n");
    h.ok(&["init", "--force"]);
    assert_eq!(std::fs::read_to_string(home.config_file()).unwrap(), cfg);
}

#[test]
fn ingest_reports_each_bad_line_stores_the_good_ones_and_quarantines_the_rest() {
    let h = Home::init();
    let file = h.write("in.jsonl", &mixed_file());
    let (out, err) = h.ok(&["ingest", s(&file)]);
    let f = s(&file);
    let want = [
        format!("{f}:2: invalid JSON"),
        format!("{f}:4: no known form"),
        format!("{f}:6: expected a JSON object, found an array"),
        format!("{f}:8: empty: field \"text\" is empty"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    for (got, want) in lines.iter().zip(&want) {
        assert!(got.starts_with(want.as_str()), "got {got:?}, want {want:?}\n{err}");
    }
    assert!(err.contains("4 lines were not stored") && err.contains("sam quarantine"), "{err}");
    assert!(out.contains("4 inserted, 0 duplicates, 1 rejected, 3 unreadable"), "{out}");

    let stats = h.json(&["stats"]);
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["quarantined"], 4);
    // Examples that name no source get the file's name.
    let sources: Vec<&str> =
        stats["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["file:in.jsonl", "chat"]);

    let q = h.json(&["quarantine"]);
    let q: Vec<(u64, &str)> =
        q.as_array().unwrap().iter().map(|e| (e["line"].as_u64().unwrap(), e["raw"].as_str().unwrap())).collect();
    assert_eq!(q.iter().map(|e| e.0).collect::<Vec<_>>(), [8, 2, 4, 6]);
    assert_eq!(q[1].1, "{not json");
    let (listed, _) = h.ok(&["quarantine", "--raw"]);
    assert!(listed.contains(&format!("{f}:6: expected a JSON object")) && listed.contains("[1, 2]"), "{listed}");

    let first = h.json(&["quarantine"])[0]["id"].as_i64().unwrap().to_string();
    assert_eq!(h.json(&["quarantine", "clear", &first])["cleared"], 1);
    let refused = h.run(&["quarantine", "clear"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--all"));
    assert_eq!(h.json(&["quarantine", "clear", "--all"])["cleared"], 3);
    assert_eq!(h.json(&["quarantine"]), serde_json::json!([]));
}

#[test]
fn reingesting_the_same_data_inserts_nothing_and_reports_duplicates() {
    let h = Home::init();
    let file = h.write("in.jsonl", &mixed_file());
    h.ok(&["ingest", s(&file)]);
    let again = h.json(&["ingest", s(&file)]);
    assert_eq!(again[0]["inserted"], 0);
    assert_eq!(again[0]["duplicates"], 4);
    assert_eq!(again[0]["quarantined"], 0, "the bad lines are already in quarantine");
    // The same examples through standard input are duplicates too.
    let mut child = h.cmd(&["ingest", "-", "--json"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(GOOD.join("\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v[0]["file"].as_str(), v[0]["inserted"].as_u64(), v[0]["duplicates"].as_u64()),
        (Some("<stdin>"), Some(0), Some(4))
    );
    assert_eq!(h.json(&["stats"])["total"], 4);
}

#[test]
fn validate_dedup_export_and_stats_work_together() {
    let h = Home::init();
    let q = "How do I undo the last commit?";
    let rows = [
        serde_json::json!({"instruction": q, "output": "y", "source": "git", "domain": "git"}),
        serde_json::json!({"instruction": q, "output": "Run `git reset --soft HEAD~1`; the changes stay staged.", "source": "git", "domain": "git", "created_at": 1_700_000_000}),
        serde_json::json!({"instruction": "What is a tag?", "output": "A named pointer to a commit.", "source": "docs", "domain": "git", "created_at": 1_700_100_000}),
        serde_json::json!({"text": "fn main() {}", "source": "code", "domain": "code", "created_at": 1_700_200_000}),
    ];
    let file = h.write("in.jsonl", &rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"));
    h.ok(&["ingest", s(&file)]);

    // Ingest scored each example into a tier: the default export (passing
    // tiers) has them all, with no `sam validate` in between.
    let out_path = h.path().join("out/first.jsonl");
    assert_eq!(h.json(&["export", "-o", s(&out_path)])["rows"], 4);

    // Validation scores them again (the same thresholds: the same tiers) and logs why.
    let v = h.json(&["validate"]);
    assert_eq!(v["examples"], 4);
    assert_eq!(v["tiers"], serde_json::json!([3, 0, 1, 0]));
    let (text, _) = h.ok(&["validate"]);
    assert!(text.contains("nothing to validate"), "{text}");

    assert_eq!(h.json(&["dedup", "--dry-run"])["exact"]["removed"], 1);
    let d = h.json(&["dedup"]);
    assert_eq!((d["exact"]["input_groups"].as_u64(), d["exact"]["removed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(d["near"], Value::Null);

    let out_path = h.path().join("out/git.jsonl");
    let rec = h.json(&["export", "-o", s(&out_path), "--domain", "git", "--since", "2023-11-15", "--tier", "gold"]);
    assert_eq!(rec["rows"], 1);
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(text.contains("What is a tag?") && text.ends_with('\n') && text.lines().count() == 1, "{text}");
    let train = h.path().join("out/train.jsonl");
    let rec = h.json(&["export", "-o", s(&train), "--format", "training", "--kind", "instruction"]);
    assert_eq!(rec["rows"], 2);
    assert!(std::fs::read_to_string(&train).unwrap().starts_with(r#"{"messages":[{"role":"user""#));
    let history = h.json(&["export", "--list"]);
    assert_eq!(history.as_array().unwrap().len(), 3);
    assert_eq!(history[2]["hash"], rec["hash"]);

    let stats = h.json(&["stats"]);
    assert_eq!(
        (stats["total"].as_u64(), stats["validated"].as_u64(), stats["exports"].as_u64()),
        (Some(3), Some(3), Some(3))
    );
    let (table, _) = h.ok(&["stats"]);
    for want in [
        "examples     3 (3 validated)",
        "tiers        gold 3  silver 0  bronze 0  unverified 0",
        "2023-11-14",
        "health",
    ] {
        assert!(table.contains(want), "{want:?} missing from:\n{table}");
    }

    // A folder for TRL: one row form per folder, every row with its id, the
    // snapshot it came from recorded in the export history.
    let trl = h.path().join("out/trl");
    let t = h.json(&["export", "--format", "trl", "--out", s(&trl)]);
    let total = |form: &str| ["train", "valid", "test"].iter().map(|k| t["manifest"][form][k].as_u64().unwrap()).sum();
    assert_eq!((total("sft"), total("dpo"), total("text")), (2u64, 0, 1), "{t}");
    let rows: Vec<Value> = t["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str().filter(|f| f.starts_with("sft/")))
        .flat_map(|f| {
            std::fs::read_to_string(trl.join(f))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["messages"][0]["role"] == "user" && r["id"].is_string()), "{rows:?}");
    assert!(trl.join("manifest.json").is_file());
    assert_eq!(h.json(&["export", "--list"]).as_array().unwrap().len(), 4);
    let (text, _) = h.ok(&["export", "--format", "trl", "--out", s(&trl)]);
    assert!(text.contains("wrote a TRL dataset of 3 examples") && text.contains("sft "), "{text}");
}

#[test]
fn every_command_explains_itself() {
    let h = Home::new();
    for cmd in [
        vec![],
        vec!["init"],
        vec!["ingest"],
        vec!["quarantine"],
        vec!["quarantine", "clear"],
        vec!["validate"],
        vec!["dedup"],
        vec!["export"],
        vec!["stats"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let (out, _) = h.ok(&args);
        assert!(out.len() > 200 && out.contains("Usage: sam"), "{cmd:?}: {out}");
    }
}

#[test]
fn commands_without_a_store_say_what_to_do() {
    let h = Home::new();
    for cmd in [&["stats"][..], &["validate"], &["ingest", "x.jsonl"], &["quarantine"], &["export"], &["dedup"]] {
        let out = h.run(cmd);
        assert!(!out.status.success(), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run `sam init` first"), "{cmd:?}: {err}");
    }
    let h = Home::init();
    let out = h.run(&["ingest", "missing.jsonl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("missing.jsonl") && err.contains("check the path"), "{err}");
    let config = SamHome::new(h.path()).config_file();
    std::fs::write(&config, "[store]\nbatch_size = \"x\"\n").unwrap();
    let err = String::from_utf8_lossy(&h.run(&["stats"]).stderr).into_owned();
    assert!(err.contains(&*config.to_string_lossy()) && err.contains("sam init"), "{err}");
    std::fs::write(&config, "[store]\nbatch_sise = 5\n").unwrap();
    let err = String::from_utf8_lossy(&h.run(&["stats"]).stderr).into_owned();
    assert!(err.contains("batch_sise"), "an unknown key is named: {err}");
}

/// `n` distinct instruction lines tagged `tag`, with a bad line every 5,000.
fn big_file(h: &Home, name: &str, tag: &str, n: usize) -> PathBuf {
    let mut text = String::with_capacity(n * 160);
    for i in 0..n {
        if i % 5_000 == 4_999 {
            text.push_str("{\"instruction\": oops}\n");
        }
        text.push_str(&format!(
            "{{\"instruction\":\"Summarise change {i} of {tag}\",\"input\":\"src/lib.rs | {i} +-\",\"output\":\"Refactor step {i} of {tag}, keeping behaviour.\"}}\n"
        ));
    }
    h.write(name, &text)
}

fn count_rows(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT COUNT(*) FROM examples", [], |r| r.get(0)).unwrap()
}

#[test]
fn a_killed_ingest_keeps_whole_batches_and_running_it_again_completes_it() {
    let h = Home::init();
    const N: usize = 200_000;
    const BATCH: i64 = 1_000;
    let file = big_file(&h, "big.jsonl", "big", N);
    let db = SamHome::new(h.path()).store_db();
    let mut child = h
        .cmd(&["ingest", s(&file), "--batch-size", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a few batches have committed, then kill it mid-ingest.
    let start = Instant::now();
    while count_rows(&db) < 3 * BATCH {
        assert!(start.elapsed() < Duration::from_secs(120), "the ingest made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ingest finished before it could be killed: make the file bigger"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) }, 0);
    child.wait().unwrap();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let kept: i64 = conn.query_row("SELECT COUNT(*) FROM examples", [], |r| r.get(0)).unwrap();
    let quarantined: i64 = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0)).unwrap();
    drop(conn);
    // Batches are 1,000 lines, bad lines included: whole batches only.
    assert!(kept >= 3 * BATCH && (kept as usize) < N, "kept {kept}");
    assert_eq!((kept + quarantined) % BATCH, 0, "kept {kept} + quarantined {quarantined} is not whole batches");

    let again = h.json(&["ingest", s(&file)]);
    assert_eq!(again[0]["inserted"].as_i64().unwrap(), N as i64 - kept);
    assert_eq!(again[0]["duplicates"].as_i64().unwrap(), kept);
    let stats = h.json(&["stats"]);
    assert_eq!(stats["total"], N as u64);
    assert_eq!(stats["quarantined"], (N / 5_000) as u64);
}

#[test]
fn two_ingests_at_once_both_finish_with_every_row() {
    let h = Home::init();
    const N: usize = 30_000;
    let shared = big_file(&h, "shared.jsonl", "shared", 2_000);
    let a = big_file(&h, "a.jsonl", "a", N);
    let b = big_file(&h, "b.jsonl", "b", N);
    // Small batches, so that the two writers take turns many times.
    let spawn = |f: &Path| {
        h.cmd(&["ingest", s(f), s(&shared), "--batch-size", "500", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(&a), spawn(&b)];
    let (mut inserted, mut duplicates) = (0, 0);
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("locked") && !err.contains("busy"), "{err}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        for f in v.as_array().unwrap() {
            inserted += f["inserted"].as_u64().unwrap();
            duplicates += f["duplicates"].as_u64().unwrap();
        }
    }
    let total = (2 * N + 2_000) as u64;
    assert_eq!(h.json(&["stats"])["total"], total);
    assert_eq!((inserted, duplicates), (total, 2_000));
}

#[test]
fn dedup_near_marks_or_removes_near_duplicates() {
    let h = Home::init();
    let words: Vec<String> = (0..80).map(|i| format!("word{}", (i * 37) % 101)).collect();
    let answer = words.join(" ");
    let rows = [
        serde_json::json!({"instruction": "Explain the change", "output": answer}),
        serde_json::json!({"instruction": "Explain this change", "output": format!("{answer} indeed")}),
        serde_json::json!({"instruction": "What is a tag?", "output": "A named pointer to a commit."}),
    ];
    let file = h.write("in.jsonl", &rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"));
    h.ok(&["ingest", s(&file)]);
    let refused = h.run(&["dedup", "--remove"]);
    assert!(!refused.status.success(), "--remove needs --near");

    let marked = h.json(&["dedup", "--near"]);
    assert_eq!((marked["near"]["groups"].as_u64(), marked["near"]["marked"].as_u64()), (Some(1), Some(1)));
    assert_eq!(h.json(&["stats"])["total"], 3);
    let removed = h.json(&["dedup", "--near", "--remove"]);
    assert_eq!(removed["near"]["removed"], 1);
    assert_eq!(h.json(&["stats"])["total"], 2);
    let (text, _) = h.ok(&["dedup", "--near"]);
    assert!(text.contains("0 groups hold 0 near-duplicates"), "{text}");
}

/// Secrets planted in every kind of example, in metadata, in a line that
/// cannot be read and in an example that is refused.
const PLANTED: &[&str] = &[
    "ana.silva@proton.me",
    "AKIAZ7Q3L4M5N6P2R3S4",
    "Tr0ub4dor&3",
    "ghp_R8x2Kq9Lm3Np7Tv4Wy6Zb1Cd5Fg0Hj2Ks4Qe",
    "4539 1488 0343 6467",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2g",
    "/home/jdoe/",
    "xoxb-2048000000-4096000000-Zx8Kq2Lm9Np4Rt7Vw1Yb3Cd6",
];

fn planted_file(h: &Home) -> PathBuf {
    let key = format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----", PLANTED[5]);
    let rows = [
        serde_json::json!({"instruction": "Why does boto3 say my key is invalid?", "input": format!("aws_access_key_id = {}", PLANTED[1]), "output": format!("The key {} was rotated; ask {} for a new one.", PLANTED[1], PLANTED[0])}),
        serde_json::json!({"messages": [{"role": "user", "content": format!("My config:\ndb:\n  user: app\n  password: {}\nWhy does it fail?", PLANTED[2])}, {"role": "assistant", "content": "The user lacks the CONNECT privilege on the database; grant it and retry."}]}),
        serde_json::json!({"prompt": format!("Push with GITHUB_TOKEN={} fails with 403.", PLANTED[3]), "chosen": "The token lacks the `contents: write` permission; add it to the workflow.", "rejected": "Try again later."}),
        serde_json::json!({"text": format!("deploy key for the build box:\n{key}\nkeep it in {}.ssh", PLANTED[6])}),
        serde_json::json!({"instruction": "Summarise the refund ticket.", "output": "A customer was charged twice; refund the second charge.", "metadata": {"card": PLANTED[4], "notify": PLANTED[7]}}),
    ];
    let mut lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    // Unreadable, and refused (an empty answer): both quarantined.
    lines.push(format!("{{\"instruction\": \"rotate {}\", oops}}", PLANTED[1]));
    lines.push(serde_json::json!({"instruction": format!("mail {}", PLANTED[0]), "output": ""}).to_string());
    h.write("planted.jsonl", &lines.join("\n"))
}

fn leaks(text: &str) -> Vec<&'static str> {
    PLANTED.iter().copied().filter(|p| text.contains(p)).collect()
}

#[test]
fn ingest_stores_no_planted_secret_and_export_needs_no_validate() {
    let h = Home::init();
    let file = planted_file(&h);
    let r = h.json(&["ingest", s(&file)]);
    assert_eq!((r[0]["inserted"].as_u64(), r[0]["rejected"].as_u64()), (Some(5), Some(1)), "{r}");
    assert_eq!(r[0]["unredacted"], false);
    for kind in
        ["email", "aws_key", "password", "github_token", "private_key", "home_path", "credit_card", "slack_token"]
    {
        assert!(r[0]["redacted"][kind].as_u64() >= Some(1), "no {kind} in {r}");
    }

    // Nothing in the database, examples or quarantine, holds a planted value.
    let db = rusqlite::Connection::open(SamHome::new(h.path()).store_db()).unwrap();
    for sql in ["SELECT content || ifnull(metadata, '') FROM examples", "SELECT raw || reason FROM quarantine"] {
        let mut st = db.prepare(sql).unwrap();
        let rows: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        assert!(!rows.is_empty(), "{sql}");
        for row in rows {
            assert!(leaks(&row).is_empty(), "{sql} leaks {:?}: {row}", leaks(&row));
        }
    }

    // Ingest gave each example its tier: export has the good ones at once.
    let out = h.path().join("out.jsonl");
    let rec = h.json(&["export", "-o", s(&out)]);
    assert_eq!(rec["rows"], 5, "{rec}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(leaks(&text).is_empty(), "the export leaks {:?}", leaks(&text));
    assert!(text.contains("<AWS_KEY>") && text.contains("<PRIVATE_KEY>") && text.contains("/home/<USER>/"), "{text}");
}

#[test]
fn ingest_no_redact_stores_vouched_for_text_as_read_and_says_so() {
    let h = Home::init();
    let file = h.write(
        "vetted.jsonl",
        r#"{"instruction": "Which address does the lab printer have?", "output": "10.20.30.40, ask ana.silva@proton.me"}"#,
    );
    let (out, _) = h.ok(&["ingest", s(&file), "--no-redact"]);
    assert!(out.contains("redaction skipped (--no-redact)"), "{out}");
    let rec = h.json(&["export", "-o", s(&h.path().join("vetted-out.jsonl"))]);
    assert_eq!(rec["rows"], 1);
    let text = std::fs::read_to_string(h.path().join("vetted-out.jsonl")).unwrap();
    assert!(text.contains("10.20.30.40") && text.contains("ana.silva@proton.me"), "{text}");
    assert!(text.contains(r#""redaction":"skipped: sam ingest --no-redact""#), "{text}");
}
