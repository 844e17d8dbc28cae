//! The git source against real repositories made with git2 and a real
//! SQLite store.

use std::path::Path;

use git2::{Repository, Signature, Time};
use sam_capture::git::{GitConfig, GitSource};
use sam_capture::{DataSource, Pipeline, collect_into};
use sam_schema::Content;
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore};

/// Write `files` into the work tree and commit them on HEAD.
fn commit(repo: &Repository, author: (&str, &str), msg: &str, files: &[(&str, &[u8])], t: i64) -> git2::Oid {
    let root = repo.workdir().unwrap().to_path_buf();
    let mut index = repo.index().unwrap();
    for (path, content) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        index.add_path(Path::new(path)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::new(author.0, author.1, &Time::new(t, 0)).unwrap();
    let parents: Vec<git2::Commit<'_>> = repo.head().ok().and_then(|h| h.peel_to_commit().ok()).into_iter().collect();
    let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents).unwrap()
}

const DEV: (&str, &str) = ("Dev One", "dev@corp.example");

fn messages(store: &SqliteStore) -> Vec<String> {
    let mut out: Vec<String> = store
        .query(&Filter::default().source("git"))
        .unwrap()
        .into_iter()
        .map(|e| match e.content {
            Content::Instruction { output, .. } => output,
            other => panic!("git examples are instructions, got {other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[test]
fn second_run_adds_only_new_commits_across_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let a = Repository::init(dir.path().join("a")).unwrap();
    let b = Repository::init(dir.path().join("b")).unwrap();
    commit(&a, DEV, "Add the parser for config files", &[("src/parse.rs", b"fn parse() {}\n")], 1_700_000_000);
    commit(
        &a,
        DEV,
        "Handle empty config files in the parser",
        &[("src/parse.rs", b"fn parse() { todo!() }\n")],
        1_700_000_100,
    );
    commit(&b, DEV, "Initial import of the web client", &[("web/app.js", b"console.log(1)\n")], 1_700_000_200);

    let mut store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let pipeline = Pipeline::default();
    let mut src = GitSource::new([dir.path().join("a"), dir.path().join("b")], GitConfig::default());
    let first = collect_into(&mut src, &mut store, &pipeline).unwrap();
    assert_eq!((first.collected, first.inserted), (3, 3), "{first:?}");

    // Nothing new: nothing collected.
    let again = collect_into(&mut src, &mut store, &pipeline).unwrap();
    assert_eq!((again.collected, again.inserted), (0, 0), "{again:?}");

    commit(&a, DEV, "Report the line of a parse error", &[("src/parse.rs", b"fn parse() { line() }\n")], 1_700_000_300);
    commit(&b, DEV, "Retry failed requests with backoff", &[("web/app.js", b"retry(3)\n")], 1_700_000_400);
    let second = collect_into(&mut src, &mut store, &pipeline).unwrap();
    assert_eq!((second.collected, second.inserted, second.duplicates), (2, 2, 0), "{second:?}");
    assert_eq!(
        messages(&store),
        [
            "Add the parser for config files",
            "Handle empty config files in the parser",
            "Initial import of the web client",
            "Report the line of a parse error",
            "Retry failed requests with backoff",
        ]
    );
    // A fresh source object resumes from the store's cursor too.
    let mut fresh = GitSource::new([dir.path().join("a"), dir.path().join("b")], GitConfig::default());
    assert_eq!(collect_into(&mut fresh, &mut store, &pipeline).unwrap().collected, 0);
}

#[test]
fn new_branches_are_mined_and_merges_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(dir.path().join("r")).unwrap();
    let base = commit(&repo, DEV, "Create the project layout", &[("README.md", b"# r\n")], 1_700_000_000);
    let mut src = GitSource::new([dir.path().join("r")], GitConfig::default());
    let first = src.collect(None).unwrap();
    assert_eq!(first.examples.len(), 1);

    // A feature branch with one commit, merged back with a merge commit.
    let base_commit = repo.find_commit(base).unwrap();
    repo.branch("feature", &base_commit, false).unwrap();
    repo.set_head("refs/heads/feature").unwrap();
    let feat =
        commit(&repo, DEV, "Add the export command", &[("src/export.rs", b"pub fn export() {}\n")], 1_700_000_100);
    let default = repo
        .branches(Some(git2::BranchType::Local))
        .unwrap()
        .filter_map(|b| b.ok())
        .map(|(b, _)| b.name().unwrap().unwrap().to_string())
        .find(|n| n != "feature")
        .unwrap();
    repo.set_head(&format!("refs/heads/{default}")).unwrap();
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
    let main_tip =
        commit(&repo, DEV, "Document the layout in the readme", &[("README.md", b"# r\n\nlayout\n")], 1_700_000_200);
    let sig = Signature::new(DEV.0, DEV.1, &Time::new(1_700_000_300, 0)).unwrap();
    let (m, f) = (repo.find_commit(main_tip).unwrap(), repo.find_commit(feat).unwrap());
    let mut idx = repo.merge_commits(&m, &f, None).unwrap();
    let tree = repo.find_tree(idx.write_tree_to(&repo).unwrap()).unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "Merge branch 'feature'", &tree, &[&m, &f]).unwrap();

    let second = src.collect(first.cursor).unwrap();
    let mut got: Vec<String> = second.examples.iter().map(|e| e.content.output_texts()[0].to_string()).collect();
    got.sort();
    assert_eq!(got, ["Add the export command", "Document the layout in the readme"]);
    assert_eq!(second.skipped.get("merge"), Some(&1));
}

#[test]
fn skip_rules() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(dir.path().join("r")).unwrap();
    let big: Vec<u8> = (0..3000).map(|i| format!("line {i}\n")).collect::<String>().into_bytes();
    // (author, message, files, why it is skipped)
    type Case<'a> = ((&'a str, &'a str), &'a str, Vec<(&'a str, &'a [u8])>, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (DEV, "Add the tokenizer module", vec![("src/tok.rs", b"pub fn tok() {}\n")], None),
        (
            ("dependabot[bot]", "support@github.com"),
            "Bump serde from 1.0.1 to 1.0.2",
            vec![("Cargo.toml", b"serde = \"1.0.2\"\n")],
            Some("bot"),
        ),
        (DEV, "wip", vec![("src/a.rs", b"fn a() {}\n")], Some("trivial_message")),
        (DEV, "Update the lock file after the bump", vec![("Cargo.lock", b"# lock\n")], Some("no_reviewable_files")),
        (
            DEV,
            "Vendor the zlib sources for offline builds",
            vec![("vendor/zlib/z.c", b"int z;\n")],
            Some("no_reviewable_files"),
        ),
        (
            DEV,
            "Add the logo image to the docs",
            vec![("docs/logo.bin", b"\x00\x01\x02\xff\x00binary")],
            Some("no_reviewable_files"),
        ),
        (DEV, "Generate the fixture table for tests", vec![("tests/table.txt", &big)], Some("huge_diff")),
    ];
    for (i, (author, msg, files, _)) in cases.iter().enumerate() {
        commit(&repo, *author, msg, files, 1_700_000_000 + i as i64);
    }
    let batch = GitSource::new([dir.path().join("r")], GitConfig::default()).collect(None).unwrap();
    let kept: Vec<&str> = batch.examples.iter().map(|e| e.content.output_texts()[0]).collect();
    assert_eq!(kept, ["Add the tokenizer module"]);
    let mut want = std::collections::BTreeMap::new();
    for (_, _, _, reason) in &cases {
        if let Some(r) = reason {
            *want.entry(r.to_string()).or_insert(0usize) += 1;
        }
    }
    assert_eq!(batch.skipped, want);
}

#[test]
fn summary_is_bounded_and_names_files() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(dir.path().join("r")).unwrap();
    let long: String = (0..200).map(|i| format!("let value_{i} = compute({i});\n")).collect();
    let files: Vec<(String, Vec<u8>)> =
        (0..20).map(|i| (format!("src/m{i:02}.rs"), long.clone().into_bytes())).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (p.as_str(), c.as_slice())).collect();
    commit(&repo, DEV, "Split the computation into twenty modules", &refs, 1_700_000_000);
    let cfg = GitConfig { max_diff_lines: 10_000, ..GitConfig::default() };
    let batch = GitSource::new([dir.path().join("r")], cfg.clone()).collect(None).unwrap();
    let Content::Instruction { input, instruction, .. } = &batch.examples[0].content else { panic!() };
    assert_eq!(instruction, sam_capture::git::INSTRUCTION);
    assert!(input.starts_with("20 files changed, +4000 -0\nsrc/m00.rs (added, +200 -0)"), "{input}");
    assert!(input.contains("… (8 more files)"), "{input}");
    assert!(input.contains("more lines)"), "{input}");
    assert!(input.chars().count() <= cfg.max_summary_chars + 40, "{} chars", input.chars().count());
}
