//! Errors as RFC 9457 problem details (`application/problem+json`): a
//! stable `type` per kind of error, the HTTP status, what was wrong
//! (`detail`) and, for bad input, every problem by field.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

/// A problem detail. `type` is `urn:cairn:problem:<code>`; the codes are
/// listed in docs/api.md.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Problem {
    /// `urn:cairn:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong with this request and how to fix it.
    pub detail: String,
    /// The stable code (the last part of `type`).
    pub code: String,
    /// The request's id (the `x-request-id` response header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Every problem with the input, by field (or by line and column of a
    /// workflow definition).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// For a conflict: the event that got there first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<Winner>,
}

/// One problem with one part of the input.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FieldProblem {
    /// The field (a name, or a JSON pointer into the body).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// A stable code for the problem, when there is one (e.g. a
    /// workflow diagnostic's code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// 1-based line in a workflow definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 1-based column in a workflow definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl FieldProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldProblem { field: field.into(), message: message.into(), code: None, line: None, column: None, help: None }
    }
}

/// The event that won a race.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Winner {
    /// Its type.
    pub event_type: String,
    /// Who recorded it.
    pub by: String,
    /// Its version in its stream.
    pub stream_version: u64,
    /// Its global position.
    pub global_position: u64,
    /// Its id.
    pub event_id: String,
}

/// An error a handler returns.
#[derive(Debug, Clone)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    /// An error of `status` with a code and a detail.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        debug_assert!(
            crate::codes::find(code).is_some_and(|c| c.status == Some(status.as_u16())),
            "problem code `{code}` with status {status} is not in the registry (src/codes.rs, docs/errors.md)"
        );
        ApiError(Box::new(Problem {
            kind: format!("urn:cairn:problem:{code}"),
            title: title(status).to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            request_id: None,
            errors: Vec::new(),
            winner: None,
        }))
    }

    /// The error `code` names, with the status the registry gives it.
    pub fn coded(code: &str, detail: impl Into<String>) -> Self {
        let status = crate::codes::find(code).and_then(|c| c.status).unwrap_or(500);
        Self::new(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), code, detail)
    }

    /// 400: the request could not be read.
    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404.
    pub fn not_found(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 409.
    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 422: well-formed but not acceptable, with every problem.
    pub fn unprocessable(code: &str, detail: impl Into<String>, errors: Vec<FieldProblem>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
        e.0.errors = errors;
        e
    }

    /// 500: logged with its cause; the client sees the request id.
    /// The cause is logged (with the request's id), never sent: it may name
    /// files, databases or hosts the caller has no business knowing.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request; the cause is in its log under this request_id".to_owned(),
        )
    }

    /// The same error with per-field problems.
    pub fn with_errors(mut self, errors: Vec<FieldProblem>) -> Self {
        self.0.errors = errors;
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<cairn_events::StoreError> for ApiError {
    fn from(e: cairn_events::StoreError) -> Self {
        match &e {
            cairn_events::StoreError::LimitExceeded { source, .. } => limit(source),
            cairn_events::StoreError::Database { .. } | cairn_events::StoreError::Unavailable { .. } => {
                store_unavailable(&e)
            }
            _ => ApiError::internal(e),
        }
    }
}

/// 503 `store-unavailable`: the database did not take a write or a read (a
/// full disk, a lost connection). The cause is logged, never sent: it names
/// databases and files.
fn store_unavailable(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "the event store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "the event store failed (the cause is in the server's log under this request_id); \
         what was recorded before is intact; retry later, a start with the same Idempotency-Key"
            .to_owned(),
    )
}

/// 422 `limit-exceeded`, naming the limit and where.
fn limit(l: &cairn_events::limits::LimitError) -> ApiError {
    ApiError::unprocessable("limit-exceeded", l.to_string(), vec![FieldProblem::new(l.path.clone(), l.to_string())])
}

impl From<cairn_projections::db::DbError> for ApiError {
    fn from(e: cairn_projections::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

impl From<cairn_projections::ProjectionError> for ApiError {
    fn from(e: cairn_projections::ProjectionError) -> Self {
        ApiError::internal(e)
    }
}

impl From<cairn_events::DecodeError> for ApiError {
    fn from(e: cairn_events::DecodeError) -> Self {
        ApiError::internal(e)
    }
}

impl From<cairn_runtime::RunError> for ApiError {
    /// The error's own code (`RunError::code`), with what only HTTP adds:
    /// the fields of a refused input or limit, and a logged cause for a
    /// failure of the server's own.
    fn from(e: cairn_runtime::RunError) -> Self {
        use cairn_runtime::RunError as R;
        match &e {
            R::InvalidInputs { errors, .. } => ApiError::coded(e.code(), e.to_string()).with_errors(
                errors.iter().map(|v| FieldProblem::new(format!("/inputs{}", v.path), v.message.clone())).collect(),
            ),
            R::Limit(l) => limit(l),
            R::Store(cairn_events::StoreError::LimitExceeded { source, .. }) => limit(source),
            _ => match e.code() {
                "store-unavailable" => store_unavailable(&e),
                "internal" => ApiError::internal(e),
                code => ApiError::coded(code, e.to_string()),
            },
        }
    }
}

/// The standard reason phrase, as the problem's title.
pub fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut r = (status, body).into_response();
        r.extensions_mut().insert(Code(self.0.code.clone()));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"cairn\""));
        }
        r
    }
}

/// A problem response's code, for the request's frame.
#[derive(Debug, Clone)]
pub struct Code(pub String);

/// What handlers return.
pub type ApiResult<T> = Result<T, ApiError>;
