//! Native task handlers: Cairn's activities. An embedding program registers
//! its own with [`TaskRegistry::register`], as a plain `async fn` (or a
//! closure returning a future):
//!
//! ```ignore
//! async fn shout(input: Value, ctx: TaskContext) -> Result<Value, TaskError> {
//!     Ok(json!({ "text": input["text"].as_str().unwrap_or("").to_uppercase() }))
//! }
//! tasks.register("shout", shout);
//! ```
//!
//! The built-ins are `echo`, `log`, `fail`, `increment` and `sleep`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: String,
    /// The attempt, from 1.
    pub attempt: u32,
}

impl TaskContext {
    /// A key that is the same for every execution of this attempt (a retry
    /// of the same attempt after a crash reuses it): send it to services as
    /// an idempotency key.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.run_id, self.step_id, self.attempt)
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct TaskError {
    /// Stable kind, matched by `retry.non_retryable`.
    pub kind: String,
    /// Message.
    pub message: String,
    /// Whether a retry may help.
    pub retryable: bool,
    /// The least wait before a retry (a service's `Retry-After`).
    pub retry_after_ms: Option<u64>,
}

impl TaskError {
    /// An error of `kind`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        TaskError { kind: kind.into(), message: message.into(), retryable, retry_after_ms: None }
    }
}

/// A native step implementation. Any `async fn(Value, TaskContext) ->
/// Result<Value, TaskError>` (or closure returning such a future) is one.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one attempt.
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>>;
}

impl<F, Fut> TaskHandler for F
where
    F: Fn(Value, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> {
        Box::pin(self(input, ctx))
    }
}

/// The handlers a runner can call, by name.
#[derive(Clone, Default)]
pub struct TaskRegistry {
    handlers: BTreeMap<String, Arc<dyn TaskHandler>>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl TaskRegistry {
    /// The built-in handlers.
    pub fn builtin() -> Self {
        let mut r = TaskRegistry::default();
        r.register("echo", echo);
        r.register("log", log);
        r.register("fail", fail);
        r.register("increment", increment);
        r.register("sleep", sleep);
        r
    }

    /// Adds or replaces a handler.
    pub fn register(&mut self, name: &str, handler: impl TaskHandler) {
        self.handlers.insert(name.to_owned(), Arc::new(handler));
    }

    /// The handler with this name.
    pub fn get(&self, name: &str) -> Option<Arc<dyn TaskHandler>> {
        self.handlers.get(name).cloned()
    }

    /// Names of all handlers, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.handlers.keys().map(String::as_str).collect()
    }
}

/// `echo`: returns its input.
async fn echo(input: Value, _ctx: TaskContext) -> Result<Value, TaskError> {
    Ok(input)
}

/// `log`: logs `message` (or the whole input) and returns the input.
async fn log(input: Value, ctx: TaskContext) -> Result<Value, TaskError> {
    let msg = input.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| input.to_string());
    tracing::info!(step = %ctx.step_id, "{msg}");
    Ok(input)
}

/// `increment`: the input with `counter` one higher (from 0).
async fn increment(input: Value, _ctx: TaskContext) -> Result<Value, TaskError> {
    let mut out = input;
    let n = out.get("counter").and_then(Value::as_i64).unwrap_or(0);
    match out.as_object_mut() {
        Some(o) => {
            o.insert("counter".into(), json!(n + 1));
        }
        None => out = json!({ "counter": n + 1 }),
    }
    Ok(out)
}

/// `sleep`: waits `ms` milliseconds.
async fn sleep(input: Value, _ctx: TaskContext) -> Result<Value, TaskError> {
    let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
}

/// `fail`: fails with `{kind, message, retryable}` while the attempt is below
/// `succeed_on_attempt` (always, when absent); then returns `{attempt}`.
async fn fail(input: Value, ctx: TaskContext) -> Result<Value, TaskError> {
    let succeed_on = input.get("succeed_on_attempt").and_then(Value::as_u64);
    if succeed_on.is_some_and(|n| u64::from(ctx.attempt) >= n) {
        return Ok(json!({ "attempt": ctx.attempt }));
    }
    Err(TaskError::new(
        input.get("kind").and_then(Value::as_str).unwrap_or("task.failed"),
        input.get("message").and_then(Value::as_str).unwrap_or("the fail task failed as asked"),
        input.get("retryable").and_then(Value::as_bool).unwrap_or(true),
    ))
}
