//! The database schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema one version up; a database at
//! version `n` has had the first `n` applied. Never edit an entry once it has
//! shipped: add a new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// The migrations, oldest first. Version `i + 1` is reached by running entry `i`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: the first schema.
    r#"
    -- One row per stored example. The content is kept as sam's JSON (its
    -- `kind` tag included); the columns beside it are what filters, stats and
    -- deduplication read. Only the content hash is indexed: every extra index
    -- costs ingest speed, and the other lookups are scans that run rarely.
    -- content_hash and input_hash hold the first 16 bytes of sam-schema's
    -- BLAKE3 hashes (see `sqlite::key`).
    CREATE TABLE examples (
        rid          INTEGER PRIMARY KEY,
        id           TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        source       TEXT    NOT NULL,
        domain       TEXT    NOT NULL,
        content_hash BLOB    NOT NULL UNIQUE,
        input_hash   BLOB,
        quality      REAL,
        tier         TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        stored_at    INTEGER NOT NULL,
        validated_at INTEGER,
        reasons      TEXT,
        content      TEXT    NOT NULL,
        metadata     TEXT
    );

    -- Lines that could not be stored: unreadable JSONL lines and examples
    -- that failed basic validity. The same line from the same place is kept once.
    CREATE TABLE quarantine (
        id       INTEGER PRIMARY KEY,
        origin   TEXT    NOT NULL,
        line     INTEGER NOT NULL,
        reason   TEXT    NOT NULL,
        raw      TEXT    NOT NULL,
        raw_hash BLOB    NOT NULL,
        at       INTEGER NOT NULL,
        UNIQUE (origin, line, raw_hash)
    );

    -- Where each source's incremental mining resumes.
    CREATE TABLE cursors (
        source     TEXT PRIMARY KEY,
        cursor     TEXT    NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- What each source has offered over all time (for its health score).
    CREATE TABLE source_counts (
        source     TEXT PRIMARY KEY,
        inserted   INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0,
        rejected   INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    -- One row per validation pass ...
    CREATE TABLE validation_runs (
        id         INTEGER PRIMARY KEY,
        started    INTEGER NOT NULL,
        finished   INTEGER,
        examples   INTEGER NOT NULL DEFAULT 0,
        gold       INTEGER NOT NULL DEFAULT 0,
        silver     INTEGER NOT NULL DEFAULT 0,
        bronze     INTEGER NOT NULL DEFAULT 0,
        unverified INTEGER NOT NULL DEFAULT 0,
        config     TEXT    NOT NULL
    );
    -- ... and one per example that lost points in it, with the reasons.
    CREATE TABLE validation_log (
        run_id       INTEGER NOT NULL REFERENCES validation_runs (id),
        example_id   TEXT    NOT NULL,
        content_hash BLOB    NOT NULL,
        score        REAL    NOT NULL,
        tier         TEXT    NOT NULL,
        reasons      TEXT    NOT NULL
    );
    CREATE INDEX validation_log_run ON validation_log (run_id);

    CREATE TABLE export_history (
        id     INTEGER PRIMARY KEY,
        at     INTEGER NOT NULL,
        path   TEXT    NOT NULL,
        filter TEXT    NOT NULL,
        format TEXT    NOT NULL,
        rows   INTEGER NOT NULL,
        hash   TEXT    NOT NULL
    );

    CREATE TABLE training_runs (
        id            TEXT PRIMARY KEY,
        started       INTEGER NOT NULL,
        finished      INTEGER,
        status        TEXT    NOT NULL,
        dataset_path  TEXT,
        manifest_hash TEXT,
        adapter_path  TEXT,
        metrics       TEXT    NOT NULL
    );

    -- Computed stats, valid while the store's generation is unchanged.
    CREATE TABLE stats_cache (
        key         TEXT PRIMARY KEY,
        generation  INTEGER NOT NULL,
        computed_at INTEGER NOT NULL,
        value       TEXT    NOT NULL
    ) WITHOUT ROWID;

    -- `generation` counts write transactions, so caches know when they are stale.
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('generation', 0);
    "#,
];

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Bring the database up to [`LATEST`], or refuse one written by a newer sam.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let check = |v: i64| {
        if v > LATEST { Err(StoreError::NewerSchema { found: v, supported: LATEST }) } else { Ok(()) }
    };
    let v = user_version(conn)?;
    check(v)?;
    if v == LATEST {
        return Ok(());
    }
    // Read the version again under the write lock: another process may have
    // migrated in between.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let v = user_version(&tx)?;
    check(v)?;
    for m in &MIGRATIONS[v as usize..] {
        tx.execute_batch(m)?;
    }
    tx.pragma_update(None, "user_version", LATEST)?;
    tx.commit()?;
    Ok(())
}
