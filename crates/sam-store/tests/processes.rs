//! The store across processes: a writer killed with SIGKILL mid-ingest, and
//! two writer processes at once.
//!
//! This test binary has its own `main` (harness = false): run with
//! `SAM_STORE_CHILD` set, it is the child writer; otherwise it runs the
//! scenarios, spawning itself as the children.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sam_schema::{Content, Example};
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore};

const CHILD_ENV: &str = "SAM_STORE_CHILD";

fn main() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        child(&args);
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "sigkill_mid_ingest_keeps_exactly_the_committed_batches",
            sigkill_mid_ingest_keeps_exactly_the_committed_batches,
        ),
        ("two_writer_processes_both_finish_with_every_row", two_writer_processes_both_finish_with_every_row),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        let start = Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok ({:.1}s)", start.elapsed().as_secs_f64()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{} passed, {failed} failed", tests.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

/// The `i`-th example of batch `b` of `source`: distinct everywhere.
fn example(source: &str, b: u64, i: u64) -> Example {
    Example::new(Content::Instruction {
        instruction: format!("Summarise change {b}/{i} of {source}"),
        input: format!("src/lib.rs | {i} +-"),
        output: format!("Refactor module {b} step {i}, keeping behaviour the same."),
    })
    .with_source(source)
    .with_meta("batch", b)
}

/// An example every writer offers in batch `b` (for duplicate races).
fn shared(b: u64) -> Example {
    Example::new(Content::Completion { text: format!("shared example {b}") }).with_source("shared")
}

/// Child: `DB SOURCE BATCHES SIZE`. Resumes after its source's cursor, writes
/// each batch with its cursor in one transaction, and prints
/// `committed B inserted I duplicates D` after each commit.
fn child(args: &str) {
    let a: Vec<&str> = args.split('\t').collect();
    let (db, source, batches, size): (&str, &str, u64, u64) =
        (a[0], a[1], a[2].parse().unwrap(), a[3].parse().unwrap());
    let mut store = SqliteStore::open(db).unwrap_or_else(|e| panic!("child open: {e}"));
    let start: u64 = store.cursor(source).unwrap().map(|c| c.parse().unwrap()).unwrap_or(0);
    for b in start..batches {
        let mut batch: Vec<Example> = (0..size).map(|i| example(source, b, i)).collect();
        batch.push(shared(b));
        let r = store
            .insert_with_cursor(&batch, source, &(b + 1).to_string())
            .unwrap_or_else(|e| panic!("child insert: {e}"));
        println!("committed {} inserted {} duplicates {}", b + 1, r.inserted, r.duplicates);
    }
}

fn spawn(db: &Path, source: &str, batches: u64, size: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{}\t{source}\t{batches}\t{size}", db.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Parse a child's `committed …` line into (batch, inserted, duplicates).
fn parse_committed(line: &str) -> (u64, u64, u64) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((w.len(), w[0], w[2], w[4]), (6, "committed", "inserted", "duplicates"), "{line}");
    (w[1].parse().unwrap(), w[3].parse().unwrap(), w[5].parse().unwrap())
}

fn sigkill_mid_ingest_keeps_exactly_the_committed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    // Each round kills a writer at a different moment, then the next round
    // resumes from the cursor the store kept. Big batches: the kill lands
    // inside a transaction. Small ones, many delays: it also lands between
    // a commit and the next batch.
    let plans: [(&str, u64, &[u64]); 2] =
        [("big", 3_000, &[0, 7, 23, 41]), ("small", 100, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])];
    for (source, size, delays) in plans {
        for (round, &delay_ms) in delays.iter().enumerate() {
            kill_round(&db, source, size, delay_ms, round as u64);
        }
    }
}

fn kill_round(db: &Path, source: &str, size: u64, delay_ms: u64, round: u64) {
    let ctx = format!("{source} round {round} ({delay_ms} ms)");
    let mut child = spawn(db, source, u64::MAX, size);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = 0u64;
    let mut line = String::new();
    // Let it commit two batches, then kill it somewhere after.
    for _ in 0..2 {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "{ctx}: the child stopped early: {:?}",
            child.wait_with_output()
        );
        printed = parse_committed(&line).0;
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    // Whatever it printed before dying was committed.
    for l in out.lines() {
        printed = parse_committed(&l.unwrap()).0;
    }

    let store = SqliteStore::open(db).unwrap();
    store.integrity_check().unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let cursor: u64 = store.cursor(source).unwrap().unwrap().parse().unwrap();
    // A batch may have committed after its line was printed, never before.
    assert!(cursor == printed || cursor == printed + 1, "{ctx}: cursor {cursor}, printed {printed}");
    let rows = store.count(&Filter::default().source(source)).unwrap();
    assert_eq!(rows, cursor * size, "{ctx}: whole batches only, and exactly those the cursor counts");
    // Every committed batch is complete.
    let mut per_batch = vec![0u64; cursor as usize];
    store
        .scan(&Filter::default().source(source), &mut |ex| {
            per_batch[ex.metadata["batch"].as_u64().unwrap() as usize] += 1;
            Ok(())
        })
        .unwrap();
    assert!(per_batch.iter().all(|n| *n == size), "{ctx}: {per_batch:?}");
    assert!(cursor >= 2 * (round + 1), "{ctx}: each round adds at least two batches");
}

fn two_writer_processes_both_finish_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    const BATCHES: u64 = 60;
    const SIZE: u64 = 200;
    // Both start on a store that does not exist yet: they race to create and
    // migrate it too.
    let children = [spawn(&db, "alpha", BATCHES, SIZE), spawn(&db, "beta", BATCHES, SIZE)];
    let mut inserted = 0;
    let mut duplicates = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a writer failed: {stderr}");
        assert!(!stderr.contains("locked") && !stderr.contains("busy"), "{stderr}");
        let lines: Vec<(u64, u64, u64)> = String::from_utf8(out.stdout).unwrap().lines().map(parse_committed).collect();
        assert_eq!(lines.len() as u64, BATCHES);
        inserted += lines.iter().map(|l| l.1).sum::<u64>();
        duplicates += lines.iter().map(|l| l.2).sum::<u64>();
    }
    let store = SqliteStore::open(&db).unwrap();
    store.integrity_check().unwrap();
    let total = store.count(&Filter::default()).unwrap();
    // Each writer's own rows, plus one shared example per batch index, which
    // exactly one of the two stored and the other counted as a duplicate.
    assert_eq!(total, 2 * BATCHES * SIZE + BATCHES);
    assert_eq!((inserted, duplicates), (total, BATCHES));
    for source in ["alpha", "beta"] {
        assert_eq!(store.count(&Filter::default().source(source)).unwrap(), BATCHES * SIZE);
        assert_eq!(store.cursor(source).unwrap().as_deref(), Some(BATCHES.to_string().as_str()));
    }
}
