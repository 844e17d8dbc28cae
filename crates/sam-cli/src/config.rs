//! `sam.toml` (read by `sam_home`, one plain section per component) turned
//! into each library's own configuration.
//!
//! `sam_home::Config` holds the file as written; [`Config`] holds what the
//! commands hand to the libraries. A test holds the two sets of defaults
//! equal, so a default changed on one side is seen.

use anyhow::Context as _;
use sam_home::SamHome;
use sam_home::config as file;

/// The libraries' configurations, from `sam.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file as read (the sections the pipeline turns into its own
    /// configuration).
    pub file: sam_home::Config,
    /// Thresholds of the quality checks (validation and capture).
    pub quality: sam_schema::quality::QualityConfig,
    /// The store's settings.
    pub store: sam_store::StoreConfig,
    /// Live capture: batching and the spool (resolved under SAM_HOME).
    pub capture: sam_capture::capture::CaptureConfig,
    /// PII and secret redaction of everything collected or captured.
    pub redaction: sam_capture::redact::RedactionConfig,
    /// The routing table (`sam collect routing`).
    pub routing: sam_capture::routing::RoutingConfig,
    /// Near-duplicate detection (`sam dedup --near`).
    pub near_dup: sam_store::near_dup::NearDupConfig,
    /// The HTTP server (`sam serve`).
    pub serve: sam_serve::ServeConfig,
    /// Deployment: the gate's thresholds and the canary (`sam deploy`).
    pub deploy: sam_deploy::DeployConfig,
}

impl Config {
    /// Read `sam.toml` under `home` (the defaults when there is none).
    pub fn load(home: &SamHome) -> anyhow::Result<Config> {
        Config::from_file(home, home.load_config()?)
    }

    /// The libraries' configurations from the file's sections.
    pub fn from_file(home: &SamHome, f: sam_home::Config) -> anyhow::Result<Config> {
        let path = home.config_file();
        let redaction = redaction(&f.capture.redaction).with_context(|| format!("{}", path.display()))?;
        Ok(Config {
            quality: quality(&f.store.quality),
            store: store(&f.store),
            capture: capture(home, &f.capture),
            redaction,
            routing: routing(&f.capture.routing),
            near_dup: near_dup(&f.store.near_dup),
            serve: serve(&f.serve),
            deploy: deploy(&f.deploy),
            file: f,
        })
    }
}

/// `[store.quality]`.
pub fn quality(s: &file::QualitySection) -> sam_schema::quality::QualityConfig {
    sam_schema::quality::QualityConfig {
        min_response_chars: s.min_response_chars,
        max_total_chars: s.max_total_chars,
        max_duplicate_line_fraction: s.max_duplicate_line_fraction,
        max_top_ngram_fraction: s.max_top_ngram_fraction,
    }
}

/// `[store]`.
pub fn store(s: &file::StoreSection) -> sam_store::StoreConfig {
    sam_store::StoreConfig { busy_timeout_ms: s.busy_timeout_ms, cache_mib: s.cache_mib, batch_size: s.batch_size }
}

/// `[store.near_dup]`.
pub fn near_dup(s: &file::NearDupSection) -> sam_store::near_dup::NearDupConfig {
    sam_store::near_dup::NearDupConfig {
        threshold: s.threshold,
        shingle: s.shingle,
        bands: s.bands,
        rows: s.rows,
        seed: s.seed,
        threads: s.threads,
    }
}

/// `[capture]`, with the spool resolved under `home`.
pub fn capture(home: &SamHome, s: &file::CaptureSection) -> sam_capture::capture::CaptureConfig {
    let spool = s.spool.as_deref().map_or_else(|| home.capture_spool(), |p| home.resolve_path(p));
    sam_capture::capture::CaptureConfig {
        max_batch: s.max_batch,
        max_age_ms: s.max_age_ms,
        spool: Some(spool),
        escalation_as_preference: s.escalation_as_preference,
        busy_timeout_ms: s.busy_timeout_ms,
    }
}

/// `[capture.redaction]`; a kind sam does not know is an error naming it.
pub fn redaction(s: &file::RedactionSection) -> anyhow::Result<sam_capture::redact::RedactionConfig> {
    let disabled = s
        .disabled
        .iter()
        .map(|k| {
            serde_json::from_value(serde_json::Value::String(k.clone()))
                .map_err(|_| anyhow::anyhow!("[capture.redaction] disabled: unknown kind {k:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(sam_capture::redact::RedactionConfig {
        disabled,
        entropy_threshold: s.entropy_threshold,
        entropy_min_len: s.entropy_min_len,
        allow: s.allow.clone(),
        allow_patterns: s.allow_patterns.clone(),
        allow_sources: s.allow_sources.clone(),
        generic_users: s.generic_users.clone(),
    })
}

/// `[serve]`.
pub fn serve(s: &file::ServeSection) -> sam_serve::ServeConfig {
    sam_serve::ServeConfig {
        bind: s.bind.clone(),
        port: s.port,
        max_body_bytes: s.max_body_bytes,
        stats_cache_s: s.stats_cache_s,
        sse_poll_ms: s.sse_poll_ms,
    }
}

/// `[deploy]`.
pub fn deploy(s: &file::DeploySection) -> sam_deploy::DeployConfig {
    let (g, c) = (&s.gate, &s.canary);
    sam_deploy::DeployConfig {
        default_slot: s.default_slot.clone(),
        max_seq_len: s.max_seq_len,
        gate: sam_deploy::GateSettings {
            margin: g.margin,
            golden_tolerance: g.golden_tolerance,
            min_win_rate: g.min_win_rate,
            prompts: g.prompts.clone(),
            max_new_tokens: g.max_new_tokens,
            max_repeated: g.max_repeated,
            max_answer_loss: g.max_answer_loss,
        },
        canary: sam_deploy::CanarySettings {
            percent: c.percent,
            min_judgements: c.min_judgements,
            tolerance: c.tolerance,
            rollback_margin: c.rollback_margin,
        },
    }
}

/// `[capture.routing]`.
pub fn routing(s: &file::RoutingSection) -> sam_capture::routing::RoutingConfig {
    sam_capture::routing::RoutingConfig {
        routes: s
            .routes
            .iter()
            .map(|r| sam_capture::routing::Route {
                task: r.task.clone(),
                model: r.model.clone(),
                reason: r.reason.clone(),
                examples: r.examples.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_defaults_are_the_libraries_defaults() {
        let home = SamHome::new("/h");
        let c = Config::from_file(&home, sam_home::Config::default()).unwrap();
        assert_eq!(c.quality, Default::default());
        assert_eq!(c.store, Default::default());
        assert_eq!(c.redaction, Default::default());
        assert_eq!(c.routing, Default::default());
        assert_eq!(c.near_dup, Default::default());
        assert_eq!(c.serve, Default::default());
        assert_eq!(c.deploy, Default::default());
        let lib = sam_capture::capture::CaptureConfig { spool: Some(home.capture_spool()), ..Default::default() };
        assert_eq!(c.capture, lib);
    }

    #[test]
    fn redaction_kinds_are_checked_and_paths_resolved() {
        let home = SamHome::new("/h");
        let mut f = sam_home::Config::default();
        f.capture.redaction.disabled = vec!["ipv4".into()];
        f.capture.spool = Some("spool/here.jsonl".into());
        let c = Config::from_file(&home, f.clone()).unwrap();
        assert_eq!(c.redaction.disabled, [sam_capture::redact::SecretKind::Ipv4]);
        assert_eq!(c.capture.spool.as_deref(), Some(std::path::Path::new("/h/spool/here.jsonl")));
        f.capture.redaction.disabled = vec!["ipv5".into()];
        let err = format!("{:#}", Config::from_file(&home, f).unwrap_err());
        assert!(err.contains("ipv5") && err.contains("sam.toml"), "{err}");
    }
}
