//! One registry of the codes that name a refusal or a failure, shared by
//! the HTTP API (a problem's `code`, `urn:cairn:problem:<code>`, answered
//! with its status) and the CLI (`error [code]: …`, and its exit code).
//! The server answers only these (a debug build panics on another), the CLI
//! exits only through them (0 when it did what was asked), `cairn codes` lists them, and a test
//! (tests/cli_codes.rs) holds docs/errors.md to exactly this table.

use std::process::ExitCode;

/// A code, its HTTP status (none for what only the CLI reports) and the
/// CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Code {
    /// The code (`not-waiting`).
    pub name: &'static str,
    /// The HTTP status it is answered with.
    pub status: Option<u16>,
    /// The exit code of a command that ends with it.
    pub exit: u8,
}

/// Exit code: refused, or what was asked failed (the message says why;
/// nothing was recorded unless it says so).
pub const REFUSED: u8 = 1;
/// Exit code: the command could not work (bad arguments, a database or
/// port that cannot be used, an internal error).
pub const ENVIRONMENT: u8 = 2;
/// Exit code: the run waits for a person or a timer.
pub const WAITING: u8 = 3;

/// A code the HTTP API answers: a server-side failure (5xx) exits
/// [`ENVIRONMENT`] on the CLI, a refusal [`REFUSED`].
const fn http(name: &'static str, status: u16) -> Code {
    Code { name, status: Some(status), exit: if status >= 500 { ENVIRONMENT } else { REFUSED } }
}

/// A code only the CLI reports.
const fn cli(name: &'static str, exit: u8) -> Code {
    Code { name, status: None, exit }
}

/// Every code: the HTTP API's by status, then the CLI's own.
pub const CODES: &[Code] = &[
    http("malformed-json", 400),
    http("empty-body", 400),
    http("unreadable-body", 400),
    http("not-utf8", 400),
    http("bad-query", 400),
    http("bad-idempotency-key", 400),
    http("bad-last-event-id", 400),
    http("bad-task-token", 400),
    http("bad-delivery", 400),
    http("unauthenticated", 401),
    http("bad-key", 401),
    http("bad-signature", 401),
    http("forbidden", 403),
    http("not-allowed", 403),
    http("bad-token", 403),
    http("no-such-path", 404),
    http("unknown-run", 404),
    http("unknown-workflow", 404),
    http("unknown-version", 404),
    http("no-such-file", 404),
    http("unknown-task", 404),
    http("unknown-schedule", 404),
    http("unknown-trigger", 404),
    http("unknown-subscription", 404),
    http("unknown-delivery", 404),
    http("method-not-allowed", 405),
    http("workflow-exists", 409),
    http("workflow-archived", 409),
    http("concurrent-publish", 409),
    http("concurrent-change", 409),
    http("invalid-state", 409),
    http("not-waiting", 409),
    http("already-answered", 409),
    http("content-changed", 409),
    http("run-running", 409),
    http("run-completed", 409),
    http("run-cancelled", 409),
    http("run-compensated", 409),
    http("child-run", 409),
    http("conflict", 409),
    http("handlers-elsewhere", 409),
    http("task-expired", 409),
    http("task-cancelled", 409),
    http("task-finished", 409),
    http("schedule-deleted", 409),
    http("not-dead", 409),
    http("body-too-large", 413),
    http("unsupported-media-type", 415),
    http("invalid-body", 422),
    http("invalid-definition", 422),
    http("name-mismatch", 422),
    http("unknown-child-workflow", 422),
    http("invalid-inputs", 422),
    http("invalid-schedule", 422),
    http("invalid-trigger", 422),
    http("invalid-subscription", 422),
    http("limit-exceeded", 422),
    http("invalid-submission", 422),
    http("idempotency-key-reused", 422),
    http("definition", 422),
    http("unknown-step", 422),
    http("step-not-reached", 422),
    http("not-resumable", 422),
    http("not-idempotent", 422),
    http("kept-output-invalid", 422),
    http("definition-gone", 422),
    http("out-of-range", 422),
    http("too-many-failures", 429),
    http("internal", 500),
    http("timeout", 503),
    http("not-ready", 503),
    http("store-unavailable", 503),
    cli("run-failed", REFUSED),
    cli("waiting", WAITING),
    cli("usage", ENVIRONMENT),
    cli("diverged", REFUSED),
    cli("chain-broken", REFUSED),
    cli("not-confirmed", REFUSED),
    cli("not-quarantined", REFUSED),
    cli("unknown-role", REFUSED),
    cli("unknown-key", REFUSED),
    cli("unknown-projection", REFUSED),
    cli("projection-stopped", REFUSED),
    cli("still-parked", REFUSED),
    cli("not-parked", REFUSED),
    cli("insecure-listen", ENVIRONMENT),
];

/// The code named `name`.
pub fn find(name: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.name == name)
}

/// The exit code of a command that ends with `name` (a debug build panics
/// on a code that is not registered; a release build exits [`ENVIRONMENT`]).
pub fn exit(name: &str) -> ExitCode {
    let code = find(name);
    debug_assert!(code.is_some(), "`{name}` is not in the registry of codes (src/codes.rs)");
    ExitCode::from(code.map_or(ENVIRONMENT, |c| c.exit))
}

/// `cairn codes`: every code with its HTTP status and exit code.
pub fn list(json: bool) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(CODES)?)?;
    } else {
        writeln!(out, "{:<24} {:>4} {:>4}", "CODE", "HTTP", "EXIT")?;
        for c in CODES {
            let status = c.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
            writeln!(out, "{:<24} {:>4} {:>4}", c.name, status, c.exit)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
