//! Live capture against a real SQLite store: what each event becomes,
//! batching by size and time, and the spool when the store is locked.

use std::time::Duration;

use sam_capture::Pipeline;
use sam_capture::capture::{Capture, CaptureConfig, Capturer, spooled};
use sam_schema::{Content, Kind, Prompt};
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore, StoreConfig};

fn events() -> Vec<Capture> {
    vec![
        Capture::Escalation {
            prompt: "Why does my async fn not compile when it holds a MutexGuard across an await?".into(),
            local: Some("Because async is not supported in traits.".into()),
            remote: "A std MutexGuard is not Send, so the future is not Send; drop the guard before the await or use tokio's Mutex.".into(),
            model: Some("big-remote".into()),
        },
        Capture::Escalation {
            prompt: "Explain what a Bloom filter is used for.".into(),
            local: None,
            remote: "A Bloom filter answers set membership with no false negatives and a tunable false-positive rate.".into(),
            model: None,
        },
        Capture::Correction {
            prompt: "How do I undo the last commit but keep the changes?".into(),
            wrong: "Run git reset --hard HEAD~1.".into(),
            correction: "Run git reset --soft HEAD~1: it moves HEAD back and keeps your changes staged.".into(),
        },
        Capture::Preference {
            prompt: "Name a good variable for a retry count.".into(),
            chosen: "max_retries".into(),
            rejected: "x2".into(),
        },
        Capture::Feedback {
            prompt: "How do I list files sorted by size?".into(),
            response: "Use `ls -lS`; add `-r` to reverse the order.".into(),
        },
        Capture::Distill {
            prompt: "What is the difference between a process and a thread?".into(),
            response: "Processes have separate address spaces; threads share one within a process.".into(),
            system: Some("You are a concise assistant.".into()),
            model: Some("teacher".into()),
        },
    ]
}

#[test]
fn each_event_becomes_the_right_example() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let cfg = CaptureConfig { max_batch: 100, spool: Some(dir.path().join("spool.jsonl")), ..Default::default() };
    let mut cap = Capturer::new(store, Pipeline::default(), cfg);
    for e in events() {
        cap.capture(e).unwrap();
    }
    cap.flush().unwrap();
    let got: Vec<(String, Kind)> =
        cap.store().query(&Filter::default()).unwrap().into_iter().map(|e| (e.source.clone(), e.kind())).collect();
    let want = [
        ("escalation", Kind::Preference),
        ("escalation", Kind::Chat),
        ("correction", Kind::Preference),
        ("preference", Kind::Preference),
        ("feedback", Kind::Instruction),
        ("distillation", Kind::Chat),
    ];
    assert_eq!(got, want.map(|(s, k)| (s.to_string(), k)));
    let all = cap.store().query(&Filter::default()).unwrap();
    // Escalation pair: chosen = remote, rejected = local. Correction: chosen = correction.
    match &all[0].content {
        Content::Preference { chosen, rejected, prompt: Prompt::Text(_) } => {
            assert!(chosen.starts_with("A std MutexGuard") && rejected.starts_with("Because async"));
        }
        other => panic!("{other:?}"),
    }
    match &all[2].content {
        Content::Preference { chosen, rejected, .. } => {
            assert!(chosen.contains("--soft") && rejected.contains("--hard"));
        }
        other => panic!("{other:?}"),
    }
    assert!(all.iter().all(|e| e.quality.is_some() && !e.domain.is_empty()), "{all:#?}");
    assert!(Capture::Feedback { prompt: " ".into(), response: "x".into() }.to_example(true).is_err());
}

#[test]
fn flushes_by_size_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let cfg = CaptureConfig {
        max_batch: 3,
        max_age_ms: 200,
        spool: Some(dir.path().join("spool.jsonl")),
        ..Default::default()
    };
    let mut cap = Capturer::new(store, Pipeline::default(), cfg);
    let mut evs = events().into_iter();
    cap.capture(evs.next().unwrap()).unwrap();
    cap.capture(evs.next().unwrap()).unwrap();
    assert_eq!((cap.pending(), cap.store().count(&Filter::default()).unwrap()), (2, 0));
    let r = cap.capture(evs.next().unwrap()).unwrap().expect("full buffer flushes");
    assert_eq!((r.stored, cap.pending()), (3, 0));
    cap.capture(evs.next().unwrap()).unwrap();
    assert!(cap.tick().unwrap().is_none(), "not due yet");
    std::thread::sleep(Duration::from_millis(250));
    let r = cap.tick().unwrap().expect("old buffer flushes");
    assert_eq!(r.stored, 1);
    assert_eq!(cap.store().count(&Filter::default()).unwrap(), 4);
}

#[test]
fn captures_made_while_the_store_is_locked_arrive_once_it_is_writable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let spool = dir.path().join("spool.jsonl");
    let store = SqliteStore::open_with(&db, &StoreConfig { busy_timeout_ms: 50, ..Default::default() }).unwrap();
    let cfg = CaptureConfig { max_batch: 2, spool: Some(spool.clone()), ..Default::default() };
    let mut cap = Capturer::new(store, Pipeline::default(), cfg);

    // Another process holds the write lock.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut evs = events().into_iter();
    cap.capture(evs.next().unwrap()).unwrap();
    let r = cap.capture(evs.next().unwrap()).unwrap().unwrap();
    assert_eq!((r.stored, r.spooled), (0, 2), "{r:?}");
    assert!(r.error.as_deref().unwrap_or("").contains("busy"), "{r:?}");
    cap.capture(evs.next().unwrap()).unwrap();
    let r = cap.flush().unwrap();
    assert_eq!((r.stored, r.spooled), (0, 1), "{r:?}");
    assert_eq!(spooled(&spool).unwrap(), 3);
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    assert_eq!(cap.store().count(&Filter::default()).unwrap(), 0);

    // Writable again: the next flush drains the spool, then stores the buffer.
    cap.capture(evs.next().unwrap()).unwrap();
    let r = cap.flush().unwrap();
    assert_eq!((r.drained, r.stored, r.spooled), (3, 4, 0), "{r:?}");
    assert_eq!(spooled(&spool).unwrap(), 0);
    assert_eq!(cap.store().count(&Filter::default()).unwrap(), 4);
}

#[test]
fn a_capturer_dropped_with_a_buffer_and_a_locked_store_leaves_it_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let spool = dir.path().join("spool.jsonl");
    let cfg = CaptureConfig { max_batch: 100, spool: Some(spool.clone()), ..Default::default() };
    let store_cfg = StoreConfig { busy_timeout_ms: 50, ..Default::default() };
    {
        let mut cap = Capturer::new(SqliteStore::open_with(&db, &store_cfg).unwrap(), Pipeline::default(), cfg.clone());
        let locker = rusqlite::Connection::open(&db).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        for e in events() {
            cap.capture(e).unwrap();
        }
        drop(cap);
        locker.execute_batch("ROLLBACK").unwrap();
    }
    assert_eq!(spooled(&spool).unwrap(), 6);
    // A later process (a new capturer) drains it on its first flush.
    let mut cap = Capturer::new(SqliteStore::open_with(&db, &store_cfg).unwrap(), Pipeline::default(), cfg);
    assert_eq!(cap.flush().unwrap().stored, 6);
    assert_eq!(spooled(&spool).unwrap(), 0);
}
