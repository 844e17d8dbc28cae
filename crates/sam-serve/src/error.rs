//! Errors: [`ServeError`] for starting and running the server, [`ApiError`]
//! for one request (a JSON body with a machine-readable code, a message and
//! the field at fault).

use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The address could not be bound, or the server failed.
    #[error("{what}: {source}")]
    Net {
        /// What was being done (`cannot listen on 127.0.0.1:8765`).
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A non-loopback address without `allow_remote`.
    #[error(
        "refusing to listen on {0}: it is not a loopback address, so other machines could reach the server; \
         pass --allow-remote if that is what you want"
    )]
    NotLoopback(String),
    /// The address is not an IP address and port.
    #[error("{0:?} is not an IP address (use 127.0.0.1, ::1, or with --allow-remote 0.0.0.0)")]
    BadAddress(String),
    /// The token file is readable by others.
    #[error("{}: the token file is readable by other users (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    TokenMode {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file holds no usable token.
    #[error("{}: not a token (expected one line of at least 32 characters); delete it to have a new one generated", .0.display())]
    BadToken(PathBuf),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] sam_store::StoreError),
}

impl ServeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServeError::Io { path: path.into(), source }
    }
}

/// The body of every error response.
///
/// ```json
/// {"error": "invalid_field", "message": "prompt: must not be empty", "field": "prompt"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `invalid_json`, `missing_field`, `unknown_field`,
    /// `invalid_field`, `unsupported_media_type`, `payload_too_large`,
    /// `unauthorized`, `not_found`, `method_not_allowed`, `unavailable`,
    /// `internal`.
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
    /// The request field at fault (a dotted path into the JSON body, or a
    /// path or query parameter), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: ErrorBody { error: code.into(), message: message.into(), field: None } }
    }

    /// Name the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }

    /// 400: a field has a bad value.
    pub fn invalid_field(field: &str, what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{field}: {what}")).with_field(field)
    }

    /// 404 for a thing that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: the server cannot do it now (retry later).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {limit} bytes ([serve] max_body_bytes)"),
        )
    }

    /// 401 with the `WWW-Authenticate` challenge.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut res = (self.status, axum::Json(self.body)).into_response();
        if unauthorized {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sam\""));
        }
        res
    }
}

impl From<sam_store::StoreError> for ApiError {
    fn from(e: sam_store::StoreError) -> Self {
        match e {
            sam_store::StoreError::Busy => ApiError::unavailable(format!("{e}; retry in a moment")),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<sam_runs::RunError> for ApiError {
    fn from(e: sam_runs::RunError) -> Self {
        match e {
            sam_runs::RunError::NotARun(_) => ApiError::not_found(e.to_string()),
            e => ApiError::internal(e.to_string()),
        }
    }
}
