//! The compiled, validated workflow the engine runs. Built only by
//! [`crate::lang::compile`]; nothing here can be malformed.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

pub use crate::duration::parse_duration;
use crate::expr::Condition;

/// How long a claimed `queue` task may go without a heartbeat unless the
/// step says.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// An `http` step's request timeout when it names none.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated workflow definition.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// JSON Schema of the inputs.
    pub inputs_schema: Option<Value>,
    /// Steps in listed order; the first is where a run starts.
    pub steps: Vec<Step>,
    /// Output template, if any.
    pub output: Option<Value>,
    /// The source text it was compiled from.
    pub source: String,
    /// SHA-256 of the source, hex.
    pub definition_hash: String,
    /// Every `secrets.NAME` the templates use.
    pub secret_refs: Vec<SecretRef>,
    /// Compensation steps (run only while a failing run undoes its work).
    pub compensations: Vec<Step>,
    /// Every step, nested ones included, by id.
    pub(crate) index: HashMap<String, (Step, Block)>,
    /// Names of the workflows its `workflow` steps start.
    pub children: Vec<String>,
    /// The run's AI budget.
    pub budget: Budget,
    /// Its lifecycle hooks (`on:`), in the order written by event.
    pub hooks: Vec<Hook>,
    /// Every `model:` its AI steps name, for checking against the config.
    pub model_refs: Vec<ModelRef>,
    /// The engine's surroundings (models, prices, notifications, prompt
    /// templates) the decider reads; set by the engine that runs it.
    pub config: std::sync::Arc<crate::config::Config>,
}

/// A use of a model or prompt template by an AI step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The step.
    pub step: String,
    /// The model name as written.
    pub model: String,
    /// The prompt template `ID@VERSION`, if the step uses one.
    pub template: Option<String>,
    /// Whether the step has scripted replies.
    pub scripted: bool,
    /// Line of the step.
    pub line: u64,
    /// Column.
    pub column: u64,
}

/// Limits on what AI attempts may spend; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Budget {
    /// Most money, in currency units of the model's price.
    pub max_cost: Option<f64>,
    /// Most tokens, input and output together.
    pub max_tokens: Option<u64>,
}

/// The sequence of steps a step belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// The workflow's `steps`.
    Top,
    /// A branch of a `parallel` step.
    Branch {
        /// The parallel step.
        parallel: String,
        /// The branch name.
        branch: String,
    },
    /// The body of a `map` step.
    Map {
        /// The map step.
        map: String,
    },
    /// A step of a `dag` (each its own sequence of one).
    Dag {
        /// The dag step.
        dag: String,
    },
    /// The workflow's `compensations`.
    Compensation,
}

/// The lifecycle events hooks and subscriptions name.
pub const LIFECYCLE_EVENTS: [&str; 7] = [
    "run.started",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "step.failed",
    "approval.requested",
    "approval.expired",
];

/// A lifecycle hook of a workflow (`on:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The event (one of [`LIFECYCLE_EVENTS`]).
    pub event: String,
    /// Where to POST it.
    pub url: Option<String>,
    /// The signing secret's name.
    pub secret: Option<String>,
    /// Or the workflow to start.
    pub start: Option<String>,
    /// Attempts before dead.
    pub max_attempts: u32,
}

/// A use of `secrets.NAME`, for checking that the secret exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// Line of the step (or workflow name) that uses it.
    pub line: u64,
    /// Column.
    pub column: u64,
}

impl Workflow {
    /// The step (or compensation step) with this id, nested ones included.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.index.get(id).map(|(s, _)| s)
    }

    /// Every step id (compensation and nested steps included), in no order.
    pub fn step_ids(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The sequence the step with this id belongs to.
    pub fn block_of(&self, id: &str) -> Option<&Block> {
        self.index.get(id).map(|(_, b)| b)
    }

    /// Indexes every step by id; called once the steps are final.
    pub(crate) fn build_index(&mut self) {
        fn walk(steps: &[Step], block: &Block, out: &mut HashMap<String, (Step, Block)>) {
            for s in steps {
                out.insert(s.id.clone(), (s.clone(), block.clone()));
                match &s.kind {
                    StepKind::Parallel { branches, .. } => {
                        for (name, inner) in branches {
                            let b = Block::Branch { parallel: s.id.clone(), branch: name.clone() };
                            walk(inner, &b, out);
                        }
                    }
                    StepKind::Map { steps: inner, .. } => walk(inner, &Block::Map { map: s.id.clone() }, out),
                    StepKind::Dag { steps: inner, .. } => walk(inner, &Block::Dag { dag: s.id.clone() }, out),
                    _ => {}
                }
            }
        }
        let mut index = HashMap::new();
        walk(&self.steps, &Block::Top, &mut index);
        walk(&self.compensations, &Block::Compensation, &mut index);
        self.index = index;
    }

    /// Applies input defaults from the inputs schema's properties.
    pub fn inputs_with_defaults(&self, given: &Value) -> Value {
        let mut out = match given {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(props) = self.inputs_schema.as_ref().and_then(|s| s.get("properties")).and_then(Value::as_object) {
            for (k, p) in props {
                if let (false, Some(d)) = (out.contains_key(k), p.get("default")) {
                    out.insert(k.clone(), d.clone());
                }
            }
        }
        Value::Object(out)
    }
}

/// Where control goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// To the step with this id.
    Step(String),
    /// The run ends.
    End,
}

impl Target {
    /// The step id, or `end`.
    pub fn name(&self) -> &str {
        match self {
            Target::Step(s) => s,
            Target::End => "end",
        }
    }
}

/// One step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Id.
    pub id: String,
    /// What it does.
    pub kind: StepKind,
    /// Where control goes after it completes (branches and switches decide
    /// for themselves).
    pub then: Target,
    /// Its guard: when false as control reaches it, the step is skipped.
    pub when: Option<crate::expr::Condition>,
    /// Where its failure goes instead of failing the run, first match wins.
    pub catch: Vec<Catcher>,
    /// Retriers, matched in order by the error's kind (the first whose
    /// `errors` match decides); empty: no retry.
    pub retry: Vec<RetryPolicy>,
    /// Attempt timeout.
    pub timeout: Option<Duration>,
    /// Most visits in one run.
    pub max_visits: Option<u32>,
    /// JSON Schema of the output.
    pub output_contract: Option<Value>,
    /// The compensation step that undoes this one.
    pub compensate: Option<String>,
    /// What its AI attempts may spend (all attempts of the step together).
    pub budget: Budget,
    /// Whether a resume may run it again.
    pub resumable: bool,
    /// The run data its templates and conditions read (nested steps'
    /// reads included for a container).
    pub reads: Reads,
}

/// One `catch` entry: the errors it matches and the handler step.
#[derive(Debug, Clone, PartialEq)]
pub struct Catcher {
    /// Error kinds: exact (`http.status`), a family (`http.*`) or any
    /// (`*`); empty matches any.
    pub errors: Vec<String>,
    /// The handler step (or the end of the step's sequence).
    pub next: Target,
}

impl Catcher {
    /// Whether it handles an error of this kind.
    pub fn matches(&self, kind: &str) -> bool {
        self.errors.is_empty() || self.errors.iter().any(|e| error_matches(e, kind))
    }
}

/// Whether the error pattern `pattern` matches the kind `kind`: `*` any;
/// `family.*` every kind under `family.`; otherwise the kind itself and the
/// kinds it is the start of (`http.status` matches `http.status.503`).
pub fn error_matches(pattern: &str, kind: &str) -> bool {
    let under = |p: &str| kind.strip_prefix(p).is_some_and(|rest| rest.starts_with('.'));
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(family) => under(family),
        None => pattern == kind || under(pattern),
    }
}

/// The run data a step reads: what a resume compares to decide whether the
/// step's input changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Step ids in `steps.ID`.
    pub steps: std::collections::BTreeSet<String>,
    /// Steps whose whole output is read (`steps.ID.output`, not a field of it).
    pub whole: std::collections::BTreeSet<String>,
    /// Output fields read: `steps.ID.output.FIELD` as `(ID, FIELD)`.
    pub fields: std::collections::BTreeSet<(String, String)>,
    /// Input names in `inputs.NAME`.
    pub inputs: std::collections::BTreeSet<String>,
    /// It reads `steps` or `inputs` as a whole (or a prompt template
    /// that Cairn cannot see into): any change counts.
    pub all: bool,
    /// It reads `run.now`: its start records the time it read.
    pub now: bool,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// A native handler; its input is a template.
    Task {
        /// Handler name.
        handler: String,
        /// Input template.
        input: Value,
    },
    /// Work done by external workers polling a task queue over HTTP.
    Queue {
        /// The queue.
        queue: String,
        /// Input template.
        input: Value,
        /// Longest a claimed task may go without a heartbeat.
        heartbeat_timeout: Duration,
    },
    /// A pure computation of the output from a template.
    Transform {
        /// Output template.
        output: Value,
    },
    /// If/else.
    Branch {
        /// The condition.
        condition: Condition,
        /// Target when it holds.
        then: Target,
        /// Target otherwise.
        otherwise: Target,
    },
    /// An HTTP call.
    Http {
        /// `{method, url, headers, query, body}` with templates.
        request: Value,
        /// Request timeout.
        timeout: Duration,
        /// 4xx statuses retried anyway.
        retry_on_status: Vec<u16>,
        /// Whether sending it twice is harmless.
        idempotent: bool,
    },
    /// A durable timer.
    Wait {
        /// How long, from when the step starts.
        duration: Option<Duration>,
        /// Or until this instant (a template rendering to RFC 3339).
        until: Option<Value>,
    },
    /// First matching case.
    Switch {
        /// Conditions and targets, in order.
        cases: Vec<(Condition, Target)>,
        /// Target when none holds.
        default: Target,
    },
    /// Branches that run at the same time; the output maps each branch's
    /// name to the output of its last step.
    Parallel {
        /// Branch names and their steps, in listed order.
        branches: Vec<(String, Vec<Step>)>,
        /// Fail as soon as one branch fails, cancelling the others.
        fail_fast: bool,
        /// Most branches running at once.
        max_concurrency: Option<u32>,
        /// A race: the first branch to complete wins, the others are
        /// cancelled, and the output is `{ winner, output }`.
        compete: bool,
        /// The output as a list of the branches' outputs in listed order
        /// (instead of an object keyed by branch name).
        as_list: bool,
    },
    /// The same steps for every item of a list; the output lists each
    /// iteration's last output in item order.
    Map {
        /// Template rendering to the list.
        items: Value,
        /// The steps each iteration runs (`item` and `index` in templates).
        steps: Vec<Step>,
        /// Most iterations running at once.
        max_concurrency: Option<u32>,
        /// Fail as soon as one iteration fails, cancelling the others.
        fail_fast: bool,
    },
    /// Steps that run as a graph: each starts once every step it depends
    /// on has completed (or was skipped by its guard); the output maps each
    /// step id to its output (`null` when skipped).
    Dag {
        /// The steps, in listed order; each ends its own thread.
        steps: Vec<Step>,
        /// For each step, the indices in `steps` of the steps it depends on.
        depends_on: Vec<Vec<usize>>,
        /// Fail as soon as one step fails, cancelling the running ones.
        fail_fast: bool,
        /// Most steps running at once.
        max_concurrency: Option<u32>,
    },
    /// A model call whose output is checked against the output contract
    /// and retried with the errors fed back.
    Ai(Box<AiStep>),
    /// A form a person fills in; the run waits for it.
    Form(Box<crate::human::FormStep>),
    /// An approval by listed approvers; the run waits for the quorum.
    Approval(Box<crate::human::ApprovalStep>),
    /// Ends the run (or, in a branch or iteration, its container) as
    /// failed with a named error and a cause.
    Fail {
        /// The error kind.
        error: String,
        /// The cause: a template rendering to the message.
        cause: Value,
    },
    /// A child run of another published workflow; the step waits for it.
    Workflow {
        /// The child workflow's name.
        name: String,
        /// Its version (default: the latest when the step starts).
        version: Option<u32>,
        /// The child's inputs: a template.
        inputs: Value,
    },
}

impl StepKind {
    /// Whether the step runs an effect outside the engine (and so is
    /// recorded as started before it runs).
    pub fn has_effect(&self) -> bool {
        matches!(
            self,
            StepKind::Task { .. }
                | StepKind::Queue { .. }
                | StepKind::Http { .. }
                | StepKind::Workflow { .. }
                | StepKind::Ai(_)
                | StepKind::Form(_)
                | StepKind::Approval(_)
        )
    }

    /// Whether the step holds nested steps.
    pub fn is_container(&self) -> bool {
        matches!(self, StepKind::Parallel { .. } | StepKind::Map { .. } | StepKind::Dag { .. })
    }

    /// The kind's name in the language.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Task { .. } => "task",
            StepKind::Queue { .. } => "queue",
            StepKind::Transform { .. } => "transform",
            StepKind::Branch { .. } => "branch",
            StepKind::Switch { .. } => "switch",
            StepKind::Wait { .. } => "wait",
            StepKind::Http { .. } => "http",
            StepKind::Parallel { .. } => "parallel",
            StepKind::Map { .. } => "map",
            StepKind::Dag { .. } => "dag",
            StepKind::Workflow { .. } => "workflow",
            StepKind::Ai(_) => "ai",
            StepKind::Form(_) => "form",
            StepKind::Approval(_) => "approval",
            StepKind::Fail { .. } => "fail",
        }
    }
}

/// When and how often a failed attempt is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// First wait.
    pub initial_interval: Duration,
    /// Growth factor.
    pub backoff_coefficient: f64,
    /// Longest wait.
    pub max_interval: Duration,
    /// Randomised fraction of each wait, 0..=1.
    pub jitter: f64,
    /// Error kinds never retried.
    pub non_retryable: Vec<String>,
    /// The errors this policy (one retrier of a step's list) applies to:
    /// patterns as in `catch`; empty: any.
    pub errors: Vec<String>,
    /// Longest time a visit's retries may go on, from its first failure:
    /// a retry that would fall due later is not made.
    pub max_duration: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(300),
            jitter: 0.1,
            non_retryable: Vec::new(),
            errors: Vec::new(),
            max_duration: None,
        }
    }
}

impl RetryPolicy {
    /// Whether this retrier applies to an error of this kind.
    pub fn matches(&self, kind: &str) -> bool {
        self.errors.is_empty() || self.errors.iter().any(|e| error_matches(e, kind))
    }

    /// The wait before attempt `next_attempt` (2, 3, …), with jitter drawn
    /// from `seed` so the decision is reproducible on replay.
    pub fn backoff(&self, next_attempt: u32, seed: u64) -> Duration {
        let exp = i32::try_from(next_attempt.saturating_sub(2)).unwrap_or(i32::MAX);
        let base = self.initial_interval.as_secs_f64() * self.backoff_coefficient.powi(exp);
        let base = base.min(self.max_interval.as_secs_f64());
        // seed → [-1, 1)
        let unit = (seed % 2_000_001) as f64 / 1_000_000.0 - 1.0;
        let secs = (base * (1.0 + self.jitter * unit)).max(0.0);
        Duration::from_secs_f64(secs)
    }
}

/// An `ai` step, compiled.
#[derive(Debug, Clone)]
pub struct AiStep {
    /// The model name as written (an alias, `provider/model` or `scripted`).
    pub model: String,
    /// What is sent.
    pub prompt: Prompt,
    /// Values templates of a prompt template see as `vars` (a template).
    pub vars: Option<Value>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Most output tokens per attempt.
    pub max_output_tokens: Option<u32>,
    /// Attempts whose output is judged, in all (default 3).
    pub attempts: u32,
    /// Structured-output mode asked for first (default: the model's).
    pub mode: Option<crate::config::OutputMode>,
    /// Backoff for transport failures (connection errors, timeouts, 429, 5xx).
    pub transport: RetryPolicy,
    /// Scripted replies by AI attempt number, for the scripted provider.
    pub scripted: Vec<Value>,
}

/// The messages of an `ai` step, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `(role, template)` pairs.
    Messages(Vec<(String, String)>),
    /// A versioned prompt template from the prompt library.
    Template {
        /// Template id.
        id: String,
        /// Version.
        version: u32,
    },
}
