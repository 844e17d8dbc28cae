//! Ingest throughput with deduplication, in examples per second.
//!
//! - `insert`: examples already in memory, stored in batches of
//!   `StoreConfig::default().batch_size` (50,000) into a fresh store (content hashing, the dedup check against the unique index,
//!   basic validity, JSON encoding, SQLite writes, one commit per batch).
//! - `parse_and_insert`: the same from JSONL text, as `sam ingest` does it
//!   (parsing included, on one thread).
//!
//! One in ten offered examples repeats an earlier one, so the dedup path is
//! exercised. Sizes: 10,000 rows, and `SAM_BENCH_ROWS` (default 100,000; the
//! figure in docs/benchmarks.md used 1,000,000).
//!
//! `insert` is timed twice: by the wall clock, and by the CPU time of the
//! benchmark thread (`insert_cpu`), which other processes on a shared machine
//! do not inflate (it leaves out time spent waiting for the disk):
//!
//! ```sh
//! SAM_BENCH_ROWS=1000000 cargo bench -p sam-store --bench ingest
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sam_schema::{Content, Example, JsonlReader};
use sam_store::prelude::*;
use sam_store::{Batch, SqliteStore};

/// Examples per transaction: what `sam ingest` uses by default.
fn batch_size() -> usize {
    sam_store::StoreConfig::default().batch_size
}

/// `n` examples of realistic size (about 250 bytes of text), one in ten a
/// repeat of an earlier one.
fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let k = if i % 10 == 9 { i - 5 } else { i };
            Example::new(Content::Instruction {
                instruction: format!("Write the commit message for change {k} of the tokenizer module"),
                input: format!("src/tokenizer.rs | {} +{}-\nsrc/lib.rs | 2 +-", k % 97, k % 13),
                output: format!(
                    "Fix the off-by-one error in the merge loop of change {k}: the last pair was skipped \
                     when the input ended on a boundary."
                ),
            })
            .with_source(["git", "code", "docs"][k % 3])
            .with_domain("code")
        })
        .collect()
}

fn rows() -> Vec<usize> {
    // `cargo test --all-targets` runs benchmarks once each, as a smoke test,
    // without `--bench`: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return vec![10_000];
    }
    let large = std::env::var("SAM_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    if large == 10_000 { vec![10_000] } else { vec![10_000, large] }
}

fn fresh_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    (dir, store)
}

/// CPU time (user + system) of the calling thread.
struct CpuTime;

fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like the wall clock.
        WallTime.formatter()
    }
}

fn bench_insert_cpu(c: &mut Criterion<CpuTime>) {
    insert_group(c, "insert_cpu");
}

fn bench_insert(c: &mut Criterion) {
    insert_group(c, "insert");
}

fn insert_group<M: Measurement>(c: &mut Criterion<M>, name: &str) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in rows() {
        let data = examples(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &data, |b, data| {
            b.iter_batched(
                fresh_store,
                |(dir, mut store)| {
                    let mut inserted = 0;
                    for chunk in data.chunks(batch_size()) {
                        inserted += store.insert(chunk).unwrap().inserted;
                    }
                    assert_eq!(inserted as usize, n - n / 10);
                    // Closing (the last checkpoint) is part of the work.
                    drop(black_box(store));
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn bench_parse_and_insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_and_insert");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in rows() {
        let text: String = examples(n).iter().map(|e| e.to_training_value().to_string() + "\n").collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter_batched(
                fresh_store,
                |(dir, mut store)| {
                    let mut batch = Vec::with_capacity(batch_size());
                    let mut inserted = 0;
                    for item in JsonlReader::new(text.as_bytes(), None) {
                        batch.push(item.unwrap().example);
                        if batch.len() == batch_size() {
                            inserted += store.insert_batch(&Batch::new(&batch)).unwrap().inserted;
                            batch.clear();
                        }
                    }
                    inserted += store.insert(&batch).unwrap().inserted;
                    assert_eq!(inserted as usize, n - n / 10);
                    // Closing (the last checkpoint) is part of the work.
                    drop(black_box(store));
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_insert, bench_parse_and_insert);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(CpuTime);
    targets = bench_insert_cpu
}
criterion_main!(benches, cpu);
