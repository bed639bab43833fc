//! Trace context for the events of a run: one OpenTelemetry trace per run
//! (its id is the run id's 32 hex digits), a span for the run, one per step
//! attempt and one per AI attempt, with span ids derived from what they
//! are (so every process, and a replay, names them alike). Each event's
//! metadata carries the trace id and the id of the span it belongs to;
//! `cairn serve` exports the spans over OTLP.

use cairn_events::{Event, Metadata};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The trace id of a run: its id as 32 hex digits.
pub fn trace_id(run: Uuid) -> String {
    run.simple().to_string()
}

fn span(run: Uuid, what: &str) -> String {
    let mut h = Sha256::new();
    h.update(run.as_bytes());
    h.update(what.as_bytes());
    let d = h.finalize();
    hex::encode(&d[..8])
}

/// The span of the whole run.
pub fn run_span(run: Uuid) -> String {
    span(run, "run")
}

/// The span of one step attempt.
pub fn step_span(run: Uuid, step: &str, attempt: u32) -> String {
    span(run, &format!("step\0{step}\0{attempt}"))
}

/// The span of one AI attempt of a step.
pub fn ai_span(run: Uuid, step: &str, attempt: u32) -> String {
    span(run, &format!("ai\0{step}\0{attempt}"))
}

/// The span an event of `run` belongs to.
pub fn span_of(run: Uuid, e: &Event) -> String {
    match e {
        Event::StepStarted(s) => step_span(run, &s.step_id, s.attempt),
        Event::StepCompleted(s) => step_span(run, &s.step_id, s.attempt),
        Event::StepFailed(s) => step_span(run, &s.step_id, s.attempt),
        Event::AiAttemptStarted(a) => ai_span(run, &a.step_id, a.attempt),
        Event::AiAttemptCompleted(a) => ai_span(run, &a.step_id, a.attempt),
        Event::AiAttemptFailed(a) => ai_span(run, &a.step_id, a.attempt),
        _ => run_span(run),
    }
}

/// Metadata for an event of `run` caused by `actor`, with its trace context.
pub fn metadata(actor: &str, run: Uuid, e: &Event) -> Metadata {
    let mut m = Metadata::by(actor);
    m.trace_id = Some(trace_id(run));
    m.span_id = Some(span_of(run, e));
    m
}
