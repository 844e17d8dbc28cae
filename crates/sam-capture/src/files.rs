//! What the file sources share: walking folders (honouring `.gitignore`) and
//! a cursor of file fingerprints, so that a second run reads only files that
//! changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{CaptureError, Result};
use crate::source::Cursor;

/// `path → "size:mtime:hash"` of every file read.
pub(crate) type Seen = BTreeMap<String, String>;

pub(crate) fn parse_cursor(name: &str, since: Option<&Cursor>) -> Result<Seen> {
    match since {
        Some(c) => serde_json::from_str(c.as_str())
            .map_err(|e| CaptureError::Cursor { source_name: name.into(), reason: e.to_string() }),
        None => Ok(Seen::new()),
    }
}

pub(crate) fn to_cursor(seen: &Seen) -> Cursor {
    Cursor(serde_json::to_string(seen).expect("a map of strings serialises"))
}

/// Every file under `roots` (a root may be a file) whose name passes `keep`,
/// in a stable order, honouring `.gitignore`, `.ignore` and hidden files.
pub(crate) fn walk(roots: &[PathBuf], keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for root in roots {
        if root.is_file() {
            out.push(root.clone());
            continue;
        }
        if !root.exists() {
            return Err(CaptureError::io(root, std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder")));
        }
        let walker = ignore::WalkBuilder::new(root).require_git(false).sort_by_file_name(|a, b| a.cmp(b)).build();
        for entry in walker {
            let entry = entry.map_err(|e| CaptureError::io(root, std::io::Error::other(e.to_string())))?;
            if entry.file_type().is_some_and(|t| t.is_file()) && keep(entry.path()) {
                out.push(entry.into_path());
            }
        }
    }
    Ok(out)
}

/// Read `path` if it changed since `seen` recorded it; records its new
/// fingerprint in `next` either way. `None` when unchanged.
pub(crate) fn read_if_changed(path: &Path, seen: &Seen, next: &mut Seen) -> Result<Option<String>> {
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| CaptureError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let quick = format!("{}:{mtime}", meta.len());
    if let Some(old) = seen.get(&key)
        && old.starts_with(&format!("{quick}:"))
    {
        next.insert(key, old.clone());
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| CaptureError::io(path, e))?;
    let hash = blake3::hash(&bytes).to_hex()[..16].to_string();
    let unchanged = seen.get(&key).is_some_and(|old| old.ends_with(&format!(":{hash}")));
    next.insert(key, format!("{quick}:{hash}"));
    if unchanged {
        return Ok(None);
    }
    // Not UTF-8: not text this source can use.
    Ok(String::from_utf8(bytes).ok())
}
