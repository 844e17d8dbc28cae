//! Reading base-model folders for sam: Hugging Face folders and GGUF files.
//!
//! A base model comes either as a Hugging Face folder (`config.json`,
//! `tokenizer.json`, `tokenizer_config.json` with its `chat_template`, or a
//! separate `chat_template.jinja`, and `generation_config.json`) or as a
//! single GGUF file from llama.cpp, whose tokenizer and chat template live in
//! its metadata. Both prep (which renders and tokenises conversations) and the
//! trainer (which needs the config and the stop tokens) read models through
//! this crate, so they always agree on the tokenizer.
//!
//! Main types:
//! - [`ModelSource`]: what a path is — a Hugging Face folder or a GGUF file.
//! - [`BaseModel`]: what sam needs from it — raw `config.json`, GGUF
//!   metadata, a [`tokenizers::Tokenizer`] (from `tokenizer.json`, or rebuilt
//!   from `tokenizer.ggml.*` as byte-level BPE), the chat template text and
//!   the [`SpecialTokens`] (bos, eos, pad, end of turn, generation stop ids).
//! - [`gguf::GgufMetadata`]: the key/value metadata of a GGUF file.
//! - [`default_test_model`] / [`require_test_model`]: where sam's test model
//!   (SmolLM2-135M-Instruct, fetched by `scripts/fetch-test-model.sh`) lives.
//!
//! GGUF metadata is parsed here rather than with `candle_core`'s
//! `gguf_file`: the header is a few hundred lines of format to read, and
//! keeping candle (and its gemm kernels) out of this crate keeps prep and the
//! CLI's data commands quick to build. The trainer reads tensors with candle.
//!
//! This crate knows nothing about training or datasets.
//!
//! ```
//! use sam_models::{BaseModel, ModelSource};
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#)?;
//! std::fs::write(
//!     dir.path().join("tokenizer_config.json"),
//!     r#"{"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}"#,
//! )?;
//! let model = BaseModel::open(dir.path())?;
//! assert!(matches!(model.source(), ModelSource::HfFolder(_)));
//! assert_eq!(model.config().unwrap()["model_type"], "llama");
//! assert!(model.chat_template().unwrap().contains("messages"));
//! assert!(model.tokenizer().is_none()); // no tokenizer.json in this folder
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod gguf;
mod tokenizer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
pub use tokenizers::Tokenizer;

use gguf::GgufMetadata;

/// File name of sam's test model (SmolLM2-135M-Instruct, Q4_1 GGUF).
pub const TEST_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Errors reading a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a model file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A JSON file of the model folder does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A GGUF file is malformed.
    #[error("{path}: not a valid GGUF file: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer cannot be loaded or rebuilt.
    #[error("{path}: cannot load the tokenizer: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The path is neither a Hugging Face folder nor a GGUF file.
    #[error("{path}: not a model: {reason}")]
    NotAModel {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// sam's test model is not on this machine.
    #[error("test model not found at {path}: run scripts/fetch-test-model.sh (or set SAM_TEST_MODEL to a model path)")]
    TestModelMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
}

/// What a model path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face folder (holds `config.json` or `tokenizer.json`).
    HfFolder(PathBuf),
    /// A GGUF file (a `.gguf` path, or a folder holding exactly one).
    Gguf(PathBuf),
}

impl ModelSource {
    /// Decide what `path` is: a `.gguf` file (or any file starting with the
    /// GGUF magic), a folder with `config.json` / `tokenizer.json` /
    /// `tokenizer_config.json`, or a folder holding exactly one `.gguf` file.
    pub fn detect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        if meta.is_file() {
            if has_gguf_magic(path) {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "a file that is not GGUF (pass a Hugging Face folder or a .gguf file)".into(),
            });
        }
        let hf_files = ["config.json", "tokenizer.json", "tokenizer_config.json"];
        if hf_files.iter().any(|f| path.join(f).is_file()) {
            return Ok(ModelSource::HfFolder(path.to_path_buf()));
        }
        let io_err = |source| Error::Io { path: path.to_path_buf(), source };
        let mut ggufs = Vec::new();
        for entry in fs::read_dir(path).map_err(io_err)? {
            let p = entry.map_err(io_err)?.path();
            if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && p.is_file() {
                ggufs.push(p);
            }
        }
        match ggufs.len() {
            1 => Ok(ModelSource::Gguf(ggufs.remove(0))),
            0 => Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "no config.json, tokenizer.json or .gguf file in this folder".into(),
            }),
            n => Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: format!("{n} .gguf files in this folder: name one"),
            }),
        }
    }

    /// The folder or file.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfFolder(p) | ModelSource::Gguf(p) => p,
        }
    }
}

fn has_gguf_magic(path: &Path) -> bool {
    use io::Read;
    let mut b = [0u8; 4];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut b)).is_ok() && &b == b"GGUF"
}

/// A special token: its id and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// Token id.
    pub id: u32,
    /// Token text (e.g. `<|im_end|>`).
    pub text: String,
}

/// The special tokens of a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<SpecialToken>,
    /// End of sequence.
    pub eos: Option<SpecialToken>,
    /// Padding.
    pub pad: Option<SpecialToken>,
    /// Unknown token.
    pub unk: Option<SpecialToken>,
    /// The token that closes a chat turn (`<|im_end|>` for ChatML,
    /// `<|eot_id|>` for Llama 3); the eos token when nothing better is known.
    pub end_of_turn: Option<SpecialToken>,
    /// Ids that stop generation: `generation_config.json`'s `eos_token_id`
    /// (one or a list), the eos and the end-of-turn ids, deduplicated.
    pub stop_ids: Vec<u32>,
    /// Whether plain tokenisation adds bos (`add_bos_token`).
    pub add_bos: bool,
    /// Whether plain tokenisation adds eos (`add_eos_token`).
    pub add_eos: bool,
}

impl SpecialTokens {
    /// The token id sequences are padded with: the pad token, else eos,
    /// else 0. The one rule for it: prep writes it into the dataset's
    /// manifest, and training and evaluation pad with it.
    pub fn pad_id(&self) -> u32 {
        self.pad.as_ref().or(self.eos.as_ref()).map_or(0, |t| t.id)
    }
}

/// A base model, read: config, tokenizer, chat template and special tokens.
#[derive(Debug, Clone)]
pub struct BaseModel {
    source: ModelSource,
    config: Option<Value>,
    tokenizer_config: Option<Value>,
    generation_config: Option<Value>,
    gguf: Option<GgufMetadata>,
    tokenizer: Option<Tokenizer>,
    chat_template: Option<String>,
    special: SpecialTokens,
}

impl BaseModel {
    /// Read the model at `path` (a Hugging Face folder or a GGUF file; see
    /// [`ModelSource::detect`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        match ModelSource::detect(path)? {
            ModelSource::HfFolder(dir) => Self::open_hf(dir),
            ModelSource::Gguf(file) => Self::open_gguf(file),
        }
    }

    fn open_hf(dir: PathBuf) -> Result<Self, Error> {
        let config = read_json_opt(&dir.join("config.json"))?;
        let tokenizer_config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_json_opt(&dir.join("generation_config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() {
            Some(
                Tokenizer::from_file(&tok_path)
                    .map_err(|e| Error::Tokenizer { path: tok_path.clone(), reason: e.to_string() })?,
            )
        } else {
            None
        };
        // Newer transformers writes the template to its own file; it wins
        // over the key in tokenizer_config.json, as in transformers.
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(fs::read_to_string(&jinja).map_err(|source| Error::Io { path: jinja.clone(), source })?)
        } else {
            tokenizer_config.as_ref().and_then(|c| template_from_config(c.get("chat_template")?))
        };

        let tc = tokenizer_config.as_ref();
        let named = |key: &str| -> Option<SpecialToken> {
            let text = token_text(tc?.get(key)?)?;
            let id = tokenizer.as_ref()?.token_to_id(&text)?;
            Some(SpecialToken { id, text })
        };
        let by_config_id = |key: &str| -> Option<SpecialToken> {
            let id = config.as_ref()?.get(key)?.as_u64()? as u32;
            let text = tokenizer.as_ref()?.id_to_token(id)?;
            Some(SpecialToken { id, text })
        };
        let flag = |key: &str| tc.and_then(|c| c.get(key)?.as_bool()).unwrap_or(false);
        let mut special = SpecialTokens {
            bos: named("bos_token").or_else(|| by_config_id("bos_token_id")),
            eos: named("eos_token").or_else(|| by_config_id("eos_token_id")),
            pad: named("pad_token"),
            unk: named("unk_token"),
            end_of_turn: None,
            stop_ids: Vec::new(),
            add_bos: flag("add_bos_token"),
            add_eos: flag("add_eos_token"),
        };
        let gen_eos = generation_config.as_ref().and_then(|g| g.get("eos_token_id")).map(ids_of).unwrap_or_default();
        finish_special(&mut special, tokenizer.as_ref(), chat_template.as_deref(), None, gen_eos);
        Ok(Self {
            source: ModelSource::HfFolder(dir),
            config,
            tokenizer_config,
            generation_config,
            gguf: None,
            tokenizer,
            chat_template,
            special,
        })
    }

    fn open_gguf(file: PathBuf) -> Result<Self, Error> {
        let meta = GgufMetadata::read(&file)?;
        let tokenizer =
            tokenizer::from_gguf(&meta).map_err(|reason| Error::Tokenizer { path: file.clone(), reason })?;
        let chat_template = meta.get_str("tokenizer.chat_template").map(str::to_string);
        let by_id = |key: &str| -> Option<SpecialToken> {
            let id = meta.get_u64(&format!("tokenizer.ggml.{key}"))? as u32;
            let text = tokenizer.id_to_token(id)?;
            Some(SpecialToken { id, text })
        };
        let mut special = SpecialTokens {
            bos: by_id("bos_token_id"),
            eos: by_id("eos_token_id"),
            pad: by_id("padding_token_id"),
            unk: by_id("unknown_token_id"),
            end_of_turn: None,
            stop_ids: Vec::new(),
            // llama.cpp's default for gpt2-style vocabularies is no bos.
            add_bos: meta.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
            add_eos: meta.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        };
        let eot = by_id("eot_token_id");
        finish_special(&mut special, Some(&tokenizer), chat_template.as_deref(), eot, Vec::new());
        Ok(Self {
            source: ModelSource::Gguf(file),
            config: None,
            tokenizer_config: None,
            generation_config: None,
            gguf: Some(meta),
            tokenizer: Some(tokenizer),
            chat_template,
            special,
        })
    }

    /// A short fingerprint of the model's files: its configuration, and the
    /// name, size and first MiB of each weight file. It changes when the
    /// model does, and costs a few reads, not a pass over the weights.
    pub fn fingerprint(&self) -> Result<String, Error> {
        use std::io::Read as _;
        let mut h = blake3::Hasher::new();
        h.update(serde_json::to_string(&self.config).unwrap_or_default().as_bytes());
        let mut files = match &self.source {
            ModelSource::Gguf(p) => vec![p.clone()],
            ModelSource::HfFolder(dir) => {
                let mut v: Vec<PathBuf> = fs::read_dir(dir)
                    .map_err(|e| Error::Io { path: dir.clone(), source: e })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                v.sort();
                v
            }
        };
        files.dedup();
        for p in &files {
            let io = |e| Error::Io { path: p.clone(), source: e };
            let f = fs::File::open(p).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            let mut head = Vec::with_capacity(1 << 20);
            f.take(1 << 20).read_to_end(&mut head).map_err(io)?;
            h.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            h.update(&len.to_le_bytes());
            h.update(&head);
        }
        Ok(h.finalize().to_hex()[..16].to_string())
    }

    /// Where the model was read from.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// A short name: the folder's name, or the GGUF file's stem.
    pub fn name(&self) -> String {
        let p = self.source.path();
        let stem = match self.source {
            ModelSource::HfFolder(_) => p.file_name(),
            ModelSource::Gguf(_) => p.file_stem(),
        };
        stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
    }

    /// `config.json` as raw JSON (Hugging Face folders only), so that each
    /// user reads the fields it needs.
    pub fn config(&self) -> Option<&Value> {
        self.config.as_ref()
    }

    /// `tokenizer_config.json` as raw JSON (Hugging Face folders only).
    pub fn tokenizer_config(&self) -> Option<&Value> {
        self.tokenizer_config.as_ref()
    }

    /// `generation_config.json` as raw JSON (Hugging Face folders only).
    pub fn generation_config(&self) -> Option<&Value> {
        self.generation_config.as_ref()
    }

    /// The GGUF metadata (GGUF files only).
    pub fn gguf(&self) -> Option<&GgufMetadata> {
        self.gguf.as_ref()
    }

    /// The tokenizer, when the model has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The model's own chat template (Jinja source), when it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The special tokens.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }
}

/// Fill in the end-of-turn token and the stop ids.
fn finish_special(
    s: &mut SpecialTokens,
    tokenizer: Option<&Tokenizer>,
    template: Option<&str>,
    declared_eot: Option<SpecialToken>,
    generation_eos: Vec<u32>,
) {
    // The end of turn is what the template writes after a message: look for
    // the markers of the common template families, in the template and the
    // vocabulary; else the eos token.
    const MARKERS: [&str; 5] = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"];
    let from_template = || {
        let (tpl, tk) = (template?, tokenizer?);
        MARKERS.iter().find_map(|m| {
            let id = tk.token_to_id(m).filter(|_| tpl.contains(m))?;
            Some(SpecialToken { id, text: (*m).to_string() })
        })
    };
    s.end_of_turn = declared_eot.or_else(from_template).or_else(|| s.eos.clone());
    let mut stop = generation_eos;
    stop.extend(s.eos.as_ref().map(|t| t.id));
    stop.extend(s.end_of_turn.as_ref().map(|t| t.id));
    let mut seen = std::collections::HashSet::new();
    stop.retain(|id| seen.insert(*id));
    s.stop_ids = stop;
}

fn read_json_opt(path: &Path) -> Result<Option<Value>, Error> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map(Some).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}

/// `chat_template` is a string, or a list of `{name, template}` of which
/// `default` is the one for plain chats.
fn template_from_config(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |want: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(want));
            named("default").or_else(|| list.first()).and_then(|t| t.get("template")?.as_str().map(str::to_string))
        }
        _ => None,
    }
}

/// A special token in tokenizer_config.json: a string, or an AddedToken
/// object with `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Value::Array(a) => a.iter().filter_map(|n| Some(n.as_u64()? as u32)).collect(),
        _ => Vec::new(),
    }
}

/// Where sam's test model is expected: `$SAM_TEST_MODEL` when set, else
/// `SmolLM2-135M-Instruct.Q4_1.gguf` in the cache folder that
/// `scripts/fetch-test-model.sh` fills (`$SAM_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sam`, else `~/.cache/sam`, then `models/`). The file may
/// not exist; see [`require_test_model`].
pub fn default_test_model() -> PathBuf {
    if let Some(p) = std::env::var_os("SAM_TEST_MODEL").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    sam_home::cached_models_dir().join(TEST_MODEL_FILE)
}

/// [`default_test_model`], or an error naming `scripts/fetch-test-model.sh`
/// when it is not there. Tests that need the model call this and fail with
/// that message rather than skip.
pub fn require_test_model() -> Result<PathBuf, Error> {
    let p = default_test_model();
    if p.exists() { Ok(p) } else { Err(Error::TestModelMissing { path: p }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_key_forms() {
        let s = serde_json::json!("{{ x }}");
        assert_eq!(template_from_config(&s).as_deref(), Some("{{ x }}"));
        let list = serde_json::json!([
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"}
        ]);
        assert_eq!(template_from_config(&list).as_deref(), Some("D"));
        assert_eq!(token_text(&serde_json::json!({"content": "<s>", "lstrip": false})).as_deref(), Some("<s>"));
        assert_eq!(ids_of(&serde_json::json!([2, 7])), vec![2, 7]);
        assert_eq!(ids_of(&serde_json::json!(2)), vec![2]);
    }

    #[test]
    fn detect_folder_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelSource::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
        let g = dir.path().join("m.gguf");
        fs::write(&g, b"GGUF\x03\0\0\0").unwrap();
        assert_eq!(ModelSource::detect(dir.path()).unwrap(), ModelSource::Gguf(g.clone()));
        assert_eq!(ModelSource::detect(&g).unwrap(), ModelSource::Gguf(g));
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(matches!(ModelSource::detect(dir.path()).unwrap(), ModelSource::HfFolder(_)));
        let txt = dir.path().join("notes.txt");
        fs::write(&txt, "hello").unwrap();
        assert!(ModelSource::detect(&txt).is_err());
    }
}
