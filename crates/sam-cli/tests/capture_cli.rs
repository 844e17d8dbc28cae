//! The collection and capture commands, run as a user runs them: the built
//! `sam` binary under a temporary SAM_HOME.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use sam_home::SamHome;
use serde_json::Value;

fn sam(home: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sam"));
    c.args(args).env("SAM_HOME", home).env_remove("RUST_LOG");
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(home: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = sam(home, args, stdin);
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sam {args:?} failed:\n{o}\n{e}");
    o.into_owned()
}

fn json(home: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(home, &a, stdin)).unwrap()
}

#[test]
fn collect_routing_is_incremental() {
    let home = tempfile::tempdir().unwrap();
    let first = json(home.path(), &["collect", "routing"], None);
    assert!(first["inserted"].as_u64().unwrap() > 10, "{first}");
    let again = json(home.path(), &["collect", "routing"], None);
    assert_eq!(again["collected"], 0, "{again}");
}

#[test]
fn redact_filters_stdin() {
    let home = tempfile::tempdir().unwrap();
    let out = sam(home.path(), &["redact"], Some("ping me: ana.silva@proton.me, key AKIAZ7Q3L4M5N6P2R3S4\n"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping me: <EMAIL>, key <AWS_KEY>\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "2 redacted (email: 1, aws_key: 1)");
}

#[test]
fn a_capture_made_while_the_store_is_locked_is_stored_once_it_is_free() {
    let home = tempfile::tempdir().unwrap();
    let sam_home = SamHome::new(home.path());
    std::fs::write(sam_home.config_file(), "[store]\nbusy_timeout_ms = 100\n[capture]\nbusy_timeout_ms = 100\n")
        .unwrap();
    // Create the store, then hold its write lock as another process would.
    json(home.path(), &["collect", "routing"], None);
    let locker = rusqlite::Connection::open(sam_home.store_db()).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = json(
        home.path(),
        &["capture", "correction"],
        Some(
            r#"{"prompt":"How do I undo the last commit?","wrong":"git reset --hard HEAD~1","correction":"git reset --soft HEAD~1 keeps the changes staged; my mail is bo.chen@initech.com"}"#,
        ),
    );
    assert_eq!(r["spooled"], 1, "{r}");
    let spool = std::fs::read_to_string(sam_home.capture_spool()).unwrap();
    assert!(spool.contains("<EMAIL>") && !spool.contains("initech"), "the spool holds redacted text: {spool}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    let r = json(
        home.path(),
        &["capture", "feedback", "--prompt", "List files by size", "--response", "Use `ls -lS`, add -r to reverse."],
        None,
    );
    assert_eq!(
        (r["drained"].as_u64(), r["stored"].as_u64(), r["spooled"].as_u64()),
        (Some(1), Some(2), Some(0)),
        "{r}"
    );
    let sources = ok(home.path(), &["stats"], None);
    assert!(sources.contains("correction") && sources.contains("feedback"), "{sources}");
}

#[test]
fn redact_explain_lists_rule_kind_and_span_but_never_the_value() {
    let home = tempfile::tempdir().unwrap();
    let text = "version 1.2.0.1 (2017-03-12)\nexport GITHUB_TOKEN=ghp_R8x2Kq9Lm3Np7Tv4Wy6Zb1Cd5Fg0Hj2Ks4Qe\nfn login(password: &str)\n";
    let out = sam(home.path(), &["redact", "--explain"], Some(text));
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(!listing.contains("ghp_R8x2"), "{listing}");
    assert!(
        listing.contains("<stdin>:2:21") && listing.contains("github-token") && listing.contains("github_token"),
        "{listing}"
    );
    assert!(listing.trim_end().ends_with("1 redacted (github_token: 1)"), "{listing}");
    let v = json(home.path(), &["redact", "--explain"], Some(text));
    let f = &v["findings"][0];
    assert_eq!(
        (f["line"].as_u64(), f["column"].as_u64(), f["rule"].as_str()),
        (Some(2), Some(21), Some("github-token"))
    );
    assert_eq!(
        &text[f["start"].as_u64().unwrap() as usize..f["end"].as_u64().unwrap() as usize],
        "ghp_R8x2Kq9Lm3Np7Tv4Wy6Zb1Cd5Fg0Hj2Ks4Qe"
    );
    assert_eq!(v["findings"].as_array().unwrap().len(), 1, "{v}");
}
