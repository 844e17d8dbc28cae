//! Recall and false-positive rate of the redactor over the labelled corpus
//! in `tests/data/redaction_corpus.jsonl` (made by
//! `scripts/gen_redaction_corpus.py`), per family.
//!
//! - Recall of a family: planted values of that kind of which no piece
//!   survives redaction.
//! - False-positive rate of a family: rows (of all rows) with a finding of
//!   that kind that covers no planted value. Every row's text around its
//!   planted values is clean, so any other finding is a false positive.
//! - Per lookalike class (the clean rows: names that are not values, public
//!   keys, versions and dates, commit SHAs, integrity hashes, …): rows with
//!   any finding.
//!
//! `SAM_REDACTION_CORPUS=FILE` runs the same check over another corpus (one
//! drawn with `SEED=N python3 scripts/gen_redaction_corpus.py > FILE`),
//! leaving the committed one as it is.

use std::collections::BTreeMap;

use sam_capture::redact::{Redactor, SecretKind};
use serde_json::Value;

#[derive(Default)]
struct Family {
    planted: usize,
    caught: usize,
    typed: usize,
    false_rows: usize,
}

#[test]
fn corpus_recall_and_false_positive_rate_per_family() {
    let other = std::env::var_os("SAM_REDACTION_CORPUS")
        .map(|p| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.to_string_lossy())));
    let corpus = other.as_deref().unwrap_or(include_str!("data/redaction_corpus.jsonl"));
    let r = Redactor::default();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for k in SecretKind::ALL {
        families.insert(k.as_str().to_string(), Family::default());
    }
    let mut classes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut contexts: BTreeMap<String, usize> = BTreeMap::new();
    let (mut rows, mut clean_rows, mut clean_flagged) = (0usize, 0usize, 0usize);
    let mut notes = Vec::new();
    for line in corpus.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let text = rec["text"].as_str().unwrap();
        let id = &rec["id"];
        rows += 1;
        *contexts.entry(rec["context"].as_str().unwrap().to_string()).or_default() += 1;
        let findings = r.find(text);
        let (out, _) = r.redact(text);
        let secrets = rec["secrets"].as_array().unwrap();
        let spans: Vec<(usize, usize)> = secrets
            .iter()
            .flat_map(|s| s["spans"].as_array().unwrap())
            .map(|s| (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize))
            .collect();
        for s in secrets {
            let kind = s["kind"].as_str().unwrap();
            let fam = families.get_mut(kind).unwrap_or_else(|| panic!("#{id}: unknown kind {kind}"));
            fam.planted += 1;
            let (a, b) = (s["span"][0].as_u64().unwrap() as usize, s["span"][1].as_u64().unwrap() as usize);
            let leaked: Vec<&str> = s["must_not_contain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .filter(|p| out.contains(p))
                .collect();
            if leaked.is_empty() {
                fam.caught += 1;
                fam.typed += usize::from(
                    findings.iter().any(|f| f.range.start < b && f.range.end > a && f.kind.as_str() == kind),
                );
            } else {
                notes.push(format!("missed {kind} #{id}: {out:?}"));
            }
        }
        // Findings that cover no planted value.
        let mut wrong: Vec<SecretKind> = findings
            .iter()
            .filter(|f| !spans.iter().any(|(a, b)| f.range.start < *b && f.range.end > *a))
            .map(|f| f.kind)
            .collect();
        wrong.sort();
        wrong.dedup();
        for k in &wrong {
            families.get_mut(k.as_str()).unwrap().false_rows += 1;
        }
        if !wrong.is_empty() {
            let which: Vec<String> = findings
                .iter()
                .filter(|f| !spans.iter().any(|(a, b)| f.range.start < *b && f.range.end > *a))
                .map(|f| format!("{} {:?}", f.rule, &text[f.range.clone()]))
                .collect();
            notes.push(format!("false positive #{id} ({}): {}", rec["family"], which.join(", ")));
        }
        if rec["label"] == "clean" {
            clean_rows += 1;
            let class = classes.entry(rec["family"].as_str().unwrap().to_string()).or_default();
            class.0 += 1;
            if !findings.is_empty() {
                class.1 += 1;
                clean_flagged += 1;
            }
        }
    }

    println!("redaction corpus: {rows} rows ({clean_rows} clean); contexts {contexts:?}");
    println!("  {:<18} {:>8} {:>8} {:>7} {:>9} {:>7}", "family", "planted", "recall", "typed", "fp rows", "fp rate");
    for (name, f) in &families {
        println!(
            "  {name:<18} {:>8} {:>7.2}% {:>7} {:>9} {:>6.2}%",
            f.planted,
            100.0 * f.caught as f64 / f.planted.max(1) as f64,
            f.typed,
            f.false_rows,
            100.0 * f.false_rows as f64 / rows as f64
        );
    }
    println!("  lookalike class    rows  flagged");
    for (name, (n, flagged)) in &classes {
        println!("  {name:<18} {n:>4} {flagged:>8}");
    }
    for n in &notes {
        println!("  {n}");
    }

    assert!(rows >= 1_000, "corpus too small: {rows} rows");
    for (name, f) in &families {
        assert!(f.planted >= 20, "the corpus plants only {} {name}", f.planted);
        let recall = f.caught as f64 / f.planted as f64;
        assert!(recall >= 0.99, "{name}: recall {recall:.4} < 0.99");
        let fpr = f.false_rows as f64 / rows as f64;
        assert!(fpr <= 0.01, "{name}: false-positive rate {fpr:.4} > 0.01");
    }
    let clean_fpr = clean_flagged as f64 / clean_rows as f64;
    assert!(clean_fpr <= 0.01, "clean rows flagged: {clean_fpr:.4} > 0.01");
}
