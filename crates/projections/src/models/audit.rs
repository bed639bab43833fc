//! The `audit_log` read model: who did what, when, with what outcome.

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;

use super::{int_at, text_at};
use crate::db::{DbError, Tx, Val};
use crate::projection::Projection;

// ---- audit_log --------------------------------------------------------------

/// Who did what, when, with what outcome, from where, to what (the fields
/// PCI DSS 10.2.2 asks for), with the event's position and hash: an auditor
/// goes from a row to its proof with `cairn verify` and `cairn events`.
pub struct AuditLog;

/// The action an event records, as a verb phrase.
fn action(t: &str) -> &'static str {
    match t {
        "RunStarted" => "start run",
        "RunCompleted" => "complete run",
        "RunFailed" => "fail run",
        "RunCancelled" => "cancel run",
        "RunResumed" => "resume run",
        "StepStarted" => "start step",
        "StepCompleted" => "complete step",
        "StepFailed" => "fail step",
        "StepSkipped" => "skip step",
        "StepKept" => "keep step output",
        "RetryScheduled" => "schedule retry",
        "BranchTaken" => "take branch",
        "AiAttemptStarted" => "call model",
        "AiAttemptCompleted" => "receive model output",
        "AiOutputRejected" => "reject model output",
        "AiAttemptFailed" => "model call failed",
        "NotificationFailed" => "notification failed",
        "InputRequested" => "request input",
        "InputSubmitted" => "submit input",
        "ApprovalRequested" => "request approval",
        "ApprovalDecided" => "decide approval",
        "ApprovalExpired" => "expire approval",
        "NotificationSent" => "send notification",
        "TimerStarted" => "start timer",
        "TimerFired" => "fire timer",
        "ChildRunStarted" => "start child run",
        "ChildRunCompleted" => "finish child run",
        "CompensationStarted" => "start compensation",
        "WorkflowVersionPublished" => "publish workflow",
        "WorkflowArchived" => "archive workflow",
        "ScheduleDefined" => "define schedule",
        "SchedulePaused" => "pause schedule",
        "ScheduleResumed" => "resume schedule",
        "ScheduleDeleted" => "delete schedule",
        "ScheduleFired" => "fire schedule",
        "ScheduleSkipped" => "skip schedule firing",
        "TriggerDefined" => "define trigger",
        "TriggerDeleted" => "delete trigger",
        "ApiKeyCreated" => "create API key",
        "ApiKeyRevoked" => "revoke API key",
        "ParkedEventRetried" => "retry parked event",
        "ParkedEventSkipped" => "skip parked event",
        "RunsOnProbation" => "drive runs on probation",
        "ProbationPassed" => "pass probation",
        "RunQuarantined" => "quarantine run",
        "RunReleased" => "release run",
        "AccessDenied" => "refuse request",
        _ => "record event",
    }
}

fn failed(e: &Event) -> bool {
    match e {
        Event::StepFailed(_)
        | Event::RunFailed(_)
        | Event::AiOutputRejected(_)
        | Event::AiAttemptFailed(_)
        | Event::NotificationFailed(_)
        | Event::ApprovalExpired(_) => true,
        Event::ChildRunCompleted(c) => c.status != "completed",
        _ => false,
    }
}

impl Projection for AuditLog {
    fn name(&self) -> &'static str {
        "audit_log"
    }

    fn version(&self) -> u32 {
        // 2: refusals (`AccessDenied`) with the outcome `denied`, the
        // attempted action and the client's address.
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS audit_log{s} (position BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, event_type TEXT NOT NULL, outcome TEXT NOT NULL, origin TEXT NOT NULL, resource TEXT NOT NULL, run_id TEXT, details TEXT NOT NULL, hash TEXT NOT NULL)"
        )]
    }

    fn wants(&self, _t: &str) -> bool {
        true
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(async move {
            let mut meta = None;
            let rows = events.iter().map(|(r, e)| audit_row(r, e, &mut meta)).collect();
            crate::projection::write_rows(tx, &format!("audit_log{suffix}"), &AUDIT_COLUMNS, None, rows).await
        })
    }
}

const AUDIT_COLUMNS: [&str; 11] = [
    "position",
    "recorded_at",
    "actor",
    "action",
    "event_type",
    "outcome",
    "origin",
    "resource",
    "run_id",
    "details",
    "hash",
];

/// Actor and origin from an event's metadata.
fn actor_origin(metadata: &str) -> (String, String) {
    let meta: cairn_events::Metadata = serde_json::from_str(metadata).unwrap_or_default();
    let actor = meta.actor.clone().unwrap_or_else(|| "unknown".into());
    let origin = match (&meta.correlation_id, &meta.trace_id) {
        (Some(c), _) => format!("cairn {} correlation {c}", meta.engine_version),
        (None, Some(t)) => format!("cairn {} trace {t}", meta.engine_version),
        (None, None) => format!("cairn {}", meta.engine_version),
    };
    (actor, origin)
}

fn audit_row(r: &RecordedEvent, e: &Event, meta: &mut Option<(String, (String, String))>) -> Vec<Val> {
    // Most events of a batch share their metadata text: parse it once.
    if meta.as_ref().is_none_or(|(text, _)| text != &r.metadata) {
        *meta = Some((r.metadata.clone(), actor_origin(&r.metadata)));
    }
    let (actor, origin) = meta.as_ref().map(|(_, ao)| ao.clone()).unwrap_or_default();
    if let Event::AccessDenied(d) = e {
        // What was refused, on what, from where: not the stream it is kept in.
        let resource = match (&d.run_id, &d.step_id) {
            (Some(run), Some(step)) => format!("run-{run}/{step}"),
            (Some(run), None) => format!("run-{run}"),
            _ => "api".to_owned(),
        };
        return vec![
            Val::from(r.global_position),
            Val::Text(r.recorded_at.clone()),
            Val::from(d.actor.as_str()),
            Val::from(d.action.as_str()),
            Val::from(r.event_type.as_str()),
            Val::from("denied"),
            Val::from(format!("{} ({origin})", d.origin)),
            Val::from(resource),
            Val::opt_text(d.run_id.map(|u| u.to_string())),
            Val::from(r.payload.as_str()),
            Val::from(r.hash.as_str()),
        ];
    }
    let resource = match e.step_id() {
        Some(step) => format!("{}/{step}", r.stream_id),
        None => r.stream_id.clone(),
    };
    vec![
        Val::from(r.global_position),
        Val::Text(r.recorded_at.clone()),
        Val::from(actor),
        Val::from(action(&r.event_type)),
        Val::from(r.event_type.as_str()),
        Val::from(if failed(e) { "failure" } else { "success" }),
        Val::from(origin),
        Val::from(resource),
        Val::opt_text(r.stream_id.strip_prefix("run-")),
        Val::from(r.payload.as_str()),
        Val::from(r.hash.as_str()),
    ]
}

/// One audit entry as the readers see it (`cairn audit`, `GET /audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The event's log position.
    pub position: i64,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Who.
    pub actor: String,
    /// What, as a verb phrase.
    pub action: String,
    /// The event type.
    pub event_type: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// From where.
    pub origin: String,
    /// To what: a stream, or a stream and step.
    pub resource: String,
    /// The event's hash (its proof, with `cairn verify`).
    pub hash: String,
    /// For a refusal (`AccessDenied`): its payload, which says why.
    pub denied: Option<String>,
}

impl AuditEntry {
    /// The columns `from_vals` reads, in order.
    pub(crate) const SELECT: &str = "position, recorded_at, actor, action, event_type, outcome, origin, resource, hash, CASE WHEN event_type = 'AccessDenied' THEN details END";

    /// An entry read back (columns in `SELECT` order).
    pub(crate) fn from_vals(r: &[Val]) -> AuditEntry {
        AuditEntry {
            position: int_at(r, 0).unwrap_or_default(),
            recorded_at: text_at(r, 1).unwrap_or_default(),
            actor: text_at(r, 2).unwrap_or_default(),
            action: text_at(r, 3).unwrap_or_default(),
            event_type: text_at(r, 4).unwrap_or_default(),
            outcome: text_at(r, 5).unwrap_or_default(),
            origin: text_at(r, 6).unwrap_or_default(),
            resource: text_at(r, 7).unwrap_or_default(),
            hash: text_at(r, 8).unwrap_or_default(),
            denied: text_at(r, 9),
        }
    }
}
