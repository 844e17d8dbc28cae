//! Near-duplicate detection over 1M generated examples with known
//! near-duplicate pairs: time and recall.
//!
//! `cargo bench -p sam-capture --bench near_dup [-- N]` (N examples, default
//! 1,000,000; 5,000 when `cargo test` runs it as a smoke test, which fails
//! below 99% recall). Each example is 60–100 words drawn from a 20k-word vocabulary;
//! 5% of them are copies of another with 1–3 words changed, so the planted
//! pairs have Jaccard similarity (of 3-word shingles) between about 0.8 and
//! 0.97. Recall is measured over the planted pairs whose exact Jaccard is at
//! least 0.9 (and, for information, over those between 0.8 and 0.9).

use std::collections::HashSet;
use std::time::Instant;

use sam_store::near_dup::{Item, NearDupConfig, find};

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

fn shingles(words: &[u32]) -> HashSet<[u32; 3]> {
    words.windows(3).map(|w| [w[0], w[1], w[2]]).collect()
}

fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let (sa, sb) = (shingles(a), shingles(b));
    sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64
}

fn main() {
    // `cargo test --all-targets` runs this file without `--bench`: a smoke
    // run on a small size, so the test command stays fast; `cargo bench`
    // measures the full size.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize =
        std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(if bench { 1_000_000 } else { 5_000 });
    let t0 = Instant::now();
    let mut rng = Rng(42);
    let vocab: Vec<String> = (0..20_000).map(|i| format!("w{i:x}")).collect();
    let mut docs: Vec<Vec<u32>> = Vec::with_capacity(n);
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    while docs.len() < n {
        let i = docs.len();
        if i > 0 && rng.below(20) == 0 {
            // A near-duplicate of an earlier original.
            let src = rng.below(i as u64) as usize;
            let mut d = docs[src].clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(d.len() as u64) as usize;
                d[at] = rng.below(20_000) as u32;
            }
            docs.push(d);
            pairs.push((src, i));
        } else {
            let len = 60 + rng.below(41) as usize;
            docs.push((0..len).map(|_| rng.below(20_000) as u32).collect());
        }
    }
    let texts: Vec<String> =
        docs.iter().map(|d| d.iter().map(|w| vocab[*w as usize].as_str()).collect::<Vec<_>>().join(" ")).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("ex{i}")).collect();
    let items: Vec<Item<'_>> =
        (0..n).map(|i| Item { id: &ids[i], text: &texts[i], quality: (i % 7) as f64 / 7.0 }).collect();
    let gen_s = t0.elapsed().as_secs_f64();

    let cfg = NearDupConfig::default();
    let t1 = Instant::now();
    let groups = find(&items, &cfg);
    let find_s = t1.elapsed().as_secs_f64();

    let mut group_of = vec![usize::MAX; n];
    for (g, grp) in groups.iter().enumerate() {
        group_of[grp.keep] = g;
        for &d in &grp.duplicates {
            group_of[d] = g;
        }
    }
    let same = |a: usize, b: usize| group_of[a] != usize::MAX && group_of[a] == group_of[b];
    let (mut hi, mut hi_found, mut mid, mut mid_found) = (0, 0, 0, 0);
    for &(a, b) in &pairs {
        let j = jaccard(&docs[a], &docs[b]);
        if j >= 0.9 {
            hi += 1;
            hi_found += usize::from(same(a, b));
        } else if j >= 0.8 {
            mid += 1;
            mid_found += usize::from(same(a, b));
        }
    }
    let grouped: usize = groups.iter().map(|g| 1 + g.duplicates.len()).sum();
    let threads = std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1);
    println!("near-dup benchmark: {n} examples, {} planted pairs, {threads} threads", pairs.len());
    println!("  generation {gen_s:.1} s (not counted)");
    println!("  find (signatures + LSH + verification + grouping): {find_s:.1} s");
    println!("  groups {}, examples in groups {grouped}", groups.len());
    println!(
        "  recall at Jaccard >= 0.9: {:.2}% ({hi_found}/{hi}); at 0.8-0.9: {:.2}% ({mid_found}/{mid})",
        100.0 * hi_found as f64 / hi.max(1) as f64,
        100.0 * mid_found as f64 / mid.max(1) as f64
    );
    if !bench {
        assert!(hi_found * 100 >= hi * 99, "recall at Jaccard >= 0.9 below 99%: {hi_found}/{hi}");
    }
}
