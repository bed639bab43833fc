//! The event catalog: every event Cairn writes, as typed payloads with a JSON
//! Schema each. Names and fields are persisted API: add, never rename; a
//! changed meaning is a new schema version with an upcaster (see `upcast`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::{Metadata, NewEvent, RecordedEvent};
use crate::upcast::{DecodeError, Upcasters};

/// Where a child run came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ParentRun {
    /// The parent run.
    pub run_id: Uuid,
    /// The parent's `workflow` step that started this run.
    pub step_id: String,
}

/// Where a forked run came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ForkOrigin {
    /// The source run (never changed by the fork).
    pub run_id: Uuid,
    /// The source stream version the fork was taken at.
    pub stream_version: u64,
    /// The step the fork re-runs from.
    pub step_id: String,
}

/// What a run's decisions take from the engine's configuration, resolved
/// when the run starts and recorded with it: the decider reads these, never
/// today's `cairn.yaml`, so a replay reads only the log and the definition,
/// and a run keeps the models, prices and prompts it started with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct RunSettings {
    /// The model each AI step (by step id) resolved to.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, ResolvedModel>,
    /// The prompt templates AI steps use, by `ID@VERSION`.
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, RecordedPrompt>,
    /// Email notifications, when the engine sends them.
    #[serde(default)]
    pub email: Option<EmailSettings>,
    /// The limits on what the run records, when configured lower than the
    /// defaults (`cairn.yaml` `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::Limits>,
}

/// A `model:` as it resolved when the run started.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ResolvedModel {
    /// The model name as written in the step.
    pub alias: String,
    /// Provider name from the providers config (absent when it did not resolve).
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's wire protocol: `openai`, `anthropic` or `scripted`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Model name at the provider.
    #[serde(default)]
    pub model: Option<String>,
    /// Default structured-output mode: `json_schema`, `json_object` or `none`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Its price, when the config gives one.
    #[serde(default)]
    pub price: Option<PriceRecord>,
    /// Why it did not resolve (the step then fails with `ai.config`).
    #[serde(default)]
    pub error: Option<String>,
}

/// A model's price as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PriceRecord {
    /// Per million input tokens.
    pub input_per_million: f64,
    /// Per million output tokens.
    pub output_per_million: f64,
    /// Currency code.
    pub currency: String,
    /// The price table's version.
    pub table: String,
}

/// A prompt template's messages as they were when the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedPrompt {
    /// SHA-256 of the template file, hex.
    pub sha256: String,
    /// `(role, template)` pairs, unrendered.
    pub messages: Vec<AiMessage>,
}

/// How notifications are sent, as far as deciding goes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct EmailSettings {
    /// Most send attempts per notification.
    pub max_attempts: u32,
    /// People's addresses, by identity.
    #[serde(default)]
    pub addresses: std::collections::BTreeMap<String, String>,
}

/// A run began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStarted {
    /// The run's id (its stream is `run-<id>`).
    pub run_id: Uuid,
    /// Workflow name.
    pub workflow: String,
    /// Definition version the run is pinned to.
    pub workflow_version: u32,
    /// SHA-256 of the definition source, hex.
    pub definition_hash: String,
    /// The run's inputs after defaults were applied.
    pub inputs: Value,
    /// Identity that started the run.
    pub started_by: String,
    /// The caller's idempotency key, if any.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Set when this run is a child of another run.
    #[serde(default)]
    pub parent: Option<ParentRun>,
    /// Set when this run was forked from another run.
    #[serde(default)]
    pub fork_of: Option<ForkOrigin>,
    /// What its decisions take from the configuration (absent for a
    /// workflow with no AI or people steps, and in runs recorded before
    /// settings were: those read the engine's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RunSettings>,
    /// When the run started, as the engine's clock read it (templates see
    /// it as `run.started_at`; absent in runs recorded before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Set when a schedule started this run: which, and for what time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleOrigin>,
    /// The W3C `traceparent` of the request that started it, when it sent
    /// one: the run's trace links to the caller's span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// The schedule firing that started a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleOrigin {
    /// The schedule's name (its stream is `schedule-<name>`).
    pub name: String,
    /// The time its expression named (the run may start later: jitter,
    /// catch-up, a buffered firing, a backfill).
    pub nominal_at: DateTime<Utc>,
}

/// A step attempt began; recorded before any effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepStarted {
    /// Step id.
    pub step_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The step's input after templates were rendered (secrets redacted).
    pub input: Value,
    /// The thread of control the step runs in: empty for the run's main
    /// sequence; `<parallel>.<branch>` for a parallel branch and
    /// `<map>[<index>]` for a map iteration (nested ones prefixed by their
    /// enclosing iteration, as step ids are).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The time the step read as `run.now`, recorded when it was first
    /// evaluated (only for a step that reads it): a replay decides at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// A step attempt succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepCompleted {
    /// Step id.
    pub step_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The step's output.
    pub output: Value,
    /// Wall time of the attempt in milliseconds.
    pub duration_ms: u64,
}

/// A step attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepFailed {
    /// Step id.
    pub step_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Stable error kind, e.g. `http.status`, `timeout`, `contract`.
    pub error_kind: String,
    /// Human-readable message.
    pub message: String,
    /// Whether the retry policy may try again.
    pub retryable: bool,
    /// The least wait before a retry that the failing service asked for
    /// (HTTP `Retry-After`), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// A `queue` step attempt was offered on its task queue: an external
/// worker polling the queue may claim it. Recorded with the attempt's
/// `StepStarted`; the write side's task index gets the offer in the same
/// transaction (and drops it with the attempt's outcome).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOffered {
    /// Step id.
    pub step_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The task queue.
    pub queue: String,
    /// How long a claimed task may go without a heartbeat before the attempt
    /// fails with `heartbeat-timeout` (milliseconds).
    pub heartbeat_timeout_ms: u64,
    /// When the attempt fails with `timeout` if no worker has finished it
    /// (the step's `timeout`, counted from the offer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A worker claimed an offered task: it now heartbeats and completes or
/// fails the attempt with the task token it was given. The task index
/// records the claim in the same transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskClaimed {
    /// Step id.
    pub step_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The worker as it named itself when polling.
    pub worker: String,
    /// The identity of the API key it polled with.
    pub by: String,
    /// SHA-256 of the task token (the token itself is never recorded).
    pub token_hash: String,
    /// The first heartbeat is due by then (the step's heartbeat timeout
    /// from the claim); the task index keeps the deadline heartbeats move.
    pub heartbeat_by: DateTime<Utc>,
}

/// A failed attempt will be retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetryScheduled {
    /// Step id.
    pub step_id: String,
    /// The attempt that will run next.
    pub next_attempt: u32,
    /// When it becomes due.
    pub due_at: DateTime<Utc>,
    /// The backoff that was applied, in milliseconds.
    pub backoff_ms: u64,
}

/// A branch or switch decided where to go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BranchTaken {
    /// The branch or switch step.
    pub step_id: String,
    /// The expression that was evaluated.
    pub expression: String,
    /// The value it had.
    pub value: Value,
    /// The step jumped to (or `end`).
    pub target: String,
}

/// A step does not run: either its `when` guard was false when control
/// reached it (`guard` holds the condition; control goes on to the step
/// after it, and its output is not set), or it was running (or waiting) in
/// a parallel branch or map iteration when its container failed fast, and a
/// late result of its attempt is not recorded. Steps a branch or switch does
/// not go to record nothing (the `BranchTaken` says where the run went).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepSkipped {
    /// Step id.
    pub step_id: String,
    /// Why: `when: <condition> is false`, or `cancelled: <container> failed
    /// fast (<branch or item> failed)`.
    pub reason: String,
    /// The thread of control it was skipped in (`""`: the top level), for a
    /// guard.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The `when` condition that was false; absent for a cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// The time the guard read as `run.now`, when it reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// One chat message sent to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Rendered text (secrets redacted).
    pub content: String,
}

/// Token counts reported by a provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// Money spent on one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cost {
    /// ISO 4217 currency code of the price table.
    pub currency: String,
    /// Amount in millionths of the currency unit.
    pub micros: u64,
    /// Which price table priced it (name and version).
    pub price_table: String,
}

/// An AI call is about to be made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiAttemptStarted {
    /// Step id.
    pub step_id: String,
    /// AI attempt number within the step, from 1.
    pub attempt: u32,
    /// Provider name from the providers config.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// The rendered messages, including fed-back errors.
    pub messages: Vec<AiMessage>,
    /// Request parameters (structured-output mode, estimate, temperature,
    /// price, …).
    #[serde(default, deserialize_with = "params_or_null")]
    pub params: AiParams,
}

/// The parameters of an AI call as recorded: what the runtime sends and
/// prices it by, decided (and so replayed) by the decider. Serialized with
/// its keys in the order the untyped map had (alphabetical), so the bytes
/// of events written before it was typed and after are alike; keys it does
/// not know are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiParams {
    /// The estimate the budget was checked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<AiEstimate>,
    /// The weaker structured-output mode this attempt falls back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_to: Option<String>,
    /// The cap on output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// The structured-output mode (`json_schema`, `json_object`, `tool`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The price the attempt is charged at, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<AiPrice>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The prompt template used (`{id, sha256}`), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Value>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, Value>,
}

/// The size and cost an AI call was estimated at before it was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiEstimate {
    /// Estimated cost in millionths of the currency (null without a price).
    #[serde(default)]
    pub cost_micros: Option<u64>,
    /// Estimated input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Estimated output tokens.
    #[serde(default)]
    pub output_tokens: u64,
}

/// A model's price per million tokens, as recorded with an AI call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiPrice {
    /// The currency (`USD`).
    #[serde(default = "usd")]
    pub currency: String,
    /// Per million input tokens.
    #[serde(default)]
    pub input_per_million: f64,
    /// Per million output tokens.
    #[serde(default)]
    pub output_per_million: f64,
    /// Which price table (name and version).
    #[serde(default)]
    pub table: String,
}

fn usd() -> String {
    "USD".to_owned()
}

/// `params` as recorded: an object, or `null` (read as no parameters).
fn params_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AiParams, D::Error> {
    Ok(Option::<AiParams>::deserialize(d)?.unwrap_or_default())
}

/// An AI call returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiAttemptCompleted {
    /// Step id.
    pub step_id: String,
    /// AI attempt number within the step, from 1.
    pub attempt: u32,
    /// The model's raw text.
    pub raw_output: String,
    /// Tokens used.
    pub usage: TokenUsage,
    /// What it cost, when a price is known.
    #[serde(default)]
    pub cost: Option<Cost>,
    /// Latency in milliseconds.
    pub latency_ms: u64,
    /// The provider's finish reason.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// An AI call ended without a reply to judge: the connection failed, it
/// timed out, the provider answered an error status, or the reply could not
/// be read. Retried with backoff, separately from output rejections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiAttemptFailed {
    /// Step id.
    pub step_id: String,
    /// AI attempt number within the step, from 1.
    pub attempt: u32,
    /// Stable kind: `ai.connect`, `ai.timeout`, `ai.rate_limited`,
    /// `ai.status`, `ai.mode_rejected`, `ai.response`, `ai.config`.
    pub error_kind: String,
    /// What happened, from the provider's answer where it gave one.
    pub message: String,
    /// Whether another attempt may help.
    pub retryable: bool,
    /// The HTTP status, when the provider answered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The least wait the provider asked for (`Retry-After`), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Latency in milliseconds.
    pub latency_ms: u64,
    /// Set when the provider rejected the structured-output mode: the mode
    /// the next attempt asks for instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_mode: Option<String>,
}

/// One JSON-Schema violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SchemaViolation {
    /// JSON Pointer to the offending value.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// An AI output failed the step's output contract; the errors are fed back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiOutputRejected {
    /// Step id.
    pub step_id: String,
    /// The rejected AI attempt.
    pub attempt: u32,
    /// Every violation found.
    pub errors: Vec<SchemaViolation>,
}

/// A form field shown to a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FormField {
    /// Field name (key in the submitted values).
    pub name: String,
    /// `text`, `textarea`, `number`, `integer`, `boolean`, `select`,
    /// `multiselect`, `date`, `email` or `url`.
    pub field_type: String,
    /// Label shown to the person.
    #[serde(default)]
    pub label: Option<String>,
    /// Whether a value is required.
    #[serde(default)]
    pub required: bool,
    /// Help text.
    #[serde(default)]
    pub help: Option<String>,
    /// The remaining constraints (default, min, max, lengths, pattern, options).
    #[serde(default)]
    pub constraints: Value,
}

/// A form is waiting for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputRequested {
    /// Step id.
    pub step_id: String,
    /// Fields asked for.
    pub fields: Vec<FormField>,
    /// Who may submit (empty: anyone holding the token).
    #[serde(default)]
    pub assignees: Vec<String>,
    /// SHA-256 of the resume token, hex (the token itself is never stored).
    pub token_hash: String,
    /// When the request expires, if ever.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// What the form asks for, shown above its fields.
    #[serde(default)]
    pub title: Option<String>,
}

/// A person submitted a form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputSubmitted {
    /// Step id.
    pub step_id: String,
    /// Identity of the submitter.
    pub submitted_by: String,
    /// The validated values.
    pub values: Value,
}

/// An approval is waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRequested {
    /// Step id.
    pub step_id: String,
    /// Identities allowed to decide.
    pub approvers: Vec<String>,
    /// Quorum as written: `any`, `all` or a number.
    pub quorum: String,
    /// Approvals needed.
    pub required_approvals: u32,
    /// Summary shown to approvers.
    pub summary: String,
    /// The content being approved.
    pub content: Value,
    /// SHA-256 of the canonical content, hex: decisions bind to it.
    pub content_hash: String,
    /// Deadline, if any.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// SHA-256 of the resume token, hex.
    #[serde(default)]
    pub token_hash: Option<String>,
    /// 0 for the first request; 1 once a deadline escalated it to other
    /// approvers (decisions made before do not count towards the new quorum).
    #[serde(default)]
    pub escalation: u32,
    /// Typed fields each decision carries, checked like a form's (none:
    /// approve or reject and a comment only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FormField>,
}

/// An approver decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalDecided {
    /// Step id.
    pub step_id: String,
    /// Identity of the approver.
    pub decided_by: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// Optional comment.
    #[serde(default)]
    pub comment: Option<String>,
    /// Hash of the content the approver saw.
    pub content_hash: String,
    /// The request's fields as this approver gave them, checked (absent
    /// when the approval has no fields, or a rejection gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Value>,
}

/// An approval deadline passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalExpired {
    /// Step id.
    pub step_id: String,
    /// The deadline that passed.
    pub deadline: DateTime<Utc>,
    /// What happens now: `reject`, `fail` or `escalate`.
    pub on_timeout: String,
}

/// A notification was handed to its channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationSent {
    /// Step id the notification is about.
    pub step_id: String,
    /// Channel, e.g. `email`.
    pub channel: String,
    /// Recipient address.
    pub recipient: String,
    /// The channel's message id, if it gives one.
    #[serde(default)]
    pub message_id: Option<String>,
    /// `request` (the first notice) or `reminder`.
    #[serde(default = "request_purpose")]
    pub purpose: String,
    /// The identity the recipient address belongs to.
    #[serde(default)]
    pub identity: Option<String>,
}

fn request_purpose() -> String {
    "request".into()
}

/// A notification could not be handed to its channel. It is retried at
/// `retry_at`; the run never fails for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationFailed {
    /// Step id the notification is about.
    pub step_id: String,
    /// Channel, e.g. `email`.
    pub channel: String,
    /// Recipient address.
    pub recipient: String,
    /// `request` or `reminder`.
    pub purpose: String,
    /// Send attempt, from 1.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// When the next attempt is due; absent once Cairn gives up.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
}

/// A durable timer was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimerStarted {
    /// Timer id, unique within the run.
    pub timer_id: String,
    /// The step it belongs to.
    #[serde(default)]
    pub step_id: Option<String>,
    /// When it fires.
    pub due_at: DateTime<Utc>,
    /// What it is for: `wait`, `retry`, `deadline`, `reminder`, `timeout`.
    pub purpose: String,
}

/// A durable timer fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimerFired {
    /// Timer id.
    pub timer_id: String,
    /// When it was due.
    pub due_at: DateTime<Utc>,
}

/// A `workflow` step started a child run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChildRunStarted {
    /// The parent's step.
    pub step_id: String,
    /// The child run.
    pub child_run_id: Uuid,
    /// Child workflow name.
    pub workflow: String,
    /// Child workflow version.
    pub workflow_version: u32,
}

/// A child run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChildRunCompleted {
    /// The parent's step.
    pub step_id: String,
    /// The child run.
    pub child_run_id: Uuid,
    /// `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The child's output or error.
    pub result: Value,
}

/// The plan a resume follows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResumePlan {
    /// Steps that run again: the step resumed from, the failed ones, and
    /// (policy `downstream`) every step after them.
    pub rerun: Vec<String>,
    /// Steps whose recorded outputs are kept.
    pub kept: Vec<String>,
    /// Completed steps that read the output of a step that runs again
    /// (policy `failed-only`): each runs again only if what it reads has
    /// changed by then, and keeps its output otherwise.
    #[serde(default)]
    pub rerun_if_changed: Vec<String>,
    /// Step instances (map iterations, parallel branches) that failed and run again.
    #[serde(default)]
    pub failed: Vec<String>,
    /// AI steps that may run again, with the estimated cost of one attempt each.
    #[serde(default)]
    pub ai_costs: Vec<AiCostEstimate>,
    /// Estimated cost of the AI steps that may run again (one attempt each).
    #[serde(default)]
    pub estimated_cost: f64,
    /// HTTP steps that may run again whose requests are not idempotent
    /// (the resume needed `force`).
    #[serde(default)]
    pub not_idempotent: Vec<String>,
    /// Steps newly reached compared to the original path.
    #[serde(default)]
    pub newly_reached: Vec<String>,
    /// Steps no longer reached.
    #[serde(default)]
    pub no_longer_reached: Vec<String>,
    /// Approvals that must be requested again.
    #[serde(default)]
    pub stale_approvals: Vec<String>,
}

/// The estimated cost of one attempt of an AI step a resume may run again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiCostEstimate {
    /// The step.
    pub step_id: String,
    /// The model.
    pub model: String,
    /// Estimated cost in the price's currency (0 when the model has no price).
    pub cost: f64,
}

/// A step completed before a resume (or in the source run of a fork) and
/// was not run again: its recorded output stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepKept {
    /// Step instance.
    pub step_id: String,
    /// The output kept.
    pub output: Value,
    /// The target a kept branch or switch had chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why, e.g. `its inputs are unchanged`, `carried over from run …`.
    pub reason: String,
    /// The thread of control, as in `StepStarted`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// A failed run was resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunResumed {
    /// The step the resume starts from.
    pub from_step: String,
    /// `failed-only` or `downstream`.
    pub policy: String,
    /// The plan.
    pub plan: ResumePlan,
    /// Who asked.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Inputs changed for the resume (`--input k=v`), merged over the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// Whether `force` allowed what is otherwise refused (a cancelled run,
    /// non-idempotent HTTP steps).
    #[serde(default)]
    pub forced: bool,
}

/// A step failed for good (retries spent, or an error not retried) and one
/// of its `catch` entries matched the error: control goes to the handler
/// step `next`, which reads the error as `steps.ID.error`; the run does not
/// fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorCaught {
    /// The failed step (instance).
    pub step_id: String,
    /// Its last attempt.
    pub attempt: u32,
    /// The error's kind (`http.status`, `timeout`, …).
    pub error_kind: String,
    /// The error's message.
    pub message: String,
    /// The handler step control goes to (`end`: the step's sequence ends).
    pub next: String,
}

/// A run is failing and will first undo its completed steps (a saga): the
/// compensations run in the listed order (reverse order of completion),
/// then the run fails with this error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompensationStarted {
    /// The step whose failure fails the run.
    #[serde(default)]
    pub failed_step: Option<String>,
    /// The error kind the run will fail with.
    pub error_kind: String,
    /// The error message the run will fail with.
    pub message: String,
    /// Compensation step ids to run, in order.
    pub compensations: Vec<String>,
}

/// A run succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCompleted {
    /// The run's output.
    pub output: Value,
}

/// A run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunFailed {
    /// Stable error kind.
    pub error_kind: String,
    /// Human-readable message.
    pub message: String,
    /// The step whose failure failed the run.
    #[serde(default)]
    pub failed_step: Option<String>,
}

/// A run was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCancelled {
    /// Who cancelled it.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A workflow definition version was published (stream `workflow-<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowVersionPublished {
    /// Workflow name.
    pub name: String,
    /// Version number, from 1.
    pub version: u32,
    /// SHA-256 of `source`, hex.
    pub definition_hash: String,
    /// The definition exactly as written.
    pub source: String,
    /// Who published it.
    pub published_by: String,
}

/// A workflow was archived: no new runs, history kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowArchived {
    /// Workflow name.
    pub name: String,
    /// Who archived it.
    pub by: String,
}

/// An API key was created (stream `apikeys`). The key itself is shown once
/// to whoever created it; only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyCreated {
    /// The key's public id (the part of the key before its secret).
    pub key_id: String,
    /// A name for people.
    pub name: String,
    /// `admin`, `operator`, `approver` or `viewer`.
    pub role: String,
    /// The identity requests with this key act as (an approver's identity).
    pub identity: String,
    /// SHA-256 of the whole key, hex.
    pub key_hash: String,
    /// Who created it.
    pub created_by: String,
}

/// An API key was revoked; requests with it are refused from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiKeyRevoked {
    /// The key's public id.
    pub key_id: String,
    /// Who revoked it.
    pub revoked_by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A request was refused for who made it (stream `refusals`, never the
/// run's): an unknown or revoked key, no key, a role too weak, a person not
/// listed for a form or approval, a wrong resume token, an invalid
/// submission, or a source over its limit of failed key checks. The audit
/// log lists it with the outcome `denied` (PCI DSS 10.2.1.4). Nothing
/// secret is kept: a presented key's secret never is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessDenied {
    /// Who: the identity of the key presented, or `unknown`.
    pub actor: String,
    /// The public id of the key presented, when it had the shape of one.
    #[serde(default)]
    pub key_id: Option<String>,
    /// What was attempted: the method and the route (`POST /runs/{id}/steps/{step}/decision`).
    pub action: String,
    /// The run it was about, if any.
    #[serde(default)]
    pub run_id: Option<Uuid>,
    /// The step it was about, if any.
    #[serde(default)]
    pub step_id: Option<String>,
    /// Why: the problem code answered (`bad-key`, `unauthenticated`,
    /// `forbidden`, `not-allowed`, `bad-token`, `invalid-submission`,
    /// `too-many-failures`).
    pub reason: String,
    /// Where from: the client's address.
    pub origin: String,
}

/// An operator applied an event a read model had parked (stream
/// `operations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ParkedEventRetried {
    /// The read model.
    pub projection: String,
    /// The parked event's position in the log.
    pub position: u64,
    /// Who retried it.
    pub by: String,
}

/// An operator had a read model forget an event it had parked, without
/// applying it (stream `operations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ParkedEventSkipped {
    /// The read model.
    pub projection: String,
    /// The parked event's position in the log.
    pub position: u64,
    /// The error it was parked with.
    pub error: String,
    /// Who skipped it.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `cairn serve` began driving these unfinished runs at start-up (stream
/// `operations`). Until [`ProbationPassed`] names them, a process that dies
/// is taken to have died driving them: a run the process died driving twice
/// in a row is quarantined rather than driven a third time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunsOnProbation {
    /// The runs (at most 10,000 per event).
    pub runs: Vec<Uuid>,
    /// Whether each is driven alone (after a death), to tell which one it is.
    pub alone: bool,
}

/// The runs of a [`RunsOnProbation`] were driven for the probation time (or
/// settled) without the process dying (stream `operations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProbationPassed {
    /// The runs.
    pub runs: Vec<Uuid>,
}

/// A run the process died driving, twice in a row at start-up, is no longer
/// driven until an operator releases it (stream `operations`). Its own
/// stream is untouched; it stays `running` and can still be cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunQuarantined {
    /// The run.
    pub run_id: Uuid,
    /// How many start-ups in a row died while driving it.
    pub deaths: u32,
    /// Why, for the operator.
    pub reason: String,
}

/// An operator released a quarantined run: it is driven again (stream
/// `operations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunReleased {
    /// The run.
    pub run_id: Uuid,
    /// Who released it.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A schedule was defined, or redefined (stream `schedule-<name>`): from
/// now on, a run of `workflow` starts at each time `cron` names in
/// `timezone`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleDefined {
    /// The schedule's name.
    pub name: String,
    /// The workflow each firing starts.
    pub workflow: String,
    /// The version pinned, or none for the latest published at each firing.
    #[serde(default)]
    pub workflow_version: Option<u32>,
    /// The cron expression (5 fields, or 6 with seconds first; names such
    /// as `MON` and `JAN`; `@daily` and the like).
    pub cron: String,
    /// The IANA time zone the expression is read in (`Europe/Stockholm`).
    pub timezone: String,
    /// The inputs of each run.
    pub inputs: Value,
    /// What a firing does while an earlier run of the schedule is still
    /// running: `skip`, `buffer_one`, `allow_all` or `cancel_other`.
    pub overlap: String,
    /// How far back, after downtime, missed firings are still made, in
    /// milliseconds (older ones are recorded as skipped).
    pub catchup_window_ms: u64,
    /// Most delay added to each firing (the same for every worker: derived
    /// from the schedule and the nominal time), in milliseconds.
    pub jitter_ms: u64,
    /// When it was defined: firings before this are never made.
    pub defined_at: DateTime<Utc>,
    /// Who defined it.
    pub by: String,
}

/// A schedule was paused: it fires nothing until resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SchedulePaused {
    /// Who paused it.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A paused schedule was resumed: firings from `at` on are made (none of
/// the paused time is caught up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleResumed {
    /// Who resumed it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A schedule was deleted: it fires nothing more; its runs and history stay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleDeleted {
    /// Who deleted it.
    pub by: String,
}

/// A schedule fired: a run started for one nominal time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleFired {
    /// The time the expression named.
    pub nominal_at: DateTime<Utc>,
    /// The run it started (its `RunStarted` names the schedule and this time).
    pub run_id: Uuid,
    /// Part of a backfill of a past range.
    #[serde(default)]
    pub backfill: bool,
    /// Earlier runs of the schedule seen ended (they no longer overlap).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<Uuid>,
    /// Earlier runs this firing cancelled (overlap `cancel_other`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<Uuid>,
}

/// A firing of a schedule was not made, or was put off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleSkipped {
    /// The (first) nominal time not fired.
    pub nominal_at: DateTime<Utc>,
    /// The last nominal time not fired, for a range (missed firings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// `overlap` (an earlier run still running), `buffered` (put off until
    /// the running one ends: overlap `buffer_one`), `missed` (older than
    /// the catch-up window after downtime) or `refused` (the run could not
    /// start: the workflow archived, its inputs no longer valid).
    pub reason: String,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Earlier runs of the schedule seen ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<Uuid>,
}

/// A webhook trigger was defined, or redefined (stream `trigger-<name>`):
/// `POST /hooks/<name>` with a valid signature starts a run of `workflow`.
/// The signing secret is named, never recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TriggerDefined {
    /// The trigger's name (the hook's path).
    pub name: String,
    /// The workflow each delivery starts.
    pub workflow: String,
    /// The version pinned, or none for the latest at each delivery.
    #[serde(default)]
    pub workflow_version: Option<u32>,
    /// The run's inputs: a JSON value whose strings are templates over
    /// `body` (the delivery's JSON body, or its text) and `headers`
    /// (lowercase names).
    pub inputs: Value,
    /// How deliveries are signed: `github` (`X-Hub-Signature-256`) or
    /// `stripe` (`Stripe-Signature`, with a timestamp).
    pub signature: String,
    /// The secret that signs them, by name (`CAIRN_SECRET_<NAME>`).
    pub secret: String,
    /// Where a delivery's id is: `header:<Name>` or `body:<JSON pointer>`;
    /// it is the run's idempotency key, so a replayed delivery starts
    /// nothing new.
    pub delivery_id: String,
    /// Oldest a signed timestamp may be, in seconds (`stripe`).
    pub tolerance_seconds: u64,
    /// When it was defined.
    pub defined_at: DateTime<Utc>,
    /// Who defined it.
    pub by: String,
}

/// A webhook trigger was deleted: its hook answers 404 from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TriggerDeleted {
    /// Who deleted it.
    pub by: String,
}

/// An operator subscribed to lifecycle events (stream `subscriptions`):
/// each matching event is delivered to `url` (signed), or starts the
/// workflow `start`, at least once, with retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionDefined {
    /// The subscription's name.
    pub name: String,
    /// The lifecycle events it wants: `run.started`, `run.completed`,
    /// `run.failed`, `run.cancelled`, `step.failed`, `approval.requested`,
    /// `approval.expired`, or `*` for all of them.
    pub events: Vec<String>,
    /// Only runs of these workflows (empty: every workflow).
    #[serde(default)]
    pub workflows: Vec<String>,
    /// Where to POST each event (signed with `secret`).
    #[serde(default)]
    pub url: Option<String>,
    /// The signing secret's name (`CAIRN_SECRET_<NAME>`), for `url`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Or: a workflow to start for each event (inputs: the event).
    #[serde(default)]
    pub start: Option<String>,
    /// Attempts before a delivery is set aside as dead.
    pub max_attempts: u32,
    /// The log position it was defined at: events after it are delivered.
    pub from_position: u64,
    /// Who defined it.
    pub by: String,
}

/// A subscription was deleted: nothing more is delivered for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionDeleted {
    /// The subscription.
    pub name: String,
    /// Who deleted it.
    pub by: String,
}

/// One attempt to deliver an event to a subscription (stream `deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryAttempted {
    /// The delivery: `<subscription>@<position>`.
    pub id: String,
    /// The subscription.
    pub subscription: String,
    /// The event's log position.
    pub position: u64,
    /// Its lifecycle name (`run.failed`).
    pub event: String,
    /// Its run.
    #[serde(default)]
    pub run_id: Option<Uuid>,
    /// The attempt, from 1.
    pub attempt: u32,
    /// `delivered`, `failed` (tried again at `next_at`) or `dead` (no
    /// attempts left: set aside until an operator retries it).
    pub outcome: String,
    /// The endpoint's HTTP status, if it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// When it is tried again.
    #[serde(default)]
    pub next_at: Option<DateTime<Utc>>,
}

/// An operator put a dead delivery back to be tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryRequeued {
    /// The delivery.
    pub id: String,
    /// Who.
    pub by: String,
}

/// The dispatcher has looked at every event up to `position`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveriesScanned {
    /// The last log position looked at.
    pub position: u64,
}

/// One entry of the catalog, for docs and schema listings.
#[derive(Debug, Clone)]
pub struct EventInfo {
    /// Event type name.
    pub event_type: &'static str,
    /// Current schema version.
    pub schema_version: u32,
    /// JSON Schema of the current payload.
    pub schema: schemars::Schema,
    /// Which group of streams it belongs to.
    pub group: &'static str,
}

macro_rules! catalog {
    ($( $group:literal : $( $name:ident = $version:literal ),* ;)*) => {
        /// Every event of the catalog, typed.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Event {
            $($(
                #[doc = concat!("See [`", stringify!($name), "`].")]
                $name($name),
            )*)*
        }

        $($(
            impl From<$name> for Event {
                fn from(e: $name) -> Self { Event::$name(e) }
            }
        )*)*

        impl Event {
            /// The catalog name.
            pub fn event_type(&self) -> &'static str {
                match self { $($( Event::$name(_) => stringify!($name), )*)* }
            }

            /// The current schema version of this event type.
            pub fn schema_version(&self) -> u32 {
                match self { $($( Event::$name(_) => $version, )*)* }
            }

            /// The payload as compact JSON text.
            pub fn payload_json(&self) -> String {
                let r = match self { $($( Event::$name(e) => serde_json::to_string(e), )*)* };
                // Serializing these plain structs cannot fail: no maps with
                // non-string keys, no custom serializers.
                r.unwrap_or_else(|e| unreachable!("catalog payloads always serialize: {e}"))
            }

            /// The step (instance) the event is about, if any.
            pub fn step_id(&self) -> Option<&str> {
                match self { $($( Event::$name(e) => AboutStep::step(e), )*)* }
            }

            /// Current schema version of a type name, if the catalog has it.
            pub fn current_version(event_type: &str) -> Option<u32> {
                match event_type { $($( stringify!($name) => Some($version), )*)* _ => None }
            }

            fn from_current(event_type: &str, payload: Value) -> Result<Event, (bool, serde_json::Error)> {
                match event_type {
                    $($( stringify!($name) => serde_json::from_value::<$name>(payload).map(Event::$name).map_err(|e| (true, e)), )*)*
                    _ => Err((false, serde::de::Error::custom("unknown"))),
                }
            }
        }

        /// The whole catalog with schemas, in documentation order.
        pub fn catalog() -> Vec<EventInfo> {
            vec![ $($( EventInfo {
                event_type: stringify!($name),
                schema_version: $version,
                schema: schemars::schema_for!($name),
                group: $group,
            }, )*)* ]
        }
    };
}

/// Which step an event is about: every payload says, through one trait, so
/// no reader works it out from the JSON text.
trait AboutStep {
    fn step(&self) -> Option<&str> {
        None
    }
}

macro_rules! about_step {
    (step_id: $($name:ident),*) => {
        $( impl AboutStep for $name {
            fn step(&self) -> Option<&str> { Some(&self.step_id) }
        } )*
    };
    (none: $($name:ident),*) => {
        $( impl AboutStep for $name {} )*
    };
}

about_step!(step_id: StepStarted, StepCompleted, StepFailed, RetryScheduled, BranchTaken, StepSkipped,
    AiAttemptStarted, AiAttemptCompleted, AiAttemptFailed, AiOutputRejected, InputRequested, InputSubmitted,
    ApprovalRequested, ApprovalDecided, ApprovalExpired, NotificationSent, NotificationFailed, ChildRunStarted,
    ChildRunCompleted, StepKept, ErrorCaught, TaskOffered, TaskClaimed);
about_step!(none: RunStarted, TimerFired, RunResumed, CompensationStarted, RunCompleted, RunFailed, RunCancelled,
    WorkflowVersionPublished, WorkflowArchived, ApiKeyCreated, ApiKeyRevoked, ParkedEventRetried, ParkedEventSkipped, RunsOnProbation, ProbationPassed,
    RunQuarantined, RunReleased, ScheduleDefined, SchedulePaused, ScheduleResumed, ScheduleDeleted, ScheduleFired,
    ScheduleSkipped, TriggerDefined, TriggerDeleted, SubscriptionDefined, SubscriptionDeleted, DeliveryAttempted,
    DeliveryRequeued, DeliveriesScanned);

impl AboutStep for AccessDenied {
    fn step(&self) -> Option<&str> {
        self.step_id.as_deref()
    }
}

impl AboutStep for TimerStarted {
    fn step(&self) -> Option<&str> {
        self.step_id.as_deref()
    }
}

catalog! {
    "run":
        RunStarted = 1, StepStarted = 1, StepCompleted = 1, StepFailed = 2, TaskOffered = 1, TaskClaimed = 1, RetryScheduled = 1,
        BranchTaken = 1, StepSkipped = 1, AiAttemptStarted = 1, AiAttemptCompleted = 1,
        AiAttemptFailed = 1, AiOutputRejected = 1, InputRequested = 1, InputSubmitted = 1, ApprovalRequested = 1,
        ApprovalDecided = 1, ApprovalExpired = 1, NotificationSent = 1, NotificationFailed = 1, TimerStarted = 1,
        TimerFired = 1, ChildRunStarted = 1, ChildRunCompleted = 1, RunResumed = 1, StepKept = 1,
        ErrorCaught = 1, CompensationStarted = 1, RunCompleted = 1, RunFailed = 1, RunCancelled = 1;
    "workflow":
        WorkflowVersionPublished = 1, WorkflowArchived = 1;
    "schedule":
        ScheduleDefined = 1, SchedulePaused = 1, ScheduleResumed = 1, ScheduleDeleted = 1, ScheduleFired = 1,
        ScheduleSkipped = 1;
    "trigger":
        TriggerDefined = 1, TriggerDeleted = 1;
    "delivery":
        SubscriptionDefined = 1, SubscriptionDeleted = 1, DeliveryAttempted = 1, DeliveryRequeued = 1,
        DeliveriesScanned = 1;
    "access":
        ApiKeyCreated = 1, ApiKeyRevoked = 1, AccessDenied = 1;
    "operations":
        ParkedEventRetried = 1, ParkedEventSkipped = 1, RunsOnProbation = 1, ProbationPassed = 1,
        RunQuarantined = 1, RunReleased = 1;
}

impl Event {
    /// Decodes a stored event with the default upcasters.
    pub fn decode(recorded: &RecordedEvent) -> Result<Event, DecodeError> {
        Event::decode_with(recorded, Upcasters::standard())
    }

    /// Decodes a stored event, upgrading old payloads with `upcasters`. The
    /// stored row is never changed.
    pub fn decode_with(recorded: &RecordedEvent, upcasters: &Upcasters) -> Result<Event, DecodeError> {
        let at = crate::upcast::Location::of(recorded);
        let Some(current) = Event::current_version(&recorded.event_type) else {
            return Err(DecodeError::UnknownEventType { event_type: recorded.event_type.clone(), at });
        };
        let value: Value = serde_json::from_str(&recorded.payload).map_err(|e| DecodeError::InvalidPayload {
            event_type: recorded.event_type.clone(),
            at: at.clone(),
            message: e.to_string(),
        })?;
        let value = upcasters.upcast(&recorded.event_type, recorded.schema_version, current, value, &at)?;
        Event::from_current(&recorded.event_type, value).map_err(|(_, e)| DecodeError::InvalidPayload {
            event_type: recorded.event_type.clone(),
            at,
            message: e.to_string(),
        })
    }
}

/// Encoding a catalog event (here, so the envelope knows nothing of the catalog).
impl NewEvent {
    /// Encodes a typed catalog event at its current schema version.
    pub fn from_event(event: &Event, metadata: Metadata) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.payload_json(),
            metadata,
        }
    }
}
