//! What the engine counts, through the `metrics` facade: recorded at the
//! points where the engine's appends are committed (a run started or ended,
//! a step attempt's outcome, a retry, an AI attempt) and where a worker
//! wakes a run or takes one over. Nothing is counted before the log has it,
//! so a refused append counts nothing.
//!
//! With no recorder installed (`cairn run`, an embedding program that does
//! not install one) every call here costs a check of one atomic. `cairn
//! serve` and `cairn worker --metrics-listen` install the Prometheus one
//! and render it at `/metrics`; see docs/operations.md "Metrics".
//!
//! Labels are bounded: a workflow's name, a step's id as the definition
//! names it (`m[2].price` counts as `price`), a status, an error kind, a
//! currency. Run ids never label anything.

use cairn_core::decider::bare;
use cairn_events::Event;
use chrono::{DateTime, Utc};

/// Runs started, by workflow.
pub const RUNS_STARTED: &str = "cairn_runs_started_total";
/// Runs ended, by workflow and status.
pub const RUNS_ENDED: &str = "cairn_runs_ended_total";
/// Seconds from a run's start to its end, by workflow and status.
pub const RUN_DURATION: &str = "cairn_run_duration_seconds";
/// Seconds a completed step attempt took, by workflow and step.
pub const STEP_DURATION: &str = "cairn_step_duration_seconds";
/// Step attempts that failed, by workflow, step and error kind.
pub const STEP_FAILURES: &str = "cairn_step_failures_total";
/// Retries scheduled, by workflow and step.
pub const RETRIES: &str = "cairn_retries_total";
/// AI attempts by workflow and outcome (`completed`, `failed`).
pub const AI_ATTEMPTS: &str = "cairn_ai_attempts_total";
/// AI tokens by workflow and direction (`input`, `output`).
pub const AI_TOKENS: &str = "cairn_ai_tokens_total";
/// AI cost in millionths of the currency, by workflow and currency.
pub const AI_COST: &str = "cairn_ai_cost_micros_total";
/// Seconds between when a run was due (a timer, a retry's backoff, an
/// answer) and when this worker woke it.
pub const WAKEUP_LATENESS: &str = "cairn_wakeup_lateness_seconds";
/// Runs this worker took over from a worker that was gone.
pub const LEASE_TAKEOVERS: &str = "cairn_lease_takeovers_total";

/// Firings of a schedule, by schedule and outcome (`fired`, or the
/// reason it was skipped).
pub const SCHEDULE_FIRINGS: &str = "cairn_schedule_firings_total";

/// Delivery attempts to subscriptions, by subscription and outcome.
pub const DELIVERIES: &str = "cairn_deliveries_total";

/// Describes every metric above (their `# HELP` lines); call once after
/// installing a recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(RUNS_STARTED, "Runs started, by workflow.");
    describe_counter!(RUNS_ENDED, "Runs ended, by workflow and status (completed, failed, cancelled).");
    describe_histogram!(RUN_DURATION, Unit::Seconds, "Time from a run's start to its end, by workflow and status.");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Time a completed step attempt took, by workflow and step.");
    describe_counter!(STEP_FAILURES, "Step attempts that failed, by workflow, step and error kind.");
    describe_counter!(RETRIES, "Retries scheduled, by workflow and step.");
    describe_counter!(AI_ATTEMPTS, "AI attempts, by workflow and outcome (completed, failed).");
    describe_counter!(AI_TOKENS, "AI tokens, by workflow and direction (input, output).");
    describe_counter!(AI_COST, "AI cost in millionths of the currency, by workflow and currency.");
    describe_histogram!(
        WAKEUP_LATENESS,
        Unit::Seconds,
        "Time between when a run was due (a timer, a backoff, an answer) and when a worker woke it."
    );
    describe_counter!(LEASE_TAKEOVERS, "Runs taken over from a worker that was gone.");
    describe_counter!(
        DELIVERIES,
        "Delivery attempts to subscriptions, by subscription and outcome (delivered, failed, dead)."
    );
    describe_counter!(
        SCHEDULE_FIRINGS,
        "Schedule firings, by schedule and outcome (fired, or why skipped: overlap, buffered, missed, refused)."
    );
}

/// Counts what `events`, just recorded for a run of `workflow` that
/// started at `started_at`, say happened.
pub(crate) fn recorded(workflow: &str, started_at: Option<DateTime<Utc>>, events: &[Event], now: DateTime<Utc>) {
    for e in events {
        let ended = match e {
            Event::RunStarted(_) => {
                metrics::counter!(RUNS_STARTED, "workflow" => workflow.to_owned()).increment(1);
                None
            }
            Event::RunCompleted(_) => Some("completed"),
            Event::RunFailed(_) => Some("failed"),
            Event::RunCancelled(_) => Some("cancelled"),
            Event::StepCompleted(c) => {
                metrics::histogram!(STEP_DURATION, "workflow" => workflow.to_owned(), "step" => bare(&c.step_id).to_owned())
                    .record(c.duration_ms as f64 / 1000.0);
                None
            }
            Event::StepFailed(f) => {
                metrics::counter!(
                    STEP_FAILURES,
                    "workflow" => workflow.to_owned(),
                    "step" => bare(&f.step_id).to_owned(),
                    "error_kind" => f.error_kind.clone()
                )
                .increment(1);
                None
            }
            Event::RetryScheduled(r) => {
                metrics::counter!(RETRIES, "workflow" => workflow.to_owned(), "step" => bare(&r.step_id).to_owned())
                    .increment(1);
                None
            }
            Event::AiAttemptCompleted(a) => {
                metrics::counter!(AI_ATTEMPTS, "workflow" => workflow.to_owned(), "outcome" => "completed")
                    .increment(1);
                let tokens = |direction: &'static str, n: u64| {
                    metrics::counter!(AI_TOKENS, "workflow" => workflow.to_owned(), "direction" => direction)
                        .increment(n);
                };
                tokens("input", a.usage.input_tokens);
                tokens("output", a.usage.output_tokens);
                if let Some(c) = &a.cost {
                    metrics::counter!(AI_COST, "workflow" => workflow.to_owned(), "currency" => c.currency.clone())
                        .increment(c.micros);
                }
                None
            }
            Event::AiAttemptFailed(_) => {
                metrics::counter!(AI_ATTEMPTS, "workflow" => workflow.to_owned(), "outcome" => "failed").increment(1);
                None
            }
            _ => None,
        };
        if let Some(status) = ended {
            metrics::counter!(RUNS_ENDED, "workflow" => workflow.to_owned(), "status" => status).increment(1);
            if let Some(at) = started_at {
                let secs = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::histogram!(RUN_DURATION, "workflow" => workflow.to_owned(), "status" => status).record(secs);
            }
        }
    }
}

/// A run due at `due` woken at `now`.
pub(crate) fn woke(due: DateTime<Utc>, now: DateTime<Utc>) {
    let secs = (now - due).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(WAKEUP_LATENESS).record(secs);
}

/// `n` runs taken over.
pub(crate) fn took_over(n: usize) {
    metrics::counter!(LEASE_TAKEOVERS).increment(n as u64);
}

/// What a schedule's tick recorded.
pub(crate) fn schedule_recorded(name: &str, events: &[Event]) {
    for e in events {
        let outcome = match e {
            Event::ScheduleFired(_) => "fired".to_owned(),
            Event::ScheduleSkipped(k) => k.reason.clone(),
            _ => continue,
        };
        metrics::counter!(SCHEDULE_FIRINGS, "schedule" => name.to_owned(), "outcome" => outcome).increment(1);
    }
}

/// A delivery attempt recorded.
pub(crate) fn delivered(subscription: &str, outcome: &str) {
    metrics::counter!(DELIVERIES, "subscription" => subscription.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
}
