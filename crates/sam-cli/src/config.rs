//! `sam.toml` (read by `sam_home`, one plain section per component) turned
//! into each library's own configuration.
//!
//! `sam_home::Config` holds the file as written; [`Config`] holds what the
//! commands hand to the libraries. The conversions are
//! `sam_pipeline::settings`' (the scheduler daemon reads the file the same
//! way), plus the server's and the deployer's here. Tests hold the two sets
//! of defaults equal, so a default changed on one side is seen.

use anyhow::Context as _;
use sam_home::SamHome;
use sam_home::config as file;
use sam_pipeline::settings;

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
        let redaction = settings::redaction(&f.capture.redaction).with_context(|| format!("{}", path.display()))?;
        Ok(Config {
            quality: settings::quality(&f.store.quality),
            store: settings::store(&f.store),
            capture: settings::capture(home, &f.capture),
            redaction,
            routing: settings::routing(&f.capture.routing),
            near_dup: settings::near_dup(&f.store.near_dup),
            serve: serve(&f.serve),
            deploy: settings::deploy(&f.deploy),
            file: f,
        })
    }
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
