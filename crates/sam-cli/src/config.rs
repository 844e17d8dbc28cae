//! `sam.toml`: the configuration file under SAM_HOME.
//!
//! Each library keeps its own serde config struct with a `Default`; this file
//! only gathers them into sections. `sam init` writes every default out, with
//! a comment on every key, so the file documents itself.
//!
//! To add a section: add a field to [`Config`] (with `#[serde(default)]` on
//! the struct, already there) and an entry to [`SECTIONS`] with a comment for
//! each key. A test fails while a key has no comment.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Thresholds of the quality checks (validation and capture).
    pub quality: sam_schema::quality::QualityConfig,
    /// The store's settings.
    pub store: sam_store::StoreConfig,
    /// Live capture: batching and the spool.
    pub capture: sam_capture::capture::CaptureConfig,
    /// PII and secret redaction of everything collected or captured.
    pub redaction: sam_capture::redact::RedactionConfig,
    /// The routing table (`sam collect routing`).
    pub routing: sam_capture::routing::RoutingConfig,
    /// Deduplication (`[dedup.near]`: near-duplicate detection).
    pub dedup: DedupConfig,
    /// The HTTP server (`sam serve`).
    pub serve: sam_serve::ServeConfig,
    /// Deployment: the gate's thresholds and the canary (`sam deploy`).
    pub deploy: sam_deploy::DeployConfig,
}

/// The `[dedup]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Near-duplicate detection (`sam dedup --near`).
    pub near: sam_store::near_dup::NearDupConfig,
}

/// One section of the file as `sam init` writes it: its name, what it is for,
/// and a comment for each key.
struct Section {
    name: &'static str,
    about: &'static str,
    keys: &'static [(&'static str, &'static str)],
}

const SECTIONS: &[Section] = &[
    Section {
        name: "quality",
        about: "Quality checks: how `sam validate` scores examples into tiers\n\
                (gold >= 0.8, silver >= 0.6, bronze >= 0.4, else unverified).",
        keys: &[
            ("min_response_chars", "A response shorter than this (in characters) loses 0.5."),
            ("max_total_chars", "An example longer than this (all fields, in characters) loses 0.5."),
            (
                "max_duplicate_line_fraction",
                "Most of a response's lines that may repeat an earlier line before it loses 0.5.",
            ),
            (
                "max_top_ngram_fraction",
                "Most of a response's text that its most frequent 2-, 3- and 4-word\n\
                 sequence may cover before it loses 0.4.",
            ),
        ],
    },
    Section {
        name: "store",
        about: "The store (store.db, SQLite).",
        keys: &[
            ("busy_timeout_ms", "How long a writer waits for another sam process to finish writing, in milliseconds."),
            ("cache_mib", "SQLite page cache in MiB; more keeps large ingests fast."),
            (
                "batch_size",
                "Examples per transaction in `sam ingest`: a crash keeps every committed batch whole\n\
                 and leaves no trace of the one in flight.",
            ),
        ],
    },
    Section {
        name: "capture",
        about: "Live capture (`sam capture`, and the assistant's capture API).",
        keys: &[
            ("max_batch", "Captures are written to the store in batches of this many."),
            ("max_age_ms", "...or when the oldest buffered capture is this old, in milliseconds."),
            (
                "spool",
                "Where captures wait when the store cannot be written (relative to SAM_HOME);\n\
                 unset: capture-spool.jsonl. The next capture drains it into the store.",
            ),
            (
                "escalation_as_preference",
                "An escalation with a local attempt becomes a preference pair (chosen = remote,\n\
                 rejected = local) rather than a chat example of the remote answer.",
            ),
            (
                "busy_timeout_ms",
                "How long `sam capture` waits for another process's write lock before it spools\n\
                 instead, in milliseconds.",
            ),
        ],
    },
    Section {
        name: "redaction",
        about: "PII and secret redaction: applied to every collected or captured example\n\
                before it is stored (`sam redact` shows what it does).",
        keys: &[
            (
                "disabled",
                "Kinds not to look for, e.g. [\"ipv4\"] (email, phone, ssn, credit_card, ipv4, ipv6,\n\
                 iban, aws_key, github_token, jwt, password, secret, high_entropy, home_path, ...;\n\
                 `sam redact --explain` names the kind of each finding).",
            ),
            ("entropy_threshold", "Bits per character above which a random-looking string is a secret."),
            ("entropy_min_len", "Shortest random-looking string that counts as a secret."),
            ("allow", "Literal values never redacted (a public test email, a known-safe token)."),
            (
                "allow_patterns",
                "Regular expressions: a finding whose whole value matches one is kept,\n\
                 e.g. [\"10\\\\.1\\\\.\\\\d+\\\\.\\\\d+\"] for a lab's own addresses.",
            ),
            (
                "allow_sources",
                "Sources whose examples are stored unredacted because you vouch for them:\n\
                 exact names (\"file:vetted.jsonl\") or a prefix ending in * (\"file:*\").",
            ),
            ("generic_users", "User names in home paths that name nobody (kept as they are)."),
        ],
    },
    Section {
        name: "routing",
        about: "Which model handles which task (`sam collect routing`). Each route is\n\
                [[routing.routes]] with task, model, reason and examples (sample prompts).",
        keys: &[("routes", "Empty: the built-in table (local for narrow tasks, remote for broad ones).")],
    },
    Section {
        name: "dedup.near",
        about: "Near-duplicate detection (`sam dedup --near`): MinHash signatures of word\n\
                shingles, LSH banding to find candidates, then the Jaccard estimate decides.",
        keys: &[
            ("threshold", "Estimated Jaccard similarity from which two examples are near-duplicates."),
            ("shingle", "Words per shingle."),
            ("bands", "LSH bands; more bands find less similar pairs (and cost more)."),
            ("rows", "Signature values per band (the signature has bands x rows values)."),
            ("seed", "Seed of the hash functions: fixed, so results are reproducible."),
            ("threads", "Threads that compute signatures (0: all cores)."),
        ],
    },
    Section {
        name: "serve",
        about: "The HTTP server (`sam serve`): capture API, statistics, runs, dashboard.\n\
                Listening beyond loopback also needs `--allow-remote` on the command line.",
        keys: &[
            ("bind", "IP address to listen on."),
            ("port", "Port to listen on (0: any free port)."),
            ("max_body_bytes", "Request bodies over this many bytes are refused (413)."),
            ("stats_cache_s", "Seconds the statistics are cached (a capture through the server refreshes them)."),
            ("sse_poll_ms", "How often a live run's event stream looks for new lines, in milliseconds."),
        ],
    },
    Section {
        name: "deploy",
        about: "Deployment (`sam deploy`): the adapter registry under SAM_HOME/registry.",
        keys: &[
            ("default_slot", "The slot commands use when none is named (one slot per base model)."),
            ("max_seq_len", "Examples are cut to this many tokens when the gate scores them."),
        ],
    },
    Section {
        name: "deploy.gate",
        about: "The gate `sam deploy promote` and `sam deploy canary` run (unless --force).",
        keys: &[
            ("margin", "Relative test-loss improvement over production a candidate needs (0.01: 1%)."),
            ("golden_tolerance", "Relative loss increase on the slot's golden set that is tolerated."),
            ("min_win_rate", "Share of held-out preference pairs the candidate must win against production."),
            ("prompts", "Prompts of the generation check (answers must not be empty, loop or leak the template)."),
            ("max_new_tokens", "Most tokens per generated answer."),
            ("max_repeated", "Most share of an answer's 4-token sequences that may repeat an earlier one."),
            (
                "max_answer_loss",
                "Highest mean loss (nats per token) of an answer under the base model: above, it babbles.",
            ),
        ],
    },
    Section {
        name: "deploy.canary",
        about: "Canaries (`sam deploy canary`, `sam deploy canary-check`): a share of the traffic by\n\
                key, decided by the feedback captured for each version's answers.",
        keys: &[
            ("percent", "Traffic share of a new canary, in percent."),
            ("min_judgements", "Judgements (good feedback, corrections, escalations) each side needs first."),
            ("tolerance", "Promote when the canary's good rate is at least production's minus this."),
            ("rollback_margin", "Roll back when the canary's good rate is below production's by more than this."),
        ],
    },
];

/// The table of a (possibly dotted) section name, `dedup.near` say.
fn section_table(root: &toml::Table, name: &str) -> toml::Table {
    let mut table = root.clone();
    for part in name.split('.') {
        table = table.get(part).and_then(|v| v.as_table()).cloned().unwrap_or_default();
    }
    table
}

/// Sections of a config value: tables holding at least one plain value,
/// named by their dotted path.
#[cfg(test)]
fn sections_of(table: &toml::Table, prefix: &str, out: &mut Vec<(String, Vec<String>)>) {
    let keys: Vec<String> = table.iter().filter(|(_, v)| !v.is_table()).map(|(k, _)| k.clone()).collect();
    if !keys.is_empty() {
        out.push((prefix.to_string(), keys));
    }
    for (k, v) in table.iter().filter(|(_, v)| v.is_table()) {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        sections_of(v.as_table().expect("a table"), &name, out);
    }
}

/// The configuration file's name under SAM_HOME.
pub const FILE_NAME: &str = "sam.toml";

/// Where the configuration lives.
pub fn path(home: &Path) -> PathBuf {
    home.join(FILE_NAME)
}

impl Config {
    /// Read `sam.toml` under `home`; the defaults when there is none.
    pub fn load(home: &Path) -> anyhow::Result<Config> {
        let path = path(home);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}\nfix the file, or move it away and run `sam init` to write the defaults",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }

    /// The file `sam init` writes: every default, each key commented.
    pub fn default_file() -> String {
        let value = toml::Table::try_from(Config::default()).expect("the config serialises to a table");
        let mut out = String::from(
            "# sam configuration. Every value below is the default; change what you need.\n\
             # Lines starting with '#' are comments.\n",
        );
        for section in SECTIONS {
            out.push('\n');
            for line in section.about.lines() {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("[{}]\n", section.name));
            let mut table = section_table(&value, section.name);
            // Sub-tables are sections of their own.
            table.retain(|_, v| !v.is_table());
            let body = toml::to_string(&table).expect("a table serialises");
            for line in body.lines() {
                let key = line.split('=').next().unwrap_or("").trim();
                if let Some((_, comment)) = section.keys.iter().find(|(k, _)| *k == key) {
                    for c in comment.lines() {
                        out.push_str(&format!("# {c}\n"));
                    }
                }
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_reads_back_as_the_defaults() {
        let text = Config::default_file();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn every_section_and_key_is_commented() {
        let value = toml::Table::try_from(Config::default()).unwrap();
        let mut sections = Vec::new();
        sections_of(&value, "", &mut sections);
        assert!(sections.iter().any(|(name, _)| name == "dedup.near"), "{sections:?}");
        for (name, keys) in &sections {
            let section = SECTIONS.iter().find(|s| s.name == name);
            let section = section.unwrap_or_else(|| panic!("section [{name}] has no entry in SECTIONS"));
            for key in keys {
                assert!(section.keys.iter().any(|(k, _)| k == key), "[{name}] {key} has no comment in SECTIONS");
            }
        }
        let text = Config::default_file();
        assert!(text.contains("# How long a writer waits"), "{text}");
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults_and_a_bad_one_says_where() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "[store]\nbatch_size = 7\n").unwrap();
        let cfg = Config::load(dir.path()).unwrap();
        assert_eq!(cfg.store.batch_size, 7);
        assert_eq!(cfg.quality, Default::default());
        std::fs::write(path(dir.path()), "[store]\nbatch_size = \"many\"\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("sam.toml") && err.contains("batch_size"), "{err}");
        assert_eq!(Config::load(&dir.path().join("nowhere")).unwrap(), Config::default());
    }
}
