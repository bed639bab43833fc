//! Extractors whose rejections are problem details: a JSON body (400 for
//! malformed JSON, 422 for the wrong shape, 413 over the limit, 415 for
//! another media type), a query string (400) and the authenticated caller.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::problem::{ApiError, FieldProblem};
use crate::keys::Role;

/// Reads the body within the limit.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "the body is larger than this server takes; send less, or start the server with a larger --max-body-bytes",
            )
        } else {
            ApiError::bad_request("unreadable-body", format!("the body could not be read: {e}"))
        }
    })
}

/// The media type of a request, lower-cased, without parameters.
pub fn media_type(req: &Request) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Refuses a body that says it is not JSON (no media type is taken as JSON).
fn json_media(media: Option<String>) -> Result<(), ApiError> {
    match media {
        Some(m) if m != "application/json" && !m.ends_with("+json") => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("the body is `{m}`; send `application/json`"),
        )),
        _ => Ok(()),
    }
}

/// Parses JSON, telling malformed JSON (400) from the wrong shape (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                "malformed-json",
                format!("the body is not valid JSON: {e} (line {}, column {})", e.line(), e.column()),
            ),
            Category::Data => {
                let msg = e.to_string();
                let field = field_of(&msg);
                ApiError::unprocessable(
                    "invalid-body",
                    format!("the body does not have the expected shape: {msg}"),
                    vec![FieldProblem::new(field, msg)],
                )
            }
        }
    })
}

/// The field a serde message names (`missing field `x``, `unknown field `x``).
fn field_of(msg: &str) -> String {
    msg.split('`').nth(1).map_or_else(|| "/".to_owned(), |f| format!("/{f}"))
}

/// A JSON body.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        json_media(media_type(&req))?;
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request("empty-body", "this operation needs a JSON body"));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// A query string.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        axum::extract::Query::<T>::try_from_uri(&parts.uri).map(|axum::extract::Query(t)| Q(t)).map_err(|e| {
            let msg = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            ApiError::bad_request("bad-query", format!("the query string `{q}` is not valid: {msg}"))
                .with_errors(vec![FieldProblem::new(field_of(&msg).trim_start_matches('/').to_owned(), msg)])
        })
    }
}

/// Who is calling: from the key, or the server's `--as` when auth is off.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The identity it acts as.
    pub identity: String,
    /// Its role.
    pub role: Role,
    /// The key's id (`None` when auth is off).
    pub key_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "send an API key as `Authorization: Bearer …`")
        })
    }
}

/// A UUID path segment; anything else is an unknown id (404).
pub fn parse_id(s: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    s.parse().map_err(|_| ApiError::not_found(&format!("unknown-{what}"), format!("`{s}` is not a {what} id (a UUID)")))
}

/// An optional JSON body: none (or an empty one) is `T::default()`.
pub struct OptJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media = media_type(&req);
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptJson(T::default()));
        }
        json_media(media)?;
        parse_json(&bytes).map(OptJson)
    }
}

/// The largest position, version or cursor taken (2^53 − 1, exact in JSON).
pub const MAX_POSITION: u64 = 9_007_199_254_740_991;

/// The longest wait a request may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// Seconds to wait, in a query: 0 ..= [`MAX_WAIT_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitSecs(pub u64);

impl<'de> serde::Deserialize<'de> for WaitSecs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v > MAX_WAIT_SECS {
            return Err(serde::de::Error::custom(format!(
                "{v} seconds is longer than the {MAX_WAIT_SECS} a request may wait"
            )));
        }
        Ok(WaitSecs(v))
    }
}

impl schemars::JsonSchema for WaitSecs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WaitSeconds".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECS })
    }
}

/// A log position or stream version in a query: 0 ..= [`MAX_POSITION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos(pub u64);

impl<'de> serde::Deserialize<'de> for Pos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v > MAX_POSITION {
            return Err(serde::de::Error::custom(format!("{v} is larger than {MAX_POSITION}")));
        }
        Ok(Pos(v))
    }
}

impl schemars::JsonSchema for Pos {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Position".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 0, "maximum": MAX_POSITION })
    }
}
