//! Redaction throughput, one thread: MB/s of code, logs and prose, apart and
//! mixed.
//!
//! `cargo bench -p sam-capture --bench redact`
//!
//! - code: the workspace's own Rust sources (`crates/*/src/**/*.rs`);
//! - prose: its markdown (`README.md`, `docs/*.md`);
//! - logs: generated service logs (timestamps, levels, client addresses,
//!   request ids, paths, durations; one line in fifty holds an email, a
//!   token or a password assignment);
//! - mixed: the three interleaved in chunks of about 4 KB, as examples are.
//!
//! Each input is cut or repeated to 1 MiB, and split into examples of about
//! 2 KB (what `redact` is called on in the pipeline). Throughput counts the
//! input bytes. Group `redact` measures wall-clock time (the figure on an
//! idle machine); group `redact-cpu` measures the thread's CPU time, which
//! stays meaningful on a machine busy with other work.

use std::path::Path;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sam_capture::redact::Redactor;

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
struct ThreadCpu;

static WALL: WallTime = WallTime;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
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
        // Nanoseconds, as wall time: the same units and throughput scaling.
        WALL.formatter()
    }
}

const SIZE: usize = 1 << 20;
const EXAMPLE: usize = 2048;

fn files(dir: &Path, ext: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() && !p.ends_with("target") {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext)
            && let Ok(t) = std::fs::read_to_string(&p)
        {
            out.push(t);
        }
    }
}

/// `parts` joined and repeated (or cut, on a character boundary) to `SIZE` bytes.
fn sized(parts: &[String]) -> String {
    let mut s = String::with_capacity(SIZE + 4096);
    while s.len() < SIZE {
        for p in parts {
            s.push_str(p);
            s.push('\n');
            if s.len() >= SIZE {
                break;
            }
        }
    }
    let mut end = SIZE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn logs() -> String {
    let mut r = Rng(7);
    let levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    let paths = ["/api/v1/items", "/api/v1/users/me", "/health", "/static/app.js", "/api/v2/search?q=rust+regex"];
    let mut s = String::with_capacity(SIZE + 256);
    while s.len() < SIZE {
        let (d, h, m, sec) = (1 + r.below(28), r.below(24), r.below(60), r.below(60));
        let ip = format!("{}.{}.{}.{}", 11 + r.below(200), r.below(256), r.below(256), 1 + r.below(254));
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            r.next() as u32,
            r.below(1 << 16),
            r.below(1 << 12),
            r.below(1 << 12),
            r.next() >> 16
        );
        let line = match r.below(50) {
            0 => format!(
                "2024-05-{d:02}T{h:02}:{m:02}:{sec:02}Z WARN  auth: failed login user=dana.k{}@example-mail.net from {ip}\n",
                r.below(100)
            ),
            1 => format!(
                "2024-05-{d:02}T{h:02}:{m:02}:{sec:02}Z DEBUG client: token=ghp_{:016x}{:016x}abcd request_id={id}\n",
                r.next(),
                r.next()
            ),
            2 => format!(
                "2024-05-{d:02}T{h:02}:{m:02}:{sec:02}Z DEBUG config: DB_PASSWORD=Tr0ub4dor{} loaded from /etc/app/env\n",
                r.below(1000)
            ),
            _ => format!(
                "2024-05-{d:02}T{h:02}:{m:02}:{sec:02}Z {:<5} http: {ip} \"GET {} HTTP/1.1\" {} {}ms request_id={id} version=1.{}.{}\n",
                levels[r.below(levels.len() as u64) as usize],
                paths[r.below(paths.len() as u64) as usize],
                [200, 200, 200, 304, 404, 500][r.below(6) as usize],
                r.below(900),
                r.below(40),
                r.below(10)
            ),
        };
        s.push_str(&line);
    }
    s.truncate(SIZE);
    s
}

/// Split `text` into examples of about `EXAMPLE` bytes, at line ends.
fn examples(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + EXAMPLE).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        if let Some(nl) = text[end..].find('\n') {
            end += nl + 1;
        } else {
            end = text.len();
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn inputs() -> Vec<(&'static str, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut code = Vec::new();
    files(&root.join("crates"), "rs", &mut code);
    let mut prose = Vec::new();
    if let Ok(t) = std::fs::read_to_string(root.join("README.md")) {
        prose.push(t);
    }
    files(&root.join("docs"), "md", &mut prose);
    let (code, prose, logs) = (sized(&code), sized(&prose), logs());
    // Interleave 4 KB chunks of each.
    let mut mixed = String::with_capacity(3 * SIZE);
    let (c, p, l) = (examples(&code), examples(&prose), examples(&logs));
    for i in 0..c.len().max(p.len()).max(l.len()) {
        for part in [c.get(i), l.get(i), p.get(i)].into_iter().flatten() {
            mixed.push_str(part);
        }
    }
    vec![("code", code), ("logs", logs), ("prose", prose), ("mixed", mixed)]
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let redactor = Redactor::default();
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    for (name, text) in inputs() {
        let parts = examples(&text);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0;
                for p in &parts {
                    n += redactor.redact(p).1.total();
                }
                n
            })
        });
    }
    g.finish();
}

fn wall(c: &mut Criterion) {
    bench(c, "redact");
}

fn cpu(c: &mut Criterion<ThreadCpu>) {
    bench(c, "redact-cpu");
}

criterion_group!(wall_time, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = cpu
}
criterion_main!(wall_time, cpu_time);
