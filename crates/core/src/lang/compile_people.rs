//! Compiles the steps that call models and people: `ai`, `form` and
//! `approval`, and `budget`s. Part of [`super::compile`]; every problem is
//! reported with its line and column and a fix.

use serde_json::Value;
use serde_saphyr::Spanned;

use super::ctx::Ctx;
use super::raw::{RawAi, RawApproval, RawBudget, RawField, RawForm, RawRetry};
use crate::ai::{AiStep, Prompt};
use crate::config::OutputMode;
use crate::human::{ApprovalStep, Field, FieldType, FormStep, OnTimeout, Quorum};
use crate::model::{Budget, RetryPolicy, StepKind};
use crate::template;

fn check_template(cx: &mut Ctx<'_>, at: &Spanned<String>, what: &str, v: &Value) {
    // What an AI step renders also reads its `vars`.
    let extra: &[&str] = if what.starts_with("ai") { &["vars"] } else { &[] };
    if let Err(e) = template::check_with(v, extra) {
        cx.at(at, "bad-template", format!("step `{}` `{what}`: {e}", at.value), None);
    }
}

/// A step's or the workflow's `budget`.
pub(super) fn budget(cx: &mut Ctx<'_>, at: &Spanned<String>, b: Option<&RawBudget>) -> Budget {
    let Some(b) = b else { return Budget::default() };
    if b.max_cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
        cx.at(at, "bad-budget", "`budget.max_cost` must be an amount of 0 or more, e.g. `0.50`".into(), None);
    }
    if b.max_cost.is_none() && b.max_tokens.is_none() {
        cx.at(at, "bad-budget", "`budget` sets no limit".into(), Some("give `max_cost`, `max_tokens` or both".into()));
    }
    Budget { max_cost: b.max_cost, max_tokens: b.max_tokens }
}

/// Applies a raw retry block over `policy`.
pub(super) fn retry_policy(
    cx: &mut Ctx<'_>,
    at: &Spanned<String>,
    r: &RawRetry,
    mut policy: RetryPolicy,
) -> RetryPolicy {
    let id = &at.value;
    if let Some(n) = r.max_attempts {
        if n == 0 {
            cx.at(
                at,
                "bad-retry",
                format!("step `{id}`: `max_attempts` must be at least 1"),
                Some("1 means no retry".into()),
            );
        }
        policy.max_attempts = n;
    }
    for (span, slot) in
        [(&r.initial_interval, &mut policy.initial_interval), (&r.max_interval, &mut policy.max_interval)]
    {
        if let Some(d) = span.as_ref().and_then(|d| cx.duration(d)) {
            *slot = d;
        }
    }
    if let Some(c) = r.backoff_coefficient {
        if !(1.0..=100.0).contains(&c) {
            cx.at(at, "bad-retry", format!("step `{id}`: `backoff_coefficient` {c} is outside 1 to 100"), None);
        }
        policy.backoff_coefficient = c;
    }
    if let Some(j) = r.jitter {
        if !(0.0..=1.0).contains(&j) {
            cx.at(at, "bad-retry", format!("step `{id}`: `jitter` {j} is outside 0 to 1"), None);
        }
        policy.jitter = j;
    }
    policy.non_retryable = r.non_retryable.clone();
    policy
}

/// `ai:`.
pub(super) fn ai(cx: &mut Ctx<'_>, at: &Spanned<String>, a: &RawAi, contract: Option<&Value>) -> Option<StepKind> {
    let id = &at.value;
    let given = [a.prompt.is_some() || a.system.is_some(), a.messages.is_some(), a.template.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        cx.at(
            at,
            "bad-ai",
            format!(
                "ai step `{id}` needs exactly one of `prompt` (with an optional `system`), `messages` and `template`"
            ),
            Some("e.g. `ai: { model: writer, prompt: \"Write about {{ inputs.topic }}\" }`".into()),
        );
    }
    if a.system.is_some() && a.prompt.is_none() && a.messages.is_none() && a.template.is_none() {
        cx.at(at, "bad-ai", format!("ai step `{id}` has a `system` message but no `prompt`"), None);
    }
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(("system".to_owned(), s.clone()));
    }
    if let Some(p) = &a.prompt {
        messages.push(("user".to_owned(), p.clone()));
    }
    for m in a.messages.iter().flatten() {
        if !["system", "user", "assistant"].contains(&m.role.value.as_str()) {
            cx.at(&m.role, "bad-ai", format!("message role `{}` is not system, user or assistant", m.role.value), None);
        }
        messages.push((m.role.value.clone(), m.content.clone()));
    }
    if a.messages.as_ref().is_some_and(Vec::is_empty) {
        cx.at(at, "bad-ai", format!("ai step `{id}` has an empty `messages` list"), None);
    }
    for (_, t) in &messages {
        check_template(cx, at, "ai", &Value::String(t.clone()));
    }
    if let Some(v) = &a.vars {
        check_template(cx, at, "ai.vars", v);
    }
    let prompt = match &a.template {
        Some(t) => match t.value.split_once('@').map(|(i, v)| (i, v.parse::<u32>())) {
            Some((i, Ok(v))) if !i.is_empty() && v > 0 => Prompt::Template { id: i.to_owned(), version: v },
            _ => {
                cx.at(
                    t,
                    "bad-ai",
                    format!("`template: {}` is not ID@VERSION", t.value),
                    Some("e.g. `template: blog-draft@2` for prompts/blog-draft@2.yaml".into()),
                );
                Prompt::Messages(Vec::new())
            }
        },
        None => Prompt::Messages(messages),
    };
    if a.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        cx.at(at, "bad-ai", format!("ai step `{id}`: `temperature` must be 0 to 2"), None);
    }
    if a.attempts == Some(0) {
        cx.at(
            at,
            "bad-ai",
            format!("ai step `{id}`: `attempts` must be at least 1"),
            Some("1 means no feedback retry".into()),
        );
    }
    if a.max_output_tokens == Some(0) {
        cx.at(at, "bad-ai", format!("ai step `{id}`: `max_output_tokens` must be at least 1"), None);
    }
    let mode = a.structured_output.as_ref().and_then(|m| match OutputMode::parse(&m.value) {
        Some(mode) => Some(mode),
        None => {
            cx.at(
                m,
                "bad-ai",
                format!("`structured_output: {}` is not json_schema, json_object or none", m.value),
                None,
            );
            None
        }
    });
    if contract.is_none() && (a.attempts.is_some_and(|n| n > 1) || mode.is_some_and(|m| m != OutputMode::None)) {
        cx.at(
            at,
            "bad-ai",
            format!("ai step `{id}` asks for structured output or feedback attempts but has no `output_contract`"),
            Some(
                "add `output_contract:` (a JSON Schema of the output), or remove `attempts`/`structured_output`".into(),
            ),
        );
    }
    let transport = match &a.transport_retry {
        Some(r) => retry_policy(cx, at, r, crate::ai::default_transport()),
        None => crate::ai::default_transport(),
    };
    let scripted = a.scripted.clone().unwrap_or_default();
    for r in &scripted {
        check_template(cx, at, "ai.scripted", r);
    }
    if a.scripted.as_ref().is_some_and(Vec::is_empty) {
        cx.at(
            at,
            "bad-ai",
            format!("ai step `{id}` has an empty `scripted` list"),
            Some("give at least one reply".into()),
        );
    }
    cx.models.push(crate::model::ModelRef {
        step: id.clone(),
        model: a.model.value.clone(),
        template: a.template.as_ref().map(|t| t.value.clone()),
        scripted: !scripted.is_empty(),
        line: a.model.referenced.line(),
        column: a.model.referenced.column(),
    });
    Some(StepKind::Ai(Box::new(AiStep {
        model: a.model.value.clone(),
        prompt,
        vars: a.vars.clone(),
        temperature: a.temperature,
        max_output_tokens: a.max_output_tokens,
        attempts: a.attempts.unwrap_or(crate::ai::DEFAULT_ATTEMPTS).max(1),
        mode,
        transport,
        scripted,
    })))
}

fn deadlines(
    cx: &mut Ctx<'_>,
    at: &Spanned<String>,
    deadline: Option<&Spanned<String>>,
    reminders: &[Spanned<String>],
) -> (Option<std::time::Duration>, Vec<std::time::Duration>) {
    let d = deadline.and_then(|d| cx.duration(d));
    let mut rs = Vec::new();
    for r in reminders {
        if let Some(v) = cx.duration(r) {
            match d {
                None => cx.at(
                    r,
                    "bad-reminder",
                    format!("step `{}` has reminders but no `deadline` they count back from", at.value),
                    Some("add `deadline: 2d`, or remove `reminders`".into()),
                ),
                Some(d) if v >= d => cx.at(
                    r,
                    "bad-reminder",
                    format!("reminder `{}` before the deadline is as long as the deadline itself", r.value),
                    Some("a reminder is a duration before the deadline, shorter than it".into()),
                ),
                _ => rs.push(v),
            }
        }
    }
    (d, rs)
}

fn field(cx: &mut Ctx<'_>, f: &RawField) -> Option<Field> {
    let name = f.name.value.clone();
    if !super::ctx::valid_step_id(&name) {
        cx.at(
            &f.name,
            "bad-field",
            format!("field name `{name}` is not valid"),
            Some(
                "use letters, digits or `_`, starting with a letter: templates read it as `steps.ID.output.NAME`"
                    .into(),
            ),
        );
    }
    let kind = match &f.field_type {
        None => FieldType::Text,
        Some(t) => match FieldType::parse(&t.value) {
            Some(k) => k,
            None => {
                let help = super::did_you_mean(&t.value, FieldType::NAMES.split(", "))
                    .map_or_else(|| format!("the types are {}", FieldType::NAMES), |d| format!("did you mean `{d}`?"));
                cx.at(t, "bad-field", format!("field `{name}`: no field type `{}`", t.value), Some(help));
                return None;
            }
        },
    };
    let options: Vec<String> =
        f.options.iter().map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned)).collect();
    let choice = matches!(kind, FieldType::Select | FieldType::Multiselect);
    if choice && options.is_empty() {
        cx.at(&f.name, "bad-field", format!("field `{name}` is a {} with no `options`", kind.name()), None);
    }
    if !choice && !options.is_empty() {
        cx.at(
            &f.name,
            "bad-field",
            format!("field `{name}` has `options`, which only select and multiselect fields take"),
            None,
        );
    }
    if (f.min.is_some() || f.max.is_some()) && !matches!(kind, FieldType::Number | FieldType::Integer) {
        cx.at(
            &f.name,
            "bad-field",
            format!("field `{name}`: `min`/`max` apply to number and integer fields"),
            Some("use `min_length`/`max_length` for text".into()),
        );
    }
    if let (Some(a), Some(b)) = (f.min, f.max)
        && a > b
    {
        cx.at(&f.name, "bad-field", format!("field `{name}`: `min` {a} is more than `max` {b}"), None);
    }
    if let Some(p) = &f.pattern
        && let Err(e) = regex::Regex::new(p)
    {
        cx.at(&f.name, "bad-field", format!("field `{name}`: `pattern` is not a regular expression: {e}"), None);
    }
    let out = Field {
        name,
        kind,
        label: f.label.clone(),
        required: f.required,
        default: None,
        min: f.min,
        max: f.max,
        min_length: f.min_length,
        max_length: f.max_length,
        pattern: f.pattern.clone(),
        options,
        help: f.help.clone(),
    };
    // A default must itself be a valid answer.
    let default = match &f.default {
        Some(d) => {
            match crate::human::validate(std::slice::from_ref(&out), &serde_json::json!({ out.name.clone(): d })) {
                Ok(v) => v.get(&out.name).cloned(),
                Err(e) => {
                    cx.at(
                        &f.name,
                        "bad-field",
                        format!("field `{}`: the default {d} {}", out.name, e[0].message),
                        None,
                    );
                    None
                }
            }
        }
        None => None,
    };
    Some(Field { default, ..out })
}

/// `form:`.
pub(super) fn form(cx: &mut Ctx<'_>, at: &Spanned<String>, f: &RawForm) -> Option<StepKind> {
    if f.fields.is_empty() {
        cx.at(at, "bad-form", format!("form `{}` has no fields", at.value), Some("list them under `fields:`".into()));
    }
    let mut fields = Vec::new();
    for rf in &f.fields {
        if fields.iter().any(|x: &Field| x.name == rf.name.value) {
            cx.at(&rf.name, "bad-form", format!("form `{}` has two fields named `{}`", at.value, rf.name.value), None);
        }
        fields.extend(field(cx, rf));
    }
    for v in
        f.title.iter().map(|t| Value::String(t.clone())).chain(f.assignees.iter().map(|a| Value::String(a.clone())))
    {
        check_template(cx, at, "form", &v);
    }
    let (deadline, reminders) = deadlines(cx, at, f.deadline.as_ref(), &f.reminders);
    (fields.len() == f.fields.len()).then(|| {
        StepKind::Form(Box::new(FormStep {
            title: f.title.clone(),
            fields,
            assignees: f.assignees.clone(),
            deadline,
            reminders,
        }))
    })
}

/// `approval:`.
pub(super) fn approval(cx: &mut Ctx<'_>, at: &Spanned<String>, a: &RawApproval) -> Option<StepKind> {
    let id = &at.value;
    if a.approvers.is_empty() {
        cx.at(
            at,
            "bad-approval",
            format!("approval `{id}` lists no approvers"),
            Some("e.g. `approvers: [\"manager@example.com\"]`".into()),
        );
    }
    let quorum = match &a.quorum {
        None => Quorum::Any,
        Some(Value::String(s)) if s == "any" => Quorum::Any,
        Some(Value::String(s)) if s == "all" => Quorum::All,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
            let k = u32::try_from(n.as_u64().unwrap_or(1)).unwrap_or(u32::MAX);
            if k as usize > a.approvers.len() && a.approvers.iter().all(|x| !x.contains("{{")) {
                cx.at(
                    at,
                    "bad-approval",
                    format!("approval `{id}` needs {k} approvals but lists {} approvers", a.approvers.len()),
                    None,
                );
            }
            Quorum::Count(k)
        }
        Some(other) => {
            cx.at(
                at,
                "bad-approval",
                format!("approval `{id}`: quorum {other} is not `any`, `all` or a number of 1 or more"),
                None,
            );
            Quorum::Any
        }
    };
    let on_timeout = match a.on_timeout.as_ref().map(|s| (s, s.value.as_str())) {
        None | Some((_, "reject")) => OnTimeout::Reject,
        Some((_, "fail")) => OnTimeout::Fail,
        Some((_, "escalate")) => OnTimeout::Escalate,
        Some((s, other)) => {
            cx.at(s, "bad-approval", format!("`on_timeout: {other}` is not reject, fail or escalate"), None);
            OnTimeout::Reject
        }
    };
    if a.deadline.is_none() && a.on_timeout.is_some() {
        cx.at(
            at,
            "bad-approval",
            format!("approval `{id}` has `on_timeout` but no `deadline`"),
            Some("add `deadline: 3d`".into()),
        );
    }
    if (on_timeout == OnTimeout::Escalate) == a.escalate_to.is_empty() {
        cx.at(
            at,
            "bad-approval",
            format!("approval `{id}`: `on_timeout: escalate` and `escalate_to` go together"),
            Some("list who decides after the deadline under `escalate_to`, with `on_timeout: escalate`".into()),
        );
    }
    let fail_on_reject = match a.on_reject.as_ref().map(|s| (s, s.value.as_str())) {
        None | Some((_, "fail")) => true,
        Some((_, "continue")) => false,
        Some((s, other)) => {
            cx.at(s, "bad-approval", format!("`on_reject: {other}` is not fail or continue"), None);
            true
        }
    };
    let summary = a.summary.clone().unwrap_or_else(|| format!("Approve `{id}`?"));
    let content = a.content.clone().unwrap_or(Value::Null);
    for v in [Value::String(summary.clone()), content.clone()]
        .into_iter()
        .chain(a.approvers.iter().chain(&a.escalate_to).map(|x| Value::String(x.clone())))
    {
        check_template(cx, at, "approval", &v);
    }
    let (deadline, reminders) = deadlines(cx, at, a.deadline.as_ref(), &a.reminders);
    let mut fields = Vec::new();
    for rf in &a.fields {
        if fields.iter().any(|x: &Field| x.name == rf.name.value) {
            cx.at(&rf.name, "bad-approval", format!("approval `{id}` has two fields named `{}`", rf.name.value), None);
        }
        if ["approved", "decision", "comment"].contains(&rf.name.value.as_str()) {
            cx.at(
                &rf.name,
                "bad-approval",
                format!("approval `{id}`: a field cannot be named `{}`, which every decision has", rf.name.value),
                Some("name it after what it holds, e.g. `approved_amount`".into()),
            );
        }
        fields.extend(field(cx, rf));
    }
    if fields.len() != a.fields.len() {
        return None;
    }
    Some(StepKind::Approval(Box::new(ApprovalStep {
        fields,
        approvers: a.approvers.clone(),
        quorum,
        summary,
        content,
        deadline,
        reminders,
        on_timeout,
        escalate_to: a.escalate_to.clone(),
        fail_on_reject,
    })))
}

/// Every template text of an `ai`, `form` or `approval` step, for reference
/// and secret checks.
pub(super) fn texts(s: &super::raw::RawStep) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(a) = &s.ai {
        out.extend(a.system.iter().chain(&a.prompt).map(|t| Value::String(t.clone())));
        out.extend(a.messages.iter().flatten().map(|m| Value::String(m.content.clone())));
        out.extend(a.vars.iter().cloned());
    }
    if let Some(f) = &s.form {
        out.extend(f.title.iter().chain(&f.assignees).map(|t| Value::String(t.clone())));
    }
    if let Some(a) = &s.approval {
        out.extend(a.summary.iter().chain(&a.approvers).chain(&a.escalate_to).map(|t| Value::String(t.clone())));
        out.extend(a.content.iter().cloned());
    }
    out
}

/// Diagnostics for models and prompt templates the workflow names that the
/// config cannot resolve (like [`super::check_secrets`], this depends on
/// where the workflow runs, not on the file alone).
pub fn check_models(w: &crate::Workflow, config: &crate::config::Config, file: &str) -> Vec<super::Diagnostic> {
    let mut out = Vec::new();
    for r in &w.model_refs {
        match config.resolve(&r.model, r.scripted) {
            Err(message) => out.push(super::Diagnostic {
                code: "unknown-model",
                file: file.to_owned(),
                line: r.line,
                column: r.column,
                message: format!("step `{}`: {message}", r.step),
                help: None,
            }),
            Ok(spec) => {
                if let Some(var) = config.missing_api_key(&spec.provider) {
                    out.push(super::Diagnostic {
                        code: "missing-api-key",
                        file: file.to_owned(),
                        line: r.line,
                        column: r.column,
                        message: format!(
                            "step `{}`: model `{}` runs on provider `{}`, whose API key variable {var} is not set",
                            r.step, r.model, spec.provider
                        ),
                        help: Some(format!("export {var}=…, or point the model at another provider")),
                    });
                }
            }
        }
        if let Some(t) = &r.template
            && !config.prompts.contains_key(t)
        {
            let known: Vec<&str> = config.prompts.keys().map(String::as_str).collect();
            let help = match super::did_you_mean(t, known.iter().copied()) {
                Some(d) => format!("did you mean `{d}`?"),
                None if known.is_empty() => format!("put it in {}/{t}.yaml", config.prompts_dir),
                None => format!("known templates: {}", known.join(", ")),
            };
            out.push(super::Diagnostic {
                code: "unknown-prompt-template",
                file: file.to_owned(),
                line: r.line,
                column: r.column,
                message: format!("step `{}`: no prompt template `{t}` in {}", r.step, config.prompts_dir),
                help: Some(help),
            });
        }
    }
    out
}
