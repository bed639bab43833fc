//! One registry of the codes that name a refusal or failure over HTTP (the
//! `code` of a problem, `urn:cairn:problem:<code>`), each with its status:
//! the server answers only these (a debug build panics on another), and a
//! test (tests/http_api.rs) holds docs/api.md to exactly this table.

/// A problem code and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The code (`not-waiting`).
    pub name: &'static str,
    /// The HTTP status it is answered with.
    pub status: u16,
}

/// Every code, by status.
pub const CODES: &[Code] = &[
    Code { name: "malformed-json", status: 400 },
    Code { name: "empty-body", status: 400 },
    Code { name: "unreadable-body", status: 400 },
    Code { name: "not-utf8", status: 400 },
    Code { name: "bad-query", status: 400 },
    Code { name: "bad-idempotency-key", status: 400 },
    Code { name: "bad-last-event-id", status: 400 },
    Code { name: "unauthenticated", status: 401 },
    Code { name: "bad-key", status: 401 },
    Code { name: "forbidden", status: 403 },
    Code { name: "not-allowed", status: 403 },
    Code { name: "bad-token", status: 403 },
    Code { name: "no-such-path", status: 404 },
    Code { name: "unknown-run", status: 404 },
    Code { name: "unknown-workflow", status: 404 },
    Code { name: "unknown-version", status: 404 },
    Code { name: "no-such-file", status: 404 },
    Code { name: "method-not-allowed", status: 405 },
    Code { name: "workflow-exists", status: 409 },
    Code { name: "workflow-archived", status: 409 },
    Code { name: "concurrent-publish", status: 409 },
    Code { name: "concurrent-change", status: 409 },
    Code { name: "invalid-state", status: 409 },
    Code { name: "not-waiting", status: 409 },
    Code { name: "already-answered", status: 409 },
    Code { name: "content-changed", status: 409 },
    Code { name: "run-running", status: 409 },
    Code { name: "run-completed", status: 409 },
    Code { name: "run-cancelled", status: 409 },
    Code { name: "run-compensated", status: 409 },
    Code { name: "child-run", status: 409 },
    Code { name: "conflict", status: 409 },
    Code { name: "body-too-large", status: 413 },
    Code { name: "unsupported-media-type", status: 415 },
    Code { name: "invalid-body", status: 422 },
    Code { name: "invalid-definition", status: 422 },
    Code { name: "name-mismatch", status: 422 },
    Code { name: "unknown-child-workflow", status: 422 },
    Code { name: "invalid-inputs", status: 422 },
    Code { name: "limit-exceeded", status: 422 },
    Code { name: "invalid-submission", status: 422 },
    Code { name: "idempotency-key-reused", status: 422 },
    Code { name: "definition", status: 422 },
    Code { name: "unknown-step", status: 422 },
    Code { name: "step-not-reached", status: 422 },
    Code { name: "not-resumable", status: 422 },
    Code { name: "not-idempotent", status: 422 },
    Code { name: "kept-output-invalid", status: 422 },
    Code { name: "definition-gone", status: 422 },
    Code { name: "out-of-range", status: 422 },
    Code { name: "too-many-failures", status: 429 },
    Code { name: "internal", status: 500 },
    Code { name: "timeout", status: 503 },
    Code { name: "not-ready", status: 503 },
    Code { name: "store-unavailable", status: 503 },
];

/// The code named `name`.
pub fn find(name: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.name == name)
}
