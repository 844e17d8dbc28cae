//! [`SqliteStore`]: the [`Store`] on one SQLite file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};
use sam_schema::{Content, ContentHash, Example, Kind, Role, Tier, normalize, quality};

use crate::near_dup::{NearDupConfig, NearDupReport};
use crate::types::*;
use crate::{Bookkeeping, Examples, Quarantine, StoreError, StoreStats, schema};

/// The [`Store`] on one SQLite file (see the crate docs for its guarantees).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    cfg: StoreConfig,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).field("cfg", &self.cfg).finish()
    }
}

/// The columns [`example_from_row`] reads, in its order.
const EXAMPLE_COLUMNS: &str = "id, content, source, domain, quality, tier, created_at, metadata";

/// When an example happened: its own time, else when it was stored.
const EFFECTIVE_TIME: &str = "COALESCE(NULLIF(created_at, 0), stored_at)";

/// Tiers as a rank for SQL ordering, best highest.
const TIER_RANK: &str = "CASE tier WHEN 'gold' THEN 3 WHEN 'silver' THEN 2 WHEN 'bronze' THEN 1 ELSE 0 END";

/// Rows read and written per transaction while validating.
const VALIDATE_CHUNK: i64 = 5_000;

impl SqliteStore {
    /// Open (creating it if needed) the store at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreConfig::default())
    }

    /// Open (creating it if needed) the store at `path`.
    pub fn open_with(path: impl AsRef<Path>, cfg: &StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))?;
        // Switching to WAL needs a moment of exclusive access; when another
        // process is opening the same new file, retry within the timeout.
        let deadline = std::time::Instant::now() + Duration::from_millis(cfg.busy_timeout_ms);
        loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
                Ok(mode) => {
                    return Err(StoreError::Invalid(format!(
                        "{}: SQLite refused WAL mode (got {mode:?}); is the file on a network filesystem?",
                        path.display()
                    )));
                }
                Err(e) => {
                    let err = StoreError::from(e);
                    if !matches!(err, StoreError::Busy) || std::time::Instant::now() > deadline {
                        return Err(err);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -((cfg.cache_mib.max(1) * 1024) as i64))?;
        // Checkpoint every 64 MiB of WAL rather than SQLite's 4 MiB: a large
        // ingest rewrites the same index pages batch after batch, and each
        // checkpoint copies them (and syncs) again. Measured: ~1.5x faster
        // ingest. The WAL file is truncated back to this size afterwards.
        conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.set_prepared_statement_cache_capacity(32);
        schema::migrate(&mut conn)?;
        Ok(Self { conn, path, cfg: cfg.clone() })
    }

    /// A store in memory: the same SQLite schema and queries, gone when it
    /// is dropped (tests, throwaway work). Only this handle sees it.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(32);
        schema::migrate(&mut conn)?;
        Ok(Self { conn, path: PathBuf::from(":memory:"), cfg: StoreConfig::default() })
    }

    /// The database file (`:memory:` for [`SqliteStore::open_in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Run `PRAGMA integrity_check`; `Ok(())` when SQLite answers `ok`,
    /// else the problems it lists.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        if lines == ["ok"] { Ok(()) } else { Err(StoreError::Corrupt(lines.join("; "))) }
    }

    /// The connection, for modules of this crate that add their own queries.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The connection, mutably (for modules of this crate; writes should go
    /// through [`SqliteStore::write_tx`]).
    #[allow(dead_code)] // kept for near_dup-style modules
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Begin a write transaction that takes the write lock at once, so that
    /// it waits for other writers (busy timeout) instead of failing later.
    pub(crate) fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

/// Mark the store changed (stats caches compare this counter).
pub(crate) fn bump_generation(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'generation'")?.execute([])?;
    Ok(())
}

fn generation(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| r.get(0))?)
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Why an example cannot be stored at all, if it cannot. These are the
/// checks of [`quality::assess`] that reject outright, done cheaply: the full
/// assessment runs in [`crate::Examples::validate`].
fn basic_problem(ex: &Example) -> Option<String> {
    if ex.id.trim().is_empty() {
        return Some("the id is empty".into());
    }
    if let Some(q) = ex.quality
        && !(0.0..=1.0).contains(&q)
    {
        return Some(format!("quality {q} is outside [0, 1]"));
    }
    for (name, text) in ex.content.fields() {
        let optional = name == "input" || name == "system";
        if !optional && text.trim().is_empty() {
            return Some(format!("empty: field {name:?} is empty"));
        }
    }
    match &ex.content {
        Content::Chat { messages } if !messages.iter().any(|m| m.role == Role::Assistant) => {
            Some("no_response: the conversation has no assistant turn".into())
        }
        Content::Preference { chosen, rejected, .. } if normalize(chosen) == normalize(rejected) => {
            Some("same_responses: chosen and rejected are the same text".into())
        }
        _ => None,
    }
}

/// The stored form of a content or input hash: its first 16 bytes. 128 bits
/// make a collision negligible (below 1e-20 at a billion examples) and keep
/// the unique index half the size, which is most of what an insert costs.
pub(crate) fn key(hash: &ContentHash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

fn raw_hash(raw: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(raw.as_bytes()).as_bytes()[..16]);
    out
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn example_from_row(r: &Row<'_>) -> Result<Example, StoreError> {
    let content: String = r.get(1)?;
    let content: Content = serde_json::from_str(&content).map_err(|e| corrupt("example content", e))?;
    let tier: String = r.get(5)?;
    let metadata: Option<String> = r.get(7)?;
    let metadata = match metadata {
        Some(m) => serde_json::from_str(&m).map_err(|e| corrupt("example metadata", e))?,
        None => Default::default(),
    };
    Ok(Example {
        id: r.get(0)?,
        content,
        source: r.get(2)?,
        domain: r.get(3)?,
        quality: r.get(4)?,
        tier: tier.parse().map_err(|e| corrupt("tier", e))?,
        created_at: r.get(6)?,
        metadata,
    })
}

/// The `WHERE` clause (possibly empty) and its parameters for a filter.
fn where_clause(f: &Filter) -> (String, Vec<SqlValue>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    let mut any_of = |col: &str, vals: Vec<String>, conds: &mut Vec<String>| {
        if !vals.is_empty() {
            conds.push(format!("{col} IN ({})", vec!["?"; vals.len()].join(", ")));
            params.extend(vals.into_iter().map(SqlValue::Text));
        }
    };
    any_of("tier", f.tiers.iter().map(|t| t.as_str().to_string()).collect(), &mut conds);
    any_of("kind", f.kinds.iter().map(|k| k.as_str().to_string()).collect(), &mut conds);
    any_of("source", f.sources.clone(), &mut conds);
    any_of("domain", f.domains.clone(), &mut conds);
    if let Some(s) = f.since {
        conds.push(format!("{EFFECTIVE_TIME} >= ?"));
        params.push(SqlValue::Integer(s));
    }
    if let Some(u) = f.until {
        conds.push(format!("{EFFECTIVE_TIME} < ?"));
        params.push(SqlValue::Integer(u));
    }
    if let Some(q) = f.min_quality {
        conds.push("quality >= ?".into());
        params.push(SqlValue::Real(q));
    }
    let clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    (clause, params)
}

fn export_from_row(r: &Row<'_>) -> Result<ExportRecord, StoreError> {
    let filter: String = r.get(3)?;
    let format: String = r.get(4)?;
    Ok(ExportRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        path: PathBuf::from(r.get::<_, String>(2)?),
        filter: serde_json::from_str(&filter).map_err(|e| corrupt("export filter", e))?,
        format: serde_json::from_value(serde_json::Value::String(format)).map_err(|e| corrupt("export format", e))?,
        rows: r.get(5)?,
        hash: r.get(6)?,
    })
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Examples for SqliteStore {
    fn insert_batch(&mut self, batch: &Batch<'_>) -> Result<InsertReport, StoreError> {
        if !batch.lines.is_empty() && batch.lines.len() != batch.examples.len() {
            return Err(StoreError::Invalid(format!(
                "a batch has {} examples but {} line numbers",
                batch.examples.len(),
                batch.lines.len()
            )));
        }
        let at = now();
        let origin = batch.origin.unwrap_or("<insert>");
        let mut report = InsertReport::default();
        // Per source: inserted, duplicates, rejected.
        let mut per_source: HashMap<&str, [i64; 3]> = HashMap::new();
        let tx = self.write_tx()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO examples (id, kind, source, domain, content_hash, input_hash, quality, tier, \
                 created_at, stored_at, content, metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (content_hash) DO NOTHING",
            )?;
            let mut quar = tx.prepare_cached(
                "INSERT OR IGNORE INTO quarantine (origin, line, reason, raw, raw_hash, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut json = Vec::with_capacity(1024);
            for (i, ex) in batch.examples.iter().enumerate() {
                let counts = per_source.entry(ex.source.as_str()).or_default();
                if let Some(reason) = basic_problem(ex) {
                    let line = batch.lines.get(i).copied().unwrap_or(0) as i64;
                    let raw = ex.to_json_line();
                    quar.execute(params![origin, line, reason, raw, raw_hash(&raw), at])?;
                    report.rejected += 1;
                    report.rejections.push(Rejection { index: i, id: ex.id.clone(), reason });
                    counts[2] += 1;
                    continue;
                }
                json.clear();
                serde_json::to_writer(&mut json, &ex.content).map_err(|e| corrupt("content", e))?;
                let content = std::str::from_utf8(&json).expect("serde_json writes UTF-8");
                let metadata = if ex.metadata.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&ex.metadata).map_err(|e| corrupt("metadata", e))?)
                };
                let n = ins.execute(params![
                    ex.id,
                    ex.kind().as_str(),
                    ex.source,
                    ex.domain,
                    key(&ex.content_hash()),
                    ex.input_hash().map(|h| key(&h)),
                    ex.quality,
                    ex.tier.as_str(),
                    ex.created_at,
                    at,
                    content,
                    metadata,
                ])?;
                if n == 1 {
                    report.inserted += 1;
                    counts[0] += 1;
                } else {
                    report.duplicates += 1;
                    counts[1] += 1;
                }
            }
            for bad in batch.bad_lines {
                let origin = match &bad.origin {
                    Some(p) => path_text(p),
                    None => "<stdin>".to_string(),
                };
                let n = quar.execute(params![origin, bad.line as i64, bad.reason, bad.raw, raw_hash(&bad.raw), at])?;
                report.quarantined += n as u64;
            }
            let mut counts = tx.prepare_cached(
                "INSERT INTO source_counts (source, inserted, duplicates, rejected) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (source) DO UPDATE SET inserted = inserted + ?2, duplicates = duplicates + ?3, \
                 rejected = rejected + ?4",
            )?;
            for (source, [i, d, r]) in per_source {
                counts.execute(params![source, i, d, r])?;
            }
            if let Some((source, cursor)) = batch.cursor {
                tx.prepare_cached(
                    "INSERT INTO cursors (source, cursor, updated_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (source) DO UPDATE SET cursor = ?2, updated_at = ?3",
                )?
                .execute(params![source, cursor, at])?;
            }
            bump_generation(&tx)?;
        }
        tx.commit()?;
        Ok(report)
    }

    fn cursor(&self, source: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT cursor FROM cursors WHERE source = ?1", [source], |r| r.get(0)).optional()?)
    }

    fn scan(
        &self,
        filter: &Filter,
        visit: &mut dyn FnMut(Example) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (clause, mut params) = where_clause(filter);
        let limit = filter.limit.map(|l| l.min(i64::MAX as u64) as i64).unwrap_or(-1);
        params.push(SqlValue::Integer(limit));
        let sql = format!("SELECT {EXAMPLE_COLUMNS} FROM examples{clause} ORDER BY rid LIMIT ?");
        // One read transaction: the scan sees one snapshot even while other
        // processes write.
        in_read_tx(&self.conn, || {
            let mut stmt = self.conn.prepare(&sql)?;
            let mut rows = stmt.query(params_from_iter(params))?;
            while let Some(r) = rows.next()? {
                visit(example_from_row(r)?)?;
            }
            Ok(())
        })
    }

    fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        let (clause, params) = where_clause(filter);
        let n: u64 =
            self.conn
                .query_row(&format!("SELECT COUNT(*) FROM examples{clause}"), params_from_iter(params), |r| r.get(0))?;
        Ok(filter.limit.map_or(n, |l| n.min(l)))
    }

    fn validate(
        &mut self,
        opts: &ValidateOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ValidateReport, StoreError> {
        let only_new = if opts.all { "" } else { " AND validated_at IS NULL" };
        let total: u64 =
            self.conn.query_row(&format!("SELECT COUNT(*) FROM examples WHERE 1{only_new}"), [], |r| r.get(0))?;
        let config = serde_json::to_string(&opts.quality).map_err(|e| corrupt("quality config", e))?;
        let run_id = {
            let tx = self.write_tx()?;
            tx.execute("INSERT INTO validation_runs (started, config) VALUES (?1, ?2)", params![now(), config])?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            id
        };
        let mut report = ValidateReport { run_id, ..Default::default() };
        let mut checks: HashMap<String, u64> = HashMap::new();
        let mut last_rid = 0i64;
        progress(0, total);
        loop {
            // Read a chunk, score it outside any lock, then write it.
            let chunk: Vec<(i64, String, Vec<u8>, Content)> = {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT rid, id, content_hash, content FROM examples WHERE rid > ?1{only_new} \
                     ORDER BY rid LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![last_rid, VALIDATE_CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (rid, id, hash, content) = row?;
                    let content: Content = serde_json::from_str(&content).map_err(|e| corrupt("example content", e))?;
                    out.push((rid, id, hash, content));
                }
                out
            };
            let Some(last) = chunk.last() else { break };
            last_rid = last.0;
            let scored: Vec<_> = chunk
                .into_iter()
                .map(|(rid, id, hash, content)| (rid, id, hash, quality::assess(&content, &opts.quality)))
                .collect();
            let at = now();
            let tx = self.write_tx()?;
            {
                let mut upd = tx.prepare_cached(
                    "UPDATE examples SET quality = ?2, tier = ?3, validated_at = ?4, reasons = ?5 WHERE rid = ?1",
                )?;
                let mut log = tx.prepare_cached(
                    "INSERT INTO validation_log (run_id, example_id, content_hash, score, tier, reasons) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (rid, id, hash, a) in &scored {
                    let reasons = (!a.findings.is_empty()).then(|| a.reasons());
                    upd.execute(params![rid, a.score, a.tier.as_str(), at, reasons])?;
                    report.examples += 1;
                    report.tiers[Tier::ALL.iter().position(|t| *t == a.tier).expect("a tier")] += 1;
                    if let Some(reasons) = reasons {
                        report.with_findings += 1;
                        log.execute(params![run_id, id, hash, a.score, a.tier.as_str(), reasons])?;
                        for f in &a.findings {
                            *checks.entry(f.check.clone()).or_default() += 1;
                        }
                    }
                }
                tx.execute(
                    "UPDATE validation_runs SET finished = ?2, examples = ?3, gold = ?4, silver = ?5, bronze = ?6, \
                     unverified = ?7 WHERE id = ?1",
                    params![
                        run_id,
                        at,
                        report.examples as i64,
                        report.tiers[0] as i64,
                        report.tiers[1] as i64,
                        report.tiers[2] as i64,
                        report.tiers[3] as i64
                    ],
                )?;
                bump_generation(&tx)?;
            }
            tx.commit()?;
            progress(report.examples, total.max(report.examples));
        }
        let tx = self.write_tx()?;
        tx.execute("UPDATE validation_runs SET finished = ?2 WHERE id = ?1", params![run_id, now()])?;
        tx.commit()?;
        let mut checks: Vec<_> = checks.into_iter().collect();
        checks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        report.checks = checks;
        Ok(report)
    }

    fn validation_log(&self, example_id: &str) -> Result<Vec<ValidationEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT run_id, example_id, score, tier, reasons FROM validation_log WHERE example_id = ?1 \
             ORDER BY run_id DESC",
        )?;
        let rows =
            stmt.query_map([example_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?, r.get(4)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (run_id, example_id, score, tier, reasons) = row?;
            out.push(ValidationEntry {
                run_id,
                example_id,
                score,
                tier: tier.parse().map_err(|e| corrupt("tier", e))?,
                reasons,
            });
        }
        Ok(out)
    }

    fn dedup(&mut self, dry_run: bool) -> Result<DedupReport, StoreError> {
        let preference = Kind::Preference.as_str();
        let losers = format!(
            "SELECT rid FROM (SELECT rid, ROW_NUMBER() OVER (PARTITION BY input_hash \
             ORDER BY {TIER_RANK} DESC, COALESCE(quality, -1) DESC, rid ASC) AS rn \
             FROM examples WHERE input_hash IS NOT NULL AND kind <> '{preference}') WHERE rn > 1"
        );
        let tx = self.write_tx()?;
        let input_groups: u64 = tx.query_row(
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM examples WHERE input_hash IS NOT NULL AND kind <> '{preference}' \
                 GROUP BY input_hash HAVING COUNT(*) > 1)"
            ),
            [],
            |r| r.get(0),
        )?;
        let removed = if dry_run {
            tx.query_row(&format!("SELECT COUNT(*) FROM ({losers})"), [], |r| r.get::<_, u64>(0))?
        } else {
            let n = tx.execute(&format!("DELETE FROM examples WHERE rid IN ({losers})"), [])? as u64;
            bump_generation(&tx)?;
            n
        };
        tx.commit()?;
        Ok(DedupReport { input_groups, removed, dry_run })
    }

    fn dedup_near(&mut self, cfg: &NearDupConfig, remove: bool) -> Result<NearDupReport, StoreError> {
        self.dedup_near_impl(cfg, remove)
    }
}

impl Quarantine for SqliteStore {
    fn quarantined(&self, limit: Option<u64>) -> Result<Vec<QuarantineEntry>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT id, origin, line, reason, raw, at FROM quarantine ORDER BY id LIMIT ?1")?;
        let limit = limit.map(|l| l.min(i64::MAX as u64) as i64).unwrap_or(-1);
        let rows = stmt.query_map([limit], |r| {
            Ok(QuarantineEntry {
                id: r.get(0)?,
                origin: r.get(1)?,
                line: r.get(2)?,
                reason: r.get(3)?,
                raw: r.get(4)?,
                at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn quarantine_len(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?)
    }

    fn clear_quarantine(&mut self, ids: Option<&[i64]>) -> Result<u64, StoreError> {
        let tx = self.write_tx()?;
        let n = match ids {
            None => tx.execute("DELETE FROM quarantine", [])?,
            Some(ids) => {
                let mut stmt = tx.prepare("DELETE FROM quarantine WHERE id = ?1")?;
                let mut n = 0;
                for id in ids {
                    n += stmt.execute([id])?;
                }
                n
            }
        };
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(n as u64)
    }
}

impl Bookkeeping for SqliteStore {
    fn export(&mut self, filter: &Filter, path: &Path, format: ExportFormat) -> Result<ExportRecord, StoreError> {
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        if path.file_name().is_none() {
            return Err(StoreError::Invalid(format!("{}: not a file name", path.display())));
        }
        let (rows, hash) = sam_home::atomic::write_with(path, io, |out| {
            let mut hasher = blake3::Hasher::new();
            let mut rows = 0u64;
            let mut line = Vec::with_capacity(4096);
            self.scan(filter, &mut |ex| {
                line.clear();
                match format {
                    ExportFormat::Full => serde_json::to_writer(&mut line, &ex),
                    ExportFormat::Training => serde_json::to_writer(&mut line, &ex.to_training_value()),
                }
                .map_err(|e| corrupt("example", e))?;
                line.push(b'\n');
                hasher.update(&line);
                out.write_all(&line).map_err(io)?;
                rows += 1;
                Ok(())
            })?;
            Ok((rows, hasher.finalize().to_hex().to_string()))
        })?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let filter_json = serde_json::to_string(filter).map_err(|e| corrupt("filter", e))?;
        let format_name = match format {
            ExportFormat::Full => "full",
            ExportFormat::Training => "training",
        };
        let at = now();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO export_history (at, path, filter, format, rows, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![at, path_text(&path), filter_json, format_name, rows as i64, hash],
        )?;
        let id = tx.last_insert_rowid();
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(ExportRecord { id, at, path, filter: filter.clone(), format, rows, hash })
    }

    fn exports(&self) -> Result<Vec<ExportRecord>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT id, at, path, filter, format, rows, hash FROM export_history ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(export_from_row(r)?);
        }
        Ok(out)
    }

    fn latest_export(&self) -> Result<Option<ExportRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, at, path, filter, format, rows, hash FROM export_history ORDER BY id DESC LIMIT 1")?;
        let mut rows = stmt.query([])?;
        match rows.next()? {
            Some(r) => Ok(Some(export_from_row(r)?)),
            None => Ok(None),
        }
    }

    fn record_training_run(&mut self, run: &TrainingRun) -> Result<(), StoreError> {
        if run.id.trim().is_empty() {
            return Err(StoreError::Invalid("a training run needs an id".into()));
        }
        let metrics = serde_json::to_string(&run.metrics).map_err(|e| corrupt("metrics", e))?;
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO training_runs (id, started, finished, status, dataset_path, manifest_hash, adapter_path, \
             metrics) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET started = ?2, \
             finished = ?3, status = ?4, dataset_path = ?5, manifest_hash = ?6, adapter_path = ?7, metrics = ?8",
            params![
                run.id,
                run.started,
                run.finished,
                run.status.as_str(),
                run.dataset_path.as_deref().map(path_text),
                run.manifest_hash,
                run.adapter_path.as_deref().map(path_text),
                metrics
            ],
        )?;
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn training_runs(&self) -> Result<Vec<TrainingRun>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, started, finished, status, dataset_path, manifest_hash, adapter_path, metrics \
             FROM training_runs ORDER BY started, id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let metrics: String = r.get(7)?;
            let status: String = r.get(3)?;
            let status = RunState::parse(&status)
                .ok_or_else(|| StoreError::Invalid(format!("training run with an unknown state {status:?}")))?;
            out.push(TrainingRun {
                id: r.get(0)?,
                started: r.get(1)?,
                finished: r.get(2)?,
                status,
                dataset_path: r.get::<_, Option<String>>(4)?.map(PathBuf::from),
                manifest_hash: r.get(5)?,
                adapter_path: r.get::<_, Option<String>>(6)?.map(PathBuf::from),
                metrics: serde_json::from_str(&metrics).map_err(|e| corrupt("run metrics", e))?,
            });
        }
        Ok(out)
    }
}

impl StoreStats for SqliteStore {
    fn stats(&self) -> Result<Stats, StoreError> {
        let generation_now = generation(&self.conn)?;
        let cached: Option<String> = self
            .conn
            .query_row("SELECT value FROM stats_cache WHERE key = 'stats' AND generation = ?1", [generation_now], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(s) = cached
            && let Ok(stats) = serde_json::from_str(&s)
        {
            return Ok(stats);
        }
        let stats = compute_stats(&self.conn)?;
        // The cache is an optimisation: if another writer holds the lock,
        // skip it rather than wait.
        if let Ok(value) = serde_json::to_string(&stats) {
            self.conn.busy_timeout(Duration::ZERO)?;
            let _ = self.conn.execute(
                "INSERT INTO stats_cache (key, generation, computed_at, value) VALUES ('stats', ?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET generation = ?1, computed_at = ?2, value = ?3",
                params![generation_now, stats.computed_at, value],
            );
            self.conn.busy_timeout(Duration::from_millis(self.cfg.busy_timeout_ms))?;
        }
        Ok(stats)
    }
}

fn compute_stats(conn: &Connection) -> Result<Stats, StoreError> {
    in_read_tx(conn, || compute_stats_in(conn))
}

/// Run `f` inside one read transaction (one snapshot of the database), unless
/// the connection is already inside a transaction.
fn in_read_tx<T>(conn: &Connection, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    if !conn.is_autocommit() {
        return f();
    }
    conn.execute_batch("BEGIN DEFERRED")?;
    let res = f();
    conn.execute_batch("COMMIT")?;
    res
}

fn grouped(conn: &Connection, sql: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn compute_stats_in(conn: &Connection) -> Result<Stats, StoreError> {
    let (total, validated): (u64, u64) =
        conn.query_row("SELECT COUNT(*), COUNT(validated_at) FROM examples", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let tiers: HashMap<String, u64> =
        grouped(conn, "SELECT tier, COUNT(*) FROM examples GROUP BY tier")?.into_iter().collect();
    let by_tier = Tier::ALL.iter().map(|t| (*t, tiers.get(t.as_str()).copied().unwrap_or(0))).collect();
    let kinds: HashMap<String, u64> =
        grouped(conn, "SELECT kind, COUNT(*) FROM examples GROUP BY kind")?.into_iter().collect();
    let by_kind = Kind::ALL.iter().filter_map(|k| kinds.get(k.as_str()).map(|n| (*k, *n))).collect();
    let by_domain =
        grouped(conn, "SELECT domain, COUNT(*) AS n FROM examples GROUP BY domain ORDER BY n DESC, domain")?;
    let mut daily: Vec<DailyCount> = grouped(
        conn,
        &format!(
            "SELECT date({EFFECTIVE_TIME}, 'unixepoch') AS day, COUNT(*) FROM examples \
             GROUP BY day ORDER BY day DESC LIMIT 30"
        ),
    )?
    .into_iter()
    .map(|(day, examples)| DailyCount { day, examples })
    .collect();
    daily.reverse();

    let mut sources: HashMap<String, SourceHealth> = HashMap::new();
    let blank = |source: &str| SourceHealth {
        source: source.to_string(),
        examples: 0,
        inserted: 0,
        duplicates: 0,
        rejected: 0,
        mean_quality: None,
        good_share: None,
        health: None,
    };
    {
        let mut stmt = conn.prepare(
            "SELECT source, COUNT(*), AVG(CASE WHEN validated_at IS NOT NULL THEN quality END), \
             AVG(CASE WHEN validated_at IS NULL THEN NULL WHEN tier IN ('gold', 'silver') THEN 1.0 ELSE 0.0 END) \
             FROM examples GROUP BY source",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let source: String = r.get(0)?;
            let mut h = blank(&source);
            h.examples = r.get(1)?;
            h.mean_quality = r.get(2)?;
            h.good_share = r.get(3)?;
            sources.insert(source, h);
        }
    }
    {
        let mut stmt = conn.prepare("SELECT source, inserted, duplicates, rejected FROM source_counts")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let source: String = r.get(0)?;
            let h = sources.entry(source.clone()).or_insert_with(|| blank(&source));
            h.inserted = r.get(1)?;
            h.duplicates = r.get(2)?;
            h.rejected = r.get(3)?;
        }
    }
    let mut sources: Vec<SourceHealth> = sources
        .into_values()
        .map(|mut h| {
            let offered = h.inserted + h.duplicates + h.rejected;
            let valid_share = if offered == 0 { 1.0 } else { 1.0 - h.rejected as f64 / offered as f64 };
            h.health = h.mean_quality.map(|q| 100.0 * q * valid_share);
            h
        })
        .collect();
    sources.sort_by(|a, b| b.examples.cmp(&a.examples).then_with(|| a.source.cmp(&b.source)));

    let count = |sql: &str| -> Result<u64, StoreError> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
    Ok(Stats {
        total,
        validated,
        by_tier,
        by_kind,
        by_domain,
        daily,
        sources,
        quarantined: count("SELECT COUNT(*) FROM quarantine")?,
        exports: count("SELECT COUNT(*) FROM export_history")?,
        training_runs: count("SELECT COUNT(*) FROM training_runs")?,
        computed_at: now(),
    })
}
