//! The bearer token: generated once into a file only its owner can read,
//! required on every write and on every route that returns example text,
//! compared in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::Extension;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ServeError};

/// The server's bearer token.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("serve").join("token");
/// let token = sam_serve::Token::load_or_create(&path)?;
/// assert!(token.verify(token.secret()));
/// assert!(!token.verify("sam_wrong"));
/// // The same file gives the same token.
/// assert_eq!(sam_serve::Token::load_or_create(&path)?.secret(), token.secret());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Token {
    secret: String,
    digest: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The prefix of generated tokens (so that secret scanners recognise them).
const PREFIX: &str = "sam_";

impl Token {
    /// Read the token at `path`, or generate one there (32 random bytes,
    /// hex, file mode 0600, folder created 0700) when there is none.
    /// Refuses a token file that other users can read.
    pub fn load_or_create(path: &Path) -> Result<Token, ServeError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_mode(path)?;
                let secret = text.trim().to_string();
                if secret.len() < 32 || secret.contains(char::is_whitespace) {
                    return Err(ServeError::BadToken(path.to_path_buf()));
                }
                Ok(Token::from_secret(secret, path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Token::rotate(path),
            Err(e) => Err(ServeError::io(path, e)),
        }
    }

    /// Write a new token to `path` (replacing any old one, atomically) and
    /// return it. The write is sam-home's atomic write
    /// ([`sam_home::atomic::write_via`]: a temporary file of its own beside
    /// `path`, fsynced, renamed, the folder fsynced), the temporary file
    /// created with mode 0600 so the secret is never readable by others,
    /// not even for a moment. Rotations at once each succeed; the file
    /// holds the last one whole.
    pub fn rotate(path: &Path) -> Result<Token, ServeError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("{PREFIX}{}", hex(&bytes));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        sam_home::atomic::write_via(
            path,
            |e| ServeError::io(path, e),
            |tmp| {
                let mut f = private_file(tmp)?;
                f.write_all(format!("{secret}\n").as_bytes()).map_err(|e| ServeError::io(tmp, e))
            },
        )?;
        Ok(Token::from_secret(secret, path))
    }

    fn from_secret(secret: String, path: &Path) -> Token {
        let digest = *blake3::hash(secret.as_bytes()).as_bytes();
        Token { secret, digest, path: path.to_path_buf() }
    }

    /// The secret, for the client's `Authorization: Bearer` header.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The file it is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `candidate` is the token. Both sides are hashed first and
    /// the digests compared in constant time, so neither the content nor the
    /// length of the secret leaks through timing.
    pub fn verify(&self, candidate: &str) -> bool {
        let d = blake3::hash(candidate.as_bytes());
        bool::from(self.digest.ct_eq(d.as_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(unix)]
fn private_file(path: &Path) -> Result<std::fs::File, ServeError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| ServeError::io(path, e))
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> Result<std::fs::File, ServeError> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| ServeError::io(path, e))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| ServeError::io(dir, e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), ServeError> {
    std::fs::create_dir_all(dir).map_err(|e| ServeError::io(dir, e))
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| ServeError::io(path, e))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 { Err(ServeError::TokenMode { path: path.to_path_buf(), mode }) } else { Ok(()) }
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), ServeError> {
    Ok(())
}

/// Middleware: 401 unless the request carries `Authorization: Bearer
/// <token>`.
pub(crate) async fn require_token(Extension(token): Extension<Token>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match given {
        Some(t) if token.verify(t.trim()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("the bearer token is wrong (it is in the server's token file)")
            .with_field("Authorization")
            .into_response(),
        None => ApiError::unauthorized(
            "this route needs `Authorization: Bearer <token>`; the token is in the server's token file \
             (`sam serve token` prints it)",
        )
        .with_field("Authorization")
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_private_and_an_exposed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve/token");
        let t = Token::load_or_create(&path).unwrap();
        assert!(t.secret().starts_with(PREFIX) && t.secret().len() == PREFIX.len() + 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Token::load_or_create(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        let t2 = Token::rotate(&path).unwrap();
        assert_ne!(t2.secret(), t.secret());
        assert!(t2.verify(t2.secret()) && !t2.verify(t.secret()) && !t2.verify(""));
        std::fs::write(&path, "short\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(Token::load_or_create(&path), Err(ServeError::BadToken(_))));
    }

    #[test]
    fn rotations_at_once_all_succeed_and_leave_one_private_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve/token");
        let secrets: Vec<String> = std::thread::scope(|s| {
            let rotating: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..25).map(|_| Token::rotate(&path).map(|t| t.secret().to_string())).collect::<Vec<_>>()
                    })
                })
                .collect();
            rotating.into_iter().flat_map(|t| t.join().unwrap()).map(|r| r.unwrap()).collect()
        });
        assert_eq!(secrets.len(), 200);
        let kept = Token::load_or_create(&path).unwrap();
        assert!(secrets.iter().any(|s| s == kept.secret()), "the file holds one of the rotated tokens, whole");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["token"], "no temporary file is left beside the token");
    }
}
