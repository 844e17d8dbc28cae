//! [`ApiJson`]: a JSON body whose errors name the field at fault.
//!
//! axum's own `Json` answers a bad body with plain text; the assistant on
//! the other side wants to know which field to fix, in JSON. This extractor
//! reads the body (within the server's size limit, else 413), requires a
//! JSON content type (else 415) and deserialises through
//! `serde_path_to_error`, so a wrong type names its path (`messages.0.role`)
//! and a missing or unknown field names itself.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body read as JSON into `T`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if json_type != Some(true) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON: send `Content-Type: application/json`",
            )
            .with_field("Content-Type"));
        }
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit.unwrap_or(0))
            } else {
                ApiError::new(e.status(), "invalid_body", e.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// The configured body limit, put into each request's extensions so that
/// errors can quote it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub usize);

/// Deserialise `bytes` (a JSON object) as `T`, with errors that name the
/// field.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde reads a struct from an array too; a body is always an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}

fn syntax(e: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!("the body is not valid JSON: {e} (at line {}, column {})", e.line(), e.column()),
    )
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner();
    if !inner.is_data() {
        return syntax(inner);
    }
    let msg = inner.to_string();
    // serde_json appends " at line L column C"; the field path says more.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let join = |name: &str| if path == "." || path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    if let Some(name) = quoted(&msg, "missing field `") {
        let field = join(name);
        return ApiError::new(StatusCode::BAD_REQUEST, "missing_field", format!("{field}: this field is required"))
            .with_field(field);
    }
    if let Some(name) = quoted(&msg, "unknown field `") {
        // The path already ends at the unknown field.
        let field = if path == name || path.ends_with(&format!(".{name}")) { path.clone() } else { join(name) };
        let expected = msg.split_once(", expected ").map(|(_, e)| format!(" (expected {e})")).unwrap_or_default();
        return ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", format!("{field}: no such field{expected}"))
            .with_field(field);
    }
    if path == "." || path.is_empty() {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body: {msg}"));
    }
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{path}: {msg}")).with_field(path)
}

/// The text between `prefix` and the next backtick.
fn quoted<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &msg[msg.find(prefix)? + prefix.len()..];
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        prompt: String,
        #[serde(default)]
        tags: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    fn check(body: &str, code: &str, field: Option<&str>) {
        let err = parse::<Req>(body.as_bytes()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!((err.body.error.as_str(), err.body.field.as_deref()), (code, field), "{body}: {:?}", err.body);
        if let Some(f) = field {
            assert!(err.body.message.starts_with(f), "{:?}", err.body);
        }
    }

    #[test]
    fn errors_name_the_field() {
        check(r#"{"prompt": 3}"#, "invalid_field", Some("prompt"));
        check(r#"{}"#, "missing_field", Some("prompt"));
        check(r#"{"prompt": "a", "promtp": "b"}"#, "unknown_field", Some("promtp"));
        check(r#"{"prompt": "a", "tags": [{"name": 1}]}"#, "invalid_field", Some("tags[0].name"));
        check(r#"{"prompt": "a", "tags": [{}]}"#, "missing_field", Some("tags[0].name"));
        check(r#"{"prompt": "a""#, "invalid_json", None);
        check(r#"{"prompt": "a"} x"#, "invalid_json", None);
        check(r#"[1]"#, "invalid_json", None);
        assert_eq!(parse::<Req>(br#"{"prompt": "a"}"#).unwrap().prompt, "a");
    }
}
