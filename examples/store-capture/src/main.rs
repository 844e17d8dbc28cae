//! Embedding sam's store and capture in another application: an assistant
//! hands its events to a `Capturer` (redaction, scoring and domains on the
//! way in), mines its project docs with a `DataSource`, then validates and
//! exports what it collected — without the `sam` binary.
//!
//! ```text
//! cargo run -p example-store-capture
//! ```

use sam_capture::capture::{Capture, CaptureConfig, Capturer};
use sam_capture::docs::DocsSource;
use sam_capture::{Pipeline, collect_into};
use sam_schema::Tier;
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore, ValidateOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("assistant.db");

    // Live capture: the assistant's events, PII and all.
    let cfg = CaptureConfig { spool: Some(dir.path().join("spool.jsonl")), ..Default::default() };
    let mut capturer = Capturer::new(SqliteStore::open(&db)?, Pipeline::default(), cfg);
    capturer.capture(Capture::Correction {
        prompt: "What does `git reset --hard HEAD~1` do? Mail me at dana@corp.example.".into(),
        wrong: "It undoes the last commit and keeps your changes.".into(),
        correction: "It moves the branch back one commit and discards that commit's changes from the index and the working tree; `git reset --soft HEAD~1` keeps them staged.".into(),
    })?;
    capturer.capture(Capture::Feedback {
        prompt: "How do I list the files changed in the last commit?".into(),
        response: "`git show --name-only --format= HEAD` prints one path per line; `--name-status` adds whether each was added, modified or deleted.".into(),
    })?;
    let flushed = capturer.flush()?;
    println!("captured: {} stored, redacted: {}", flushed.stored, capturer.redacted());
    drop(capturer);

    // Batch mining: the project's markdown docs.
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs)?;
    std::fs::write(
        docs.join("deploy.md"),
        "# Deploy\n\n## Rollback\n\nRun `deploy rollback` to restore the previous release; the last three releases are kept on every host.\n",
    )?;
    let mut store = SqliteStore::open(&db)?;
    let mined = collect_into(&mut DocsSource::new([&docs], Default::default()), &mut store, &Pipeline::default())?;
    println!("mined docs: {} new", mined.inserted);

    // Validate into tiers and export the good ones.
    let v = store.validate(&ValidateOptions::default(), &mut |_, _| {})?;
    println!(
        "validated {}: gold {}, silver {}, bronze {}, unverified {}",
        v.examples, v.tiers[0], v.tiers[1], v.tiers[2], v.tiers[3]
    );
    let out = dir.path().join("export.jsonl");
    let export =
        store.export(&Filter::default().tiers([Tier::Gold, Tier::Silver, Tier::Bronze]), &out, Default::default())?;
    let text = std::fs::read_to_string(&out)?;
    assert!(!text.contains("dana@corp.example"), "the email reached the export");
    assert_eq!(export.rows, 3);
    println!("exported {} rows to {} (blake3 {})", export.rows, out.display(), &export.hash[..16]);
    Ok(())
}
