//! sam-dataset: the tokenised cache of a prepared dataset folder — what
//! sam-prep writes and sam-trainer reads — in a crate of its own, so that
//! reading a prepared dataset needs no tokenizer or template engine.
//!
//! Main types: [`PreparedData`] (a dataset folder opened for reading),
//! [`TokenizedExample`] (an SFT example: token ids and a loss mask),
//! [`TokenizedPair`] (a preference pair), [`Split`]; [`write_sft`] /
//! [`write_preference`] and [`read_sft`] / [`read_preference`] for the files.
//!
//! A prepared dataset folder holds, beside the mlx-lm-compatible JSONL files,
//! a compact binary cache of token ids and loss masks so that training never
//! tokenises again:
//!
//! ```text
//! DIR/manifest.json
//! DIR/{train,valid,test}.jsonl          SFT rows (messages / prompt+completion / text)
//! DIR/preference/{train,valid,test}.jsonl   preference rows (prompt/chosen/rejected)
//! DIR/cache/sft-{train,valid,test}.bin
//! DIR/cache/preference-{train,valid,test}.bin
//! ```
//!
//! Each `.bin` file starts with an 8-byte magic (`SAMSFT01` or `SAMPRF01`), a
//! little-endian `u64` record count, then the records. Strings are a `u32`
//! byte length followed by UTF-8; token lists are a `u32` length followed by
//! that many `u32` ids; a loss mask is as many bytes (0 or 1) as its tokens.
//! Files are written to a temporary name and renamed into place.
//!
//! ```
//! use sam_dataset::{PreparedData, Split, TokenizedExample, sft_cache_path, write_sft};
//! # fn main() -> Result<(), sam_dataset::CacheError> {
//! let dir = tempfile::tempdir().unwrap();
//! let ex = TokenizedExample {
//!     id: "a".into(),
//!     domain: "code".into(),
//!     input_ids: vec![1, 2, 3],
//!     loss_mask: vec![false, true, true],
//! };
//! write_sft(&sft_cache_path(dir.path(), Split::Train), std::slice::from_ref(&ex))?;
//! let data = PreparedData::open(dir.path())?;
//! assert_eq!(data.sft(Split::Train)?, vec![ex]);
//! assert!(data.preference(Split::Train)?.is_empty());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Which split of a prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training rows.
    Train,
    /// Validation rows (evaluated during training).
    Valid,
    /// Held-out test rows (evaluated after training).
    Test,
}

impl Split {
    /// All splits, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The split's file stem: `train`, `valid` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tokenised SFT example: the whole rendered conversation and, per token,
/// whether it counts in the loss (assistant content and its end-of-turn token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// The example's id (stable, from the store or the input row).
    pub id: String,
    /// The example's domain (code, git, docs, …).
    pub domain: String,
    /// Token ids of the rendered conversation.
    pub input_ids: Vec<u32>,
    /// `true` where the token is trained on; same length as `input_ids`.
    pub loss_mask: Vec<bool>,
}

/// One tokenised preference pair: the prompt rendered with the generation
/// prompt, and each response closed by the end-of-turn token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    /// The pair's id.
    pub id: String,
    /// The pair's domain.
    pub domain: String,
    /// Token ids of the prompt (ends with the assistant generation prompt).
    pub prompt_ids: Vec<u32>,
    /// Token ids of the chosen response (ends with the end-of-turn token).
    pub chosen_ids: Vec<u32>,
    /// Token ids of the rejected response (ends with the end-of-turn token).
    pub rejected_ids: Vec<u32>,
}

/// Errors reading or writing the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An I/O error on a cache file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a cache file of the expected kind, or is cut short.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

const SFT_MAGIC: &[u8; 8] = b"SAMSFT01";
const PREF_MAGIC: &[u8; 8] = b"SAMPRF01";

/// A prepared dataset folder, opened for reading its tokenised cache.
///
#[derive(Debug, Clone)]
pub struct PreparedData {
    dir: PathBuf,
}

impl PreparedData {
    /// Open a prepared dataset folder (it must exist and hold a `cache/` folder).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CacheError> {
        let dir = dir.as_ref().to_path_buf();
        let cache = dir.join("cache");
        if !cache.is_dir() {
            return Err(CacheError::Corrupt {
                path: dir,
                reason: "not a prepared dataset (no cache/ folder): run `sam prep` first".into(),
            });
        }
        Ok(Self { dir })
    }

    /// The dataset folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the SFT cache file for a split.
    pub fn sft_path(&self, split: Split) -> PathBuf {
        sft_cache_path(&self.dir, split)
    }

    /// Path of the preference cache file for a split.
    pub fn preference_path(&self, split: Split) -> PathBuf {
        preference_cache_path(&self.dir, split)
    }

    /// The SFT examples of a split (empty when the dataset has none).
    pub fn sft(&self, split: Split) -> Result<Vec<TokenizedExample>, CacheError> {
        let path = self.sft_path(split);
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_sft(&path)
    }

    /// The preference pairs of a split (empty when the dataset has none).
    pub fn preference(&self, split: Split) -> Result<Vec<TokenizedPair>, CacheError> {
        let path = self.preference_path(split);
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_preference(&path)
    }
}

/// `DIR/cache/sft-<split>.bin`.
pub fn sft_cache_path(dir: &Path, split: Split) -> PathBuf {
    dir.join("cache").join(format!("sft-{}.bin", split.name()))
}

/// `DIR/cache/preference-<split>.bin`.
pub fn preference_cache_path(dir: &Path, split: Split) -> PathBuf {
    dir.join("cache").join(format!("preference-{}.bin", split.name()))
}

/// Write SFT examples to a cache file, atomically (temporary file + rename).
pub fn write_sft(path: &Path, examples: &[TokenizedExample]) -> Result<(), CacheError> {
    write_atomic(path, |w| {
        w.write_all(SFT_MAGIC)?;
        w.write_all(&(examples.len() as u64).to_le_bytes())?;
        for ex in examples {
            if ex.input_ids.len() != ex.loss_mask.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("example {}: {} ids but {} mask entries", ex.id, ex.input_ids.len(), ex.loss_mask.len()),
                ));
            }
            put_str(w, &ex.id)?;
            put_str(w, &ex.domain)?;
            put_ids(w, &ex.input_ids)?;
            let mask: Vec<u8> = ex.loss_mask.iter().map(|&m| m as u8).collect();
            w.write_all(&mask)?;
        }
        Ok(())
    })
}

/// Write preference pairs to a cache file, atomically.
pub fn write_preference(path: &Path, pairs: &[TokenizedPair]) -> Result<(), CacheError> {
    write_atomic(path, |w| {
        w.write_all(PREF_MAGIC)?;
        w.write_all(&(pairs.len() as u64).to_le_bytes())?;
        for p in pairs {
            put_str(w, &p.id)?;
            put_str(w, &p.domain)?;
            put_ids(w, &p.prompt_ids)?;
            put_ids(w, &p.chosen_ids)?;
            put_ids(w, &p.rejected_ids)?;
        }
        Ok(())
    })
}

/// Read an SFT cache file.
pub fn read_sft(path: &Path) -> Result<Vec<TokenizedExample>, CacheError> {
    read_file(path, SFT_MAGIC, |r| {
        let id = get_str(r)?;
        let domain = get_str(r)?;
        let input_ids = get_ids(r)?;
        let mut mask = vec![0u8; input_ids.len()];
        r.read_exact(&mut mask)?;
        if mask.iter().any(|&m| m > 1) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "loss mask byte is not 0 or 1"));
        }
        Ok(TokenizedExample { id, domain, input_ids, loss_mask: mask.into_iter().map(|m| m == 1).collect() })
    })
}

/// Read a preference cache file.
pub fn read_preference(path: &Path) -> Result<Vec<TokenizedPair>, CacheError> {
    read_file(path, PREF_MAGIC, |r| {
        Ok(TokenizedPair {
            id: get_str(r)?,
            domain: get_str(r)?,
            prompt_ids: get_ids(r)?,
            chosen_ids: get_ids(r)?,
            rejected_ids: get_ids(r)?,
        })
    })
}

fn write_atomic(path: &Path, body: impl FnOnce(&mut BufWriter<fs::File>) -> io::Result<()>) -> Result<(), CacheError> {
    sam_home::atomic::write_with(path, |e| e, body)
        .map_err(|source| CacheError::Io { path: path.to_path_buf(), source })
}

fn read_file<T>(
    path: &Path,
    magic: &[u8; 8],
    mut record: impl FnMut(&mut BufReader<fs::File>) -> io::Result<T>,
) -> Result<Vec<T>, CacheError> {
    let corrupt = |reason: String| CacheError::Corrupt { path: path.to_path_buf(), reason };
    let file = fs::File::open(path).map_err(|source| CacheError::Io { path: path.to_path_buf(), source })?;
    let mut r = BufReader::new(file);
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|e| corrupt(format!("cannot read header: {e}")))?;
    if &head[..8] != magic {
        return Err(corrupt(format!(
            "not a sam cache file of this kind (expected magic {:?})",
            String::from_utf8_lossy(magic)
        )));
    }
    let n = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
    for i in 0..n {
        out.push(record(&mut r).map_err(|e| corrupt(format!("record {i} of {n}: {e}")))?);
    }
    Ok(out)
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_ids(w: &mut impl Write, ids: &[u32]) -> io::Result<()> {
    w.write_all(&(ids.len() as u32).to_le_bytes())?;
    for id in ids {
        w.write_all(&id.to_le_bytes())?;
    }
    Ok(())
}

fn get_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn get_str(r: &mut impl Read) -> io::Result<String> {
    let n = get_u32(r)? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn get_ids(r: &mut impl Read) -> io::Result<Vec<u32>> {
    let n = get_u32(r)? as usize;
    let mut b = vec![0u8; n * 4];
    r.read_exact(&mut b)?;
    Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sft_and_preference_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sft = vec![
            TokenizedExample {
                id: "a".into(),
                domain: "code".into(),
                input_ids: vec![1, 2, 3],
                loss_mask: vec![false, true, true],
            },
            TokenizedExample { id: "é".into(), domain: String::new(), input_ids: vec![], loss_mask: vec![] },
        ];
        let p = sft_cache_path(dir.path(), Split::Train);
        write_sft(&p, &sft).unwrap();
        let data = PreparedData::open(dir.path()).unwrap();
        assert_eq!(data.sft(Split::Train).unwrap(), sft);
        assert!(data.sft(Split::Test).unwrap().is_empty());

        let pairs = vec![TokenizedPair {
            id: "p".into(),
            domain: "git".into(),
            prompt_ids: vec![7, 8],
            chosen_ids: vec![9],
            rejected_ids: vec![10, 11, 12],
        }];
        write_preference(&preference_cache_path(dir.path(), Split::Valid), &pairs).unwrap();
        assert_eq!(data.preference(Split::Valid).unwrap(), pairs);
        // The wrong reader refuses the file instead of misreading it.
        assert!(read_sft(&data.preference_path(Split::Valid)).is_err());
    }

    #[test]
    fn truncated_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = sft_cache_path(dir.path(), Split::Train);
        let ex =
            TokenizedExample { id: "a".into(), domain: "d".into(), input_ids: vec![1, 2, 3], loss_mask: vec![true; 3] };
        write_sft(&p, &[ex]).unwrap();
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        let err = read_sft(&p).unwrap_err().to_string();
        assert!(err.contains("record 0 of 1"), "{err}");
    }
}
