//! Single instance by an OS file lock, not a bare PID file.
//!
//! [`PidLock::acquire`] takes an exclusive advisory lock (`flock` on Unix,
//! `LockFileEx` on Windows, through std's [`File::try_lock`]) on a file and
//! writes this process's id into it. The lock lives as long as the
//! [`PidLock`] value; the OS drops it when the process ends in any way, a
//! `kill -9` included, so a crashed daemon leaves a file with a stale pid in
//! it and nothing that blocks the next start. The pid in the file is only
//! there to name the holder in the error a second start gets.
//!
//! The daemon holds `scheduler/lock` for its whole life; each job holds its
//! own lock while it runs, so `sam schedule run JOB` in a terminal and the
//! daemon never run the same job at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("{} is held by {} (another sam scheduler or job is running)", path.display(), holder_text(*pid))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's process id, as it wrote it into the file.
        pid: Option<u32>,
    },
    /// The lock file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "a process whose pid is not known yet".to_string(), |p| format!("pid {p}"))
}

/// An exclusive lock on a file that names its holder; released on drop or
/// when the process dies.
#[derive(Debug)]
pub struct PidLock {
    // Kept open: closing the file would release the lock.
    _file: File,
    path: PathBuf,
}

/// Width of the pid field: the pid is written padded, in place, so a reader
/// never sees an empty file while a new holder writes its pid.
const PID_WIDTH: usize = 10;

impl PidLock {
    /// Take the lock at `path` (creating the file and its folder) without
    /// waiting; [`LockError::Held`] names the holder when another process
    /// has it.
    pub fn acquire(path: impl Into<PathBuf>) -> Result<Self, LockError> {
        let path = path.into();
        let mut file = open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LockError::Held { pid: holder_pid(&mut file), path }),
            Err(TryLockError::Error(source)) => return Err(LockError::Io { path, source }),
        }
        let io = |source| LockError::Io { path: path.clone(), source };
        let text = format!("{:<PID_WIDTH$}\n", std::process::id());
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.set_len(text.len() as u64).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The pid of the process holding the lock at `path`, or `None` when
    /// nobody holds it (no file, or a file left by a process that ended).
    pub fn holder(path: &Path) -> Result<Option<u32>, LockError> {
        if !path.exists() {
            return Ok(None);
        }
        let mut file = open(path)?;
        match file.try_lock() {
            // Free: let go at once (dropping the file unlocks it).
            Ok(()) => Ok(None),
            // Held, but the holder may not have written its pid yet.
            Err(TryLockError::WouldBlock) => Ok(Some(holder_pid(&mut file).unwrap_or(0))),
            Err(TryLockError::Error(source)) => Err(LockError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    let io = |source| LockError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)
}

/// The pid a holder wrote, waiting briefly for it: a holder that has just
/// taken the lock writes its pid a moment later, and until then the file
/// is empty or still names a previous holder that died (`kill -9`).
fn holder_pid(file: &mut File) -> Option<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let pid = read_pid(file);
        if pid.is_some_and(alive) || std::time::Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// Whether process `pid` exists (not known on this platform: assumed so).
#[cfg(not(unix))]
fn alive(_pid: u32) -> bool {
    true
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p| *p != 0)
}

/// Ask process `pid` to stop the way a service manager would: SIGTERM.
/// The daemon then checkpoints a running training and exits 0.
#[cfg(unix)]
pub fn request_stop(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Ask process `pid` to stop (not available on this platform).
#[cfg(not(unix))]
pub fn request_stop(_pid: u32) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "stopping another process needs a Unix system"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_names_the_holder_and_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler").join("lock");
        assert_eq!(PidLock::holder(&path).unwrap(), None);
        let lock = PidLock::acquire(&path).unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        match PidLock::acquire(&path) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(PidLock::holder(&path).unwrap(), Some(std::process::id()));
        drop(lock);
        assert_eq!(PidLock::holder(&path).unwrap(), None);
        // The stale pid left in the file does not block.
        let _again = PidLock::acquire(&path).unwrap();
    }
}
