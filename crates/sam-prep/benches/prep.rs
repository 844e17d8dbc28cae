//! Criterion benchmark of prep on the Python peer's rows (see
//! `scripts/bench-prep.sh` for the side-by-side comparison).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sam_prep::bench_rows::bench_examples;
use sam_prep::prepare::{Input, PrepConfig, Preparer};

fn bench(c: &mut Criterion) {
    let path = sam_models::require_test_model().unwrap_or_else(|e| panic!("{e}"));
    let model = sam_models::BaseModel::open(&path).unwrap();
    let n = 500;
    let input = Input { examples: bench_examples(n), sources: Vec::new() };
    let mut g = c.benchmark_group("prep");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    for threads in [1, 2] {
        let prep = Preparer::new(&model, PrepConfig { threads, ..PrepConfig::default() }).unwrap();
        g.bench_function(format!("chat_{n}_rows_{threads}_threads"), |b| {
            b.iter(|| prep.prepare(&input, |_| {}).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
