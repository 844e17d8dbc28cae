//! Near-duplicate detection (MinHash/LSH) over stored examples.
//!
//! Two examples are near-duplicates when the Jaccard similarity of their
//! sets of word shingles (runs of `shingle` words, lowercased) is at least
//! `threshold`. Comparing every pair is quadratic, so:
//!
//! 1. each text gets a MinHash signature of `bands × rows` values (the
//!    minimum of one universal hash of every shingle per value); two
//!    signatures agree on a value with probability equal to the Jaccard
//!    similarity;
//! 2. locality-sensitive hashing cuts the signature into `bands` bands of
//!    `rows` values; texts that agree on a whole band are candidates. With
//!    the default 16 × 8, a pair at Jaccard 0.9 becomes a candidate with
//!    probability 1 − (1 − 0.9⁸)¹⁶ ≈ 0.9999, at 0.8 ≈ 0.95, at 0.5 ≈ 0.06;
//! 3. each candidate pair is kept when the share of agreeing signature
//!    values (the Jaccard estimate) reaches `threshold`; kept pairs are
//!    joined into groups (union-find), and each group keeps its best item.
//!
//! [`find`] is the pure function over `(id, text, quality)` items that any
//! store can reuse; [`crate::Examples::dedup_near`] applies it to the store,
//! marking (`metadata.near_duplicate_of`) or removing the others.

use std::collections::HashMap;

use rusqlite::params;
use sam_schema::Content;
use serde::{Deserialize, Serialize};

use crate::{SqliteStore, StoreError};

/// Settings of near-duplicate detection (`[dedup.near]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NearDupConfig {
    /// Minimum estimated Jaccard similarity of two near-duplicates.
    pub threshold: f64,
    /// Words per shingle.
    pub shingle: usize,
    /// LSH bands.
    pub bands: usize,
    /// Signature values per band (the signature has `bands × rows` values).
    pub rows: usize,
    /// Seed of the hash functions (fixed, so results are reproducible).
    pub seed: u64,
    /// Worker threads for signatures (0: all cores).
    pub threads: usize,
}

impl Default for NearDupConfig {
    fn default() -> Self {
        Self { threshold: 0.8, shingle: 3, bands: 16, rows: 8, seed: 0x5a3_d0d0, threads: 0 }
    }
}

/// One item to deduplicate.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its text.
    pub text: &'a str,
    /// How good it is: in a group, the item with the highest value is kept
    /// (ties: the earlier item).
    pub quality: f64,
}

/// A group of near-duplicates: the item kept and the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Index (in the input) of the item kept.
    pub keep: usize,
    /// Indices of the others, ascending.
    pub duplicates: Vec<usize>,
}

/// What [`crate::Examples::dedup_near`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearDupReport {
    /// Examples compared (preference pairs are left out: several pairs for
    /// one prompt are legitimate).
    pub examples: u64,
    /// Groups of near-duplicates found.
    pub groups: u64,
    /// Examples that are near-duplicates of a better one.
    pub duplicates: u64,
    /// Of those, how many were removed (with `remove`) or marked (without).
    pub removed: u64,
    /// How many were marked with `metadata.near_duplicate_of`.
    pub marked: u64,
}

/// The MinHash signature of a text (`bands × rows` values).
pub fn signature(text: &str, cfg: &NearDupConfig, coeffs: &[(u64, u64)]) -> Vec<u32> {
    let mut sig = vec![u32::MAX; coeffs.len()];
    let words: Vec<u64> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            // FNV-1a over the lowercased word.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for c in w.chars().flat_map(char::to_lowercase) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x100_0000_01b3);
                }
            }
            h
        })
        .collect();
    let k = cfg.shingle.max(1);
    let shingles: Vec<u64> = if words.len() < k {
        // Too short for one shingle: the words together are the one shingle.
        vec![mix(words.iter().fold(0x9e37_79b9_7f4a_7c15, |acc, w| mix(acc ^ w)))]
    } else {
        words.windows(k).map(|win| mix(win.iter().fold(0x9e37_79b9_7f4a_7c15, |acc, w| mix(acc ^ w)))).collect()
    };
    // One hash function at a time over all shingles: the minimum stays in a
    // register and the loop vectorises.
    for (s, (a, b)) in sig.iter_mut().zip(coeffs) {
        // Multiply-shift hashing: the high 32 bits of a·h + b.
        *s = shingles.iter().map(|h| (a.wrapping_mul(*h).wrapping_add(*b) >> 32) as u32).min().unwrap_or(u32::MAX);
    }
    sig
}

/// The hash coefficients of a configuration (odd multipliers).
pub fn coefficients(cfg: &NearDupConfig) -> Vec<(u64, u64)> {
    let mut state = cfg.seed ^ 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(state)
    };
    (0..cfg.bands * cfg.rows).map(|_| (next() | 1, next())).collect()
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The share of equal values of two signatures: an estimate of the Jaccard
/// similarity of the two texts' shingle sets.
pub fn similarity(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Find the groups of near-duplicates among `items`.
///
/// ```
/// use sam_store::near_dup::{find, Item, NearDupConfig};
/// let a = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door";
/// let b = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the gate";
/// let c = "an entirely different sentence about compilers, borrow checking and lifetimes in rust code";
/// let items = [
///     Item { id: "a", text: a, quality: 0.5 },
///     Item { id: "b", text: b, quality: 0.9 },
///     Item { id: "c", text: c, quality: 0.7 },
/// ];
/// let groups = find(&items, &NearDupConfig::default());
/// assert_eq!(groups.len(), 1);
/// assert_eq!((groups[0].keep, groups[0].duplicates.clone()), (1, vec![0])); // the better one stays
/// ```
pub fn find(items: &[Item<'_>], cfg: &NearDupConfig) -> Vec<Group> {
    let n = items.len();
    if n < 2 {
        return Vec::new();
    }
    let coeffs = coefficients(cfg);
    let width = coeffs.len();
    // Signatures, in parallel, into one flat buffer.
    let mut sigs = vec![0u32; n * width];
    let threads =
        if cfg.threads == 0 { std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1) } else { cfg.threads };
    let per = n.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        for (chunk_no, chunk) in sigs.chunks_mut(per * width).enumerate() {
            let coeffs = &coeffs;
            s.spawn(move || {
                for (j, out) in chunk.chunks_mut(width).enumerate() {
                    out.copy_from_slice(&signature(items[chunk_no * per + j].text, cfg, coeffs));
                }
            });
        }
    });
    let sig = |i: usize| &sigs[i * width..(i + 1) * width];

    // LSH: sort (band hash, item) per band; equal runs are candidate buckets.
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn root(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            parent[i as usize] = parent[parent[i as usize] as usize];
            i = parent[i as usize];
        }
        i
    }
    let mut keys: Vec<(u64, u32)> = Vec::with_capacity(n);
    for band in 0..cfg.bands {
        keys.clear();
        for i in 0..n {
            let vals = &sig(i)[band * cfg.rows..(band + 1) * cfg.rows];
            let h = vals.iter().fold(band as u64, |acc, v| mix(acc ^ u64::from(*v)));
            keys.push((h, i as u32));
        }
        keys.sort_unstable();
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && keys[end].0 == keys[start].0 {
                end += 1;
            }
            if end - start > 1 {
                let bucket = &keys[start..end];
                // Small buckets: every pair; large ones (many exact copies):
                // each member against the first.
                let all_pairs = bucket.len() <= 32;
                for (x, &(_, i)) in bucket.iter().enumerate() {
                    let others = if all_pairs { &bucket[..x] } else { &bucket[..x.min(1)] };
                    for &(_, j) in others {
                        let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
                        if ri != rj && similarity(sig(i as usize), sig(j as usize)) >= cfg.threshold {
                            parent[ri.max(rj) as usize] = ri.min(rj);
                        }
                    }
                }
            }
            start = end;
        }
    }

    // Groups, each keeping its best item.
    let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
    for i in 0..n {
        let r = root(&mut parent, i as u32);
        if r != i as u32 {
            groups.entry(r).or_default().push(i);
        }
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .filter_map(|(r, mut members)| {
            members.push(r as usize);
            members.sort_unstable();
            members.dedup();
            if members.len() < 2 {
                return None;
            }
            let keep = *members
                .iter()
                .max_by(|&&a, &&b| items[a].quality.total_cmp(&items[b].quality).then(b.cmp(&a)))
                .expect("a group has members");
            let duplicates = members.into_iter().filter(|&m| m != keep).collect();
            Some(Group { keep, duplicates })
        })
        .collect();
    out.sort_by_key(|g| g.keep);
    out
}

impl SqliteStore {
    /// `Examples::dedup_near` for the SQLite store.
    pub(crate) fn dedup_near_impl(&mut self, cfg: &NearDupConfig, remove: bool) -> Result<NearDupReport, StoreError> {
        let mut rows: Vec<(i64, String, String, f64)> = Vec::new();
        {
            let mut stmt = self.conn().prepare(
                "SELECT rid, id, content, quality, tier FROM examples WHERE kind <> 'preference' ORDER BY rid",
            )?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let content: String = r.get(2)?;
                let content: Content =
                    serde_json::from_str(&content).map_err(|e| StoreError::Corrupt(format!("example content: {e}")))?;
                let text: Vec<&str> = content.fields().into_iter().map(|(_, t)| t).collect();
                let quality: Option<f64> = r.get(3)?;
                let tier: String = r.get(4)?;
                let rank = tier.parse::<sam_schema::Tier>().map(|t| t.rank()).unwrap_or(0);
                // Tier first, then quality (which lies in [0, 1]).
                let score = f64::from(rank) * 2.0 + quality.unwrap_or(-1.0);
                rows.push((r.get(0)?, r.get(1)?, text.join("\n"), score));
            }
        }
        let items: Vec<Item<'_>> =
            rows.iter().map(|(_, id, text, q)| Item { id: id.as_str(), text: text.as_str(), quality: *q }).collect();
        let groups = find(&items, cfg);
        let mut report = NearDupReport {
            examples: rows.len() as u64,
            groups: groups.len() as u64,
            duplicates: groups.iter().map(|g| g.duplicates.len() as u64).sum(),
            ..Default::default()
        };
        if groups.is_empty() {
            return Ok(report);
        }
        let tx = self.write_tx()?;
        {
            let mut del = tx.prepare("DELETE FROM examples WHERE rid = ?1")?;
            let mut mark = tx.prepare(
                "UPDATE examples SET metadata = json_set(COALESCE(metadata, '{}'), '$.near_duplicate_of', ?2) \
                 WHERE rid = ?1",
            )?;
            for g in &groups {
                let keep_id = &rows[g.keep].1;
                for &d in &g.duplicates {
                    if remove {
                        report.removed += del.execute(params![rows[d].0])? as u64;
                    } else {
                        report.marked += mark.execute(params![rows[d].0, keep_id])? as u64;
                    }
                }
            }
        }
        crate::sqlite::bump_generation(&tx)?;
        tx.commit()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Filter;
    use crate::prelude::*;
    use sam_schema::{Content, Example};

    fn sentence(seed: u64, words: usize) -> Vec<String> {
        let mut s = seed;
        (0..words)
            .map(|_| {
                s = mix(s.wrapping_add(0x9e37_79b9_7f4a_7c15));
                format!("w{}", s % 5000)
            })
            .collect()
    }

    #[test]
    fn estimate_tracks_jaccard() {
        let cfg = NearDupConfig::default();
        let coeffs = coefficients(&cfg);
        let a = sentence(1, 100);
        let mut b = a.clone();
        for w in b.iter_mut().step_by(20) {
            *w = "changed".into();
        }
        let (sa, sb) = (signature(&a.join(" "), &cfg, &coeffs), signature(&b.join(" "), &cfg, &coeffs));
        // 5 changed words touch up to 15 of 98 shingles: Jaccard ≈ 0.73–0.8.
        let est = similarity(&sa, &sb);
        assert!((0.6..0.92).contains(&est), "{est}");
        let c = sentence(2, 100);
        assert!(similarity(&sa, &signature(&c.join(" "), &cfg, &coeffs)) < 0.1);
    }

    #[test]
    fn store_marks_or_removes_keeping_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let base = sentence(7, 60).join(" ");
        let near = format!("{base} extra");
        let other = sentence(8, 60).join(" ");
        let mk = |out: &str, q: f64| {
            let mut e = Example::new(Content::Instruction {
                instruction: "Explain".into(),
                input: String::new(),
                output: out.into(),
            });
            e.quality = Some(q);
            e.tier = sam_schema::Tier::from_score(q);
            e
        };
        let (a, b, c) = (mk(&base, 0.5), mk(&near, 0.9), mk(&other, 0.7));
        store.insert(&[a.clone(), b.clone(), c.clone()]).unwrap();
        let r = store.dedup_near(&NearDupConfig::default(), false).unwrap();
        assert_eq!((r.examples, r.groups, r.duplicates, r.marked, r.removed), (3, 1, 1, 1, 0));
        let marked: Vec<(String, Option<String>)> = store
            .query(&Filter::default())
            .unwrap()
            .into_iter()
            .map(|e| (e.id, e.metadata.get("near_duplicate_of").and_then(|v| v.as_str()).map(String::from)))
            .collect();
        assert_eq!(marked, [(a.id.clone(), Some(b.id.clone())), (b.id.clone(), None), (c.id.clone(), None)]);
        let r = store.dedup_near(&NearDupConfig::default(), true).unwrap();
        assert_eq!(r.removed, 1);
        let left: Vec<String> = store.query(&Filter::default()).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(left, [b.id, c.id]);
    }
}
