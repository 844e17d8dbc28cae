//! Atomic writes: the one implementation every sam crate uses.
//!
//! - A **file** is written into a temporary file in the same folder, flushed
//!   and fsynced, renamed over the destination, and the folder is fsynced, so
//!   a reader (or a crash) sees the old file or the new one, never a part:
//!   [`write`] (bytes), [`write_with`] (streamed through a buffered writer),
//!   [`write_via`] (for a library that can only write to a path).
//! - A **folder** is filled under a temporary sibling name and swapped in
//!   whole: [`write_dir`], or [`replace_dir`] for a folder already complete.
//!   On Linux the swap is one `renameat2(RENAME_EXCHANGE)`.
//! - A **JSONL line** is appended with one `write` call ([`append_line`]), so
//!   a crash leaves at most a torn last line, which [`read_lines`] and
//!   [`Tail`] pass over.
//!
//! Errors are plain [`std::io::Error`]s; the caller adds the path to its own
//! error type. The functions that run a caller's `body` take the caller's
//! error type `E` and an `on_io` that turns this module's I/O errors into it,
//! so a body can fail with whatever it fails with.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("state.json");
//! sam_home::atomic::write(&path, b"{\"step\": 1}\n")?;
//! let rows = sam_home::atomic::write_with(&path, |e| e, |w| {
//!     use std::io::Write as _;
//!     w.write_all(b"{\"step\": 2}\n")?;
//!     Ok(1)
//! })?;
//! assert_eq!(rows, 1);
//! assert_eq!(std::fs::read_to_string(&path)?, "{\"step\": 2}\n");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `bytes` to `path` atomically, creating the folder when needed.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |e| e, |w| w.write_all(bytes))
}

/// Write `path` atomically through a buffered writer: `body` writes the
/// content; on its error nothing changes at `path` and the temporary file is
/// removed. Returns what `body` returns.
pub fn write_with<T, E>(
    path: &Path,
    on_io: impl Fn(io::Error) -> E,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<T, E>,
) -> Result<T, E> {
    write_via(path, &on_io, |tmp| {
        let mut w = BufWriter::with_capacity(1 << 16, File::create(tmp).map_err(&on_io)?);
        let out = body(&mut w)?;
        w.flush().map_err(&on_io)?;
        Ok(out)
    })
}

/// Write `path` atomically with a writer that takes a path: `body` writes the
/// whole file at the temporary path it is given (in the same folder); then it
/// is fsynced and renamed over `path`. On `body`'s error nothing changes at
/// `path`.
pub fn write_via<T, E>(
    path: &Path,
    on_io: impl Fn(io::Error) -> E,
    body: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let dir = parent(path);
    fs::create_dir_all(dir).map_err(&on_io)?;
    let tmp = temp_sibling(path);
    let res = body(&tmp).and_then(|out| {
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(&on_io)?;
        fs::rename(&tmp, path).map_err(&on_io)?;
        Ok(out)
    });
    match res {
        Ok(out) => {
            sync_folder(dir);
            Ok(out)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Build the folder `dest` atomically: `body` fills the fresh temporary
/// folder it is given (a sibling of `dest`), then it replaces `dest` whole
/// ([`replace_dir`]). On `body`'s error the temporary folder is removed and
/// `dest` is untouched.
pub fn write_dir<T, E>(
    dest: &Path,
    on_io: impl Fn(io::Error) -> E,
    body: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let tmp = temp_sibling(dest);
    (|| {
        fs::create_dir_all(parent(dest))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)
    })()
    .map_err(&on_io)?;
    match body(&tmp) {
        Ok(out) => {
            replace_dir(&tmp, dest).map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                on_io(e)
            })?;
            Ok(out)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Replace the folder `dest` with the complete folder `tmp` (a sibling on the
/// same file system) so that readers see either the old folder or the new
/// one, never a mix: on Linux with one `renameat2(RENAME_EXCHANGE)`,
/// elsewhere with two renames (a crash between them leaves no `dest`, and the
/// old folder beside it as `.NAME.old-PID`). The files directly in `tmp` are
/// fsynced first. `tmp` is gone afterwards.
pub fn replace_dir(tmp: &Path, dest: &Path) -> io::Result<()> {
    for entry in fs::read_dir(tmp)? {
        let p = entry?.path();
        if p.is_file() {
            File::open(&p)?.sync_all()?;
        }
    }
    sync_folder(tmp);
    if !dest.exists() {
        fs::rename(tmp, dest)?;
    } else if exchange(tmp, dest)? {
        // `tmp` now holds the old folder.
        let _ = fs::remove_dir_all(tmp);
    } else {
        let old = dest.with_file_name(format!(".{}.old-{}", file_name(dest), std::process::id()));
        let _ = fs::remove_dir_all(&old);
        fs::rename(dest, &old)?;
        fs::rename(tmp, dest)?;
        let _ = fs::remove_dir_all(&old);
    }
    sync_folder(parent(dest));
    Ok(())
}

/// Append one line to `path` (created when missing) with a single `write`
/// call: `line` gets a `\n` when it has none. Concurrent appenders never
/// interleave within a line, and a crash leaves at most a torn last line.
pub fn append_line(path: &Path, line: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line);
    if buf.last() != Some(&b'\n') {
        buf.push(b'\n');
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&buf)
}

/// The complete lines of a JSONL-style file, each with its 1-based line
/// number; blank lines are left out, and so is a last line without its
/// `\n` (what a crash mid-append leaves behind). A missing file has none.
pub fn read_lines(path: &Path) -> io::Result<Vec<(usize, String)>> {
    let mut tail = Tail::new(path);
    tail.read_new()
}

/// Follows a file that another process appends lines to (an events file):
/// each [`Tail::read_new`] returns the complete lines added since the last
/// call, so a reader can replay a file and then keep up with it. A line still
/// being written (no `\n` yet) is returned once it is complete.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("events.jsonl");
/// let mut tail = sam_home::atomic::Tail::new(&path);
/// assert!(tail.read_new()?.is_empty()); // no file yet
/// sam_home::atomic::append_line(&path, b"{\"n\":1}")?;
/// assert_eq!(tail.read_new()?, [(1, "{\"n\":1}".to_string())]);
/// sam_home::atomic::append_line(&path, b"{\"n\":2}")?;
/// assert_eq!(tail.read_new()?, [(2, "{\"n\":2}".to_string())]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    line: usize,
}

impl Tail {
    /// A reader at the start of `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), offset: 0, line: 0 }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The complete, non-blank lines appended since the last call, with
    /// their 1-based line numbers.
    pub fn read_new(&mut self) -> io::Result<Vec<(usize, String)>> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() < self.offset {
            // Replaced by a shorter file: start over.
            self.offset = 0;
            self.line = 0;
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        BufReader::new(f).read_to_end(&mut bytes)?;
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(end + 1);
            rest = tail;
            self.offset += line.len() as u64;
            self.line += 1;
            let text = String::from_utf8_lossy(&line[..end]);
            let text = text.trim_end_matches('\r');
            if !text.trim().is_empty() {
                out.push((self.line, text.to_string()));
            }
        }
        Ok(out)
    }
}

/// Lines of a reader, for callers holding a file already: the same rule as
/// [`read_lines`] (blank lines and a last line without `\n` left out).
pub fn complete_lines(reader: impl io::Read) -> io::Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    let mut r = BufReader::new(reader);
    let mut n = 0;
    loop {
        let mut buf = String::new();
        if r.read_line(&mut buf)? == 0 || !buf.ends_with('\n') {
            return Ok(out);
        }
        n += 1;
        let text = buf.trim_end_matches(['\n', '\r']);
        if !text.trim().is_empty() {
            out.push((n, text.to_string()));
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A temporary name beside `path`, unique to this process and call.
fn temp_sibling(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{}.tmp-{}-{n}", file_name(path), std::process::id()))
}

/// fsync a folder so a rename in it is durable; not every platform can, and
/// the rename has happened either way.
fn sync_folder(dir: &Path) {
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Not supported by this kernel or file system: fall back to two renames.
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.txt");
        write(&path, b"old").unwrap();
        let err = write_with(
            &path,
            |e| e,
            |w| {
                w.write_all(b"half of the new")?;
                Err::<(), _>(io::Error::other("disk on fire"))
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(leftovers(&dir.path().join("sub")).is_empty());
        write_via(&path, |e| e, |tmp| fs::write(tmp, b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_folder_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("adapter");
        write_dir(&dest, |e| e, |tmp| fs::write(tmp.join("a"), b"1")).unwrap();
        write_dir(
            &dest,
            |e| e,
            |tmp| {
                fs::write(tmp.join("b"), b"2")?;
                fs::write(tmp.join("c"), b"3")
            },
        )
        .unwrap();
        let mut names: Vec<_> = fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
        let failed = write_dir(
            &dest,
            |e| e,
            |tmp| {
                fs::write(tmp.join("d"), b"4")?;
                Err::<(), _>(io::Error::other("stopped"))
            },
        );
        assert!(failed.is_err());
        assert!(dest.join("b").exists() && !dest.join("d").exists());
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    }

    #[test]
    fn appended_lines_are_read_back_and_a_torn_last_line_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        append_line(&path, b"one").unwrap();
        append_line(&path, b"two\n").unwrap();
        let mut tail = Tail::new(&path);
        assert_eq!(tail.read_new().unwrap(), [(1, "one".into()), (2, "two".into())]);
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"\nthr").unwrap();
        assert_eq!(read_lines(&path).unwrap(), [(1, "one".into()), (2, "two".into())]);
        assert!(tail.read_new().unwrap().is_empty(), "a blank line and a torn one");
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"ee\n").unwrap();
        assert_eq!(tail.read_new().unwrap(), [(4, "three".into())]);
        assert_eq!(complete_lines(File::open(&path).unwrap()).unwrap().len(), 3);
    }
}
