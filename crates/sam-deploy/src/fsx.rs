//! Durable file operations of the registry: whole-file replacement (through
//! sam-home's atomic write), durable appends to the history, and folder
//! syncs after renames.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Result, io_err};

/// Replaces `path` with `bytes` atomically (the workspace's one
/// write-temp-then-rename, then the folder synced so the rename is durable):
/// a reader sees the old file or the new one, and after a crash the file is
/// one of them.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sam_home::atomic::write(path, bytes).map_err(io_err(path))
}

/// Writes `value` as pretty JSON, atomically.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| crate::Error::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, (text + "\n").as_bytes())
}

/// Reads a JSON file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| crate::Error::Corrupt { path: path.to_path_buf(), reason: e.to_string() })
}

/// Flushes a folder's entries (after a rename or a create in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Appends one line (a single `write`) to `path` and syncs it. A torn last
/// line left by a crash is cut off first, so every line stays whole.
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    let existed = path.exists();
    let mut f = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io_err(path))?;
    repair_tail(&mut f, path)?;
    let mut buf = line.trim_end_matches('\n').to_string();
    buf.push('\n');
    f.write_all(buf.as_bytes()).map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))?;
    if !existed && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Cuts a last line that has no newline (a write torn by a crash).
fn repair_tail(f: &mut File, path: &Path) -> Result<()> {
    let len = f.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1)).map_err(io_err(path))?;
    f.read_exact(&mut last).map_err(io_err(path))?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the last newline and cut after it.
    let mut pos = len;
    let mut chunk = vec![0u8; 4096];
    let mut keep = 0;
    while pos > 0 {
        let n = (pos as usize).min(chunk.len());
        pos -= n as u64;
        f.seek(SeekFrom::Start(pos)).map_err(io_err(path))?;
        f.read_exact(&mut chunk[..n]).map_err(io_err(path))?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            keep = pos + i as u64 + 1;
            break;
        }
    }
    tracing::warn!("{}: cutting a torn last line ({} bytes)", path.display(), len - keep);
    f.set_len(keep).map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}
