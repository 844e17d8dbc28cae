//! The store's behaviour, through the `Store` trait.

use sam_schema::{Content, Example, Kind, LineError, Message, Prompt, Tier, parse_line};
use sam_store::prelude::*;
use sam_store::{
    Batch, ExportFormat, Filter, RunState, RunUpdate, SqliteStore, StoreError, TrainingRun, ValidateOptions,
};

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    (dir, store)
}

fn instr(instruction: &str, output: &str) -> Example {
    Example::new(Content::Instruction { instruction: instruction.into(), input: String::new(), output: output.into() })
}

/// One example of every kind, with side fields set.
fn one_of_each() -> Vec<Example> {
    vec![
        instr("Summarise the diff", "Fix the off-by-one error in the tokenizer loop.")
            .with_source("git")
            .with_domain("git")
            .with_created_at(1_700_000_000)
            .with_meta("repo", "sam"),
        Example::new(Content::Chat {
            messages: vec![
                Message::system("You are terse."),
                Message::user("What is a borrow?"),
                Message::assistant("A reference that does not own its value."),
            ],
        })
        .with_source("escalation")
        .with_domain("code")
        .with_created_at(1_700_086_400),
        Example::new(Content::Preference {
            prompt: Prompt::Messages(vec![Message::user("Name a sorting algorithm.")]),
            chosen: "Merge sort.".into(),
            rejected: "Sorting.".into(),
        })
        .with_source("correction")
        .with_domain("code")
        .with_created_at(1_700_172_800),
        Example::new(Content::Completion { text: "fn main() { println!(\"hi\"); }".into() })
            .with_source("code")
            .with_domain("code"),
        Example::new(Content::PromptCompletion { prompt: "2 + 2 =".into(), completion: "4, of course.".into() })
            .with_source("docs")
            .with_domain("general")
            .with_created_at(1_700_259_200),
    ]
}

#[test]
fn examples_of_every_kind_read_back_equal() {
    let (_d, mut store) = open();
    let mut all = one_of_each();
    all[0].quality = Some(0.75);
    all[0].tier = Tier::Silver;
    let report = store.insert(&all).unwrap();
    assert_eq!((report.inserted, report.duplicates, report.rejected), (5, 0, 0));
    assert_eq!(store.query(&Filter::default()).unwrap(), all);
}

#[test]
fn insert_counts_duplicates_and_rejects_with_reasons() {
    let (_d, mut store) = open();
    let a = instr("Explain rebase", "It replays commits onto another base.");
    // Whitespace does not make new content.
    let a_padded = instr("  Explain   rebase ", "It replays commits onto another base.\n");
    let empty = instr("Explain merge", "   ");
    let no_answer = Example::new(Content::Chat { messages: vec![Message::user("hello?")] });
    let same = Example::new(Content::Preference {
        prompt: Prompt::Text("p".into()),
        chosen: "same answer".into(),
        rejected: "same  answer".into(),
    });
    let report = store.insert(&[a.clone(), a_padded, empty, a.clone(), no_answer, same]).unwrap();
    assert_eq!((report.inserted, report.duplicates, report.rejected), (1, 2, 3));
    let reasons: Vec<(usize, &str)> = report.rejections.iter().map(|r| (r.index, r.reason.as_str())).collect();
    assert_eq!(
        reasons,
        vec![
            (2, "empty: field \"output\" is empty"),
            (4, "no_response: the conversation has no assistant turn"),
            (5, "same_responses: chosen and rejected are the same text"),
        ]
    );
    // Nothing is dropped silently: the rejected examples are in quarantine, whole.
    let q = store.quarantined(None).unwrap();
    assert_eq!(q.len(), 3);
    assert_eq!(q[0].origin, "<insert>");
    assert_eq!(parse_line(&q[0].raw).unwrap().id, report.rejections[0].id);

    // Again: nothing new, everything reported.
    let again = store.insert(&[a]).unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 1));
    assert_eq!(store.count(&Filter::default()).unwrap(), 1);
}

#[test]
fn bad_lines_are_quarantined_once_and_can_be_cleared() {
    let (_d, mut store) = open();
    let bad = |line: usize, raw: &str| LineError {
        origin: Some("data/in.jsonl".into()),
        line,
        reason: "invalid JSON: x".into(),
        raw: raw.into(),
    };
    let lines = [bad(2, "{oops"), bad(7, "[1]")];
    let examples = [instr("a", "an answer"), instr("b", "")];
    let batch =
        Batch { examples: &examples, origin: Some("data/in.jsonl"), lines: &[1, 3], bad_lines: &lines, cursor: None };
    let report = store.insert_batch(&batch).unwrap();
    assert_eq!((report.inserted, report.rejected, report.quarantined), (1, 1, 2));
    let shown: Vec<String> = store.quarantined(None).unwrap().iter().map(|q| q.to_string()).collect();
    assert_eq!(
        shown,
        [
            "data/in.jsonl:3: empty: field \"output\" is empty",
            "data/in.jsonl:2: invalid JSON: x",
            "data/in.jsonl:7: invalid JSON: x"
        ]
    );
    // The same lines again are not stored twice.
    let report = store.insert_batch(&batch).unwrap();
    assert_eq!((report.inserted, report.duplicates, report.quarantined), (0, 1, 0));
    assert_eq!(store.quarantined(None).unwrap().len(), 3);
    assert_eq!(store.quarantine_len().unwrap(), 3);
    assert_eq!(store.quarantined(Some(1)).unwrap().len(), 1);

    let first = store.quarantined(None).unwrap()[0].id;
    assert_eq!(store.clear_quarantine(Some(&[first, 9999])).unwrap(), 1);
    assert_eq!(store.quarantined(None).unwrap().len(), 2);
    assert_eq!(store.clear_quarantine(None).unwrap(), 2);
    assert!(store.quarantined(None).unwrap().is_empty());
}

#[test]
fn a_batch_with_mismatched_line_numbers_is_refused() {
    let (_d, mut store) = open();
    let examples = [instr("a", "an answer")];
    let err = store.insert_batch(&Batch { lines: &[1, 2], ..Batch::new(&examples) }).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(store.count(&Filter::default()).unwrap(), 0);
}

#[test]
fn cursor_commits_with_its_batch() {
    let (_d, mut store) = open();
    assert_eq!(store.cursor("git").unwrap(), None);
    store.insert_with_cursor(&[instr("a", "an answer")], "git", "abc123").unwrap();
    assert_eq!(store.cursor("git").unwrap().as_deref(), Some("abc123"));
    store.insert_with_cursor(&[], "git", "def456").unwrap();
    assert_eq!(store.cursor("git").unwrap().as_deref(), Some("def456"));
    assert_eq!(store.cursor("docs").unwrap(), None);
}

#[test]
fn filters_select_by_every_field() {
    let (_d, mut store) = open();
    let all = one_of_each();
    store.insert(&all).unwrap();
    let ids = |f: Filter| -> Vec<String> {
        let got: Vec<String> = store.query(&f).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(store.count(&f).unwrap(), got.len() as u64, "{f:?}");
        got
    };
    let id = |i: usize| all[i].id.clone();
    let cases: Vec<(Filter, Vec<String>)> = vec![
        (Filter::default(), (0..5).map(id).collect()),
        (Filter::default().kinds([Kind::Chat, Kind::Completion]), vec![id(1), id(3)]),
        (Filter::default().source("git").source("docs"), vec![id(0), id(4)]),
        (Filter::default().domain("code"), vec![id(1), id(2), id(3)]),
        (Filter::default().domain("code").kinds([Kind::Preference]), vec![id(2)]),
        // Time applies to created_at; the completion has none, so its storage time (now) counts.
        (Filter::default().since(1_700_086_400).until(1_700_259_200), vec![id(1), id(2)]),
        (Filter::default().until(1_700_000_001), vec![id(0)]),
        (Filter::default().since(1_750_000_000), vec![id(3)]),
        (Filter::default().tiers([Tier::Gold]), vec![]),
        (Filter::default().tiers([Tier::Unverified]).limit(2), vec![id(0), id(1)]),
    ];
    for (f, want) in cases {
        assert_eq!(ids(f.clone()), want, "{f:?}");
    }
}

#[test]
fn validation_assigns_tiers_and_logs_reasons() {
    let (_d, mut store) = open();
    let good = instr("What does `cargo fmt` do?", "It formats every crate of the package with rustfmt.");
    let short = instr("Answer in one letter", "y");
    let cut =
        instr("Describe the loop", "The function opens the file, reads each line and then it calls the parser with");
    let repeated = instr("Say it", &"the same line again\n".repeat(10));
    store.insert(&[good.clone(), short.clone(), cut.clone(), repeated.clone()]).unwrap();

    let mut calls = Vec::new();
    let report = store.validate(&ValidateOptions::default(), &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(report.examples, 4);
    assert_eq!(report.tiers, [2, 0, 2, 0]); // cut-off loses 0.2 (gold); short and repeated 0.5 (bronze)
    assert_eq!(report.with_findings, 3);
    assert_eq!(calls.first(), Some(&(0, 4)));
    assert_eq!(calls.last(), Some(&(4, 4)));

    let tier_of = |store: &SqliteStore, id: &str| {
        store.query(&Filter::default()).unwrap().into_iter().find(|e| e.id == id).map(|e| (e.tier, e.quality))
    };
    assert_eq!(tier_of(&store, &good.id), Some((Tier::Gold, Some(1.0))));
    assert_eq!(tier_of(&store, &short.id), Some((Tier::Bronze, Some(0.5))));
    let log = store.validation_log(&repeated.id).unwrap();
    assert_eq!(log.len(), 1);
    assert!(log[0].reasons.starts_with("repetition:"), "{}", log[0].reasons);
    assert!(store.validation_log(&good.id).unwrap().is_empty());

    // Only new examples are validated again, unless asked for all.
    assert_eq!(store.validate(&ValidateOptions::default(), &mut |_, _| {}).unwrap().examples, 0);
    let mut strict = ValidateOptions { all: true, ..Default::default() };
    strict.quality.min_response_chars = 200;
    let again = store.validate(&strict, &mut |_, _| {}).unwrap();
    assert_eq!(again.examples, 4);
    assert_eq!(again.checks.first().map(|(c, n)| (c.as_str(), *n)), Some(("too_short", 4)));
    assert_eq!(store.validation_log(&short.id).unwrap().len(), 2);
}

#[test]
fn dedup_keeps_the_best_copy_of_each_question() {
    let (_d, mut store) = open();
    let q = "How do I undo the last commit?";
    let weak = instr(q, "y");
    let good = instr(q, "Run `git reset --soft HEAD~1`: the commit is undone and its changes stay staged.");
    let other_good = instr(q, "Use `git revert HEAD` to add a commit that undoes it, keeping history.");
    // The same question as a chat and as a prompt/completion is the same input.
    let q2 = "What unstages a file?";
    let chat = Example::new(Content::Chat {
        messages: vec![Message::user(q2), Message::assistant("`git restore --staged FILE` unstages it.")],
    });
    let weak_pc = Example::new(Content::PromptCompletion { prompt: q2.into(), completion: "y".into() });
    let unrelated = instr("What is a tag?", "A named pointer to a commit.");
    let pref = |rejected: &str| {
        Example::new(Content::Preference {
            prompt: Prompt::Text(q.into()),
            chosen: "git reset".into(),
            rejected: rejected.into(),
        })
    };
    let all = [
        weak_pc,
        weak,
        good.clone(),
        other_good,
        chat.clone(),
        unrelated.clone(),
        pref("rm -rf .git"),
        pref("git push -f"),
    ];
    store.insert(&all).unwrap();
    store.validate(&ValidateOptions::default(), &mut |_, _| {}).unwrap();

    let dry = store.dedup(true).unwrap();
    assert_eq!((dry.input_groups, dry.removed, dry.dry_run), (2, 3, true));
    assert_eq!(store.count(&Filter::default()).unwrap(), 8);

    let done = store.dedup(false).unwrap();
    assert_eq!((done.input_groups, done.removed), (2, 3));
    let left: Vec<String> = store.query(&Filter::default()).unwrap().into_iter().map(|e| e.id).collect();
    // `good` and `other_good` are both gold with score 1.0: the older wins. Both preference pairs stay.
    assert_eq!(left, vec![good.id, chat.id, unrelated.id, pref("rm -rf .git").id, pref("git push -f").id]);
    assert_eq!(store.dedup(false).unwrap().removed, 0);
}

#[test]
fn export_writes_a_recorded_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let all = one_of_each();
    store.insert(&all).unwrap();
    assert_eq!(store.latest_export().unwrap(), None);

    let path = dir.path().join("exports/code.jsonl");
    let filter = Filter::default().domain("code");
    let rec = store.export(&filter, &path, ExportFormat::Full).unwrap();
    assert_eq!(rec.rows, 3);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(rec.hash, blake3::hash(&bytes).to_hex().to_string());
    let back: Vec<Example> = sam_schema::JsonlReader::open(&path).unwrap().map(|p| p.unwrap().example).collect();
    assert_eq!(back, all[1..4].to_vec());

    let train = dir.path().join("train.jsonl");
    let rec2 = store.export(&Filter::default().kinds([Kind::Chat]), &train, ExportFormat::Training).unwrap();
    assert_eq!(std::fs::read_to_string(&train).unwrap().trim_end(), all[1].to_training_value().to_string());
    assert_eq!(store.exports().unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![rec.id, rec2.id]);
    let latest = store.latest_export().unwrap().unwrap();
    assert_eq!(latest, rec2);
    assert_eq!(latest.filter, Filter::default().kinds([Kind::Chat]));
    // No temporary files are left beside the exports.
    let names: Vec<_> =
        std::fs::read_dir(dir.path().join("exports")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("code.jsonl")]);
}

#[test]
fn training_runs_are_recorded_and_updated() {
    let (_d, mut store) = open();
    let mut run = TrainingRun {
        id: "run-1".into(),
        started: 100,
        finished: None,
        status: RunState::Running,
        dataset_path: Some("/data/ds-1".into()),
        manifest_hash: Some("ab".repeat(32)),
        adapter_path: None,
        metrics: serde_json::json!({}),
    };
    store.record_training_run(&run).unwrap();
    run.finished = Some(200);
    run.status = RunState::Trained;
    run.adapter_path = Some("/runs/run-1/adapter".into());
    run.metrics = serde_json::json!({"val_loss": 1.25});
    store.record_training_run(&run).unwrap();
    let second = TrainingRun { id: "run-2".into(), started: 300, ..run.clone() };
    store.record_training_run(&second).unwrap();
    assert_eq!(store.training_runs().unwrap(), vec![run, second]);
    let nameless = TrainingRun { id: " ".into(), ..store.training_runs().unwrap()[0].clone() };
    assert!(matches!(store.record_training_run(&nameless), Err(StoreError::Invalid(_))));

    // record_run: a new run starts now; an update keeps what it does not change.
    let rec = store
        .record_run(RunUpdate { dataset_path: Some("/data/ds-3".into()), ..RunUpdate::new("run-3", RunState::Running) })
        .unwrap();
    assert!(rec.started > 1_600_000_000 && rec.finished.is_none());
    let done = store
        .record_run(RunUpdate {
            metrics: Some(serde_json::json!({"loss": 1})),
            ..RunUpdate::new("run-3", RunState::Evaluated)
        })
        .unwrap();
    assert_eq!(
        (done.started, done.dataset_path.clone(), done.status),
        (rec.started, rec.dataset_path, RunState::Evaluated)
    );
    assert!(done.finished.is_some());
    assert_eq!(store.training_runs().unwrap().last(), Some(&done));
    assert_eq!(RunState::parse("succeeded"), Some(RunState::Trained), "what older versions wrote");
}

#[test]
fn stats_count_trend_and_source_health() {
    let (_d, mut store) = open();
    let day = 1_700_000_000; // 2023-11-14
    let git: Vec<Example> = (0..4)
        .map(|i| {
            instr(&format!("Message for change {i}"), "Fix the tokenizer loop bound.")
                .with_source("git")
                .with_created_at(day)
        })
        .collect();
    let mut docs = vec![
        instr("What is sam?", "A toolkit that fine-tunes adapters.").with_source("docs").with_created_at(day + 86_400),
        instr("Bad", "y").with_source("docs").with_created_at(day + 86_400),
    ];
    docs.push(instr("Empty", "").with_source("docs"));
    store.insert(&git).unwrap();
    store.insert(&git[..1]).unwrap();
    store.insert(&docs).unwrap();

    let s = store.stats().unwrap();
    assert_eq!((s.total, s.validated, s.quarantined), (6, 0, 1));
    assert_eq!(s.by_tier, vec![(Tier::Gold, 0), (Tier::Silver, 0), (Tier::Bronze, 0), (Tier::Unverified, 6)]);
    assert_eq!(s.by_kind, vec![(Kind::Instruction, 6)]);
    let daily: Vec<(&str, u64)> = s.daily.iter().map(|d| (d.day.as_str(), d.examples)).collect();
    assert_eq!(daily, vec![("2023-11-14", 4), ("2023-11-15", 2)]);
    assert!(s.sources.iter().all(|h| h.health.is_none()), "no health before validation");

    // Stats are cached until the store changes.
    assert_eq!(store.stats().unwrap().computed_at, s.computed_at);
    store.validate(&ValidateOptions::default(), &mut |_, _| {}).unwrap();
    let s = store.stats().unwrap();
    assert_eq!(s.validated, 6);
    let health: Vec<_> = s
        .sources
        .iter()
        .map(|h| {
            (h.source.as_str(), h.examples, h.inserted, h.duplicates, h.rejected, h.health.map(|x| format!("{x:.2}")))
        })
        .collect();
    // docs: mean quality (1.0 + 0.5) / 2, and 1 of its 3 offers was rejected: 100 × 0.75 × 2/3.
    let h = |x: &str| Some(x.to_string());
    assert_eq!(health, vec![("git", 4, 4, 1, 0, h("100.00")), ("docs", 2, 2, 0, 1, h("50.00"))]);
}

#[test]
fn schema_is_versioned_and_newer_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    store.integrity_check().unwrap();
    drop(store);
    // Opening again migrates nothing and keeps the data.
    let mut store = SqliteStore::open(&path).unwrap();
    store.insert(&[instr("a", "an answer")]).unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { found: 99, supported: 1 }), "{err}");
    assert!(err.to_string().contains("upgrade sam"), "{err}");
}

#[test]
fn the_trait_is_object_safe() {
    let (_d, store) = open();
    let mut boxed: Box<dyn Store> = Box::new(store);
    assert_eq!(boxed.insert(&[instr("a", "an answer")]).unwrap().inserted, 1);
    assert_eq!(boxed.query(&Filter::default()).unwrap().len(), 1);
}

#[test]
fn one_large_batch_counts_the_same_as_many_small_ones() {
    // One big transaction or many small ones: the same outcome.
    let make = |i: usize| {
        if i % 1_000 == 999 {
            instr(&format!("Question {i}"), " ")
        } else {
            instr(&format!("Question {}", if i % 10 == 9 { i - 5 } else { i }), "A fine answer.")
        }
    };
    let all: Vec<Example> = (0..7_000).map(make).collect();
    let (_d1, mut big) = open();
    let (_d2, mut small) = open();
    let report = big.insert(&all).unwrap();
    let mut merged = sam_store::InsertReport::default();
    for chunk in all.chunks(100) {
        let mut r = small.insert(chunk).unwrap();
        r.rejections
            .iter_mut()
            .for_each(|x| x.index += merged.inserted as usize + merged.duplicates as usize + merged.rejected as usize);
        merged.merge(r);
    }
    assert_eq!(report, merged);
    assert_eq!((report.inserted, report.duplicates, report.rejected), (6_300, 693, 7));
    assert_eq!(
        report.rejections.iter().map(|r| r.index).collect::<Vec<_>>(),
        [999, 1999, 2999, 3999, 4999, 5999, 6999]
    );
    assert_eq!(big.query(&Filter::default()).unwrap(), small.query(&Filter::default()).unwrap());
}
