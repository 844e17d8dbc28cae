//! Property: whatever path an example takes into the store (a data source
//! through `collect_into`, or live capture), no planted secret can be read
//! back from the store or found in any export.

use proptest::prelude::*;
use sam_capture::capture::{Capture, CaptureConfig, Capturer};
use sam_capture::{Batch, Cursor, DataSource, Pipeline, collect_into};
use sam_schema::{Content, Example, Message};
use sam_store::prelude::*;
use sam_store::{ExportFormat, Filter, SqliteStore};

/// A planted secret: the text to plant, and the pieces that must not survive.
#[derive(Debug, Clone)]
struct Planted {
    text: String,
    pieces: Vec<String>,
}

fn whole(s: String) -> Planted {
    Planted { pieces: vec![s.clone()], text: s }
}

fn luhn_digit(body: &[u32]) -> u32 {
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 0 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    (10 - sum % 10) % 10
}

fn iban_de(bban: &str) -> String {
    let digits: String = format!("{bban}131400"); // D=13, E=14, check 00
    let rem = digits.chars().fold(0u64, |r, c| (r * 10 + c.to_digit(10).unwrap() as u64) % 97);
    format!("DE{:02}{bban}", 98 - rem)
}

fn secret() -> impl Strategy<Value = Planted> {
    prop_oneof![
        "[a-z]{3,8}\\.[a-z]{3,8}@(corp|mail|acme)\\.(com|io|org)".prop_map(whole),
        "AKIA[A-Z2-7]{16}".prop_map(whole),
        "ghp_[A-Za-z0-9]{36}".prop_map(whole),
        "github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}".prop_map(whole),
        "sk-ant-api03-[A-Za-z0-9_-]{93}AA".prop_map(whole),
        "sk-proj-[A-Za-z0-9_-]{48}".prop_map(whole),
        "sk_live_[A-Za-z0-9]{24}".prop_map(whole),
        "xoxb-[0-9]{11}-[0-9]{12}-[A-Za-z0-9]{24}".prop_map(whole),
        "AIza[A-Za-z0-9_-]{35}".prop_map(whole),
        "\\+44 20 [0-9]{4} [0-9]{4}".prop_map(whole),
        (100u32..665, 1u32..99, 1u32..9999).prop_map(|(a, g, s)| whole(format!("{a:03}-{g:02}-{s:04}"))),
        prop::collection::vec(0u32..10, 15).prop_map(|mut d| {
            d[0] = 4;
            let c = luhn_digit(&d);
            d.push(c);
            let s: String = d.iter().map(|x| x.to_string()).collect();
            whole(format!("{} {} {} {}", &s[..4], &s[4..8], &s[8..12], &s[12..]))
        }),
        "[0-9]{18}".prop_map(|b| whole(iban_de(&b))),
        ("[A-Za-z0-9_-]{20,40}", "[A-Za-z0-9_-]{43}").prop_map(|(p, s)| Planted {
            text: format!("eyJhbGciOiJIUzI1NiJ9.eyJ{p}.{s}"),
            pieces: vec![format!("eyJ{p}"), s],
        }),
        prop::collection::vec("[A-Za-z0-9+/]{64}", 2..5).prop_map(|lines| Planted {
            text: format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----", lines.join("\n")),
            pieces: lines,
        }),
        "[A-Za-z]{4,8}[0-9]{2,4}[!#%]".prop_map(|p| Planted { text: format!("password = \"{p}\""), pieces: vec![p] }),
        "[a-z]{4,8}"
            .prop_map(|u| Planted { text: format!("/home/{u}x/src/main.rs"), pieces: vec![format!("/home/{u}x/")] }),
    ]
}

/// Prose with a secret planted somewhere in it.
fn text_with(secret: &Planted, before: &str, after: &str) -> String {
    format!("{before} {}\n{after}", secret.text)
}

/// A data source that offers fixed examples, as a real one would after
/// reading files.
struct Fixed(Vec<Example>);

impl DataSource for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn collect(&mut self, _since: Option<Cursor>) -> sam_capture::Result<Batch> {
        Ok(Batch { examples: std::mem::take(&mut self.0), cursor: Some(Cursor("done".into())), ..Batch::default() })
    }
}

fn leaks(text: &str, planted: &[Planted]) -> Vec<String> {
    planted.iter().flat_map(|p| p.pieces.iter()).filter(|piece| text.contains(piece.as_str())).cloned().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_planted_secret_is_read_back_or_exported(
        planted in prop::collection::vec(secret(), 1..6),
        before in "[A-Z][a-z ]{0,30}",
        after in "[a-z ,.]{0,30}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path().join("store.db")).unwrap();
        let pipeline = Pipeline::default();

        // Through a data source: every content kind, secrets in every field and in metadata.
        let mut examples = Vec::new();
        for (i, s) in planted.iter().enumerate() {
            let t = text_with(s, &before, &after);
            let content = match i % 3 {
                0 => Content::Instruction { instruction: format!("Explain {i}"), input: t.clone(), output: format!("It is {t}") },
                1 => Content::Chat { messages: vec![Message::user(t.clone()), Message::assistant(format!("Noted: {t}"))] },
                _ => Content::Preference { prompt: sam_schema::Prompt::Text(t.clone()), chosen: format!("Use {t}"), rejected: "No idea.".into() },
            };
            examples.push(Example::new(content).with_source("fixed").with_meta("note", t));
        }
        collect_into(&mut Fixed(examples), &mut store, &pipeline).unwrap();

        // Through live capture.
        let cfg = CaptureConfig { max_batch: 2, spool: Some(dir.path().join("spool.jsonl")), ..Default::default() };
        let mut cap = Capturer::new(store, Pipeline::default(), cfg);
        for s in &planted {
            let t = text_with(s, &before, &after);
            cap.capture(Capture::Correction { prompt: t.clone(), wrong: "I do not know.".into(), correction: format!("It is {t}") }).unwrap();
            cap.capture(Capture::Distill { prompt: format!("What is this? {t}"), response: t.clone(), system: None, model: None }).unwrap();
        }
        cap.flush().unwrap();
        drop(cap);

        let mut store = SqliteStore::open(dir.path().join("store.db")).unwrap();
        let stored = store.query(&Filter::default()).unwrap();
        prop_assert!(stored.len() >= planted.len());
        for ex in &stored {
            let line = ex.to_json_line();
            let l = leaks(&line, &planted);
            prop_assert!(l.is_empty(), "stored example leaks {:?}: {}", l, line);
        }
        for (name, format) in [("full.jsonl", ExportFormat::Full), ("train.jsonl", ExportFormat::Training)] {
            let path = dir.path().join(name);
            store.export(&Filter::default(), &path, format).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let l = leaks(&text, &planted);
            prop_assert!(l.is_empty(), "export {} leaks {:?}", name, l);
        }
    }
}

/// A spool written by hand, or by a sam that redacted less, is redacted
/// again as it drains into the store.
#[test]
fn a_drained_spool_is_redacted_again() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.jsonl");
    let raw = Example::new(Content::Instruction {
        instruction: "How do I log in to the staging database?".into(),
        input: String::new(),
        output: "Use postgres://app:Tr0ub4dor&3@db.internal/app and ping ana.silva@proton.me if it fails.".into(),
    })
    .with_source("capture");
    std::fs::write(&spool, format!("{}\n", raw.to_json_line())).unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let cfg = CaptureConfig { spool: Some(spool), ..Default::default() };
    let mut cap = Capturer::new(store, Pipeline::default(), cfg);
    let r = cap.flush().unwrap();
    assert_eq!((r.drained, r.stored), (1, 1), "{r:?}");
    assert_eq!(cap.redacted().total(), 2, "{}", cap.redacted());
    drop(cap);
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let line = store.query(&Filter::default()).unwrap()[0].to_json_line();
    assert!(!line.contains("Tr0ub4dor") && !line.contains("ana.silva"), "{line}");
    assert!(line.contains("postgres://app:<PASSWORD>@db.internal/app"), "{line}");
}

/// A source the user vouches for (`allow_sources`) is stored as it is, and
/// its examples say that redaction was skipped; every other source is
/// redacted.
#[test]
fn an_allowlisted_source_is_stored_unredacted_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let mut cfg = sam_capture::PipelineConfig::default();
    cfg.redaction.allow_sources = vec!["vetted".into()];
    let pipeline = Pipeline::new(cfg);
    let text = "Ask ops at ops@corp.example for the 10.20.30.40 firewall change.";
    let ex = |source: &str| {
        Example::new(Content::Instruction {
            instruction: format!("Who runs {source}?"),
            input: String::new(),
            output: text.into(),
        })
        .with_source(source)
    };
    collect_into(&mut Fixed(vec![ex("vetted"), ex("other")]), &mut store, &pipeline).unwrap();
    let stored = store.query(&Filter::default()).unwrap();
    let by = |s: &str| stored.iter().find(|e| e.source == s).unwrap();
    assert!(by("vetted").to_json_line().contains("ops@corp.example"));
    assert_eq!(by("vetted").metadata["redaction"], "skipped: allowlisted source");
    assert!(!by("other").to_json_line().contains("ops@corp.example"));
    assert!(!by("other").metadata.contains_key("redaction"));
}
