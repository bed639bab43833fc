//! The workflow file as written: plain serde structs that mirror the YAML,
//! with source locations on the nodes diagnostics point at. Nothing outside
//! `lang` sees these; `compile` turns them into a [`crate::Workflow`].

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// A Cairn workflow file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Cairn workflow")]
pub struct RawWorkflow {
    /// Workflow name: letters, digits, `-` and `_`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// What the workflow does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the run's inputs; `default`s in its properties fill
    /// missing inputs.
    #[serde(default)]
    #[schemars(with = "Option<Value>")]
    pub inputs: Option<Spanned<Value>>,
    /// The steps, run in the order listed unless a step jumps.
    pub steps: Vec<RawStep>,
    /// The run's output: a template over `inputs` and `steps`. Defaults to
    /// the output of the last step that ran.
    #[serde(default)]
    #[schemars(with = "Option<Value>")]
    pub output: Option<Spanned<Value>>,
    /// Steps that undo others (sagas): named by a step's `compensate`, run
    /// only when the run fails after that step completed.
    #[serde(default)]
    pub compensations: Vec<RawStep>,
    /// What the run's AI attempts may spend in all.
    #[serde(default)]
    pub budget: Option<RawBudget>,
    /// Lifecycle hooks, by event (`run.started`, `run.completed`,
    /// `run.failed`, `run.cancelled`, `step.failed`, `approval.requested`,
    /// `approval.expired`): endpoints to POST the event to (signed) or
    /// workflows to start, at least once, with retries. They never delay or
    /// fail the run.
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, Vec<RawHook>>>")]
    pub on: Option<Spanned<std::collections::BTreeMap<String, Vec<RawHook>>>>,
}

/// One lifecycle hook: `url` (with `secret`) or `start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    /// POST the event here (http or https), signed with `secret`.
    #[serde(default)]
    pub url: Option<String>,
    /// The signing secret's name (`CAIRN_SECRET_<NAME>`).
    #[serde(default)]
    pub secret: Option<String>,
    /// Or: start this workflow, with the event as its input `event`.
    #[serde(default)]
    pub start: Option<String>,
    /// Attempts before the delivery is set aside as dead (default 8).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// One `catch` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCatch {
    /// Error kinds it handles: exact (`http.status`), a family
    /// (`http.*`), or `*`. Absent: any error.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub errors: Vec<Spanned<String>>,
    /// The handler step (or `end`: the step's sequence ends).
    #[schemars(with = "String")]
    pub next: Spanned<String>,
}

/// `fail: { error, cause }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFail {
    /// The error kind the run fails with (letters, digits, `_`, `-`, `.`).
    #[schemars(with = "String")]
    pub error: Spanned<String>,
    /// Why: a template rendering to the run's error message.
    #[serde(default)]
    pub cause: Option<Value>,
}

/// `budget: { max_cost, max_tokens }`: an attempt that would go over is not
/// made and the step fails (`budget.exceeded`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Most money, in the currency of the models' prices (e.g. `0.50`).
    #[serde(default)]
    pub max_cost: Option<f64>,
    /// Most tokens, input and output together.
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

/// One step. Exactly one of `task`, `queue`, `transform`, `branch`, `switch`, `wait`,
/// `http`, `parallel`, `map`, `dag`, `workflow`, `ai`, `form`, `approval` and
/// `fail` says what it does.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique step id: letters, digits and `_` (templates say `steps.ID`).
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// What the step is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Run a native task handler by name (built in: `echo`, `log`, `fail`,
    /// `increment`; an embedding program registers its own).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub task: Option<Spanned<String>>,
    /// Hand the work to external workers polling this task queue over HTTP
    /// (in any language; the protocol is in docs/api.md): a worker claims
    /// the task, heartbeats while it works, and completes or fails it. Its
    /// input is `with`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub queue: Option<Spanned<String>>,
    /// For a `queue` step: how long a worker that claimed the task may go
    /// without a heartbeat before the attempt fails with
    /// `heartbeat-timeout` (retried by `retry`, so offered again), e.g.
    /// `10s`. Default 30s.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub heartbeat_timeout: Option<Spanned<String>>,
    /// The input of a `task` or `queue` step: a template.
    #[serde(default, rename = "with")]
    pub with_input: Option<Value>,
    /// Compute an output from a template, with no side effect.
    #[serde(default)]
    pub transform: Option<Value>,
    /// Jump on a condition.
    #[serde(default)]
    pub branch: Option<RawBranch>,
    /// Jump to the first case whose condition holds.
    #[serde(default)]
    pub switch: Option<RawSwitch>,
    /// Wait durably for a duration or until an instant.
    #[serde(default)]
    pub wait: Option<RawWait>,
    /// Call an HTTP endpoint.
    #[serde(default)]
    pub http: Option<RawHttp>,
    /// Run branches of steps at the same time.
    #[serde(default)]
    pub parallel: Option<RawParallel>,
    /// Run the same steps for every item of a list.
    #[serde(default)]
    pub map: Option<RawMap>,
    /// Run steps as a graph: each starts once the steps it `depends_on`
    /// have completed.
    #[serde(default)]
    pub dag: Option<RawDag>,
    /// Inside a `dag`: the steps of the same dag this one starts after
    /// (each completed or skipped by its guard).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub depends_on: Vec<Spanned<String>>,
    /// Start a run of another published workflow and wait for it.
    #[serde(default)]
    pub workflow: Option<RawChild>,
    /// Ask a model; its output is checked against `output_contract` and
    /// retried with the errors fed back.
    #[serde(default)]
    pub ai: Option<RawAi>,
    /// Ask a person to fill in a form; the run waits.
    #[serde(default)]
    pub form: Option<RawForm>,
    /// Ask approvers to approve content; the run waits for the quorum.
    #[serde(default)]
    pub approval: Option<RawApproval>,
    /// What this step's AI attempts may spend in all.
    #[serde(default)]
    pub budget: Option<RawBudget>,
    /// Retry policy for failed attempts: one policy, or a list of
    /// retriers matched in order by the error's kind (`errors`).
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(with = "Option<RetrySchema>")]
    pub retry: Option<Vec<RawRetry>>,
    /// Longest an attempt may take, e.g. `30s`, `5m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// The step to go to after this one (instead of the next listed).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub next: Option<Spanned<String>>,
    /// End the run after this step.
    #[serde(default)]
    pub end: bool,
    /// A guard (CEL, like a branch's condition): when it is false as
    /// control reaches the step, the step is skipped (`StepSkipped` with the
    /// reason) and control goes on to the step after it. Inside a map it is
    /// checked for each item (`item`, `index`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// Where the step's failure goes instead of failing the run (after its
    /// retries): the first entry whose `errors` match the error's kind
    /// sends control to its `next` step, which reads the error as
    /// `steps.ID.error`.
    #[serde(default)]
    pub catch: Vec<RawCatch>,
    /// End the run as failed with a named error and a cause.
    #[serde(default)]
    pub fail: Option<RawFail>,
    /// How often the step may run in one run; required on every loop.
    #[serde(default)]
    pub max_visits: Option<u32>,
    /// The `compensations` entry that undoes this step if the run fails
    /// after it completed.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub compensate: Option<Spanned<String>>,
    /// JSON Schema the step's output must satisfy; references to
    /// `steps.<id>.output.<field>` are checked against its properties.
    #[serde(default)]
    pub output_contract: Option<Value>,
    /// Whether `cairn resume` may run this step again after the run failed
    /// (default `true`). Say `false` for a step whose effect must never be
    /// repeated by a resume; such a run is forked or started afresh instead.
    #[serde(default)]
    pub resumable: Option<bool>,
}

/// `branch: { if, then, else }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBranch {
    /// A condition over `inputs` and `steps`.
    #[serde(rename = "if")]
    #[schemars(with = "String")]
    pub condition: Spanned<String>,
    /// Step to go to when it holds (`end` ends the run).
    #[schemars(with = "String")]
    pub then: Spanned<String>,
    /// Step to go to otherwise; the next listed step when absent.
    #[serde(default, rename = "else")]
    #[schemars(with = "Option<String>")]
    pub otherwise: Option<Spanned<String>>,
}

/// `switch: { cases: [{ when, goto }], default }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSwitch {
    /// Checked in order; the first that holds decides.
    pub cases: Vec<RawCase>,
    /// Step to go to when no case holds; the next listed step when absent.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub default: Option<Spanned<String>>,
}

/// One case of a switch.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    /// A condition.
    #[schemars(with = "String")]
    pub when: Spanned<String>,
    /// Step to go to (`end` ends the run).
    #[schemars(with = "String")]
    pub goto: Spanned<String>,
}

/// `wait: { for: 30s }` or `wait: { until: "2026-12-01T09:00:00Z" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWait {
    /// How long to wait, e.g. `30s`, `2h`, `7d`.
    #[serde(default, rename = "for")]
    #[schemars(with = "Option<String>")]
    pub duration: Option<Spanned<String>>,
    /// An RFC 3339 instant to wait until; may be a template.
    #[serde(default)]
    pub until: Option<Value>,
}

/// An HTTP request; every string may be a template.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `GET` (default), `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub method: Option<Spanned<String>>,
    /// The URL.
    pub url: Value,
    /// Request headers.
    #[serde(default)]
    pub headers: Option<Value>,
    /// Query parameters, appended to the URL.
    #[serde(default)]
    pub query: Option<Value>,
    /// The body: JSON (sent as `application/json`) or a string.
    #[serde(default)]
    pub body: Option<Value>,
    /// Request timeout (default `30s`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// 4xx statuses that are retried anyway (5xx and 429 always are).
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
    /// Whether sending the request twice is harmless. The default follows
    /// the method: `GET`, `HEAD`, `OPTIONS`, `PUT` and `DELETE` are
    /// idempotent, `POST` and `PATCH` are not. A resume that would send a
    /// non-idempotent request again needs `--force`.
    #[serde(default)]
    pub idempotent: Option<bool>,
}

/// Retry policy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// In a list of retriers: the error kinds this one handles, as in
    /// `catch` (exact, a family `http.*`, `*`); absent: any error.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub errors: Vec<Spanned<String>>,
    /// Longest time the retries of one visit may go on, from its first
    /// failure (`10m`): a retry that would fall due later is not made.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_duration: Option<Spanned<String>>,
    /// Attempts in all, including the first (default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Wait before the second attempt (default `1s`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub initial_interval: Option<Spanned<String>>,
    /// Each wait is the previous one times this (default 2.0).
    #[serde(default)]
    pub backoff_coefficient: Option<f64>,
    /// Longest wait (default `5m`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_interval: Option<Spanned<String>>,
    /// Fraction of each wait that is randomised, 0 to 1 (default 0.1).
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Error kinds that are never retried.
    #[serde(default)]
    pub non_retryable: Vec<String>,
}

/// `parallel: { branches: [{ name, steps }], fail_fast, max_concurrency }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParallel {
    /// The branches; each runs its steps in order, all branches at once.
    pub branches: Vec<RawParallelBranch>,
    /// Fail the step as soon as one branch fails, cancelling the others
    /// (default `true`); when `false`, every branch runs to its end first.
    #[serde(default)]
    pub fail_fast: Option<bool>,
    /// Most branches running at once (default: all).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// A race: the first branch to complete wins and the others are
    /// cancelled; the output is `{ winner, output }` (default `false`).
    #[serde(default)]
    pub compete: bool,
    /// `by_branch` (default): the output maps each branch name to its
    /// result; `list`: the results in the branches' listed order.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub output: Option<Spanned<String>>,
}

/// One branch of a `parallel` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParallelBranch {
    /// Branch name: the key of its result in the step's output.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Its steps; jumps stay inside the branch, `end` ends the branch.
    pub steps: Vec<RawStep>,
}

/// `map: { items, steps, max_concurrency, fail_fast }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// A template that renders to a list, e.g. `"{{ inputs.orders }}"`.
    pub items: Value,
    /// The steps each item runs through; templates see `item` and `index`.
    pub steps: Vec<RawStep>,
    /// Most items in progress at once (default: all).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Fail the step as soon as one item fails, cancelling the others
    /// (default `true`).
    #[serde(default)]
    pub fail_fast: Option<bool>,
}

/// `dag: { steps, fail_fast, max_concurrency }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDag {
    /// The steps; each starts as soon as every step it `depends_on` has
    /// completed (or was skipped by its guard); one with no `depends_on`
    /// starts with the dag. The output maps each step id to its output.
    pub steps: Vec<RawStep>,
    /// Fail the step as soon as one of its steps fails, cancelling the
    /// running ones (default `true`); when `false`, every step whose
    /// dependencies completed runs first.
    #[serde(default)]
    pub fail_fast: Option<bool>,
    /// Most steps running at once (default: all that are ready).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
}

/// `workflow: { name, version, inputs }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawChild {
    /// The published workflow to run as a child.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Its version (default: the latest published when the step starts).
    #[serde(default)]
    pub version: Option<u32>,
    /// The child's inputs; every string may be a template.
    #[serde(default)]
    pub inputs: Option<Value>,
}

/// `ai: { model, prompt | messages | template, ... }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAi {
    /// A model alias from cairn.yaml, `provider/model`
    /// (`openai/gpt-4o-mini`), or `scripted`.
    #[schemars(with = "String")]
    pub model: Spanned<String>,
    /// The system message (a template).
    #[serde(default)]
    pub system: Option<String>,
    /// The user message (a template).
    #[serde(default)]
    pub prompt: Option<String>,
    /// The messages, in order, instead of `system` and `prompt`.
    #[serde(default)]
    pub messages: Option<Vec<RawMessage>>,
    /// A versioned prompt template, `ID@VERSION`, from the prompts directory
    /// (`prompts/ID@VERSION.yaml`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub template: Option<Spanned<String>>,
    /// Values a prompt template sees as `vars` (templates).
    #[serde(default)]
    pub vars: Option<Value>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Most output tokens per attempt.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Attempts whose output is judged against the contract, in all
    /// (default 3): a rejected output is fed back to the next.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// `json_schema`, `json_object` or `none` (default: the model's, else
    /// `json_schema`); a server that refuses one gets the next.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub structured_output: Option<Spanned<String>>,
    /// Backoff for transport failures (connection errors, timeouts, 429,
    /// 5xx), counted apart from rejected outputs (default 4 tries from 1s).
    #[serde(default)]
    pub transport_retry: Option<RawRetry>,
    /// Replies of the scripted provider by attempt (the last repeats): a
    /// string, `{ content, input_tokens, output_tokens }`, or a failure
    /// (`{ error: connect|timeout|malformed }`, `{ status: 429, retry_after: 1 }`,
    /// `{ reject_mode: json_schema }`). Strings may be templates.
    #[serde(default)]
    pub scripted: Option<Vec<Value>>,
}

/// One message of an `ai` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMessage {
    /// `system`, `user` or `assistant`.
    #[schemars(with = "String")]
    pub role: Spanned<String>,
    /// The text (a template).
    pub content: String,
}

/// `form: { title, fields, assignees, deadline, reminders }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForm {
    /// What the form asks for, shown above its fields (a template).
    #[serde(default)]
    pub title: Option<String>,
    /// The fields, in order.
    pub fields: Vec<RawField>,
    /// Who may submit (identities; templates); empty: anyone with the token.
    #[serde(default)]
    pub assignees: Vec<String>,
    /// How long the form may wait, e.g. `2d`; then the step fails
    /// (`input.expired`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<Spanned<String>>,
    /// Reminders, as durations before the deadline, e.g. `[1d, 1h]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub reminders: Vec<Spanned<String>>,
}

/// One form field.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    /// Key in the submitted values: letters, digits and `_`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// text, textarea, number, integer, boolean, select, multiselect, date,
    /// email or url (default text).
    #[serde(default, rename = "type")]
    #[schemars(with = "Option<String>")]
    pub field_type: Option<Spanned<String>>,
    /// Label shown to the person.
    #[serde(default)]
    pub label: Option<String>,
    /// Whether a value is required.
    #[serde(default)]
    pub required: bool,
    /// The value when none is given.
    #[serde(default)]
    pub default: Option<Value>,
    /// Least value (number, integer).
    #[serde(default)]
    pub min: Option<f64>,
    /// Greatest value (number, integer).
    #[serde(default)]
    pub max: Option<f64>,
    /// Least length (text) or number of choices (multiselect).
    #[serde(default)]
    pub min_length: Option<u64>,
    /// Greatest length (text) or number of choices (multiselect).
    #[serde(default)]
    pub max_length: Option<u64>,
    /// A regular expression the whole text must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The choices of a select or multiselect.
    #[serde(default)]
    pub options: Vec<Value>,
    /// Help text.
    #[serde(default)]
    pub help: Option<String>,
}

/// `approval: { approvers, quorum, summary, content, deadline, ... }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    /// Identities allowed to decide (templates).
    pub approvers: Vec<String>,
    /// `any` (default), `all`, or a number of approvals.
    #[serde(default)]
    pub quorum: Option<Value>,
    /// Shown to approvers (a template).
    #[serde(default)]
    pub summary: Option<String>,
    /// What is approved (a template); its hash binds every decision.
    #[serde(default)]
    pub content: Option<Value>,
    /// How long it may wait, e.g. `3d`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<Spanned<String>>,
    /// Reminders, as durations before the deadline.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub reminders: Vec<Spanned<String>>,
    /// When the deadline passes: `reject` (default), `fail` or `escalate`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub on_timeout: Option<Spanned<String>>,
    /// Who decides after `on_timeout: escalate` (templates).
    #[serde(default)]
    pub escalate_to: Vec<String>,
    /// `fail` (default): a rejection fails the step (`approval.rejected`);
    /// `continue`: the step completes with `approved: false`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub on_reject: Option<Spanned<String>>,
    /// Typed fields a decision carries besides approve or reject, checked
    /// like a form's: an approval must satisfy them (`required` included);
    /// a rejection may give them, each checked if given. The step's output
    /// has the approving values as `values`.
    #[serde(default)]
    pub fields: Vec<RawField>,
}

/// `retry` as written: one policy or a list of retriers (for the schema).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)] // never built: it only describes the YAML
enum RetrySchema {
    /// One policy for every error.
    One(RawRetry),
    /// Retriers, matched in order by the error's kind.
    Many(Vec<RawRetry>),
}

/// A map or a list of maps, read straight from the YAML (no buffering, so
/// the source positions inside survive).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<RawRetry>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Vec<RawRetry>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a retry policy (a map) or a list of retriers")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RawRetry::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|r| Some(vec![r]))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<RawRetry>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Some)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}
