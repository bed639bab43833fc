//! The decider for `ai` steps. Within one step attempt an AI step makes AI
//! attempts: each is recorded (`AiAttemptStarted`) before the call and its
//! reply (`AiAttemptCompleted`) or failure (`AiAttemptFailed`) after it. A
//! reply is judged here: it completes the step, or is rejected
//! (`AiOutputRejected`) and fed back to the next attempt, up to `attempts`
//! judged replies. Transport failures back off on a durable timer, counted
//! apart; a refused structured-output mode falls back at once. Budgets are
//! checked before every attempt.

use cairn_events::{
    AiAttemptStarted, AiEstimate, AiMessage, AiOutputRejected, AiParams, AiPrice, Event, SchemaViolation,
    StepCompleted, StepFailed, TimerFired, TimerStarted,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Decision, Effect, Execution, InFlight, RunState, seed};
use crate::ai::{AiStep, Prompt};
use crate::config::OutputMode;
use crate::model::{Budget, Workflow};
use crate::settings::Surroundings;

/// What one AI step instance has done, folded from its events. Counters
/// marked "this attempt" restart when the step starts a new attempt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AiProgress {
    /// The highest AI attempt number so far (numbers go on across step attempts).
    pub last_number: u32,
    /// Money spent by every attempt of the step, in micros.
    pub spent_micros: u64,
    /// Tokens used by every attempt of the step.
    pub spent_tokens: u64,
    /// The AI attempt recorded as started with no outcome: number and request.
    pub open: Option<(u32, Value)>,
    /// Replies judged (this attempt).
    pub judged: u32,
    /// Transport failures since the last reply (this attempt).
    pub transport_failures: u32,
    /// The structured-output mode after fallbacks (this attempt).
    pub mode: Option<OutputMode>,
    /// The last outcome (this attempt).
    pub last: Option<AiOutcome>,
    /// Rejected replies and their errors, fed back in order (this attempt).
    pub rejected: Vec<(String, Vec<SchemaViolation>)>,
    /// A transport backoff timer: id and due time (this attempt).
    pub backoff: Option<(String, DateTime<Utc>)>,
    /// The most output tokens one reply used.
    pub max_output_tokens_seen: u64,
    /// A backoff timer fired: the next decision makes the attempt (this attempt).
    pub retry_ready: bool,
}

/// The last thing an AI attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum AiOutcome {
    /// A reply, not yet judged.
    Replied(String),
    /// The reply was rejected.
    Rejected,
    /// The call failed.
    Failed {
        /// Kind.
        kind: String,
        /// Message.
        message: String,
        /// Whether another call may help.
        retryable: bool,
        /// `Retry-After`.
        retry_after_ms: Option<u64>,
        /// The mode to fall back to.
        fallback: Option<OutputMode>,
    },
}

impl AiProgress {
    /// Forgets what the last step attempt did, keeping numbers and spend.
    pub(super) fn restart(&mut self) {
        *self = AiProgress {
            last_number: self.last_number,
            spent_micros: self.spent_micros,
            spent_tokens: self.spent_tokens,
            max_output_tokens_seen: self.max_output_tokens_seen,
            ..AiProgress::default()
        };
    }
}

/// Folds an AI event; `false` when `event` is not one.
pub(super) fn evolve(s: &mut RunState, event: &Event) -> bool {
    match event {
        Event::AiAttemptStarted(e) => {
            let p = s.ai.entry(e.step_id.clone()).or_default();
            p.last_number = p.last_number.max(e.attempt);
            p.open = Some((e.attempt, serde_json::to_value(e).unwrap_or(Value::Null)));
            p.retry_ready = false;
            p.mode = e.params.mode.as_deref().and_then(OutputMode::parse);
        }
        Event::AiAttemptCompleted(e) => {
            let p = s.ai.entry(e.step_id.clone()).or_default();
            p.open = None;
            p.judged += 1;
            p.transport_failures = 0;
            p.backoff = None;
            let tokens = e.usage.input_tokens + e.usage.output_tokens;
            let micros = e.cost.as_ref().map_or(0, |c| c.micros);
            p.spent_tokens += tokens;
            p.spent_micros += micros;
            p.max_output_tokens_seen = p.max_output_tokens_seen.max(e.usage.output_tokens);
            p.last = Some(AiOutcome::Replied(e.raw_output.clone()));
            s.spent_tokens += tokens;
            s.spent_micros += micros;
        }
        Event::AiAttemptFailed(e) => {
            let p = s.ai.entry(e.step_id.clone()).or_default();
            p.open = None;
            p.backoff = None;
            let fallback = e.fallback_mode.as_deref().and_then(OutputMode::parse);
            if fallback.is_some() {
                p.mode = fallback;
            } else {
                p.transport_failures += 1;
            }
            p.last = Some(AiOutcome::Failed {
                kind: e.error_kind.clone(),
                message: e.message.clone(),
                retryable: e.retryable,
                retry_after_ms: e.retry_after_ms,
                fallback,
            });
        }
        Event::AiOutputRejected(e) => {
            let p = s.ai.entry(e.step_id.clone()).or_default();
            if let Some(AiOutcome::Replied(raw)) = p.last.take() {
                p.rejected.push((raw, e.errors.clone()));
            }
            p.last = Some(AiOutcome::Rejected);
        }
        _ => return false,
    }
    true
}

/// Folds an AI backoff timer; `false` when it is not one.
pub(super) fn evolve_timer(s: &mut RunState, event: &Event) -> bool {
    match event {
        Event::TimerStarted(t) if t.purpose == "retry" => {
            if let Some(p) = t.step_id.as_ref().and_then(|st| s.ai.get_mut(st)) {
                p.backoff = Some((t.timer_id.clone(), t.due_at));
                return true;
            }
            false
        }
        Event::TimerFired(t) => {
            for p in s.ai.values_mut() {
                if p.backoff.as_ref().is_some_and(|(id, _)| id == &t.timer_id) {
                    p.backoff = None;
                    p.retry_ready = true;
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// The messages an AI step starts with, rendered: recorded in its
/// `StepStarted` input, with the template it came from.
pub(super) fn start_input(
    w: &Workflow,
    s: &RunState,
    a: &AiStep,
    ctx: &crate::template::Scope,
) -> Result<Value, String> {
    let (messages, template) = match &a.prompt {
        Prompt::Messages(m) => (m.clone(), None),
        Prompt::Template { id, version } => {
            let key = format!("{id}@{version}");
            let (messages, sha256) = Surroundings::of(w, s.settings.as_ref()).prompt(&key)?;
            (messages, Some(json!({"id": key, "sha256": sha256})))
        }
    };
    let mut ctx = ctx.clone();
    if let Some(v) = &a.vars {
        let vars = crate::template::render(v, &ctx).map_err(|e| format!("`vars`: {e}"))?;
        ctx.set("vars", vars);
    }
    let mut rendered = Vec::with_capacity(messages.len());
    for (role, t) in messages {
        let content = match crate::template::render(&Value::String(t), &ctx).map_err(|e| e.to_string())? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        rendered.push(AiMessage { role, content });
    }
    let mut input = json!({ "model": a.model, "messages": rendered });
    if let Some(t) = template {
        input["template"] = t;
    }
    Ok(input)
}

fn step_failed(inst: &str, attempt: u32, kind: &str, message: String, retryable: bool) -> Event {
    Event::StepFailed(StepFailed {
        step_id: inst.to_owned(),
        attempt,
        error_kind: kind.to_owned(),
        message,
        retryable,
        retry_after_ms: None,
    })
}

/// Decides for an in-flight AI step.
pub(super) fn decide(f: &InFlight<'_>, a: &AiStep, d: &mut Decision) {
    let InFlight { s, st, inst, attempt, now, .. } = *f;
    let fresh = AiProgress::default();
    let p = s.ai.get(inst).unwrap_or(&fresh);
    let contract = st.output_contract.as_ref();
    if let Some((number, request)) = &p.open {
        let ctx = super::context(s, inst);
        let scripted =
            a.scripted.iter().map(|r| crate::template::render(r, &ctx).unwrap_or_else(|_| r.clone())).collect();
        d.execute.push(Execution {
            step_id: inst.to_owned(),
            attempt,
            effect: Effect::Ai { number: *number, scripted },
            input: request.clone(),
            timeout: st.timeout,
        });
        return;
    }
    match &p.last {
        Some(AiOutcome::Replied(raw)) => match crate::ai::judge(contract, raw) {
            Ok(output) => d.append.push(Event::StepCompleted(StepCompleted {
                step_id: inst.to_owned(),
                attempt,
                output,
                duration_ms: 0,
            })),
            Err(errors) => d.append.push(Event::AiOutputRejected(AiOutputRejected {
                step_id: inst.to_owned(),
                attempt: p.last_number,
                errors,
            })),
        },
        Some(AiOutcome::Rejected) if p.judged >= a.attempts => {
            let errors = p.rejected.last().map(|(_, e)| crate::contract::describe(e)).unwrap_or_default();
            d.append.push(step_failed(
                inst,
                attempt,
                "ai.invalid_output",
                format!(
                    "{} repl{} did not satisfy the output contract; the last: {errors}",
                    p.judged,
                    if p.judged == 1 { "y" } else { "ies" }
                ),
                true,
            ));
        }
        Some(AiOutcome::Failed { fallback: None, retryable, kind, message, retry_after_ms }) if !p.retry_ready => {
            if *retryable && p.transport_failures < a.transport.max_attempts {
                match &p.backoff {
                    Some((id, due)) if now >= *due => {
                        d.append.push(Event::TimerFired(TimerFired { timer_id: id.clone(), due_at: *due }));
                    }
                    Some((_, due)) => d.wake(*due),
                    None => {
                        let n = p.transport_failures + 1;
                        let wait = a
                            .transport
                            .backoff(n, seed(s.run_id, inst, p.last_number))
                            .max(std::time::Duration::from_millis(retry_after_ms.unwrap_or(0)));
                        let due_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
                        d.append.push(Event::TimerStarted(TimerStarted {
                            timer_id: format!("{inst}#{attempt}#ai{}", p.last_number),
                            step_id: Some(inst.to_owned()),
                            due_at,
                            purpose: "retry".into(),
                        }));
                    }
                }
            } else {
                let why = if *retryable {
                    format!("after {} tries", p.transport_failures)
                } else {
                    "not retryable".to_owned()
                };
                d.append.push(step_failed(
                    inst,
                    attempt,
                    kind,
                    format!("the model call failed ({why}): {message}"),
                    *retryable,
                ));
            }
        }
        _ => begin(f, a, p, d),
    }
}

/// Starts the next AI attempt, or fails the step when a budget forbids it.
fn begin(f: &InFlight<'_>, a: &AiStep, p: &AiProgress, d: &mut Decision) {
    let InFlight { w, s, st, inst, attempt, input, .. } = *f;
    let spec = match Surroundings::of(w, s.settings.as_ref()).model(&st.id, &a.model, !a.scripted.is_empty()) {
        Ok(spec) => spec,
        Err(e) => {
            d.append.push(step_failed(inst, attempt, "ai.config", e, false));
            return;
        }
    };
    let contract = st.output_contract.as_ref();
    let mode = if contract.is_none() { OutputMode::None } else { p.mode.or(a.mode).unwrap_or(spec.mode) };
    let base: Vec<AiMessage> =
        input.get("messages").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default();
    let messages = crate::ai::attempt_messages(&base, contract, mode, &p.rejected);
    let est_in = crate::ai::estimate_tokens(&messages);
    let est_out = a.max_output_tokens.map_or(p.max_output_tokens_seen, u64::from);
    let number = p.last_number + 1;
    let est_micros = spec.price.as_ref().map(|pr| pr.micros(est_in, est_out));
    for (whose, budget, spent_tokens, spent_micros) in [
        (format!("step `{inst}`"), st.budget, p.spent_tokens, p.spent_micros),
        ("the run".to_owned(), w.budget, s.spent_tokens, s.spent_micros),
    ] {
        if let Some(message) =
            over_budget(&whose, budget, spent_tokens, spent_micros, est_in + est_out, est_micros, &spec, number)
        {
            let kind = if message.contains("no price") { "budget.unpriced" } else { "budget.exceeded" };
            d.append.push(step_failed(inst, attempt, kind, message, false));
            return;
        }
    }
    let params = AiParams {
        mode: Some(mode.name().to_owned()),
        estimate: Some(AiEstimate { input_tokens: est_in, output_tokens: est_out, cost_micros: est_micros }),
        temperature: a.temperature,
        max_output_tokens: a.max_output_tokens,
        price: spec.price.as_ref().map(|pr| AiPrice {
            input_per_million: pr.input_per_million,
            output_per_million: pr.output_per_million,
            currency: pr.currency.clone(),
            table: pr.table.clone(),
        }),
        template: input.get("template").cloned(),
        fallback_to: match &p.last {
            Some(AiOutcome::Failed { fallback: Some(m), .. }) => Some(m.name().to_owned()),
            _ => None,
        },
        other: Default::default(),
    };
    d.append.push(Event::AiAttemptStarted(AiAttemptStarted {
        step_id: inst.to_owned(),
        attempt: number,
        provider: spec.provider.clone(),
        model: spec.model.clone(),
        messages,
        params,
    }));
}

/// Why an attempt of this estimated size may not be made, if it may not.
#[allow(clippy::too_many_arguments)]
fn over_budget(
    whose: &str,
    b: Budget,
    spent_tokens: u64,
    spent_micros: u64,
    est_tokens: u64,
    est_micros: Option<u64>,
    spec: &crate::config::ModelSpec,
    number: u32,
) -> Option<String> {
    if let Some(max) = b.max_tokens
        && spent_tokens + est_tokens > max
    {
        return Some(format!(
            "AI attempt {number} was not made: {whose} has used {spent_tokens} tokens and the attempt needs about {est_tokens} more, over its budget of max_tokens {max}"
        ));
    }
    let max_cost = b.max_cost?;
    let limit = (max_cost * 1_000_000.0).round() as u64;
    let Some(est) = est_micros else {
        return Some(format!(
            "{whose} has budget.max_cost {max_cost} but model `{}` ({}/{}) has no price, so its cost cannot be bounded; add input_per_million and output_per_million to it under `models:` in cairn.yaml",
            spec.alias, spec.provider, spec.model
        ));
    };
    let currency = spec.price.as_ref().map_or("USD", |p| p.currency.as_str());
    (spent_micros + est > limit).then(|| {
        format!(
            "AI attempt {number} was not made: {whose} has spent {} {currency} and the attempt would cost about {} more, over its budget of max_cost {max_cost}",
            money(spent_micros),
            money(est)
        )
    })
}

fn money(micros: u64) -> String {
    format!("{:.6}", micros as f64 / 1_000_000.0)
}
